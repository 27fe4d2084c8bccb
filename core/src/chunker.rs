//! Content-defined chunking (FastCDC 2020), fed incrementally.

use serde::{Deserialize, Serialize};

/// A container's chunking parameters, fixed once data is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    /// Smallest chunk, except the last of a stream.
    pub min: u32,
    /// The average FastCDC aims at.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

/// The largest chunk any container may use; also bounds chunk frames on the wire.
pub const MAX_CHUNK_LIMIT: u32 = 4 * 1024 * 1024;

impl Default for ChunkParams {
    fn default() -> Self {
        Self {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
        }
    }
}

impl ChunkParams {
    /// Checks the bounds FastCDC accepts and the ones tern imposes.
    pub fn validate(&self) -> Result<(), String> {
        let (min, avg, max) = (self.min, self.avg, self.max);
        if !(64..=1_048_576).contains(&min) {
            return Err(format!("min chunk size {min} is outside 64..=1048576"));
        }
        if !(256..=4_194_304).contains(&avg) {
            return Err(format!("average chunk size {avg} is outside 256..=4194304"));
        }
        if !(1024..=MAX_CHUNK_LIMIT).contains(&max) {
            return Err(format!(
                "max chunk size {max} is outside 1024..={MAX_CHUNK_LIMIT}"
            ));
        }
        if !(min <= avg && avg <= max) {
            return Err(format!(
                "chunk sizes must satisfy min <= avg <= max, got {min}/{avg}/{max}"
            ));
        }
        Ok(())
    }
}

/// Splits a byte stream into chunks as it arrives.
///
/// Feed bytes with [`push`](Self::push), take finished chunks with
/// [`next_chunk`](Self::next_chunk), and call [`finish`](Self::finish) at the end of
/// the stream. Cut points depend only on the data, never on how it was split
/// into pushes.
pub struct StreamChunker {
    params: ChunkParams,
    buf: Vec<u8>,
    /// Start of the unchunked bytes in `buf`.
    pos: usize,
    finished: bool,
}

impl StreamChunker {
    /// A chunker for one stream.
    pub fn new(params: ChunkParams) -> Self {
        Self {
            params,
            buf: Vec::with_capacity(2 * params.max as usize),
            pos: 0,
            finished: false,
        }
    }

    /// The parameters it cuts with.
    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// Adds stream bytes.
    pub fn push(&mut self, data: &[u8]) {
        debug_assert!(!self.finished, "push after finish");
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Marks the end of the stream: the remaining bytes become the last chunk.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Bytes pushed but not yet returned as chunks.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Returns the next complete chunk, if one is known.
    ///
    /// A chunk is complete when FastCDC found its cut point before the end of the
    /// buffered bytes, or when the stream is finished.
    pub fn next_chunk(&mut self) -> Option<&[u8]> {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return None;
        }
        // A cut needs up to `max` bytes of lookahead; until then it is unknown.
        if !self.finished && rest.len() <= self.params.max as usize {
            return None;
        }
        let len = cut_point(rest, self.params);
        let start = self.pos;
        self.pos += len;
        Some(&self.buf[start..start + len])
    }
}

/// Chunks a byte stream into batches that own their bytes.
///
/// Where [`StreamChunker`] lends out one chunk at a time, this keeps the bytes of
/// many chunks in one buffer and hands the whole buffer over
/// ([`take_batch`](Self::take_batch)), so a writer can pass chunks to other
/// threads without copying each one. Cut points are the same as
/// [`StreamChunker`]'s for the same stream.
pub struct ChunkBatcher {
    params: ChunkParams,
    buf: Vec<u8>,
    /// Where the stream's bytes begin in `buf` (see [`adopt`](Self::adopt)).
    base: usize,
    /// End of every complete chunk in `buf`, ascending.
    ends: Vec<u32>,
    finished: bool,
}

/// Complete chunks in one buffer, in stream order.
#[derive(Debug, Default)]
pub struct ChunkBatch {
    /// The buffer holding the chunks (and possibly bytes before `start`).
    pub data: Vec<u8>,
    /// Where the first chunk begins in `data`.
    pub start: usize,
    /// End of each chunk in `data`.
    pub ends: Vec<u32>,
}

impl ChunkBatch {
    /// How many chunks.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the batch holds no chunk.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of chunk `i`; `None` past the end.
    pub fn chunk(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => self.start,
            _ => self.ends[i - 1] as usize,
        };
        self.data.get(start..end)
    }

    /// The chunks, in stream order.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).filter_map(|i| self.chunk(i))
    }
}

impl ChunkBatcher {
    /// `buf` is the buffer to fill first (its contents are discarded).
    pub fn new(params: ChunkParams, mut buf: Vec<u8>) -> Self {
        buf.clear();
        Self {
            params,
            buf,
            base: 0,
            ends: Vec::new(),
            finished: false,
        }
    }

    /// The parameters it cuts with.
    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// Adds stream bytes.
    pub fn push(&mut self, data: &[u8]) {
        debug_assert!(!self.finished, "push after finish");
        self.buf.extend_from_slice(data);
    }

    /// Marks the end of the stream: the remaining bytes become the last chunk.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Finds the cut points known so far, stopping at `max_chunks` complete chunks.
    pub fn cut(&mut self, max_chunks: usize) {
        while self.ends.len() < max_chunks {
            let start = self.chunked_end();
            let rest = &self.buf[start..];
            // A cut needs up to `max` bytes of lookahead; until then it is unknown.
            if rest.is_empty() || (!self.finished && rest.len() <= self.params.max as usize) {
                return;
            }
            let end = start + cut_point(rest, self.params);
            // A batch buffer stays far below 4 GiB: it is taken after a few MiB.
            self.ends.push(end as u32);
        }
    }

    /// Bytes of complete chunks.
    pub fn chunked_len(&self) -> usize {
        self.chunked_end() - self.base
    }

    /// Where the complete chunks end in `buf`.
    fn chunked_end(&self) -> usize {
        self.ends.last().map_or(self.base, |&e| e as usize)
    }

    /// Complete chunks.
    pub fn chunk_count(&self) -> usize {
        self.ends.len()
    }

    /// Bytes not yet part of a complete chunk.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.chunked_end()
    }

    /// Takes the complete chunks; the bytes after them move to `fresh`, which
    /// becomes the buffer filled next.
    pub fn take_batch(&mut self, mut fresh: Vec<u8>) -> ChunkBatch {
        fresh.clear();
        fresh.extend_from_slice(&self.buf[self.chunked_end()..]);
        self.swap_in(fresh, 0)
    }

    /// Takes the complete chunks and continues the stream in `next`, whose
    /// bytes from `data_start` on are new stream bytes read by someone else
    /// (before `data_start`: room to spare, contents ignored). The bytes not
    /// yet chunked move into that room just before the new ones, so a reader
    /// thread can fill the next buffer while this one is being cut, and only
    /// the last partial chunk is ever copied.
    pub fn adopt(&mut self, mut next: Vec<u8>, data_start: usize) -> ChunkBatch {
        debug_assert!(!self.finished, "adopt after finish");
        let tail = &self.buf[self.chunked_end()..];
        let base = match data_start.checked_sub(tail.len()) {
            Some(base) => {
                next[base..data_start].copy_from_slice(tail);
                base
            }
            // Less room than the partial chunk: make room (a larger copy).
            None => {
                next.splice(..data_start, tail.iter().copied());
                0
            }
        };
        self.swap_in(next, base)
    }

    fn swap_in(&mut self, next: Vec<u8>, base: usize) -> ChunkBatch {
        let cut = self.chunked_end();
        let mut data = std::mem::replace(&mut self.buf, next);
        data.truncate(cut);
        let start = std::mem::replace(&mut self.base, base);
        ChunkBatch {
            data,
            start,
            ends: std::mem::take(&mut self.ends),
        }
    }
}

fn cut_point(data: &[u8], p: ChunkParams) -> usize {
    let mut cdc = fastcdc::v2020::FastCDC::new(data, p.min, p.avg, p.max);
    match cdc.next() {
        Some(chunk) => chunk.length,
        None => data.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunk_all(data: &[u8], step: usize, p: ChunkParams) -> Vec<usize> {
        let mut c = StreamChunker::new(p);
        let mut lens = Vec::new();
        for piece in data.chunks(step) {
            c.push(piece);
            while let Some(ch) = c.next_chunk() {
                lens.push(ch.len());
            }
        }
        c.finish();
        while let Some(ch) = c.next_chunk() {
            lens.push(ch.len());
        }
        lens
    }

    #[test]
    fn cuts_are_fastcdc_2020s() {
        // Stored chunk ids depend on these cut points: batching and streaming
        // must cut exactly where FastCDC cuts the whole stream at once.
        let data = pseudo_random(2 * 1024 * 1024 + 5, 11);
        for p in [
            ChunkParams::default(),
            ChunkParams {
                min: 2048,
                avg: 8192,
                max: 65536,
            },
        ] {
            let theirs: Vec<usize> = fastcdc::v2020::FastCDC::new(&data, p.min, p.avg, p.max)
                .map(|c| c.length)
                .collect();
            assert!(theirs.len() > 10);
            assert_eq!(chunk_all(&data, 1 << 16, p), theirs);
        }
    }

    #[test]
    fn cuts_do_not_depend_on_push_sizes() {
        let data = pseudo_random(3 * 1024 * 1024 + 17, 7);
        let p = ChunkParams::default();
        let a = chunk_all(&data, 1 << 20, p);
        let b = chunk_all(&data, 4097, p);
        let c = chunk_all(&data, data.len(), p);
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.iter().sum::<usize>(), data.len());
        assert!(a.iter().all(|&l| l <= p.max as usize));
    }

    #[test]
    fn batches_cut_like_the_stream_chunker() {
        let data = pseudo_random(3 * 1024 * 1024 + 17, 7);
        let p = ChunkParams::default();
        let expected = chunk_all(&data, 1 << 20, p);
        // (bytes per piece, chunks per batch, room before adopted bytes or
        // None to push): adopting with less room than a partial chunk must
        // still work.
        let cases = [
            (4097, 3, None),
            (1 << 20, 256, None),
            (100_000, 1, None),
            (1 << 20, 256, Some(p.max as usize)),
            (300_000, 2, Some(p.max as usize)),
            (200_000, 256, Some(100)),
        ];
        for (piece, per_batch, room) in cases {
            let mut b = ChunkBatcher::new(p, Vec::new());
            let mut got = Vec::new();
            let keep = |batch: ChunkBatch, got: &mut Vec<usize>| {
                assert_eq!(
                    batch.data.len() - batch.start,
                    batch.chunks().map(<[u8]>::len).sum::<usize>()
                );
                got.extend(batch.chunks().map(<[u8]>::len));
            };
            for part in data.chunks(piece) {
                match room {
                    None => b.push(part),
                    Some(room) => {
                        let mut next = vec![0xee; room];
                        next.extend_from_slice(part);
                        keep(b.adopt(next, room), &mut got);
                    }
                }
                b.cut(per_batch);
                if b.chunk_count() == per_batch {
                    keep(b.take_batch(Vec::new()), &mut got);
                    b.cut(per_batch);
                }
            }
            b.finish();
            loop {
                b.cut(per_batch);
                if b.chunk_count() == 0 {
                    break;
                }
                keep(b.take_batch(Vec::new()), &mut got);
            }
            assert_eq!(b.pending(), 0);
            assert_eq!(
                got, expected,
                "pieces of {piece}, {per_batch} chunks a batch, room {room:?}"
            );
        }
    }

    #[test]
    fn an_insertion_changes_few_chunks() {
        let data = pseudo_random(4 * 1024 * 1024, 11);
        let mut edited = data.clone();
        edited.splice(2_000_000..2_000_000, b"inserted bytes".iter().copied());
        let p = ChunkParams::default();
        let ids = |d: &[u8]| -> std::collections::HashSet<crate::ChunkId> {
            let mut c = StreamChunker::new(p);
            c.push(d);
            c.finish();
            let mut out = std::collections::HashSet::new();
            while let Some(ch) = c.next_chunk() {
                out.insert(crate::ChunkId::of(ch));
            }
            out
        };
        let before = ids(&data);
        let after = ids(&edited);
        assert!(after.difference(&before).count() <= 2);
    }

    #[test]
    fn params_are_validated() {
        assert!(ChunkParams::default().validate().is_ok());
        let bad = ChunkParams {
            min: 1000,
            avg: 500,
            max: 2000,
        };
        assert!(bad.validate().is_err());
        let huge = ChunkParams {
            min: 16384,
            avg: 65536,
            max: MAX_CHUNK_LIMIT + 1,
        };
        assert!(huge.validate().is_err());
    }
}
