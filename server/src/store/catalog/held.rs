//! Images held in the cloud tier: a held image keeps its record (name,
//! size, properties) and reads from its cloud copy, an image of a cloud
//! group of this store; its own recipe rows go, so GC frees its chunks.
//! A recall writes them back batch by batch, then lets go of the copy.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tern_core::ImageName;

use super::images::image_in;
use super::partials::{write_rows, RecipeRows};
use super::{Catalog, IMAGES, RECIPES};
use crate::store::pack::Location;
use crate::store::records::{encode, ChunkKey, HeldIn, ImageRecord};
use crate::store::{Result, StoreError};

/// A cloud image's id -> the id of the image held in it: such a cloud
/// image cannot be deleted.
pub const HELD_BY: TableDefinition<u64, u64> = TableDefinition::new("held_by");

/// Image `name` of container `container_id`, which a hold or a recall
/// found a moment ago.
fn still_there(
    images: &impl ReadableTable<(u64, &'static str), &'static [u8]>,
    container_id: u64,
    name: &ImageName,
) -> Result<ImageRecord> {
    image_in(images, container_id, name.as_str())?
        .ok_or_else(|| StoreError::NotFound(format!("image {name} is gone")))
}

impl Catalog {
    /// Makes image `name` (whose id must still be `expect`) a held image
    /// reading from `held`, in one transaction: the cloud image must be
    /// committed, of the same size; the local recipe rows go.
    pub fn hold_image(
        &self,
        container_id: u64,
        name: &ImageName,
        expect: u64,
        held: HeldIn,
    ) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut images = tx.open_table(IMAGES)?;
            let key = (container_id, name.as_str());
            let mut rec = still_there(&images, container_id, name)?;
            if rec.id != expect || rec.held.is_some() {
                return Err(StoreError::Invalid(format!(
                    "image {name} changed or is held already"
                )));
            }
            match image_in(&images, held.container_id, held.name.as_str())? {
                Some(c) if c.id == held.image_id && c.size == rec.size => {}
                _ => {
                    return Err(StoreError::Invalid(format!(
                        "the cloud copy of image {name} is not committed as expected"
                    )))
                }
            }
            tx.open_table(RECIPES)?
                .retain_in((rec.id, 0)..=(rec.id, u64::MAX), |_, _| false)?;
            tx.open_table(HELD_BY)?.insert(held.image_id, rec.id)?;
            rec.held = Some(held);
            images.insert(key, encode(&rec)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Where a recall of held image `id` goes on: the end of its rows
    /// written so far (0: none).
    pub fn recalled_up_to(&self, id: u64) -> Result<u64> {
        let t = self.db.begin_read()?.open_table(RECIPES)?;
        let last = t.range((id, 0)..=(id, u64::MAX))?.next_back().transpose()?;
        Ok(match last {
            Some((k, v)) => {
                let len = v.value().get(32..36).and_then(|b| b.try_into().ok());
                let len = len.map(u32::from_le_bytes).ok_or_else(|| {
                    StoreError::Corrupt(format!("recipe row of image {id} is short"))
                })?;
                k.value().1 + u64::from(len)
            }
            None => 0,
        })
    }

    /// Writes a recalled batch of held image `id`'s rows and the index
    /// entries of the chunks stored for it, in one transaction (GC keeps
    /// what the rows name from then on).
    pub fn recall_rows(
        &self,
        id: u64,
        rows: RecipeRows<'_>,
        durable: &[(ChunkKey, Location)],
    ) -> Result<()> {
        let tx = self.begin_write()?;
        write_rows(&tx, id, rows, durable)?;
        tx.commit()?;
        Ok(())
    }

    /// Ends a recall: image `name` (id `expect`), its rows now reaching its
    /// size, reads its own chunks again and no longer holds its cloud image.
    pub fn unhold_image(
        &self,
        container_id: u64,
        name: &ImageName,
        expect: u64,
        now: u64,
    ) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut images = tx.open_table(IMAGES)?;
            let key = (container_id, name.as_str());
            let mut rec = still_there(&images, container_id, name)?;
            let Some(held) = rec.held.take().filter(|_| rec.id == expect) else {
                return Err(StoreError::Invalid(format!("image {name} is not held")));
            };
            tx.open_table(HELD_BY)?.remove(held.image_id)?;
            rec.recalled = now;
            images.insert(key, encode(&rec)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// In a delete's transaction: refuses to delete a cloud image a held
/// image reads from, and lets go of the cloud image of a held image.
pub(super) fn on_remove(tx: &redb::WriteTransaction, rec: &ImageRecord) -> Result<()> {
    let mut held_by = tx.open_table(HELD_BY)?;
    if held_by.get(rec.id)?.is_some() {
        return Err(StoreError::Invalid(
            "an image held in the cloud tier reads its bytes from this one: delete or recall \
             that image first"
                .into(),
        ));
    }
    if let Some(h) = &rec.held {
        held_by.remove(h.image_id)?;
    }
    Ok(())
}
