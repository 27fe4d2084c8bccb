//! One attempt at a copy: the source reads the image's recipe from its own
//! catalog, announces it to the target in batches (several in flight), and
//! sends the chunks the target lacks exactly as they are stored.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use tern_agent::{ClientError, PendingNeed, ReplicaSpec, ReplicaStart, ReplicaWriter};
use tern_core::wire::{ChunkRef, CopyId, RecipeEntry, ReplicaOrigin};

use super::CopyRecord;
use super::{partner, Live, Replicator};
use crate::store::{ReadableImage, StoreError};

/// Recipe entries per `ImageAppend` (the target takes up to 4096).
const BATCH: usize = 1024;
/// Announced batches awaiting the target's answer.
const WINDOW: usize = 4;

/// How an attempt ended, when it did not commit.
pub enum Failure {
    /// The partner could not be reached: it says nothing about the copy,
    /// and the partner's delay decides when any of its copies tries again.
    Unreachable(String),
    /// Worth another attempt later (the link, the target's restart).
    Transient(String),
    /// Another attempt would fail the same way.
    Permanent(String),
    /// A user cancelled the copy.
    Cancelled,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Permanent(format!("on this server: {e}"))
    }
}

/// Where copy `id` of `rec` comes from, as its target records it.
pub fn origin(r: &Replicator, id: CopyId, rec: &CopyRecord, img: &ReadableImage) -> ReplicaOrigin {
    ReplicaOrigin {
        copy: id,
        server: r.me.server_id.clone(),
        container: rec.container.clone(),
        image: rec.image.clone(),
        lock: img.lock,
    }
}

fn from_client(e: ClientError, live: &Live) -> Failure {
    if live.cancelled.load(Ordering::SeqCst) {
        return Failure::Cancelled;
    }
    let text = format!("at the partner: {e}");
    if partner::is_transient(&e) {
        Failure::Transient(text)
    } else {
        Failure::Permanent(text)
    }
}

/// Copies the image of `rec`; Ok once the target has committed it.
pub fn attempt(r: &Replicator, id: CopyId, rec: &CopyRecord, live: &Live) -> Result<(), Failure> {
    let (img, container) = r
        .store
        .copy_source(&rec.group, &rec.container, &rec.image)?;
    let partner = r
        .tables()
        .partner(&rec.partner)?
        .ok_or_else(|| Failure::Permanent(format!("partner {} was removed", rec.partner)))?;
    *super::lock(&live.shaped) = r.shaper.job(partner.settings.shaping.as_deref());
    let client = partner::connect(&partner, &r.me).map_err(|e| {
        if partner::is_unreachable(&e) && !live.cancelled.load(Ordering::SeqCst) {
            Failure::Unreachable(format!("at the partner: {e}"))
        } else {
            from_client(e, live)
        }
    })?;
    *super::lock(&live.client) = Some(client.clone());
    if live.cancelled.load(Ordering::SeqCst) {
        return Err(Failure::Cancelled);
    }
    let spec = ReplicaSpec {
        container: rec.to_container.clone(),
        name: rec.to_name.clone(),
        props: img.info.props.clone(),
        origin: origin(r, id, rec, &img),
        chunking: container.chunking,
        zstd_level: container.zstd_level,
    };
    let writer = match client
        .replica_create(spec)
        .map_err(|e| from_client(e, live))?
    {
        ReplicaStart::Committed(_) => {
            live.done.fetch_max(img.info.size, Ordering::Relaxed);
            return Ok(());
        }
        ReplicaStart::Write(w) => w,
    };
    let from = writer.resume_offset();
    if from > 0 {
        tracing::info!(copy = %id, "continuing the copy at {from} of {} bytes", img.info.size);
    }
    send_recipe(r, &img, &writer, live, from)?;
    writer.commit().map_err(|e| from_client(e, live))?;
    Ok(())
}

/// Announces every recipe entry and sends what the target asks for.
fn send_recipe(
    r: &Replicator,
    img: &ReadableImage,
    w: &ReplicaWriter,
    live: &Live,
    from: u64,
) -> Result<(), Failure> {
    let mut window: VecDeque<(PendingNeed, Vec<RecipeEntry>)> = VecDeque::new();
    let mut offset = from;
    if offset > img.info.size {
        // Dropping the writer aborts the replica: the next attempt starts over.
        return Err(Failure::Transient(format!(
            "the target holds {offset} bytes of a {}-byte image; starting over",
            img.info.size
        )));
    }
    live.done.fetch_max(offset, Ordering::Relaxed);
    while offset < img.info.size {
        let entries = r.store.open_recipe(img, offset, BATCH)?;
        let Some(last) = entries.last() else { break };
        if entries[0].offset != offset {
            if offset == from {
                return Err(Failure::Transient(format!(
                    "the target holds {from} bytes, not a chunk boundary of the image; \
                     starting over"
                )));
            }
            return Err(Failure::Permanent(format!(
                "the recipe of {} has no chunk at offset {offset}",
                img.info.name
            )));
        }
        offset = last.offset + u64::from(last.len);
        let refs = entries
            .iter()
            .map(|e| ChunkRef {
                id: e.id,
                len: e.len,
            })
            .collect();
        let pending = w.announce(refs).map_err(|e| from_client(e, live))?;
        window.push_back((pending, entries));
        if window.len() >= WINDOW {
            if let Some((p, e)) = window.pop_front() {
                settle(r, img, w, live, p, &e)?;
            }
        }
    }
    while let Some((p, e)) = window.pop_front() {
        settle(r, img, w, live, p, &e)?;
    }
    // The image may have been deleted (its recipe with it) during the copy:
    // a short recipe must not commit as a short replica.
    if offset != img.info.size {
        return Err(Failure::Permanent(format!(
            "image {} changed during the copy ({offset} of {} bytes in its recipe)",
            img.info.name, img.info.size
        )));
    }
    Ok(())
}

/// Waits for a batch's answer and sends the chunks it names, as stored.
fn settle(
    r: &Replicator,
    img: &ReadableImage,
    w: &ReplicaWriter,
    live: &Live,
    pending: PendingNeed,
    entries: &[RecipeEntry],
) -> Result<(), Failure> {
    let missing = pending.wait().map_err(|e| from_client(e, live))?;
    for i in missing {
        let e = &entries[i as usize];
        let (_, loc, stored) = r.store.read_chunk(img, e.offset)?;
        let n = stored.len() as u64;
        let job = super::lock(&live.shaped).clone();
        r.shaper
            .acquire(job.as_deref(), n, &|| live.cancelled.load(Ordering::SeqCst));
        w.send_chunk(e.id, loc.codec, e.len, stored)
            .map_err(|e| from_client(e, live))?;
        live.sent_bytes.fetch_add(n, Ordering::Relaxed);
        live.sent_chunks.fetch_add(1, Ordering::Relaxed);
    }
    let logical: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
    live.done.fetch_add(logical, Ordering::Relaxed);
    Ok(())
}
