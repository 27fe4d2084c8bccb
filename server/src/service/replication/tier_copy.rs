//! One attempt at a cloud tier copy: the same job as a copy to a partner
//! (record, queue, retries, cancel, trail), but the target is a replica
//! container of a cloud storage group on this server, written through the
//! engine's replica path. Only the chunks the cloud group lacks are read
//! and stored; the engine verifies each against its id, as it does for
//! chunks that arrive from a partner.

use std::sync::atomic::Ordering;

use tern_core::names::UserName;
use tern_core::wire::{ChunkRef, ContainerSettings, CopyId};

use super::copy::{origin, Failure};
use super::{CopyRecord, Live, Replicator};
use crate::store::{NewReplica, ReadableImage, ReplicaStart, Scope, StoreError, WriterId};

/// Recipe entries asked about at once.
const BATCH: usize = 1024;

/// The user a tier copy's partial replica belongs to.
const OWNER: &str = "admin";

/// A failure of the cloud side: the bucket may come back; a refusal
/// (a chunk that fails its check, a name taken) would come again.
fn at_cloud(e: StoreError) -> Failure {
    match e {
        StoreError::Invalid(_) | StoreError::AlreadyExists(_) => {
            Failure::Permanent(format!("in the cloud group: {e}"))
        }
        e => Failure::Transient(format!("in the cloud group: {e}")),
    }
}

/// Copies the image of `rec` into its cloud container; Ok once committed.
pub fn attempt(r: &Replicator, id: CopyId, rec: &CopyRecord, live: &Live) -> Result<(), Failure> {
    let (img, container) = r
        .store
        .copy_source(&rec.group, &rec.container, &rec.image)?;
    let policy_shaping = container.tier.as_ref().and_then(|p| p.shaping.clone());
    *super::lock(&live.shaped) = r.shaper.job(policy_shaping.as_deref());
    ensure_cloud_container(r, rec)?;
    let owner = UserName::new(OWNER).map_err(|e| Failure::Permanent(e.to_string()))?;
    let replica = NewReplica {
        container: rec.to_container.clone(),
        name: rec.to_name.clone(),
        props: img.info.props.clone(),
        origin: origin(r, id, rec, &img),
        chunking: container.chunking,
        zstd_level: container.zstd_level,
    };
    let (w, from) = match r
        .store
        .replica_begin(&Scope::Every, &owner, replica, true)
        .map_err(at_cloud)?
    {
        ReplicaStart::Committed(_) => {
            live.done.fetch_max(img.info.size, Ordering::Relaxed);
            return Ok(());
        }
        ReplicaStart::Write(w) => (w, 0),
        ReplicaStart::Resume { writer, offset } => {
            tracing::info!(copy = %id, "continuing the tier copy at {offset} of {} bytes", img.info.size);
            (writer, offset)
        }
    };
    let written = write_recipe(r, &img, w, live, from)
        .and_then(|()| r.store.image_commit(w).map(|_| ()).map_err(at_cloud));
    if written.is_err() {
        // Kept for the next attempt (or dropped by the scheduler when the
        // copy ends for good), as a partner keeps a broken session's.
        r.store.image_detach(w);
    }
    written
}

/// Creates the cloud container on first use: a replica container, so that
/// only tier copies (and replication) write into it.
fn ensure_cloud_container(r: &Replicator, rec: &CopyRecord) -> Result<(), Failure> {
    let (Some(group), bare) = rec.to_container.split() else {
        return Err(Failure::Permanent(format!(
            "the cloud container {} names no storage group",
            rec.to_container
        )));
    };
    let settings = ContainerSettings {
        replica: true,
        ..ContainerSettings::default()
    };
    match r.store.container_create(&group, &bare, &settings) {
        Ok(_) => {
            tracing::info!(container = %rec.to_container, "cloud tier container created");
            Ok(())
        }
        Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(at_cloud(e)),
    }
}

/// Announces the image's recipe from `from` on and stores what the cloud
/// group lacks, read as stored here.
fn write_recipe(
    r: &Replicator,
    img: &ReadableImage,
    w: WriterId,
    live: &Live,
    from: u64,
) -> Result<(), Failure> {
    let mut offset = from;
    live.done.fetch_max(offset, Ordering::Relaxed);
    while offset < img.info.size {
        if live.cancelled.load(Ordering::SeqCst) {
            return Err(Failure::Cancelled);
        }
        let entries = r.store.open_recipe(img, offset, BATCH)?;
        let Some(last) = entries.last() else { break };
        if entries[0].offset != offset {
            return Err(Failure::Permanent(format!(
                "the recipe of {} has no chunk at offset {offset}",
                img.info.name
            )));
        }
        offset = last.offset + u64::from(last.len);
        let refs: Vec<ChunkRef> = entries
            .iter()
            .map(|e| ChunkRef {
                id: e.id,
                len: e.len,
            })
            .collect();
        let missing = r.store.image_append(w, &refs).map_err(at_cloud)?;
        for i in missing {
            let e = entries.get(i as usize).ok_or_else(|| {
                Failure::Permanent(format!("the engine asked for chunk {i} of a batch"))
            })?;
            let (_, loc, stored) = r.store.read_chunk(img, e.offset)?;
            let n = stored.len() as u64;
            let job = super::lock(&live.shaped).clone();
            r.shaper
                .acquire(job.as_deref(), n, &|| live.cancelled.load(Ordering::SeqCst));
            r.store
                .image_put_chunk(w, &e.id, loc.codec, e.len, &stored)
                .map_err(at_cloud)?;
            live.sent_bytes.fetch_add(n, Ordering::Relaxed);
            live.sent_chunks.fetch_add(1, Ordering::Relaxed);
        }
        let logical: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
        live.done.fetch_add(logical, Ordering::Relaxed);
    }
    if offset != img.info.size {
        return Err(Failure::Permanent(format!(
            "image {} changed during the copy ({offset} of {} bytes in its recipe)",
            img.info.name, img.info.size
        )));
    }
    Ok(())
}
