//! Whole-table passes for GC and fsck: every image's group, size and name,
//! every recipe row, every index entry; the index sweep and relocation.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable};

use super::super::pack::Location;
use super::super::records::*;
use super::super::{Result, StoreError};
use super::*;

impl Catalog {
    /// image id -> storage group id, for every committed image.
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
        Ok(out)
    }

    /// image id -> its recorded size, for every committed image.
    pub fn image_sizes(&self) -> Result<Vec<(u64, u64)>> {
        let t = self.db.begin_read()?.open_table(IMAGES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            let rec: ImageRecord = decode("image", v.value())?;
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

    /// Removes every index entry `live` rejects, in one transaction; returns
    /// the entries kept, with their locations.
    pub fn sweep_index(
        &self,
        live: impl Fn(&ChunkKey) -> bool,
    ) -> Result<(u64, Vec<(ChunkKey, Location)>)> {
        let tx = self.begin_write()?;
        let mut kept = Vec::new();
        let removed = {
            let mut chunks = tx.open_table(CHUNKS)?;
            let mut dead = Vec::new();
            for row in chunks.iter()? {
                let (k, v) = row?;
                let key: ChunkKey = k
                    .value()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("index key of the wrong size".into()))?;
                if live(&key) {
                    let loc = Location::decode(v.value())
                        .ok_or_else(|| StoreError::Corrupt("undecodable index entry".into()))?;
                    kept.push((key, loc));
                } else {
                    dead.push(key);
                }
            }
            for key in &dead {
                chunks.remove(key.as_slice())?;
            }
            dead.len() as u64
        };
        tx.commit()?;
        Ok((removed, kept))
    }

    /// Points index entries at new locations (after their chunks moved).
    pub fn relocate(&self, moved: &[(ChunkKey, Location)]) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut chunks = tx.open_table(CHUNKS)?;
            for (key, loc) in moved {
                chunks.insert(key.as_slice(), loc.encode().as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) index entries, in one transaction.
    pub fn set_index_entries(&self, changes: &[(ChunkKey, Option<Location>)]) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut chunks = tx.open_table(CHUNKS)?;
            for (key, loc) in changes {
                match loc {
                    Some(loc) => chunks.insert(key.as_slice(), loc.encode().as_slice())?,
                    None => chunks.remove(key.as_slice())?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }
}
