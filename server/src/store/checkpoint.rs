//! Checkpoints: how much of an image being written is made durable, and
//! when. Each one syncs the packs (and a cloud group's uploads), then
//! records the pending index entries, the recipe up to the first chunk
//! still awaited, and the chunks held past it, in one transaction.

use std::time::{Duration, Instant};

use super::records::now_unix;
use super::write::OpenImage;
use super::{lock, Result, Store};

/// A checkpoint is taken at least every this many logical bytes...
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// ...and every this many recipe entries (whatever their size)...
pub const CHECKPOINT_ENTRIES: usize = 65_536;
/// ...and at least this often while the image is written.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// A replica is checkpointed more often: what a target loses in a crash
/// crosses a WAN again, and copies run at WAN speeds.
pub const REPLICA_CHECKPOINT_BYTES: u64 = 16 << 20;
pub const REPLICA_CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// At most this many chunks past a checkpoint's cut are held for GC (1 MiB
/// of ids in the record); the rest, if GC frees them, cross again.
const HELD_MAX: usize = 32_768;
/// An image that has had no data for this long is checkpointed (its
/// session is probably in an outage).
pub const CHECKPOINT_IDLE: Duration = Duration::from_secs(2);

impl Store {
    /// Checkpoints `img` when enough bytes or time have gone by since the
    /// last one. The caller holds the gate (shared).
    pub(super) fn checkpoint_if_due(&self, img: &mut OpenImage) -> Result<()> {
        let (bytes, every) = if img.replica.is_some() {
            (REPLICA_CHECKPOINT_BYTES, REPLICA_CHECKPOINT_EVERY)
        } else {
            (CHECKPOINT_BYTES, CHECKPOINT_EVERY)
        };
        let many = img.announced >= CHECKPOINT_ENTRIES;
        if img.received >= bytes || many || img.last_checkpoint.elapsed() >= every {
            self.checkpoint(img)?;
        }
        Ok(())
    }

    /// Makes durable what `img` has received: syncs the packs, then records
    /// the pending index entries, the recipe up to the first chunk still
    /// awaited, and the durable size, in one transaction. The caller holds
    /// the gate (shared).
    pub(super) fn checkpoint(&self, img: &mut OpenImage) -> Result<()> {
        img.last_checkpoint = Instant::now();
        img.received = 0;
        img.announced = 0;
        let cut = img
            .recipe
            .iter()
            .position(|(_, id, _)| img.missing.contains_key(id))
            .unwrap_or(img.recipe.len());
        let durable = self.sync_pending(img.group)?;
        let mut rec = img.durable.clone();
        if let Some((offset, _, len)) = img.recipe[..cut].last() {
            rec.size = offset + u64::from(*len);
        }
        rec.chunks += cut as u64;
        // Past the cut, what is not awaited is stored (it was received, or
        // the store had it): GC keeps it for the resume.
        rec.held = img.recipe[cut..]
            .iter()
            .filter(|(_, id, _)| !img.missing.contains_key(id))
            .map(|(_, id, _)| *id)
            .take(HELD_MAX)
            .collect();
        rec.checkpointed = now_unix();
        rec.new_chunks = img.stats.new_chunks;
        rec.new_stored_bytes = img.stats.new_stored_bytes;
        self.catalog.checkpoint_partial(
            img.container_id,
            &img.name,
            &rec,
            &img.recipe[..cut],
            &durable,
        )?;
        self.forget_pending(durable);
        img.recipe.drain(..cut);
        img.durable = rec;
        Ok(())
    }

    /// Syncs every open pack (and waits for group `group`'s uploads, if it
    /// is a cloud group); returns the pending chunks, all durable now.
    pub(super) fn sync_pending(
        &self,
        group: u32,
    ) -> Result<Vec<(super::records::ChunkKey, super::pack::Location)>> {
        let mut appender = self.packs.appender();
        appender.sync_all(group)?;
        let durable = lock(&self.pending).iter().map(|(k, v)| (*k, *v)).collect();
        drop(appender);
        // Chunks of a cloud group are durable once uploaded. Other groups'
        // chunks in `durable` may still be on their way: an image of theirs
        // that names them waits for them at its own commit.
        self.packs.wait_sealed(group)?;
        Ok(durable)
    }

    /// Drops from the pending map what an index transaction just recorded.
    pub(super) fn forget_pending(
        &self,
        durable: Vec<(super::records::ChunkKey, super::pack::Location)>,
    ) {
        let mut pending = lock(&self.pending);
        for (k, loc) in durable {
            if pending.get(&k) == Some(&loc) {
                pending.remove(&k);
            }
        }
    }

    /// A checkpoint of one open image now, for tests.
    #[cfg(test)]
    pub(super) fn checkpoint_now(&self, w: super::WriterId) -> Result<()> {
        let _gate = self.gates.shared(self.open_group(w)?);
        let image = self.open_image(w)?;
        let mut img = lock(&image);
        self.checkpoint(&mut img)
    }

    /// Checkpoints the open images that need it without a write to do it:
    /// idle ones (an outage, a client gone) with anything not yet durable,
    /// and any whose last checkpoint is older than [`CHECKPOINT_EVERY`].
    /// Images busy with a write are skipped (their writes checkpoint them).
    pub fn checkpoint_idle(&self) -> Result<usize> {
        let open: Vec<_> = lock(&self.open)
            .values()
            .map(|e| (e.group, e.image.clone()))
            .collect();
        let mut done = 0;
        for (group, image) in open {
            let _gate = self.gates.shared(group);
            let Ok(mut img) = image.try_lock() else {
                continue;
            };
            let unflushed = !img.recipe.is_empty();
            // Idle since a write the last checkpoint did not see.
            let idle =
                img.last_write.elapsed() >= CHECKPOINT_IDLE && img.last_checkpoint < img.last_write;
            let old = img.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
            if unflushed && (idle || old) {
                self.checkpoint(&mut img)?;
                done += 1;
            }
        }
        Ok(done)
    }
}
