//! [`BulkStore`]: named tables of bytes to bytes in one redb database file.
//!
//! Bulk state (the etcd API's MVCC key space, lease tables) is too large to keep in memory
//! and replay from a WAL, so it lives in redb, a crash-safe embedded B-tree store with
//! ACID transactions and checksummed pages (<https://docs.rs/redb>). This wrapper fixes the
//! key and value types to byte strings, maps errors to [`StorageError`] with the file
//! name, and treats a table that was never created as empty when reading.
//!
//! Durability is per write transaction. With [`BulkDurability::Immediate`] (the default)
//! `commit` returns once the transaction is on disk; redb fsyncs as part of the commit.
//! With [`BulkDurability::None`] the commit is visible to later transactions but is only
//! made durable by a later `Immediate` commit: the way to batch many small transactions
//! into one fsync (redb's `Durability::None`).

use super::fsutil::{ensure_dir, fsync_dir};
use super::StorageError;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};

type Bytes = &'static [u8];

fn definition(name: &str) -> TableDefinition<'_, Bytes, Bytes> {
    TableDefinition::new(name)
}

fn bulk_error<'a, E: Into<redb::Error>>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(E) -> StorageError + 'a {
    move |e| StorageError::Bulk {
        op,
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}

/// When a [`BulkWrite`]'s commit is durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BulkDurability {
    /// `commit` returns after the transaction is on disk.
    #[default]
    Immediate,
    /// `commit` makes the transaction visible but not durable; a crash may lose it until a
    /// later `Immediate` commit.
    None,
}

/// A redb database of named byte-string tables.
pub struct BulkStore {
    db: redb::Database,
    path: PathBuf,
}

impl fmt::Debug for BulkStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkStore")
            .field("path", &self.path)
            .finish()
    }
}

impl BulkStore {
    /// Open the database file at `path`, creating it (and its directory) if it does not
    /// exist. redb locks the file, so a second open of the same file fails.
    pub fn open(path: impl AsRef<Path>) -> Result<BulkStore, StorageError> {
        let path = path.as_ref().to_path_buf();
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf);
        if let Some(parent) = &parent {
            ensure_dir(parent)?;
        }
        let existed = path.exists();
        let db = redb::Database::create(&path).map_err(bulk_error("open", &path))?;
        if !existed {
            // A new file's name is durable only once its directory is fsynced.
            fsync_dir(parent.as_deref().unwrap_or(Path::new(".")))?;
        }
        Ok(BulkStore { db, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Start a write transaction. redb runs one write transaction at a time; this blocks
    /// while another is open.
    pub fn begin_write(&self) -> Result<BulkWrite<'_>, StorageError> {
        let txn = self
            .db
            .begin_write()
            .map_err(bulk_error("begin write", &self.path))?;
        Ok(BulkWrite {
            txn,
            path: &self.path,
        })
    }

    /// Start a read transaction: a consistent view as of the last commit.
    pub fn begin_read(&self) -> Result<BulkRead<'_>, StorageError> {
        let txn = self
            .db
            .begin_read()
            .map_err(bulk_error("begin read", &self.path))?;
        Ok(BulkRead {
            txn,
            path: &self.path,
        })
    }
}

/// A write transaction. Nothing is visible to others until [`BulkWrite::commit`]; dropping
/// it aborts.
pub struct BulkWrite<'db> {
    txn: redb::WriteTransaction,
    path: &'db Path,
}

impl<'db> BulkWrite<'db> {
    /// Choose how durable the commit is. The default is [`BulkDurability::Immediate`].
    pub fn set_durability(&mut self, durability: BulkDurability) {
        self.txn.set_durability(match durability {
            BulkDurability::Immediate => redb::Durability::Immediate,
            BulkDurability::None => redb::Durability::None,
        });
    }

    /// Open the table `name` for reading and writing, creating it if needed. A table can be
    /// open only once at a time within a transaction.
    pub fn table<'t>(&'t self, name: &str) -> Result<BulkTableMut<'t>, StorageError> {
        let table = self
            .txn
            .open_table(definition(name))
            .map_err(bulk_error("open table", self.path))?;
        Ok(BulkTableMut {
            table,
            path: self.path,
        })
    }

    /// Delete the table `name` and everything in it. Returns whether it existed.
    pub fn delete_table(&self, name: &str) -> Result<bool, StorageError> {
        self.txn
            .delete_table(definition(name))
            .map_err(bulk_error("delete table", self.path))
    }

    /// Commit the transaction with the chosen durability.
    pub fn commit(self) -> Result<(), StorageError> {
        self.txn.commit().map_err(bulk_error("commit", self.path))
    }

    /// Discard the transaction.
    pub fn abort(self) -> Result<(), StorageError> {
        self.txn.abort().map_err(bulk_error("abort", self.path))
    }
}

impl fmt::Debug for BulkWrite<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkWrite")
            .field("path", &self.path)
            .finish()
    }
}

/// A table open in a [`BulkWrite`].
pub struct BulkTableMut<'t> {
    table: redb::Table<'t, Bytes, Bytes>,
    path: &'t Path,
}

impl BulkTableMut<'_> {
    /// Set `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.table
            .insert(key, value)
            .map(drop)
            .map_err(bulk_error("insert", self.path))
    }

    /// The value under `key`, including this transaction's writes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let value = self.table.get(key).map_err(bulk_error("get", self.path))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Remove `key`. Returns whether it was present.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, StorageError> {
        let old = self
            .table
            .remove(key)
            .map_err(bulk_error("remove", self.path))?;
        Ok(old.is_some())
    }

    /// The pairs with keys within `(lower, upper)`, in key order; iterate backwards with
    /// `.rev()`.
    pub fn range(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
    ) -> Result<BulkRange<'_>, StorageError> {
        let range = self
            .table
            .range::<&[u8]>((lower, upper))
            .map_err(bulk_error("range", self.path))?;
        Ok(BulkRange {
            inner: Some(range),
            path: self.path,
        })
    }

    /// Number of pairs in the table.
    pub fn len(&self) -> Result<u64, StorageError> {
        self.table.len().map_err(bulk_error("len", self.path))
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.len()? == 0)
    }
}

/// A read transaction: a snapshot of the database as of its start.
pub struct BulkRead<'db> {
    txn: redb::ReadTransaction,
    path: &'db Path,
}

impl<'db> BulkRead<'db> {
    /// Open the table `name`. A table that was never created reads as empty.
    pub fn table(&self, name: &str) -> Result<BulkTable<'db>, StorageError> {
        match self.txn.open_table(definition(name)) {
            Ok(table) => Ok(BulkTable {
                table: Some(table),
                path: self.path,
            }),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(BulkTable {
                table: None,
                path: self.path,
            }),
            Err(e) => Err(bulk_error("open table", self.path)(e)),
        }
    }
}

impl fmt::Debug for BulkRead<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkRead")
            .field("path", &self.path)
            .finish()
    }
}

/// A table open in a [`BulkRead`].
pub struct BulkTable<'db> {
    table: Option<redb::ReadOnlyTable<Bytes, Bytes>>,
    path: &'db Path,
}

impl<'db> BulkTable<'db> {
    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        let value = table.get(key).map_err(bulk_error("get", self.path))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// The pairs with keys within `(lower, upper)`, in key order; iterate backwards with
    /// `.rev()`. The iterator does not borrow the table.
    pub fn range(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
    ) -> Result<BulkRange<'db>, StorageError> {
        let Some(table) = &self.table else {
            return Ok(BulkRange {
                inner: None,
                path: self.path,
            });
        };
        let range = table
            .range::<&[u8]>((lower, upper))
            .map_err(bulk_error("range", self.path))?;
        Ok(BulkRange {
            inner: Some(range),
            path: self.path,
        })
    }

    /// Number of pairs in the table.
    pub fn len(&self) -> Result<u64, StorageError> {
        match &self.table {
            Some(table) => table.len().map_err(bulk_error("len", self.path)),
            None => Ok(0),
        }
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.len()? == 0)
    }
}

/// Pairs from a range scan, copied out of the database as they are visited.
pub struct BulkRange<'a> {
    inner: Option<redb::Range<'a, Bytes, Bytes>>,
    path: &'a Path,
}

type Pair = (Vec<u8>, Vec<u8>);

impl BulkRange<'_> {
    fn convert(
        &self,
        item: Result<
            (redb::AccessGuard<'_, Bytes>, redb::AccessGuard<'_, Bytes>),
            redb::StorageError,
        >,
    ) -> Result<Pair, StorageError> {
        let (key, value) = item.map_err(bulk_error("scan", self.path))?;
        Ok((key.value().to_vec(), value.value().to_vec()))
    }
}

impl Iterator for BulkRange<'_> {
    type Item = Result<Pair, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.as_mut()?.next()?;
        Some(self.convert(item))
    }
}

impl DoubleEndedIterator for BulkRange<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let item = self.inner.as_mut()?.next_back()?;
        Some(self.convert(item))
    }
}
