//! The image write path: begin, append (dedup), put chunk, write raw
//! (passthrough), commit, abort.
//!
//! A chunk is written to a pack as it arrives and recorded in the pending map;
//! commit syncs the packs and then records the pending index entries, the
//! image and its recipe in one catalog transaction. Nothing becomes visible
//! before that commit, so a crash leaves committed images intact and no half
//! image.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tern_core::codec::{Compressor, Decoder};
use tern_core::wire::{ChunkRef, CopyId, ImageInfo, ReplicaOrigin, TrailEntry, WriteStats};
use tern_core::{ChunkId, Codec, ContainerName, ImageName, StreamChunker};

use super::catalog::NewImage;
use super::records::{chunk_key, now_unix, ContainerRecord};
use super::{lock, Result, Store, StoreError, User};

thread_local! {
    /// Checks received chunks; one per thread keeps its zstd context warm.
    static VERIFIER: std::cell::RefCell<Decoder> = std::cell::RefCell::new(Decoder::new());
}

/// Identifies an image being written.
pub type WriterId = u64;

/// An image being written, behind its own lock (see the lock order in `mod.rs`).
pub(super) struct OpenImage {
    container_id: u64,
    container: ContainerName,
    pub(super) group: u32,
    name: ImageName,
    props: Vec<u8>,
    /// (offset, chunk id, length) in image order.
    pub(super) recipe: Vec<(u64, ChunkId, u32)>,
    size: u64,
    /// Chunks asked of the writer and not yet received, with their lengths.
    missing: HashMap<ChunkId, u32>,
    stats: WriteStats,
    max_chunk: u32,
    passthrough: Option<Passthrough>,
    /// A replica being written by a source server.
    pub(super) replica: Option<ReplicaWrite>,
}

/// What the store keeps of a replica being written, for its commit.
pub(super) struct ReplicaWrite {
    pub(super) origin: ReplicaOrigin,
    /// The container raises import events.
    pub(super) import: bool,
    pub(super) started: u64,
}

/// The server's half of a passthrough image: it chunks and compresses.
struct Passthrough {
    chunker: StreamChunker,
    compressor: Compressor,
}

/// An entry of the open set: what `image_begin` checks without taking the
/// image's own lock (which passthrough CPU work may hold for a while).
pub(super) struct OpenEntry {
    pub(super) container_id: u64,
    name: ImageName,
    /// The copy writing it, for a replica: a retry of the copy replaces it.
    copy: Option<CopyId>,
    pub(super) image: Arc<Mutex<OpenImage>>,
}

fn no_such_image() -> StoreError {
    StoreError::NotFound("no such image being written".into())
}

impl Store {
    /// Opens a new image for writing.
    pub fn image_begin(
        &self,
        user: &User,
        container: &ContainerName,
        name: &ImageName,
        props: Vec<u8>,
        passthrough: bool,
    ) -> Result<(WriterId, ContainerRecord)> {
        if props.len() > tern_core::wire::MAX_PROPS_LEN {
            return Err(StoreError::Invalid(format!(
                "image properties of {} bytes; the limit is {}",
                props.len(),
                tern_core::wire::MAX_PROPS_LEN
            )));
        }
        let rec = self.container(user, container)?;
        if rec.replica {
            return Err(StoreError::Denied(format!(
                "container {container} is a replica container: only replication writes into it \
                 (promote it to write into it)"
            )));
        }
        let id = self.open_writer(&rec, container, name, props, passthrough, None)?;
        Ok((id, rec))
    }

    /// Adds an image to the open set, after checking that the name is free
    /// and the container's stream limit; a replica of the same copy being
    /// written (a retry after an outage or a restart of the source) is
    /// dropped for this one.
    pub(super) fn open_writer(
        &self,
        rec: &ContainerRecord,
        container: &ContainerName,
        name: &ImageName,
        props: Vec<u8>,
        passthrough: bool,
        replica: Option<ReplicaWrite>,
    ) -> Result<WriterId> {
        let group = self.group_of(rec)?;
        if self.catalog.image(rec.id, name)?.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "image {name} already exists in container {container}"
            )));
        }
        let passthrough = if passthrough {
            Some(Passthrough {
                chunker: StreamChunker::new(rec.chunking),
                compressor: Compressor::new(rec.zstd_level)?,
            })
        } else {
            None
        };
        let image = OpenImage {
            container_id: rec.id,
            container: container.clone(),
            group,
            name: name.clone(),
            props,
            recipe: Vec::new(),
            size: 0,
            missing: HashMap::new(),
            stats: WriteStats::default(),
            max_chunk: rec.chunking.max,
            passthrough,
            replica,
        };
        let copy = image.replica.as_ref().map(|r| r.origin.copy);
        let mut open = lock(&self.open);
        if copy.is_some() {
            open.retain(|_, o| !(o.container_id == rec.id && o.name == *name && o.copy == copy));
        }
        let mut streams = 0;
        for other in open.values() {
            if other.container_id != rec.id {
                continue;
            }
            if other.name == *name {
                return Err(StoreError::AlreadyExists(format!(
                    "image {name} is already being written in container {container}"
                )));
            }
            streams += 1;
        }
        if rec.stream_limit > 0 && streams >= rec.stream_limit as usize {
            return Err(StoreError::Busy(format!(
                "container {container} allows {} images written at once; try again later",
                rec.stream_limit
            )));
        }
        let id = self.next_writer.fetch_add(1, Ordering::SeqCst);
        open.insert(
            id,
            OpenEntry {
                container_id: rec.id,
                name: name.clone(),
                copy,
                image: Arc::new(Mutex::new(image)),
            },
        );
        Ok(id)
    }

    fn open_image(&self, w: WriterId) -> Result<Arc<Mutex<OpenImage>>> {
        lock(&self.open)
            .get(&w)
            .map(|e| e.image.clone())
            .ok_or_else(no_such_image)
    }

    /// Appends chunks to an image's recipe; returns the indexes of those the store lacks.
    pub fn image_append(&self, w: WriterId, entries: &[ChunkRef]) -> Result<Vec<u32>> {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let image = self.open_image(w)?;
        let mut img = lock(&image);
        if img.passthrough.is_some() {
            return Err(StoreError::Invalid(
                "a passthrough image takes raw data, not chunks".into(),
            ));
        }
        let group = img.group;
        let index = self.catalog.index_snapshot()?;
        let pending = lock(&self.pending);
        let mut missing = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if e.len == 0 || e.len > img.max_chunk {
                return Err(StoreError::Invalid(format!(
                    "chunk of {} bytes is outside this container's limit of 1..={}",
                    e.len, img.max_chunk
                )));
            }
            let offset = img.size;
            img.recipe.push((offset, e.id, e.len));
            img.size += u64::from(e.len);
            img.stats.chunks += 1;
            if img.missing.contains_key(&e.id) {
                continue;
            }
            let key = chunk_key(group, &e.id);
            if pending.contains_key(&key) || index.contains(&key)? {
                continue;
            }
            img.missing.insert(e.id, e.len);
            missing.push(i as u32);
        }
        Ok(missing)
    }

    /// Stores a chunk the writer was asked for, after checking it is what its id says.
    pub fn image_put_chunk(
        &self,
        w: WriterId,
        id: &ChunkId,
        codec: Codec,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<()> {
        let image = self.open_image(w)?;
        let group = {
            let img = lock(&image);
            match img.missing.get(id) {
                Some(&len) if len == raw_len => img.group,
                Some(&len) => {
                    return Err(StoreError::Invalid(format!(
                        "chunk {id} announced with {len} bytes but sent with {raw_len}"
                    )))
                }
                None => return Err(StoreError::Invalid(format!("chunk {id} was not asked for"))),
            }
        };
        // Verify before storing: a client must not be able to plant bytes under
        // another chunk's id and so corrupt other images through dedup.
        VERIFIER
            .with_borrow_mut(|d| d.verify(id, codec, raw_len, bytes))
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let stored = self.store_chunk(group, id, codec, raw_len, bytes)?;
        let mut img = lock(&image);
        img.missing.remove(id);
        if stored {
            img.stats.new_chunks += 1;
            img.stats.new_stored_bytes += bytes.len() as u64;
        }
        Ok(())
    }

    /// Passthrough: takes raw image bytes; the store chunks, dedups and compresses them.
    pub fn image_write_raw(&self, w: WriterId, data: &[u8]) -> Result<()> {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let image = self.open_image(w)?;
        // Only this image's lock is held while it is chunked and compressed:
        // other writers go on in parallel.
        let mut img = lock(&image);
        self.cut_raw(&mut img, data, false)
    }

    /// Chunks what the passthrough chunker holds (all of it when `last`) and
    /// stores the chunks the store lacks. The caller holds the gate.
    fn cut_raw(&self, img: &mut OpenImage, data: &[u8], last: bool) -> Result<()> {
        let group = img.group;
        let Some(pt) = img.passthrough.as_mut() else {
            return Err(StoreError::Invalid(
                "raw data sent to an image opened for dedup writes".into(),
            ));
        };
        pt.chunker.push(data);
        if last {
            pt.chunker.finish();
        }
        let mut chunks = Vec::new();
        while let Some(c) = pt.chunker.next_chunk() {
            let id = ChunkId::of(c);
            let enc = if self.has_chunk(group, &id)? {
                None
            } else {
                Some(pt.compressor.encode(c))
            };
            chunks.push((id, c.len() as u32, enc));
        }
        for (id, len, enc) in chunks {
            let offset = img.size;
            img.recipe.push((offset, id, len));
            img.size += u64::from(len);
            img.stats.chunks += 1;
            if let Some(enc) = enc {
                if self.store_chunk(group, &id, enc.codec, enc.raw_len, &enc.bytes)? {
                    img.stats.new_chunks += 1;
                    img.stats.new_stored_bytes += enc.bytes.len() as u64;
                }
            }
        }
        Ok(())
    }

    fn has_chunk(&self, group: u32, id: &ChunkId) -> Result<bool> {
        let key = chunk_key(group, id);
        if lock(&self.pending).contains_key(&key) {
            return Ok(true);
        }
        self.catalog.has_chunk(&key)
    }

    /// Appends a chunk to its group's pack unless the store has it; true if written.
    fn store_chunk(
        &self,
        group: u32,
        id: &ChunkId,
        codec: Codec,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<bool> {
        let key = chunk_key(group, id);
        // Under the appender's lock, so two writers of one chunk store it once.
        let mut appender = self.packs.appender();
        if lock(&self.pending).contains_key(&key) || self.catalog.has_chunk(&key)? {
            return Ok(false);
        }
        let loc = appender.append(group, id, codec, raw_len, bytes)?;
        lock(&self.pending).insert(key, loc);
        Ok(true)
    }

    /// Commits an image: syncs packs, then records index, image and recipe in
    /// one transaction. The image is gone from the open set either way.
    pub fn image_commit(&self, w: WriterId) -> Result<(ImageInfo, WriteStats)> {
        // Held from here to the catalog commit: GC must not sweep chunks this
        // image refers to once it has left the open set.
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
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
        let durable: Vec<_> = {
            let mut appender = self.packs.appender();
            appender.sync_all()?;
            lock(&self.pending).iter().map(|(k, v)| (*k, *v)).collect()
        };
        let created = now_unix();
        let trail = img.replica.as_ref().map(|r| {
            let mut t = target_trail(r, &img.container, &img.name, "ok", String::new());
            t.ended = created;
            t.logical_bytes = img.size;
            t.sent_bytes = img.stats.new_stored_bytes;
            t.sent_chunks = img.stats.new_chunks;
            t
        });
        self.catalog.commit_image(
            &NewImage {
                container_id: img.container_id,
                container: &img.container,
                name: &img.name,
                size: img.size,
                props: &img.props,
                created,
                recipe: &img.recipe,
                replica: img.replica.as_ref().map(|r| &r.origin).zip(trail.as_ref()),
                import: img.replica.as_ref().is_some_and(|r| r.import),
            },
            &durable,
        )?;
        let mut pending = lock(&self.pending);
        for (k, loc) in durable {
            if pending.get(&k) == Some(&loc) {
                pending.remove(&k);
            }
        }
        let info = ImageInfo {
            container: img.container.clone(),
            name: img.name.clone(),
            size: img.size,
            chunks: img.recipe.len() as u64,
            props: std::mem::take(&mut img.props),
            created,
        };
        let stats = WriteStats {
            logical_bytes: img.size,
            ..img.stats
        };
        Ok((info, stats))
    }

    /// Drops the replica a copy is writing, if there is one open.
    pub fn replica_abort(&self, copy: CopyId) {
        let ids: Vec<WriterId> = lock(&self.open)
            .iter()
            .filter(|(_, o)| o.copy == Some(copy))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.image_abort(id);
        }
    }

    /// Drops an image being written; chunks it stored are left for GC. A
    /// replica's end goes into the trail.
    pub fn image_abort(&self, w: WriterId) {
        let Some(entry) = lock(&self.open).remove(&w) else {
            return;
        };
        let img = lock(&entry.image);
        if let Some(r) = &img.replica {
            let reason = "the source ended the copy, or its session ended, before the commit";
            let t = target_trail(r, &img.container, &img.name, "failed", reason.into());
            if let Err(e) = self.catalog.push_trail(&t) {
                tracing::warn!("recording an aborted replica in the trail: {e}");
            }
        }
    }
}

/// The target side's trail entry of a replica.
fn target_trail(
    r: &ReplicaWrite,
    container: &ContainerName,
    name: &ImageName,
    result: &str,
    reason: String,
) -> TrailEntry {
    TrailEntry {
        copy: r.origin.copy,
        side: "target".into(),
        peer: r.origin.server.clone(),
        image: format!("{container}/{name}"),
        started: r.started,
        ended: now_unix(),
        logical_bytes: 0,
        sent_bytes: 0,
        sent_chunks: 0,
        result: result.into(),
        reason,
    }
}
