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
