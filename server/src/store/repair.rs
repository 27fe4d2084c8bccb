//! `ternd fsck --repair`: keep every intact chunk, drop what is damaged.
//!
//! 1. Every pack whose table is missing, damaged or lists a damaged entry is
//!    salvaged: scanned whole, past damage, keeping each entry whose bytes
//!    match its id; the pack is rewritten to list exactly those (a pack with
//!    none left is deleted).
//! 2. Every index entry is checked against the intact entries: kept, pointed
//!    at another intact copy of the same chunk, or removed (the chunk is lost).
//!    A chunk a recipe needs that is missing from the index but intact in a
//!    pack goes back into the index.
//!
//! Images are never deleted: one that lost a chunk reads up to it, and the
//! next backup holding that chunk stores it again (the index no longer has it,
//! so the client is asked for it), which heals every image that refers to it.
//! Every change is logged and returned, in the order it was made.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use tern_core::codec::Decoder;

use super::pack::{self, Location, PackEntry};
use super::records::{chunk_key, split_chunk_key, ChunkKey};
use super::{Result, Store, StoreError};

/// What a repair changed.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    /// One line per change, in the order they were made.
    pub changes: Vec<String>,
    pub packs_rewritten: u64,
    pub packs_deleted: u64,
    pub entries_dropped: u64,
    pub index_repointed: u64,
    pub index_restored: u64,
    /// Chunks with no intact copy left: removed from the index.
    pub chunks_lost: u64,
}

impl RepairReport {
    fn change(&mut self, line: String) {
        tracing::warn!("fsck --repair: {line}");
        self.changes.push(line);
    }
}

impl Store {
    /// Salvages every pack and repairs the index (see the module comment).
    /// Only on a store opened with [`Store::open_for_repair`].
    pub fn repair(&self) -> Result<RepairReport> {
        if let Some(why) = self.read_only {
            return Err(StoreError::ReadOnly(why));
        }
        let _gates = self.gates.all_exclusive();
        let mut report = RepairReport::default();
        let intact = self.salvage_packs(&mut report)?;
        self.repair_index(&intact, &mut report)?;
        // Index changes keep the totals in step; a count makes sure of it
        // (damage may have been in the totals themselves).
        self.catalog.recount_totals()?;
        self.number_packs()?;
        Ok(report)
    }

    /// Makes every pack list exactly its intact entries; returns where they are.
    fn salvage_packs(&self, report: &mut RepairReport) -> Result<HashMap<ChunkKey, Vec<Location>>> {
        let mut verifier = Decoder::new();
        let mut intact: HashMap<ChunkKey, Vec<Location>> = HashMap::new();
        for p in self.packs.packs()? {
            let shown = self.packs.describe(&p);
            let file = self.packs.open_to_change(&p)?;
            let mut verify = |e: &PackEntry, bytes: &[u8]| {
                verifier
                    .verify(&e.id, e.loc.codec, e.loc.raw_len, bytes)
                    .is_ok()
            };
            let listed = pack::read_contents(&*file, p.number).ok();
            let sound = match &listed {
                Some(c) if c.finished => {
                    let mut all_good = true;
                    for e in &c.entries {
                        let good = pack::read_stored(&*file, &e.loc)
                            .map(|b| verify(e, &b))
                            .unwrap_or(false);
                        all_good &= good;
                    }
                    all_good.then(|| c.entries.clone())
                }
                _ => None,
            };
            let entries = match sound {
                Some(entries) => entries,
                None => {
                    let found = pack::salvage(&*file, p.number, &mut verify)?;
                    let before = listed.map(|c| c.entries.len() as u64);
                    if found.is_empty() {
                        report.change(format!("pack {shown}: no intact entry; deleted the pack"));
                        self.packs.remove(&p)?;
                        report.packs_deleted += 1;
                    } else {
                        let dropped = before.map_or(0, |b| b.saturating_sub(found.len() as u64));
                        report.entries_dropped += dropped;
                        report.change(format!(
                            "pack {shown}: rewrote its table to list the {} intact entries{}",
                            found.len(),
                            before.map_or_else(
                                || " found by scanning (it had no readable table)".to_string(),
                                |b| format!(" of the {b} it listed"),
                            )
                        ));
                        pack::rewrite_table(&*file, &found)?;
                        report.packs_rewritten += 1;
                    }
                    found
                }
            };
            for e in entries {
                intact
                    .entry(chunk_key(p.group, &e.id))
                    .or_default()
                    .push(e.loc);
            }
        }
        Ok(intact)
    }

    /// Points every index entry at an intact copy, or removes it; restores
    /// entries that recipes need and packs still hold.
    fn repair_index(
        &self,
        intact: &HashMap<ChunkKey, Vec<Location>>,
        report: &mut RepairReport,
    ) -> Result<()> {
        let mut changes: Vec<(ChunkKey, Option<Location>)> = Vec::new();
        let mut indexed: HashSet<ChunkKey> = HashSet::new();
        self.catalog.for_each_index_entry(|k, v| {
            let Ok(key) = ChunkKey::try_from(k) else {
                return Err(StoreError::Corrupt("index key of the wrong size".into()));
            };
            indexed.insert(key);
            let copies = intact.get(&key).map(Vec::as_slice).unwrap_or_default();
            let here = Location::decode(v);
            if here.is_some_and(|loc| copies.contains(&loc)) {
                return Ok(());
            }
            let id = split_chunk_key(&key).map(|(_, id)| id.to_string());
            let id = id.unwrap_or_default();
            match copies.first() {
                Some(loc) => {
                    report.change(format!(
                        "index: chunk {id} now points at its intact copy in pack {} offset {}",
                        loc.pack, loc.offset
                    ));
                    report.index_repointed += 1;
                    changes.push((key, Some(*loc)));
                }
                None => {
                    report.change(format!(
                        "index: chunk {id} has no intact copy; removed it (images that use \
                         it read up to it, until a backup stores it again)"
                    ));
                    report.chunks_lost += 1;
                    changes.push((key, None));
                }
            }
            Ok(())
        })?;
        let image_groups = self.catalog.image_groups()?;
        let mut restored = HashSet::new();
        self.catalog.for_each_recipe_row(|image, _, id, _| {
            let Some(group) = image_groups.get(&image) else {
                return Ok(());
            };
            let key = chunk_key(*group, &id);
            if indexed.contains(&key) || restored.contains(&key) {
                return Ok(());
            }
            if let Some(loc) = intact.get(&key).and_then(|c| c.first()) {
                report.change(format!(
                    "index: chunk {id} was missing; restored it from pack {} offset {}",
                    loc.pack, loc.offset
                ));
                report.index_restored += 1;
                restored.insert(key);
                changes.push((key, Some(*loc)));
            }
            Ok(())
        })?;
        if !changes.is_empty() {
            self.catalog.set_index_entries(&changes)?;
        }
        Ok(())
    }
}
