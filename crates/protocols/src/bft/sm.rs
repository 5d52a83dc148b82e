//! SM(m), the signed messages algorithm (Lamport, Shostak, Pease 1982, §4), with
//! ed25519 signatures.
//!
//! A message is an order with a chain of signatures: the commander's first, then one per
//! lieutenant that relayed it. Signature k signs the order and the ids of the first k+1
//! signers, so a chain cannot be reordered, shortened into another valid chain with a
//! different order, or extended in anyone's name but the signer's. A message received in
//! round r must carry exactly r signatures (the synchronous-round form of assumption A3).

use super::{Order, Outcome, Scenario, Strategy};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use synod_core::{codec, ActorRng, NodeId};

/// The deterministic simulation key of `general` (never for real use).
pub fn signing_key(general: NodeId) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&general.0.to_le_bytes());
    seed[4..11].copy_from_slice(b"synodsm");
    SigningKey::from_bytes(&seed)
}

/// Every general's keys, with a cache of signatures and of verified chain prefixes.
/// ed25519 signatures are deterministic, so caching them changes nothing but speed: the
/// exhaustive check signs and verifies the same chains in thousands of runs.
pub struct Keyring {
    signing: BTreeMap<NodeId, SigningKey>,
    verifying: BTreeMap<NodeId, VerifyingKey>,
    signatures: BTreeMap<(NodeId, Vec<u8>), Signature>,
    verified: BTreeSet<Vec<u8>>,
}

impl Keyring {
    /// Keys for generals `0..n`.
    pub fn new(n: u32) -> Self {
        let signing: BTreeMap<NodeId, SigningKey> = (0..n)
            .map(|g| (NodeId(g), signing_key(NodeId(g))))
            .collect();
        let verifying = signing
            .iter()
            .map(|(g, k)| (*g, k.verifying_key()))
            .collect();
        Keyring {
            signing,
            verifying,
            signatures: BTreeMap::new(),
            verified: BTreeSet::new(),
        }
    }

    /// `general`'s signature over `bytes`. A general outside the ring signs with a
    /// key of its own that no one trusts.
    fn sign(&mut self, general: NodeId, bytes: Vec<u8>) -> Signature {
        let key = self
            .signing
            .get(&general)
            .cloned()
            .unwrap_or_else(|| signing_key(general));
        *self
            .signatures
            .entry((general, bytes))
            .or_insert_with_key(|(_, bytes)| key.sign(bytes))
    }
}

/// A signed order: the order and its chain of `(signer, signature)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedOrder {
    /// The order.
    pub order: Order,
    /// The signers, commander first, each with its signature.
    pub chain: Vec<(NodeId, Signature)>,
}

fn signed_bytes(order: Order, signers: &[NodeId]) -> Vec<u8> {
    codec::encode(&(b"synod-sm", order, signers))
}

impl SignedOrder {
    /// The commander's signed order.
    pub fn new(order: Order, commander: NodeId, keys: &mut Keyring) -> Self {
        let signature = keys.sign(commander, signed_bytes(order, &[commander]));
        SignedOrder {
            order,
            chain: vec![(commander, signature)],
        }
    }

    /// The chain's signers, in order.
    pub fn signers(&self) -> Vec<NodeId> {
        self.chain.iter().map(|(g, _)| *g).collect()
    }

    /// This chain countersigned by `by`.
    pub fn countersigned(&self, by: NodeId, keys: &mut Keyring) -> Self {
        let mut signers = self.signers();
        signers.push(by);
        let signature = keys.sign(by, signed_bytes(self.order, &signers));
        let mut chain = self.chain.clone();
        chain.push((by, signature));
        SignedOrder {
            order: self.order,
            chain,
        }
    }
}

/// Why a signed order was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// It has no signatures.
    #[error("the chain is empty")]
    Empty,
    /// The first signer is not the commander.
    #[error("the chain starts with {0}, not the commander")]
    NotFromCommander(NodeId),
    /// A general signed twice.
    #[error("{0} signed twice")]
    Repeated(NodeId),
    /// A signer is not one of the generals.
    #[error("{0} is not a general")]
    Unknown(NodeId),
    /// A signature does not verify.
    #[error("the signature of {0} does not verify")]
    BadSignature(NodeId),
}

/// Check every signature of `message`, skipping chain prefixes already verified.
pub fn verify(
    message: &SignedOrder,
    commander: NodeId,
    keyring: &mut Keyring,
) -> Result<(), ChainError> {
    let keys = &keyring.verifying;
    let verified = &mut keyring.verified;
    let Some((first, _)) = message.chain.first() else {
        return Err(ChainError::Empty);
    };
    if *first != commander {
        return Err(ChainError::NotFromCommander(*first));
    }
    let mut signers = Vec::new();
    for (signer, signature) in &message.chain {
        if signers.contains(signer) {
            return Err(ChainError::Repeated(*signer));
        }
        signers.push(*signer);
        let bytes = signed_bytes(message.order, &signers);
        let mut memo = bytes.clone();
        memo.extend_from_slice(&signature.to_bytes());
        if verified.contains(&memo) {
            continue;
        }
        let key = keys.get(signer).ok_or(ChainError::Unknown(*signer))?;
        key.verify(&bytes, signature)
            .map_err(|_| ChainError::BadSignature(*signer))?;
        verified.insert(memo);
    }
    Ok(())
}

/// `choice(V)` (§4): the order if V holds exactly one, RETREAT otherwise.
fn choice(v: &BTreeSet<Order>) -> Order {
    match (v.len(), v.iter().next()) {
        (1, Some(order)) => *order,
        _ => Order::Retreat,
    }
}

/// Run SM(`scenario.m`) and return each loyal lieutenant's decision, the messages of
/// every round and how many were rejected for bad signatures.
pub fn run(scenario: &Scenario) -> Outcome {
    run_with(scenario, &mut Keyring::new(scenario.n))
}

/// [`run`] with a shared [`Keyring`] (which must hold keys for every general).
pub fn run_with(scenario: &Scenario, keys: &mut Keyring) -> Outcome {
    let n = scenario.n;
    let m = scenario.m;
    let c = scenario.commander;
    let generals: Vec<NodeId> = (0..n).map(NodeId).collect();
    let colluders: BTreeSet<NodeId> = scenario
        .traitors
        .iter()
        .filter(|(_, s)| **s == Strategy::Colluding)
        .map(|(g, _)| *g)
        .collect();
    let mut rngs: BTreeMap<NodeId, ActorRng> = scenario
        .traitors
        .iter()
        .map(|(g, s)| {
            let seed = match s {
                Strategy::RandomValue { seed } => *seed,
                _ => 0,
            };
            (*g, ActorRng::seed_from_u64(seed ^ (u64::from(g.0) << 32)))
        })
        .collect();
    let mut values: BTreeMap<NodeId, BTreeSet<Order>> = BTreeMap::new();
    // What each general received last round and may relay this round.
    let mut inbox: BTreeMap<NodeId, Vec<SignedOrder>> = BTreeMap::new();
    let mut messages_per_round = Vec::new();
    let mut rejected = 0u64;

    for round in 1..=m + 1 {
        let mut outbox: Vec<(NodeId, SignedOrder)> = Vec::new();
        for &g in &generals {
            let received = inbox.remove(&g).unwrap_or_default();
            let strategy = scenario.traitors.get(&g).copied();
            // Loyal behaviour: the commander signs in round 1; a lieutenant relays every
            // chain that brought it a new order, to everyone not on the chain.
            let mut honest: Vec<(NodeId, SignedOrder)> = Vec::new();
            if round == 1 && g == c {
                let order = SignedOrder::new(scenario.order, c, keys);
                for &to in &generals {
                    if to != c {
                        honest.push((to, order.clone()));
                    }
                }
            } else if g != c {
                for message in &received {
                    let v = values.entry(g).or_default();
                    if !v.insert(message.order) {
                        continue;
                    }
                    let relayed = message.countersigned(g, keys);
                    let on_chain = relayed.signers();
                    for &to in &generals {
                        if to != c && !on_chain.contains(&to) {
                            honest.push((to, relayed.clone()));
                        }
                    }
                }
            }
            match strategy {
                None => outbox.extend(honest),
                Some(Strategy::Silent) => {}
                Some(Strategy::TwoFaced) => {
                    if round == 1 && g == c {
                        // Equivocate: each lieutenant of odd id gets the other order.
                        for (to, message) in honest {
                            let order = if to.0.is_multiple_of(2) {
                                message.order
                            } else {
                                message.order.opposite()
                            };
                            outbox.push((to, SignedOrder::new(order, c, keys)));
                        }
                    } else {
                        outbox.extend(honest.into_iter().filter(|(to, _)| to.0.is_multiple_of(2)));
                    }
                }
                Some(Strategy::RandomValue { .. }) => {
                    let rng = rngs.entry(g).or_insert_with(|| ActorRng::seed_from_u64(0));
                    for (to, mut message) in honest {
                        if round == 1 && g == c {
                            let order = if rng.gen_bool(0.5) {
                                Order::Attack
                            } else {
                                Order::Retreat
                            };
                            outbox.push((to, SignedOrder::new(order, c, keys)));
                        } else if rng.gen_bool(0.5) {
                            if rng.gen_bool(0.5) {
                                // Tamper with a signed order: verification drops it.
                                message.order = message.order.opposite();
                            }
                            outbox.push((to, message));
                        }
                    }
                }
                Some(Strategy::Colluding) => {
                    outbox.extend(collude(scenario, round, g, &received, &colluders, keys));
                }
            }
        }
        messages_per_round.push(outbox.len() as u64);
        for (to, message) in outbox {
            if message.chain.len() != round as usize || verify(&message, c, keys).is_err() {
                rejected += 1;
                continue;
            }
            inbox.entry(to).or_default().push(message);
        }
    }
    // The last round's messages are received, adding to V, but not relayed.
    for (g, received) in inbox {
        if g == c {
            continue;
        }
        for message in received {
            values.entry(g).or_default().insert(message.order);
        }
    }

    let decisions = scenario
        .lieutenants()
        .into_iter()
        .filter(|l| scenario.loyal(*l))
        .map(|l| (l, choice(&values.remove(&l).unwrap_or_default())))
        .collect();
    Outcome {
        decisions,
        messages_per_round,
        rejected,
    }
}

/// A colluding traitor's round: send each loyal lieutenant a valid chain for the order
/// the colluders want it to see, built from chains it received or, when the commander
/// colludes too, from the colluders' shared keys alone.
fn collude(
    scenario: &Scenario,
    round: u32,
    me: NodeId,
    received: &[SignedOrder],
    colluders: &BTreeSet<NodeId>,
    keys: &mut Keyring,
) -> Vec<(NodeId, SignedOrder)> {
    let c = scenario.commander;
    let mut out = Vec::new();
    for to in scenario.lieutenants() {
        if to == me || !scenario.loyal(to) {
            continue;
        }
        let want = if scenario.colluders_attack_half(to) {
            Order::Attack
        } else {
            Order::Retreat
        };
        // A received chain with the wanted order, extended by me.
        let from_received = received
            .iter()
            .find(|msg| msg.order == want && !msg.signers().contains(&to))
            .map(|msg| msg.countersigned(me, keys));
        // Or a chain forged from colluders' keys: commander, other colluders, me.
        let mut forged = || -> Option<SignedOrder> {
            if !colluders.contains(&c) {
                return None;
            }
            if me == c {
                return (round == 1).then(|| SignedOrder::new(want, c, keys));
            }
            let middle: Vec<NodeId> = colluders
                .iter()
                .copied()
                .filter(|g| *g != c && *g != me)
                .take((round as usize).checked_sub(2)?)
                .collect();
            if middle.len() + 2 != round as usize {
                return None;
            }
            let mut chain = SignedOrder::new(want, c, keys);
            for g in middle {
                chain = chain.countersigned(g, keys);
            }
            Some(chain.countersigned(me, keys))
        };
        if let Some(message) = from_received.or_else(&mut forged) {
            out.push((to, message));
        }
    }
    out
}
