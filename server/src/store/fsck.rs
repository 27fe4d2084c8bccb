//! The consistency check: every pack entry against its hash, every index
//! entry against the packs, every recipe against the index.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use tern_core::codec::Decoder;
use tern_core::names::GroupName;

use super::pack::{self, Location};
use super::records::{chunk_key, split_chunk_key, ChunkKey};
use super::{Result, Store, StoreError};

/// A cloud group's packs read whole by a sampled fsck: about one in this many.
pub const SAMPLE_ONE_IN: u8 = 16;

/// What fsck found.
#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub packs: u64,
    pub chunks_checked: u64,
    pub images_checked: u64,
    /// A cloud group's packs of which only the table was read (the object
    /// is there, and its table opens): not in this run's sample. `--full`
    /// reads them all.
    pub packs_table_only: u64,
    /// Requests made to buckets while fsck ran (by anyone).
    pub bucket_requests: u64,
    /// Objects in cloud groups' buckets that no record names (orphans of
    /// interrupted uploads; not damage: `ternd gc` deletes them once older
    /// than the grace period), and their bytes.
    pub orphan_objects: u64,
    pub orphan_bytes: u64,
    /// One line per problem found.
    pub damage: Vec<String>,
    /// What is not damage but worth knowing (a pack an unclean stop left open).
    pub notes: Vec<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

impl Store {
    /// Reads every pack entry and checks its hash, every index entry and every
    /// recipe. Changes nothing: a stopped store is checked through
    /// [`Store::open_read_only`].
    /// `only` checks one storage group (its packs, its index entries, its
    /// images' recipes) and holds off GC of that group only.
    pub fn fsck(&self, only: Option<&GroupName>) -> Result<FsckReport> {
        self.fsck_with(only, true)
    }

    /// fsck; unless `full`, a cloud group's packs are read whole only for a
    /// sample of about one in [`SAMPLE_ONE_IN`] (chosen anew each run), and
    /// only their tables otherwise: every object is asked for, at the cost of
    /// one ranged read each.
    pub fn fsck_with(&self, only: Option<&GroupName>, full: bool) -> Result<FsckReport> {
        let only = match only {
            Some(name) => Some(
                self.catalog
                    .group_id(name)?
                    .ok_or_else(|| StoreError::NotFound(format!("no storage group {name}")))?,
            ),
            None => None,
        };
        let _gates = match only {
            Some(g) => vec![self.gates.shared(g)],
            None => self.gates.all_shared(),
        };
        let scope = FsckScope(only);
        // Packs still being finished would look unfinished.
        self.packs.wait_finished()?;
        let mut report = FsckReport::default();
        let requests_before = self.packs.bucket_requests();
        let intact = self.check_packs(scope, full, &mut report)?;
        self.check_index(scope, &intact, &mut report)?;
        self.check_recipes(scope, &mut report)?;
        self.check_totals(scope, &mut report)?;
        self.count_orphans(scope, &mut report)?;
        report.bucket_requests = self.packs.bucket_requests() - requests_before;
        Ok(report)
    }

    /// Objects in cloud groups' buckets that no record names: a note each
    /// group, not damage (nothing refers to them).
    fn count_orphans(&self, scope: FsckScope, report: &mut FsckReport) -> Result<()> {
        for (name, rec) in self.catalog.groups()? {
            if rec.cloud.is_none() || !scope.has(rec.id) {
                continue;
            }
            let orphans = self.packs.orphans(rec.id)?;
            if orphans.is_empty() {
                continue;
            }
            let bytes: u64 = orphans.iter().map(|o| o.bytes).sum();
            report.orphan_objects += orphans.len() as u64;
            report.orphan_bytes += bytes;
            report.notes.push(format!(
                "storage group {name}: {} objects ({bytes} bytes) in the bucket that no record \
                 names (left by interrupted uploads); ternd gc deletes those older than the \
                 grace period",
                orphans.len()
            ));
        }
        Ok(())
    }

    /// The totals `tern stats` reads must be what the index holds.
    fn check_totals(&self, scope: FsckScope, report: &mut FsckReport) -> Result<()> {
        let kept = self.catalog.group_totals()?;
        let counted = self.catalog.counted_totals()?;
        let mut groups: Vec<u32> = kept.keys().chain(counted.keys()).copied().collect();
        groups.sort_unstable();
        groups.dedup();
        for g in groups.into_iter().filter(|g| scope.has(*g)) {
            let (k, c) = (
                kept.get(&g).copied().unwrap_or_default(),
                counted.get(&g).copied().unwrap_or_default(),
            );
            if k != c {
                report.damage.push(format!(
                    "index totals of storage group {g}: kept {} chunks / {} bytes / {} stored, \
                     but the index holds {} / {} / {}",
                    k.chunks, k.raw_bytes, k.stored_bytes, c.chunks, c.raw_bytes, c.stored_bytes
                ));
            }
        }
        Ok(())
    }

    /// Verifies every entry of every pack; returns where intact copies are.
    fn check_packs(
        &self,
        scope: FsckScope,
        full: bool,
        report: &mut FsckReport,
    ) -> Result<HashMap<ChunkKey, Vec<Location>>> {
        let salt: [u8; 8] = super::cloud::sealed::random().map_err(std::io::Error::other)?;
        let sampled = |number: u64| {
            let mut h = blake3::Hasher::new();
            h.update(&salt);
            h.update(&number.to_le_bytes());
            h.finalize().as_bytes()[0].is_multiple_of(SAMPLE_ONE_IN)
        };
        let mut verifier = Decoder::new();
        let mut intact: HashMap<ChunkKey, Vec<Location>> = HashMap::new();
        let writing: HashSet<u64> = self.packs.appender().open_packs().collect();
        for p in self
            .packs
            .packs()?
            .into_iter()
            .filter(|p| scope.has(p.group))
        {
            report.packs += 1;
            let shown = self.packs.describe(&p);
            let file = self.packs.reader(p.group, p.number)?;
            let contents = match pack::read_contents(&*file, p.number) {
                Ok(c) => c,
                // A crash between creating a pack and writing its header
                // leaves it like this, and the next start removes it (or
                // stops, if the index uses it: the index check says so).
                Err(_)
                    if (self.read_only.is_some() || writing.contains(&p.number))
                        && file.size().is_ok_and(|len| len < pack::HEADER_LEN) =>
                {
                    report.notes.push(format!(
                        "pack {shown}: created but without a whole header yet (an unclean \
                         stop or a pack being started); the next start removes it if nothing \
                         uses it"
                    ));
                    continue;
                }
                Err(e) => {
                    report.damage.push(format!("pack {shown}: unreadable: {e}"));
                    continue;
                }
            };
            if !contents.finished && !writing.contains(&p.number) {
                if self.read_only.is_some() {
                    // A stopped store: a crash leaves the pack it was writing
                    // like this, and the next start finishes it (if it may:
                    // damage before committed data shows up in the index check).
                    report.notes.push(format!(
                        "pack {shown}: left open by an unclean stop ({} entries readable, \
                         {} bytes after them); the next start finishes it",
                        contents.entries.len(),
                        contents.file_len - contents.data_end
                    ));
                } else {
                    report
                        .damage
                        .push(format!("pack {shown}: has no valid table"));
                }
            }
            if !full && self.packs.sealed(&p) && !sampled(p.number) {
                // The object is there and its table authenticates: its
                // entries count as present, unread.
                report.packs_table_only += 1;
                for e in contents.entries {
                    intact
                        .entry(chunk_key(p.group, &e.id))
                        .or_default()
                        .push(e.loc);
                }
                continue;
            }
            for e in contents.entries {
                report.chunks_checked += 1;
                let ok = pack::read_stored(&*file, &e.loc)
                    .map_err(|err| err.to_string())
                    .and_then(|b| {
                        verifier
                            .verify(&e.id, e.loc.codec, e.loc.raw_len, &b)
                            .map_err(|err| err.to_string())
                    });
                match ok {
                    Ok(()) => intact
                        .entry(chunk_key(p.group, &e.id))
                        .or_default()
                        .push(e.loc),
                    Err(why) => report.damage.push(format!(
                        "pack {shown}: chunk {} at offset {}: {why}",
                        e.id, e.loc.offset
                    )),
                }
            }
        }
        Ok(intact)
    }

    /// Every index entry must point at an intact pack entry.
    fn check_index(
        &self,
        scope: FsckScope,
        intact: &HashMap<ChunkKey, Vec<Location>>,
        report: &mut FsckReport,
    ) -> Result<()> {
        self.catalog.for_each_index_entry(|k, v| {
            let Some((group, id)) = split_chunk_key(k) else {
                report.damage.push("index: key of the wrong size".into());
                return Ok(());
            };
            if !scope.has(group) {
                return Ok(());
            }
            let Some(loc) = Location::decode(v) else {
                report
                    .damage
                    .push(format!("index: chunk {id} has an undecodable location"));
                return Ok(());
            };
            if !intact.get(k).is_some_and(|locs| locs.contains(&loc)) {
                report.damage.push(format!(
                    "index: chunk {id} points to no intact pack entry (pack {} offset {})",
                    loc.pack, loc.offset
                ));
            }
            Ok(())
        })
    }

    /// Every recipe must be gapless and name chunks the index has.
    fn check_recipes(&self, scope: FsckScope, report: &mut FsckReport) -> Result<()> {
        let mut image_groups = self.catalog.image_groups()?;
        image_groups.retain(|_, g| scope.has(*g));
        let names = self.catalog.image_names()?;
        let index = self.catalog.index_snapshot()?;
        let mut damaged_images = HashSet::new();
        let mut expected_offset: HashMap<u64, u64> = HashMap::new();
        self.catalog.for_each_recipe_row(|image, offset, id, len| {
            if scope.0.is_some() && !image_groups.contains_key(&image) {
                return Ok(());
            }
            let name = names
                .get(&image)
                .cloned()
                .unwrap_or_else(|| format!("#{image}"));
            let next = expected_offset.entry(image).or_insert(0);
            if *next != offset {
                report
                    .damage
                    .push(format!("image {name}: recipe has a gap at offset {next}"));
            }
            *next = offset + u64::from(len);
            let Some(group) = image_groups.get(&image) else {
                report
                    .damage
                    .push(format!("recipe rows for unknown image {image}"));
                return Ok(());
            };
            let problem = match index.raw_len(&chunk_key(*group, &id))? {
                None => Some("is missing from the store".to_string()),
                Some(stored) if stored != len => Some(format!(
                    "is {stored} bytes long, but the recipe counts {len} for it"
                )),
                Some(_) => None,
            };
            if let Some(what) = problem {
                if damaged_images.insert(image) {
                    report.damage.push(format!(
                        "image {name}: chunk {id} at offset {offset} {what}"
                    ));
                }
            }
            Ok(())
        })?;
        // A recipe must reach its image's recorded size: a lost last row leaves no gap.
        for (image, size) in self.catalog.image_sizes()? {
            if scope.0.is_some() && !image_groups.contains_key(&image) {
                continue;
            }
            let end = expected_offset.get(&image).copied().unwrap_or(0);
            if end != size && !damaged_images.contains(&image) {
                let name = names.get(&image).cloned().unwrap_or_default();
                report.damage.push(format!(
                    "image {name}: recipe ends at offset {end}, but the image holds {size} bytes"
                ));
            }
        }
        report.images_checked = image_groups.len() as u64;
        Ok(())
    }
}

/// The storage group an fsck checks, or all of them.
#[derive(Clone, Copy)]
struct FsckScope(Option<u32>);

impl FsckScope {
    fn has(self, group: u32) -> bool {
        self.0.is_none_or(|g| g == group)
    }
}
