//! Where packs are kept: the one seam through which the engine reads and
//! writes pack bytes. A storage group has one [`PackStore`]: a
//! [`DirPackStore`] (a directory under the data directory or on a volume of
//! its own) or a `cloud::CloudPackStore` (objects in an S3 bucket). The pack format itself (`pack.rs`) works on a
//! [`PackObject`], whatever keeps it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One pack's bytes: positioned reads and writes, as a file gives them.
pub trait PackObject: Send + Sync {
    /// Fills `buf` from `offset`; an error if the pack ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The pack's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Cuts (or extends) the pack to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the bytes written so far durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the bytes and the length durable.
    fn sync_all(&self) -> io::Result<()>;
}

impl PackObject for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
}

/// The packs of one storage group, by number.
pub trait PackStore: Send + Sync {
    /// Where they are, for messages.
    fn describe(&self, number: u64) -> String;
    /// Every pack's number.
    fn list(&self) -> io::Result<Vec<u64>>;
    /// Creates pack `number`, which must not exist, for appending.
    fn create(&self, number: u64) -> io::Result<Box<dyn PackObject>>;
    /// Opens pack `number` for reading.
    fn open(&self, number: u64) -> io::Result<Arc<dyn PackObject>>;
    /// Opens pack `number` to change it in place (recovery and repair).
    fn open_to_change(&self, number: u64) -> io::Result<Box<dyn PackObject>>;
    /// Pack `number`'s length in bytes.
    fn size(&self, number: u64) -> io::Result<u64>;
    /// Deletes pack `number`, durably.
    fn delete(&self, number: u64) -> io::Result<()>;
    /// Makes the packs created so far findable after a crash (their
    /// names, as syncing a pack's bytes does not persist its directory entry).
    fn sync(&self) -> io::Result<()>;
    /// True if a pack must be sealed before a commit may refer to its
    /// chunks: the store cannot make an open pack durable where it keeps it.
    fn seals_open_packs(&self) -> bool {
        false
    }
    /// True if pack `number` has been sealed for good (it is finished by
    /// construction and never changes in place, so recovery skips it).
    fn sealed(&self, _number: u64) -> bool {
        false
    }
    /// Pack `number` is finished and synced where it was built: a store
    /// that keeps packs elsewhere starts moving it there (without waiting on
    /// the network: the finisher calls this for every group).
    fn seal(&self, _number: u64) -> io::Result<()> {
        Ok(())
    }
    /// Waits until every pack handed to `seal` is where the store keeps
    /// packs for good; an error if one could not be moved there (it is tried
    /// again later).
    fn wait_sealed(&self) -> io::Result<()> {
        Ok(())
    }
    /// Deletes for good what earlier deletes only doomed, once `grace` has
    /// passed since; the number of objects deleted.
    fn purge(&self, _grace: std::time::Duration) -> io::Result<u64> {
        Ok(0)
    }
    /// Deletes every pack now, for a group being removed (which holds no
    /// chunk any more).
    fn clear(&self) -> io::Result<()> {
        for number in self.list()? {
            self.delete(number)?;
        }
        Ok(())
    }
    /// A cloud group's bucket figures.
    fn cloud_usage(&self) -> Option<super::cloud::CloudUsage> {
        None
    }
    /// The cloud group's own store, for what only a bucket has (its
    /// catalog objects).
    fn cloud(&self) -> Option<&super::cloud::CloudPackStore> {
        None
    }
}

/// Packs as files `{number:016x}.pack` in one directory.
pub struct DirPackStore {
    dir: PathBuf,
}

impl DirPackStore {
    /// The packs in `dir`, created unless `read_only`.
    pub fn open(dir: PathBuf, read_only: bool) -> io::Result<Self> {
        if !read_only {
            std::fs::create_dir_all(&dir)?;
        }
        Ok(Self { dir })
    }

    /// The file of pack `number`.
    pub fn path(&self, number: u64) -> PathBuf {
        pack_path(&self.dir, number)
    }
}

impl PackStore for DirPackStore {
    fn describe(&self, number: u64) -> String {
        self.path(number).display().to_string()
    }

    fn list(&self) -> io::Result<Vec<u64>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in rd {
            if let Some(n) = pack_number(&entry?.path()) {
                out.push(n);
            }
        }
        Ok(out)
    }

    fn create(&self, number: u64) -> io::Result<Box<dyn PackObject>> {
        // Only ternd reads packs: 0600 whatever the umask.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path(number))?;
        Ok(Box::new(file))
    }

    fn open(&self, number: u64) -> io::Result<Arc<dyn PackObject>> {
        Ok(Arc::new(File::open(self.path(number))?))
    }

    fn open_to_change(&self, number: u64) -> io::Result<Box<dyn PackObject>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(number))?;
        Ok(Box::new(file))
    }

    fn size(&self, number: u64) -> io::Result<u64> {
        Ok(std::fs::metadata(self.path(number))?.len())
    }

    fn delete(&self, number: u64) -> io::Result<()> {
        std::fs::remove_file(self.path(number))?;
        sync_dir(&self.dir)
    }

    fn sync(&self) -> io::Result<()> {
        sync_dir(&self.dir)
    }
}

/// The file name of pack `number` in `dir`.
pub fn pack_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016x}.pack"))
}

/// Parses a pack file name back into its number.
pub fn pack_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let hex = name.strip_suffix(".pack")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Makes the entries of directory `dir` (a created or removed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
