//! Garbage collection: mark from the recipes, sweep the index, then compact packs.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use tern_core::names::GroupName;
use tern_core::ChunkId;

use super::live_set::LiveSet;
use super::pack::{self, Location, ENTRY_OVERHEAD, FOOTER_LEN, HEADER_LEN};
use super::packs::PackRef;
use super::records::{chunk_key, ChunkKey};
use super::{lock, Result, Store, StoreError};

/// The storage group a chunk key belongs to.
fn key_group(k: &ChunkKey) -> u32 {
    u32::from_be_bytes([k[0], k[1], k[2], k[3]])
}

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
    /// Memory the mark phase's live set took.
    pub mark_bytes: u64,
    /// Objects deleted from a cloud group's bucket: those GC dropped in an
    /// earlier run, once the grace period was over.
    pub objects_deleted: u64,
    /// Objects deleted from a cloud group's bucket that no record of the
    /// group named (orphans of interrupted uploads), once older than the
    /// grace period.
    pub orphans_deleted: u64,
    /// Requests made to buckets while GC ran (by anyone).
    pub bucket_requests: u64,
    /// Why compaction stopped before the end (too little space to move a
    /// pack's live chunks); the packs left are compacted by a later run.
    pub stopped: Option<String>,
}

impl Store {
    /// Removes unreferenced chunks and compacts packs, in every storage
    /// group or only in `only`, one group at a time: the group's writers
    /// and readers pause while its turn runs, other groups' do not.
    pub fn gc(&self, only: Option<&GroupName>) -> Result<GcReport> {
        let groups: Vec<u32> = match only {
            Some(name) => vec![self
                .catalog
                .group_id(name)?
                .ok_or_else(|| StoreError::NotFound(format!("no storage group {name}")))?],
            None => {
                let mut ids = self.packs.group_ids();
                ids.sort_unstable();
                ids
            }
        };
        let mut report = GcReport::default();
        for group in groups {
            let r = self.gc_group(group)?;
            report.add(r);
            if report.stopped.is_some() {
                break;
            }
        }
        Ok(report)
    }

    fn gc_group(&self, group: u32) -> Result<GcReport> {
        let _gate = self.gates.exclusive(group);
        let requests_before = self.packs.bucket_requests();
        // The open pack is finished first, so that the dead chunks in it can
        // go too, and so that its table is in the size before as after.
        self.packs.appender().seal_group(group)?;
        self.packs.wait_sealed(group)?;
        let packs = self.packs.packs_of(group)?;
        let mut report = GcReport {
            bytes_before: self.packs.bytes(&packs),
            ..Default::default()
        };
        let live = self.mark(group)?;
        report.mark_bytes = live.bytes();
        // Uncommitted chunks that no open image names belong to aborted
        // images (a cancelled copy, a client gone): garbage now. Under the
        // exclusive gate no writer of the group is between storing a chunk
        // and naming it.
        lock(&self.pending).retain(|k, _| key_group(k) != group || live.contains(k));
        // Packs that hold uncommitted chunks stay as they are.
        let busy_packs: HashSet<u64> = lock(&self.pending).values().map(|l| l.pack).collect();
        // Live bytes per pack: memory per pack, not per chunk.
        let mut live_bytes: HashMap<u64, u64> = HashMap::new();
        report.chunks_removed = self.catalog.sweep_index(
            group,
            |key| live.contains(key),
            |_, loc| {
                report.live_chunks += 1;
                *live_bytes.entry(loc.pack).or_default() +=
                    u64::from(loc.stored_len) + ENTRY_OVERHEAD;
            },
        )?;
        drop(live);
        self.confirm_sparse(group, &packs, &busy_packs, &mut live_bytes, &mut report)?;
        // Packs with nothing live go first: deleting them frees space without
        // needing any, which is what a full disk needs.
        let mut sparse = Vec::new();
        for p in packs.iter().filter(|p| !busy_packs.contains(&p.number)) {
            match live_bytes.get(&p.number) {
                None => {
                    self.packs.remove(p)?;
                    report.packs_deleted += 1;
                }
                Some(&bytes) => {
                    let size = self.packs.size(p).unwrap_or(0);
                    sparse.extend(Compaction::worth_it(p, size, bytes))
                }
            }
        }
        // Then the sparsest packs, each only if its live chunks fit in the
        // space free now (GC may use the reserve; it gives back more than it
        // takes). Their entries are read from the index a batch of packs at
        // a time, so memory stays bounded by the batch.
        sparse.sort_by(|a, b| b.dead_share().total_cmp(&a.dead_share()));
        'batches: for batch in sparse.chunks(COMPACT_BATCH) {
            let numbers: HashSet<u64> = batch.iter().map(|c| c.pack.number).collect();
            let mut entries: HashMap<u64, Vec<(ChunkKey, Location)>> = HashMap::new();
            for (key, loc) in self.catalog.entries_in_packs(&numbers)? {
                entries.entry(loc.pack).or_default().push((key, loc));
            }
            for c in batch {
                let free = self.packs.space_of(c.pack.group).free()?;
                let needed = c.live_bytes + COMPACT_MARGIN;
                if free < needed {
                    report.stopped = Some(format!(
                        "short of space: {free} bytes free, and moving the live chunks out of \
                         pack {} needs {needed}; delete more images, or free space, and run gc \
                         again",
                        self.packs.describe(c.pack)
                    ));
                    break 'batches;
                }
                self.compact(c.pack, entries.remove(&c.pack.number).unwrap_or_default())?;
                report.packs_rewritten += 1;
            }
        }
        report.bytes_after = self.packs.bytes(&self.packs.packs_of(group)?);
        report.objects_deleted = self.purge_objects(group)?;
        report.orphans_deleted = self.packs.delete_orphans(group)?;
        report.bucket_requests = self.packs.bucket_requests() - requests_before;
        Ok(report)
    }

    /// The Bloom filter keeps about 1% of dead chunks. In a pack that is
    /// nearly all dead, those decide whether it is deleted (or must be
    /// copied, which a full disk may not allow), so the survivors of such
    /// packs are checked against the recipes exactly, and removed if no
    /// recipe names them. Memory: the survivors of those packs only.
    fn confirm_sparse(
        &self,
        group: u32,
        packs: &[PackRef],
        busy: &HashSet<u64>,
        live_bytes: &mut HashMap<u64, u64>,
        report: &mut GcReport,
    ) -> Result<()> {
        let sparse: HashSet<u64> = packs
            .iter()
            .filter(|p| !busy.contains(&p.number))
            .filter(|p| {
                let size = self.packs.size(p).unwrap_or(0);
                live_bytes
                    .get(&p.number)
                    .is_some_and(|&b| (b as f64) <= size as f64 * CONFIRM_LIVE_SHARE)
            })
            .map(|p| p.number)
            .collect();
        if sparse.is_empty() {
            return Ok(());
        }
        let mut suspects: HashMap<ChunkKey, Location> = self
            .catalog
            .entries_in_packs(&sparse)?
            .into_iter()
            .collect();
        self.for_each_root(group, |k| {
            suspects.remove(k);
        })?;
        let dead: Vec<(ChunkKey, Option<Location>)> = suspects.keys().map(|k| (*k, None)).collect();
        self.catalog.set_index_entries(&dead)?;
        for loc in suspects.values() {
            if let Some(b) = live_bytes.get_mut(&loc.pack) {
                *b = b.saturating_sub(u64::from(loc.stored_len) + ENTRY_OVERHEAD);
                if *b == 0 {
                    live_bytes.remove(&loc.pack);
                }
            }
        }
        report.chunks_removed += dead.len() as u64;
        report.live_chunks = report.live_chunks.saturating_sub(dead.len() as u64);
        Ok(())
    }

    /// Every chunk a committed, partial or open image refers to, or a
    /// seed pins: the live set GC keeps (a Bloom filter, ~1% false positives).
    fn mark(&self, group: u32) -> Result<LiveSet> {
        let totals = self
            .catalog
            .group_totals()?
            .get(&group)
            .map_or(0, |t| t.chunks);
        let pending = lock(&self.pending)
            .keys()
            .filter(|k| key_group(k) == group)
            .count() as u64;
        let mut live = LiveSet::with_capacity(totals + pending);
        self.for_each_root(group, |k| live.insert(k))?;
        Ok(live)
    }

    /// GC's roots, the one definition of what must survive: the recipe rows
    /// of committed and partial images, the chunks partial images hold past
    /// their recipes, the chunks open images have written
    /// but not yet recorded, and the pins of seeds that have not expired.
    /// A chunk may be visited more than once.
    fn for_each_root(&self, group: u32, mut each: impl FnMut(&ChunkKey)) -> Result<()> {
        let image_groups = self.catalog.image_groups()?;
        self.catalog.for_each_recipe_row(|image, _, id, _| {
            let g = image_groups.get(&image).ok_or_else(|| {
                StoreError::Corrupt(format!("recipe rows for unknown image {image}"))
            })?;
            if *g == group {
                each(&chunk_key(group, &id));
            }
            Ok(())
        })?;
        for (_, _, partial) in self.catalog.all_partials()? {
            if image_groups.get(&partial.id) == Some(&group) {
                partial
                    .held
                    .iter()
                    .for_each(|id| each(&chunk_key(group, id)));
            }
        }
        let open: Vec<_> = lock(&self.open)
            .values()
            .filter(|e| e.group == group)
            .map(|e| e.image.clone())
            .collect();
        for image in open {
            let img = lock(&image);
            for (_, id, _) in img.unflushed() {
                each(&chunk_key(group, id));
            }
        }
        // Seeded chunks wait for the replicas that will refer to them.
        self.live_pins(|k| {
            if key_group(k) == group {
                each(k)
            }
        })
    }

    /// Copies the live entries of a sparse pack to the group's open pack and
    /// deletes it.
    fn compact(&self, p: &PackRef, entries: Vec<(ChunkKey, Location)>) -> Result<()> {
        let src = self.packs.reader(p.group, p.number)?;
        let mut moved = Vec::with_capacity(entries.len());
        let mut appender = self.packs.appender();
        for (key, loc) in entries {
            let bytes = pack::read_stored(&*src, &loc)?;
            let mut id = [0u8; 32];
            id.copy_from_slice(&key[4..]);
            let new_loc = appender.append_within_reserve(
                p.group,
                &ChunkId(id),
                loc.codec,
                loc.raw_len,
                &bytes,
            )?;
            moved.push((key, new_loc));
        }
        appender.sync_all(p.group)?;
        drop(appender);
        self.packs.wait_sealed(p.group)?;
        self.catalog.relocate(&moved)?;
        self.packs.remove(p)?;
        Ok(())
    }
}

impl GcReport {
    /// Adds the run of one more group.
    fn add(&mut self, r: GcReport) {
        self.live_chunks += r.live_chunks;
        self.chunks_removed += r.chunks_removed;
        self.packs_deleted += r.packs_deleted;
        self.packs_rewritten += r.packs_rewritten;
        self.bytes_before += r.bytes_before;
        self.bytes_after += r.bytes_after;
        self.mark_bytes = self.mark_bytes.max(r.mark_bytes);
        self.objects_deleted += r.objects_deleted;
        self.orphans_deleted += r.orphans_deleted;
        self.bucket_requests += r.bucket_requests;
        self.stopped = self.stopped.take().or(r.stopped);
    }
}

/// Room kept beyond a pack's live bytes when compacting it: the new pack's
/// table and the catalog transaction that re-points the index.
const COMPACT_MARGIN: u64 = 1 << 20;

/// Packs whose live bytes are at most this share of their size have their
/// survivors checked exactly (see `confirm_sparse`).
const CONFIRM_LIVE_SHARE: f64 = 0.05;

/// Sparse packs whose entries one index scan gathers.
const COMPACT_BATCH: usize = 64;

/// A pack with enough dead chunks to be rewritten.
struct Compaction<'a> {
    pack: &'a PackRef,
    size: u64,
    live_bytes: u64,
}

impl<'a> Compaction<'a> {
    /// A compaction of `pack`, if at least [`REWRITE_DEAD_SHARE`] of it is
    /// dead. `live_bytes` counts each live entry with its header and table
    /// row; the pack's header and footer count as live too, since a rewrite
    /// has them as well (else a pack of a few small chunks, all live, looked
    /// 15% dead and was rewritten by every run).
    fn worth_it(pack: &'a PackRef, size: u64, live_bytes: u64) -> Option<Self> {
        let c = Self {
            pack,
            size,
            live_bytes: live_bytes + HEADER_LEN + FOOTER_LEN,
        };
        (c.dead_share() >= REWRITE_DEAD_SHARE).then_some(c)
    }

    fn dead_share(&self) -> f64 {
        1.0 - self.live_bytes as f64 / self.size.max(1) as f64
    }
}
