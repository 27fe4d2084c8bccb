//! A redb storage backend that reads the catalog file and never writes it.
//!
//! `ternd fsck` and a server started on a full disk open the catalog through
//! this: whatever redb writes (the allocator repair after an unclean stop, a
//! transaction the store refuses to commit) lands in memory and is dropped.
//! Locks are the file's own, so a running ternd still excludes it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Bytes per overlay block: a write changes whole blocks of the in-memory copy.
const BLOCK: u64 = 4096;

/// The catalog file, with every write kept in memory.
#[derive(Debug)]
pub struct CopyOnWrite {
    /// Reads and locks go to the file itself; its write methods are never called.
    file: FileBackend,
    state: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// The length redb last set (the file's own at the start).
    len: u64,
    /// The length of the file on disk: bytes past it read as zeros.
    file_len: u64,
    blocks: HashMap<u64, Box<[u8]>>,
}

impl CopyOnWrite {
    /// `file` must be open for reading and writing (byte-range write locks
    /// need it); it is only read.
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        let file = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(Self {
            file,
            state: Mutex::new(Overlay {
                len,
                file_len: len,
                blocks: HashMap::new(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, Overlay> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One block as it is now: from memory, else from the file (zeros past its end).
    fn read_block(&self, o: &Overlay, block: u64) -> io::Result<Box<[u8]>> {
        if let Some(b) = o.blocks.get(&block) {
            return Ok(b.clone());
        }
        let mut buf = vec![0u8; BLOCK as usize].into_boxed_slice();
        let start = block * BLOCK;
        if start < o.file_len {
            let n = (o.file_len - start).min(BLOCK) as usize;
            self.file.read(start, &mut buf[..n])?;
        }
        Ok(buf)
    }
}

impl StorageBackend for CopyOnWrite {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.state().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let o = self.state();
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|end| *end <= o.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = ((BLOCK as usize) - within).min((end - pos) as usize);
            let at = (pos - offset) as usize;
            match o.blocks.get(&block) {
                Some(b) => out[at..at + n].copy_from_slice(&b[within..within + n]),
                None => {
                    let b = self.read_block(&o, block)?;
                    out[at..at + n].copy_from_slice(&b[within..within + n]);
                }
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut o = self.state();
        if len < o.len {
            // Bytes cut off must read as zeros if the length grows again.
            o.file_len = o.file_len.min(len);
            let first_gone = len.div_ceil(BLOCK);
            o.blocks.retain(|b, _| *b < first_gone);
            if !len.is_multiple_of(BLOCK) {
                let last = len / BLOCK;
                if let Some(b) = o.blocks.get_mut(&last) {
                    b[(len % BLOCK) as usize..].fill(0);
                }
            }
        }
        o.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut o = self.state();
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past u64"))?;
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = ((BLOCK as usize) - within).min((end - pos) as usize);
            let mut b = self.read_block(&o, block)?;
            let at = (pos - offset) as usize;
            b[within..within + n].copy_from_slice(&data[at..at + n]);
            o.blocks.insert(block, b);
            pos += n as u64;
        }
        o.len = o.len.max(end);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stay_in_memory_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let cow = CopyOnWrite::new(file).unwrap();
        cow.write(4090, &[1u8; 20]).unwrap();
        cow.set_len(12_000).unwrap();
        let mut out = vec![0u8; 12_000];
        cow.read(0, &mut out).unwrap();
        assert_eq!(&out[..4090], &[7u8; 4090][..]);
        assert_eq!(&out[4090..4110], &[1u8; 20][..]);
        assert_eq!(&out[4110..10_000], &vec![7u8; 5890][..]);
        assert_eq!(&out[10_000..], &vec![0u8; 2000][..]);
        cow.set_len(5000).unwrap();
        cow.set_len(6000).unwrap();
        cow.read(4000, &mut out[..2000]).unwrap();
        assert_eq!(&out[..90], &[7u8; 90][..]);
        assert_eq!(&out[1000..2000], &[0u8; 1000][..]);
        assert!(cow.read(5999, &mut [0u8; 2]).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 10_000]);
    }
}
