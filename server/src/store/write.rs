//! The image write path: begin, append (dedup), put chunk, write raw
//! (passthrough). Checkpoints, commit, resume and abort are in `partial.rs`.
//!
//! An image has a partial record in the catalog from its first byte. A chunk
//! is written to a pack as it arrives and recorded in the pending map; the
//! recipe grows in memory. A checkpoint syncs the packs and records the
//! pending index entries, the recipe so far and the durable size in one
//! catalog transaction, so memory stays bounded whatever the image's size;
//! the commit is the last checkpoint and makes the image visible. A crash
//! leaves committed images intact, no half image, and the partial image
//! resumable from its last checkpoint.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tern_core::codec::{Compressor, Decoder};
use tern_core::names::{GroupName, UserName};
use tern_core::wire::{ChunkRef, CopyId, ReplicaOrigin, WriteStats};
use tern_core::{ChunkId, ChunkParams, Codec, ContainerName, ImageName, StreamChunker};

use super::records::{chunk_key, now_unix, ChunkKey, ContainerRecord, PartialRecord};
use super::{lock, Owner, Result, Scope, Store, StoreError};

thread_local! {
    /// Checks received chunks; one per thread keeps its zstd context warm.
    pub(super) static VERIFIER: std::cell::RefCell<Decoder> = std::cell::RefCell::new(Decoder::new());
}

/// Checks a batch of announced entries against the container's chunk sizes
/// and against the lengths already known for their chunks (`stored_len`:
/// what the store holds). Returns, per entry, whether the store holds its
/// chunk (entries whose chunk the image still awaits say false).
fn check_batch(
    img: &OpenImage,
    entries: &[ChunkRef],
    stored_len: impl Fn(&ChunkKey) -> Result<Option<u32>>,
) -> Result<Vec<bool>> {
    let mut seen: HashMap<ChunkId, (u32, bool)> = HashMap::new();
    // A replica's recipe is its source image's, whose extents may have
    // left short chunks anywhere.
    let mut short_tail = img.short_tail && img.replica.is_none();
    let mut stored = Vec::with_capacity(entries.len());
    for e in entries {
        if short_tail {
            return Err(StoreError::Invalid(format!(
                "a chunk shorter than this container's minimum of {} bytes was followed by \
                 another: only an image's last chunk may be short",
                img.min_chunk
            )));
        }
        if e.len == 0 || e.len > img.max_chunk {
            return Err(StoreError::Invalid(format!(
                "chunk of {} bytes is outside this container's limit of 1..={}",
                e.len, img.max_chunk
            )));
        }
        short_tail = e.len < img.min_chunk && img.replica.is_none();
        let known = match (seen.get(&e.id), img.missing.get(&e.id)) {
            (Some(&known), _) => known,
            (None, Some(&len)) => (len, false),
            (None, None) => match stored_len(&chunk_key(img.group, &e.id))? {
                Some(len) => (len, true),
                None => (e.len, false),
            },
        };
        if known.0 != e.len {
            return Err(StoreError::Invalid(format!(
                "chunk {} announced as {} bytes, but it is {} bytes long",
                e.id, e.len, known.0
            )));
        }
        seen.insert(e.id, known);
        stored.push(known.1);
    }
    Ok(stored)
}

/// Recipe entries an open image may hold in memory past its last
/// checkpoint (about 48 bytes each): a checkpoint makes durable only up to
/// the first chunk still awaited, so a writer that never sends one could
/// otherwise grow the server without bound.
const MAX_UNDURABLE_ENTRIES: usize = 1 << 20;

/// Identifies an image being written.
pub type WriterId = u64;

/// What the store may ask about the session writing an image: a resume
/// takes over an image whose session does not answer.
pub trait Liveness: Send + Sync {
    /// The session has a connection now (no waiting).
    fn connected(&self) -> bool;
    /// The session is connected and its client answers: it may wait a
    /// short, fixed bound to find out (a client that vanished without
    /// closing its connections leaves them open and silent).
    fn answers(&self) -> bool;
}

/// The liveness of the session writing an image.
pub type SessionProbe = Arc<dyn Liveness>;

/// An image being written, behind its own lock (see the lock order in `mod.rs`).
pub(super) struct OpenImage {
    pub(super) container_id: u64,
    pub(super) container: ContainerName,
    pub(super) group: u32,
    pub(super) name: ImageName,
    /// What the catalog holds of it, as of the last checkpoint.
    pub(super) durable: PartialRecord,
    /// (offset, chunk id, length) in image order, since the last checkpoint.
    pub(super) recipe: Vec<(u64, ChunkId, u32)>,
    pub(super) size: u64,
    /// Chunks asked of the writer and not yet received, with their lengths.
    pub(super) missing: HashMap<ChunkId, u32>,
    pub(super) stats: WriteStats,
    /// The container's chunk size limits: only an image's last chunk may
    /// be shorter than `min_chunk`.
    min_chunk: u32,
    max_chunk: u32,
    /// A chunk shorter than the minimum was announced: it must be the last,
    /// or the last before an extent.
    pub(super) short_tail: bool,
    /// The container's zstd level, for chunks the server makes (extent edges).
    pub(super) zstd_level: i32,
    /// The plaintext of the source chunk the last extent cut, by id: the
    /// next extent often cuts the same one.
    pub(super) last_cut: Option<(ChunkId, Vec<u8>)>,
    pub(super) passthrough: Option<Passthrough>,
    /// A replica being written by a source server.
    pub(super) replica: Option<ReplicaWrite>,
    pub(super) last_checkpoint: Instant,
    pub(super) last_write: Instant,
    /// Logical bytes that arrived (or were found stored) since the last
    /// checkpoint: what a checkpoint now would make durable. Not `size`,
    /// which counts announced chunks still awaited (a copy announces
    /// hundreds of MiB ahead).
    pub(super) received: u64,
    /// Recipe entries announced since the last checkpoint: checkpoints are
    /// due by count too, so that tiny entries cannot pile up in memory.
    pub(super) announced: usize,
}

impl OpenImage {
    /// The recipe entries no checkpoint has written yet.
    pub(super) fn unflushed(&self) -> &[(u64, ChunkId, u32)] {
        &self.recipe
    }
}

/// What the store keeps of a replica being written, for its commit.
pub(super) struct ReplicaWrite {
    pub(super) origin: ReplicaOrigin,
    /// The replica container's storage group (who sees its trail entries).
    pub(super) group: GroupName,
    /// The container raises import events.
    pub(super) import: bool,
    pub(super) started: u64,
}

/// The server's half of a passthrough image: it chunks and compresses.
pub(super) struct Passthrough {
    pub(super) chunker: StreamChunker,
    pub(super) chunking: ChunkParams,
    compressor: Compressor,
}

/// An entry of the open set: what `image_begin` checks without taking the
/// image's own lock (which passthrough CPU work may hold for a while).
pub(super) struct OpenEntry {
    pub(super) container_id: u64,
    /// The image's storage group, whose gate its operations hold.
    pub(super) group: u32,
    pub(super) name: ImageName,
    /// The copy writing it, for a replica: a retry of the copy replaces it.
    pub(super) copy: Option<CopyId>,
    pub(super) owner: UserName,
    /// Whether the writing session is connected (none: treated as gone).
    pub(super) probe: Option<SessionProbe>,
    pub(super) image: Arc<Mutex<OpenImage>>,
}

pub(super) fn no_such_image() -> StoreError {
    StoreError::NotFound("no such image being written".into())
}

impl Store {
    /// Opens a new image for writing, begun by `owner`.
    pub fn image_begin(
        &self,
        scope: &Scope,
        owner: &UserName,
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
        let rec = self.container(scope, container)?;
        if rec.replica {
            return Err(StoreError::Denied(format!(
                "container {container} is a replica container: only replication writes into it \
                 (promote it to write into it)"
            )));
        }
        // A writer killed before it could say so (its connections silent or
        // half open) still holds the name: its image is taken over, as a
        // resume would, and this new one replaces it. One whose client
        // answers keeps it, and so does another user's ("already being
        // written", below).
        match self.take_over(Owner::Only(owner), rec.id, container, name) {
            Ok(_) | Err(StoreError::Denied(_) | StoreError::Busy(_)) => {}
            Err(e) => return Err(e),
        }
        let id = self.open_writer(&rec, container, name, props, passthrough, None, owner)?;
        Ok((id, rec))
    }

    /// Adds an image to the open set and records it as a partial image,
    /// after checking that the name is free and the container's stream
    /// limit; a replica of the same copy being written (a retry after an
    /// outage or a restart of the source) is dropped for this one, and so is
    /// an incomplete image of that name (the client asked for a new image).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_writer(
        &self,
        rec: &ContainerRecord,
        container: &ContainerName,
        name: &ImageName,
        props: Vec<u8>,
        passthrough: bool,
        replica: Option<ReplicaWrite>,
        owner: &UserName,
    ) -> Result<WriterId> {
        let group = self.group_of(rec)?;
        if self.catalog.image(rec.id, name)?.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "image {name} already exists in container {container}"
            )));
        }
        let copy = replica.as_ref().map(|r| r.origin.copy);
        // Begins and resumes one at a time: the open set and the partial
        // records change together.
        let _begin = lock(&self.begin_lock);
        {
            let mut open = lock(&self.open);
            if copy.is_some() {
                open.retain(|_, o| {
                    !(o.container_id == rec.id && o.name == *name && o.copy == copy)
                });
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
        }
        let started = now_unix();
        let (durable, replaced) = self
            .catalog
            .begin_partial(rec.id, name, |id| PartialRecord {
                id,
                size: 0,
                chunks: 0,
                props,
                started,
                checkpointed: started,
                owner: owner.clone(),
                passthrough,
                chunking: rec.chunking,
                new_chunks: 0,
                new_stored_bytes: 0,
                origin: replica.as_ref().map(|r| r.origin.clone()),
                held: Vec::new(),
            })?;
        if let Some(old) = replaced {
            tracing::info!(
                "incomplete image {container}/{name} ({} bytes durable) replaced by a new one",
                old.size
            );
        }
        let image = self.open_image_state(rec, container, name, group, durable, replica)?;
        Ok(self.insert_open(rec.id, name, copy, owner, image))
    }

    /// The in-memory state of an image whose durable part is `durable`.
    pub(super) fn open_image_state(
        &self,
        rec: &ContainerRecord,
        container: &ContainerName,
        name: &ImageName,
        group: u32,
        durable: PartialRecord,
        replica: Option<ReplicaWrite>,
    ) -> Result<OpenImage> {
        let passthrough = if durable.passthrough {
            Some(Passthrough {
                chunker: StreamChunker::new(rec.chunking),
                chunking: rec.chunking,
                compressor: Compressor::new(rec.zstd_level)?,
            })
        } else {
            None
        };
        Ok(OpenImage {
            container_id: rec.id,
            container: container.clone(),
            group,
            name: name.clone(),
            recipe: Vec::new(),
            size: durable.size,
            missing: HashMap::new(),
            stats: WriteStats {
                chunks: durable.chunks,
                new_chunks: durable.new_chunks,
                new_stored_bytes: durable.new_stored_bytes,
                ..WriteStats::default()
            },
            durable,
            min_chunk: rec.chunking.min,
            max_chunk: rec.chunking.max,
            // A resume starts the chunker afresh, as an extent does: a
            // short chunk at the durable end may be followed (each such
            // chunk costs the writer a round trip, so rows per byte stay
            // bounded).
            short_tail: false,
            zstd_level: rec.zstd_level,
            last_cut: None,
            passthrough,
            replica,
            last_checkpoint: Instant::now(),
            last_write: Instant::now(),
            received: 0,
            announced: 0,
        })
    }

    pub(super) fn insert_open(
        &self,
        container_id: u64,
        name: &ImageName,
        copy: Option<CopyId>,
        owner: &UserName,
        image: OpenImage,
    ) -> WriterId {
        let id = self.next_writer.fetch_add(1, Ordering::SeqCst);
        lock(&self.open).insert(
            id,
            OpenEntry {
                container_id,
                group: image.group,
                name: name.clone(),
                copy,
                owner: owner.clone(),
                probe: None,
                image: Arc::new(Mutex::new(image)),
            },
        );
        id
    }

    /// Tells the store how to learn whether the session writing `w` is connected.
    pub fn set_session_probe(&self, w: WriterId, probe: SessionProbe) {
        if let Some(e) = lock(&self.open).get_mut(&w) {
            e.probe = Some(probe);
        }
    }

    pub(super) fn open_image(&self, w: WriterId) -> Result<Arc<Mutex<OpenImage>>> {
        lock(&self.open)
            .get(&w)
            .map(|e| e.image.clone())
            .ok_or_else(no_such_image)
    }

    /// The storage group of the image `w` writes, whose gate to hold.
    pub(super) fn open_group(&self, w: WriterId) -> Result<u32> {
        lock(&self.open)
            .get(&w)
            .map(|e| e.group)
            .ok_or_else(no_such_image)
    }

    /// Appends chunks to an image's recipe; returns the indexes of those the store lacks.
    pub fn image_append(&self, w: WriterId, entries: &[ChunkRef]) -> Result<Vec<u32>> {
        let _gate = self.gates.shared(self.open_group(w)?);
        let image = self.open_image(w)?;
        let mut img = lock(&image);
        if img.passthrough.is_some() {
            return Err(StoreError::Invalid(
                "a passthrough image takes raw data, not chunks".into(),
            ));
        }
        if img.recipe.len() + entries.len() > MAX_UNDURABLE_ENTRIES {
            return Err(StoreError::Invalid(format!(
                "{} recipe entries announced past a chunk still not sent; send the chunks \
                 asked for",
                img.recipe.len()
            )));
        }
        let index = self.catalog.index_snapshot()?;
        let pending = lock(&self.pending);
        // Checked whole before anything changes: a refused batch leaves the
        // image as it was.
        let stored = check_batch(&img, entries, |key| match pending.get(key) {
            Some(loc) => Ok(Some(loc.raw_len)),
            None => index.raw_len(key),
        })?;
        let mut missing = Vec::new();
        for (i, (e, stored)) in entries.iter().zip(stored).enumerate() {
            let offset = img.size;
            img.recipe.push((offset, e.id, e.len));
            img.size += u64::from(e.len);
            img.stats.chunks += 1;
            img.short_tail = e.len < img.min_chunk && img.replica.is_none();
            if img.missing.contains_key(&e.id) {
                continue;
            }
            if stored {
                img.received += u64::from(e.len);
                continue;
            }
            img.missing.insert(e.id, e.len);
            missing.push(i as u32);
        }
        img.announced += entries.len();
        drop(pending);
        img.last_write = Instant::now();
        self.checkpoint_if_due(&mut img)?;
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
        let _gate = self.gates.shared(group);
        let stored = self.store_chunk(group, id, codec, raw_len, bytes)?;
        let mut img = lock(&image);
        if img.missing.remove(id).is_some() {
            img.received += u64::from(raw_len);
        }
        if stored {
            img.stats.new_chunks += 1;
            img.stats.new_stored_bytes += bytes.len() as u64;
        }
        img.last_write = Instant::now();
        self.checkpoint_if_due(&mut img)
    }

    /// Passthrough: takes raw image bytes; the store chunks, dedups and compresses them.
    pub fn image_write_raw(&self, w: WriterId, data: &[u8]) -> Result<()> {
        let _gate = self.gates.shared(self.open_group(w)?);
        let image = self.open_image(w)?;
        // Only this image's lock is held while it is chunked and compressed:
        // other writers go on in parallel.
        let mut img = lock(&image);
        self.cut_raw(&mut img, data, false)
    }

    /// Chunks what the passthrough chunker holds (all of it when `last`) and
    /// stores the chunks the store lacks. The caller holds the gate.
    pub(super) fn cut_raw(&self, img: &mut OpenImage, data: &[u8], last: bool) -> Result<()> {
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
            img.received += u64::from(len);
            img.stats.chunks += 1;
            if let Some(enc) = enc {
                if self.store_chunk(group, &id, enc.codec, enc.raw_len, &enc.bytes)? {
                    img.stats.new_chunks += 1;
                    img.stats.new_stored_bytes += enc.bytes.len() as u64;
                }
            }
        }
        img.last_write = Instant::now();
        if !last {
            self.checkpoint_if_due(img)?;
        }
        Ok(())
    }

    pub(super) fn has_chunk(&self, group: u32, id: &ChunkId) -> Result<bool> {
        let key = chunk_key(group, id);
        if lock(&self.pending).contains_key(&key) {
            return Ok(true);
        }
        self.catalog.has_chunk(&key)
    }

    /// Appends a chunk to its group's pack unless the store has it; true if written.
    pub(super) fn store_chunk(
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
}
