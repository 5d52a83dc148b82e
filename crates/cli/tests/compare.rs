//! `synod compare`: the measured message counts match the textbook where the textbook is
//! exact (issue 6), the chart is written, and bad node lists are refused.

use common::synod;

mod common;

fn scratch(name: &str) -> std::path::PathBuf {
    common::scratch("compare", name)
}

/// The table rows for `algorithm`, split on whitespace and `|`.
fn rows<'a>(out: &'a str, algorithm: &str) -> Vec<Vec<&'a str>> {
    out.lines()
        .filter(|l| l.starts_with(algorithm))
        .map(|l| {
            l[algorithm.len()..]
                .split(|c: char| c.is_whitespace() || c == '|')
                .filter(|w| !w.is_empty())
                .collect()
        })
        .collect()
}

/// Ricart & Agrawala 1981 §3: 2(N−1) messages per entry; Lamport 1978: 3(N−1).
#[test]
fn ricart_agrawala_and_lamport_cost_exactly_their_textbook_messages_per_entry() {
    let (code, out, err) = synod(&[
        "compare",
        "mutex",
        "--nodes",
        "3,5",
        "--requests",
        "30",
        "--seed",
        "4",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for (algorithm, per_peer) in [("Ricart-Agrawala", 2u32), ("Lamport", 3)] {
        let rows = rows(&out, algorithm);
        assert_eq!(rows.len(), 2, "{algorithm} rows in\n{out}");
        for row in rows {
            let n: u32 = row[0].parse().expect("N column");
            let measured: f64 = row[1].parse().expect("messages per entry column");
            let theory = f64::from(per_peer * (n - 1));
            assert_eq!(measured, theory, "{algorithm} N = {n}\n{out}");
            assert!(
                row.contains(&"yes"),
                "{algorithm} N = {n} not marked as matching\n{out}"
            );
        }
    }
}

#[test]
fn chang_roberts_worst_case_and_bully_worst_case_match_their_formulas() {
    let (code, out, err) = synod(&["compare", "election", "--nodes", "4,6", "--samples", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    let exact: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("(worst)") || l.contains("(best)"))
        .collect();
    assert_eq!(exact.len(), 6, "{out}");
    assert!(exact.iter().all(|l| l.ends_with("yes")), "{out}");
}

#[test]
fn compare_draws_an_svg_chart() {
    let dir = scratch("chart");
    for (what, nodes) in [("mutex", "2,3"), ("election", "3,4")] {
        let chart = dir.join(format!("{what}.svg"));
        let mut args = vec!["compare", what, "--nodes", nodes, "--chart"];
        args.push(chart.to_str().unwrap());
        if what == "mutex" {
            args.extend(["--requests", "10"]);
        } else {
            args.extend(["--samples", "1"]);
        }
        let (code, out, err) = synod(&args);
        assert_eq!(code, 0, "{out}{err}");
        let svg = std::fs::read_to_string(&chart).expect("chart written");
        assert!(
            svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
    }
}

#[test]
fn compare_refuses_bad_node_counts_with_exit_code_2() {
    for (bad, says) in [("0", "between"), ("x", "not a node count"), ("4,,9", "")] {
        let (code, out, err) = synod(&["compare", "mutex", "--nodes", bad]);
        assert_eq!(code, 2, "--nodes {bad}: {out}{err}");
        assert!(err.contains(says), "--nodes {bad}: {err}");
        assert!(out.is_empty(), "--nodes {bad} printed a table: {out}");
    }
}
