//! `synod sim chord`: the paper's experiments at a small size, and clear flag errors.

use common::synod;

// Only `synod` is used here; `scratch` serves the other suites.
mod common;

#[test]
fn sim_chord_prints_every_experiment_beside_the_paper() {
    let args = [
        "sim",
        "chord",
        "--max-log-n",
        "5",
        "--actor-max-log-n",
        "4",
        "--lookups-per-node",
        "10",
        "--load-nodes",
        "100",
        "--load-keys",
        "5000",
        "--vnode-keys",
        "5000",
        "--failure-nodes",
        "48",
        "--successors",
        "8",
        "--failure-lookups",
        "100",
        "--churn-nodes",
        "16",
        "--churn-rates",
        "0.1",
        "--churn-lookups",
        "30",
        "--stabilize",
        "5s",
    ];
    let (code, out, err) = synod(&args);
    assert_eq!(code, 0, "{out}{err}");
    for heading in [
        "## Path length",
        "## Load without virtual nodes",
        "## Load with virtual nodes",
        "## Simultaneous failures",
        "## Churn",
        "every lookup reached the key's live successor",
    ] {
        assert!(out.contains(heading), "missing {heading}:\n{out}");
    }
    // The paper's figures stand beside ours.
    assert!(
        out.contains("3.84") && out.contains("5.10") && out.contains("9.10"),
        "{out}"
    );
    // The same seed prints the same tables.
    let (_, again, _) = synod(&args);
    assert_eq!(out, again);
}

#[test]
fn sim_chord_rejects_bad_flags_with_a_clear_error() {
    let (code, _, err) = synod(&["sim", "chord", "--experiments", "paths"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown experiment `paths`"), "{err}");
    let (code, _, err) = synod(&["sim", "chord", "--fractions", "0.1,2"]);
    assert_ne!(code, 0);
    assert!(err.contains("must be between 0 and 0.9"), "{err}");
    let (code, _, err) = synod(&["sim", "chord", "--churn-rates", "fast"]);
    assert_ne!(code, 0);
    assert!(err.contains("`fast` is not a number"), "{err}");
    let (code, _, err) = synod(&["sim", "chord", "--stabilize", "30"]);
    assert_ne!(code, 0);
    assert!(err.contains("needs a unit"), "{err}");
    let (code, _, err) = synod(&[
        "sim",
        "chord",
        "--experiments",
        "failures",
        "--failure-nodes",
        "10",
        "--successors",
        "20",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--successors must be smaller"), "{err}");
}
