//! Partial images: images being written or left incomplete, with what of
//! them is durable. One mechanism for interrupted backups and interrupted
//! copies: a [`PartialRecord`] per image, its recipe rows in [`RECIPES`]
//! under the id the image will keep, the index entries of its chunks
//! written at each checkpoint.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tern_core::{ChunkId, ImageName};

use super::index::IndexWriter;
use super::{next_counter, Catalog, IMAGES, RECIPES};
use crate::store::pack::Location;
use crate::store::records::*;
use crate::store::{Result, StoreError};

/// (container id, image name) -> [`PartialRecord`].
pub const PARTIALS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("partials");

/// Recipe rows, (offset, chunk id, length), in image order.
pub type RecipeRows<'a> = &'a [(u64, ChunkId, u32)];

/// Inserts the index entries of durable chunks and recipe rows under `id`.
pub(super) fn write_rows(
    tx: &redb::WriteTransaction,
    id: u64,
    rows: RecipeRows<'_>,
    durable: &[(ChunkKey, Location)],
) -> Result<()> {
    let mut index = IndexWriter::open(tx)?;
    for (k, loc) in durable {
        index.insert(k, loc)?;
    }
    index.finish()?;
    let mut recipes = tx.open_table(RECIPES)?;
    for (offset, cid, len) in rows {
        recipes.insert((id, *offset), recipe_value(cid, *len).as_slice())?;
    }
    Ok(())
}

fn remove_recipe(tx: &redb::WriteTransaction, id: u64) -> Result<()> {
    let mut recipes = tx.open_table(RECIPES)?;
    recipes.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
    Ok(())
}

impl Catalog {
    /// Records a new partial image under a fresh image id. An incomplete
    /// image of that name goes (its recipe rows with it) and is returned:
    /// the client asked for a new image, not to resume the old one.
    pub fn begin_partial(
        &self,
        container_id: u64,
        name: &ImageName,
        make: impl FnOnce(u64) -> PartialRecord,
    ) -> Result<(PartialRecord, Option<PartialRecord>)> {
        let tx = self.begin_write()?;
        let (rec, replaced) = {
            if tx
                .open_table(IMAGES)?
                .get((container_id, name.as_str()))?
                .is_some()
            {
                return Err(StoreError::AlreadyExists(format!(
                    "image {name} already exists in this container"
                )));
            }
            let mut partials = tx.open_table(PARTIALS)?;
            let replaced = match partials.remove((container_id, name.as_str()))? {
                Some(v) => Some(decode::<PartialRecord>("partial image", v.value())?),
                None => None,
            };
            if let Some(old) = &replaced {
                remove_recipe(&tx, old.id)?;
            }
            let rec = make(next_counter(&tx, "next_image")?);
            partials.insert((container_id, name.as_str()), encode(&rec)?.as_slice())?;
            (rec, replaced)
        };
        tx.commit()?;
        Ok((rec, replaced))
    }

    pub fn partial(&self, container_id: u64, name: &ImageName) -> Result<Option<PartialRecord>> {
        let t = self.db.begin_read()?.open_table(PARTIALS)?;
        let found = t.get((container_id, name.as_str()))?;
        found
            .map(|v| decode("partial image", v.value()))
            .transpose()
    }

    /// The partial images of a container whose names start with `prefix`.
    pub fn partials(
        &self,
        container_id: u64,
        prefix: &str,
    ) -> Result<Vec<(ImageName, PartialRecord)>> {
        let t = self.db.begin_read()?.open_table(PARTIALS)?;
        let mut out = Vec::new();
        for row in t.range((container_id, prefix)..(container_id + 1, ""))? {
            let (k, v) = row?;
            let name = k.value().1;
            if !name.starts_with(prefix) {
                break;
            }
            let name = ImageName::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push((name, decode("partial image", v.value())?));
        }
        Ok(out)
    }

    /// Every partial image: (container id, name, record).
    pub fn all_partials(&self) -> Result<Vec<(u64, ImageName, PartialRecord)>> {
        let t = self.db.begin_read()?.open_table(PARTIALS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let (cid, name) = k.value();
            let name = ImageName::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push((cid, name, decode("partial image", v.value())?));
        }
        Ok(out)
    }

    /// A checkpoint: the index entries of chunks now durable in their packs,
    /// the recipe rows whose chunks are all stored, and the record saying how
    /// far the image is durable, in one transaction.
    pub fn checkpoint_partial(
        &self,
        container_id: u64,
        name: &ImageName,
        rec: &PartialRecord,
        rows: RecipeRows<'_>,
        durable: &[(ChunkKey, Location)],
    ) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut partials = tx.open_table(PARTIALS)?;
            let current = match partials.get((container_id, name.as_str()))? {
                Some(v) => decode::<PartialRecord>("partial image", v.value())?,
                None => return Err(gone(name)),
            };
            if current.id != rec.id {
                return Err(gone(name));
            }
            partials.insert((container_id, name.as_str()), encode(rec)?.as_slice())?;
            write_rows(&tx, rec.id, rows, durable)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops a partial image and its recipe rows (its chunks are left for
    /// GC); with `id`, only if it is still that one. Returns what went.
    pub fn drop_partial(
        &self,
        container_id: u64,
        name: &ImageName,
        id: Option<u64>,
    ) -> Result<Option<PartialRecord>> {
        let tx = self.begin_write()?;
        let dropped = {
            let mut partials = tx.open_table(PARTIALS)?;
            let key = (container_id, name.as_str());
            let rec = match partials.get(key)? {
                Some(v) => decode::<PartialRecord>("partial image", v.value())?,
                None => return Ok(None),
            };
            if id.is_some_and(|id| id != rec.id) {
                return Ok(None);
            }
            partials.remove(key)?;
            remove_recipe(&tx, rec.id)?;
            rec
        };
        tx.commit()?;
        Ok(Some(dropped))
    }
}

fn gone(name: &ImageName) -> StoreError {
    StoreError::NotFound(format!(
        "image {name} was removed while it was being written"
    ))
}
