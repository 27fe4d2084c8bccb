//! The image read path: open, recipe, stored chunk bytes; and the store's statistics.

use std::collections::HashSet;

use tern_core::wire::{ImageInfo, ImageLock, RecipeEntry, StoreStats};
use tern_core::{ContainerName, ImageName};

use super::pack::{self, Location};
use super::{Result, Scope, Store, StoreError};

/// A committed image opened for reading.
#[derive(Debug, Clone)]
pub struct ReadableImage {
    pub info: ImageInfo,
    pub image_id: u64,
    pub group: u32,
    /// The retention lock holding it when it was opened: a copy carries it.
    pub lock: Option<ImageLock>,
}

impl Store {
    pub fn image_open(
        &self,
        scope: &Scope,
        container: &ContainerName,
        name: &ImageName,
    ) -> Result<ReadableImage> {
        let c = self.container(scope, container)?;
        let rec = self.catalog.image(c.id, name)?.ok_or_else(|| {
            StoreError::NotFound(format!(
                "image {name} does not exist in container {container}"
            ))
        })?;
        self.readable(&c, container.clone(), name.clone(), rec)
    }

    /// Recipe entries from the one holding `offset`, at most `max`.
    pub fn recipe_from(&self, image_id: u64, offset: u64, max: usize) -> Result<Vec<RecipeEntry>> {
        self.catalog.recipe_from(image_id, offset, max)
    }

    /// The stored bytes of the chunk that starts at `offset` of an image.
    pub fn read_chunk(
        &self,
        img: &ReadableImage,
        offset: u64,
    ) -> Result<(RecipeEntry, Location, Vec<u8>)> {
        // GC must not move the chunk between the lookup and the read.
        let _gate = self.gates.shared(img.group);
        let (entry, loc) = self.catalog.chunk_at(img.image_id, img.group, offset)?;
        let file = self.packs.reader(img.group, loc.pack)?;
        let bytes = pack::read_stored(&*file, &loc)
            .map_err(|e| StoreError::Corrupt(format!("reading chunk {}: {e}", entry.id)))?;
        Ok((entry, loc, bytes))
    }

    /// What the store holds, as far as `scope` sees: [`Scope::Every`] also
    /// counts groups with no container.
    pub fn stats(&self, scope: &Scope) -> Result<StoreStats> {
        let containers = self.container_list(scope)?;
        let mut s = StoreStats {
            containers: containers.len() as u64,
            images: containers.iter().map(|c| c.images).sum(),
            logical_bytes: containers.iter().map(|c| c.logical_bytes).sum(),
            ..Default::default()
        };
        let mut visible = HashSet::new();
        for c in &containers {
            if let Some(id) = self.catalog.group_id(&c.group)? {
                visible.insert(id);
            }
        }
        if scope.is_every() {
            visible.extend(self.packs.group_ids());
        }
        // Kept with the index in its transactions: no scan of millions of entries.
        for (group, t) in self.catalog.group_totals()? {
            if visible.contains(&group) {
                s.unique_chunks += t.chunks;
                s.unique_bytes += t.raw_bytes;
                s.stored_bytes += t.stored_bytes;
            }
        }
        let packs: Vec<_> = self
            .packs
            .packs()?
            .into_iter()
            .filter(|p| visible.contains(&p.group))
            .collect();
        s.pack_bytes = self.packs.bytes(&packs);
        let (free, total) = self.packs.space.filesystem()?;
        s.capacity_bytes = total;
        s.free_bytes = free.saturating_sub(self.packs.space.reserve());
        Ok(s)
    }
}
