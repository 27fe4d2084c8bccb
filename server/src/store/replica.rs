//! Replication in the store: the target's side (replicas written into
//! replica containers, import events) and what the source's copy jobs read.

use tern_core::names::{GroupName, UserName};
use tern_core::wire::{
    CopyId, ImageInfo, ImportEvent, ImportState, ReplicaOrigin, TrailResult, MAX_EVENTS_PER_POLL,
};
use tern_core::{ChunkParams, ContainerName, ImageName};

use super::partial::ReplicaEnd;
use super::records::{now_unix, ContainerRecord};
use super::write::ReplicaWrite;
use super::{lock, ReadableImage, Result, Scope, Store, StoreError, WriterId};

/// A replica a source server asks to write.
pub struct NewReplica {
    pub container: ContainerName,
    pub name: ImageName,
    /// The source image's DMA properties.
    pub props: Vec<u8>,
    pub origin: ReplicaOrigin,
    /// The source container's chunking and zstd level.
    pub chunking: ChunkParams,
    pub zstd_level: i32,
}

/// The answer to a replica's creation.
pub enum ReplicaStart {
    /// Write it under this writer.
    Write(WriterId),
    /// Continue the partial replica this copy left, from `offset` (its
    /// durable size, a chunk boundary of the source's recipe).
    Resume { writer: WriterId, offset: u64 },
    /// This copy already committed it (the source did not hear of it).
    Committed(ImageInfo),
}

impl Store {
    /// Opens a replica for writing, for a source server's copy, begun by
    /// `owner`. The container, as `scope` sees it, must be a replica
    /// container whose chunking matches the source's (its first copy sets
    /// it). With `resume`, a partial replica this copy left (an outage, a
    /// restart of either side) is continued.
    pub fn replica_begin(
        &self,
        scope: &Scope,
        owner: &UserName,
        replica: NewReplica,
        resume: bool,
    ) -> Result<ReplicaStart> {
        let NewReplica {
            container,
            name,
            props,
            origin,
            chunking,
            zstd_level,
        } = replica;
        let (container, name) = (&container, &name);
        self.check_carried_lock(&origin)?;
        if props.len() > tern_core::wire::MAX_PROPS_LEN {
            return Err(StoreError::Invalid(format!(
                "image properties of {} bytes; the limit is {}",
                props.len(),
                tern_core::wire::MAX_PROPS_LEN
            )));
        }
        chunking.validate().map_err(StoreError::Invalid)?;
        let mut rec = self.container(scope, container)?;
        if !rec.replica {
            return Err(StoreError::Invalid(format!(
                "container {container} is not a replica container (create it with --replica)"
            )));
        }
        if !rec.inherited {
            rec = self
                .catalog
                .update_container(&rec, &container.split().1, |c, has_images| {
                    if !c.inherited && !has_images {
                        c.chunking = chunking;
                        c.zstd_level = zstd_level;
                        c.inherited = true;
                    }
                    Ok(())
                })?;
        }
        if rec.chunking != chunking {
            return Err(StoreError::Invalid(format!(
                "chunking differs: the source container chunks {}, replica container {container} \
                 chunks {}; dedup between them would be lost",
                show(&chunking),
                show(&rec.chunking)
            )));
        }
        if let Some(existing) = self.catalog.image(rec.id, name)? {
            if existing.origin.as_ref().map(|o| o.copy) == Some(origin.copy) {
                return Ok(ReplicaStart::Committed(self.image_info(
                    &rec,
                    container.clone(),
                    name.clone(),
                    existing,
                )));
            }
        }
        if resume {
            if let Some(r) = self.replica_resume(&rec, container, name, &props, &origin)? {
                return Ok(r);
            }
        }
        let replica = ReplicaWrite {
            origin,
            group: rec.group.clone(),
            import: rec.import,
            started: now_unix(),
        };
        let w = self.open_writer(&rec, container, name, props, false, Some(replica), owner)?;
        Ok(ReplicaStart::Write(w))
    }

    /// Reopens the partial replica this copy left, taking it from a session
    /// that still holds it (after a checkpoint: what that session received
    /// is kept). None if there is nothing of this copy to continue (or it
    /// was begun with other properties or chunking): the copy starts over.
    fn replica_resume(
        &self,
        rec: &ContainerRecord,
        container: &ContainerName,
        name: &ImageName,
        props: &[u8],
        origin: &ReplicaOrigin,
    ) -> Result<Option<ReplicaStart>> {
        let group = self.group_of(rec)?;
        let _begin = lock(&self.begin_lock);
        self.take_over_replica(group, rec.id, name, origin.copy)?;
        let Some(durable) = self.catalog.partial(rec.id, name)? else {
            return Ok(None);
        };
        let same_copy = durable.origin.as_ref().map(|o| o.copy) == Some(origin.copy);
        if !same_copy || durable.chunking != rec.chunking || durable.props != props {
            return Ok(None);
        }
        let offset = durable.size;
        let owner = durable.owner.clone();
        let replica = ReplicaWrite {
            origin: origin.clone(),
            group: rec.group.clone(),
            import: rec.import,
            started: durable.started,
        };
        let image = self.open_image_state(rec, container, name, group, durable, Some(replica))?;
        let writer = self.insert_open(rec.id, name, Some(origin.copy), &owner, image);
        tracing::info!(copy = %origin.copy, "replica {container}/{name} resumed at {offset} bytes");
        Ok(Some(ReplicaStart::Resume { writer, offset }))
    }

    /// Takes the replica `copy` is writing out of the session that holds it
    /// (the source gave that session up), checkpointing it first.
    fn take_over_replica(
        &self,
        group: u32,
        container_id: u64,
        name: &ImageName,
        copy: CopyId,
    ) -> Result<()> {
        let _gate = self.gates.shared(group);
        let mut open = lock(&self.open);
        let found = open
            .iter()
            .find(|(_, e)| {
                e.container_id == container_id && e.name == *name && e.copy == Some(copy)
            })
            .map(|(w, _)| *w);
        let Some(entry) = found.and_then(|w| open.remove(&w)) else {
            return Ok(());
        };
        drop(open);
        let mut img = lock(&entry.image);
        self.checkpoint(&mut img)
    }

    /// Drops what a copy left here: the replica it is writing, or the
    /// partial replica an interrupted attempt kept. Each goes into the
    /// trail; true if there was any. Replicas in groups `scope` does not
    /// see are left alone, as if absent.
    pub fn replica_abort(&self, scope: &Scope, copy: CopyId, why: &str) -> Result<bool> {
        let candidates: Vec<_> = lock(&self.open)
            .iter()
            .filter(|(_, o)| o.copy == Some(copy))
            .map(|(id, o)| (*id, o.image.clone()))
            .collect();
        // Each image's lock is taken with `open` released (the lock order).
        let open: Vec<WriterId> = candidates
            .into_iter()
            .filter(|(_, image)| {
                let img = lock(image);
                img.replica.as_ref().is_some_and(|r| scope.sees(&r.group))
            })
            .map(|(id, _)| id)
            .collect();
        let mut found = !open.is_empty();
        for w in open {
            self.abort_open(w, why);
        }
        let _begin = lock(&self.begin_lock);
        for (cid, name, p) in self.catalog.all_partials()? {
            let Some(origin) = p.origin.filter(|o| o.copy == copy) else {
                continue;
            };
            let (group, image) = self.catalog.image_place(cid, &name);
            if !group.as_ref().is_some_and(|g| scope.sees(g)) {
                continue;
            }
            if self.catalog.drop_partial(cid, &name, Some(p.id))?.is_some() {
                found = true;
                tracing::info!(copy = %copy, "partial replica {name} dropped: {why}");
                let end = ReplicaEnd::new(TrailResult::Failed, why);
                self.trail_replica_end(&origin, group, p.started, &image, end);
            }
        }
        Ok(found)
    }

    /// Unacknowledged import events of a container `scope` sees.
    pub fn events(
        &self,
        scope: &Scope,
        container: &ContainerName,
        max: u32,
        after: Option<u64>,
    ) -> Result<Vec<ImportEvent>> {
        let rec = self.import_container(scope, container)?;
        let max = max.clamp(1, MAX_EVENTS_PER_POLL) as usize;
        self.catalog.events(rec.id, container, max, after)
    }

    /// Acknowledges import events of a container `scope` sees.
    pub fn events_ack(&self, scope: &Scope, container: &ContainerName, ids: &[u64]) -> Result<()> {
        let rec = self.import_container(scope, container)?;
        self.catalog.ack_events(rec.id, ids)
    }

    fn import_container(
        &self,
        scope: &Scope,
        container: &ContainerName,
    ) -> Result<ContainerRecord> {
        let rec = self.container(scope, container)?;
        if !rec.import {
            return Err(StoreError::Invalid(format!(
                "container {container} raises no import events (it was not created with --import)"
            )));
        }
        Ok(rec)
    }

    /// Whether the import events of these copies were acknowledged.
    pub fn import_states(&self, scope: &Scope, copies: &[CopyId]) -> Result<Vec<ImportState>> {
        self.catalog.import_states(
            copies,
            |cid| matches!(self.catalog.container_place(cid), Ok(Some((g, _))) if scope.sees(&g)),
        )
    }

    /// A committed image for a copy job (the server's own access, no user).
    pub fn copy_source(
        &self,
        group: &GroupName,
        container: &ContainerName,
        name: &ImageName,
    ) -> Result<(ReadableImage, ContainerRecord)> {
        let bare = container.split().1;
        let rec = self
            .catalog
            .container(group, &bare)?
            .ok_or_else(|| StoreError::NotFound(format!("container {container} is gone")))?;
        let img = self.catalog.image(rec.id, name)?.ok_or_else(|| {
            StoreError::NotFound(format!(
                "image {name} is not (or no longer) in container {container}"
            ))
        })?;
        let readable = self.readable(&rec, container.clone(), name.clone(), img)?;
        Ok((readable, rec))
    }

    /// The container `name` as `scope` sees it: its record, for the layers
    /// above (a copy's source, the replication policy after a commit).
    pub fn container_record(&self, scope: &Scope, name: &ContainerName) -> Result<ContainerRecord> {
        self.container(scope, name)
    }
}

fn show(c: &ChunkParams) -> String {
    format!("min {} / avg {} / max {} bytes", c.min, c.avg, c.max)
}
