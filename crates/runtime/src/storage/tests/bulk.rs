//! `BulkStore`: the redb wrapper keeps what was committed and nothing else.

use crate::storage::{BulkDurability, BulkStore, StorageError};
use std::ops::Bound;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn pairs(items: &[(&[u8], &[u8])]) -> Pairs {
    items
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

#[test]
fn committed_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("bulk.redb");
    {
        let db = BulkStore::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.table("kv").unwrap();
            kv.put(b"a", b"1").unwrap();
            kv.put(b"b", b"2").unwrap();
            kv.put(b"c", b"3").unwrap();
            assert!(kv.delete(b"b").unwrap());
            assert!(!kv.delete(b"zz").unwrap());
            assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(kv.len().unwrap(), 2);
        }
        {
            let mut other = txn.table("leases").unwrap();
            other.put(b"a", b"lease").unwrap();
        }
        txn.commit().unwrap();
    }
    let db = BulkStore::open(&path).unwrap();
    let read = db.begin_read().unwrap();
    let kv = read.table("kv").unwrap();
    assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(kv.get(b"b").unwrap(), None);
    assert_eq!(
        read.table("leases").unwrap().get(b"a").unwrap(),
        Some(b"lease".to_vec())
    );
    let all: Pairs = kv
        .range(Bound::Unbounded, Bound::Unbounded)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(all, pairs(&[(b"a", b"1"), (b"c", b"3")]));
}

#[test]
fn range_scans_respect_bounds_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let db = BulkStore::open(dir.path().join("bulk.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.table("t").unwrap();
        for k in [b"a", b"b", b"c", b"d", b"e"] {
            t.put(k, k).unwrap();
        }
        let inside: Pairs = t
            .range(Bound::Included(b"b"), Bound::Excluded(b"e"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(inside, pairs(&[(b"b", b"b"), (b"c", b"c"), (b"d", b"d")]));
    }
    txn.commit().unwrap();
    let read = db.begin_read().unwrap();
    let t = read.table("t").unwrap();
    let backwards: Pairs = t
        .range(Bound::Excluded(b"a"), Bound::Included(b"d"))
        .unwrap()
        .rev()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        backwards,
        pairs(&[(b"d", b"d"), (b"c", b"c"), (b"b", b"b")])
    );
}

#[test]
fn a_table_never_created_reads_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = BulkStore::open(dir.path().join("bulk.redb")).unwrap();
    let read = db.begin_read().unwrap();
    let t = read.table("nothing").unwrap();
    assert_eq!(t.get(b"k").unwrap(), None);
    assert!(t.is_empty().unwrap());
    assert_eq!(
        t.range(Bound::Unbounded, Bound::Unbounded).unwrap().count(),
        0
    );
}

#[test]
fn aborted_and_dropped_transactions_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = BulkStore::open(dir.path().join("bulk.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    txn.table("t").unwrap().put(b"k", b"aborted").unwrap();
    txn.abort().unwrap();
    let txn = db.begin_write().unwrap();
    txn.table("t").unwrap().put(b"k", b"dropped").unwrap();
    drop(txn);
    let read = db.begin_read().unwrap();
    assert_eq!(read.table("t").unwrap().get(b"k").unwrap(), None);
}

#[test]
fn non_durable_commits_are_visible_and_a_durable_one_persists_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulk.redb");
    {
        let db = BulkStore::open(&path).unwrap();
        for i in 0..10u8 {
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(BulkDurability::None);
            txn.table("t").unwrap().put(&[i], &[i]).unwrap();
            txn.commit().unwrap();
        }
        let read = db.begin_read().unwrap();
        assert_eq!(read.table("t").unwrap().len().unwrap(), 10);
        drop(read);
        let txn = db.begin_write().unwrap();
        txn.table("t").unwrap().put(b"last", b"").unwrap();
        txn.commit().unwrap();
    }
    let db = BulkStore::open(&path).unwrap();
    let read = db.begin_read().unwrap();
    assert_eq!(read.table("t").unwrap().len().unwrap(), 11);
}

#[test]
fn deleting_a_table_removes_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    let db = BulkStore::open(dir.path().join("bulk.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    txn.table("t").unwrap().put(b"k", b"v").unwrap();
    txn.commit().unwrap();
    let txn = db.begin_write().unwrap();
    assert!(txn.delete_table("t").unwrap());
    assert!(!txn.delete_table("t").unwrap());
    txn.commit().unwrap();
    assert!(db
        .begin_read()
        .unwrap()
        .table("t")
        .unwrap()
        .is_empty()
        .unwrap());
}

#[test]
fn a_file_that_is_not_a_database_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulk.redb");
    std::fs::write(&path, vec![0xabu8; 4096]).unwrap();
    match BulkStore::open(&path) {
        Err(error @ StorageError::Bulk { .. }) => {
            assert!(error.to_string().contains("bulk.redb"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
}
