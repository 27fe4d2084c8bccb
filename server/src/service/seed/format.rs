//! The seed's media format (docs/seed-format.md): a header, then sealed
//! segments (sealed by [`super::seal`]) holding chunk records.
//!
//! The export is deterministic (same chunks, same segments, same nonces), so
//! a resumed export rewrites byte for byte what an interrupted one had
//! written and a nonce never seals two different plaintexts.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use tern_core::chunker::MAX_CHUNK_LIMIT;
use tern_core::{ChunkId, Codec};

use super::seal::{Sealer, TAG_LEN};
use super::SeedError;

pub const MAGIC: &[u8; 8] = b"TERNSEED";
pub const FORMAT: u16 = 1;
pub const HEADER_LEN: usize = 32;
/// A file's header kinds.
pub const KIND_VOLUME: u8 = 1;
pub const KIND_MANIFEST: u8 = 2;
const FLAG_ENCRYPTED: u8 = 1;
/// A segment is closed once its plaintext reaches this size.
pub const SEGMENT_TARGET: usize = 1 << 20;
/// The largest sealed segment a reader accepts: a full segment plus one
/// chunk record of the largest chunk.
pub const MAX_SEALED: usize = SEGMENT_TARGET + MAX_CHUNK_LIMIT as usize + 1024;
/// What a segment adds to its plaintext: the length prefix and the tag.
pub const SEGMENT_OVERHEAD: u64 = 4 + TAG_LEN as u64;
/// A chunk record's header: id, codec, raw length, stored length.
pub const RECORD_HEADER: usize = 32 + 1 + 4 + 4;
/// The manifest's file number in nonces (volumes are numbered from 1).
pub const MANIFEST_NUMBER: u32 = u32::MAX;

/// The first 32 bytes of every seed file, in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub encrypted: bool,
    pub seed: [u8; 16],
    /// The volume's number; 0 for the manifest.
    pub number: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&FORMAT.to_le_bytes());
        b[10] = self.kind;
        b[11] = if self.encrypted { FLAG_ENCRYPTED } else { 0 };
        b[12..28].copy_from_slice(&self.seed);
        b[28..32].copy_from_slice(&self.number.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, String> {
        if &b[..8] != MAGIC {
            return Err("not a tern seed file (bad magic)".into());
        }
        let format = u16::from_le_bytes([b[8], b[9]]);
        if format != FORMAT {
            return Err(format!(
                "seed format {format}; this ternd reads format {FORMAT}"
            ));
        }
        if b[11] & !FLAG_ENCRYPTED != 0 {
            return Err(format!("unknown flags {:#x}", b[11]));
        }
        let mut seed = [0u8; 16];
        seed.copy_from_slice(&b[12..28]);
        Ok(Self {
            kind: b[10],
            encrypted: b[11] & FLAG_ENCRYPTED != 0,
            seed,
            number: u32::from_le_bytes([b[28], b[29], b[30], b[31]]),
        })
    }
}

/// One chunk in a volume: its id and its bytes as the source stored them.
pub use crate::store::StoredChunk as Record;

impl Record {
    pub fn encoded_len(stored_len: usize) -> usize {
        RECORD_HEADER + stored_len
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_bytes());
        out.push(self.codec as u8);
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&(self.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.bytes);
    }

    /// The records of a segment's plaintext; bounded by the plaintext itself.
    pub fn decode_all(mut b: &[u8]) -> Result<Vec<Record>, String> {
        let mut out = Vec::new();
        while !b.is_empty() {
            if b.len() < RECORD_HEADER {
                return Err("a chunk record is cut short".into());
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&b[..32]);
            let codec = Codec::from_u8(b[32]).ok_or("a chunk record has an unknown codec")?;
            let raw_len = u32::from_le_bytes([b[33], b[34], b[35], b[36]]);
            let stored = u32::from_le_bytes([b[37], b[38], b[39], b[40]]) as usize;
            if raw_len == 0 || raw_len > MAX_CHUNK_LIMIT || stored > b.len() - RECORD_HEADER {
                return Err("a chunk record's lengths are out of range".into());
            }
            out.push(Record {
                id: ChunkId(id),
                codec,
                raw_len,
                bytes: b[RECORD_HEADER..RECORD_HEADER + stored].to_vec(),
            });
            b = &b[RECORD_HEADER + stored..];
        }
        Ok(out)
    }
}

/// Opens a seed file from the media for reading: a regular file only (a
/// device, a FIFO or a socket, directly or through a symlink, is refused
/// before a byte is read: /dev/zero would never end, and opening a FIFO
/// would wait for a writer), and at most `limit` bytes long. Returns the
/// file and its length.
pub fn open_regular(path: &Path, limit: u64) -> Result<(File, u64), SeedError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let name = file_name(path);
    // Non-blocking, so that the open of a FIFO returns at once; reads of a
    // regular file ignore the flag.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| SeedError::io(path, e))?;
    let meta = file.metadata().map_err(|e| SeedError::io(path, e))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(damaged(&name, format!("it is {what}, not a regular file")));
    }
    if meta.len() > limit {
        return Err(damaged(
            &name,
            format!("{} bytes, more than the {limit} it may have", meta.len()),
        ));
    }
    Ok((file, meta.len()))
}

/// Writes one seed file: its header, then segments; hashes what it writes.
pub struct SegmentWriter {
    out: BufWriter<File>,
    header: [u8; HEADER_LEN],
    number: u32,
    next_segment: u64,
    len: u64,
    hash: blake3::Hasher,
}

impl SegmentWriter {
    pub fn create(path: &Path, header: Header) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        // Chunks in the clear are for the owner's eyes only.
        let mode = if header.encrypted { 0o644 } else { 0o600 };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        let h = header.encode();
        let mut w = Self {
            out: BufWriter::with_capacity(1 << 20, file),
            header: h,
            number: if header.kind == KIND_MANIFEST {
                MANIFEST_NUMBER
            } else {
                header.number
            },
            next_segment: 0,
            len: 0,
            hash: blake3::Hasher::new(),
        };
        w.write_raw(&h)?;
        Ok(w)
    }

    /// Reopens a volume an interrupted export left: cut back to `len` (the
    /// end of its last durable segment) and hashed up to there.
    pub fn resume(path: &Path, header: Header, len: u64, segments: u64) -> std::io::Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        file.set_len(len)?;
        let mut hash = blake3::Hasher::new();
        let mut prefix = BufReader::with_capacity(1 << 20, (&file).take(len));
        std::io::copy(&mut prefix, &mut hash)?;
        file.seek(SeekFrom::Start(len))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            header: header.encode(),
            number: header.number,
            next_segment: segments,
            len,
            hash,
        })
    }

    /// Writes bytes outside any segment (the header, a manifest's key block).
    pub fn write_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.out.write_all(b)?;
        self.hash.update(b);
        self.len += b.len() as u64;
        Ok(())
    }

    pub fn write_segment(
        &mut self,
        sealer: &Sealer,
        plain: &[u8],
        last: bool,
    ) -> std::io::Result<()> {
        let sealed = sealer.seal(&self.header, self.number, self.next_segment, last, plain);
        self.next_segment += 1;
        self.write_raw(&(sealed.len() as u32).to_le_bytes())?;
        self.write_raw(&sealed)?;
        self.start_writeback()
    }

    /// Starts writing what is written so far to the device without waiting
    /// for it, so that the next sync waits for the tail only instead of a
    /// whole stretch: the disk works while the next segments are sealed.
    #[cfg(target_os = "linux")]
    fn start_writeback(&mut self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        self.out.flush()?;
        // SAFETY: a plain syscall on a descriptor this writer owns.
        let rc = unsafe {
            libc::sync_file_range(
                self.out.get_ref().as_raw_fd(),
                0,
                0,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        // Only a hint: a filesystem that cannot do it still syncs later.
        let _ = rc;
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// The manifest's one segment takes its revision as its index.
    pub fn skip_to_segment(&mut self, index: u64) {
        self.next_segment = index;
    }

    /// Bytes written so far, and segments.
    pub fn position(&self) -> (u64, u64) {
        (self.len, self.next_segment)
    }

    /// Flushes and syncs what was written.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    /// Syncs and returns the file's length and blake3.
    pub fn finish(mut self) -> std::io::Result<(u64, String)> {
        self.sync()?;
        Ok((self.len, self.hash.finalize().to_hex().to_string()))
    }
}

/// Reads one seed file's segments, opening each; the file must end right
/// after its last segment.
pub struct SegmentReader<'a> {
    input: BufReader<std::io::Take<File>>,
    pub header: Header,
    /// The file's size when it was opened.
    pub size: u64,
    /// Every byte read so far, header included: a volume's whole-file
    /// blake3 is checked in the same pass that loads it.
    read: u64,
    hash: blake3::Hasher,
    raw_header: [u8; HEADER_LEN],
    number: u32,
    next_segment: u64,
    done: bool,
    sealer: &'a Sealer,
    name: String,
}

impl<'a> SegmentReader<'a> {
    /// Opens `path` (a regular file of at most `limit` bytes, read no
    /// further even if it grows) and reads its header (and, for a manifest,
    /// nothing more: the caller reads the key block with [`Self::read_raw`]).
    pub fn open(path: &Path, sealer: &'a Sealer, limit: u64) -> Result<Self, SeedError> {
        let name = file_name(path);
        let (file, size) = open_regular(path, limit)?;
        let mut input = BufReader::with_capacity(1 << 20, file.take(limit));
        let mut raw = [0u8; HEADER_LEN];
        input
            .read_exact(&mut raw)
            .map_err(|_| damaged(&name, "shorter than a header"))?;
        let mut hash = blake3::Hasher::new();
        hash.update(&raw);
        let header = Header::decode(&raw).map_err(|why| damaged(&name, why))?;
        let number = if header.kind == KIND_MANIFEST {
            MANIFEST_NUMBER
        } else {
            header.number
        };
        Ok(Self {
            input,
            header,
            size,
            read: HEADER_LEN as u64,
            hash,
            raw_header: raw,
            number,
            next_segment: 0,
            done: false,
            sealer,
            name,
        })
    }

    pub fn read_raw(&mut self, b: &mut [u8]) -> Result<(), SeedError> {
        self.input
            .read_exact(b)
            .map_err(|_| damaged(&self.name, "cut short"))?;
        self.hash.update(b);
        self.read += b.len() as u64;
        Ok(())
    }

    /// The bytes read so far and their blake3.
    pub fn read_so_far(&self) -> (u64, blake3::Hash) {
        (self.read, self.hash.finalize())
    }

    /// The manifest's one segment has its revision as its index.
    pub fn skip_to_segment(&mut self, index: u64) {
        self.next_segment = index;
    }

    /// The next segment's plaintext; `None` after the last one.
    pub fn next_segment(&mut self) -> Result<Option<Vec<u8>>, SeedError> {
        if self.done {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.read_raw(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if !(TAG_LEN..=MAX_SEALED).contains(&len) {
            return Err(damaged(&self.name, format!("a segment of {len} bytes")));
        }
        let mut sealed = vec![0u8; len];
        self.read_raw(&mut sealed)?;
        let segment = self.next_segment;
        self.next_segment += 1;
        // The file's end says which segment is the last, and the seal's flag
        // must agree: a file cut at a segment boundary fails its new last
        // segment, and bytes after the true last one fail as a segment.
        let last = self
            .input
            .fill_buf()
            .map_err(|e| SeedError::io(Path::new(&self.name), e))?
            .is_empty();
        let plain = self
            .sealer
            .open(&self.raw_header, self.number, segment, last, sealed)
            .ok_or_else(|| {
                damaged(
                    &self.name,
                    format!("segment {segment} fails its authentication (damaged or tampered)"),
                )
            })?;
        self.done = last;
        Ok(Some(plain))
    }
}

pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

pub fn damaged(file: &str, why: impl Into<String>) -> SeedError {
    SeedError::Damaged {
        file: file.into(),
        why: why.into(),
    }
}

/// A volume's file name: `vol-000001.tern`.
pub fn volume_file(number: u32) -> String {
    format!("vol-{number:06}.tern")
}

pub const MANIFEST_FILE: &str = "manifest.tern";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_lengths_are_refused() {
        let r = Record {
            id: ChunkId::of(b"x"),
            codec: Codec::Raw,
            raw_len: 1,
            bytes: b"x".to_vec(),
        };
        let mut b = Vec::new();
        r.encode_into(&mut b);
        r.encode_into(&mut b);
        assert_eq!(Record::decode_all(&b).unwrap(), vec![r.clone(), r]);
        assert!(Record::decode_all(&b[..b.len() - 1]).is_err());
        let mut bad = b.clone();
        bad[37] = 0xff;
        assert!(Record::decode_all(&bad).is_err());
    }

    #[test]
    fn headers_round_trip_and_strangers_are_refused() {
        let h = Header {
            kind: KIND_MANIFEST,
            encrypted: false,
            seed: [9; 16],
            number: 0,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(Header::decode(&bad).is_err());
    }
    /// Reads every segment of `path`; the error's text when it fails.
    fn read_all(path: &Path, sealer: &Sealer) -> Result<Vec<Vec<u8>>, String> {
        let mut r = SegmentReader::open(path, sealer, u64::MAX).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(p) = r.next_segment().map_err(|e| e.to_string())? {
            out.push(p);
        }
        Ok(out)
    }

    #[test]
    fn a_file_cut_at_a_segment_boundary_or_grown_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol-000002.tern");
        let header = Header {
            kind: KIND_VOLUME,
            encrypted: false,
            seed: [3; 16],
            number: 2,
        };
        let sealer = Sealer::Plain;
        let mut w = SegmentWriter::create(&path, header).unwrap();
        w.write_segment(&sealer, b"one", false).unwrap();
        let (after_first, _) = w.position();
        w.write_segment(&sealer, b"two", true).unwrap();
        w.finish().unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(read_all(&path, &sealer).unwrap(), [b"one", b"two"]);

        std::fs::write(&path, &whole[..after_first as usize]).unwrap();
        let cut = read_all(&path, &sealer).unwrap_err();
        assert!(cut.contains("segment 0 fails its authentication"), "{cut}");

        let mut grown = whole.clone();
        grown.extend_from_slice(&whole[HEADER_LEN..after_first as usize]);
        std::fs::write(&path, &grown).unwrap();
        let grown = read_all(&path, &sealer).unwrap_err();
        assert!(
            grown.contains("segment 1 fails its authentication"),
            "{grown}"
        );
    }
}
