//! Real processes: `synod up` starts three nodes over loopback with mutual TLS; one is
//! killed with SIGKILL mid-run and restarted, and must come back with a higher durable
//! incarnation that its peers then hear.

// A driver-level test of real processes: wall-clock deadlines are the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
use common::{eventually, free_ports, get, pid, status, synod_cmd as synod, Cluster};
use std::net::SocketAddr;
use std::path::Path;

mod common;

#[test]
fn three_processes_survive_a_sigkill_and_restart_with_a_new_incarnation() {
    let base = free_ports(3);
    let dir = std::env::temp_dir().join(format!("synod-cluster-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = Cluster { dir: dir.clone() };
    let up = synod()
        .args(["up", "--nodes", "3", "--dir"])
        .arg(&cluster.dir)
        .args(["--peer-port", &base.to_string()])
        .args(["--client-port", &(base + 100).to_string()])
        .args(["--admin-port", &(base + 200).to_string()])
        .output()
        .expect("run synod up");
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "synod up failed: {stdout}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(stdout.contains("mutual TLS"), "{stdout}");
    let admin = |i: u16| SocketAddr::from(([127, 0, 0, 1], base + 200 + i - 1));

    // Every node hears beacons from both others, in incarnation 1.
    eventually("every node hears both peers", || {
        (1..=3).all(|i| {
            status(admin(i)).is_some_and(|s| {
                let heard = &s["beacon"]["heard"];
                heard.as_object().is_some_and(|m| m.len() == 2) && s["beacon"]["incarnation"] == 1
            })
        })
    });

    // Kill n2 without warning; the others keep running and notice.
    let n2 = pid(&dir, "n2");
    assert_eq!(unsafe { libc::kill(n2, libc::SIGKILL) }, 0);
    eventually("n1 and n3 see n2 disconnected", || {
        [1, 3]
            .iter()
            .all(|&i| status(admin(i)).is_some_and(|s| s["peers"]["n2"]["connected"] == false))
    });
    let ok = synod()
        .arg("status")
        .arg("--dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        !ok.status.success(),
        "status reports a down node as a failure"
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("down"));

    // `synod up` again restarts only the missing node, from its own data.
    let again = synod().arg("up").arg("--dir").arg(&dir).output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_ne!(pid(&dir, "n2"), n2);
    eventually("n2 is back in incarnation 2 and n1 hears it", || {
        status(admin(2)).is_some_and(|s| s["beacon"]["incarnation"] == 2)
            && status(admin(1)).is_some_and(|s| s["beacon"]["heard"]["n2"]["incarnation"] == 2)
    });
    let ok = synod()
        .arg("status")
        .arg("--dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    // Metrics are in Prometheus text format, with per-peer and fsync figures.
    let metrics = get(admin(1), "/metrics").expect("metrics");
    for name in [
        "synod_peer_messages_sent_total{node=\"n1\",peer=\"n2\"}",
        "synod_fsync_seconds_bucket",
        "synod_batch_inputs_count",
        "synod_peer_queue_depth",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }

    // Graceful stop: every process exits on SIGTERM.
    let pids: Vec<i32> = ["n1", "n2", "n3"].iter().map(|n| pid(&dir, n)).collect();
    let down = synod().arg("down").arg("--dir").arg(&dir).output().unwrap();
    assert!(down.status.success());
    for p in pids {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| s.contains(") Z")),
            "pid {p} still running after synod down"
        );
    }
}

#[test]
fn a_bad_cluster_file_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("synod-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluster.toml");
    std::fs::write(&file, "cluster_id = \"x\"\n[[nodes]]\nid = 0\n").unwrap();
    let out = synod()
        .args(["node", "--config"])
        .arg(&file)
        .args(["--id", "n1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.toml"), "{err}");
    let out = synod()
        .args(["node", "--config"])
        .arg(&file)
        .args(["--id", "bogus"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a node id"));
    std::fs::remove_dir_all(&dir).ok();
}
