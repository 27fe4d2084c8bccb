//! `tern bench`: how fast this machine runs each stage of the data path, so
//! an admin can tell which one limits a backup.

use std::time::{Duration, Instant};

use tern_core::chunker::{ChunkBatcher, ChunkParams};
use tern_core::codec::{Compressor, Decoder};
use tern_core::ChunkId;

use tern_agent::{Client, ClientError, WRITE_BATCH_BYTES as BATCH_BYTES};

/// Each local stage runs over the sample again and again for at least this long.
const MIN_STAGE_TIME: Duration = Duration::from_millis(1500);

/// The speed of one stage.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stage {
    /// What was measured.
    pub stage: String,
    /// Bytes of input the stage went through.
    pub bytes: u64,
    /// Time taken (for a round trip: the round trip).
    pub seconds: f64,
    /// Input megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Output bytes per input byte, for stages that change the size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

impl Stage {
    fn new(stage: &str, bytes: u64, elapsed: Duration, ratio: Option<f64>) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Self {
            stage: stage.to_string(),
            bytes,
            seconds,
            mb_per_s: bytes as f64 / seconds / 1e6,
            ratio,
        }
    }
}

/// Deterministic data that compresses about as well as a tar of a system
/// directory (roughly 3:1 with zstd): text-like runs between binary ones.
pub fn sample_data(len: usize) -> Vec<u8> {
    let mut x = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let n = 2 + (next() % 10) as usize;
            (0..n).map(|_| b'a' + (next() % 26) as u8).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        if next() % 8 == 0 {
            // Binary: random bytes, the kind no compressor shrinks.
            let n = 64 + (next() % 512) as usize;
            out.extend((0..n / 8).flat_map(|_| next().to_le_bytes()));
        } else {
            // Text: words from a skewed vocabulary.
            for _ in 0..(next() % 256) {
                let r = next();
                let w = &words[((r % 64) * (r >> 32 & 63)) as usize % words.len()];
                out.extend_from_slice(w);
                out.push(if r >> 20 & 15 == 0 { b'\n' } else { b' ' });
            }
        }
    }
    out.truncate(len);
    out
}

/// Runs `pass` over and over for at least `MIN_STAGE_TIME`; returns passes and time.
fn repeat(mut pass: impl FnMut()) -> (u64, Duration) {
    let started = Instant::now();
    let mut passes = 0;
    while passes == 0 || started.elapsed() < MIN_STAGE_TIME {
        pass();
        passes += 1;
    }
    (passes, started.elapsed())
}

/// Chunking, hashing, compression and decompression at `level`, one core each.
pub fn local_stages(
    data: &[u8],
    params: ChunkParams,
    level: i32,
) -> Result<Vec<Stage>, ClientError> {
    let len = data.len() as u64;
    let mut stages = Vec::new();

    // The backup path's chunker: a batcher cutting 4 MiB batch buffers.
    let mut chunks: Vec<(usize, usize)> = Vec::new();
    let (n, t) = repeat(|| {
        chunks.clear();
        let mut batcher = ChunkBatcher::new(params, Vec::with_capacity(BATCH_BYTES));
        let mut at = 0;
        let mut take = |b: &mut ChunkBatcher, at: &mut usize| {
            let batch = b.take_batch(Vec::with_capacity(BATCH_BYTES));
            for c in batch.chunks() {
                chunks.push((*at, c.len()));
                *at += c.len();
            }
        };
        for piece in data.chunks(BATCH_BYTES) {
            batcher.push(piece);
            batcher.cut(usize::MAX);
            take(&mut batcher, &mut at);
        }
        batcher.finish();
        batcher.cut(usize::MAX);
        take(&mut batcher, &mut at);
    });
    stages.push(Stage::new("chunking (FastCDC)", n * len, t, None));

    let pieces = || chunks.iter().map(|&(at, l)| &data[at..at + l]);
    let (n, t) = repeat(|| {
        for p in pieces() {
            std::hint::black_box(ChunkId::of(p));
        }
    });
    stages.push(Stage::new("blake3", n * len, t, None));

    let mut compressor = Compressor::new(level)?;
    let mut encoded = Vec::new();
    let (n, t) = repeat(|| {
        encoded.clear();
        for p in pieces() {
            encoded.push((ChunkId::of(p), compressor.encode(p)));
        }
    });
    let stored: usize = encoded.iter().map(|(_, e)| e.bytes.len()).sum();
    stages.push(Stage::new(
        &format!("zstd -{level} compress (+ blake3)"),
        n * len,
        t,
        Some(stored as f64 / len.max(1) as f64),
    ));

    // As restore and the server decode: one warm zstd context, reused buffers.
    let mut failed = None;
    let mut decoder = Decoder::new();
    let (n, t) = repeat(|| {
        for (id, e) in &encoded {
            if let Err(err) = decoder.verify(id, e.codec, e.raw_len, &e.bytes) {
                failed = Some(err);
            }
        }
    });
    if let Some(e) = failed {
        return Err(ClientError::Corrupt(e.to_string()));
    }
    stages.push(Stage::new(
        &format!("zstd -{level} decompress (+ verify)"),
        n * len,
        t,
        None,
    ));
    Ok(stages)
}

/// The round trip to the server and the rate at which it takes `total` bytes
/// over the session's connections (TLS unless the client is plaintext).
pub fn network_stages(client: &Client, total: u64) -> Result<Vec<Stage>, ClientError> {
    let mut rtts = Vec::new();
    for _ in 0..20 {
        rtts.push(client.ping()?);
    }
    rtts.sort();
    let median = rtts[rtts.len() / 2];
    let started = Instant::now();
    client.upload_probe(total)?;
    let upload = started.elapsed();
    Ok(vec![
        Stage {
            stage: "round trip (median of 20)".into(),
            bytes: 0,
            seconds: median.as_secs_f64(),
            mb_per_s: 0.0,
            ratio: None,
        },
        Stage::new("upload to the server", total, upload, None),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_compresses_like_system_files() {
        let data = sample_data(8 << 20);
        assert_eq!(data, sample_data(8 << 20));
        let mut c = Compressor::new(3).unwrap();
        let stored: usize = data.chunks(64 << 10).map(|p| c.encode(p).bytes.len()).sum();
        let ratio = data.len() as f64 / stored as f64;
        assert!((2.0..5.0).contains(&ratio), "{ratio}");
    }
}
