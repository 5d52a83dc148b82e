//! Tests of etcd v3.4's semantics. "api" cites <https://etcd.io/docs/v3.4/learning/api/>,
//! "data model" cites <https://etcd.io/docs/v3.4/learning/data_model/>.

use crate::mvcc::*;
use crate::raft::StateMachine;
use std::time::Duration;
use synod_core::codec;
use synod_core::Instant;

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

struct Store {
    sm: MvccStateMachine,
    index: u64,
}

impl Store {
    fn new() -> Self {
        Store {
            sm: MvccStateMachine::default(),
            index: 0,
        }
    }

    fn apply(&mut self, command: MvccCommand) -> MvccOutput {
        self.index += 1;
        let out = self.sm.apply_command(self.index, &command);
        if let Err(e) = self.sm.check_consistency() {
            panic!("after {command:?}: {e}");
        }
        out
    }

    fn put(&mut self, key: &str, value: &str) -> PutResponse {
        self.put_req(PutRequest {
            key: b(key),
            value: b(value),
            ..PutRequest::default()
        })
        .unwrap()
    }

    fn put_req(&mut self, req: PutRequest) -> Result<PutResponse, MvccError> {
        match self.apply(MvccCommand::Put(req))? {
            MvccResponse::Put(r) => Ok(r),
            other => panic!("put answered {other:?}"),
        }
    }

    fn delete(&mut self, key: &str, range_end: &str) -> DeleteRangeResponse {
        match self.apply(MvccCommand::DeleteRange(DeleteRangeRequest {
            key: b(key),
            range_end: b(range_end),
            prev_kv: true,
        })) {
            Ok(MvccResponse::DeleteRange(r)) => r,
            other => panic!("delete answered {other:?}"),
        }
    }

    fn range(&self, req: RangeRequest) -> Result<RangeResponse, MvccError> {
        self.sm.range(&req)
    }

    fn get(&self, key: &str) -> Option<KeyValue> {
        let r = self.range(range(key, "")).unwrap();
        assert!(r.kvs.len() <= 1);
        r.kvs.into_iter().next()
    }

    fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse, MvccError> {
        match self.apply(MvccCommand::Txn(req))? {
            MvccResponse::Txn(t) => Ok(t),
            other => panic!("txn answered {other:?}"),
        }
    }

    fn grant(&mut self, id: i64, ttl: i64) -> Result<(LeaseId, i64), MvccError> {
        match self.apply(MvccCommand::LeaseGrant {
            id: LeaseId(id),
            ttl,
        })? {
            MvccResponse::LeaseGrant { id, ttl, .. } => Ok((id, ttl)),
            other => panic!("grant answered {other:?}"),
        }
    }

    fn compact(&mut self, revision: i64) -> MvccOutput {
        self.apply(MvccCommand::Compact(CompactionRequest {
            revision,
            physical: true,
        }))
    }

    fn keys(&self, req: RangeRequest) -> Vec<String> {
        self.range(req)
            .unwrap()
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect()
    }
}

fn range(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        range_end: b(range_end),
        ..RangeRequest::default()
    }
}

fn all() -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..RangeRequest::default()
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: b(key),
        value: b(value),
        ..PutRequest::default()
    })
}

fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        target,
        key: b(key),
        range_end: Vec::new(),
    }
}

// ---- Revisions and versions (data model: "Logical view") ----

#[test]
fn a_new_store_is_at_revision_1_and_each_change_takes_the_next() {
    let mut s = Store::new();
    assert_eq!(s.sm.revision(), Revision(1));
    assert_eq!(s.put("foo", "1").revision, 2);
    assert_eq!(s.put("bar", "1").revision, 3);
    assert_eq!(s.sm.revision(), Revision(3));
}

#[test]
fn versions_count_puts_and_a_delete_starts_a_new_generation() {
    let mut s = Store::new();
    s.put("k", "a"); // rev 2
    s.put("k", "b"); // rev 3
    let kv = s.get("k").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    let d = s.delete("k", ""); // rev 4
    assert_eq!((d.deleted, d.revision), (1, 4));
    assert_eq!(d.prev_kvs[0].value, b("b"));
    assert_eq!(s.get("k"), None);
    s.put("k", "c"); // rev 5
    let kv = s.get("k").unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.value),
        (5, 5, 1, b("c"))
    );
}

#[test]
fn a_delete_of_nothing_keeps_the_revision() {
    let mut s = Store::new();
    s.put("a", "1");
    let d = s.delete("zzz", "");
    assert_eq!((d.deleted, d.revision), (0, 2));
    assert_eq!(s.sm.revision(), Revision(2));
}

#[test]
fn a_txn_writes_under_one_main_revision_with_sub_revisions() {
    let mut s = Store::new();
    let t = s
        .txn(TxnRequest {
            success: vec![put_op("a", "1"), put_op("b", "2"), put_op("c", "3")],
            ..TxnRequest::default()
        })
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(t.revision, 2);
    for k in ["a", "b", "c"] {
        assert_eq!(s.get(k).unwrap().mod_revision, 2);
    }
    let events =
        s.sm.events_between(Revision(2), Revision(2), &[0], &[0])
            .unwrap();
    let keys: Vec<_> = events.iter().map(|e| e.kv.key.clone()).collect();
    assert_eq!(keys, vec![b("a"), b("b"), b("c")], "in sub-revision order");
}

// ---- Range (api: "Range") ----

#[test]
fn range_end_empty_is_one_key_nul_is_everything_from_key_and_otherwise_exclusive() {
    let mut s = Store::new();
    for k in ["a", "b", "ba", "c"] {
        s.put(k, "v");
    }
    assert_eq!(s.keys(range("b", "")), ["b"]);
    assert_eq!(s.keys(range("b", "\0")), ["b", "ba", "c"]);
    assert_eq!(s.keys(range("b", "c")), ["b", "ba"]);
    assert_eq!(s.keys(all()), ["a", "b", "ba", "c"]);
    assert!(s.keys(range("c", "b")).is_empty(), "an end before the key");
    assert!(s.keys(range("b", "b")).is_empty());
}

#[test]
fn range_reads_past_revisions() {
    let mut s = Store::new();
    s.put("k", "1"); // 2
    s.put("k", "2"); // 3
    s.delete("k", ""); // 4
    s.put("k", "3"); // 5
    let at = |rev| {
        let r = s
            .range(RangeRequest {
                revision: rev,
                ..range("k", "")
            })
            .unwrap();
        assert_eq!(r.revision, 5, "the header carries the current revision");
        r.kvs
            .first()
            .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
    };
    assert_eq!(at(1), None);
    assert_eq!(at(2).as_deref(), Some("1"));
    assert_eq!(at(3).as_deref(), Some("2"));
    assert_eq!(at(4), None);
    assert_eq!(at(5).as_deref(), Some("3"));
    assert_eq!(at(0).as_deref(), Some("3"));
}

#[test]
fn range_at_a_future_revision_fails_with_etcds_message() {
    let mut s = Store::new();
    s.put("k", "1");
    let e = s
        .range(RangeRequest {
            revision: 3,
            ..range("k", "")
        })
        .unwrap_err();
    assert_eq!(e, MvccError::FutureRevision);
    assert_eq!(
        e.to_string(),
        "etcdserver: mvcc: required revision is a future revision"
    );
}

#[test]
fn count_is_before_the_limit_and_more_says_the_limit_cut() {
    let mut s = Store::new();
    for k in ["a", "b", "c", "d"] {
        s.put(k, "v");
    }
    let r = s.range(RangeRequest { limit: 2, ..all() }).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (2, 4, true));
    let r = s.range(RangeRequest { limit: 4, ..all() }).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (4, 4, false));
    let r = s
        .range(RangeRequest {
            count_only: true,
            limit: 1,
            ..all()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 4, false));
}

#[test]
fn keys_only_drops_values() {
    let mut s = Store::new();
    s.put("a", "value");
    let r = s
        .range(RangeRequest {
            keys_only: true,
            ..all()
        })
        .unwrap();
    assert_eq!(r.kvs[0].key, b("a"));
    assert!(r.kvs[0].value.is_empty());
    assert_eq!(r.kvs[0].version, 1);
}

#[test]
fn sorting_by_a_target_other_than_key_with_no_order_is_ascending() {
    let mut s = Store::new();
    s.put("a", "3"); // mod 2
    s.put("b", "1"); // mod 3
    s.put("c", "2"); // mod 4
    s.put("a", "4"); // mod 5, version 2
    let sorted = |target, order| {
        s.keys(RangeRequest {
            sort_target: target,
            sort_order: order,
            ..all()
        })
    };
    assert_eq!(sorted(SortTarget::Mod, SortOrder::None), ["b", "c", "a"]);
    assert_eq!(sorted(SortTarget::Mod, SortOrder::Descend), ["a", "c", "b"]);
    assert_eq!(
        sorted(SortTarget::Value, SortOrder::Ascend),
        ["b", "c", "a"]
    );
    assert_eq!(
        sorted(SortTarget::Create, SortOrder::Descend),
        ["c", "b", "a"]
    );
    assert_eq!(sorted(SortTarget::Key, SortOrder::Descend), ["c", "b", "a"]);
    assert_eq!(
        sorted(SortTarget::Version, SortOrder::Descend),
        ["a", "b", "c"]
    );
    // Sort, then limit: the newest key by create revision, as the lock recipe asks.
    let r = s
        .range(RangeRequest {
            sort_target: SortTarget::Create,
            sort_order: SortOrder::Descend,
            limit: 1,
            ..all()
        })
        .unwrap();
    assert_eq!((r.kvs[0].key.clone(), r.more, r.count), (b("c"), true, 3));
}

#[test]
fn min_and_max_revision_filters_apply_before_the_limit_and_leave_count_alone() {
    let mut s = Store::new();
    s.put("a", "1"); // 2
    s.put("b", "1"); // 3
    s.put("c", "1"); // 4
    s.put("a", "2"); // 5
    let r = s
        .range(RangeRequest {
            min_mod_revision: 3,
            ..all()
        })
        .unwrap();
    assert_eq!(r.count, 3);
    assert_eq!(r.kvs.len(), 3, "a (5), b (3), c (4)");
    let r = s
        .range(RangeRequest {
            max_mod_revision: 4,
            ..all()
        })
        .unwrap();
    assert_eq!(
        r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        [b("b"), b("c")]
    );
    let r = s
        .range(RangeRequest {
            max_create_revision: 3,
            limit: 1,
            ..all()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (1, true, 3));
    let r = s
        .range(RangeRequest {
            min_create_revision: 4,
            ..all()
        })
        .unwrap();
    assert_eq!(
        r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        [b("c")]
    );
}

#[test]
fn an_empty_key_is_refused_with_etcds_message() {
    let mut s = Store::new();
    let e = s.put_req(PutRequest::default()).unwrap_err();
    assert_eq!(e.to_string(), "etcdserver: key is not provided");
    assert_eq!(s.range(range("", "")).unwrap_err(), MvccError::EmptyKey);
    assert_eq!(
        s.apply(MvccCommand::DeleteRange(DeleteRangeRequest::default())),
        Err(MvccError::EmptyKey)
    );
}

// ---- Put (api: "Put") ----

#[test]
fn put_returns_the_previous_version_when_asked() {
    let mut s = Store::new();
    assert_eq!(
        s.put_req(PutRequest {
            key: b("k"),
            value: b("1"),
            prev_kv: true,
            ..PutRequest::default()
        })
        .unwrap()
        .prev_kv,
        None
    );
    let prev = s
        .put_req(PutRequest {
            key: b("k"),
            value: b("2"),
            prev_kv: true,
            ..PutRequest::default()
        })
        .unwrap()
        .prev_kv
        .unwrap();
    assert_eq!(
        (prev.value, prev.version, prev.mod_revision),
        (b("1"), 1, 2)
    );
}

#[test]
fn ignore_value_and_ignore_lease_keep_the_current_ones() {
    let mut s = Store::new();
    let (lease, _) = s.grant(7, 10).unwrap();
    s.put_req(PutRequest {
        key: b("k"),
        value: b("v"),
        lease: lease.0,
        ..PutRequest::default()
    })
    .unwrap();
    s.put_req(PutRequest {
        key: b("k"),
        ignore_value: true,
        ignore_lease: true,
        ..PutRequest::default()
    })
    .unwrap();
    let kv = s.get("k").unwrap();
    assert_eq!((kv.value, kv.lease, kv.version), (b("v"), 7, 2));
    // A plain put with no lease detaches the key from its lease.
    s.put("k", "w");
    assert_eq!(s.get("k").unwrap().lease, 0);
    assert!(s.sm.lease(lease).unwrap().keys.is_empty());
}

#[test]
fn ignore_flags_need_an_existing_key_and_no_value_or_lease() {
    let mut s = Store::new();
    let e = s
        .put_req(PutRequest {
            key: b("missing"),
            ignore_value: true,
            ..PutRequest::default()
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "etcdserver: key not found");
    s.put("k", "v");
    let e = s
        .put_req(PutRequest {
            key: b("k"),
            value: b("x"),
            ignore_value: true,
            ..PutRequest::default()
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "etcdserver: value is provided");
    let e = s
        .put_req(PutRequest {
            key: b("k"),
            lease: 5,
            ignore_lease: true,
            ..PutRequest::default()
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "etcdserver: lease is provided");
    assert_eq!(s.sm.revision(), Revision(2), "nothing was written");
}

#[test]
fn put_with_an_unknown_lease_fails_with_lease_not_found() {
    let mut s = Store::new();
    let e = s
        .put_req(PutRequest {
            key: b("k"),
            value: b("v"),
            lease: 42,
            ..PutRequest::default()
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "etcdserver: requested lease not found");
    assert_eq!(s.get("k"), None);
    assert_eq!(s.sm.revision(), Revision(1));
}

// ---- Txn (api: "Transaction") ----

#[test]
fn compares_on_a_missing_key_use_a_zero_key_value_but_a_value_compare_fails() {
    let mut s = Store::new();
    let holds = |s: &mut Store, c: Compare| {
        s.txn(TxnRequest {
            compare: vec![c],
            ..TxnRequest::default()
        })
        .unwrap()
        .succeeded
    };
    assert!(holds(
        &mut s,
        cmp("x", CompareResult::Equal, CompareTarget::Create(0))
    ));
    assert!(holds(
        &mut s,
        cmp("x", CompareResult::Equal, CompareTarget::Version(0))
    ));
    assert!(holds(
        &mut s,
        cmp("x", CompareResult::Equal, CompareTarget::Lease(0))
    ));
    assert!(!holds(
        &mut s,
        cmp("x", CompareResult::Equal, CompareTarget::Value(b("")))
    ));
    assert!(!holds(
        &mut s,
        cmp("x", CompareResult::NotEqual, CompareTarget::Value(b("a")))
    ));
}

#[test]
fn compares_on_each_target_and_result() {
    let mut s = Store::new();
    s.put("k", "m"); // 2
    s.put("k", "m"); // 3, version 2
    let holds = |s: &mut Store, result, target| {
        s.txn(TxnRequest {
            compare: vec![cmp("k", result, target)],
            ..TxnRequest::default()
        })
        .unwrap()
        .succeeded
    };
    use CompareResult::*;
    use CompareTarget::*;
    assert!(holds(&mut s, Equal, Version(2)));
    assert!(holds(&mut s, Greater, Version(1)));
    assert!(holds(&mut s, Less, Version(3)));
    assert!(holds(&mut s, NotEqual, Version(1)));
    assert!(holds(&mut s, Equal, Create(2)));
    assert!(holds(&mut s, Equal, Mod(3)));
    assert!(holds(&mut s, Greater, Value(b("a"))));
    assert!(holds(&mut s, Less, Value(b("n"))));
    assert!(holds(&mut s, Equal, Value(b("m"))));
    assert!(!holds(&mut s, Greater, Mod(3)));
    assert!(holds(&mut s, Equal, Lease(0)));
}

#[test]
fn a_compare_with_range_end_must_hold_for_every_key_in_the_range() {
    let mut s = Store::new();
    s.put("p/a", "1");
    s.put("p/b", "1");
    s.put("p/b", "2");
    let holds = |s: &mut Store, version| {
        s.txn(TxnRequest {
            compare: vec![Compare {
                range_end: b("p0"),
                ..cmp(
                    "p/",
                    CompareResult::Greater,
                    CompareTarget::Version(version),
                )
            }],
            ..TxnRequest::default()
        })
        .unwrap()
        .succeeded
    };
    assert!(holds(&mut s, 0));
    assert!(!holds(&mut s, 1), "p/a has version 1");
}

#[test]
fn a_txn_runs_failure_when_a_compare_fails_and_reads_see_its_own_writes() {
    let mut s = Store::new();
    s.put("k", "old");
    let t = s
        .txn(TxnRequest {
            compare: vec![cmp("k", CompareResult::Equal, CompareTarget::Value(b("x")))],
            success: vec![put_op("s", "1")],
            failure: vec![put_op("k", "new"), RequestOp::Range(range("k", ""))],
        })
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(t.revision, 3, "the header carries the txn's own revision");
    let ResponseOp::Range(r) = &t.responses[1] else {
        panic!("{:?}", t.responses)
    };
    assert_eq!(r.kvs[0].value, b("new"));
    assert_eq!(s.get("s"), None);
}

#[test]
fn a_read_only_txn_keeps_the_revision() {
    let mut s = Store::new();
    s.put("k", "v");
    let t = s
        .txn(TxnRequest {
            success: vec![RequestOp::Range(range("k", ""))],
            ..TxnRequest::default()
        })
        .unwrap();
    assert_eq!(t.revision, 2);
    assert_eq!(s.sm.revision(), Revision(2));
}

#[test]
fn nested_txn_compares_are_evaluated_before_any_write() {
    let mut s = Store::new();
    // The outer branch creates "a"; the nested compare still sees "a" absent.
    let t = s
        .txn(TxnRequest {
            success: vec![
                put_op("a", "1"),
                RequestOp::Txn(TxnRequest {
                    compare: vec![cmp("a", CompareResult::Equal, CompareTarget::Version(0))],
                    success: vec![put_op("b", "absent-before")],
                    failure: vec![put_op("b", "present-before")],
                }),
            ],
            ..TxnRequest::default()
        })
        .unwrap();
    let ResponseOp::Txn(nested) = &t.responses[1] else {
        panic!("{:?}", t.responses)
    };
    assert!(nested.succeeded);
    assert_eq!(s.get("b").unwrap().value, b("absent-before"));
    assert_eq!(s.get("b").unwrap().mod_revision, 2);
}

#[test]
fn a_txn_may_not_write_one_key_twice() {
    let mut s = Store::new();
    let dup = |s: &mut Store, success| {
        s.txn(TxnRequest {
            success,
            ..TxnRequest::default()
        })
    };
    let e = dup(&mut s, vec![put_op("k", "1"), put_op("k", "2")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "etcdserver: duplicate key given in txn request"
    );
    let delete = RequestOp::DeleteRange(DeleteRangeRequest {
        key: b("a"),
        range_end: b("z"),
        prev_kv: false,
    });
    assert_eq!(
        dup(&mut s, vec![delete.clone(), put_op("k", "1")]),
        Err(MvccError::DuplicateKey)
    );
    let nested = |success, failure| {
        RequestOp::Txn(TxnRequest {
            compare: Vec::new(),
            success,
            failure,
        })
    };
    assert_eq!(
        dup(
            &mut s,
            vec![put_op("k", "1"), nested(vec![put_op("k", "2")], vec![])]
        ),
        Err(MvccError::DuplicateKey)
    );
    // The two branches of a nested txn exclude each other, so both may put one key.
    assert!(dup(
        &mut s,
        vec![nested(vec![put_op("k", "1")], vec![put_op("k", "2")])]
    )
    .is_ok());
    // Deleting overlapping ranges twice is fine.
    assert!(dup(&mut s, vec![delete.clone(), delete]).is_ok());
}

#[test]
fn a_txn_allows_128_operations_per_list_and_no_more() {
    let mut s = Store::new();
    let ops = |n: usize| (0..n).map(|i| put_op(&format!("k{i}"), "v")).collect();
    assert!(s
        .txn(TxnRequest {
            success: ops(128),
            ..TxnRequest::default()
        })
        .is_ok());
    let e = s
        .txn(TxnRequest {
            failure: ops(129),
            ..TxnRequest::default()
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "etcdserver: too many operations in txn request"
    );
}

#[test]
fn a_txn_whose_chosen_branch_fails_its_checks_writes_nothing() {
    let mut s = Store::new();
    let e = s
        .txn(TxnRequest {
            success: vec![
                put_op("a", "1"),
                RequestOp::Put(PutRequest {
                    key: b("b"),
                    lease: 99,
                    ..PutRequest::default()
                }),
            ],
            ..TxnRequest::default()
        })
        .unwrap_err();
    assert_eq!(e, MvccError::LeaseNotFound);
    assert_eq!(s.get("a"), None);
    assert_eq!(s.sm.revision(), Revision(1));
    // The branch not taken is not checked.
    let t = s
        .txn(TxnRequest {
            compare: vec![cmp("zz", CompareResult::Equal, CompareTarget::Version(0))],
            success: vec![put_op("a", "1")],
            failure: vec![RequestOp::Put(PutRequest {
                key: b("b"),
                lease: 99,
                ..PutRequest::default()
            })],
        })
        .unwrap();
    assert!(t.succeeded);
}

// ---- Compaction (api: "Compact"; data model: "compaction") ----

#[test]
fn compaction_keeps_reads_at_and_after_its_revision_and_refuses_older_ones() {
    let mut s = Store::new();
    s.put("k", "1"); // 2
    s.put("k", "2"); // 3
    s.put("gone", "x"); // 4
    s.delete("gone", ""); // 5
    s.put("k", "3"); // 6
    s.compact(5).unwrap();
    assert_eq!(s.sm.compacted_revision(), Revision(5));
    let at = |rev| {
        s.range(RangeRequest {
            revision: rev,
            ..all()
        })
    };
    let e = at(4).unwrap_err();
    assert_eq!(
        e.to_string(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        e,
        MvccError::Compacted {
            compact_revision: 5
        }
    );
    let r = at(5).unwrap();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!((r.kvs[0].value.clone(), r.kvs[0].version), (b("2"), 2));
    assert_eq!(at(6).unwrap().kvs[0].value, b("3"));
    assert_eq!(
        s.compact(5),
        Err(MvccError::Compacted {
            compact_revision: 5
        })
    );
    assert_eq!(
        s.compact(3),
        Err(MvccError::Compacted {
            compact_revision: 5
        })
    );
    assert_eq!(s.compact(7), Err(MvccError::FutureRevision));
    // The compaction freed the deleted key and k's first version: k at 3 and 6 remain.
    assert_eq!(s.sm.db_size(), 2 * (VERSION_OVERHEAD + 1 + 1));
}

#[test]
fn compaction_keeps_the_version_of_a_key_untouched_since() {
    let mut s = Store::new();
    s.put("old", "v"); // 2
    for i in 0..5 {
        s.put("busy", &i.to_string());
    }
    s.compact(s.sm.revision().0).unwrap();
    assert_eq!(s.get("old").unwrap().version, 1);
    assert_eq!(s.get("busy").unwrap().version, 5);
    assert_eq!(s.get("busy").unwrap().create_revision, 3);
}

// ---- Leases (api: "Lease API") ----

#[test]
fn a_grant_with_id_0_picks_the_same_id_on_every_replica() {
    let mut one = Store::new();
    let mut two = Store::new();
    let (a, _) = one.grant(0, 60).unwrap();
    let (b2, _) = two.grant(0, 60).unwrap();
    assert_eq!(a, b2);
    assert!(a.0 > 0);
    let (c, _) = one.grant(0, 60).unwrap();
    assert_ne!(a, c);
}

#[test]
fn grants_raise_the_ttl_to_the_minimum_and_refuse_a_used_id_or_a_huge_ttl() {
    let mut s = Store::new();
    assert_eq!(s.grant(5, 1).unwrap(), (LeaseId(5), 2));
    assert_eq!(s.grant(6, 30).unwrap(), (LeaseId(6), 30));
    let e = s.grant(5, 10).unwrap_err();
    assert_eq!(e.to_string(), "etcdserver: lease already exists");
    assert_eq!(
        s.grant(9, MAX_LEASE_TTL + 1),
        Err(MvccError::LeaseTtlTooLarge)
    );
}

#[test]
fn revoking_a_lease_deletes_its_keys_in_one_revision() {
    let mut s = Store::new();
    let (lease, _) = s.grant(1, 10).unwrap();
    for k in ["b", "a", "c"] {
        s.put_req(PutRequest {
            key: b(k),
            value: b("v"),
            lease: lease.0,
            ..PutRequest::default()
        })
        .unwrap();
    }
    s.put("other", "v"); // 5
    s.apply(MvccCommand::LeaseRevoke { id: lease }).unwrap();
    assert_eq!(s.sm.revision(), Revision(6));
    assert_eq!(s.keys(all()), ["other"]);
    assert!(s.sm.lease(lease).is_none());
    let events =
        s.sm.events_between(Revision(6), Revision(6), &[0], &[0])
            .unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.kind == EventKind::Delete));
    assert_eq!(events[0].kv.key, b("a"), "in key order");
    let e = s.apply(MvccCommand::LeaseRevoke { id: lease }).unwrap_err();
    assert_eq!(e.to_string(), "etcdserver: requested lease not found");
}

#[test]
fn leader_decided_expiry_revokes_each_lease_and_skips_gone_ones() {
    let mut s = Store::new();
    s.grant(1, 10).unwrap();
    s.grant(2, 10).unwrap();
    for (k, l) in [("x", 1), ("y", 2)] {
        s.put_req(PutRequest {
            key: b(k),
            value: b("v"),
            lease: l,
            ..PutRequest::default()
        })
        .unwrap();
    }
    s.apply(MvccCommand::LeaseExpire {
        ids: vec![LeaseId(1), LeaseId(3), LeaseId(2)],
    })
    .unwrap();
    assert!(s.keys(all()).is_empty());
    assert_eq!(
        s.sm.revision(),
        Revision(5),
        "one revision per lease with keys"
    );
    assert_eq!(s.sm.leases().count(), 0);
}

#[test]
fn moving_a_key_to_another_lease_detaches_it_from_the_first() {
    let mut s = Store::new();
    s.grant(1, 10).unwrap();
    s.grant(2, 10).unwrap();
    for l in [1, 2] {
        s.put_req(PutRequest {
            key: b("k"),
            value: b("v"),
            lease: l,
            ..PutRequest::default()
        })
        .unwrap();
    }
    s.apply(MvccCommand::LeaseRevoke { id: LeaseId(1) })
        .unwrap();
    assert_eq!(s.get("k").unwrap().lease, 2, "lease 1 no longer holds k");
    s.delete("k", "");
    assert!(s.sm.lease(LeaseId(2)).unwrap().keys.is_empty());
}

#[test]
fn checkpoints_record_the_remaining_ttl() {
    let mut s = Store::new();
    s.grant(1, 60).unwrap();
    s.apply(MvccCommand::LeaseCheckpoint {
        checkpoints: vec![
            LeaseCheckpoint {
                id: LeaseId(1),
                remaining_ttl: 17,
            },
            LeaseCheckpoint {
                id: LeaseId(9),
                remaining_ttl: 5,
            },
        ],
    })
    .unwrap();
    assert_eq!(s.sm.lease(LeaseId(1)).unwrap().remaining_ttl, 17);
}

// ---- Watch events (api: "Watch API") ----

#[test]
fn events_carry_the_previous_version_in_revision_order() {
    let mut s = Store::new();
    s.put("a", "1"); // 2
    s.put("b", "1"); // 3
    s.put("a", "2"); // 4
    s.delete("a", ""); // 5
    let events =
        s.sm.events_between(Revision(2), Revision(100), &b("a"), &[])
            .unwrap();
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.mod_revision,
                e.kv.version,
                e.prev_kv.as_ref().map(|p| p.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventKind::Put, 2, 1, None),
            (EventKind::Put, 4, 2, Some(b("1"))),
            (EventKind::Delete, 5, 0, Some(b("2"))),
        ]
    );
    let prefix =
        s.sm.events_between(Revision(3), Revision(3), &b("a"), &[0])
            .unwrap();
    assert_eq!(prefix.len(), 1);
    assert_eq!(prefix[0].kv.key, b("b"));
}

#[test]
fn a_watch_from_a_compacted_revision_is_refused_with_the_compact_revision() {
    let mut s = Store::new();
    for i in 0..5 {
        s.put("k", &i.to_string());
    }
    s.compact(4).unwrap();
    assert_eq!(
        s.sm.events_between(Revision(4), Revision(10), &[0], &[0]),
        Err(MvccError::Compacted {
            compact_revision: 4
        })
    );
    assert_eq!(
        s.sm.events_between(Revision(5), Revision(10), &[0], &[0])
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_live_watcher_misses_nothing_when_a_compaction_lands_in_the_same_step() {
    let mut s = Store::new();
    s.put("k", "0"); // 2: delivered
    let delivered = s.sm.revision();
    s.put("k", "1"); // 3
    s.put("k", "2"); // 4
    s.compact(4).unwrap();
    let (events, source) = s.sm.events_after(delivered, &b("k"), &[]).unwrap();
    assert_eq!(source, EventSource::Journal);
    let revs: Vec<_> = events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, [3, 4]);
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b("0"));
    // Once caught up, it reads history again.
    s.put("k", "3");
    let (events, source) = s.sm.events_after(Revision(4), &b("k"), &[]).unwrap();
    assert_eq!((events.len(), source), (1, EventSource::History));
}

#[test]
fn a_watcher_behind_both_compaction_and_the_journal_is_told_it_was_compacted() {
    let mut s = Store {
        sm: MvccStateMachine::new(MvccConfig {
            journal_revisions: 3,
            ..MvccConfig::default()
        }),
        index: 0,
    };
    for i in 0..10 {
        s.put("k", &i.to_string());
    }
    s.compact(10).unwrap();
    assert!(s.sm.events_after(Revision(8), &b("k"), &[]).is_ok());
    assert_eq!(
        s.sm.events_after(Revision(7), &b("k"), &[]),
        Err(MvccError::Compacted {
            compact_revision: 10
        })
    );
}

// ---- Snapshots, the read path, db size ----

fn busy_store() -> Store {
    let mut s = Store::new();
    s.grant(1, 30).unwrap();
    for i in 0..20 {
        s.put_req(PutRequest {
            key: b(&format!("k{}", i % 7)),
            value: b(&format!("v{i}")),
            lease: if i % 3 == 0 { 1 } else { 0 },
            ..PutRequest::default()
        })
        .unwrap();
        if i % 5 == 4 {
            s.delete(&format!("k{}", i % 4), "");
        }
    }
    s.compact(12).unwrap();
    s.put("after", "compaction");
    s
}

#[test]
fn a_snapshot_restores_every_key_version_lease_and_revision() {
    let s = busy_store();
    let bytes = s.sm.snapshot();
    let mut restored = MvccStateMachine::default();
    restored.restore(&bytes).unwrap();
    assert_eq!(restored, s.sm);
    assert_eq!(restored.db_size(), s.sm.db_size());
    restored.check_consistency().unwrap();
    for rev in 12..=s.sm.revision().0 {
        let req = RangeRequest {
            revision: rev,
            ..all()
        };
        assert_eq!(restored.range(&req), s.sm.range(&req), "at {rev}");
    }
    assert_eq!(
        restored.events_between(Revision(13), Revision(99), &[0], &[0]),
        s.sm.events_between(Revision(13), Revision(99), &[0], &[0])
    );
    assert_eq!(
        restored.range(&RangeRequest {
            revision: 11,
            ..all()
        }),
        Err(MvccError::Compacted {
            compact_revision: 12
        })
    );
}

#[test]
fn a_corrupt_snapshot_is_an_error_not_a_panic() {
    let s = busy_store();
    let mut bytes = s.sm.snapshot();
    let mut target = MvccStateMachine::default();
    assert!(target.restore(&bytes[..bytes.len() / 2]).is_err());
    bytes.push(0);
    assert!(target.restore(&bytes).is_err());
    assert!(target.restore(&[0xff; 16]).is_err());
    assert_eq!(
        target,
        MvccStateMachine::default(),
        "a failed restore changes nothing"
    );
}

#[test]
fn the_read_path_answers_ranges_and_changes_nothing() {
    let mut s = Store::new();
    s.put("k", "v");
    let before = s.sm.clone();
    let read = s.sm.read(&MvccCommand::Range(range("k", "")));
    assert!(matches!(read, Ok(MvccResponse::Range(r)) if r.kvs.len() == 1));
    let write = s.sm.read(&MvccCommand::Put(PutRequest {
        key: b("k"),
        value: b("x"),
        ..PutRequest::default()
    }));
    assert!(matches!(write, Ok(MvccResponse::Range(r)) if r.kvs.is_empty()));
    let txn = s.sm.read(&MvccCommand::Txn(TxnRequest {
        compare: vec![cmp("k", CompareResult::Equal, CompareTarget::Value(b("v")))],
        success: vec![RequestOp::Range(range("k", ""))],
        failure: Vec::new(),
    }));
    assert!(matches!(txn, Ok(MvccResponse::Txn(t)) if t.succeeded && t.responses.len() == 1));
    assert_eq!(s.sm, before);
}

#[test]
fn error_codes_match_etcds() {
    assert_eq!(
        MvccError::Compacted {
            compact_revision: 1
        }
        .grpc_code(),
        "OutOfRange"
    );
    assert_eq!(MvccError::FutureRevision.grpc_code(), "OutOfRange");
    assert_eq!(MvccError::LeaseNotFound.grpc_code(), "NotFound");
    assert_eq!(MvccError::LeaseExists.grpc_code(), "FailedPrecondition");
    assert_eq!(MvccError::DuplicateKey.grpc_code(), "InvalidArgument");
}

// ---- The lessor (leader-side time) ----

fn at(secs: f64) -> Instant {
    Instant((secs * 1e9) as u64)
}

#[test]
fn the_lessor_expires_a_lease_after_its_ttl_unless_renewed() {
    let mut s = Store::new();
    s.grant(1, 10).unwrap();
    let mut lessor = Lessor::new(LessorConfig::default());
    assert!(
        lessor.expired(at(100.0)).is_empty(),
        "not primary: decides nothing"
    );
    lessor.promote(at(0.0), Duration::ZERO, &s.sm);
    assert!(lessor.expired(at(9.9)).is_empty());
    let renewal = lessor.renew(at(5.0), LeaseId(1), &s.sm).unwrap();
    assert_eq!(renewal.ttl, 10);
    assert!(!renewal.clear_checkpoint);
    assert_eq!(lessor.remaining(at(6.0), LeaseId(1)), Some(9));
    assert!(lessor.expired(at(14.9)).is_empty());
    assert_eq!(lessor.expired(at(15.0)), vec![LeaseId(1)]);
    assert!(lessor.expired(at(16.0)).is_empty(), "proposed already");
    assert_eq!(
        lessor.expired(at(18.0)),
        vec![LeaseId(1)],
        "re-proposed after the retry interval"
    );
    assert_eq!(
        lessor.renew(at(18.0), LeaseId(1), &s.sm),
        Err(LessorError::LeaseNotFound),
        "an expired lease cannot be renewed"
    );
    s.apply(MvccCommand::LeaseExpire {
        ids: vec![LeaseId(1)],
    })
    .unwrap();
    lessor.sync(at(18.5), &s.sm);
    assert!(lessor.expired(at(30.0)).is_empty());
}

#[test]
fn a_new_leader_restarts_leases_from_their_checkpointed_remaining_ttl() {
    let mut s = Store::new();
    s.grant(1, 60).unwrap();
    s.grant(2, 60).unwrap();
    let mut old = Lessor::new(LessorConfig {
        checkpoint_interval: Duration::from_secs(10),
        ..LessorConfig::default()
    });
    old.promote(at(0.0), Duration::ZERO, &s.sm);
    old.renew(at(9.0), LeaseId(2), &s.sm).unwrap();
    // At 10 s lease 1 has 50 s left and lease 2 has 59 s.
    let checkpoints = old.checkpoints(at(10.0));
    assert_eq!(
        checkpoints,
        vec![LeaseCheckpoint {
            id: LeaseId(1),
            remaining_ttl: 50
        }],
        "lease 2's checkpoint is not due yet"
    );
    s.apply(MvccCommand::LeaseCheckpoint { checkpoints })
        .unwrap();
    // The leader fails at 12 s; a new one takes over at 20 s on its own clock.
    let mut new = Lessor::new(LessorConfig::default());
    new.promote(at(20.0), Duration::from_secs(1), &s.sm);
    assert_eq!(new.remaining(at(20.0), LeaseId(1)), Some(51));
    assert_eq!(
        new.remaining(at(20.0), LeaseId(2)),
        Some(61),
        "no checkpoint: full TTL"
    );
    // Renewing a checkpointed lease asks to clear the checkpoint.
    assert!(
        new.renew(at(21.0), LeaseId(1), &s.sm)
            .unwrap()
            .clear_checkpoint
    );
    assert_eq!(
        new.renew(at(21.0), LeaseId(3), &s.sm),
        Err(LessorError::LeaseNotFound)
    );
    new.demote();
    assert_eq!(
        new.renew(at(22.0), LeaseId(1), &s.sm),
        Err(LessorError::NotPrimary)
    );
}

#[test]
fn the_lessor_starts_a_clock_for_a_lease_granted_while_it_leads() {
    let mut s = Store::new();
    let mut lessor = Lessor::new(LessorConfig::default());
    lessor.promote(at(0.0), Duration::ZERO, &s.sm);
    s.grant(4, 5).unwrap();
    lessor.sync(at(3.0), &s.sm);
    assert_eq!(lessor.remaining(at(3.0), LeaseId(4)), Some(5));
    assert!(lessor.expired(at(7.9)).is_empty());
    assert_eq!(lessor.expired(at(8.0)), vec![LeaseId(4)]);
}

/// A Txn nested in a Txn as deep as a peer likes would overflow the decoding thread's
/// stack and abort the node; beyond the codec's bound it is a decode error instead, and
/// the nesting etcd's gRPC limit allows still round-trips.
#[test]
fn deeply_nested_txns_from_a_peer_are_refused_not_a_stack_overflow() {
    fn nest(depth: usize) -> MvccCommand {
        let mut txn = TxnRequest::default();
        for _ in 0..depth {
            txn = TxnRequest {
                success: vec![RequestOp::Txn(txn)],
                ..TxnRequest::default()
            };
        }
        MvccCommand::Txn(txn)
    }
    let ok = nest(50);
    assert_eq!(codec::decode::<MvccCommand>(&codec::encode(&ok)), Ok(ok));
    // Hand-made bytes: MvccCommand::Txn, then per level no compares, one success op that
    // is a Txn; the innermost Txn is empty, and every level has no failure ops.
    let levels = 200_000;
    let mut bytes = vec![3u8];
    for _ in 0..levels {
        bytes.extend([0, 1, 3]);
    }
    bytes.extend([0, 0, 0]);
    bytes.extend(std::iter::repeat_n(0, levels));
    assert!(matches!(
        codec::decode::<MvccCommand>(&bytes),
        Err(codec::CodecError::Malformed(_))
    ));
}
