//! Garbage collection: mark from the recipes, sweep the index, then compact packs.

use std::collections::{HashMap, HashSet};
use std::fs::File;

use serde::Serialize;
use tern_core::ChunkId;

use super::pack::{self, Location, ENTRY_HEADER_LEN};
use super::packs::{PackFile, PackSet};
use super::records::{chunk_key, ChunkKey};
use super::{lock, Result, Store, StoreError};

/// A pack is rewritten when at least this share of it is dead: reclaiming space
/// soon after deletes matters more to a backup target than the rewrite I/O.
const REWRITE_DEAD_SHARE: f64 = 0.05;

/// What a GC run did.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub live_chunks: u64,
    pub chunks_removed: u64,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl Store {
    /// Removes unreferenced chunks and compacts packs. Writers pause while it runs.
    pub fn gc(&self) -> Result<GcReport> {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.packs.wait_finished()?;
        let packs = self.packs.files()?;
        let mut report = GcReport {
            bytes_before: PackSet::bytes(&packs),
            ..Default::default()
        };
        let live = self.mark()?;
        // Packs that hold uncommitted chunks, or are being appended to, stay as they are.
        let busy_packs: HashSet<u64> = lock(&self.pending)
            .values()
            .map(|l| l.pack)
            .chain(self.packs.appender().open_packs())
            .collect();
        let (removed, kept) = self.catalog.sweep_index(|key| live.contains(key))?;
        report.chunks_removed = removed;
        report.live_chunks = kept.len() as u64;
        let mut live_by_pack: HashMap<u64, Vec<(ChunkKey, Location)>> = HashMap::new();
        for (key, loc) in kept {
            live_by_pack.entry(loc.pack).or_default().push((key, loc));
        }
        for p in packs.iter().filter(|p| !busy_packs.contains(&p.number)) {
            let entries = live_by_pack.remove(&p.number).unwrap_or_default();
            if entries.is_empty() {
                self.packs.remove(p)?;
                report.packs_deleted += 1;
            } else if self.compact(p, entries)? {
                report.packs_rewritten += 1;
            }
        }
        report.bytes_after = PackSet::bytes(&self.packs.files()?);
        Ok(report)
    }

    /// The index keys of every chunk a committed or open image refers to.
    fn mark(&self) -> Result<HashSet<ChunkKey>> {
        let mut live = HashSet::new();
        let image_groups = self.catalog.image_groups()?;
        self.catalog.for_each_recipe_row(|image, _, id, _| {
            let group = image_groups.get(&image).ok_or_else(|| {
                StoreError::Corrupt(format!("recipe rows for unknown image {image}"))
            })?;
            live.insert(chunk_key(*group, &id));
            Ok(())
        })?;
        let open: Vec<_> = lock(&self.open).values().map(|e| e.image.clone()).collect();
        for image in open {
            let img = lock(&image);
            for (_, id, _) in &img.recipe {
                live.insert(chunk_key(img.group, id));
            }
        }
        Ok(live)
    }

    /// Copies the live entries of a sparse pack to the group's open pack and
    /// deletes it; true if it was rewritten, false if it was dense enough to keep.
    fn compact(&self, p: &PackFile, entries: Vec<(ChunkKey, Location)>) -> Result<bool> {
        let size = std::fs::metadata(&p.path).map(|m| m.len()).unwrap_or(0);
        let live_bytes: u64 = entries
            .iter()
            .map(|(_, l)| u64::from(l.stored_len) + ENTRY_HEADER_LEN)
            .sum();
        if (live_bytes as f64) > (1.0 - REWRITE_DEAD_SHARE) * size as f64 {
            return Ok(false);
        }
        let src = File::open(&p.path)?;
        let mut moved = Vec::with_capacity(entries.len());
        let mut appender = self.packs.appender();
        for (key, loc) in entries {
            let bytes = pack::read_stored(&src, &loc)?;
            let mut id = [0u8; 32];
            id.copy_from_slice(&key[4..]);
            let new_loc = appender.append(p.group, &ChunkId(id), loc.codec, loc.raw_len, &bytes)?;
            moved.push((key, new_loc));
        }
        appender.sync_all()?;
        drop(appender);
        self.catalog.relocate(&moved)?;
        self.packs.remove(p)?;
        Ok(true)
    }
}
