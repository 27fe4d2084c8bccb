//! Tables the layers above keep in the catalog's redb file (users,
//! partners, copies, shaping groups, seeds): they share the catalog's
//! durability and its read-only mode, but the engine never reads them.
//! Their owners define them and their queries (`service::users`, ...);
//! the engine's own tables stay private to `catalog/`.

use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};

use super::catalog::Catalog;
use super::{Result, Store};

pub use super::records::{decode, encode};

/// Transactions on the catalog for tables the engine does not own.
pub struct Tables<'s> {
    catalog: &'s Catalog,
}

impl Store {
    /// The catalog's transactions, for the service layer's own tables.
    pub fn tables(&self) -> Tables<'_> {
        Tables {
            catalog: &self.catalog,
        }
    }
}

impl Tables<'_> {
    /// A read transaction: a consistent view of every table.
    pub fn read(&self) -> Result<ReadTransaction> {
        Ok(self.catalog.db().begin_read()?)
    }

    /// Runs `f` in one write transaction and commits it if `f` succeeds;
    /// refused when the store is read-only.
    pub fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
        let tx = self.catalog.begin_write()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

/// Opens `table` in `tx`; `None` if it was never written (a table of the
/// layers above comes into being with its first row).
pub fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>> {
    match tx.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Appends `entry` to the replication trail inside `tx` (the trail is the
/// engine's: replicas' ends are written into it in their commits).
pub fn push_trail(tx: &WriteTransaction, entry: &tern_core::wire::TrailEntry) -> Result<()> {
    super::catalog::replication::push_trail(tx, entry)
}

impl Store {
    /// Appends `entry` to the replication trail.
    pub fn push_trail(&self, entry: &tern_core::wire::TrailEntry) -> Result<()> {
        self.catalog.push_trail(entry)
    }

    /// The newest `max` trail entries older than row `before` that `shown`
    /// keeps, newest first, with their row numbers.
    pub fn trail(
        &self,
        max: usize,
        before: Option<u64>,
        shown: impl Fn(&tern_core::wire::TrailEntry) -> bool,
    ) -> Result<Vec<(u64, tern_core::wire::TrailEntry)>> {
        self.catalog.trail(max, before, shown)
    }
}
