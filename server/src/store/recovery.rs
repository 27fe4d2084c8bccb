//! Start-up recovery: finishing the packs an unclean stop left open.
//!
//! The rule: recovery may cut only a tail torn by the crash, never data that a
//! committed image references. A pack without a valid table is scanned up to
//! its first unreadable entry; if every index entry into that pack ends before
//! that point, the rest is a torn tail (chunks of images that never committed)
//! and the pack is finished there. Otherwise the pack is damaged where the
//! crash cannot explain it, and start-up stops with a message pointing at
//! `ternd fsck --repair`, which salvages past damage instead of cutting at it.
//!
//! What a crash of the process alone (`kill -9`, not a power cut) leaves in an
//! open pack after its last checkpoint is whole in the page cache: each such
//! chunk that verifies against its id is indexed again, so the writer that
//! resumes (a copy above all, whose resends cross a WAN) does not send it
//! twice. A chunk that does not verify is left to GC.

use std::collections::{HashMap, HashSet};

use tern_core::codec::Decoder;

use super::pack::{self, Location, HEADER_LEN};
use super::pack_store::PackObject;
use super::packs::PackRef;
use super::records::{chunk_key, ChunkKey};
use super::{Result, Store, StoreError};

/// A pack recovery has to look at.
enum Suspect {
    /// No valid table: scanned up to `data_end`.
    Open(pack::PackContents),
    /// Not even a whole header.
    Headless,
    /// Unreadable for another reason.
    Unreadable(std::io::Error),
}

impl Store {
    /// Continues pack numbering after the highest pack on disk.
    pub(super) fn number_packs(&self) -> Result<()> {
        let last = self.packs.packs()?.iter().map(|p| p.number).max();
        self.packs.number_after(last.unwrap_or(0));
        Ok(())
    }

    /// Finishes every pack a crash left open, within the rule above.
    pub(super) fn recover(&self) -> Result<()> {
        self.number_packs()?;
        let mut suspects: Vec<(PackRef, Suspect)> = Vec::new();
        let mut finished = Vec::new();
        for p in self.packs.packs()? {
            if self.packs.sealed(&p) {
                // Uploaded whole after it was finished: nothing to look at
                // (and no request to the bucket for it at start-up).
                finished.push(p);
                continue;
            }
            let len = self.packs.size(&p)?;
            match pack::read_contents(&*self.packs.reader(p.group, p.number)?, p.number) {
                Ok(c) if c.finished => finished.push(p),
                Ok(c) => suspects.push((p, Suspect::Open(c))),
                Err(_) if len < HEADER_LEN => suspects.push((p, Suspect::Headless)),
                Err(e) => suspects.push((p, Suspect::Unreadable(e))),
            }
        }
        let used = self.used_ends(suspects.iter().map(|(p, _)| p.number))?;
        for (p, suspect) in suspects {
            let used_end = used.get(&p.number).copied().unwrap_or(0);
            let shown = self.packs.describe(&p);
            match suspect {
                Suspect::Open(c) if c.data_end >= used_end => {
                    tracing::warn!(
                        pack = %shown,
                        entries = c.entries.len(),
                        torn_bytes = c.file_len - c.data_end,
                        "finishing a pack left open by an unclean stop"
                    );
                    let file = self.packs.open_to_change(&p)?;
                    pack::repair(&*file, &c)?;
                    self.index_unindexed(&p, &*file, &c)?;
                }
                Suspect::Headless if used_end == 0 => {
                    tracing::warn!(pack = %shown, "removing a pack a crash left without a header");
                    self.packs.remove(&p)?;
                }
                Suspect::Open(c) => {
                    return Err(needs_repair(format!(
                        "pack {shown} is unreadable from offset {} on, but committed images use \
                         it up to offset {used_end}",
                        c.data_end
                    )))
                }
                Suspect::Headless => {
                    return Err(needs_repair(format!(
                        "pack {shown} lost its header, but committed images use it"
                    )))
                }
                Suspect::Unreadable(e) => {
                    return Err(needs_repair(format!("pack {shown} is unreadable: {e}")))
                }
            }
        }
        self.index_newest_finished(&finished)
    }

    /// Every checkpoint indexes every chunk written before it, so the packs
    /// the finisher completed since the last one are the newest finished
    /// packs of their group (a group fills one pack after another) and hold
    /// chunks no index entry names. Each group's packs on disk are indexed
    /// from the newest down to the first one the index points into: a
    /// checkpoint indexed it, and every pack below was whole before that
    /// checkpoint. By group, because pack numbers are shared: another
    /// group's pack indexed at the last checkpoint can be numbered above
    /// one finished since. After a clean stop that is one table read per
    /// group. Packs in a bucket are left out: reading them would make
    /// start-up wait for the bucket.
    fn index_newest_finished(&self, finished: &[PackRef]) -> Result<()> {
        let mut by_group: HashMap<u32, Vec<PackRef>> = HashMap::new();
        for p in finished.iter().filter(|p| !self.packs.sealed(p)) {
            by_group.entry(p.group).or_default().push(*p);
        }
        for mut packs in by_group.into_values() {
            packs.sort_unstable_by_key(|p| std::cmp::Reverse(p.number));
            for p in packs {
                let file = self.packs.reader(p.group, p.number)?;
                let contents = pack::read_contents(&*file, p.number)?;
                if self.index_unindexed(&p, &*file, &contents)? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Indexes the entries of pack `p` past its last checkpoint that are
    /// intact (they verify against their ids) and that the index lacks.
    /// True if the index points into this pack for one of its entries.
    fn index_unindexed(
        &self,
        p: &PackRef,
        file: &dyn PackObject,
        contents: &pack::PackContents,
    ) -> Result<bool> {
        let index = self.catalog.index_snapshot()?;
        let mut verifier = Decoder::new();
        let mut found: Vec<(ChunkKey, Option<Location>)> = Vec::new();
        let mut seen = HashSet::new();
        let mut bytes = 0;
        let mut named = false;
        for e in &contents.entries {
            let key = chunk_key(p.group, &e.id);
            if !seen.insert(key) {
                continue;
            }
            if let Some(at) = index.pack_of(&key)? {
                named |= at == p.number;
                continue;
            }
            let intact = pack::read_stored(file, &e.loc).is_ok_and(|b| {
                verifier
                    .verify(&e.id, e.loc.codec, e.loc.raw_len, &b)
                    .is_ok()
            });
            if intact {
                bytes += u64::from(e.loc.stored_len);
                found.push((key, Some(e.loc)));
            }
        }
        drop(index);
        if !found.is_empty() {
            tracing::info!(
                pack = %self.packs.describe(p),
                chunks = found.len(),
                bytes,
                "kept the intact chunks written after the last checkpoint"
            );
            self.catalog.set_index_entries(&found)?;
        }
        Ok(named)
    }

    /// For each of `packs`, the end of the furthest bytes the index points
    /// at.
    fn used_ends(&self, packs: impl Iterator<Item = u64>) -> Result<HashMap<u64, u64>> {
        let mut used: HashMap<u64, u64> = packs.map(|n| (n, 0)).collect();
        if used.is_empty() {
            return Ok(used);
        }
        self.catalog.for_each_index_entry(|_, v| {
            if let Some(loc) = Location::decode(v) {
                if let Some(end) = used.get_mut(&loc.pack) {
                    *end = (*end).max(loc.offset + u64::from(loc.stored_len));
                }
            }
            Ok(())
        })?;
        Ok(used)
    }
}

fn needs_repair(what: String) -> StoreError {
    StoreError::NeedsRepair(format!(
        "{what}. Start-up recovery only cuts a tail torn by a crash, never data a committed \
         image references, so ternd will not start. `ternd fsck` lists the damage; \
         `ternd fsck --repair` keeps every intact chunk and drops the rest"
    ))
}
