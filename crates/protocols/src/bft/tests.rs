//! Byzantine agreement tests: the paper's small cases by hand, then the exhaustive check.

use super::check::{check, om_expected_per_round, Algorithm};
use super::sm::{verify, Keyring, SignedOrder};
use super::{om, sm, Order, Scenario, Strategy};
use std::collections::BTreeMap;
use synod_core::NodeId;

fn scenario(n: u32, m: u32, order: Order, traitors: &[(u32, Strategy)]) -> Scenario {
    Scenario {
        n,
        m,
        commander: NodeId(0),
        order,
        traitors: traitors.iter().map(|(g, s)| (NodeId(*g), *s)).collect(),
    }
}

/// Figure 1 of the paper: with three generals a traitorous lieutenant makes a loyal one
/// disobey a loyal commander under OM(1) (IC2 fails: n = 3m).
#[test]
fn three_generals_cannot_cope_with_one_oral_traitor() {
    let s = scenario(3, 1, Order::Attack, &[(2, Strategy::TwoFaced)]);
    let out = om::run(&s);
    assert!(out.violation(&s).is_some(), "{:?}", out);
}

/// Figure 3: with four generals OM(1) copes with a traitorous lieutenant.
#[test]
fn four_generals_cope_with_one_oral_traitor() {
    for strategy in super::check::strategies() {
        let s = scenario(4, 1, Order::Attack, &[(3, strategy)]);
        let out = om::run(&s);
        assert_eq!(out.violation(&s), None, "{s}");
        assert_eq!(out.decisions.len(), 2);
    }
}

/// SM(1) copes with three generals where OM(1) cannot (§4, Figure 5).
#[test]
fn three_generals_cope_with_one_traitor_using_signatures() {
    for strategy in super::check::strategies() {
        for traitor in [0, 2] {
            let s = scenario(3, 1, Order::Attack, &[(traitor, strategy)]);
            assert_eq!(sm::run(&s).violation(&s), None, "{s}");
        }
    }
}

/// A chain whose order was changed after signing does not verify.
#[test]
fn tampered_signed_orders_are_rejected() {
    let mut keys = Keyring::new(3);
    let signed =
        SignedOrder::new(Order::Attack, NodeId(0), &mut keys).countersigned(NodeId(1), &mut keys);
    assert_eq!(verify(&signed, NodeId(0), &mut keys), Ok(()));
    let mut tampered = signed.clone();
    tampered.order = Order::Retreat;
    assert!(verify(&tampered, NodeId(0), &mut keys).is_err());
    let forged = SignedOrder::new(Order::Retreat, NodeId(1), &mut keys);
    assert!(verify(&forged, NodeId(0), &mut keys).is_err());
}

/// Round r of OM(m) sends (n−1)(n−2)…(n−r) messages when every general is loyal.
#[test]
fn oral_message_counts_follow_the_round_structure() {
    for n in 2..=7 {
        for m in 0..=2u32.min(n - 2) {
            let s = scenario(n, m, Order::Attack, &[]);
            assert_eq!(om::run(&s).messages_per_round, om_expected_per_round(n, m));
        }
    }
    assert_eq!(om_expected_per_round(7, 2), vec![6, 30, 120]);
}

/// For every n ≤ 7 and m ≤ 2 and every traitor placement and strategy: OM(m) keeps IC1
/// and IC2 whenever n ≥ 3m+1, and the check finds a counterexample for n = 3m.
#[test]
fn oral_messages_exhaustive_check() {
    for n in 2..=7 {
        for m in 0..=2 {
            if m + 2 > n {
                continue;
            }
            let report = check(Algorithm::Oral, n, m);
            assert!(report.consistent_with_paper(), "{report:?}");
            if n == 3 * m {
                assert!(report.counterexample.is_some(), "n={n} m={m}: none found");
            }
        }
    }
}

/// For every n ≤ 7 and m ≤ 2 with n ≥ m+2 and every traitor placement and strategy,
/// SM(m) keeps IC1 and IC2.
#[test]
fn signed_messages_exhaustive_check() {
    for n in 3..=7 {
        for m in 1..=2 {
            if n < m + 2 {
                continue;
            }
            let report = check(Algorithm::Signed, n, m);
            assert_eq!(report.violations, 0, "{report:?}");
        }
    }
}

/// Colluding traitors that share keys can forge chains made only of their own
/// signatures; with the commander among them SM still holds for n ≥ m+2.
#[test]
fn colluding_traitors_with_a_traitor_commander_cannot_split_sm() {
    let s = Scenario {
        traitors: BTreeMap::from([
            (NodeId(0), Strategy::Colluding),
            (NodeId(1), Strategy::Colluding),
        ]),
        ..scenario(5, 2, Order::Attack, &[])
    };
    let out = sm::run(&s);
    assert_eq!(out.violation(&s), None, "{out:?}");
}
