//! The etcd KV API over the multi-Raft ranges (issue 11): `synod up --ranges` with
//! ranges that split past 3 keys, driven by etcd's own `etcdctl` (put, get, get --prefix
//! and --limit across range boundaries, del --prefix, a `txn` whose compares and puts
//! span two ranges, in both outcomes) and by the Rust `etcd-client` (per-key metadata
//! and header revisions, then concurrent transfers between keys of different ranges
//! through etcd Txn while snapshot scans of every account must always see the total).
//! Then `etcdctl compact` across ranges: reads and watches below the compact revision
//! fail with etcd's compacted error, reads at or above it are unchanged.

// A driver-level test of real processes: wall-clock time is the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::etcd_ranges::range_of;

use common::{eventually, start_cluster_with};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Run etcdctl; (success, stdout, stderr).
fn etcdctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is not installed: apt-get install -y etcd-client (.ci/run does this)");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(endpoints: &str, args: &[&str], stdin: Option<&str>) -> String {
    let (success, out, err) = etcdctl(endpoints, args, stdin);
    assert!(success, "etcdctl {args:?} failed: {out}{err}");
    out
}

#[test]
fn etcd_kv_over_ranges_scans_across_boundaries_and_txns_are_atomic() {
    let (_cluster, admin, client) =
        start_cluster_with("etcd-ranges", 3, &["--ranges", "--range-split-keys", "3"]);
    let endpoints: String = (1..=3)
        .map(|i| client(i).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let e = endpoints.as_str();
    eventually("etcdctl put is served over the ranges", || {
        etcdctl(e, &["put", "k/00", "v00"], None).0
    });
    for i in 1..12 {
        ok(e, &["put", &format!("k/{i:02}"), &format!("v{i:02}")], None);
    }
    // Splits at 3 keys: the k/ prefix spreads over several ranges.
    eventually("the keys split over several ranges", || {
        let ids: std::collections::BTreeSet<u64> = (0..12)
            .filter_map(|i| range_of(admin(1), &format!("k/{i:02}")))
            .collect();
        ids.len() >= 3
    });
    let (first, last) = (range_of(admin(1), "k/00"), range_of(admin(1), "k/11"));
    assert!(first.is_some() && first != last, "{first:?} {last:?}");

    // get --prefix crosses every boundary, in key order.
    let out = ok(e, &["get", "--prefix", "k/"], None);
    let want: Vec<String> = (0..12)
        .flat_map(|i| [format!("k/{i:02}"), format!("v{i:02}")])
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
    let out = ok(
        e,
        &["get", "--prefix", "k/", "--limit", "5", "--keys-only"],
        None,
    );
    let keys: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys, ["k/00", "k/01", "k/02", "k/03", "k/04"], "{out}");
    let out = ok(e, &["get", "k/04", "k/09"], None);
    assert_eq!(out.lines().count(), 10, "[k/04, k/09) holds 5 keys: {out}");
    let out = ok(e, &["get", "--from-key", "k/10"], None);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["k/10", "v10", "k/11", "v11"]
    );
    let out = ok(e, &["put", "k/03", "v03b", "--prev-kv"], None);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["OK", "k/03", "v03"],
        "{out}"
    );
    assert_eq!(
        ok(e, &["get", "k/03", "--print-value-only"], None).trim(),
        "v03b"
    );

    // A txn whose compares and puts span two ranges: both outcomes.
    let script = "value(\"k/00\") = \"v00\"\nvalue(\"k/11\") = \"v11\"\n\n\
                  put k/00 moved\nput k/11 moved\n\nput k/failed yes\n\n";
    let out = ok(e, &["txn"], Some(script));
    assert!(out.starts_with("SUCCESS"), "{out}");
    let out = ok(e, &["get", "k/00", "k/12"], None);
    assert!(out.contains("k/00\nmoved"), "{out}");
    let out = ok(e, &["get", "k/11", "--print-value-only"], None);
    assert_eq!(out.trim(), "moved");
    // Now the compare on k/00 holds and the one on k/11 fails: nothing of the success
    // branch may be written in either range, the failure branch is.
    let script = "value(\"k/00\") = \"moved\"\nvalue(\"k/11\") = \"v11\"\n\n\
                  put k/00 again\nput k/11 again\n\nput k/failed yes\n\n";
    let out = ok(e, &["txn"], Some(script));
    assert!(out.starts_with("FAILURE"), "{out}");
    for k in ["k/00", "k/11"] {
        assert_eq!(
            ok(e, &["get", k, "--print-value-only"], None).trim(),
            "moved"
        );
    }
    assert_eq!(
        ok(e, &["get", "k/failed", "--print-value-only"], None).trim(),
        "yes"
    );

    // Metadata and header revisions through the Rust client.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let urls: Vec<String> = (1..=3).map(|i| format!("http://{}", client(i))).collect();
    let mut c = rt.block_on(async {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10));
        Client::connect(urls.clone(), Some(options)).await.unwrap()
    });
    rt.block_on(async {
        let put = c.put("meta", "1", None).await.unwrap();
        let created = put.header().unwrap().revision();
        let put = c.put("meta", "2", None).await.unwrap();
        let modified = put.header().unwrap().revision();
        assert!(modified > created);
        let got = c.get("meta", None).await.unwrap();
        let kv = &got.kvs()[0];
        assert_eq!(
            (kv.create_revision(), kv.mod_revision(), kv.version()),
            (created, modified, 2)
        );
        assert!(got.header().unwrap().revision() > modified);
        // A read at an older revision sees the older version; a future one is refused.
        let old = c
            .get("meta", Some(GetOptions::new().with_revision(created)))
            .await
            .unwrap();
        assert_eq!(old.kvs()[0].value(), b"1");
        let err = c
            .get("meta", Some(GetOptions::new().with_revision(i64::MAX / 2)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("future revision"), "{err}");
        // Bad input: etcd's own error strings.
        let err = c.get("", None).await.unwrap_err();
        assert!(err.to_string().contains("key is not provided"), "{err}");
        let err = c.put("", "x", None).await.unwrap_err();
        assert!(err.to_string().contains("key is not provided"), "{err}");
        // count counts every key of the interval across ranges; limit cuts the rows.
        let opts = GetOptions::new().with_prefix().with_limit(3);
        let got = c.get("k/", Some(opts)).await.unwrap();
        assert_eq!((got.kvs().len(), got.count(), got.more()), (3, 13, true));
        let opts = GetOptions::new().with_prefix().with_count_only();
        let got = c.get("k/", Some(opts)).await.unwrap();
        assert_eq!((got.kvs().len(), got.count()), (0, 13));
        // A mod_revision compare, as clientv3's STM and etcd's lock recipe use.
        let txn = Txn::new()
            .when([Compare::mod_revision("meta", CompareOp::Equal, modified)])
            .and_then([TxnOp::put("meta", "3", None)]);
        assert!(c.txn(txn).await.unwrap().succeeded());
        let txn = Txn::new()
            .when([Compare::mod_revision("meta", CompareOp::Equal, modified)])
            .and_then([TxnOp::put("meta", "4", None)]);
        assert!(!c.txn(txn).await.unwrap().succeeded());
    });

    // del --prefix across ranges; then nothing is left.
    let out = ok(e, &["del", "--prefix", "k/"], None);
    assert_eq!(out.trim(), "13", "{out}");
    assert_eq!(ok(e, &["get", "--prefix", "k/"], None).trim(), "");

    // Concurrent transfers between accounts in different ranges via etcd Txn (compare
    // both mod_revisions, put both balances) while scans of acct/ must sum to the total.
    const ACCOUNTS: usize = 8;
    let account = |i: usize| format!("acct/{i}");
    for i in 0..ACCOUNTS {
        ok(e, &["put", &account(i), "100"], None);
    }
    eventually("the accounts split over several ranges", || {
        let ids: std::collections::BTreeSet<u64> = (0..ACCOUNTS)
            .filter_map(|i| range_of(admin(1), &account(i)))
            .collect();
        ids.len() >= 2
    });
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let cross = Arc::new(AtomicU64::new(0));
    let scans = Arc::new(AtomicU64::new(0));
    let homes: Arc<Vec<Option<u64>>> = Arc::new(
        (0..ACCOUNTS)
            .map(|i| range_of(admin(1), &account(i)))
            .collect(),
    );
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..3usize {
            let mut c = c.clone();
            let committed = Arc::clone(&committed);
            let cross = Arc::clone(&cross);
            let homes = Arc::clone(&homes);
            tasks.spawn(async move {
                let mut seed = worker as u64 * 7 + 1;
                for _ in 0..20 {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let from = (seed >> 33) as usize % ACCOUNTS;
                    let to = (from + 1 + (seed >> 40) as usize % (ACCOUNTS - 1)) % ACCOUNTS;
                    let (a, b) = (format!("acct/{from}"), format!("acct/{to}"));
                    let ga = c.get(a.as_str(), None).await.unwrap();
                    let gb = c.get(b.as_str(), None).await.unwrap();
                    let (ka, kb) = (&ga.kvs()[0], &gb.kvs()[0]);
                    let va: u64 = ka.value_str().unwrap().parse().unwrap();
                    let vb: u64 = kb.value_str().unwrap().parse().unwrap();
                    let amount = va.min(7);
                    let txn = Txn::new()
                        .when([
                            Compare::mod_revision(a.as_str(), CompareOp::Equal, ka.mod_revision()),
                            Compare::mod_revision(b.as_str(), CompareOp::Equal, kb.mod_revision()),
                        ])
                        .and_then([
                            TxnOp::put(a.as_str(), (va - amount).to_string(), None),
                            TxnOp::put(b.as_str(), (vb + amount).to_string(), None),
                        ]);
                    match c.txn(txn).await {
                        Ok(r) if r.succeeded() => {
                            committed.fetch_add(1, Ordering::Relaxed);
                            if homes[from] != homes[to] {
                                cross.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(_) => {}
                        // Aborted after repeated conflicts: nothing written, try again.
                        Err(e) if e.to_string().contains("aborted") => {}
                        Err(e) => panic!("transfer {a} -> {b}: {e}"),
                    }
                }
            });
        }
        let mut reader = c.clone();
        let stop_reader = Arc::clone(&stop);
        let scans_reader = Arc::clone(&scans);
        let scanning = tokio::spawn(async move {
            while !stop_reader.load(Ordering::Relaxed) {
                let got = reader
                    .get("acct/", Some(GetOptions::new().with_prefix()))
                    .await
                    .unwrap();
                let sum: u64 = got
                    .kvs()
                    .iter()
                    .map(|kv| kv.value_str().unwrap().parse::<u64>().unwrap())
                    .sum();
                assert_eq!(got.kvs().len(), ACCOUNTS, "an account is missing");
                assert_eq!(sum, 100 * ACCOUNTS as u64, "a scan saw part of a transfer");
                scans_reader.fetch_add(1, Ordering::Relaxed);
            }
        });
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        scanning.await.unwrap();
    });
    let out = ok(e, &["get", "--prefix", "acct/", "--print-value-only"], None);
    let total: u64 = out
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum();
    assert_eq!(total, 100 * ACCOUNTS as u64, "{out}");
    let (committed, cross, scans) = (
        committed.load(Ordering::Relaxed),
        cross.load(Ordering::Relaxed),
        scans.load(Ordering::Relaxed),
    );
    eprintln!("transfers committed {committed} (cross-range {cross}), scans {scans}");
    assert!(cross > 0 && scans > 0, "{committed} {cross} {scans}");

    // Compaction over the ranges: k/00 and k/11 live in different ranges.
    let (r0, r1, r_del, r3) = rt.block_on(async {
        let rev = |h: Option<&etcd_client::ResponseHeader>| h.unwrap().revision();
        c.delete("k/00", None).await.unwrap();
        let r0 = rev(c.put("k/00", "c0", None).await.unwrap().header());
        let r1 = rev(c.put("k/00", "c1", None).await.unwrap().header());
        c.put("k/00", "c2", None).await.unwrap();
        c.put("k/11", "doomed", None).await.unwrap();
        let r_del = rev(c.delete("k/11", None).await.unwrap().header());
        let r3 = rev(c.put("k/00", "c3", None).await.unwrap().header());
        (r0, r1, r_del, r3)
    });
    let out = ok(e, &["compact", &r_del.to_string()], None);
    assert!(out.contains(&r_del.to_string()), "{out}");
    // Below the compact revision: etcd's error, from etcdctl.
    let (success, _, err) = etcdctl(e, &["get", "k/00", "--rev", &r1.to_string()], None);
    assert!(
        !success && err.contains("required revision has been compacted"),
        "{err}"
    );
    // At it: the newest version at or below it was kept; the deleted key is gone.
    let out = ok(e, &["get", "k/00", "--rev", &r_del.to_string()], None);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["k/00", "c2"], "{out}");
    let out = ok(e, &["get", "k/11", "--rev", &r_del.to_string()], None);
    assert_eq!(out.trim(), "", "{out}");
    // Compacting again at or below it, or past the current revision, fails as in etcd.
    let (success, _, err) = etcdctl(e, &["compact", &r1.to_string()], None);
    assert!(
        !success && err.contains("required revision has been compacted"),
        "{err}"
    );
    let (success, _, err) = etcdctl(e, &["compact", "999999999999"], None);
    assert!(!success && err.contains("future revision"), "{err}");
    // etcdctl's watch from an old revision is canceled with the compacted error.
    let watch = Command::new("timeout")
        .args(["15", "etcdctl", &format!("--endpoints={e}")])
        .args(["watch", "k/00", "--rev", &r1.to_string()])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&watch.stdout),
        String::from_utf8_lossy(&watch.stderr)
    );
    assert!(
        said.contains("required revision has been compacted"),
        "{said}"
    );
    rt.block_on(async {
        // The metadata of the kept version survives the loss of the older puts: k/00
        // was put 4 times since its creation at r0.
        let got = c.get("k/00", None).await.unwrap();
        let kv = &got.kvs()[0];
        assert_eq!((kv.value_str().unwrap(), kv.version()), ("c3", 4));
        assert_eq!(
            (kv.create_revision(), kv.mod_revision()),
            (r0, r3),
            "{kv:?}"
        );
        // A watch from below the compact revision: created, then canceled with it.
        let opts = etcd_client::WatchOptions::new().with_start_revision(r1);
        let (_w, mut events) = c.watch("k/00", Some(opts)).await.unwrap();
        let canceled = loop {
            let reply = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .expect("a watch answer in time")
                .unwrap()
                .expect("the watch stream stays open");
            if reply.canceled() {
                break reply;
            }
        };
        assert_eq!(canceled.compact_revision(), r_del, "{canceled:?}");
        // Just above it, the watch replays with prev_kv.
        let opts = etcd_client::WatchOptions::new()
            .with_start_revision(r_del + 1)
            .with_prev_key();
        let (_w, mut events) = c.watch("k/00", Some(opts)).await.unwrap();
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .expect("a watch event in time")
                .unwrap()
                .expect("the watch stream stays open");
            assert!(!reply.canceled(), "{reply:?}");
            if let Some(ev) = reply.events().first() {
                let kv = ev.kv().unwrap();
                assert_eq!((kv.value_str().unwrap(), kv.mod_revision()), ("c3", r3));
                let prev = ev.prev_kv().unwrap().value_str().unwrap();
                assert_eq!(prev, "c2");
                break;
            }
        }
    });
}
