//! A cloud group's local list of its objects: which pack number lives in
//! which randomly named object, and which objects GC has doomed, so that
//! nothing in steady state needs a LIST of the bucket.
//!
//! An append-only file of fixed records, each synced before the step it
//! records is relied on:
//!
//! ```text
//! record  kind u8 | pack u64 LE | name [16] | plain_len u64 LE | time u64 LE | check [8]
//! kind    1 uploaded (the object holds the pack), 2 doomed (GC dropped the
//!         pack; the object is deleted after the grace period), 3 gone (deleted)
//! check   the first 8 bytes of blake3 of the record's first 41 bytes
//! ```
//! A torn last record (a crash while appending) is cut off at open; a bad
//! record before the last one is damage, and the group does not open. When
//! most records are history, the file is rewritten (a temporary file, then
//! a rename).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const RECORD: usize = 49;
const UPLOADED: u8 = 1;
const DOOMED: u8 = 2;
const GONE: u8 = 3;

/// A pack's object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectEntry {
    pub name: [u8; 16],
    pub plain_len: u64,
}

/// An object GC no longer needs, waiting out the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doomed {
    pub pack: u64,
    pub name: [u8; 16],
    /// Unix seconds when it was doomed.
    pub since: u64,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    live: BTreeMap<u64, ObjectEntry>,
    doomed: Vec<Doomed>,
    records: usize,
}

fn encode(kind: u8, pack: u64, name: &[u8; 16], plain_len: u64, time: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[0] = kind;
    r[1..9].copy_from_slice(&pack.to_le_bytes());
    r[9..25].copy_from_slice(name);
    r[25..33].copy_from_slice(&plain_len.to_le_bytes());
    r[33..41].copy_from_slice(&time.to_le_bytes());
    let check = blake3::hash(&r[..41]);
    r[41..].copy_from_slice(&check.as_bytes()[..8]);
    r
}

fn u64_at(r: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&r[at..at + 8]);
    u64::from_le_bytes(b)
}

/// What replaying a journal's bytes gives: the live objects, the doomed
/// ones, the records read and the length of the good part.
type Replayed = (BTreeMap<u64, ObjectEntry>, Vec<Doomed>, usize, usize);

/// Replays a journal's bytes (outside input: any bytes give an answer or
/// an error, never a panic).
pub fn replay(bytes: &[u8]) -> Result<Replayed, String> {
    let mut live = BTreeMap::new();
    let mut doomed: Vec<Doomed> = Vec::new();
    let whole = bytes.len() / RECORD;
    for i in 0..whole {
        let r = &bytes[i * RECORD..(i + 1) * RECORD];
        let good = blake3::hash(&r[..41]).as_bytes()[..8] == r[41..];
        if !good {
            if i + 1 == whole && bytes.len().is_multiple_of(RECORD) {
                // The last record, torn by a crash.
                return Ok((live, doomed, i, i * RECORD));
            }
            return Err(format!("record {i} is damaged"));
        }
        let pack = u64_at(r, 1);
        let mut name = [0u8; 16];
        name.copy_from_slice(&r[9..25]);
        match r[0] {
            UPLOADED => {
                let plain_len = u64_at(r, 25);
                live.insert(pack, ObjectEntry { name, plain_len });
            }
            DOOMED => {
                if live.get(&pack).is_some_and(|e| e.name == name) {
                    live.remove(&pack);
                }
                doomed.push(Doomed {
                    pack,
                    name,
                    since: u64_at(r, 33),
                });
            }
            GONE => doomed.retain(|d| d.name != name),
            k => return Err(format!("record {i} has unknown kind {k}")),
        }
    }
    Ok((live, doomed, whole, whole * RECORD))
}

fn replay_file(path: &Path, bytes: &[u8]) -> io::Result<Replayed> {
    replay(bytes).map_err(|why| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    })
}

impl Journal {
    /// Opens (creating) the journal at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (live, doomed, records, good) = replay_file(path, &bytes)?;
        if good < bytes.len() {
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        let mut j = Self {
            path: path.to_path_buf(),
            file,
            live,
            doomed,
            records,
        };
        if j.records > 2 * (j.live.len() + j.doomed.len()) + 1024 {
            j.rewrite()?;
        }
        Ok(j)
    }

    /// Reads the journal at `path` without changing it (fsck of a stopped
    /// store): a torn last record is ignored, not cut, and nothing can be
    /// appended.
    pub fn open_read_only(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let bytes = std::fs::read(path)?;
        let (live, doomed, records, _) = replay_file(path, &bytes)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            live,
            doomed,
            records,
        })
    }

    fn append(&mut self, record: [u8; RECORD]) -> io::Result<()> {
        self.file.write_all(&record)?;
        self.file.sync_data()?;
        self.records += 1;
        Ok(())
    }

    /// Records that pack `pack` is now object `name`.
    pub fn uploaded(&mut self, pack: u64, name: [u8; 16], plain_len: u64) -> io::Result<()> {
        self.append(encode(UPLOADED, pack, &name, plain_len, 0))?;
        self.live.insert(pack, ObjectEntry { name, plain_len });
        Ok(())
    }

    /// Records that pack `pack` is dropped; its object waits to be deleted.
    pub fn doom(&mut self, pack: u64, now: u64) -> io::Result<()> {
        let Some(e) = self.live.get(&pack).copied() else {
            return Ok(());
        };
        self.append(encode(DOOMED, pack, &e.name, 0, now))?;
        self.live.remove(&pack);
        self.doomed.push(Doomed {
            pack,
            name: e.name,
            since: now,
        });
        Ok(())
    }

    /// Records that doomed object `name` is deleted.
    pub fn gone(&mut self, name: [u8; 16]) -> io::Result<()> {
        self.append(encode(GONE, 0, &name, 0, 0))?;
        self.doomed.retain(|d| d.name != name);
        Ok(())
    }

    pub fn get(&self, pack: u64) -> Option<ObjectEntry> {
        self.live.get(&pack).copied()
    }

    pub fn live(&self) -> &BTreeMap<u64, ObjectEntry> {
        &self.live
    }

    pub fn doomed(&self) -> &[Doomed] {
        &self.doomed
    }

    /// Writes only what is current, through a temporary file and a rename.
    fn rewrite(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut out = Vec::with_capacity((self.live.len() + self.doomed.len()) * RECORD);
        for (pack, e) in &self.live {
            out.extend_from_slice(&encode(UPLOADED, *pack, &e.name, e.plain_len, 0));
        }
        for d in &self.doomed {
            out.extend_from_slice(&encode(UPLOADED, d.pack, &d.name, 0, 0));
            out.extend_from_slice(&encode(DOOMED, d.pack, &d.name, 0, d.since));
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            crate::store::pack::sync_dir(dir)?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.records = out.len() / RECORD;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_replays_uploads_dooms_and_deletes_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("objects");
        let mut j = Journal::open(&path).unwrap();
        j.uploaded(1, [1; 16], 100).unwrap();
        j.uploaded(2, [2; 16], 200).unwrap();
        j.uploaded(3, [3; 16], 300).unwrap();
        j.doom(2, 50).unwrap();
        j.doom(3, 60).unwrap();
        j.gone([3; 16]).unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.live().keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(j.get(1).unwrap().plain_len, 100);
        assert_eq!(
            j.doomed(),
            &[Doomed {
                pack: 2,
                name: [2; 16],
                since: 50
            }]
        );
    }

    #[test]
    fn a_torn_last_record_is_cut_and_damage_before_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("objects");
        let mut j = Journal::open(&path).unwrap();
        j.uploaded(1, [1; 16], 100).unwrap();
        j.uploaded(2, [2; 16], 200).unwrap();
        drop(j);
        let whole = std::fs::read(&path).unwrap();
        // A crash in the middle of the second record.
        std::fs::write(&path, &whole[..RECORD + 20]).unwrap();
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.live().len(), 1);
        j.uploaded(3, [3; 16], 300).unwrap();
        drop(j);
        assert_eq!(Journal::open(&path).unwrap().live().len(), 2);
        let mut bad = std::fs::read(&path).unwrap();
        bad[3] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(Journal::open(&path).is_err());
    }

    #[test]
    fn a_journal_mostly_history_is_rewritten_to_what_is_current() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("objects");
        let mut j = Journal::open(&path).unwrap();
        for n in 0..1200u64 {
            j.uploaded(n, [(n % 250) as u8 + 1; 16], n).unwrap();
            j.doom(n, 1).unwrap();
            j.gone([(n % 250) as u8 + 1; 16]).unwrap();
        }
        j.uploaded(5000, [9; 16], 7).unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), RECORD as u64);
        assert_eq!(j.get(5000).unwrap().plain_len, 7);
        assert!(j.doomed().is_empty());
    }
}
