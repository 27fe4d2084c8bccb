//! Saving each cloud group's catalog to its bucket, so that a lost machine's
//! group can be rebuilt from the bucket alone (`cloud_recover.rs`).
//!
//! ternd's catalog thread calls [`Store::save_cloud_catalogs`] every
//! `cloud_catalog_secs`: a group whose containers, images or live packs
//! changed gets a recipe object per new image and a new manifest (the
//! first pass after a start writes one in any case, after checking the
//! lease). So a lost machine loses at most the commits of that interval.
//! GC saves the group's catalog before it purges, and purges only objects
//! that were doomed already when that manifest listed the packs.

use std::collections::BTreeMap;

use tern_core::wire::RecipeEntry;
use tern_core::ImageName;

use super::cloud::catalog_objects::{
    encode_recipe, Manifest, SavedContainer, SavedImage, SavedRecipe,
};
use super::records::{now_unix, GroupRecord};
use super::{Result, Store, StoreError};

impl Store {
    /// Saves the catalog of every cloud group that changed since its last
    /// save; the first error, after trying every group.
    pub fn save_cloud_catalogs(&self) -> Result<()> {
        if self.read_only.is_some() {
            return Ok(());
        }
        let mut first = None;
        for (name, rec) in self.catalog.groups()? {
            if rec.cloud.is_none() {
                continue;
            }
            if let Err(e) = self.save_group_catalog(&name, &rec, false) {
                tracing::warn!("saving the catalog of storage group {name} to its bucket: {e}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Saves group `name`'s catalog if it changed (or `always`, or at the
    /// first pass since the start); true if it did.
    pub(super) fn save_group_catalog(
        &self,
        name: &str,
        rec: &GroupRecord,
        always: bool,
    ) -> Result<bool> {
        let store = self.packs.store(rec.id)?;
        let Some(cloud) = store.cloud() else {
            return Ok(false);
        };
        let _one = cloud.saving();
        if let Some(why) = cloud.taken_over() {
            return Err(StoreError::Invalid(why));
        }
        let saved = cloud.saved();
        let (mut manifest, containers) = self.group_manifest(name, saved.seq + 1, now_unix())?;
        // Read after the images: every pack they use was uploaded before
        // they committed, and one compacted since is still listed or its
        // replacement is.
        let (packs, doomed) = cloud.objects();
        manifest.packs = packs;
        let digest = digest(&manifest)?;
        let first = !cloud.lease_checked();
        if digest == saved.digest && !first && !always {
            return Ok(false);
        }
        cloud.check_lease()?;
        let mut recipes = BTreeMap::new();
        let mut images = Vec::with_capacity(manifest.images.len());
        for (mut image, container_id) in manifest.images.drain(..).zip(containers) {
            let id = image.record.id;
            image.recipe = match saved.recipes.get(&id) {
                Some(r) => r.name,
                None => match self.image_recipe(container_id, &image.name)? {
                    Some(rows) => cloud.put_recipe(&encode_recipe(&rows))?,
                    // Deleted since the listing: the next save sees it gone.
                    None => continue,
                },
            };
            recipes.insert(id, SavedRecipe { name: image.recipe });
            images.push(image);
        }
        manifest.images = images;
        cloud.commit_manifest(&manifest, digest, recipes, doomed)?;
        tracing::info!(
            "saved the catalog of storage group {name} to its bucket: manifest {}, {} images, {} packs",
            manifest.seq,
            manifest.images.len(),
            manifest.packs.len()
        );
        Ok(true)
    }

    /// GC's last step in a group: a cloud group's catalog is saved (so that
    /// it no longer lists what GC dropped), then the objects doomed before
    /// it and past the grace period are deleted; how many.
    pub(super) fn purge_objects(&self, group: u32) -> Result<u64> {
        let found = self
            .catalog
            .groups()?
            .into_iter()
            .find(|(_, r)| r.id == group);
        let Some((name, rec)) = found.filter(|(_, r)| r.cloud.is_some()) else {
            return Ok(0);
        };
        if let Err(e) = self.save_group_catalog(&name, &rec, true) {
            tracing::warn!(
                "storage group {name}: its catalog could not be saved to its bucket, so GC \
                 deletes no object this time: {e}"
            );
            return Ok(0);
        }
        self.packs.purge(group)
    }

    /// Group `name`'s containers and committed images (recipe objects not
    /// named yet), and each image's container id.
    fn group_manifest(&self, name: &str, seq: u64, written: u64) -> Result<(Manifest, Vec<u64>)> {
        let mut m = Manifest::new(seq, written);
        let mut container_ids = Vec::new();
        for (cname, crec, _, _) in self.catalog.containers()? {
            if crec.group.as_str() != name {
                continue;
            }
            for (iname, irec) in self.catalog.images(crec.id, "")? {
                m.images.push(SavedImage {
                    container: cname.to_string(),
                    name: iname.to_string(),
                    record: irec,
                    recipe: [0; 16],
                });
                container_ids.push(crec.id);
            }
            m.containers.push(SavedContainer {
                name: cname.to_string(),
                record: crec,
            });
        }
        Ok((m, container_ids))
    }

    /// A committed image's whole recipe; `None` if it is gone.
    fn image_recipe(&self, container_id: u64, name: &str) -> Result<Option<Vec<RecipeEntry>>> {
        let name = ImageName::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let Some(snap) = self.catalog.recipe_snapshot(container_id, &name)? else {
            return Ok(None);
        };
        let mut rows = Vec::with_capacity(snap.image.chunks.min(1 << 20) as usize);
        snap.rows(0, snap.image.size, |e| {
            rows.push(e);
            Ok(())
        })?;
        Ok(Some(rows))
    }
}

/// What decides whether a catalog changed: everything in the manifest but
/// its number and time (recipe objects are not named yet).
fn digest(m: &Manifest) -> Result<[u8; 32]> {
    let mut plain = m.clone();
    plain.seq = 0;
    plain.written = 0;
    let bytes = plain.encode()?;
    Ok(*blake3::hash(&bytes).as_bytes())
}
