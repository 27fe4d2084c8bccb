//! Changes to the chunk index, and the per-group totals kept with it.
//!
//! Every insert into or removal from [`CHUNKS`] goes through an
//! [`IndexWriter`], which changes [`GROUP_TOTALS`] in the same transaction:
//! `tern stats` reads the totals instead of scanning an index of millions
//! of entries, and they cannot drift from the index they count.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Catalog, CHUNKS};
use crate::store::pack::Location;
use crate::store::records::{split_chunk_key, ChunkKey};
use crate::store::{Result, StoreError};

/// Storage group id -> (index entries, their raw bytes, their stored bytes).
pub const GROUP_TOTALS: TableDefinition<u32, (u64, u64, u64)> =
    TableDefinition::new("group_totals");

/// What the index of one storage group holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupTotals {
    pub chunks: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

/// Signed changes to the totals of each group, applied at [`IndexWriter::finish`].
#[derive(Default)]
pub(super) struct TotalsDelta(HashMap<u32, [i128; 3]>);

impl TotalsDelta {
    pub(super) fn add(&mut self, key: &[u8], loc: &[u8], sign: i128) {
        let (Some((group, _)), Some(loc)) = (split_chunk_key(key), Location::decode(loc)) else {
            return;
        };
        let d = self.0.entry(group).or_default();
        d[0] += sign;
        d[1] += sign * i128::from(loc.raw_len);
        d[2] += sign * i128::from(loc.stored_len);
    }

    pub(super) fn apply(self, tx: &redb::WriteTransaction) -> Result<()> {
        let mut t = tx.open_table(GROUP_TOTALS)?;
        for (group, d) in self.0 {
            let (c, r, s) = t.get(group)?.map(|v| v.value()).unwrap_or_default();
            let moved =
                |v: u64, by: i128| (i128::from(v) + by).clamp(0, i128::from(u64::MAX)) as u64;
            t.insert(group, (moved(c, d[0]), moved(r, d[1]), moved(s, d[2])))?;
        }
        Ok(())
    }
}

/// The chunk index of one write transaction, keeping the totals in step.
pub(super) struct IndexWriter<'tx> {
    tx: &'tx redb::WriteTransaction,
    chunks: redb::Table<'tx, &'static [u8], &'static [u8]>,
    delta: TotalsDelta,
}

impl<'tx> IndexWriter<'tx> {
    pub(super) fn open(tx: &'tx redb::WriteTransaction) -> Result<Self> {
        Ok(Self {
            tx,
            chunks: tx.open_table(CHUNKS)?,
            delta: TotalsDelta::default(),
        })
    }

    pub(super) fn insert(&mut self, key: &ChunkKey, loc: &Location) -> Result<()> {
        let enc = loc.encode();
        if let Some(old) = self.chunks.insert(key.as_slice(), enc.as_slice())? {
            self.delta.add(key, old.value(), -1);
        }
        self.delta.add(key, &enc, 1);
        Ok(())
    }

    pub(super) fn remove(&mut self, key: &ChunkKey) -> Result<()> {
        if let Some(old) = self.chunks.remove(key.as_slice())? {
            self.delta.add(key, old.value(), -1);
        }
        Ok(())
    }

    /// Keeps the entries in `range` that `keep(key, location)` accepts;
    /// returns how many went.
    pub(super) fn retain_in(
        &mut self,
        range: std::ops::Range<&[u8]>,
        mut keep: impl FnMut(&ChunkKey, &Location) -> bool,
    ) -> Result<u64> {
        let mut removed = 0;
        let mut bad = None;
        let delta = &mut self.delta;
        self.chunks.retain_in(range, |k, v| {
            let (Ok(key), Some(loc)) = (<ChunkKey>::try_from(k), Location::decode(v)) else {
                bad.get_or_insert_with(|| hex_key(k));
                return true;
            };
            if keep(&key, &loc) {
                return true;
            }
            delta.add(k, v, -1);
            removed += 1;
            false
        })?;
        if let Some(k) = bad {
            return Err(StoreError::Corrupt(format!("undecodable index entry {k}")));
        }
        Ok(removed)
    }

    /// Writes the totals; the caller commits the transaction.
    pub(super) fn finish(self) -> Result<()> {
        drop(self.chunks);
        self.delta.apply(self.tx)
    }
}

fn hex_key(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts the whole index into fresh totals (format 3 -> 4, and `fsck --repair`).
pub(super) fn recount(tx: &redb::WriteTransaction) -> Result<()> {
    let mut delta = TotalsDelta::default();
    for row in tx.open_table(CHUNKS)?.iter()? {
        let (k, v) = row?;
        delta.add(k.value(), v.value(), 1);
    }
    tx.delete_table(GROUP_TOTALS)?;
    delta.apply(tx)
}

impl Catalog {
    /// The index totals of every storage group that has any.
    pub fn group_totals(&self) -> Result<HashMap<u32, GroupTotals>> {
        let t = self.db.begin_read()?.open_table(GROUP_TOTALS)?;
        let mut out = HashMap::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let (chunks, raw_bytes, stored_bytes) = v.value();
            out.insert(
                k.value(),
                GroupTotals {
                    chunks,
                    raw_bytes,
                    stored_bytes,
                },
            );
        }
        Ok(out)
    }

    /// The totals counted from the index itself, for fsck to hold the kept ones against.
    pub fn counted_totals(&self) -> Result<HashMap<u32, GroupTotals>> {
        let mut out: HashMap<u32, GroupTotals> = HashMap::new();
        self.for_each_index_entry(|k, v| {
            if let (Some((group, _)), Some(loc)) = (split_chunk_key(k), Location::decode(v)) {
                let t = out.entry(group).or_default();
                t.chunks += 1;
                t.raw_bytes += u64::from(loc.raw_len);
                t.stored_bytes += u64::from(loc.stored_len);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Replaces the kept totals with a count of the index (`fsck --repair`).
    pub fn recount_totals(&self) -> Result<()> {
        let tx = self.begin_write()?;
        recount(&tx)?;
        tx.commit()?;
        Ok(())
    }
}
