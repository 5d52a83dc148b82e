//! The Chord ring on `synod up`: keys put through any node are found through any other,
//! and killing a node with SIGKILL loses no key (each is replicated on successors).

// A driver-level test of real processes: wall-clock deadlines are the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
use common::{eventually, pid, request, start_cluster};
use std::time::Duration;

mod common;

#[test]
fn killing_a_node_loses_no_replicated_key() {
    let (cluster, admin) = start_cluster("dht", 3);
    let t = Duration::from_secs(10);
    eventually("the ring takes a put", || {
        matches!(
            request(admin(1), "PUT", "/v1/dht/probe", "x", t),
            Some((200, _))
        )
    });
    let mut owners = std::collections::BTreeMap::new();
    for i in 0..30 {
        let node = admin(1 + (i % 3) as u16);
        // A node that lost touch with every peer (a stabilize timeout under load) says
        // it is not on the ring while it rejoins: a client retries, as with any 503.
        let mut answer = None;
        eventually(&format!("k{i} is stored"), || {
            answer = request(node, "PUT", &format!("/v1/dht/k{i}"), &format!("v{i}"), t)
                .filter(|(code, _)| *code == 200);
            answer.is_some()
        });
        let (_, body) = answer.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        owners.insert(i, v["owner"].as_str().unwrap().to_string());
    }
    // Kill the node that owns the most keys.
    let mut counts = std::collections::BTreeMap::new();
    for o in owners.values() {
        *counts.entry(o.clone()).or_insert(0) += 1;
    }
    let victim = counts.iter().max_by_key(|(_, c)| **c).unwrap().0.clone();
    let survivor = (1..=3u16).find(|i| format!("n{i}") != victim).unwrap();
    assert_eq!(
        unsafe { libc::kill(pid(&cluster.dir, &victim), libc::SIGKILL) },
        0
    );
    // Every key is still found, through a survivor, once the ring has repaired itself.
    eventually("every key is found after the kill", || {
        (0..30).all(|i| {
            matches!(
                request(admin(survivor), "GET", &format!("/v1/dht/k{i}"), "", t),
                Some((200, body)) if body.contains(&format!("\"v{i}\""))
            )
        })
    });
}
