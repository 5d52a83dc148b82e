//! `synod sim swim`: the SWIM experiments run, print the paper's figures beside ours, and
//! reject bad flags clearly.

use common::synod;

// Only `synod` of the shared helpers is used here.
#[allow(dead_code)]
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
