//! Images held in the cloud tier, in the engine: holding one (its record
//! stays, its reads go to its cloud copy, its chunks are left to GC) and
//! recalling it (its chunks stored here again, batch by batch, each batch's
//! rows committed with them, so GC keeps them and a crash loses nothing:
//! the next recall goes on from the last batch).

use tern_core::{ContainerName, ImageName};

use super::pack::Location;
use super::records::{ChunkKey, ContainerRecord, HeldIn};
use super::seed::{StoredChunk, Verified};
use super::{Result, Scope, Store, StoreError};

/// Recipe entries recalled per transaction.
const RECALL_BATCH: usize = 1024;
/// Tries of a batch whose chunks GC took between the check and the store.
const RECALL_TRIES: usize = 3;

impl Store {
    /// Holds image `name` of local container `c` (whose id must still be
    /// `expect`) in its committed cloud copy `cloud_name` of cloud
    /// container `cloud` (`GROUP/NAME`). A read already open on the image
    /// goes on from the cloud copy (`Store::read_chunk`).
    pub fn image_hold(
        &self,
        c: &ContainerRecord,
        name: &ImageName,
        expect: u64,
        cloud: &ContainerName,
        cloud_name: &ImageName,
    ) -> Result<()> {
        let cc = self.container(&Scope::Every, cloud)?;
        let copy = self.catalog.image(cc.id, cloud_name)?.ok_or_else(|| {
            StoreError::NotFound(format!("the cloud copy {cloud}/{cloud_name} is gone"))
        })?;
        let held = HeldIn {
            group: cc.group,
            container_id: cc.id,
            name: cloud_name.clone(),
            image_id: copy.id,
        };
        self.catalog.hold_image(c.id, name, expect, held)
    }

    /// The group id and image id a read of an image with `held` goes to.
    pub(super) fn held_source(&self, held: &HeldIn) -> Result<(u32, u64)> {
        let group = self.catalog.group_id(&held.group)?.ok_or_else(|| {
            StoreError::Corrupt(format!("storage group {} is missing", held.group))
        })?;
        Ok((group, held.image_id))
    }

    /// Brings held image `name` of `container` back: stores here the
    /// chunks of its cloud copy the group lacks (verified, as every chunk
    /// stored), writes its rows, and lets go of the copy (which stays, a
    /// copy like any other). Returns the chunk bytes stored.
    pub fn image_recall(
        &self,
        scope: &Scope,
        container: &ContainerName,
        name: &ImageName,
    ) -> Result<u64> {
        let c = self.container(scope, container)?;
        let rec = self.catalog.image(c.id, name)?.ok_or_else(|| {
            StoreError::NotFound(format!(
                "image {name} does not exist in container {container}"
            ))
        })?;
        let Some(held) = rec.held.clone() else {
            return Err(StoreError::Invalid(format!(
                "image {name} is not held in the cloud tier: its bytes are here"
            )));
        };
        let source = self.readable(&c, container.clone(), name.clone(), rec.clone())?;
        let group = self.group_of(&c)?;
        let mut offset = self.catalog.recalled_up_to(rec.id)?;
        let mut stored = 0;
        while offset < rec.size {
            let entries = self.recipe_from(held.image_id, offset, RECALL_BATCH)?;
            let Some(last) = entries.last() else { break };
            if entries[0].offset != offset {
                return Err(StoreError::Corrupt(format!(
                    "the cloud copy of {name} has no chunk at offset {offset}"
                )));
            }
            let next = last.offset + u64::from(last.len);
            let rows: Vec<_> = entries.iter().map(|e| (e.offset, e.id, e.len)).collect();
            stored += self.recall_batch(group, rec.id, &source, &rows)?;
            offset = next;
        }
        if offset != rec.size {
            return Err(StoreError::Corrupt(format!(
                "the cloud copy of {name} ends at {offset} of {} bytes",
                rec.size
            )));
        }
        self.catalog.unhold_image(c.id, name, rec.id, self.now())?;
        Ok(stored)
    }

    /// Stores the chunks of `rows` the group lacks, read from the cloud
    /// copy and verified, and commits the rows with their index entries.
    fn recall_batch(
        &self,
        group: u32,
        image_id: u64,
        source: &super::ReadableImage,
        rows: &[(u64, tern_core::ChunkId, u32)],
    ) -> Result<u64> {
        let mut fetched: Vec<StoredChunk> = Vec::new();
        let mut stored = 0;
        for _ in 0..RECALL_TRIES {
            // Read from the cloud group outside this group's gate (two
            // gates of one stripe must not be taken by one thread).
            let missing: Vec<usize> = (0..rows.len())
                .filter(|&i| !fetched.iter().any(|f| f.id == rows[i].1))
                .filter_map(|i| match self.has_chunk(group, &rows[i].1) {
                    Ok(true) => None,
                    Ok(false) => Some(Ok(i)),
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_>>()?;
            for i in missing {
                let (_, loc, bytes) = self.read_chunk(source, rows[i].0)?;
                fetched.push(StoredChunk {
                    id: rows[i].1,
                    codec: loc.codec,
                    raw_len: rows[i].2,
                    bytes,
                });
            }
            let verified = Verified::check(std::mem::take(&mut fetched))?;
            let _gate = self.gates.shared(group);
            for r in verified.records() {
                if self.store_chunk(group, &r.id, r.codec, r.raw_len, &r.bytes)? {
                    stored += r.bytes.len() as u64;
                }
            }
            fetched = verified.into_records();
            // GC may have taken a chunk found here before the gate.
            let mut all_here = true;
            for (_, id, _) in rows {
                if !self.has_chunk(group, id)? {
                    all_here = false;
                }
            }
            if !all_here {
                continue;
            }
            let durable: Vec<(ChunkKey, Location)> = self.sync_pending(group)?;
            self.catalog.recall_rows(image_id, rows, &durable)?;
            self.forget_pending(durable);
            return Ok(stored);
        }
        Err(StoreError::Busy(
            "GC kept taking chunks of the image being recalled; try again".into(),
        ))
    }
}
