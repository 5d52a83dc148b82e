//! The etcd API through a second real client, the Rust `etcd-client` crate, against
//! `synod up` processes: the KV, Watch, Lease, Lock, Election, Cluster and Maintenance
//! services; a write/read/CAS history that stays linearizable while the leader is
//! killed; and MVCC and lease state that survive SIGKILL of every node.

// A driver-level test of real processes: wall-clock time is the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
use common::{eventually, raft_leader, start_cluster_ports, synod_cmd, Recorder};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    LeaseTimeToLiveOptions, LockOptions, ProclaimOptions, PutOptions, ResignOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use synod_check::history::{Op, OpResult, Process};
use synod_check::linearizability::{check_kv, CheckResult};

mod common;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(endpoints: &[SocketAddr]) -> Client {
    let urls: Vec<String> = endpoints.iter().map(|a| format!("http://{a}")).collect();
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    Client::connect(urls, Some(options))
        .await
        .expect("connect to the cluster")
}

/// Retry `put ready` until the cluster has a leader and answers.
async fn wait_ready(client: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.put("ready", "1", None).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the cluster never answered a put"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_etcd_client_crate_works_against_a_three_node_cluster() {
    let (_cluster, _admin, client_addr) = start_cluster_ports("etcd-client", 3);
    let endpoints: Vec<SocketAddr> = (1..=3).map(&client_addr).collect();
    runtime().block_on(async move {
        let mut c = connect(&endpoints).await;
        wait_ready(&mut c).await;

        // KV: put, get with prefix, revision, keys-only, limit and sort.
        let first = c.put("fruit/apple", "red", None).await.unwrap();
        let rev_apple = first.header().unwrap().revision();
        c.put("fruit/banana", "yellow", None).await.unwrap();
        c.put("fruit/cherry", "dark", None).await.unwrap();
        c.put(
            "fruit/apple",
            "green",
            Some(PutOptions::new().with_prev_key()),
        )
        .await
        .unwrap();
        let all = c
            .get("fruit/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let keys: Vec<String> = all.kvs().iter().map(|kv| text(kv.key())).collect();
        assert_eq!(keys, ["fruit/apple", "fruit/banana", "fruit/cherry"]);
        assert_eq!(all.count(), 3);
        let apple = &all.kvs()[0];
        assert_eq!(text(apple.value()), "green");
        assert_eq!(apple.version(), 2);
        assert_eq!(apple.create_revision(), rev_apple);
        let old = c
            .get(
                "fruit/apple",
                Some(GetOptions::new().with_revision(rev_apple)),
            )
            .await
            .unwrap();
        assert_eq!(text(old.kvs()[0].value()), "red");
        let limited = c
            .get(
                "fruit/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(2)
                        .with_sort(SortTarget::Key, SortOrder::Descend),
                ),
            )
            .await
            .unwrap();
        let keys: Vec<String> = limited.kvs().iter().map(|kv| text(kv.key())).collect();
        assert_eq!(keys, ["fruit/cherry", "fruit/banana"]);
        assert!(limited.more(), "a truncated range says more");
        assert!(limited.kvs().iter().all(|kv| kv.value().is_empty()));

        // Txn: compare on value, then the matching branch.
        let txn = Txn::new()
            .when([Compare::value("fruit/apple", CompareOp::Equal, "green")])
            .and_then([TxnOp::put("fruit/apple", "ripe", None)])
            .or_else([TxnOp::get("fruit/apple", None)]);
        let done = c.txn(txn).await.unwrap();
        assert!(done.succeeded());
        let txn = Txn::new()
            .when([Compare::value("fruit/apple", CompareOp::Equal, "green")])
            .and_then([TxnOp::put("fruit/apple", "never", None)])
            .or_else([TxnOp::get("fruit/apple", None)]);
        let done = c.txn(txn).await.unwrap();
        assert!(!done.succeeded());
        match &done.op_responses()[0] {
            TxnOpResponse::Get(g) => assert_eq!(text(g.kvs()[0].value()), "ripe"),
            other => panic!("expected a get response, got {other:?}"),
        }

        // Watch from a past revision replays history in order.
        let (_watcher, mut events) = c
            .watch(
                "fruit/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev_apple),
                ),
            )
            .await
            .unwrap();
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let reply = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .expect("watch events in time")
                .unwrap()
                .expect("the watch stream stays open");
            for e in reply.events() {
                let kv = e.kv().unwrap();
                seen.push((text(kv.key()), text(kv.value()), kv.mod_revision()));
            }
        }
        let values: Vec<&str> = seen.iter().map(|(_, v, _)| v.as_str()).collect();
        assert_eq!(values, ["red", "yellow", "dark", "green", "ripe"]);
        assert!(seen.windows(2).all(|w| w[0].2 < w[1].2), "{seen:?}");

        // Delete with a prefix removes exactly the matching keys.
        let deleted = c
            .delete("fruit/", Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(deleted.deleted(), 3);

        // Leases: grant, attach, keep alive once, time-to-live with keys, list, revoke.
        let lease = c.lease_grant(30, None).await.unwrap();
        let id = lease.id();
        assert_eq!(lease.ttl(), 30);
        c.put("leased", "x", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
        let (mut keeper, mut acks) = c.lease_keep_alive(id).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let ack = acks.message().await.unwrap().expect("a keep-alive reply");
        assert_eq!(ack.id(), id);
        assert!(ack.ttl() > 0);
        let ttl = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(ttl.granted_ttl(), 30);
        assert_eq!(ttl.keys(), [b"leased".to_vec()]);
        let listed = c.leases().await.unwrap();
        assert!(listed.leases().iter().any(|l| l.id() == id));
        c.lease_revoke(id).await.unwrap();
        let gone = c.get("leased", None).await.unwrap();
        assert!(gone.kvs().is_empty(), "revoking a lease deletes its keys");
        let unknown = c.lease_time_to_live(id, None).await.unwrap();
        assert_eq!(unknown.ttl(), -1);
        let err = c
            .put("x", "y", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("etcdserver: requested lease not found"),
            "{err}"
        );

        // Compaction: reads below it fail with etcd's message.
        let now = c
            .get("ready", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        c.compact(now, None).await.unwrap();
        let err = c
            .get("ready", Some(GetOptions::new().with_revision(rev_apple)))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("etcdserver: mvcc: required revision has been compacted"),
            "{err}"
        );

        // Cluster and Maintenance.
        let members = c.member_list().await.unwrap();
        assert_eq!(members.members().len(), 3);
        let st = c.status().await.unwrap();
        assert!(st.leader() != 0 && st.raft_index() > 0 && st.raft_term() > 0);
        assert!(!st.version().is_empty());
    });
}

/// The Lock service: contenders on different nodes never hold the lock at once, a
/// waiter gets it when the holder unlocks, and a dead holder's lease frees it.
#[test]
fn the_lock_and_election_services_work() {
    let (_cluster, _admin, client_addr) = start_cluster_ports("etcd-lock", 3);
    let endpoints: Vec<SocketAddr> = (1..=3).map(&client_addr).collect();
    runtime().block_on(async move {
        let mut c = connect(&endpoints).await;
        wait_ready(&mut c).await;

        let holding = Arc::new(AtomicBool::new(false));
        let entries = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let endpoint = endpoints[i % endpoints.len()];
            let (holding, entries) = (holding.clone(), entries.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = connect(&[endpoint]).await;
                let lease = c.lease_grant(30, None).await.unwrap().id();
                for _ in 0..3 {
                    let locked = c
                        .lock("jobs", Some(LockOptions::new().with_lease(lease)))
                        .await
                        .unwrap();
                    assert!(
                        !holding.swap(true, Ordering::SeqCst),
                        "two clients hold the lock at once"
                    );
                    entries.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    holding.store(false, Ordering::SeqCst);
                    c.unlock(locked.key().to_vec()).await.unwrap();
                }
                c.lease_revoke(lease).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(entries.load(Ordering::SeqCst), 9);

        // A holder whose lease ends releases the lock to the next waiter.
        let short = c.lease_grant(2, None).await.unwrap().id();
        let held = c
            .lock("expiring", Some(LockOptions::new().with_lease(short)))
            .await
            .unwrap();
        assert!(text(held.key()).starts_with("expiring/"));
        let other = c.lease_grant(30, None).await.unwrap().id();
        let started = Instant::now();
        let next = tokio::time::timeout(
            Duration::from_secs(15),
            c.lock("expiring", Some(LockOptions::new().with_lease(other))),
        )
        .await
        .expect("the lock is freed when the holder's lease expires")
        .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_ne!(next.key(), held.key());

        // Election: campaign, leader, proclaim, observe, resign and succession.
        let mut observer = c.observe("leader-of-the-pack").await.unwrap();
        let l1 = c.lease_grant(30, None).await.unwrap().id();
        let won = c.campaign("leader-of-the-pack", "alice", l1).await.unwrap();
        let alice = won.leader().unwrap().clone();
        let now = c.leader("leader-of-the-pack").await.unwrap();
        assert_eq!(text(now.kv().unwrap().value()), "alice");
        c.proclaim(
            "alice-v2",
            Some(ProclaimOptions::new().with_leader(alice.clone())),
        )
        .await
        .unwrap();
        // A second candidate waits while alice leads.
        let l2 = c.lease_grant(30, None).await.unwrap().id();
        let mut c2 = connect(&[endpoints[1]]).await;
        let bob = tokio::spawn(async move { c2.campaign("leader-of-the-pack", "bob", l2).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!bob.is_finished(), "bob must wait while alice leads");
        c.resign(Some(ResignOptions::new().with_leader(alice.clone())))
            .await
            .unwrap();
        let bob = tokio::time::timeout(Duration::from_secs(10), bob)
            .await
            .expect("bob wins once alice resigns")
            .unwrap()
            .unwrap();
        assert!(text(bob.leader().unwrap().key()).starts_with("leader-of-the-pack/"));
        // alice may no longer proclaim.
        let err = c
            .proclaim("alice-v3", Some(ProclaimOptions::new().with_leader(alice)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("election: not leader"), "{err}");
        // The observer saw alice, her proclamation, then bob, in that order.
        let mut observed = Vec::new();
        while observed.last().map(String::as_str) != Some("bob") {
            let reply = tokio::time::timeout(Duration::from_secs(10), observer.message())
                .await
                .expect("the observer hears every leader")
                .unwrap()
                .expect("the observe stream stays open");
            observed.push(text(reply.kv().unwrap().value()));
        }
        assert_eq!(observed, ["alice", "alice-v2", "bob"]);
        let err = c.leader("nobody-campaigns").await.unwrap_err();
        assert!(err.to_string().contains("election: no leader"), "{err}");
    });
}

/// One client: writes of rising values to its own key, reads of it, and
/// compare-and-set on a shared key, each through a node chosen in turn.
async fn grpc_client(
    id: u64,
    nodes: Vec<SocketAddr>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, u64)>>>,
) {
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(connect(&[*n]).await);
    }
    let own = format!("c{id}");
    let mut next = 0u64;
    let mut i = id as usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let c = &mut clients[i % nodes.len()];
        let op = match i % 4 {
            0 | 1 => {
                next += 1;
                Op::Write {
                    key: own.clone(),
                    value: next,
                }
            }
            2 => Op::Read { key: own.clone() },
            _ => {
                let expected = id * 1000 + (i as u64 % 3);
                Op::Cas {
                    key: "shared".into(),
                    expected: Some(expected),
                    new: expected + 1,
                }
            }
        };
        let op_id = rec
            .history
            .lock()
            .unwrap()
            .invoke(Process(id), op.clone(), rec.now());
        let result = tokio::time::timeout(Duration::from_secs(10), async {
            match &op {
                Op::Write { key, value } => c
                    .put(key.as_str(), value.to_string(), None)
                    .await
                    .ok()
                    .map(|_| OpResult::WriteOk),
                Op::Read { key } => c.get(key.as_str(), None).await.ok().map(|r| {
                    OpResult::ReadOk(
                        r.kvs()
                            .first()
                            .map(|kv| text(kv.value()).parse::<u64>().unwrap()),
                    )
                }),
                Op::Cas { key, expected, new } => {
                    let txn = Txn::new()
                        .when([Compare::value(
                            key.as_str(),
                            CompareOp::Equal,
                            expected.unwrap().to_string(),
                        )])
                        .and_then([TxnOp::put(key.as_str(), new.to_string(), None)]);
                    c.txn(txn)
                        .await
                        .ok()
                        .map(|r| OpResult::CasOk(r.succeeded()))
                }
                Op::Delete { .. } => unreachable!("this workload does not delete"),
            }
        })
        .await
        .ok()
        .flatten();
        let t = rec.now();
        let mut h = rec.history.lock().unwrap();
        match result {
            Some(r) => {
                if let (Op::Write { key, value }, OpResult::WriteOk) = (&op, &r) {
                    acked.lock().unwrap().push((key.clone(), *value));
                }
                h.ok(op_id, r, t).unwrap()
            }
            // A timeout or an error: the outcome is unknown.
            None => h.info(op_id, t).unwrap(),
        }
    }
}

/// Writes, reads and CAS through the gRPC API while the leader process is killed and
/// restarted: the recorded history must be linearizable and lose no acknowledged write.
#[test]
fn grpc_history_is_linearizable_when_the_leader_is_killed() {
    let (cluster, admin, client_addr) = start_cluster_ports("etcd-kill", 3);
    let endpoints: Vec<SocketAddr> = (1..=3).map(&client_addr).collect();
    eventually("a leader is elected", || raft_leader(&admin, 3).is_some());
    let rt = runtime();
    let rec = Arc::new(Recorder::new());
    rt.block_on(async {
        let mut c = connect(&endpoints).await;
        wait_ready(&mut c).await;
        c.put("shared", "1000", None).await.unwrap();
    });
    rec.seed_write("shared", 1000);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (1..=6)
        .map(|id| {
            rt.spawn(grpc_client(
                id,
                endpoints.clone(),
                rec.clone(),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let old = raft_leader(&admin, 3).expect("a leader under load");
    let acked_before = acked.lock().unwrap().len();
    assert!(
        acked_before > 0,
        "no write was acknowledged before the kill"
    );
    cluster.kill(old);
    eventually("another node is elected leader", || {
        raft_leader(&admin, 3).is_some_and(|l| l != old)
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        acked.lock().unwrap().len() > acked_before,
        "no write was acknowledged after the leader died"
    );
    cluster.restart();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for c in clients {
            c.await.unwrap();
        }
    });
    // Every acknowledged write survives: read each key through the restarted node.
    let acked = acked.lock().unwrap().clone();
    rt.block_on(async {
        let mut c = connect(&[client_addr(old)]).await;
        wait_ready(&mut c).await;
        let mut newest = std::collections::BTreeMap::new();
        for (key, value) in &acked {
            let e = newest.entry(key.clone()).or_insert(0);
            *e = (*e).max(*value);
        }
        for (key, value) in newest {
            let got = c.get(key.as_str(), None).await.unwrap();
            let now: u64 = text(got.kvs()[0].value()).parse().unwrap();
            assert!(now >= value, "{key}: acknowledged {value}, now {now}");
        }
    });
    let history = rec.history.lock().unwrap();
    match check_kv(&history) {
        CheckResult::Ok => {}
        other => panic!(
            "the gRPC history of {} events is not linearizable: {other:?}\n{}",
            history.len(),
            history.to_jsonl()
        ),
    }
    eprintln!(
        "{} operations, {} writes acknowledged, leader n{old} killed",
        history.operations().len(),
        acked.len()
    );
}

/// Key, value, create revision, mod revision, version and lease of each key.
type Described = Vec<(String, String, i64, i64, i64, i64)>;

fn described(kvs: &[etcd_client::KeyValue]) -> Described {
    kvs.iter()
        .map(|kv| {
            (
                text(kv.key()),
                text(kv.value()),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect()
}

/// Kill every node with SIGKILL and start them again: keys, revisions, versions, the
/// compaction point and leases (with their keys) are all still there.
#[test]
fn mvcc_and_lease_state_survive_sigkill_of_every_node() {
    let (cluster, admin, client_addr) = start_cluster_ports("etcd-durable", 3);
    let endpoints: Vec<SocketAddr> = (1..=3).map(&client_addr).collect();
    let rt = runtime();
    let (before, lease, compacted) = rt.block_on(async {
        let mut c = connect(&endpoints).await;
        wait_ready(&mut c).await;
        for i in 0..20 {
            c.put(format!("k{}", i % 5), format!("v{i}"), None)
                .await
                .unwrap();
        }
        let compacted = c
            .get("k0", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
            - 3;
        c.compact(compacted, None).await.unwrap();
        let lease = c.lease_grant(300, None).await.unwrap().id();
        c.put("with-lease", "1", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
        let before = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        let before = described(before.kvs());
        (before, lease, compacted)
    });
    for n in 1..=3 {
        cluster.kill(n);
    }
    std::thread::sleep(Duration::from_millis(300));
    cluster.restart();
    eventually("a leader is elected after the restart", || {
        raft_leader(&admin, 3).is_some()
    });
    rt.block_on(async {
        let mut c = connect(&endpoints).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let after = loop {
            match c.get("", Some(GetOptions::new().with_all_keys())).await {
                Ok(r) => break r,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no read after restart: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let after = described(after.kvs());
        assert_eq!(after, before, "the keyspace changed across a full restart");
        let err = c
            .get("k0", Some(GetOptions::new().with_revision(compacted - 1)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("has been compacted"), "{err}");
        let ttl = c
            .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(ttl.granted_ttl(), 300);
        assert!(ttl.ttl() > 0, "the lease survived: ttl {}", ttl.ttl());
        assert_eq!(ttl.keys(), [b"with-lease".to_vec()]);
        // And the restarted cluster takes new writes at the next revision.
        let top = before.iter().map(|kv| kv.3).max().unwrap();
        let put = c.put("fresh", "1", None).await.unwrap();
        assert!(put.header().unwrap().revision() > top);
        let (_w, mut events) = c
            .watch(
                "fresh",
                Some(WatchOptions::new().with_start_revision(top + 1)),
            )
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.events()[0].event_type(), EventType::Put);
    });
}

/// Stop `cluster`, replace the line `from` (which the cluster file must hold) with `to`,
/// and start it again.
fn restart_with_setting(cluster: &common::Cluster, from: &str, to: &str) {
    let down = synod_cmd()
        .arg("down")
        .arg("--dir")
        .arg(&cluster.dir)
        .output()
        .unwrap();
    assert!(down.status.success());
    let file = cluster.dir.join("cluster.toml");
    let text_of_file = std::fs::read_to_string(&file).unwrap();
    assert!(text_of_file.contains(from), "{text_of_file}");
    std::fs::write(&file, text_of_file.replace(from, to)).unwrap();
    cluster.restart();
}

/// A watcher created with progress_notify hears the current revision while nothing
/// happens (here every 300 ms instead of etcd's 10 minutes, set in the cluster file).
#[test]
fn progress_notify_reports_the_revision_to_a_quiet_watcher() {
    let (cluster, _admin, client_addr) = start_cluster_ports("etcd-progress", 1);
    restart_with_setting(
        &cluster,
        "watch_progress_notify_ms = 600000",
        "watch_progress_notify_ms = 300",
    );
    runtime().block_on(async move {
        let mut c = connect(&[client_addr(1)]).await;
        wait_ready(&mut c).await;
        let put = c.put("quiet", "1", None).await.unwrap();
        let revision = put.header().unwrap().revision();
        let (_w, mut events) = c
            .watch("quiet", Some(WatchOptions::new().with_progress_notify()))
            .await
            .unwrap();
        // (The client consumes the created response itself.)
        let notice = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("a progress notice within a few intervals")
            .unwrap()
            .unwrap();
        assert!(notice.events().is_empty(), "{notice:?}");
        assert_eq!(notice.header().unwrap().revision(), revision);
    });
}

/// Raft snapshots are files beside the WAL, so a store past the WAL's 16 MiB value bound
/// still snapshots and compacts its log, and a follower that missed the compacted part
/// catches up from a snapshot that size (sent in chunks, installed, written, read back).
#[test]
fn snapshots_past_16_mib_compact_the_log_and_catch_up_a_follower() {
    let (cluster, admin, client_addr) = start_cluster_ports("etcd-bigsnap", 3);
    restart_with_setting(
        &cluster,
        "snapshot_entries = 100000",
        "snapshot_entries = 30",
    );
    let endpoints: Vec<SocketAddr> = (1..=3).map(&client_addr).collect();
    let value = |i: usize| vec![(i % 251) as u8; 200 << 10];
    let rt = runtime();
    // MVCC keeps every revision until a compaction: 120 puts of 200 KiB is a 23 MiB store.
    let put_range = |range: std::ops::Range<usize>, endpoints: Vec<SocketAddr>| {
        rt.block_on(async move {
            let mut c = connect(&endpoints).await;
            wait_ready(&mut c).await;
            for i in range {
                c.put(format!("big/{}", i % 10), value(i), None)
                    .await
                    .unwrap();
            }
        })
    };
    put_range(0..120, endpoints.clone());
    let blob_bytes = |node: &str| -> u64 {
        let dir = cluster.dir.join(node).join("raft").join("blobs");
        std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    eventually("every node has a snapshot past 16 MiB", || {
        ["n1", "n2", "n3"].iter().all(|n| blob_bytes(n) > 16 << 20)
    });
    // A follower misses 120 more entries, more than the leader keeps in its log.
    let victim = (1..=3)
        .find(|&i| raft_leader(&admin, 3) != Some(i))
        .unwrap();
    cluster.kill(victim);
    let survivors: Vec<SocketAddr> = (1..=3).filter(|&i| i != victim).map(&client_addr).collect();
    put_range(120..240, survivors);
    cluster.restart();
    let last = value(239);
    rt.block_on(async {
        let mut c = connect(&[client_addr(victim)]).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = c
                .get("big/9", Some(GetOptions::new().with_serializable()))
                .await;
            if let Ok(r) = got {
                if r.kvs().first().is_some_and(|kv| kv.value() == last) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "n{victim} never caught up with the last write"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let node = format!("n{victim}");
    assert!(
        blob_bytes(&node) > 32 << 20,
        "n{victim}'s snapshot is {} bytes; it should hold more than the 120 writes it saw",
        blob_bytes(&node)
    );
}
