//! A property test against a naive model that keeps a full copy of the key space per
//! revision: Range at every revision (with ranges, limits and errors), the events of
//! every retained revision, and a snapshot round trip must agree with it.

use crate::mvcc::*;
use crate::raft::StateMachine;
use proptest::prelude::*;
use std::collections::BTreeMap;

const KEYS: [&str; 5] = ["a", "b", "ba", "c", "d"];

#[derive(Clone, Debug)]
enum Step {
    Put {
        key: usize,
        value: u8,
        lease: u8,
    },
    Delete {
        key: usize,
        to_end: bool,
    },
    /// If `guard` has version 0, put `keys`, else delete `guard`.
    Txn {
        guard: usize,
        keys: Vec<usize>,
        value: u8,
    },
    Grant {
        lease: u8,
    },
    Revoke {
        lease: u8,
    },
    Compact {
        back: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..KEYS.len(), any::<u8>(), 0u8..4).prop_map(|(key, value, lease)| Step::Put { key, value, lease }),
        2 => (0..KEYS.len(), any::<bool>()).prop_map(|(key, to_end)| Step::Delete { key, to_end }),
        2 => (0..KEYS.len(), proptest::collection::btree_set(0..KEYS.len(), 1..4), any::<u8>())
            .prop_map(|(guard, keys, value)| Step::Txn { guard, keys: keys.into_iter().collect(), value }),
        1 => (1u8..4).prop_map(|lease| Step::Grant { lease }),
        1 => (1u8..4).prop_map(|lease| Step::Revoke { lease }),
        1 => (0u8..6).prop_map(|back| Step::Compact { back }),
    ]
}

type Snapshot = BTreeMap<Vec<u8>, KeyValue>;

/// The model: `states[r]` is the whole key space at revision `r` (index 0 unused).
struct Model {
    states: Vec<Snapshot>,
    leases: BTreeMap<i64, ()>,
    compacted: i64,
}

impl Model {
    fn current(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn last(&self) -> &Snapshot {
        &self.states[self.states.len() - 1]
    }

    /// One revision's writes: puts then deletes, applied to a copy of the last state.
    fn write(&mut self, puts: &[(Vec<u8>, Vec<u8>, i64)], deletes: &[Vec<u8>]) {
        let rev = self.current() + 1;
        let mut next = self.last().clone();
        let mut changed = false;
        for (key, value, lease) in puts {
            let (create, version) = match next.get(key) {
                Some(kv) => (kv.create_revision, kv.version + 1),
                None => (rev, 1),
            };
            next.insert(
                key.clone(),
                KeyValue {
                    key: key.clone(),
                    create_revision: create,
                    mod_revision: rev,
                    version,
                    value: value.clone(),
                    lease: *lease,
                },
            );
            changed = true;
        }
        for key in deletes {
            changed |= next.remove(key).is_some();
        }
        if changed {
            self.states.push(next);
        }
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Put { key, value, lease } => {
                let lease = i64::from(*lease);
                if lease == 0 || self.leases.contains_key(&lease) {
                    self.write(&[(KEYS[*key].into(), vec![*value], lease)], &[]);
                }
            }
            Step::Delete { key, to_end } => {
                let start = KEYS[*key].as_bytes();
                let doomed: Vec<Vec<u8>> = self
                    .last()
                    .keys()
                    .filter(|k| k.as_slice() == start || (*to_end && k.as_slice() > start))
                    .cloned()
                    .collect();
                self.write(&[], &doomed);
            }
            Step::Txn { guard, keys, value } => {
                let guard = KEYS[*guard].as_bytes().to_vec();
                if self.last().contains_key(&guard) {
                    self.write(&[], &[guard]);
                } else {
                    let puts: Vec<_> = keys
                        .iter()
                        .map(|k| (KEYS[*k].as_bytes().to_vec(), vec![*value], 0))
                        .collect();
                    self.write(&puts, &[]);
                }
            }
            Step::Grant { lease } => {
                self.leases.insert(i64::from(*lease), ());
            }
            Step::Revoke { lease } => {
                let lease = i64::from(*lease);
                if self.leases.remove(&lease).is_some() {
                    let doomed: Vec<Vec<u8>> = self
                        .last()
                        .values()
                        .filter(|kv| kv.lease == lease)
                        .map(|kv| kv.key.clone())
                        .collect();
                    self.write(&[], &doomed);
                }
            }
            Step::Compact { back } => {
                let to = self.current() - i64::from(*back);
                if to > self.compacted {
                    self.compacted = to;
                }
            }
        }
    }
}

fn command(step: &Step, current: i64) -> MvccCommand {
    match step {
        Step::Put { key, value, lease } => MvccCommand::Put(PutRequest {
            key: KEYS[*key].into(),
            value: vec![*value],
            lease: i64::from(*lease),
            ..PutRequest::default()
        }),
        Step::Delete { key, to_end } => MvccCommand::DeleteRange(DeleteRangeRequest {
            key: KEYS[*key].into(),
            range_end: if *to_end { vec![0] } else { Vec::new() },
            prev_kv: true,
        }),
        Step::Txn { guard, keys, value } => MvccCommand::Txn(TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Version(0),
                key: KEYS[*guard].into(),
                range_end: Vec::new(),
            }],
            success: keys
                .iter()
                .map(|k| {
                    RequestOp::Put(PutRequest {
                        key: KEYS[*k].into(),
                        value: vec![*value],
                        ..PutRequest::default()
                    })
                })
                .collect(),
            failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                key: KEYS[*guard].into(),
                ..DeleteRangeRequest::default()
            })],
        }),
        Step::Grant { lease } => MvccCommand::LeaseGrant {
            id: LeaseId(i64::from(*lease)),
            ttl: 10,
        },
        Step::Revoke { lease } => MvccCommand::LeaseRevoke {
            id: LeaseId(i64::from(*lease)),
        },
        Step::Compact { back } => MvccCommand::Compact(CompactionRequest {
            revision: current - i64::from(*back),
            physical: false,
        }),
    }
}

/// The ranges every revision is read with: (key, range_end).
fn ranges() -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (vec![0], vec![0]),
        (b"b".to_vec(), Vec::new()),
        (b"b".to_vec(), b"c".to_vec()),
        (b"ba".to_vec(), vec![0]),
        (b"c".to_vec(), b"a".to_vec()),
    ]
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        return key == start;
    }
    key >= start && (end == [0] || key < end)
}

fn check(sm: &MvccStateMachine, model: &Model) -> Result<(), TestCaseError> {
    let current = model.current();
    prop_assert_eq!(sm.revision(), Revision(current));
    prop_assert_eq!(sm.compacted_revision(), Revision(model.compacted));
    for rev in 0..=current + 1 {
        for (key, range_end) in ranges() {
            for limit in [0, 2] {
                let req = RangeRequest {
                    key: key.clone(),
                    range_end: range_end.clone(),
                    revision: rev,
                    limit,
                    ..RangeRequest::default()
                };
                let got = sm.range(&req);
                if rev > current {
                    prop_assert_eq!(got, Err(MvccError::FutureRevision));
                    continue;
                }
                let at = if rev == 0 { current } else { rev };
                if at < model.compacted {
                    prop_assert_eq!(
                        got,
                        Err(MvccError::Compacted {
                            compact_revision: model.compacted
                        })
                    );
                    continue;
                }
                let all: Vec<KeyValue> = model.states[at as usize]
                    .values()
                    .filter(|kv| in_range(&kv.key, &key, &range_end))
                    .cloned()
                    .collect();
                let mut kvs = all.clone();
                let more = limit > 0 && kvs.len() > limit as usize;
                if more {
                    kvs.truncate(limit as usize);
                }
                let want = RangeResponse {
                    revision: current,
                    kvs,
                    more,
                    count: all.len() as i64,
                };
                prop_assert_eq!(got, Ok(want), "range {:?}..{:?} at {}", key, range_end, rev);
            }
        }
    }
    // Events: per retained revision, the diff between consecutive model states.
    for rev in model.compacted + 1..=current {
        let before = &model.states[rev as usize - 1];
        let after = &model.states[rev as usize];
        let mut want: Vec<(Vec<u8>, Option<KeyValue>, Option<KeyValue>)> = Vec::new();
        for key in before.keys().chain(after.keys()) {
            let (b, a) = (before.get(key), after.get(key));
            if b != a && !want.iter().any(|(k, _, _)| k == key) {
                want.push((key.clone(), a.cloned(), b.cloned()));
            }
        }
        want.sort_by(|x, y| x.0.cmp(&y.0));
        let mut got: Vec<_> = sm
            .events_between(Revision(rev), Revision(rev), &[0], &[0])
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .into_iter()
            .map(|e| {
                let now = (e.kind == EventKind::Put).then_some(e.kv.clone());
                (e.kv.key, now, e.prev_kv)
            })
            .collect();
        got.sort_by(|x, y| x.0.cmp(&y.0));
        prop_assert_eq!(got, want, "events at {}", rev);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn range_and_events_at_every_revision_match_a_full_copy_per_revision_model(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        let mut sm = MvccStateMachine::default();
        let mut model = Model { states: vec![Snapshot::new(), Snapshot::new()], leases: BTreeMap::new(), compacted: 0 };
        for (i, step) in steps.iter().enumerate() {
            let _ = sm.apply_command(i as u64 + 1, &command(step, model.current()));
            model.apply(step);
            sm.check_consistency().map_err(TestCaseError::fail)?;
        }
        check(&sm, &model)?;
        let mut restored = MvccStateMachine::default();
        restored.restore(&sm.snapshot()).map_err(TestCaseError::fail)?;
        prop_assert!(restored == sm);
        check(&restored, &model)?;
    }
}
