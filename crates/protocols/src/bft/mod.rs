//! # Byzantine agreement: oral messages OM(m) and signed messages SM(m)
//!
//! After Lamport, Shostak and Pease, "The Byzantine Generals Problem", ACM TOPLAS 4(3),
//! 1982: §3 (oral messages, algorithm OM(m)) and §4 (signed messages, algorithm SM(m)).
//!
//! A commander sends an order to n−1 lieutenants; up to m of the n generals (the
//! commander included) are traitors. The interactive consistency conditions are:
//!
//! - **IC1**: all loyal lieutenants obey the same order.
//! - **IC2**: if the commander is loyal, every loyal lieutenant obeys the order it sends.
//!
//! ## The algorithms
//!
//! - [`om`]: OM(m) for n ≥ 3m+1 generals, in m+1 rounds of oral messages. In round r
//!   every general relays, along every path of r−1 distinct lieutenants, what it heard
//!   to every general not yet on the path; a lieutenant decides by the paper's recursive
//!   majority (§3, OM(m) step 3), with RETREAT as the default for a missing message and
//!   for no majority. Round r carries exactly (n−1)(n−2)…(n−r) messages, so the last
//!   round carries (n−1)(n−2)…(n−m−1).
//! - [`sm`]: SM(m) for any n ≥ m+2, in m+1 rounds. The commander signs its order; a
//!   lieutenant that receives a correctly signed chain with an order new to it adds the
//!   order to its set V, and while the chain has at most m signatures, countersigns and
//!   relays it to every lieutenant not on it. Each lieutenant obeys `choice(V)`: the
//!   order if V holds exactly one, RETREAT otherwise. Signatures are real ed25519
//!   signatures (ed25519-dalek), so a traitor cannot alter a loyal general's order: a
//!   tampered chain fails verification and is dropped.
//! - [`check`]: the exhaustive check. For every n ≤ 7 and m ≤ 2, every placement of up
//!   to m traitors (the commander may be one), every assignment of [`Strategy`] to them
//!   and both orders of the commander, it runs the algorithm and checks IC1 and IC2.
//!   Where n ≥ 3m+1 (OM) or n ≥ m+2 (SM) they must hold; for n ≤ 3m, OM fails and the
//!   check prints the counterexample it found.
//!
//! ## Model
//!
//! This is a direct, round-based model rather than an [`synod_core::Actor`]: the paper's
//! algorithms are defined in synchronous rounds (assumption A3: a missing message is
//! detected, and then the default is used), and a round-based model makes the exhaustive
//! enumeration of traitor placements and strategies fast and exact. Message counts are
//! counted per round. Keys are derived from node ids, so runs are reproducible; they are
//! simulation keys, never for real use.
//!
//! ## Traitor strategies
//!
//! [`Strategy::Silent`] sends nothing. [`Strategy::RandomValue`] sends a random order in
//! each message (under SM it also tampers with chains, which verification rejects).
//! [`Strategy::TwoFaced`] equivocates: it tells lieutenants of one parity the truth and
//! the others the opposite (SM: it relays only to one parity). [`Strategy::Colluding`]:
//! all colluding traitors share a split of the loyal lieutenants and push ATTACK to one
//! half and RETREAT to the other, on every path; under SM they also share their signing
//! keys, so they can forge any chain made only of traitors' signatures.
//!
//! ## Differences from the chapter's sketch
//!
//! The sketch runs one round of relaying and a flat majority, which is OM(1) only; here
//! the recursion runs to any m, and SM uses real signatures rather than a flag.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use synod_core::NodeId;

pub mod check;
pub mod om;
pub mod sm;

#[cfg(test)]
mod tests;

/// An order. RETREAT is the default (§3: a missing message or no majority means RETREAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Order {
    /// Attack.
    Attack,
    /// Retreat: the default.
    Retreat,
}

impl Order {
    /// The other order.
    pub fn opposite(self) -> Order {
        match self {
            Order::Attack => Order::Retreat,
            Order::Retreat => Order::Attack,
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Order::Attack => "ATTACK",
            Order::Retreat => "RETREAT",
        })
    }
}

/// How a traitor behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strategy {
    /// Sends nothing at all.
    Silent,
    /// A random order in every message, from a seeded stream.
    RandomValue {
        /// The seed of the traitor's stream.
        seed: u64,
    },
    /// Equivocates by the receiver's parity.
    TwoFaced,
    /// Coordinates with the other colluding traitors to split the loyal lieutenants.
    Colluding,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Silent => f.write_str("silent"),
            Strategy::RandomValue { seed } => write!(f, "random(seed {seed})"),
            Strategy::TwoFaced => f.write_str("two-faced"),
            Strategy::Colluding => f.write_str("colluding"),
        }
    }
}

/// One run's setup: n generals `NodeId(0..n)`, the commander, its order, and the traitors
/// with their strategies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Number of generals, commander included.
    pub n: u32,
    /// The traitor bound the algorithm is run for.
    pub m: u32,
    /// The commander.
    pub commander: NodeId,
    /// The order a loyal commander sends (a traitor commander starts from it).
    pub order: Order,
    /// The traitors and how each behaves.
    pub traitors: BTreeMap<NodeId, Strategy>,
}

impl Scenario {
    /// The lieutenants, in id order.
    pub fn lieutenants(&self) -> Vec<NodeId> {
        (0..self.n)
            .map(NodeId)
            .filter(|g| *g != self.commander)
            .collect()
    }

    /// Whether `general` is loyal.
    pub fn loyal(&self, general: NodeId) -> bool {
        !self.traitors.contains_key(&general)
    }

    /// The half of the loyal lieutenants colluding traitors push toward ATTACK: the
    /// first half in id order.
    pub(crate) fn colluders_attack_half(&self, receiver: NodeId) -> bool {
        let loyal: Vec<NodeId> = self
            .lieutenants()
            .into_iter()
            .filter(|l| self.loyal(*l))
            .collect();
        let half = loyal.len().div_ceil(2);
        loyal
            .iter()
            .position(|l| *l == receiver)
            .is_some_and(|i| i < half)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} m={} commander {} orders {}; traitors: ",
            self.n, self.m, self.commander, self.order
        )?;
        if self.traitors.is_empty() {
            return f.write_str("none");
        }
        let list: Vec<String> = self
            .traitors
            .iter()
            .map(|(g, s)| format!("{g} {s}"))
            .collect();
        f.write_str(&list.join(", "))
    }
}

/// What a run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The order each loyal lieutenant obeys.
    pub decisions: BTreeMap<NodeId, Order>,
    /// Messages sent in each round (index 0 is round 1).
    pub messages_per_round: Vec<u64>,
    /// Messages dropped because their signatures did not verify (SM only).
    pub rejected: u64,
}

impl Outcome {
    /// Every message sent.
    pub fn messages(&self) -> u64 {
        self.messages_per_round.iter().sum()
    }

    /// Which interactive consistency condition the run broke, if any.
    pub fn violation(&self, scenario: &Scenario) -> Option<String> {
        let mut orders = self.decisions.values();
        if let Some(first) = orders.next() {
            if orders.any(|o| o != first) {
                return Some(format!(
                    "IC1 broken: loyal lieutenants decided {}",
                    self.describe()
                ));
            }
        }
        if scenario.loyal(scenario.commander) {
            if let Some((l, o)) = self.decisions.iter().find(|(_, o)| **o != scenario.order) {
                return Some(format!(
                    "IC2 broken: the loyal commander ordered {} but {l} obeys {o} ({})",
                    scenario.order,
                    self.describe()
                ));
            }
        }
        None
    }

    fn describe(&self) -> String {
        let list: Vec<String> = self
            .decisions
            .iter()
            .map(|(g, o)| format!("{g}={o}"))
            .collect();
        list.join(" ")
    }
}

/// The majority of `orders`, or RETREAT if there is none (§3).
pub(crate) fn majority(orders: &[Order]) -> Order {
    let attack = orders.iter().filter(|o| **o == Order::Attack).count();
    if attack * 2 > orders.len() {
        Order::Attack
    } else {
        // Either RETREAT has the majority, or there is none and RETREAT is the default.
        Order::Retreat
    }
}

/// (n−1)(n−2)…(n−r): the messages of round r of OM(m), one per path of r distinct
/// generals starting at the commander and per receiver off the path.
pub fn om_round_messages(n: u32, round: u32) -> u64 {
    (1..=round)
        .map(|k| u64::from(n.saturating_sub(k)))
        .product()
}
