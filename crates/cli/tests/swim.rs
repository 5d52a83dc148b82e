//! `synod sim swim`: the SWIM experiments run, print the paper's figures beside ours, and
//! reject bad flags clearly; and on `synod up`, a node killed with SIGKILL is declared dead
//! by every other node.

use common::{eventually, get, pid, start_cluster, synod};

mod common;

#[test]
fn sim_swim_prints_each_table_beside_the_paper() {
    let (code, out, err) = synod(&[
        "sim",
        "swim",
        "--sizes",
        "8,16",
        "--trials",
        "3",
        "--load-periods",
        "5",
        "--fp-nodes",
        "8",
        "--fp-periods",
        "30",
        "--fp-seeds",
        "1",
        "--losses",
        "0,0.1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for heading in [
        "Time to first detection",
        "Message load",
        "reach every member",
        "False positives",
    ] {
        assert!(out.contains(heading), "missing {heading}: {out}");
    }
    assert!(out.contains("1.58"), "{out}");
    // At 0% loss with no slow members nobody is declared dead, in any variant.
    let zero = out
        .lines()
        .find(|l| l.trim_start().starts_with("0%"))
        .expect("a 0% row");
    assert_eq!(
        zero.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec!["0", "0", "0"],
        "{out}"
    );
}

#[test]
fn sim_swim_rejects_bad_flags() {
    let (code, _, err) = synod(&["sim", "swim", "--sizes", "8,many"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a node count"), "{err}");
    let (code, _, err) = synod(&["sim", "swim", "--sizes", "2"]);
    assert_eq!(code, 2);
    assert!(err.contains("at least 3"), "{err}");
    let (code, _, err) = synod(&["sim", "swim", "--losses", "0.5,2"]);
    assert_eq!(code, 2);
    assert!(err.contains("between 0 and 1"), "{err}");
    let (code, _, err) = synod(&["sim", "swim", "--trials", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("positive"), "{err}");
    let (code, _, err) = synod(&["sim", "swim", "--experiment", "everything"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value"), "{err}");
}

/// Real processes: kill -9 one node of four; every other node's SWIM view marks it dead
/// well within the bound (N − 1 periods to be probed, one to fail, then the suspicion
/// timeout), and `synod members` shows it.
#[test]
fn a_node_killed_with_sigkill_is_declared_dead_by_every_other_node() {
    let (cluster, admin) = start_cluster("swim", 4);
    let view = |i: u16| -> Option<serde_json::Value> {
        serde_json::from_str(&get(admin(i), "/v1/members")?).ok()
    };
    let status_of = |v: &serde_json::Value, node: u64| -> Option<String> {
        v["members"]
            .as_array()?
            .iter()
            .find(|m| m["node"] == node)?["status"]
            .as_str()
            .map(String::from)
    };
    eventually("every node sees all four members alive", || {
        (1..=4).all(|i| {
            view(i).is_some_and(|v| (1..=4).all(|n| status_of(&v, n).as_deref() == Some("Alive")))
        })
    });
    let victim = pid(&cluster.dir, "n3");
    // SAFETY: kill(2) on a pid we started.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    eventually("n1, n2 and n4 declare n3 dead", || {
        [1, 2, 4]
            .iter()
            .all(|&i| view(i).is_some_and(|v| status_of(&v, 3).as_deref() == Some("Dead")))
    });
    let dir = cluster.dir.to_str().expect("a UTF-8 temp dir");
    let (code, out, err) = synod(&["members", "--dir", dir]);
    assert_eq!(code, 1, "a down node makes members fail: {out}{err}");
    assert!(out.contains("dead/0") && out.contains("down"), "{out}");
}
