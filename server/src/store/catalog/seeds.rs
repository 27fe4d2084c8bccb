//! Seeds loaded into this store and the pins that keep their chunks from GC
//! (format 6). `docs/store-format.md` describes both tables.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::index::IndexWriter;
use super::{decode, encode, Catalog};
use crate::store::pack::Location;
use crate::store::records::ChunkKey;
use crate::store::Result;

/// Seed id (hex) -> the seed's record: the seeding service's
/// (`service::seed::SeedRecord`), kept by the engine without reading it.
pub const SEEDS: TableDefinition<&str, &[u8]> = TableDefinition::new("seeds");
/// Chunk key -> seed id (16 bytes) | pin expiry (u64 LE, Unix seconds).
pub const PINS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pins");

const PIN_LEN: usize = 24;

pub fn pin_value(seed: &[u8; 16], expires: u64) -> [u8; PIN_LEN] {
    let mut v = [0u8; PIN_LEN];
    v[..16].copy_from_slice(seed);
    v[16..].copy_from_slice(&expires.to_le_bytes());
    v
}

/// (seed id, expiry) of a pin's value; `None` if it is not one.
pub fn split_pin(v: &[u8]) -> Option<([u8; 16], u64)> {
    if v.len() != PIN_LEN {
        return None;
    }
    let mut seed = [0u8; 16];
    seed.copy_from_slice(&v[..16]);
    Some((seed, u64::from_le_bytes(v[16..].try_into().ok()?)))
}

impl Catalog {
    pub fn seed<R: serde::de::DeserializeOwned>(&self, id: &str) -> Result<Option<R>> {
        let t = self.db.begin_read()?.open_table(SEEDS)?;
        let found = t.get(id)?;
        found.map(|v| decode("seed", v.value())).transpose()
    }

    pub fn seeds<R: serde::de::DeserializeOwned>(&self) -> Result<Vec<(String, R)>> {
        let t = self.db.begin_read()?.open_table(SEEDS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), decode("seed", v.value())?));
        }
        Ok(out)
    }

    /// Records what a batch of a seed's chunks made durable, in one
    /// transaction: the index entries of the chunks just stored (every
    /// pending one, as a checkpoint does), a pin for each chunk of the
    /// batch, and the seed's record.
    pub fn seed_commit<R: serde::Serialize>(
        &self,
        id: &str,
        rec: &R,
        durable: &[(ChunkKey, Location)],
        pins: &[ChunkKey],
        pin: &[u8; PIN_LEN],
    ) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut index = IndexWriter::open(&tx)?;
            for (k, loc) in durable {
                index.insert(k, loc)?;
            }
            index.finish()?;
            let mut t = tx.open_table(PINS)?;
            for k in pins {
                t.insert(k.as_slice(), pin.as_slice())?;
            }
            tx.open_table(SEEDS)?.insert(id, encode(rec)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Calls `each(key, seed, expiry)` for every pin.
    pub fn for_each_pin(&self, mut each: impl FnMut(&ChunkKey, [u8; 16], u64)) -> Result<()> {
        let t = self.db.begin_read()?.open_table(PINS)?;
        for row in t.iter()? {
            let (k, v) = row?;
            if let (Ok(key), Some((seed, expires))) =
                (<ChunkKey>::try_from(k.value()), split_pin(v.value()))
            {
                each(&key, seed, expires);
            }
        }
        Ok(())
    }

    /// Removes the pins `drop(seed, expiry)` picks, and the records of
    /// `seeds_gone`; returns how many pins went.
    pub fn remove_pins(
        &self,
        drop: impl Fn(&[u8; 16], u64) -> bool,
        seeds_gone: &[String],
    ) -> Result<u64> {
        let tx = self.begin_write()?;
        let mut removed = 0;
        {
            let mut t = tx.open_table(PINS)?;
            t.retain(|_, v| match split_pin(v) {
                Some((seed, expires)) if drop(&seed, expires) => {
                    removed += 1;
                    false
                }
                // An undecodable pin keeps its chunk: never lose data to it.
                _ => true,
            })?;
            let mut seeds = tx.open_table(SEEDS)?;
            for s in seeds_gone {
                seeds.remove(s.as_str())?;
            }
        }
        tx.commit()?;
        Ok(removed)
    }
}
