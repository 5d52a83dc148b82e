//! The exhaustive check of IC1 and IC2 over every traitor placement and strategy.

use super::sm::Keyring;
use super::{om, om_round_messages, sm, Order, Outcome, Scenario, Strategy};
use std::collections::BTreeMap;
use std::fmt;
use synod_core::NodeId;

/// Which algorithm to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// OM(m), oral messages.
    Oral,
    /// SM(m), signed messages.
    Signed,
}

impl Algorithm {
    /// Whether the paper proves IC1 and IC2 for `n` generals and at most `m` traitors.
    pub fn proven_for(self, n: u32, m: u32) -> bool {
        match self {
            Algorithm::Oral => n > 3 * m,
            Algorithm::Signed => n >= m + 2,
        }
    }

    /// Run one scenario.
    pub fn run(self, scenario: &Scenario, keys: &mut Keyring) -> Outcome {
        match self {
            Algorithm::Oral => om::run(scenario),
            Algorithm::Signed => sm::run_with(scenario, keys),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Oral => "OM",
            Algorithm::Signed => "SM",
        })
    }
}

/// The strategies a traitor is tried with: silent, random (three seeds), two-faced and
/// colluding.
pub fn strategies() -> Vec<Strategy> {
    vec![
        Strategy::Silent,
        Strategy::RandomValue { seed: 1 },
        Strategy::RandomValue { seed: 2 },
        Strategy::RandomValue { seed: 3 },
        Strategy::TwoFaced,
        Strategy::Colluding,
    ]
}

/// What the check of one (algorithm, n, m) found.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Generals.
    pub n: u32,
    /// The traitor bound.
    pub m: u32,
    /// Scenarios run.
    pub runs: u64,
    /// Scenarios in which IC1 or IC2 failed.
    pub violations: u64,
    /// The first failing scenario and what failed.
    pub counterexample: Option<(Scenario, String)>,
    /// Messages per round with every general loyal.
    pub loyal_messages_per_round: Vec<u64>,
    /// The most messages any run sent (SM varies with the traitors).
    pub max_messages: u64,
    /// Messages SM dropped because a signature did not verify, over every run.
    pub rejected: u64,
}

impl CheckReport {
    /// Whether the paper proves the conditions for this n and m.
    pub fn proven(&self) -> bool {
        self.algorithm.proven_for(self.n, self.m)
    }

    /// The check agrees with the paper: no violation where it is proven.
    pub fn consistent_with_paper(&self) -> bool {
        !self.proven() || self.violations == 0
    }
}

/// Every subset of `items` with at most `k` elements, smallest first.
fn subsets(items: &[NodeId], k: usize) -> Vec<Vec<NodeId>> {
    let mut out = vec![Vec::new()];
    for size in 1..=k.min(items.len()) {
        let mut idx: Vec<usize> = (0..size).collect();
        loop {
            out.push(idx.iter().map(|i| items[*i]).collect());
            // Next combination in lexicographic order.
            let mut i = size;
            while i > 0 && idx[i - 1] == items.len() - size + i - 1 {
                i -= 1;
            }
            if i == 0 {
                break;
            }
            idx[i - 1] += 1;
            for j in i..size {
                idx[j] = idx[j - 1] + 1;
            }
        }
    }
    out
}

/// Every assignment of `strategies` to `traitors`.
fn assignments(traitors: &[NodeId], strategies: &[Strategy]) -> Vec<BTreeMap<NodeId, Strategy>> {
    let mut out = vec![BTreeMap::new()];
    for t in traitors {
        out = out
            .into_iter()
            .flat_map(|partial| {
                strategies.iter().map(move |s| {
                    let mut a = partial.clone();
                    a.insert(*t, *s);
                    a
                })
            })
            .collect();
    }
    out
}

/// Run `algorithm` for `n` generals (commander `NodeId(0)`) and bound `m` over every
/// placement of at most `m` traitors, every assignment of [`strategies`] to them and
/// both orders, checking IC1 and IC2 in each.
pub fn check(algorithm: Algorithm, n: u32, m: u32) -> CheckReport {
    let generals: Vec<NodeId> = (0..n).map(NodeId).collect();
    let strategies = strategies();
    let mut keys = Keyring::new(n);
    let base = Scenario {
        n,
        m,
        commander: NodeId(0),
        order: Order::Attack,
        traitors: BTreeMap::new(),
    };
    let loyal = algorithm.run(&base, &mut keys);
    let mut report = CheckReport {
        algorithm,
        n,
        m,
        runs: 0,
        violations: 0,
        counterexample: None,
        loyal_messages_per_round: loyal.messages_per_round,
        max_messages: 0,
        rejected: 0,
    };
    for placement in subsets(&generals, m as usize) {
        for traitors in assignments(&placement, &strategies) {
            for order in [Order::Attack, Order::Retreat] {
                let scenario = Scenario {
                    order,
                    traitors: traitors.clone(),
                    ..base.clone()
                };
                let outcome = algorithm.run(&scenario, &mut keys);
                report.runs += 1;
                report.max_messages = report.max_messages.max(outcome.messages());
                report.rejected += outcome.rejected;
                if let Some(why) = outcome.violation(&scenario) {
                    report.violations += 1;
                    if report.counterexample.is_none() {
                        report.counterexample = Some((scenario, why));
                    }
                }
            }
        }
    }
    report
}

/// OM's expected messages per round: (n−1), (n−1)(n−2), …, (n−1)…(n−m−1).
pub fn om_expected_per_round(n: u32, m: u32) -> Vec<u64> {
    (1..=m + 1).map(|r| om_round_messages(n, r)).collect()
}
