//! Partial images: commit, resume, abort, and what becomes of
//! an image whose writer went away (kept as *incomplete*, resumable by
//! name, dropped after the retention period).
//!
//! One mechanism serves interrupted backups and interrupted copies: an
//! image being written is a partial record from its first byte; each
//! checkpoint makes what it has received durable and indexed; its commit is
//! the last checkpoint.

use std::time::Duration;

use tern_core::names::GroupName;
use tern_core::wire::{
    ImageInfo, IncompleteImage, ReplicaOrigin, TrailEntry, TrailResult, TrailSide, WriteStats,
};
use tern_core::{ContainerName, ImageName};

use super::catalog::NewImage;
use super::records::{now_unix, ContainerRecord, ImageRecord};
use super::write::{no_such_image, SessionProbe};
use super::{lock, Owner, Result, Scope, Store, StoreError, WriterId};

/// An image reopened by a resume.
pub struct Resumed {
    pub writer: WriterId,
    /// The durable size: the client continues from this offset.
    pub offset: u64,
    /// The DMA's properties, as given at the begin.
    pub props: Vec<u8>,
    pub container: super::records::ContainerRecord,
    /// The session it was taken from, if it was still open in one.
    pub taken_over: bool,
}

impl Store {
    /// Commits an image: its last checkpoint, which also records the image
    /// (and, for a replica, its trail entry and import event). The image is
    /// gone from the open set either way; a failed commit leaves it
    /// incomplete, resumable from its last checkpoint.
    pub fn image_commit(&self, w: WriterId) -> Result<(ImageInfo, WriteStats)> {
        // Held from here to the catalog commit: GC must not sweep chunks this
        // image refers to once it has left the open set.
        let _gate = self.gates.shared(self.open_group(w)?);
        let image = lock(&self.open).remove(&w).ok_or_else(no_such_image)?.image;
        let mut img = lock(&image);
        if !img.missing.is_empty() {
            return Err(StoreError::Invalid(format!(
                "image closed with {} announced chunks never sent; it was not committed",
                img.missing.len()
            )));
        }
        if img.passthrough.is_some() {
            self.cut_raw(&mut img, &[], true)?;
        }
        let durable = self.sync_pending(img.group)?;
        let created = self.now();
        let trail = img.replica.as_ref().map(|r| {
            let image = format!("{}/{}", img.container, img.name);
            let group = Some(r.group.clone());
            let ok = ReplicaEnd::new(TrailResult::Ok, "");
            let mut t = replica_trail(&r.origin, group, r.started, &image, ok);
            t.ended = created;
            t.logical_bytes = img.size;
            t.sent_bytes = img.stats.new_stored_bytes;
            t.sent_chunks = img.stats.new_chunks;
            t
        });
        let chunks = img.durable.chunks + img.recipe.len() as u64;
        let rec = self.catalog.commit_image(
            &NewImage {
                id: img.durable.id,
                container_id: img.container_id,
                container: &img.container,
                name: &img.name,
                size: img.size,
                props: &img.durable.props,
                created,
                chunks,
                recipe: &img.recipe,
                replica: img.replica.as_ref().map(|r| &r.origin).zip(trail.as_ref()),
                import: img.replica.as_ref().is_some_and(|r| r.import),
            },
            &durable,
        )?;
        self.forget_pending(durable);
        let info = ImageInfo {
            container: img.container.clone(),
            name: img.name.clone(),
            size: img.size,
            chunks,
            props: std::mem::take(&mut img.durable.props),
            created,
            lock_until: self.committed_lock(img.container_id, &rec),
            location: Default::default(),
        };
        let stats = WriteStats {
            logical_bytes: img.size,
            chunks,
            ..img.stats
        };
        Ok((info, stats))
    }

    /// Until when a retention lock holds the image `rec` just committed
    /// into container `container_id` (read again: a lock set while the
    /// image was written holds it too); 0 if none, or if the container
    /// cannot be read now (the commit stands; listing the image tells).
    fn committed_lock(&self, container_id: u64, rec: &ImageRecord) -> u64 {
        let container = || -> Result<Option<ContainerRecord>> {
            let Some((group, name)) = self.catalog.container_place(container_id)? else {
                return Ok(None);
            };
            match ContainerName::new(&name) {
                Ok(name) => self.catalog.container(&group, &name),
                Err(_) => Ok(None),
            }
        };
        match container() {
            Ok(c) => c
                .and_then(|c| self.image_lock(&c, rec))
                .map_or(0, |l| l.until),
            Err(e) => {
                tracing::warn!("could not read the lock of a committed image: {e}");
                0
            }
        }
    }

    /// Images being written now.
    pub fn open_images(&self) -> usize {
        lock(&self.open).len()
    }

    /// Drops an image being written, durable part and all (its client
    /// asked to); its chunks are left for GC. A replica's end goes into
    /// the trail.
    pub fn image_abort(&self, w: WriterId) {
        self.abort_open(
            w,
            "the source ended the copy, or its session ended, before the commit",
        );
    }

    /// [`Self::image_abort`], saying why in a replica's trail entry.
    pub(super) fn abort_open(&self, w: WriterId, why: &str) {
        let Some(entry) = lock(&self.open).remove(&w) else {
            return;
        };
        let img = lock(&entry.image);
        if let Err(e) = self
            .catalog
            .drop_partial(img.container_id, &img.name, Some(img.durable.id))
        {
            tracing::warn!("dropping aborted image {}/{}: {e}", img.container, img.name);
        }
        if let Some(r) = &img.replica {
            let image = format!("{}/{}", img.container, img.name);
            let (group, end) = (
                Some(r.group.clone()),
                ReplicaEnd::new(TrailResult::Failed, why),
            );
            self.trail_replica_end(&r.origin, group, r.started, &image, end);
        }
    }

    /// An image whose session ended without commit or abort (the client
    /// died, or stayed away past the grace period), or whose client
    /// suspended it: checkpointed and kept as incomplete, for a resume.
    /// Returns the offset a resume continues from; `None` if the image is
    /// no longer this writer's (a resume took it).
    pub fn image_detach(&self, w: WriterId) -> Option<u64> {
        let group = lock(&self.open).get(&w)?.group;
        let _gate = self.gates.shared(group);
        let entry = lock(&self.open).remove(&w)?;
        let mut img = lock(&entry.image);
        match self.checkpoint(&mut img) {
            Ok(()) => tracing::info!(
                "image {}/{} left incomplete at {} bytes; it can be resumed",
                img.container,
                img.name,
                img.durable.size
            ),
            Err(e) => tracing::warn!(
                "image {}/{} left incomplete; its last checkpoint failed ({e}), so it resumes \
                 from {} bytes",
                img.container,
                img.name,
                img.durable.size
            ),
        }
        Some(img.durable.size)
    }

    /// Reopens an incomplete image for writing from its last checkpoint.
    /// An image still open in a session that has lost its connections (a
    /// client that died, in its grace period) is taken from that session.
    pub fn image_resume(
        &self,
        scope: &Scope,
        owner: Owner<'_>,
        container: &ContainerName,
        name: &ImageName,
        passthrough: bool,
        probe: Option<SessionProbe>,
    ) -> Result<Resumed> {
        let rec = self.container(scope, container)?;
        if rec.replica {
            return Err(StoreError::Denied(format!(
                "container {container} is a replica container: its images are resumed by their copy"
            )));
        }
        let group = self.group_of(&rec)?;
        let _begin = lock(&self.begin_lock);
        let taken_over = self.take_over(owner, rec.id, container, name)?;
        let mut durable = self
            .catalog
            .partial(rec.id, name)?
            .ok_or_else(|| self.nothing_to_resume(rec.id, container, name))?;
        if durable.origin.is_some() {
            return Err(StoreError::Denied(format!(
                "{container}/{name} is a replica being written: its copy resumes it"
            )));
        }
        if !owner.allows(&durable.owner) {
            return Err(StoreError::Denied(format!(
                "image {name} was begun by user {}; only they or an admin may resume it",
                durable.owner
            )));
        }
        if durable.chunking != rec.chunking {
            return Err(StoreError::Invalid(format!(
                "image {name} was begun with chunking min {} / avg {} / max {}, but container \
                 {container} now chunks min {} / avg {} / max {}; it cannot be resumed there",
                durable.chunking.min,
                durable.chunking.avg,
                durable.chunking.max,
                rec.chunking.min,
                rec.chunking.avg,
                rec.chunking.max
            )));
        }
        let offset = durable.size;
        let owner = durable.owner.clone();
        let props = durable.props.clone();
        // The writer may chunk differently this time: both ways cut the
        // container's chunking from a chunk boundary.
        durable.passthrough = passthrough;
        let image = self.open_image_state(&rec, container, name, group, durable, None)?;
        let writer = self.insert_open(rec.id, name, None, &owner, image);
        if let Some(p) = probe {
            self.set_session_probe(writer, p);
        }
        Ok(Resumed {
            writer,
            offset,
            props,
            container: rec,
            taken_over,
        })
    }

    /// Takes image `name` out of the open set if the session that holds it
    /// is disconnected or does not answer, checkpointing it first; true if
    /// it did.
    pub(super) fn take_over(
        &self,
        owner_may: Owner<'_>,
        container_id: u64,
        container: &ContainerName,
        name: &ImageName,
    ) -> Result<bool> {
        let found = lock(&self.open)
            .iter()
            .find(|(_, e)| e.container_id == container_id && e.name == *name)
            .map(|(w, e)| (*w, e.owner.clone(), e.probe.clone(), e.copy.is_some()));
        let Some((w, owner, probe, replica)) = found else {
            return Ok(false);
        };
        if replica {
            return Err(StoreError::Denied(format!(
                "{container}/{name} is a replica being written: its copy resumes it"
            )));
        }
        if !owner_may.allows(&owner) {
            return Err(StoreError::Denied(format!(
                "image {name} is being written by user {owner}; only they or an admin may resume it"
            )));
        }
        // Asked without the gate: the answer may take a moment.
        if probe.as_ref().is_some_and(|p| p.answers()) {
            return Err(StoreError::Busy(format!(
                "image {name} is being written by a session whose client still answers; resume \
                 it once that client is gone"
            )));
        }
        let Ok(group) = self.open_group(w) else {
            return Ok(false);
        };
        let _gate = self.gates.shared(group);
        let Some(entry) = lock(&self.open).remove(&w) else {
            return Ok(false);
        };
        let mut img = lock(&entry.image);
        self.checkpoint(&mut img)?;
        tracing::info!(
            "image {container}/{name} taken over from a session that did not answer, at {} bytes",
            img.durable.size
        );
        Ok(true)
    }

    fn nothing_to_resume(
        &self,
        container_id: u64,
        container: &ContainerName,
        name: &ImageName,
    ) -> StoreError {
        match self.catalog.image(container_id, name) {
            Ok(Some(_)) => StoreError::AlreadyExists(format!(
                "image {name} in container {container} is already committed; there is nothing \
                 to resume"
            )),
            _ => StoreError::NotFound(format!(
                "no incomplete image {name} in container {container} to resume"
            )),
        }
    }

    /// The partial images of a container: incomplete ones and those being written.
    pub fn incomplete_images(
        &self,
        scope: &Scope,
        container: &ContainerName,
        prefix: &str,
    ) -> Result<Vec<IncompleteImage>> {
        let rec = self.container(scope, container)?;
        // Being written: open in a session that has a connection (one in
        // its grace period shows as stopped: a resume may take it over).
        let open: Vec<ImageName> = lock(&self.open)
            .values()
            .filter(|e| e.container_id == rec.id && e.probe.as_ref().is_some_and(|p| p.connected()))
            .map(|e| e.name.clone())
            .collect();
        Ok(self
            .catalog
            .partials(rec.id, prefix)?
            .into_iter()
            .map(|(name, p)| IncompleteImage {
                writing: open.contains(&name),
                name,
                resume_offset: p.size,
                started: p.started,
                checkpointed: p.checkpointed,
                props: p.props,
            })
            .collect())
    }

    /// Removes an incomplete image (`tern rm`); false if there is none of
    /// that name. One still being written by a connected session is refused.
    pub(super) fn remove_incomplete(
        &self,
        owner: Owner<'_>,
        container_id: u64,
        container: &ContainerName,
        name: &ImageName,
    ) -> Result<bool> {
        let _begin = lock(&self.begin_lock);
        self.take_over(owner, container_id, container, name)?;
        Ok(self
            .catalog
            .drop_partial(container_id, name, None)?
            .is_some())
    }

    /// Drops incomplete images (not open in any session) whose last
    /// checkpoint is older than their retention (`replicas` for partial
    /// replicas, each with a trail entry), each with a log line; returns
    /// how many went.
    pub fn expire_incomplete(&self, images: Duration, replicas: Duration) -> Result<usize> {
        let _begin = lock(&self.begin_lock);
        let open: Vec<(u64, ImageName)> = lock(&self.open)
            .values()
            .map(|e| (e.container_id, e.name.clone()))
            .collect();
        let now = now_unix();
        let mut dropped = 0;
        for (cid, name, p) in self.catalog.all_partials()? {
            let retention = if p.origin.is_some() { replicas } else { images };
            if open.contains(&(cid, name.clone()))
                || p.checkpointed.saturating_add(retention.as_secs()) > now
            {
                continue;
            }
            if self.catalog.drop_partial(cid, &name, Some(p.id))?.is_none() {
                continue;
            }
            let what = if p.origin.is_some() {
                "partial replica"
            } else {
                "incomplete image"
            };
            tracing::info!(
                "{what} {name} (container id {cid}, {} bytes durable, last checkpoint {} s ago) \
                 expired and was dropped; GC frees its chunks",
                p.size,
                now.saturating_sub(p.checkpointed)
            );
            if let Some(origin) = &p.origin {
                let why = format!(
                    "expired: no attempt of the copy continued it for {} s",
                    retention.as_secs()
                );
                let (group, image) = self.catalog.image_place(cid, &name);
                let end = ReplicaEnd::new(TrailResult::Expired, &why);
                self.trail_replica_end(origin, group, p.started, &image, end);
            }
            dropped += 1;
        }
        Ok(dropped)
    }

    /// Records the end of a replica on this (target) side in the trail.
    pub(super) fn trail_replica_end(
        &self,
        origin: &ReplicaOrigin,
        group: Option<GroupName>,
        started: u64,
        image: &str,
        end: ReplicaEnd<'_>,
    ) {
        let t = replica_trail(origin, group, started, image, end);
        if let Err(e) = self.catalog.push_trail(&t) {
            tracing::warn!("recording the end of replica {image} in the trail: {e}");
        }
    }
}

/// How a replica's attempt ended, and why.
pub(super) struct ReplicaEnd<'a> {
    result: TrailResult,
    reason: &'a str,
}

impl<'a> ReplicaEnd<'a> {
    pub(super) fn new(result: TrailResult, reason: &'a str) -> Self {
        Self { result, reason }
    }
}

/// The target side's trail entry of a replica in `group`.
fn replica_trail(
    origin: &ReplicaOrigin,
    group: Option<GroupName>,
    started: u64,
    image: &str,
    end: ReplicaEnd<'_>,
) -> TrailEntry {
    TrailEntry {
        copy: origin.copy,
        side: TrailSide::Target,
        peer: origin.server.clone(),
        image: image.into(),
        started,
        ended: now_unix(),
        logical_bytes: 0,
        sent_bytes: 0,
        sent_chunks: 0,
        result: end.result,
        reason: end.reason.into(),
        group,
        repeats: 0,
        tier: false,
    }
}
