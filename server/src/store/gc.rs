//! Garbage collection (mark and sweep from the recipes, then pack compaction)
//! and the consistency check.

use std::collections::{HashMap, HashSet};
use std::fs::File;

use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;
use tern_core::codec::Decoder;
use tern_core::ChunkId;

use super::catalog::*;
use super::pack::{self, Location};
use super::{lock, Result, Store, StoreError};

/// A pack is rewritten when at least this share of it is dead: reclaiming space
/// soon after deletes matters more to a backup target than the rewrite I/O.
const REWRITE_DEAD_SHARE: f64 = 0.05;

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub live_chunks: u64,
    pub chunks_removed: u64,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub packs: u64,
    pub chunks_checked: u64,
    pub images_checked: u64,
    /// One line per problem found.
    pub damage: Vec<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

impl Store {
    /// Removes unreferenced chunks and compacts packs. Writers pause while it runs.
    pub fn gc(&self) -> Result<GcReport> {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.finisher.wait_idle().map_err(StoreError::Io)?;
        let mut report = GcReport::default();
        let packs = self.pack_files()?;
        report.bytes_before = packs
            .iter()
            .map(|(_, _, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();

        // Mark: committed recipes, images being written, chunks not yet committed.
        let mut live: HashSet<[u8; 36]> = HashSet::new();
        let image_groups = self.image_groups()?;
        {
            let tx = self.db.begin_read()?;
            for row in tx.open_table(RECIPES)?.iter()? {
                let (k, v) = row?;
                let (id, _) = split_recipe_value(v.value())?;
                let image = k.value().0;
                let group = image_groups.get(&image).ok_or_else(|| {
                    StoreError::Corrupt(format!("recipe rows for unknown image {image}"))
                })?;
                live.insert(chunk_key(*group, &id));
            }
        }
        for img in lock(&self.open).values() {
            for (_, id, _) in &img.recipe {
                live.insert(chunk_key(img.group, id));
            }
        }
        let pending: HashMap<[u8; 36], Location> = lock(&self.pending).clone();
        let busy_packs: HashSet<u64> = pending
            .values()
            .map(|l| l.pack)
            .chain(lock(&self.writers).values().map(|w| w.number))
            .collect();

        // Sweep the index.
        let tx = self.db.begin_write()?;
        let mut live_by_pack: HashMap<u64, Vec<([u8; 36], Location)>> = HashMap::new();
        {
            let mut chunks = tx.open_table(CHUNKS)?;
            let mut dead = Vec::new();
            for row in chunks.iter()? {
                let (k, v) = row?;
                let key: [u8; 36] = k
                    .value()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("index key of the wrong size".into()))?;
                if live.contains(&key) {
                    let loc = Location::decode(v.value())
                        .ok_or_else(|| StoreError::Corrupt("undecodable index entry".into()))?;
                    live_by_pack.entry(loc.pack).or_default().push((key, loc));
                } else {
                    dead.push(key);
                }
            }
            for key in &dead {
                chunks.remove(key.as_slice())?;
            }
            report.chunks_removed = dead.len() as u64;
            report.live_chunks = live_by_pack.values().map(|v| v.len() as u64).sum();
        }
        tx.commit()?;

        // Compact: rewrite sparse packs, delete empty ones.
        let mut to_delete = Vec::new();
        for (group, number, path) in &packs {
            if busy_packs.contains(number) {
                continue;
            }
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let entries = live_by_pack.remove(number).unwrap_or_default();
            let live_bytes: u64 = entries.iter().map(|(_, l)| l.stored_len as u64 + 44).sum();
            if entries.is_empty() {
                to_delete.push(path.clone());
                continue;
            }
            if (live_bytes as f64) > (1.0 - REWRITE_DEAD_SHARE) * size as f64 {
                continue;
            }
            let src = File::open(path)?;
            let mut moved = Vec::with_capacity(entries.len());
            for (key, loc) in entries {
                let bytes = pack::read_stored(&src, &loc)?;
                let id = ChunkId(key[4..].try_into().expect("36-byte key"));
                let new_loc = self.append_to_group(*group, &id, &loc, &bytes)?;
                moved.push((key, new_loc));
            }
            for w in lock(&self.writers).values_mut() {
                w.sync()?;
            }
            let tx = self.db.begin_write()?;
            {
                let mut chunks = tx.open_table(CHUNKS)?;
                for (key, loc) in &moved {
                    chunks.insert(key.as_slice(), loc.encode().as_slice())?;
                }
            }
            tx.commit()?;
            report.packs_rewritten += 1;
            to_delete.push(path.clone());
        }
        for path in to_delete {
            if let Some(n) = pack::pack_number(&path) {
                lock(&self.read_files).remove(&n);
            }
            std::fs::remove_file(&path)?;
            report.packs_deleted += 1;
        }
        report.packs_deleted -= report.packs_rewritten;
        report.bytes_after = self
            .pack_files()?
            .iter()
            .map(|(_, _, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        Ok(report)
    }

    fn append_to_group(
        &self,
        group: u32,
        id: &ChunkId,
        old: &Location,
        bytes: &[u8],
    ) -> Result<Location> {
        let mut writers = lock(&self.writers);
        let writer = self.group_writer(&mut writers, group)?;
        Ok(writer.append(id, old.codec, old.raw_len, bytes)?)
    }

    /// image id -> storage group id, for every committed image.
    fn image_groups(&self) -> Result<HashMap<u64, u32>> {
        let tx = self.db.begin_read()?;
        let groups = tx.open_table(GROUPS)?;
        let mut container_group = HashMap::new();
        for row in tx.open_table(CONTAINERS)?.iter()? {
            let (_, v) = row?;
            let c: ContainerRecord = decode("container", v.value())?;
            let g = groups.get(c.group.as_str())?.ok_or_else(|| {
                StoreError::Corrupt(format!("storage group {} is missing", c.group))
            })?;
            container_group.insert(c.id, decode::<GroupRecord>("group", g.value())?.id);
        }
        let mut out = HashMap::new();
        for row in tx.open_table(IMAGES)?.iter()? {
            let (k, v) = row?;
            let rec: ImageRecord = decode("image", v.value())?;
            let container = k.value().0;
            let g = container_group
                .get(&container)
                .ok_or_else(|| StoreError::Corrupt(format!("image {} has no container", rec.id)))?;
            out.insert(rec.id, *g);
        }
        Ok(out)
    }

    /// Reads every pack entry and checks its hash, every index entry and every recipe.
    pub fn fsck(&self) -> Result<FsckReport> {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        // Packs still being finished would look unfinished.
        self.finisher.wait_idle().map_err(StoreError::Io)?;
        let mut report = FsckReport::default();
        let mut verifier = Decoder::new();
        // (group, id) -> location of an intact copy in a pack.
        let mut intact: HashMap<[u8; 36], Vec<Location>> = HashMap::new();
        let writing: HashSet<u64> = lock(&self.writers).values().map(|w| w.number).collect();
        for (group, number, path) in self.pack_files()? {
            report.packs += 1;
            let contents = match pack::read_contents(&path, number) {
                Ok(c) => c,
                Err(e) => {
                    report
                        .damage
                        .push(format!("pack {}: unreadable: {e}", path.display()));
                    continue;
                }
            };
            if !contents.finished && !writing.contains(&number) {
                report
                    .damage
                    .push(format!("pack {}: has no valid table", path.display()));
            }
            let file = File::open(&path)?;
            for e in contents.entries {
                report.chunks_checked += 1;
                let ok = pack::read_stored(&file, &e.loc)
                    .map_err(|err| err.to_string())
                    .and_then(|b| {
                        verifier
                            .verify(&e.id, e.loc.codec, e.loc.raw_len, &b)
                            .map_err(|err| err.to_string())
                    });
                match ok {
                    Ok(()) => intact
                        .entry(chunk_key(group, &e.id))
                        .or_default()
                        .push(e.loc),
                    Err(why) => report.damage.push(format!(
                        "pack {}: chunk {} at offset {}: {why}",
                        path.display(),
                        e.id,
                        e.loc.offset
                    )),
                }
            }
        }
        let tx = self.db.begin_read()?;
        let chunks = tx.open_table(CHUNKS)?;
        for row in chunks.iter()? {
            let (k, v) = row?;
            let Some((_, id)) = split_chunk_key(k.value()) else {
                report.damage.push("index: key of the wrong size".into());
                continue;
            };
            let good = Location::decode(v.value()).is_some_and(|loc| {
                intact
                    .get(k.value())
                    .is_some_and(|locs| locs.contains(&loc))
            });
            if !good {
                report
                    .damage
                    .push(format!("index: chunk {id} points to no intact pack entry"));
            }
        }
        let image_groups = self.image_groups()?;
        let names = self.image_names()?;
        let recipes = tx.open_table(RECIPES)?;
        let mut damaged_images = HashSet::new();
        let mut expected_offset: HashMap<u64, u64> = HashMap::new();
        for row in recipes.iter()? {
            let (k, v) = row?;
            let (image, offset) = k.value();
            let (id, len) = split_recipe_value(v.value())?;
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
            *next = offset + len as u64;
            let Some(group) = image_groups.get(&image) else {
                report
                    .damage
                    .push(format!("recipe rows for unknown image {image}"));
                continue;
            };
            if chunks.get(chunk_key(*group, &id).as_slice())?.is_none()
                && damaged_images.insert(image)
            {
                report.damage.push(format!(
                    "image {name}: chunk {id} at offset {offset} is missing from the store"
                ));
            }
        }
        report.images_checked = image_groups.len() as u64;
        Ok(report)
    }

    /// image id -> "container/image", for reports.
    fn image_names(&self) -> Result<HashMap<u64, String>> {
        let tx = self.db.begin_read()?;
        let mut containers = HashMap::new();
        for row in tx.open_table(CONTAINERS)?.iter()? {
            let (k, v) = row?;
            let c: ContainerRecord = decode("container", v.value())?;
            containers.insert(c.id, k.value().to_string());
        }
        let mut out = HashMap::new();
        for row in tx.open_table(IMAGES)?.iter()? {
            let (k, v) = row?;
            let (cid, name) = k.value();
            let rec: ImageRecord = decode("image", v.value())?;
            let c = containers.get(&cid).cloned().unwrap_or_default();
            out.insert(rec.id, format!("{c}/{name}"));
        }
        Ok(out)
    }
}
