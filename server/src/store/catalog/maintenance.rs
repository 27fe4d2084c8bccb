//! Whole-table passes for GC and fsck: every image's group, size and name,
//! every recipe row, every index entry; the index sweep and relocation.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable};

use super::super::pack::Location;
use super::super::records::*;
use super::super::{Result, StoreError};
use super::index::IndexWriter;
use super::*;

impl Catalog {
    /// image id -> storage group id, for every committed and partial image
    /// (both have recipe rows).
    pub fn image_groups(&self) -> Result<HashMap<u64, u32>> {
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
        for row in tx.open_table(super::PARTIALS)?.iter()? {
            let (k, v) = row?;
            let rec: PartialRecord = decode("partial image", v.value())?;
            let container = k.value().0;
            let g = container_group.get(&container).ok_or_else(|| {
                StoreError::Corrupt(format!("partial image {} has no container", rec.id))
            })?;
            out.insert(rec.id, *g);
        }
        Ok(out)
    }

    /// image id -> its recorded size, for every committed and partial image.
    pub fn image_sizes(&self) -> Result<Vec<(u64, u64)>> {
        let t = self.db.begin_read()?.open_table(IMAGES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            let rec: ImageRecord = decode("image", v.value())?;
            // A held image's rows are gone, or on their way back (a recall).
            if rec.held.is_none() {
                out.push((rec.id, rec.size));
            }
        }
        let partials = self.db.begin_read()?.open_table(super::PARTIALS)?;
        for row in partials.iter()? {
            let (_, v) = row?;
            let rec: PartialRecord = decode("partial image", v.value())?;
            out.push((rec.id, rec.size));
        }
        Ok(out)
    }

    /// image id -> "container/image" ("group/container/image" outside the
    /// default group), for reports.
    pub fn image_names(&self) -> Result<HashMap<u64, String>> {
        let tx = self.db.begin_read()?;
        let mut containers = HashMap::new();
        for row in tx.open_table(CONTAINERS)?.iter()? {
            let (k, v) = row?;
            let c: ContainerRecord = decode("container", v.value())?;
            let (group, name) = k.value();
            let shown = if group == crate::store::DEFAULT_GROUP {
                name.to_string()
            } else {
                format!("{group}/{name}")
            };
            containers.insert(c.id, shown);
        }
        let mut out = HashMap::new();
        for row in tx.open_table(IMAGES)?.iter()? {
            let (k, v) = row?;
            let (cid, name) = k.value();
            let rec: ImageRecord = decode("image", v.value())?;
            let c = containers.get(&cid).cloned().unwrap_or_default();
            out.insert(rec.id, format!("{c}/{name}"));
        }
        for row in tx.open_table(super::PARTIALS)?.iter()? {
            let (k, v) = row?;
            let (cid, name) = k.value();
            let rec: PartialRecord = decode("partial image", v.value())?;
            let c = containers.get(&cid).cloned().unwrap_or_default();
            out.insert(rec.id, format!("{c}/{name} (incomplete)"));
        }
        Ok(out)
    }

    /// Calls `each(image id, offset, chunk id, length)` for every recipe row, in key order.
    pub fn for_each_recipe_row(
        &self,
        mut each: impl FnMut(u64, u64, ChunkId, u32) -> Result<()>,
    ) -> Result<()> {
        let t = self.db.begin_read()?.open_table(RECIPES)?;
        for row in t.iter()? {
            let (k, v) = row?;
            let (image, offset) = k.value();
            let (id, len) = split_recipe_value(v.value())?;
            each(image, offset, id, len)?;
        }
        Ok(())
    }

    /// Calls `each(key bytes, encoded location)` for every index entry, in key order.
    pub fn for_each_index_entry(
        &self,
        mut each: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let t = self.db.begin_read()?.open_table(CHUNKS)?;
        for row in t.iter()? {
            let (k, v) = row?;
            each(k.value(), v.value())?;
        }
        Ok(())
    }

    /// Removes every index entry `live` rejects; `kept` sees each entry that
    /// stays. Returns how many went. One transaction per 1/256 of each
    /// group's key space: a transaction's changed pages stay in memory until
    /// it commits, and one over an index of millions would hold most of it.
    /// (GC holds writers off meanwhile; a crash between transactions leaves
    /// dead entries for the next run.)
    pub fn sweep_index(
        &self,
        group: u32,
        live: impl Fn(&ChunkKey) -> bool,
        mut kept: impl FnMut(&ChunkKey, &Location),
    ) -> Result<u64> {
        let mut removed = 0;
        {
            for b in 0..=255u8 {
                let mut lo = group.to_be_bytes().to_vec();
                lo.push(b);
                let hi = match b.checked_add(1) {
                    Some(next) => [group.to_be_bytes().as_slice(), &[next]].concat(),
                    None => match group.checked_add(1) {
                        Some(g) => g.to_be_bytes().to_vec(),
                        None => vec![0xff; 37],
                    },
                };
                let tx = self.begin_write()?;
                {
                    let mut index = IndexWriter::open(&tx)?;
                    removed += index.retain_in(lo.as_slice()..hi.as_slice(), |key, loc| {
                        let keep = live(key);
                        if keep {
                            kept(key, loc);
                        }
                        keep
                    })?;
                    index.finish()?;
                }
                tx.commit()?;
            }
        }
        Ok(removed)
    }

    /// The index entries that point into `packs`.
    pub fn entries_in_packs(
        &self,
        packs: &std::collections::HashSet<u64>,
    ) -> Result<Vec<(ChunkKey, Location)>> {
        let mut out = Vec::new();
        self.for_each_index_entry(|k, v| {
            let loc = Location::decode(v)
                .ok_or_else(|| StoreError::Corrupt("undecodable index entry".into()))?;
            if packs.contains(&loc.pack) {
                let key: ChunkKey = k
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("index key of the wrong size".into()))?;
                out.push((key, loc));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Points index entries at new locations (after their chunks moved).
    pub fn relocate(&self, moved: &[(ChunkKey, Location)]) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut index = IndexWriter::open(&tx)?;
            for (key, loc) in moved {
                index.insert(key, loc)?;
            }
            index.finish()?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) index entries, in one transaction.
    pub fn set_index_entries(&self, changes: &[(ChunkKey, Option<Location>)]) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut index = IndexWriter::open(&tx)?;
            for (key, loc) in changes {
                match loc {
                    Some(loc) => index.insert(key, loc)?,
                    None => index.remove(key)?,
                };
            }
            index.finish()?;
        }
        tx.commit()?;
        Ok(())
    }
}
