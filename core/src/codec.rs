//! The stored and transmitted form of a chunk.
//!
//! A chunk is zstd-compressed unless that does not make it smaller, in which case
//! it travels and is stored raw. Decoding always checks the blake3 id of the
//! result, so corruption is reported, never returned.

use serde::{Deserialize, Serialize};

use crate::chunker::MAX_CHUNK_LIMIT;
use crate::ChunkId;

/// How a chunk's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Codec {
    /// The plaintext itself.
    Raw = 0,
    /// A zstd frame.
    Zstd = 1,
}

impl Codec {
    /// The codec stored as `v`, if there is one.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Raw),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// A chunk in its stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChunk {
    /// How `bytes` encode the plaintext.
    pub codec: Codec,
    /// Length of the plaintext.
    pub raw_len: u32,
    /// The stored bytes.
    pub bytes: Vec<u8>,
}

/// Why a stored or received chunk could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The plaintext would exceed the largest chunk tern allows.
    #[error("chunk claims {0} bytes, more than the limit of {MAX_CHUNK_LIMIT}")]
    TooLarge(u32),
    /// zstd refused the bytes.
    #[error("chunk does not decompress: {0}")]
    Decompress(String),
    /// The plaintext has a different length than recorded.
    #[error("chunk decodes to {got} bytes, expected {expected}")]
    Length {
        /// The recorded length.
        expected: u32,
        /// The decoded length.
        got: usize,
    },
    /// The plaintext does not hash to the chunk's id.
    #[error("chunk content does not match its id {0}")]
    HashMismatch(ChunkId),
    /// A zstd encoding that tern's compressor would not produce: no smaller
    /// than the plaintext, or not exactly one standard zstd frame (padding
    /// such as skippable frames would let the first writer of a chunk
    /// decide how much space it takes for everyone).
    #[error("a {stored}-byte zstd encoding of {raw_len} bytes is not one compact zstd frame")]
    Inflated {
        /// Bytes of the encoding.
        stored: usize,
        /// Bytes of the plaintext.
        raw_len: u32,
    },
}

/// The magic number that starts every standard zstd frame (little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Refuses a zstd encoding larger than its plaintext or other than one frame.
fn check_compact(raw_len: u32, bytes: &[u8]) -> Result<(), CodecError> {
    let one_frame = bytes.starts_with(&ZSTD_MAGIC)
        && zstd::zstd_safe::find_frame_compressed_size(bytes).ok() == Some(bytes.len());
    if bytes.len() >= raw_len as usize || !one_frame {
        return Err(CodecError::Inflated {
            stored: bytes.len(),
            raw_len,
        });
    }
    Ok(())
}

/// Compresses one chunk's worth of bytes with a reusable zstd context.
pub struct Compressor {
    ctx: zstd::bulk::Compressor<'static>,
}

impl Compressor {
    /// A compressor at zstd `level`.
    pub fn new(level: i32) -> std::io::Result<Self> {
        Ok(Self {
            ctx: zstd::bulk::Compressor::new(level)?,
        })
    }

    /// Encodes `data`, keeping it raw if zstd does not shrink it.
    pub fn encode(&mut self, data: &[u8]) -> EncodedChunk {
        let raw_len = data.len() as u32;
        if looks_incompressible(data) {
            return EncodedChunk {
                codec: Codec::Raw,
                raw_len,
                bytes: data.to_vec(),
            };
        }
        // Leave out anything that saves less than 1/64: not worth a decompress.
        let budget = data.len() - data.len() / 64;
        // Compressed straight into the buffer that is returned: no copy.
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        match self.ctx.compress_to_buffer(data, &mut out) {
            Ok(n) if n < budget => {
                // Gives the unused bound back (in place in glibc's realloc):
                // in-flight frames hold these buffers until acked.
                out.shrink_to_fit();
                EncodedChunk {
                    codec: Codec::Zstd,
                    raw_len,
                    bytes: out,
                }
            }
            _ => EncodedChunk {
                codec: Codec::Raw,
                raw_len,
                bytes: data.to_vec(),
            },
        }
    }
}

/// Bytes sampled by [`looks_incompressible`]: four pieces spread over the chunk.
const PROBE_PIECE: usize = 4096;

/// Whether `data` is so close to random that zstd would not save 1/64 of it:
/// the order-0 entropy of a sample, nearly 8 bits per byte for encrypted or
/// already-compressed data. Costs a histogram of 16 KiB instead of a zstd pass
/// over the whole chunk. Data that repeats long random runs inside one chunk
/// would compress a little and is stored raw; across chunks, dedup finds it.
fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < 4 * PROBE_PIECE {
        return false;
    }
    // Four tables, so that consecutive equal bytes do not wait on each
    // other's increment: this probe runs on every chunk.
    let mut tables = [[0u32; 256]; 4];
    let stride = (data.len() - PROBE_PIECE) / 3;
    for i in 0..4 {
        for q in data[i * stride..i * stride + PROBE_PIECE].chunks_exact(4) {
            tables[0][q[0] as usize] += 1;
            tables[1][q[1] as usize] += 1;
            tables[2][q[2] as usize] += 1;
            tables[3][q[3] as usize] += 1;
        }
    }
    let mut counts = [0u32; 256];
    for t in &tables {
        for (c, n) in counts.iter_mut().zip(t) {
            *c += n;
        }
    }
    let n = (4 * PROBE_PIECE) as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    // Random bytes sample at about 7.99 bits; anything zstd shrinks by 1/64
    // sits well below 7.9.
    entropy > 7.95
}

/// Decodes a chunk and checks it hashes to `id` (a one-off; see [`Decoder`]).
pub fn decode(
    id: &ChunkId,
    codec: Codec,
    raw_len: u32,
    bytes: &[u8],
) -> Result<Vec<u8>, CodecError> {
    Decoder::new().decode(id, codec, raw_len, bytes.to_vec())
}

/// Decodes and verifies chunks with a reusable zstd context: creating one per
/// chunk costs more than decompressing a small chunk.
#[derive(Default)]
pub struct Decoder {
    ctx: Option<zstd::bulk::Decompressor<'static>>,
    /// Plaintext of the last chunk [`Decoder::verify`] decompressed, or a
    /// buffer handed back with [`Decoder::recycle`] for the next decode.
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder; its zstd context is made on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes a chunk and checks it hashes to `id`. A raw chunk comes back
    /// as the same buffer, uncopied.
    pub fn decode(
        &mut self,
        id: &ChunkId,
        codec: Codec,
        raw_len: u32,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, CodecError> {
        let plain = match codec {
            Codec::Raw => bytes,
            Codec::Zstd => {
                let mut out = std::mem::take(&mut self.scratch);
                self.decompress(&bytes, raw_len, &mut out)?;
                self.recycle(bytes);
                out
            }
        };
        check(id, raw_len, &plain)?;
        Ok(plain)
    }

    /// Offers a spent buffer (a plaintext already written out) to hold the
    /// next decompressed chunk, so a stream of chunks does not allocate and
    /// fault in fresh memory for each one.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > self.scratch.capacity() {
            self.scratch = buf;
        }
    }

    /// Checks that a chunk decodes to `raw_len` bytes that hash to `id`,
    /// without keeping the plaintext, and that a zstd encoding is one compact
    /// frame (see [`CodecError::Inflated`]): what a server asks of every
    /// chunk it receives.
    pub fn verify(
        &mut self,
        id: &ChunkId,
        codec: Codec,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<(), CodecError> {
        match codec {
            Codec::Raw => check(id, raw_len, bytes),
            Codec::Zstd => {
                check_compact(raw_len, bytes)?;
                let mut plain = std::mem::take(&mut self.scratch);
                let checked = self
                    .decompress(bytes, raw_len, &mut plain)
                    .and_then(|()| check(id, raw_len, &plain));
                self.scratch = plain;
                checked
            }
        }
    }

    /// Decompresses into `out`, never past `raw_len` bytes.
    fn decompress(
        &mut self,
        bytes: &[u8],
        raw_len: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        if raw_len > MAX_CHUNK_LIMIT {
            return Err(CodecError::TooLarge(raw_len));
        }
        let ctx = match &mut self.ctx {
            Some(ctx) => ctx,
            None => self.ctx.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| CodecError::Decompress(e.to_string()))?,
            ),
        };
        out.clear();
        out.reserve(raw_len as usize);
        ctx.decompress_to_buffer(bytes, out)
            .map_err(|e| CodecError::Decompress(e.to_string()))?;
        Ok(())
    }
}

/// Checks a plaintext's length and id.
fn check(id: &ChunkId, raw_len: u32, plain: &[u8]) -> Result<(), CodecError> {
    if raw_len > MAX_CHUNK_LIMIT {
        return Err(CodecError::TooLarge(raw_len));
    }
    if plain.len() != raw_len as usize {
        return Err(CodecError::Length {
            expected: raw_len,
            got: plain.len(),
        });
    }
    if ChunkId::of(plain) != *id {
        return Err(CodecError::HashMismatch(*id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes no compressor shrinks, the same on every run.
    fn random_bytes(n: usize) -> Vec<u8> {
        let mut x = 0x9e3779b97f4a7c15u64;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn compressible_chunks_shrink_and_round_trip() {
        let data = b"backup ".repeat(10_000);
        let id = ChunkId::of(&data);
        let enc = Compressor::new(3).unwrap().encode(&data);
        assert_eq!(enc.codec, Codec::Zstd);
        assert!(enc.bytes.len() < data.len() / 10);
        assert_eq!(
            decode(&id, enc.codec, enc.raw_len, &enc.bytes).unwrap(),
            data
        );
    }

    #[test]
    fn the_entropy_probe_tells_random_from_compressible_data() {
        let random = random_bytes(65536);
        assert!(looks_incompressible(&random));
        // Half random, half text: zstd saves far more than 1/64.
        let mut mixed = random[..32768].to_vec();
        mixed.extend(b"some text ".repeat(3277));
        assert!(!looks_incompressible(&mixed));
        assert_eq!(
            Compressor::new(1).unwrap().encode(&mixed).codec,
            Codec::Zstd
        );
        // Bytes drawn from 200 values carry 7.6 bits: zstd still saves a little.
        let narrow: Vec<u8> = random.iter().map(|b| b % 200).collect();
        assert!(!looks_incompressible(&narrow));
    }

    #[test]
    fn incompressible_chunks_stay_raw() {
        let data = random_bytes(65536);
        let enc = Compressor::new(3).unwrap().encode(&data);
        assert_eq!(enc.codec, Codec::Raw);
        assert_eq!(enc.bytes, data);
    }

    #[test]
    fn corruption_is_detected_not_returned() {
        let data = b"some chunk data".repeat(100);
        let id = ChunkId::of(&data);
        let mut enc = Compressor::new(1).unwrap().encode(&data);
        let last = enc.bytes.len() - 1;
        enc.bytes[last] ^= 0xff;
        assert!(decode(&id, enc.codec, enc.raw_len, &enc.bytes).is_err());
        let mut raw = data.clone();
        raw[0] ^= 1;
        assert!(matches!(
            decode(&id, Codec::Raw, raw.len() as u32, &raw),
            Err(CodecError::HashMismatch(_))
        ));
        assert!(matches!(
            decode(&id, Codec::Zstd, MAX_CHUNK_LIMIT + 1, &enc.bytes),
            Err(CodecError::TooLarge(_))
        ));
    }

    #[test]
    fn mutated_chunks_decode_to_the_original_or_fail() {
        let data = format!("{:?}", (0..3000).collect::<Vec<u32>>()).into_bytes();
        let id = ChunkId::of(&data);
        let good = Compressor::new(1).unwrap().encode(&data);
        assert_eq!(good.codec, Codec::Zstd);
        let mut decoder = Decoder::new();
        let mut x = 0x2545f4914f6cdd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..5000 {
            let mut bytes = if round % 8 == 0 {
                (0..next() % 512).map(|_| next() as u8).collect()
            } else {
                good.bytes.clone()
            };
            for _ in 0..next() % 4 {
                if !bytes.is_empty() {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] = next() as u8;
                }
            }
            let raw_len = match next() % 4 {
                0 => next() as u32,
                1 => good.raw_len.wrapping_add(next() as u32 % 16),
                _ => good.raw_len,
            };
            let codec = if next() % 8 == 0 {
                Codec::Raw
            } else {
                Codec::Zstd
            };
            // Whatever the damage, a chunk that decodes is the original.
            if let Ok(plain) = decoder.decode(&id, codec, raw_len, bytes) {
                assert!(
                    plain == data,
                    "round {round}: damaged chunk passed as genuine"
                );
            }
        }
    }

    #[test]
    fn one_decoder_verifies_chunk_after_chunk_and_survives_bad_ones() {
        let mut compressor = Compressor::new(1).unwrap();
        let mut decoder = Decoder::new();
        for n in 1..20usize {
            let data = format!("chunk {n} ").repeat(500 * n).into_bytes();
            let id = ChunkId::of(&data);
            let enc = compressor.encode(&data);
            assert_eq!(enc.codec, Codec::Zstd);
            // Claiming fewer bytes than the frame holds must fail, not overrun.
            assert!(decoder
                .verify(&id, enc.codec, enc.raw_len - 1, &enc.bytes)
                .is_err());
            decoder
                .verify(&id, enc.codec, enc.raw_len, &enc.bytes)
                .unwrap();
            let plain = decoder
                .decode(&id, enc.codec, enc.raw_len, enc.bytes)
                .unwrap();
            assert_eq!(plain, data);
        }
        let raw = random_bytes(70000);
        let id = ChunkId::of(&raw);
        decoder.verify(&id, Codec::Raw, 70000, &raw).unwrap();
        assert!(matches!(
            decoder.verify(&id, Codec::Raw, 70001, &raw),
            Err(CodecError::Length { .. })
        ));
    }
}

#[cfg(test)]
mod compact_tests {
    use super::*;

    /// Text that zstd shrinks a lot.
    fn text() -> Vec<u8> {
        (0..60_000u32)
            .map(|i| b"tern chunk "[(i % 11) as usize])
            .collect()
    }

    #[test]
    fn padded_or_oversized_zstd_encodings_are_refused() {
        let data = text();
        let id = ChunkId::of(&data);
        let enc = Compressor::new(1).unwrap().encode(&data);
        assert_eq!(enc.codec, Codec::Zstd);
        let mut d = Decoder::new();
        d.verify(&id, enc.codec, enc.raw_len, &enc.bytes).unwrap();

        // A skippable frame in front: decodes to the same bytes, takes more room.
        let mut padded = vec![0x50, 0x2a, 0x4d, 0x18];
        padded.extend_from_slice(&20_000u32.to_le_bytes());
        padded.extend(std::iter::repeat_n(0u8, 20_000));
        padded.extend_from_slice(&enc.bytes);
        let err = d
            .verify(&id, Codec::Zstd, enc.raw_len, &padded)
            .unwrap_err();
        assert!(matches!(err, CodecError::Inflated { .. }), "{err}");

        // Skippable padding after the frame.
        let mut trailing = enc.bytes.clone();
        trailing.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
        let err = d
            .verify(&id, Codec::Zstd, enc.raw_len, &trailing)
            .unwrap_err();
        assert!(matches!(err, CodecError::Inflated { .. }), "{err}");

        // A zstd encoding no smaller than the plaintext (level 1 of random bytes).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 56) as u8
            })
            .collect();
        let big = zstd::bulk::compress(&noise, 1).unwrap();
        assert!(big.len() >= noise.len(), "{} of {}", big.len(), noise.len());
        let err = d
            .verify(&ChunkId::of(&noise), Codec::Zstd, noise.len() as u32, &big)
            .unwrap_err();
        assert!(matches!(err, CodecError::Inflated { .. }), "{err}");
    }
}
