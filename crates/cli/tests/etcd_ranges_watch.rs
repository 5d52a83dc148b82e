//! etcd's Watch over the multi-Raft ranges (issue 11): `synod up --ranges` with ranges
//! that split past 3 keys. Three clients run etcd Txns that each put two keys of
//! different ranges (and sometimes delete one), while an `etcdctl watch --prefix --rev`
//! process and `etcd-client` watchers (with prev_kv, with a NODELETE filter) follow the
//! prefix. Every stream must equal the acknowledged writes in revision order, with no
//! gap or duplicate, and each Txn's events must arrive in one response. Then progress
//! requests, cancel and a watch that starts at the current revision.

// A driver-level test of real processes: wall-clock time is the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::etcd_ranges::range_of;

use common::{eventually, start_cluster_with};
use etcd_client::{
    Client, ConnectOptions, EventType, Txn, TxnOp, WatchFilterType, WatchOptions, WatchStream,
};
use std::process::{Command, Stdio};
use std::time::Duration;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One event as the test compares them: (revision, PUT/DELETE, key, value).
type Ev = (i64, &'static str, String, String);

/// Read `events` until `want` events arrived; every response holds one revision.
async fn collect(events: &mut WatchStream, want: usize) -> Vec<(Ev, Option<String>)> {
    let mut out = Vec::new();
    while out.len() < want {
        let Ok(next) = tokio::time::timeout(Duration::from_secs(20), events.message()).await else {
            panic!("watch events in time ({} of {want})", out.len());
        };
        let reply = next.unwrap().expect("the watch stream stays open");
        assert!(!reply.canceled(), "{reply:?}");
        let revs: std::collections::BTreeSet<i64> = reply
            .events()
            .iter()
            .map(|e| e.kv().unwrap().mod_revision())
            .collect();
        assert!(revs.len() <= 1, "one response per revision: {revs:?}");
        for e in reply.events() {
            let kv = e.kv().unwrap();
            let kind = match e.event_type() {
                EventType::Put => "PUT",
                EventType::Delete => "DELETE",
            };
            out.push((
                (kv.mod_revision(), kind, text(kv.key()), text(kv.value())),
                e.prev_kv().map(|p| text(p.value())),
            ));
        }
    }
    out
}

#[test]
fn etcd_watch_over_ranges_is_ordered_and_gap_free_across_ranges() {
    let (_cluster, admin, client) = start_cluster_with(
        "etcd-ranges-watch",
        3,
        &["--ranges", "--range-split-keys", "3"],
    );
    let endpoints: Vec<String> = (1..=3).map(|i| client(i).to_string()).collect();
    let e = endpoints.join(",");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let urls: Vec<String> = endpoints.iter().map(|a| format!("http://{a}")).collect();
    let connect = || async {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10));
        Client::connect(urls.clone(), Some(options)).await.unwrap()
    };
    let mut c = rt.block_on(async {
        let mut c = connect().await;
        for _ in 0..100 {
            if c.put("w/00", "init", None).await.is_ok() {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd over ranges never served a put");
    });
    // The first revision of the test, and ten more keys so the prefix splits.
    let first = rt.block_on(async {
        let r = c.get("w/00", None).await.unwrap();
        r.kvs()[0].mod_revision()
    });
    let mut acked: Vec<Ev> = vec![(first, "PUT", "w/00".into(), "init".into())];
    rt.block_on(async {
        for i in 1..10 {
            let (k, v) = (format!("w/{i:02}"), format!("init{i}"));
            let put = c.put(k.as_str(), v.as_str(), None).await.unwrap();
            acked.push((put.header().unwrap().revision(), "PUT", k, v));
        }
    });
    eventually("the prefix splits over several ranges", || {
        let ids: std::collections::BTreeSet<u64> = (0..10)
            .filter_map(|i| range_of(admin(1), &format!("w/{i:02}")))
            .collect();
        ids.len() >= 3
    });
    let (r0, r9) = (range_of(admin(1), "w/00"), range_of(admin(1), "w/09"));
    assert!(r0.is_some() && r0 != r9, "{r0:?} {r9:?}");

    // etcdctl watches the prefix from the first revision, as its own process.
    let watch_log = std::env::temp_dir().join(format!("synod-watch-{}.out", std::process::id()));
    let mut etcdctl = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={e}"))
        .args(["watch", "--prefix", "w/", "--rev", &first.to_string()])
        .stdout(std::fs::File::create(&watch_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl is not installed: apt-get install -y etcd-client (.ci/run does this)");

    rt.block_on(async {
        // Two client watchers: all events with prev_kv, and puts only.
        let (_w1, mut all) = c
            .watch(
                "w/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(first)
                        .with_prev_key(),
                ),
            )
            .await
            .unwrap();
        let (_w2, mut puts_only) = c
            .watch(
                "w/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(first)
                        .with_filters([WatchFilterType::NoDelete]),
                ),
            )
            .await
            .unwrap();

        // Three writers: each Txn puts w/0a and w/9b-style pairs across ranges; every
        // fourth one also deletes a key of the other end.
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..3usize {
            let mut c = c.clone();
            tasks.spawn(async move {
                let mut mine = Vec::new();
                for i in 0..12usize {
                    let low = format!("w/0{}", (worker + i) % 5);
                    let high = format!("w/0{}", 5 + (worker * 7 + i) % 5);
                    let value = format!("t{worker}-{i}");
                    let mut ops = vec![
                        TxnOp::put(low.as_str(), value.as_str(), None),
                        TxnOp::put(high.as_str(), value.as_str(), None),
                    ];
                    let gone = format!("w/x{worker}");
                    if i % 4 == 3 {
                        ops.push(TxnOp::delete(gone.as_str(), None));
                    } else {
                        ops.push(TxnOp::put(gone.as_str(), value.as_str(), None));
                    }
                    let Ok(done) = c.txn(Txn::new().and_then(ops)).await else {
                        continue; // outcome unknown: checked below from the watch itself
                    };
                    let rev = done.header().unwrap().revision();
                    mine.push((rev, "PUT", low, value.clone()));
                    mine.push((rev, "PUT", high, value.clone()));
                    if i % 4 == 3 {
                        mine.push((rev, "DELETE", gone, String::new()));
                    } else {
                        mine.push((rev, "PUT", gone, value));
                    }
                }
                mine
            });
        }
        while let Some(done) = tasks.join_next().await {
            acked.extend(done.unwrap());
        }
        // A delete of w/x? that did not exist writes nothing: drop those from the model
        // by replaying the history (etcd sends no event for deleting nothing).
        acked.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
        let mut live = std::collections::BTreeSet::new();
        acked.retain(|(_, kind, key, _)| {
            if *kind == "DELETE" {
                live.remove(key)
            } else {
                live.insert(key.clone());
                true
            }
        });
        // A final put marks the end.
        let end = c.put("w/zz", "end", None).await.unwrap();
        acked.push((
            end.header().unwrap().revision(),
            "PUT",
            "w/zz".into(),
            "end".into(),
        ));

        let got = collect(&mut all, acked.len()).await;
        let events: Vec<Ev> = got.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(
            events, acked,
            "the watch stream is not the acknowledged history"
        );
        // prev_kv: each put's previous value is the value of the key's previous event.
        let mut last = std::collections::BTreeMap::new();
        for ((_, kind, key, value), prev) in &got {
            assert_eq!(prev.as_ref(), last.get(key), "prev_kv of {key}");
            if *kind == "PUT" {
                last.insert(key.clone(), value.clone());
            } else {
                last.remove(key);
            }
        }
        let want_puts: Vec<Ev> = acked.iter().filter(|e| e.1 == "PUT").cloned().collect();
        let puts: Vec<Ev> = collect(&mut puts_only, want_puts.len())
            .await
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(puts, want_puts, "the NODELETE filter");

        // A progress request answers with a revision the watches have caught up with.
        let (mut w3, mut quiet) = c
            .watch("w/zz", Some(WatchOptions::new().with_progress_notify()))
            .await
            .unwrap();
        w3.request_progress().await.unwrap();
        let progress = tokio::time::timeout(Duration::from_secs(10), quiet.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(progress.events().is_empty(), "{progress:?}");
        assert!(progress.header().unwrap().revision() >= end.header().unwrap().revision());
        // A watch without a start revision sees only later writes.
        let later = c.put("w/zz", "later", None).await.unwrap();
        let seen = collect(&mut quiet, 1).await;
        assert_eq!(seen[0].0 .3, "later");
        assert_eq!(seen[0].0 .0, later.header().unwrap().revision());
        w3.cancel().await.unwrap();
        let canceled = tokio::time::timeout(Duration::from_secs(10), quiet.message())
            .await
            .unwrap()
            .unwrap();
        assert!(
            canceled.as_ref().is_none_or(|r| r.canceled()),
            "{canceled:?}"
        );
    });

    // etcdctl printed the same history: PUT/DELETE, key, value (puts only) per event.
    let mut expected_lines = Vec::new();
    for (_, kind, key, value) in &acked {
        expected_lines.push(kind.to_string());
        expected_lines.push(key.clone());
        if *kind == "PUT" {
            expected_lines.push(value.clone());
        }
    }
    // The put the last watch saw is under the prefix too (etcdctl may print it before
    // the file is read: wait for it rather than race it).
    expected_lines.extend(["PUT", "w/zz", "later"].map(String::from));
    let mut printed = String::new();
    for _ in 0..100 {
        printed = std::fs::read_to_string(&watch_log).unwrap_or_default();
        if printed.lines().filter(|l| !l.is_empty()).count() >= expected_lines.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = etcdctl.kill();
    let _ = etcdctl.wait();
    let _ = std::fs::remove_file(&watch_log);
    let lines: Vec<&str> = printed.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, expected_lines, "etcdctl watch --prefix --rev");
}
