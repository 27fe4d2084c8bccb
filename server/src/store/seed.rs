//! The store's side of seeding: the unique chunks of some containers, their
//! stored bytes, loading a seed's chunks (verified, pinned), and the pins.

use std::collections::{HashMap, HashSet};

use tern_core::{ChunkId, ContainerName};

use super::catalog::seeds::pin_value;
use super::pack;
use super::records::{chunk_key, now_unix, ChunkKey, ContainerRecord};
use super::write::VERIFIER;
use super::{hex, lock, Result, Store, StoreError};

/// A chunk as a pack holds it: its id, codec, raw length and stored
/// (compressed or raw) bytes. Seeds carry chunks in this form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    pub id: ChunkId,
    pub codec: tern_core::Codec,
    pub raw_len: u32,
    pub bytes: Vec<u8>,
}

type Record = StoredChunk;

/// A container resolved for an export, with its images' names.
pub struct SeedSource {
    pub name: ContainerName,
    pub rec: ContainerRecord,
    pub images: Vec<String>,
}

/// Which seed a loaded batch's pins belong to, and until when they hold.
#[derive(Debug, Clone, Copy)]
pub struct SeedPin<'a> {
    pub seed: &'a [u8; 16],
    /// The seed's id as its table keys it (hex of `seed`).
    pub id: &'a str,
    /// Unix seconds.
    pub expires: u64,
}

/// What loading one batch of a seed did.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadedBatch {
    pub loaded: u64,
    pub present: u64,
    pub bytes: u64,
}

/// Seed records checked against their ids: the only kind `seed_load`
/// stores. Checking is the costly part of an import (every chunk is
/// decompressed and hashed), so it runs on threads of its own.
#[derive(Debug, Default)]
pub struct Verified {
    records: Vec<Record>,
    /// Stored bytes of the records, kept as they are added.
    bytes: usize,
}

impl Verified {
    /// Checks every record against its id, like every received chunk.
    pub fn check(records: Vec<Record>) -> Result<Self> {
        for r in &records {
            VERIFIER
                .with_borrow_mut(|d| d.verify(&r.id, r.codec, r.raw_len, &r.bytes))
                .map_err(|e| StoreError::Invalid(format!("chunk {}: {e}", r.id)))?;
        }
        let bytes = records.iter().map(|r| r.bytes.len()).sum();
        Ok(Self { records, bytes })
    }

    pub fn append(&mut self, mut other: Verified) {
        self.records.append(&mut other.records);
        self.bytes += other.bytes;
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Stored bytes of the records.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn records(&self) -> &[Record] {
        &self.records
    }

    pub(super) fn into_records(self) -> Vec<Record> {
        self.records
    }
}

impl Store {
    /// The containers named (`NAME` or `GROUP/NAME`), in any storage group.
    pub fn seed_sources(&self, names: &[ContainerName]) -> Result<Vec<SeedSource>> {
        let mut out = Vec::new();
        for name in names {
            let rec = self.container_where(name, |_| true)?;
            let images = self
                .catalog
                .images(rec.id, "")?
                .into_iter()
                .map(|(n, _)| n.to_string())
                .collect();
            let (_, bare) = name.split();
            out.push(SeedSource {
                name: bare,
                rec,
                images,
            });
        }
        Ok(out)
    }

    /// Every unique chunk the committed images of `sources` refer to (a
    /// held image's in its cloud copy's group), as
    /// (storage group id, chunk id, stored length), in the order of the
    /// export: where the chunks lie in the packs. Reading them is then one
    /// pass over each pack (not a seek per chunk), and a target that loads
    /// the seed keeps the source's locality for its restores. A chunk in
    /// two groups goes once. A chunk without a location (damage: fsck
    /// says so) comes last with length 0, and its read fails the export.
    /// 68 bytes of memory per chunk while sorting.
    pub fn seed_chunk_list(&self, sources: &[SeedSource]) -> Result<Vec<(u32, ChunkId, u32)>> {
        // Image id whose rows to walk -> the group its chunks are in: a held
        // image's are its cloud copy's (its own rows went with the hold).
        let mut images: HashMap<u64, u32> = HashMap::new();
        for s in sources {
            let group = self.group_of(&s.rec)?;
            for (_, img) in self.catalog.images(s.rec.id, "")? {
                let (g, id) = match &img.held {
                    Some(held) => self.held_source(held)?,
                    None => (group, img.id),
                };
                images.insert(id, g);
            }
        }
        let mut ids = Vec::new();
        self.catalog.for_each_recipe_row(|image, _, id, _| {
            if let Some(&g) = images.get(&image) {
                ids.push((g, id));
            }
            Ok(())
        })?;
        ids.sort_unstable_by(|a, b| a.1 .0.cmp(&b.1 .0).then(a.0.cmp(&b.0)));
        ids.dedup_by(|a, b| a.1 == b.1);
        let mut placed = Vec::with_capacity(ids.len());
        for (group, id) in ids {
            let key = chunk_key(group, &id);
            let loc = match lock(&self.pending).get(&key) {
                Some(l) => Some(*l),
                None => self.catalog.chunk_location(&key)?,
            };
            let (pack, offset, len) =
                loc.map_or((u64::MAX, 0, 0), |l| (l.pack, l.offset, l.stored_len));
            placed.push(((group, pack, offset), id, len));
        }
        placed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1 .0.cmp(&b.1 .0)));
        Ok(placed
            .into_iter()
            .map(|((group, _, _), id, len)| (group, id, len))
            .collect())
    }

    /// The storage group a seed loads into, created if need be.
    pub fn seed_group(&self, name: &tern_core::names::GroupName) -> Result<u32> {
        self.ensure_group(name)
    }

    /// A chunk's stored length.
    pub fn seed_stored_len(&self, group: u32, id: &ChunkId) -> Result<u32> {
        let key = chunk_key(group, id);
        if let Some(l) = lock(&self.pending).get(&key) {
            return Ok(l.stored_len);
        }
        Ok(self
            .catalog
            .chunk_location(&key)?
            .map_or(0, |l| l.stored_len))
    }

    /// A chunk's stored bytes, as a seed carries them.
    pub fn seed_read_chunk(&self, group: u32, id: &ChunkId) -> Result<Record> {
        let _gate = self.gates.shared(group);
        let key = chunk_key(group, id);
        let loc = match lock(&self.pending).get(&key) {
            Some(l) => *l,
            None => self.catalog.chunk_location(&key)?.ok_or_else(|| {
                StoreError::NotFound(format!(
                    "chunk {id} is gone from the store (deleted and collected since the \
                     export began); start the export again"
                ))
            })?,
        };
        let file = self.packs.reader(group, loc.pack)?;
        let bytes = pack::read_stored(&*file, &loc)
            .map_err(|e| StoreError::Corrupt(format!("reading chunk {id}: {e}")))?;
        Ok(Record {
            id: *id,
            codec: loc.codec,
            raw_len: loc.raw_len,
            bytes,
        })
    }

    /// Stores the chunks of `records` the group lacks, pins every one of
    /// them until `pin_expires`, and records `rec` (the seeding service's
    /// record, updated by `finish` with this batch) in the same transaction. GC is held off from the first store to the
    /// commit.
    pub fn seed_load<R: serde::Serialize + Clone>(
        &self,
        group: u32,
        records: &Verified,
        pin: SeedPin<'_>,
        rec: &mut R,
        finish: impl FnOnce(&mut R, LoadedBatch),
    ) -> Result<LoadedBatch> {
        let records = &records.records;
        let _gate = self.gates.shared(group);
        let mut batch = LoadedBatch::default();
        let mut pins: Vec<ChunkKey> = Vec::with_capacity(records.len());
        for r in records {
            if self.store_chunk(group, &r.id, r.codec, r.raw_len, &r.bytes)? {
                batch.loaded += 1;
                batch.bytes += r.bytes.len() as u64;
            } else {
                batch.present += 1;
            }
            pins.push(chunk_key(group, &r.id));
        }
        let mut next = rec.clone();
        finish(&mut next, batch);
        let durable = self.sync_pending(group)?;
        let value = pin_value(pin.seed, pin.expires);
        self.catalog
            .seed_commit(pin.id, &next, &durable, &pins, &value)?;
        *rec = next;
        self.forget_pending(durable);
        Ok(batch)
    }

    /// The seeds this store loaded, with how many of each one's pinned
    /// chunks images now refer to.
    pub fn seed_list<R: serde::de::DeserializeOwned>(&self) -> Result<Vec<(String, R, u64, u64)>> {
        let seeds = self.catalog.seeds()?;
        let mut pinned: HashMap<ChunkKey, [u8; 16]> = HashMap::new();
        self.catalog.for_each_pin(|k, seed, _| {
            pinned.insert(*k, seed);
        })?;
        let image_groups = self.catalog.image_groups()?;
        let mut referenced: HashSet<ChunkKey> = HashSet::new();
        self.catalog.for_each_recipe_row(|image, _, id, _| {
            if let Some(g) = image_groups.get(&image) {
                let k = chunk_key(*g, &id);
                if pinned.contains_key(&k) {
                    referenced.insert(k);
                }
            }
            Ok(())
        })?;
        // (pins, referenced) per seed, in one pass over the pins.
        let mut counts: HashMap<[u8; 16], (u64, u64)> = HashMap::new();
        for (k, seed) in &pinned {
            let c = counts.entry(*seed).or_default();
            c.0 += 1;
            c.1 += u64::from(referenced.contains(k));
        }
        let by_hex: HashMap<String, (u64, u64)> =
            counts.into_iter().map(|(s, c)| (hex(&s), c)).collect();
        Ok(seeds
            .into_iter()
            .map(|(id, rec)| {
                let (pins, used) = by_hex.get(&id).copied().unwrap_or_default();
                (id, rec, pins, used)
            })
            .collect())
    }

    /// The record of seed `id`, if this store loaded (part of) it.
    pub fn seed_record<R: serde::de::DeserializeOwned>(&self, id: &str) -> Result<Option<R>> {
        self.catalog.seed(id)
    }

    /// (source server, container, image) of every replica in this store.
    pub fn replica_origins(&self) -> Result<HashSet<(String, String, String)>> {
        let mut out = HashSet::new();
        for (_, rec, _, _) in self.catalog.containers()? {
            for (_, img) in self.catalog.images(rec.id, "")? {
                if let Some(o) = img.origin {
                    out.insert((o.server, o.container.to_string(), o.image.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// Drops the pins of the seeds `ids` and their records; GC may then
    /// free what no image refers to. Returns the pins dropped.
    pub fn seed_unpin(&self, ids: &[String]) -> Result<u64> {
        self.catalog
            .remove_pins(|seed, _| ids.contains(&hex(seed)), ids)
    }

    /// Pinned chunks whose pins have not expired, for GC's mark; expired
    /// pins are dropped.
    pub(super) fn live_pins(&self, mut keep: impl FnMut(&ChunkKey)) -> Result<()> {
        let now = now_unix();
        let mut expired = false;
        self.catalog.for_each_pin(|k, _, expires| {
            if expires > now {
                keep(k);
            } else {
                expired = true;
            }
        })?;
        if expired {
            self.catalog.remove_pins(|_, expires| expires <= now, &[])?;
        }
        Ok(())
    }
}
