//! A cloud group's side of saving its catalog to the bucket: the lease, the
//! recipe objects and manifests, and the local record of what was saved.
//! What to save is the engine's (`store/cloud_catalog.rs`); the formats
//! are `catalog_objects.rs`.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::catalog_objects::{
    manifest_name, Lease, Manifest, SavedPack, SavedRecipe, SavedState, LEASE_OBJECT,
};
use super::{lock, now_unix, sealed, CloudPackStore};
use crate::store::hex;

/// The group's saved state in `dir`; a new one (with a new lease holder
/// id, stored before any lease names it) if there is none.
pub(super) fn load_state(dir: &Path, read_only: bool) -> io::Result<SavedState> {
    if let Some(s) = SavedState::load(dir)? {
        return Ok(s);
    }
    let s = SavedState {
        holder: sealed::random().map_err(io::Error::other)?,
        ..SavedState::default()
    };
    if !read_only {
        s.store(dir)?;
    }
    Ok(s)
}

impl CloudPackStore {
    /// Exclusive use of the group's catalog saving, held across one save.
    pub fn saving(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.inner.saving)
    }

    /// What was saved so far.
    pub fn saved(&self) -> SavedState {
        lock(&self.inner.saved).clone()
    }

    /// Why this server no longer writes to the group, if another took it over.
    pub fn taken_over(&self) -> Option<String> {
        lock(&self.inner.taken_over).clone()
    }

    /// True once this server found the lease its own since it started.
    pub fn lease_checked(&self) -> bool {
        self.inner.lease_checked.load(Ordering::SeqCst)
    }

    /// The live pack objects by pack number, and the doomed ones, as of
    /// one moment.
    pub fn objects(&self) -> (Vec<SavedPack>, HashSet<[u8; 16]>) {
        let journal = lock(&self.inner.journal);
        let live = journal
            .live()
            .values()
            .map(|e| SavedPack {
                name: e.name,
                plain_len: e.plain_len,
            })
            .collect();
        (live, journal.doomed().iter().map(|d| d.name).collect())
    }

    /// Makes sure this server holds the prefix's lease: takes it if nobody
    /// does; if another server does, stops this one's uploads and says why.
    pub fn check_lease(&self) -> io::Result<()> {
        let this = &self.inner;
        let holder = lock(&this.saved).holder;
        let found = match this.bucket.get_if_present(LEASE_OBJECT)? {
            Some(b) => Some(Lease::decode(&b)?),
            None => None,
        };
        match found {
            Some(l) if l.holder == holder => {
                this.lease_checked.store(true, Ordering::SeqCst);
                Ok(())
            }
            None => {
                let lease = Lease {
                    holder,
                    since: now_unix(),
                };
                this.bucket.put(LEASE_OBJECT, lease.encode())?;
                this.lease_checked.store(true, Ordering::SeqCst);
                Ok(())
            }
            Some(l) => {
                let why = format!(
                    "another server took over {} (its lease since {}, `ternd group recover \
                     --take-over`): this server no longer writes to it",
                    self.location(),
                    l.since
                );
                *lock(&this.taken_over) = Some(why.clone());
                Err(io::Error::new(io::ErrorKind::PermissionDenied, why))
            }
        }
    }

    /// Takes the prefix's lease for this server, whoever held it.
    pub fn take_lease(&self) -> io::Result<()> {
        let lease = Lease {
            holder: lock(&self.inner.saved).holder,
            since: now_unix(),
        };
        self.inner.bucket.put(LEASE_OBJECT, lease.encode())?;
        self.inner.lease_checked.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Catalog object `name`, opened.
    pub fn read_object(&self, name: &[u8; 16]) -> io::Result<Vec<u8>> {
        let object = self.inner.bucket.get(&hex(name))?;
        sealed::open_object(&self.inner.key, name, &object)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Uploads a recipe object; its random name.
    pub fn put_recipe(&self, plain: &[u8]) -> io::Result<[u8; 16]> {
        let name: [u8; 16] = sealed::random().map_err(io::Error::other)?;
        let object = sealed::seal_object(&self.inner.key, &name, plain);
        // In flight until a committed manifest's saved state names it (or
        // until a restart, if the save fails: kept, never taken for an orphan).
        lock(&self.inner.in_flight).insert(name);
        self.inner.bucket.put(&hex(&name), object)?;
        Ok(name)
    }

    /// Uploads manifest `m`, records it as saved with `recipes`, lets GC
    /// purge the objects `doomed` when its packs were listed, then deletes
    /// the previous manifest and the recipe objects of images it no longer
    /// lists.
    pub fn commit_manifest(
        &self,
        m: &Manifest,
        digest: [u8; 32],
        recipes: BTreeMap<u64, SavedRecipe>,
        doomed: HashSet<[u8; 16]>,
    ) -> io::Result<()> {
        let this = &self.inner;
        let salt: [u8; 16] = sealed::random().map_err(io::Error::other)?;
        let object = sealed::seal_object(&this.key, &salt, &m.encode()?);
        this.bucket.put(&manifest_name(m.seq, &salt), object)?;
        let old = {
            let mut saved = lock(&this.saved);
            let next = SavedState {
                holder: saved.holder,
                seq: m.seq,
                manifest_salt: salt,
                saved_at: m.written,
                images: m.images.len() as u64,
                digest,
                recipes,
            };
            next.store(&this.dir)?;
            std::mem::replace(&mut *saved, next)
        };
        *lock(&this.purgeable) = doomed;
        let kept = lock(&this.saved).recipes.clone();
        {
            let mut in_flight = lock(&this.in_flight);
            for r in kept.values() {
                in_flight.remove(&r.name);
            }
        }
        let stale = old.recipes.iter().filter(|(id, _)| !kept.contains_key(id));
        for (_, r) in stale {
            if let Err(e) = this.bucket.delete(&hex(&r.name)) {
                tracing::warn!("deleting an old recipe object: {e}");
            }
        }
        if old.seq > 0 {
            if let Err(e) = this
                .bucket
                .delete(&manifest_name(old.seq, &old.manifest_salt))
            {
                tracing::warn!("deleting an old manifest: {e}");
            }
        }
        Ok(())
    }

    /// Deletes the group's catalog objects and lease (the group is removed).
    pub(super) fn clear_catalog(&self) -> io::Result<()> {
        let this = &self.inner;
        let saved = lock(&this.saved).clone();
        for r in saved.recipes.values() {
            this.bucket.delete(&hex(&r.name))?;
        }
        if saved.seq > 0 {
            this.bucket
                .delete(&manifest_name(saved.seq, &saved.manifest_salt))?;
        }
        this.bucket.delete(LEASE_OBJECT)?;
        Ok(())
    }

    /// Replaces the saved state (a recovered group's), durably.
    pub fn set_saved(&self, state: SavedState) -> io::Result<()> {
        state.store(&self.inner.dir)?;
        *lock(&self.inner.saved) = state;
        Ok(())
    }
}
