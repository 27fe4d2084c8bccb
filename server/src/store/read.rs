//! The image read path: open, recipe, stored chunk bytes; and the store's statistics.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

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
    /// The group and image id of its cloud copy, once a hold took its
    /// local rows while it was open: its reads go on there (shared by the
    /// clones a session keeps of it).
    pub(super) moved: Arc<OnceLock<(u32, u64)>>,
}

impl ReadableImage {
    /// The group and image id its reads go to now.
    fn source(&self) -> (u32, u64) {
        self.moved
            .get()
            .copied()
            .unwrap_or((self.group, self.image_id))
    }
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

    /// Recipe entries of an open image from the one holding `offset`, at
    /// most `max`: from its cloud copy once a hold has taken its rows.
    pub fn open_recipe(
        &self,
        img: &ReadableImage,
        offset: u64,
        max: usize,
    ) -> Result<Vec<RecipeEntry>> {
        let entries = self.catalog.recipe_from(img.source().1, offset, max)?;
        if entries.is_empty() && offset < img.info.size && self.follow_hold(img)? {
            return self.catalog.recipe_from(img.source().1, offset, max);
        }
        Ok(entries)
    }

    /// The stored bytes of the chunk that starts at `offset` of an image
    /// (of its cloud copy once a hold has taken its rows).
    pub fn read_chunk(
        &self,
        img: &ReadableImage,
        offset: u64,
    ) -> Result<(RecipeEntry, Location, Vec<u8>)> {
        match self.read_chunk_in(img.source(), offset) {
            // No row there: the image may have been held since it was
            // opened. If not (or the look fails), the lookup's own error.
            Err(e @ StoreError::Invalid(_)) => match self.follow_hold(img) {
                Ok(true) => self.read_chunk_in(img.source(), offset),
                _ => Err(e),
            },
            read => read,
        }
    }

    fn read_chunk_in(
        &self,
        (group, image_id): (u32, u64),
        offset: u64,
    ) -> Result<(RecipeEntry, Location, Vec<u8>)> {
        // GC must not move the chunk between the lookup and the read.
        let _gate = self.gates.shared(group);
        let (entry, loc) = self.catalog.chunk_at(image_id, group, offset)?;
        let file = self.packs.reader(group, loc.pack)?;
        let bytes = pack::read_stored(&*file, &loc)
            .map_err(|e| StoreError::Corrupt(format!("reading chunk {}: {e}", entry.id)))?;
        Ok((entry, loc, bytes))
    }

    /// After a read of `img` found no rows: true if the image has been held
    /// since it was opened (its rows went with the hold), and its reads go
    /// to its cloud copy from now on. A hold removes the rows and records
    /// the copy in one transaction, so no read sees neither.
    fn follow_hold(&self, img: &ReadableImage) -> Result<bool> {
        if img.moved.get().is_some() {
            return Ok(false);
        }
        let c = self.container(&Scope::Every, &img.info.container)?;
        let held = match self.catalog.image(c.id, &img.info.name)? {
            Some(rec) if rec.id == img.image_id => rec.held,
            _ => None,
        };
        let Some(held) = held else { return Ok(false) };
        let source = self.held_source(&held)?;
        let _ = img.moved.set(source);
        Ok(true)
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
