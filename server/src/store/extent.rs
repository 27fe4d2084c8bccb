//! Extent writes, the server's half of synthetic fulls: an image being
//! written appends `[offset, offset + len)` of a committed image of its
//! storage group.
//!
//! The source's chunks that lie wholly inside the extent become recipe rows
//! of the new image as they are: no chunk is read or moved. A chunk the
//! extent cuts (at most one at each end) is read, verified, sliced, and the
//! slice stored as a chunk of its own (deduplicated like any other), so no
//! byte crosses the network for the edges. The bytes written after an
//! extent are chunked afresh by the client; content-defined chunking finds
//! its boundaries again within a chunk or two, so dedup of what follows is
//! kept.
//!
//! Consistency: the source's record and recipe come from one catalog
//! snapshot, and the gate is held (shared) from before the snapshot until
//! the rows are in the open image, where GC's mark finds them. A deletion
//! of the source meanwhile changes nothing the extent sees, and GC cannot
//! free a chunk the new rows name: the extent lands whole.

use tern_core::codec::Compressor;
use tern_core::wire::RecipeEntry;
use tern_core::{ChunkId, ContainerName, ImageName, StreamChunker};

use super::catalog::RecipeSnapshot;
use super::checkpoint::CHECKPOINT_ENTRIES;
use super::records::chunk_key;
use super::write::{OpenImage, VERIFIER};
use super::{lock, pack, Result, Scope, Store, StoreError, WriterId};

/// What one extent write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExtentStats {
    /// Bytes taken as whole chunks of the source: recipe rows, no data.
    pub referenced_bytes: u64,
    /// Bytes of source chunks the extent cuts, sliced into chunks of their
    /// own on the server.
    pub sliced_bytes: u64,
    /// Recipe rows appended.
    pub chunks: u64,
}

/// A source chunk the extent cuts, and the chunk its slice became.
struct Slice {
    /// Where the cut chunk starts in the source.
    source_offset: u64,
    id: ChunkId,
    len: u32,
}

/// What an image was before an extent began, to put back if it fails.
struct Before {
    rows: usize,
    size: u64,
    chunks: u64,
    short_tail: bool,
}

impl Store {
    /// Appends `[offset, offset + len)` of committed image `name` of
    /// `container` (seen through `scope`) to image `w`. Refused, with the
    /// image as it was: a source that does not exist or is not committed,
    /// lies in another storage group, or is shorter than `offset + len`.
    pub fn image_append_extent(
        &self,
        scope: &Scope,
        w: WriterId,
        container: &ContainerName,
        name: &ImageName,
        offset: u64,
        len: u64,
    ) -> Result<ExtentStats> {
        let end = offset.checked_add(len).ok_or_else(|| {
            StoreError::Invalid(format!(
                "an extent of {len} bytes at {offset} ends past 2^64"
            ))
        })?;
        let source = self.container(scope, container)?;
        let gate = self.gates.shared(self.open_group(w)?);
        let image = self.open_image(w)?;
        let mut img = lock(&image);
        if img.replica.is_some() {
            return Err(StoreError::Invalid(
                "a replica is written by its copy only".into(),
            ));
        }
        if !img.missing.is_empty() {
            return Err(StoreError::Invalid(format!(
                "{} chunks asked for are not sent yet: send them before an extent",
                img.missing.len()
            )));
        }
        if self.group_of(&source)? != img.group {
            return Err(StoreError::Invalid(format!(
                "container {container} is in storage group {}, not in the image's: an extent \
                 comes from the image's own storage group",
                source.group
            )));
        }
        let snap = self
            .catalog
            .recipe_snapshot(source.id, name)?
            .ok_or_else(|| {
                let partial = self
                    .catalog
                    .partial(source.id, name)
                    .ok()
                    .flatten()
                    .is_some();
                StoreError::NotFound(if partial {
                    format!("image {name} of container {container} is not committed yet")
                } else {
                    format!("image {name} does not exist in container {container}")
                })
            })?;
        if snap.image.held.is_some() {
            // Its bytes are in another storage group now (its rows gone,
            // or partly back during a recall).
            return Err(StoreError::Invalid(format!(
                "image {container}/{name} is held in the cloud tier: recall it (tern image \
                 recall) before taking extents of it"
            )));
        }
        if end > snap.image.size {
            return Err(StoreError::Invalid(format!(
                "image {container}/{name} is {} bytes long: an extent of {len} bytes at {offset} \
                 ends past it",
                snap.image.size
            )));
        }
        if len == 0 {
            return Ok(ExtentStats::default());
        }
        let mut stats = ExtentStats::default();
        // The cut chunks first: storing them changes nothing the image
        // shows, so a failure here (a full disk) leaves it as it was.
        let slices = self.slice_edges(&mut img, &snap, offset, end, &mut stats)?;
        if let Some(pt) = img.passthrough.as_ref() {
            // The server's chunker ends its stream where the extent begins.
            let chunking = pt.chunking;
            self.cut_raw(&mut img, &[], true)?;
            if let Some(pt) = img.passthrough.as_mut() {
                pt.chunker = StreamChunker::new(chunking);
            }
        }
        let before = Before {
            rows: img.recipe.len(),
            size: img.size,
            chunks: img.stats.chunks,
            short_tail: img.short_tail,
        };
        let mut checkpointed = false;
        let appended = snap.rows(offset, end, |e| {
            let (id, len) = match slices.iter().find(|s| s.source_offset == e.offset) {
                Some(s) => (s.id, s.len),
                None => {
                    stats.referenced_bytes += u64::from(e.len);
                    (e.id, e.len)
                }
            };
            push_row(&mut img, id, len);
            stats.chunks += 1;
            // Memory stays bounded, whatever the extent's size.
            if img.recipe.len() >= CHECKPOINT_ENTRIES {
                self.checkpoint(&mut img)?;
                checkpointed = true;
            }
            Ok(())
        });
        match appended {
            Ok(()) => {
                img.short_tail = false;
                img.announced += stats.chunks as usize;
                img.last_write = std::time::Instant::now();
                self.checkpoint_if_due(&mut img)?;
                Ok(stats)
            }
            Err(e) if !checkpointed => {
                img.recipe.truncate(before.rows);
                img.size = before.size;
                img.stats.chunks = before.chunks;
                img.short_tail = before.short_tail;
                Err(e)
            }
            Err(e) => {
                // Part of the extent is durable: the image cannot be put
                // back as it was, so it is set aside, resumable.
                drop(img);
                drop(gate);
                let at = self.image_detach(w).unwrap_or(0);
                tracing::warn!("an extent failed part way ({e}); the image is incomplete at {at}");
                Err(e)
            }
        }
    }

    /// Slices the source chunks that `[offset, end)` cuts (the first and
    /// the last row, if the range does not start or end on their edges),
    /// storing each slice unless the store has it.
    fn slice_edges(
        &self,
        img: &mut OpenImage,
        snap: &RecipeSnapshot,
        offset: u64,
        end: u64,
        stats: &mut ExtentStats,
    ) -> Result<Vec<Slice>> {
        let mut edges: Vec<RecipeEntry> = Vec::with_capacity(2);
        for at in [offset, end - 1] {
            snap.rows(at, at + 1, |e| {
                edges.push(e);
                Ok(())
            })?;
        }
        edges.dedup_by_key(|e| e.offset);
        let mut compressor = None;
        let mut slices = Vec::new();
        for e in edges {
            let from = offset.max(e.offset);
            let to = end.min(e.offset + u64::from(e.len));
            if from == e.offset && to == e.offset + u64::from(e.len) {
                continue;
            }
            // An edit between two extents often lies inside one source
            // chunk: the second extent starts in the chunk the first ended in.
            let plain = match img.last_cut.take() {
                Some((id, plain)) if id == e.id => plain,
                _ => self.chunk_plaintext(img.group, &e.id)?,
            };
            let cut = &plain[(from - e.offset) as usize..(to - e.offset) as usize];
            let id = ChunkId::of(cut);
            if !self.has_chunk(img.group, &id)? {
                let c = match &mut compressor {
                    Some(c) => c,
                    None => compressor.insert(Compressor::new(img.zstd_level)?),
                };
                let enc = c.encode(cut);
                self.store_chunk(img.group, &id, enc.codec, enc.raw_len, &enc.bytes)?;
            }
            stats.sliced_bytes += cut.len() as u64;
            slices.push(Slice {
                source_offset: e.offset,
                id,
                len: cut.len() as u32,
            });
            img.last_cut = Some((e.id, plain));
        }
        Ok(slices)
    }

    /// A stored chunk's bytes, decompressed and checked against its id.
    /// The caller holds the gate.
    fn chunk_plaintext(&self, group: u32, id: &ChunkId) -> Result<Vec<u8>> {
        let key = chunk_key(group, id);
        let loc = match lock(&self.pending).get(&key) {
            Some(l) => *l,
            None => self.catalog.chunk_location(&key)?.ok_or_else(|| {
                StoreError::Corrupt(format!("chunk {id} is missing from the index"))
            })?,
        };
        let file = self.packs.reader(group, loc.pack)?;
        let stored = pack::read_stored(&*file, &loc)
            .map_err(|e| StoreError::Corrupt(format!("reading chunk {id}: {e}")))?;
        VERIFIER
            .with_borrow_mut(|d| d.decode(id, loc.codec, loc.raw_len, stored))
            .map_err(|e| StoreError::Corrupt(format!("chunk {id}: {e}")))
    }
}

/// Appends one recipe row of a stored chunk to an open image.
fn push_row(img: &mut OpenImage, id: ChunkId, len: u32) {
    let offset = img.size;
    img.recipe.push((offset, id, len));
    img.size += u64::from(len);
    img.stats.chunks += 1;
}
