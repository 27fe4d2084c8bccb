//! Start-up recovery: finishing the packs an unclean stop left open.
//!
//! The rule: recovery may cut only a tail torn by the crash, never data that a
//! committed image references. A pack without a valid table is scanned up to
//! its first unreadable entry; if every index entry into that pack ends before
//! that point, the rest is a torn tail (chunks of images that never committed)
//! and the pack is finished there. Otherwise the pack is damaged where the
//! crash cannot explain it, and start-up stops with a message pointing at
//! `ternd fsck --repair`, which salvages past damage instead of cutting at it.

use std::collections::HashMap;

use super::pack::{self, Location, HEADER_LEN};
use super::packs::PackRef;
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
        for p in self.packs.packs()? {
            let len = self.packs.size(&p)?;
            match pack::read_contents(&*self.packs.reader(p.group, p.number)?, p.number) {
                Ok(c) if c.finished => {}
                Ok(c) => suspects.push((p, Suspect::Open(c))),
                Err(_) if len < HEADER_LEN => suspects.push((p, Suspect::Headless)),
                Err(e) => suspects.push((p, Suspect::Unreadable(e))),
            }
        }
        if suspects.is_empty() {
            return Ok(());
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
                    pack::repair(&*self.packs.open_to_change(&p)?, &c)?;
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
        Ok(())
    }

    /// For each of `packs`, the end of the furthest bytes the index points at.
    fn used_ends(&self, packs: impl Iterator<Item = u64>) -> Result<HashMap<u64, u64>> {
        let mut used: HashMap<u64, u64> = packs.map(|n| (n, 0)).collect();
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
