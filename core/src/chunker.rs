//! Content-defined chunking (FastCDC 2020), fed incrementally.

use serde::{Deserialize, Serialize};

/// A container's chunking parameters, fixed once data is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
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
    pub fn new(params: ChunkParams) -> Self {
        Self {
            params,
            buf: Vec::with_capacity(2 * params.max as usize),
            pos: 0,
            finished: false,
        }
    }

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
    /// End of every complete chunk in `buf`, ascending.
    ends: Vec<u32>,
    finished: bool,
}

/// Complete chunks in one buffer, in stream order.
#[derive(Debug, Default)]
pub struct ChunkBatch {
    pub data: Vec<u8>,
    /// End of each chunk in `data`.
    pub ends: Vec<u32>,
}

impl ChunkBatch {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of chunk `i`; `None` past the end.
    pub fn chunk(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        self.data.get(start..end)
    }

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
            ends: Vec::new(),
            finished: false,
        }
    }

    /// Adds stream bytes.
    pub fn push(&mut self, data: &[u8]) {
        debug_assert!(!self.finished, "push after finish");
        self.buf.extend_from_slice(data);
    }

    /// Reads up to `max` stream bytes from `source` straight into the batch
    /// buffer; returns how many were read, 0 at the end of the source.
    pub fn read_from(
        &mut self,
        source: &mut impl std::io::Read,
        max: usize,
    ) -> std::io::Result<usize> {
        use std::io::Read;
        debug_assert!(!self.finished, "read after finish");
        self.buf.reserve(max);
        let before = self.buf.len();
        source.take(max as u64).read_to_end(&mut self.buf)?;
        Ok(self.buf.len() - before)
    }

    /// Marks the end of the stream: the remaining bytes become the last chunk.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Finds the cut points known so far, stopping at `max_chunks` complete chunks.
    pub fn cut(&mut self, max_chunks: usize) {
        while self.ends.len() < max_chunks {
            let start = self.chunked_len();
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
        self.ends.last().map_or(0, |&e| e as usize)
    }

    /// Complete chunks.
    pub fn chunk_count(&self) -> usize {
        self.ends.len()
    }

    /// Bytes not yet part of a complete chunk.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.chunked_len()
    }

    /// Takes the complete chunks; the bytes after them move to `fresh`, which
    /// becomes the buffer filled next.
    pub fn take_batch(&mut self, mut fresh: Vec<u8>) -> ChunkBatch {
        let cut = self.chunked_len();
        fresh.clear();
        fresh.extend_from_slice(&self.buf[cut..]);
        let mut data = std::mem::replace(&mut self.buf, fresh);
        data.truncate(cut);
        ChunkBatch {
            data,
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
        for (piece, per_batch) in [(4097, 3), (1 << 20, 256), (100_000, 1)] {
            let mut b = ChunkBatcher::new(p, Vec::new());
            let mut got = Vec::new();
            let take = |b: &mut ChunkBatcher, got: &mut Vec<usize>| {
                let batch = b.take_batch(Vec::new());
                assert_eq!(
                    batch.data.len(),
                    batch.chunks().map(<[u8]>::len).sum::<usize>()
                );
                got.extend(batch.chunks().map(<[u8]>::len));
            };
            let mut source = &data[..];
            loop {
                let n = if piece == 4097 {
                    b.read_from(&mut source, piece).unwrap()
                } else {
                    let n = piece.min(source.len());
                    b.push(&source[..n]);
                    source = &source[n..];
                    n
                };
                if n == 0 {
                    break;
                }
                b.cut(per_batch);
                if b.chunk_count() == per_batch {
                    take(&mut b, &mut got);
                    b.cut(per_batch);
                }
            }
            b.finish();
            loop {
                b.cut(per_batch);
                if b.chunk_count() == 0 {
                    break;
                }
                take(&mut b, &mut got);
            }
            assert_eq!(b.pending(), 0);
            assert_eq!(
                got, expected,
                "pieces of {piece}, {per_batch} chunks a batch"
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
