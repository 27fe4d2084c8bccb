//! Images and their recipes in the catalog: an image's commit (with its
//! chunks' index entries and, for a replica, its trail entry and import
//! event), lookups, property changes, deletion; recipe reads.

use redb::{ReadableDatabase, ReadableTable};
use tern_core::wire::{RecipeEntry, ReplicaOrigin, TrailEntry};
use tern_core::{ContainerName, ImageName};

use super::partials::{write_rows, RecipeRows, PARTIALS};
use super::{replication, Catalog, CHUNKS, IMAGES, RECIPES};
use crate::store::pack::Location;
use crate::store::records::*;
use crate::store::{Result, StoreError};

/// An image about to be committed: its record fields and the rest of its
/// recipe (the rows its checkpoints did not write yet).
pub struct NewImage<'a> {
    /// The id its partial record reserved.
    pub id: u64,
    pub container_id: u64,
    pub container: &'a ContainerName,
    pub name: &'a ImageName,
    pub size: u64,
    pub props: &'a [u8],
    pub created: u64,
    /// Chunks in the whole recipe.
    pub chunks: u64,
    /// The recipe rows not yet written, in image order.
    pub recipe: RecipeRows<'a>,
    /// A replica's origin, and its trail entry (target side).
    pub replica: Option<(&'a ReplicaOrigin, &'a TrailEntry)>,
    /// The container raises import events.
    pub import: bool,
}

/// Image `name` of container `container_id` in an open images table.
pub(super) fn image_in(
    images: &impl ReadableTable<(u64, &'static str), &'static [u8]>,
    container_id: u64,
    name: &str,
) -> Result<Option<ImageRecord>> {
    let found = images.get((container_id, name))?;
    found.map(|v| decode("image", v.value())).transpose()
}

impl Catalog {
    // ---- images --------------------------------------------------------------

    pub fn image(&self, container_id: u64, name: &ImageName) -> Result<Option<ImageRecord>> {
        let t = self.db.begin_read()?.open_table(IMAGES)?;
        image_in(&t, container_id, name.as_str())
    }

    /// The images of a container whose names start with `prefix`, by name.
    pub fn images(&self, container_id: u64, prefix: &str) -> Result<Vec<(ImageName, ImageRecord)>> {
        let t = self.db.begin_read()?.open_table(IMAGES)?;
        let mut out = Vec::new();
        for row in t.range((container_id, prefix)..(container_id + 1, ""))? {
            let (k, v) = row?;
            let name = k.value().1;
            if !name.starts_with(prefix) {
                break;
            }
            let name = ImageName::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push((name, decode("image", v.value())?));
        }
        Ok(out)
    }

    /// Replaces an image's properties; false if there is no such image.
    /// `allowed` sees the record first and may refuse the change.
    pub fn set_image_props(
        &self,
        container_id: u64,
        name: &ImageName,
        props: Vec<u8>,
        now: u64,
        allowed: impl FnOnce(&ImageRecord) -> Result<()>,
    ) -> Result<bool> {
        let tx = self.begin_write()?;
        {
            let mut images = tx.open_table(IMAGES)?;
            let key = (container_id, name.as_str());
            let Some(mut rec) = image_in(&images, container_id, name.as_str())? else {
                return Ok(false);
            };
            allowed(&rec)?;
            rec.props = props;
            rec.changed = now;
            images.insert(key, encode(&rec)?.as_slice())?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Removes an image and its recipe; false if there was none. `allowed`
    /// sees the record first and may refuse (nothing changes then).
    pub fn remove_image(
        &self,
        container_id: u64,
        name: &ImageName,
        allowed: impl FnOnce(&ImageRecord) -> Result<()>,
    ) -> Result<bool> {
        let tx = self.begin_write()?;
        {
            let mut images = tx.open_table(IMAGES)?;
            let rec: ImageRecord = match images.remove((container_id, name.as_str()))? {
                Some(v) => decode("image", v.value())?,
                None => return Ok(false),
            };
            allowed(&rec)?;
            super::held::on_remove(&tx, &rec)?;
            let mut recipes = tx.open_table(RECIPES)?;
            recipes.retain_in((rec.id, 0)..=(rec.id, u64::MAX), |_, _| false)?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// The commit point of an image: the index entries of its new chunks
    /// (already durable in their packs), the rest of its recipe and its
    /// record, in one transaction; its partial record goes.
    pub fn commit_image(
        &self,
        img: &NewImage<'_>,
        durable: &[(ChunkKey, Location)],
    ) -> Result<ImageRecord> {
        let tx = self.begin_write()?;
        let rec = {
            let key = (img.container_id, img.name.as_str());
            let mut partials = tx.open_table(PARTIALS)?;
            let partial: Option<PartialRecord> = match partials.remove(key)? {
                Some(v) => Some(decode("partial image", v.value())?),
                None => None,
            };
            if partial.is_none_or(|p| p.id != img.id) {
                return Err(StoreError::NotFound(format!(
                    "image {} was removed while it was being written",
                    img.name
                )));
            }
            let mut images = tx.open_table(IMAGES)?;
            if images.get(key)?.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "image {} already exists in container {}",
                    img.name, img.container
                )));
            }
            write_rows(&tx, img.id, img.recipe, durable)?;
            let rec = ImageRecord {
                id: img.id,
                size: img.size,
                chunks: img.chunks,
                props: img.props.to_vec(),
                created: img.created,
                origin: img.replica.map(|(o, _)| o.clone()),
                changed: 0,
                held: None,
                recalled: 0,
            };
            images.insert(key, encode(&rec)?.as_slice())?;
            if let Some((origin, trail)) = img.replica {
                if img.import {
                    let event = EventRecord {
                        time: img.created,
                        image: img.name.clone(),
                        size: img.size,
                        props: img.props.to_vec(),
                        origin: origin.clone(),
                        acked: false,
                    };
                    replication::insert_event(&tx, img.container_id, &event)?;
                }
                replication::push_trail(&tx, trail)?;
            }
            rec
        };
        tx.commit()?;
        Ok(rec)
    }

    /// Records an image rebuilt from a bucket's catalog (`ternd group
    /// recover`) under a fresh image id, with its recipe, in one
    /// transaction; its chunks are indexed already.
    pub fn insert_recovered_image(
        &self,
        container_id: u64,
        name: &ImageName,
        record: &ImageRecord,
        recipe: RecipeRows<'_>,
    ) -> Result<u64> {
        let tx = self.begin_write()?;
        let id = {
            let mut images = tx.open_table(IMAGES)?;
            let key = (container_id, name.as_str());
            if images.get(key)?.is_some() {
                return Err(StoreError::AlreadyExists(format!("image {name} exists")));
            }
            let id = super::next_counter(&tx, "next_image")?;
            write_rows(&tx, id, recipe, &[])?;
            let rec = ImageRecord {
                id,
                ..record.clone()
            };
            images.insert(key, encode(&rec)?.as_slice())?;
            id
        };
        tx.commit()?;
        Ok(id)
    }

    // ---- recipes ---------------------------------------------------------------

    /// Recipe entries from the one holding `offset`, at most `max`.
    pub fn recipe_from(&self, image_id: u64, offset: u64, max: usize) -> Result<Vec<RecipeEntry>> {
        let t = self.db.begin_read()?.open_table(RECIPES)?;
        let start = match t.range((image_id, 0)..=(image_id, offset))?.next_back() {
            Some(row) => row?.0.value().1,
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for row in t.range((image_id, start)..(image_id, u64::MAX))?.take(max) {
            let (k, v) = row?;
            let (id, len) = split_recipe_value(v.value())?;
            out.push(RecipeEntry {
                offset: k.value().1,
                id,
                len,
            });
        }
        Ok(out)
    }

    /// The chunk that starts at `offset` of an image, and where it is stored.
    pub fn chunk_at(
        &self,
        image_id: u64,
        group: u32,
        offset: u64,
    ) -> Result<(RecipeEntry, Location)> {
        let tx = self.db.begin_read()?;
        let recipes = tx.open_table(RECIPES)?;
        let v = recipes.get((image_id, offset))?.ok_or_else(|| {
            StoreError::Invalid(format!("no chunk starts at offset {offset} of this image"))
        })?;
        let (id, len) = split_recipe_value(v.value())?;
        let chunks = tx.open_table(CHUNKS)?;
        let loc = chunks
            .get(chunk_key(group, &id).as_slice())?
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "chunk {id} at offset {offset} is missing from the index"
                ))
            })?;
        let loc = Location::decode(loc.value()).ok_or_else(|| {
            StoreError::Corrupt(format!("undecodable index entry for chunk {id}"))
        })?;
        Ok((RecipeEntry { offset, id, len }, loc))
    }
}

/// One committed image and its recipe, as of one read snapshot: what an
/// extent write reads, so that a deletion of the image meanwhile changes
/// nothing it sees (GC, which could free the chunks, waits on the gate).
pub struct RecipeSnapshot {
    recipes: redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
    pub image: ImageRecord,
}

impl Catalog {
    /// The committed image `name` of a container with its recipe, from one
    /// snapshot; `None` if there is no such committed image.
    pub fn recipe_snapshot(
        &self,
        container_id: u64,
        name: &ImageName,
    ) -> Result<Option<RecipeSnapshot>> {
        let tx = self.db.begin_read()?;
        let Some(image) = tx
            .open_table(IMAGES)?
            .get((container_id, name.as_str()))?
            .map(|v| decode::<ImageRecord>("image", v.value()))
            .transpose()?
        else {
            return Ok(None);
        };
        let recipes = tx.open_table(RECIPES)?;
        Ok(Some(RecipeSnapshot { recipes, image }))
    }
}

impl RecipeSnapshot {
    /// Calls `each` with every recipe row that overlaps `[from, to)`, in
    /// image order. The rows must cover the range without a gap.
    pub fn rows(
        &self,
        from: u64,
        to: u64,
        mut each: impl FnMut(RecipeEntry) -> Result<()>,
    ) -> Result<()> {
        let id = self.image.id;
        if from >= to {
            return Ok(());
        }
        let start = match self.recipes.range((id, 0)..=(id, from))?.next_back() {
            Some(row) => row?.0.value().1,
            None => from,
        };
        let mut next = start;
        for row in self.recipes.range((id, start)..(id, to))? {
            let (k, v) = row?;
            let (chunk, len) = split_recipe_value(v.value())?;
            let offset = k.value().1;
            if offset != next {
                return Err(StoreError::Corrupt(format!(
                    "the recipe of image {id} has a gap at offset {next}"
                )));
            }
            next = offset + u64::from(len);
            each(RecipeEntry {
                offset,
                id: chunk,
                len,
            })?;
        }
        if next < to {
            return Err(StoreError::Corrupt(format!(
                "the recipe of image {id} ends at {next}, short of {to}"
            )));
        }
        Ok(())
    }
}
