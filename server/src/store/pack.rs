//! Pack files: chunks appended one after another, closed by a table of contents.
//!
//! ```text
//! header   "TERNPACK" | u32 LE version (1) | u32 LE reserved          16 bytes
//! entry    id [32] | codec u8 | 3 reserved | u32 LE raw_len | u32 LE stored_len | bytes
//! ...
//! table    per entry: id [32] | u64 LE entry offset | codec u8 | u32 LE raw_len | u32 LE stored_len
//! footer   u64 LE table offset | u32 LE count | [16] blake3(table) | "TERNPEND"   36 bytes
//! ```
//! A pack without a valid footer (the one being written when the process died)
//! is recovered by scanning its entries and cutting off a torn tail. The table
//! makes it possible to rebuild the chunk index from packs alone. Where a
//! pack's bytes are kept is `pack_store.rs`'s business: everything here works
//! on a [`PackObject`].

use std::io;

use tern_core::chunker::MAX_CHUNK_LIMIT;
use tern_core::{ChunkId, Codec};

use super::pack_store::PackObject;
pub use super::pack_store::{pack_number, pack_path, sync_dir};

const MAGIC: &[u8; 8] = b"TERNPACK";
const END_MAGIC: &[u8; 8] = b"TERNPEND";
const VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 16;
/// Bytes of an entry's header before its stored bytes.
pub const ENTRY_HEADER_LEN: u64 = 44;
const TABLE_ENTRY_LEN: usize = 49;
pub const FOOTER_LEN: u64 = 36;
/// What one entry takes in a finished pack besides its stored bytes: its
/// header before them and its row in the table.
pub const ENTRY_OVERHEAD: u64 = ENTRY_HEADER_LEN + TABLE_ENTRY_LEN as u64;

/// Where a chunk's stored bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: u64,
    /// Offset of the stored bytes (after the entry header).
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
}

impl Location {
    pub const ENCODED_LEN: usize = 25;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0..8].copy_from_slice(&self.pack.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.stored_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.raw_len.to_le_bytes());
        b[24] = self.codec as u8;
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::ENCODED_LEN {
            return None;
        }
        Some(Self {
            pack: u64::from_le_bytes(b[0..8].try_into().ok()?),
            offset: u64::from_le_bytes(b[8..16].try_into().ok()?),
            stored_len: u32::from_le_bytes(b[16..20].try_into().ok()?),
            raw_len: u32::from_le_bytes(b[20..24].try_into().ok()?),
            codec: Codec::from_u8(b[24])?,
        })
    }
}

/// One entry of a pack's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub loc: Location,
}

/// The pack being appended to.
pub struct PackWriter {
    pub number: u64,
    file: Box<dyn PackObject>,
    len: u64,
    entries: Vec<PackEntry>,
    synced: bool,
}

impl PackWriter {
    /// Starts pack `number` in `file`, a new, empty pack object.
    pub fn create(file: Box<dyn PackObject>, number: u64) -> io::Result<Self> {
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        file.write_all_at(&header, 0)?;
        Ok(Self {
            number,
            file,
            len: HEADER_LEN,
            entries: Vec::new(),
            synced: false,
        })
    }

    pub fn size(&self) -> u64 {
        self.len
    }

    /// Appends a chunk. On failure the pack is cut back to its last good entry.
    pub fn append(
        &mut self,
        id: &ChunkId,
        codec: Codec,
        raw_len: u32,
        bytes: &[u8],
    ) -> io::Result<Location> {
        let mut head = [0u8; ENTRY_HEADER_LEN as usize];
        head[..32].copy_from_slice(id.as_bytes());
        head[32] = codec as u8;
        head[36..40].copy_from_slice(&raw_len.to_le_bytes());
        head[40..44].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        // Two writes rather than one copy of the chunk into a joined buffer.
        let written = self
            .file
            .write_all_at(&head, self.len)
            .and_then(|()| self.file.write_all_at(bytes, self.len + ENTRY_HEADER_LEN));
        if let Err(e) = written {
            // Keep the pack parseable: drop whatever part of the entry landed.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        let loc = Location {
            pack: self.number,
            offset: self.len + ENTRY_HEADER_LEN,
            stored_len: bytes.len() as u32,
            raw_len,
            codec,
        };
        self.entries.push(PackEntry { id: *id, loc });
        self.len += ENTRY_HEADER_LEN + bytes.len() as u64;
        self.synced = false;
        Ok(loc)
    }

    /// Makes every appended entry durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if !self.synced {
            self.file.sync_data()?;
            self.synced = true;
        }
        Ok(())
    }

    /// Writes the table and footer and syncs: the pack is complete.
    pub fn finish(mut self) -> io::Result<()> {
        write_footer(&*self.file, self.len, &self.entries)?;
        self.file.sync_all()?;
        self.synced = true;
        Ok(())
    }
}

fn write_footer(file: &dyn PackObject, table_offset: u64, entries: &[PackEntry]) -> io::Result<()> {
    let mut table = Vec::with_capacity(entries.len() * TABLE_ENTRY_LEN + FOOTER_LEN as usize);
    for e in entries {
        table.extend_from_slice(e.id.as_bytes());
        table.extend_from_slice(&(e.loc.offset - ENTRY_HEADER_LEN).to_le_bytes());
        table.push(e.loc.codec as u8);
        table.extend_from_slice(&e.loc.raw_len.to_le_bytes());
        table.extend_from_slice(&e.loc.stored_len.to_le_bytes());
    }
    let sum = blake3::hash(&table);
    let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
    footer.extend_from_slice(&table_offset.to_le_bytes());
    footer.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    footer.extend_from_slice(&sum.as_bytes()[..16]);
    footer.extend_from_slice(END_MAGIC);
    table.extend_from_slice(&footer);
    file.set_len(table_offset)?;
    file.write_all_at(&table, table_offset)?;
    Ok(())
}

/// What a pack file holds, as far as it could be read.
#[derive(Debug)]
pub struct PackContents {
    pub entries: Vec<PackEntry>,
    /// True when the footer was present and valid.
    pub finished: bool,
    /// End of the last intact entry.
    pub data_end: u64,
    pub file_len: u64,
}

/// Reads a pack's entries from its table, or by scanning if it has none.
pub fn read_contents(file: &dyn PackObject, number: u64) -> io::Result<PackContents> {
    let file_len = file.size()?;
    let mut header = [0u8; HEADER_LEN as usize];
    if file_len < HEADER_LEN {
        return Err(invalid("pack shorter than its header"));
    }
    file.read_exact_at(&mut header, 0)?;
    if &header[..8] != MAGIC {
        return Err(invalid("not a tern pack"));
    }
    if u32::from_le_bytes([header[8], header[9], header[10], header[11]]) != VERSION {
        return Err(invalid("unknown pack version"));
    }
    if let Some(c) = read_table(file, file_len, number)? {
        return Ok(c);
    }
    scan(file, file_len, number)
}

fn read_table(
    file: &dyn PackObject,
    file_len: u64,
    number: u64,
) -> io::Result<Option<PackContents>> {
    if file_len < HEADER_LEN + FOOTER_LEN {
        return Ok(None);
    }
    let mut footer = [0u8; FOOTER_LEN as usize];
    file.read_exact_at(&mut footer, file_len - FOOTER_LEN)?;
    if &footer[28..36] != END_MAGIC {
        return Ok(None);
    }
    let table_offset = u64::from_le_bytes(footer[0..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes")) as u64;
    let table_len = count * TABLE_ENTRY_LEN as u64;
    // Checked: both numbers come from the file, and a wrapped sum could
    // match `file_len` and size the table allocation from garbage.
    let table_end = table_offset
        .checked_add(table_len)
        .and_then(|end| end.checked_add(FOOTER_LEN));
    if table_offset < HEADER_LEN || table_end != Some(file_len) {
        return Ok(None);
    }
    let mut table = vec![0u8; table_len as usize];
    file.read_exact_at(&mut table, table_offset)?;
    if blake3::hash(&table).as_bytes()[..16] != footer[12..28] {
        return Ok(None);
    }
    let mut entries = Vec::with_capacity(count as usize);
    for t in table.chunks_exact(TABLE_ENTRY_LEN) {
        let id = ChunkId(t[0..32].try_into().expect("32 bytes"));
        let offset = u64::from_le_bytes(t[32..40].try_into().expect("8 bytes"));
        let codec = Codec::from_u8(t[40]).ok_or_else(|| invalid("unknown codec in pack table"))?;
        let raw_len = u32::from_le_bytes(t[41..45].try_into().expect("4 bytes"));
        let stored_len = u32::from_le_bytes(t[45..49].try_into().expect("4 bytes"));
        let end = offset.checked_add(ENTRY_HEADER_LEN + u64::from(stored_len));
        if offset < HEADER_LEN || end.is_none_or(|end| end > table_offset) {
            return Err(invalid("pack table entry points outside the data"));
        }
        entries.push(PackEntry {
            id,
            loc: Location {
                pack: number,
                offset: offset + ENTRY_HEADER_LEN,
                stored_len,
                raw_len,
                codec,
            },
        });
    }
    Ok(Some(PackContents {
        entries,
        finished: true,
        data_end: table_offset,
        file_len,
    }))
}

fn scan(file: &dyn PackObject, file_len: u64, number: u64) -> io::Result<PackContents> {
    let mut entries = Vec::new();
    let mut pos = HEADER_LEN;
    let mut h = [0u8; ENTRY_HEADER_LEN as usize];
    while pos + ENTRY_HEADER_LEN <= file_len {
        file.read_exact_at(&mut h, pos)?;
        let Some(codec) = Codec::from_u8(h[32]) else {
            break;
        };
        let raw_len = u32::from_le_bytes(h[36..40].try_into().expect("4 bytes"));
        let stored_len = u32::from_le_bytes(h[40..44].try_into().expect("4 bytes"));
        if raw_len > MAX_CHUNK_LIMIT || stored_len > MAX_CHUNK_LIMIT {
            break;
        }
        let end = pos + ENTRY_HEADER_LEN + stored_len as u64;
        if end > file_len {
            break;
        }
        entries.push(PackEntry {
            id: ChunkId(h[0..32].try_into().expect("32 bytes")),
            loc: Location {
                pack: number,
                offset: pos + ENTRY_HEADER_LEN,
                stored_len,
                raw_len,
                codec,
            },
        });
        pos = end;
    }
    Ok(PackContents {
        entries,
        finished: false,
        data_end: pos,
        file_len,
    })
}

/// Completes a pack left unfinished by a crash: cuts the torn tail, writes the table.
pub fn repair(file: &dyn PackObject, contents: &PackContents) -> io::Result<()> {
    write_footer(file, contents.data_end, &contents.entries)?;
    file.sync_all()
}

/// Every entry of a pack whose stored bytes `intact` accepts, found by
/// scanning the whole file past damage: where no intact entry starts, the scan
/// moves on by one byte. `fsck --repair` uses it; the table is not trusted.
pub fn salvage(
    file: &dyn PackObject,
    number: u64,
    mut intact: impl FnMut(&PackEntry, &[u8]) -> bool,
) -> io::Result<Vec<PackEntry>> {
    // Packs are a few MiB: reading one whole beats a read per candidate offset.
    let len = usize::try_from(file.size()?).map_err(|_| invalid("pack too large"))?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0)?;
    let mut entries = Vec::new();
    let mut pos = HEADER_LEN as usize;
    let head_len = ENTRY_HEADER_LEN as usize;
    while pos + head_len <= bytes.len() {
        let h = &bytes[pos..pos + head_len];
        let raw_len = u32::from_le_bytes([h[36], h[37], h[38], h[39]]);
        let stored_len = u32::from_le_bytes([h[40], h[41], h[42], h[43]]);
        let end = pos + head_len + stored_len as usize;
        let plausible = h[33..36] == [0, 0, 0]
            && raw_len <= MAX_CHUNK_LIMIT
            && stored_len <= MAX_CHUNK_LIMIT
            && end <= bytes.len();
        let found = match Codec::from_u8(h[32]) {
            Some(codec) if plausible => {
                let mut id = [0u8; 32];
                id.copy_from_slice(&h[..32]);
                let entry = PackEntry {
                    id: ChunkId(id),
                    loc: Location {
                        pack: number,
                        offset: (pos + head_len) as u64,
                        stored_len,
                        raw_len,
                        codec,
                    },
                };
                intact(&entry, &bytes[pos + head_len..end]).then_some(entry)
            }
            _ => None,
        };
        match found {
            Some(entry) => {
                entries.push(entry);
                pos = end;
            }
            None => pos += 1,
        }
    }
    Ok(entries)
}

/// Rewrites a pack to hold exactly `entries` (intact ones, in file order):
/// a fresh header, the data up to the last of them, a new table.
pub fn rewrite_table(file: &dyn PackObject, entries: &[PackEntry]) -> io::Result<()> {
    let data_end = entries
        .last()
        .map_or(HEADER_LEN, |e| e.loc.offset + u64::from(e.loc.stored_len));
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    file.write_all_at(&header, 0)?;
    write_footer(file, data_end, entries)?;
    file.sync_all()
}

/// Reads a chunk's stored bytes.
pub fn read_stored(file: &dyn PackObject, loc: &Location) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; loc.stored_len as usize];
    file.read_exact_at(&mut buf, loc.offset)?;
    Ok(buf)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pack_store::{DirPackStore, PackStore};
    use std::fs::File;

    fn store(dir: &tempfile::TempDir) -> DirPackStore {
        DirPackStore::open(dir.path().to_path_buf(), false).unwrap()
    }

    #[test]
    fn finished_packs_list_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let packs = store(&dir);
        let mut w = PackWriter::create(packs.create(1).unwrap(), 1).unwrap();
        let a = w.append(&ChunkId::of(b"a"), Codec::Raw, 1, b"a").unwrap();
        let b = w.append(&ChunkId::of(b"bb"), Codec::Raw, 2, b"bb").unwrap();
        w.finish().unwrap();
        let c = read_contents(&*packs.open(1).unwrap(), 1).unwrap();
        assert!(c.finished);
        assert_eq!(
            c.entries.iter().map(|e| e.loc).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert_eq!(read_stored(&*packs.open(1).unwrap(), &b).unwrap(), b"bb");
    }

    #[test]
    fn a_torn_pack_is_recovered_up_to_its_last_whole_entry() {
        let dir = tempfile::tempdir().unwrap();
        let packs = store(&dir);
        let mut w = PackWriter::create(packs.create(2).unwrap(), 2).unwrap();
        w.append(&ChunkId::of(b"a"), Codec::Raw, 1, b"a").unwrap();
        w.append(&ChunkId::of(b"bbbb"), Codec::Raw, 4, b"bbbb")
            .unwrap();
        w.sync().unwrap();
        drop(w);
        let len = packs.size(2).unwrap();
        let torn = packs.open_to_change(2).unwrap();
        torn.set_len(len - 2).unwrap();
        let c = read_contents(&*torn, 2).unwrap();
        assert!(!c.finished);
        assert_eq!(c.entries.len(), 1);
        repair(&*torn, &c).unwrap();
        let c = read_contents(&*packs.open(2).unwrap(), 2).unwrap();
        assert!(c.finished);
        assert_eq!(c.entries.len(), 1);
    }

    #[test]
    fn damaged_packs_are_refused_or_read_within_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let packs = store(&dir);
        let mut w = PackWriter::create(packs.create(3).unwrap(), 3).unwrap();
        for n in 1..6u8 {
            let data = vec![n; usize::from(n) * 7];
            w.append(&ChunkId::of(&data), Codec::Raw, data.len() as u32, &data)
                .unwrap();
        }
        w.finish().unwrap();
        let good = std::fs::read(packs.path(3)).unwrap();
        let path = dir.path().join("damaged.pack");
        let check = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            if let Ok(c) = read_contents(&File::open(&path).unwrap(), 3) {
                assert!(c.data_end <= c.file_len);
                for e in &c.entries {
                    assert!(e.loc.offset >= HEADER_LEN + ENTRY_HEADER_LEN);
                    assert!(e.loc.offset + u64::from(e.loc.stored_len) <= c.data_end);
                }
            }
        };
        // A footer whose table offset would wrap the length arithmetic.
        let mut wrapping = good.clone();
        let at = good.len() - FOOTER_LEN as usize;
        wrapping[at..at + 8].copy_from_slice(&(u64::MAX - 20).to_le_bytes());
        check(&wrapping);
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut bytes = good.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
            if next() % 4 == 0 {
                bytes.truncate((next() as usize) % bytes.len());
            }
            check(&bytes);
        }
    }

    #[test]
    fn salvage_finds_every_intact_entry_past_damage() {
        let dir = tempfile::tempdir().unwrap();
        let packs = store(&dir);
        let mut w = PackWriter::create(packs.create(4).unwrap(), 4).unwrap();
        let chunks: Vec<Vec<u8>> = (1..=6u8).map(|n| vec![n; 300 + usize::from(n)]).collect();
        let locs: Vec<Location> = chunks
            .iter()
            .map(|c| {
                w.append(&ChunkId::of(c), Codec::Raw, c.len() as u32, c)
                    .unwrap()
            })
            .collect();
        w.finish().unwrap();
        let path = packs.path(4);
        let mut bytes = std::fs::read(&path).unwrap();
        // Break the second entry's header and the fourth entry's data.
        bytes[(locs[1].offset - ENTRY_HEADER_LEN + 40) as usize] ^= 0xff;
        bytes[locs[3].offset as usize + 5] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let mut verifier = tern_core::codec::Decoder::new();
        let pack = packs.open_to_change(4).unwrap();
        let found = salvage(&*pack, 4, |e, b| {
            verifier
                .verify(&e.id, e.loc.codec, e.loc.raw_len, b)
                .is_ok()
        })
        .unwrap();
        let kept: Vec<Location> = found.iter().map(|e| e.loc).collect();
        assert_eq!(kept, vec![locs[0], locs[2], locs[4], locs[5]]);
        rewrite_table(&*pack, &found).unwrap();
        let c = read_contents(&*packs.open(4).unwrap(), 4).unwrap();
        assert!(c.finished);
        assert_eq!(c.entries, found);
    }

    #[test]
    fn locations_round_trip() {
        let l = Location {
            pack: 9,
            offset: 60,
            stored_len: 7,
            raw_len: 9,
            codec: Codec::Zstd,
        };
        assert_eq!(Location::decode(&l.encode()), Some(l));
        assert_eq!(Location::decode(&[0; 3]), None);
    }
}
