//! The set of pack files: one directory per storage group, the pack being
//! appended to in each group, the finisher for full packs, and open read handles.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tern_core::{ChunkId, Codec};

use super::finisher::PackFinisher;
use super::pack::{self, Location, PackWriter};
use super::space::FreeSpace;
use super::{lock, Result, StoreError};

/// A pack is finished once it grows past this size.
pub const PACK_TARGET: u64 = 8 << 20;
/// Open read handles kept before the cache is emptied.
const MAX_OPEN_PACKS: usize = 256;

/// Every pack of a data directory.
pub struct PackSet {
    groups_root: PathBuf,
    /// Storage group id -> its pack directory.
    dirs: Mutex<HashMap<u32, PathBuf>>,
    /// The pack being appended to in each group.
    writers: Mutex<HashMap<u32, PackWriter>>,
    /// Writes the table of full packs and syncs them, off the write path.
    finisher: PackFinisher,
    next_pack: AtomicU64,
    read_files: Mutex<HashMap<u64, Arc<File>>>,
    /// Groups whose pack directory gained a file since it was last synced
    /// (changed only while the appender is held).
    unsynced_dirs: Mutex<Vec<u32>>,
    /// Why nothing may be appended, when the store is read-only.
    read_only: Option<&'static str>,
    /// Keeps new data from taking the space reserved for deletes and GC.
    pub space: FreeSpace,
}

/// A pack file found on disk.
pub struct PackFile {
    pub group: u32,
    pub number: u64,
    pub path: PathBuf,
}

impl PackSet {
    /// The packs under `root/groups`; `groups` names the storage groups (name,
    /// id). A read-only set creates no directory and appends nothing.
    pub fn open(
        root: &Path,
        groups: &[(String, u32)],
        read_only: Option<&'static str>,
    ) -> Result<Self> {
        let groups_root = root.join("groups");
        if read_only.is_none() {
            std::fs::create_dir_all(&groups_root)?;
        }
        let set = Self {
            read_only,
            space: FreeSpace::new(root),
            groups_root,
            dirs: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
            finisher: PackFinisher::start()?,
            next_pack: AtomicU64::new(1),
            read_files: Mutex::new(HashMap::new()),
            unsynced_dirs: Mutex::new(Vec::new()),
        };
        for (name, id) in groups {
            set.add_group(name, *id)?;
        }
        Ok(set)
    }

    /// Makes the pack directory of a storage group (if needed) and knows it.
    pub fn add_group(&self, name: &str, id: u32) -> Result<()> {
        let dir = self.groups_root.join(name).join("packs");
        if self.read_only.is_none() {
            std::fs::create_dir_all(&dir)?;
        }
        lock(&self.dirs).insert(id, dir);
        Ok(())
    }

    pub fn group_ids(&self) -> Vec<u32> {
        lock(&self.dirs).keys().copied().collect()
    }

    fn dir(&self, group: u32) -> Result<PathBuf> {
        lock(&self.dirs)
            .get(&group)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("storage group {group} has no directory")))
    }

    /// Every pack of every group, by number.
    pub fn files(&self) -> Result<Vec<PackFile>> {
        let dirs: Vec<(u32, PathBuf)> = lock(&self.dirs)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut out = Vec::new();
        for (group, dir) in dirs {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in rd {
                let path = entry?.path();
                if let Some(number) = pack::pack_number(&path) {
                    out.push(PackFile {
                        group,
                        number,
                        path,
                    });
                }
            }
        }
        out.sort_by_key(|p| p.number);
        Ok(out)
    }

    /// Continues numbering after `last`, the highest pack number on disk.
    pub fn number_after(&self, last: u64) {
        self.next_pack.store(last + 1, Ordering::SeqCst);
    }

    /// Exclusive use of the packs being appended to.
    pub fn appender(&self) -> Appender<'_> {
        Appender {
            set: self,
            writers: lock(&self.writers),
        }
    }

    /// Waits until every full pack handed over is finished and durable.
    pub fn wait_finished(&self) -> Result<()> {
        self.finisher.wait_idle().map_err(StoreError::NotDurable)
    }

    /// A read handle on a pack, cached.
    pub fn file(&self, group: u32, number: u64) -> Result<Arc<File>> {
        let mut files = lock(&self.read_files);
        if let Some(f) = files.get(&number) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(pack::pack_path(&self.dir(group)?, number))?);
        if files.len() >= MAX_OPEN_PACKS {
            files.clear();
        }
        files.insert(number, f.clone());
        Ok(f)
    }

    /// Deletes a pack file (GC) and makes its removal durable.
    pub fn remove(&self, p: &PackFile) -> Result<()> {
        lock(&self.read_files).remove(&p.number);
        std::fs::remove_file(&p.path)?;
        if let Some(dir) = p.path.parent() {
            pack::sync_dir(dir)?;
        }
        Ok(())
    }

    /// Bytes held by the given packs.
    pub fn bytes(files: &[PackFile]) -> u64 {
        files
            .iter()
            .map(|p| std::fs::metadata(&p.path).map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

/// The packs being appended to, locked (see the lock order in `store/mod.rs`).
pub struct Appender<'a> {
    set: &'a PackSet,
    writers: MutexGuard<'a, HashMap<u32, PackWriter>>,
}

impl Appender<'_> {
    /// Appends a new chunk to its group's pack, unless that would take the
    /// space kept free for deletes and GC; a pack that grows past
    /// [`PACK_TARGET`] goes to the finisher.
    pub fn append(
        &mut self,
        group: u32,
        id: &ChunkId,
        codec: Codec,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<Location> {
        self.set.space.check(bytes.len() as u64)?;
        self.append_within_reserve(group, id, codec, raw_len, bytes)
    }

    /// Appends a chunk that may use the reserve: GC moving live chunks out of
    /// a pack it is about to delete (it checks the space first).
    pub fn append_within_reserve(
        &mut self,
        group: u32,
        id: &ChunkId,
        codec: Codec,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<Location> {
        if let Some(why) = self.set.read_only {
            return Err(StoreError::ReadOnly(why));
        }
        self.set.finisher.check().map_err(StoreError::NotDurable)?;
        let writer = match self.writers.entry(group) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let number = self.set.next_pack.fetch_add(1, Ordering::SeqCst);
                let w = PackWriter::create(&self.set.dir(group)?, number)?;
                let mut unsynced = lock(&self.set.unsynced_dirs);
                if !unsynced.contains(&group) {
                    unsynced.push(group);
                }
                v.insert(w)
            }
        };
        let loc = writer.append(id, codec, raw_len, bytes)?;
        if writer.size() >= PACK_TARGET {
            if let Some(full) = self.writers.remove(&group) {
                self.set
                    .finisher
                    .submit(full)
                    .map_err(StoreError::NotDurable)?;
            }
        }
        Ok(loc)
    }

    /// Makes every chunk appended so far durable: syncs the open packs and
    /// waits for the finisher. Packs reach the finisher only under this lock,
    /// so nothing appended before this call is left unsynced.
    pub fn sync_all(&mut self) -> Result<()> {
        for w in self.writers.values_mut() {
            w.sync()?;
        }
        self.set.wait_finished()?;
        // New pack files' names must be durable before an image that refers
        // to them commits (syncing a file does not persist its directory
        // entry); one directory sync per commit, not one per pack.
        let unsynced: Vec<u32> = lock(&self.set.unsynced_dirs).clone();
        for group in unsynced {
            pack::sync_dir(&self.set.dir(group)?)?;
            lock(&self.set.unsynced_dirs).retain(|g| *g != group);
        }
        Ok(())
    }

    /// Finishes every open pack (trailer, sync) and waits for it: GC may
    /// then delete or compact them like any other. The next append opens new ones.
    pub fn seal_all(&mut self) -> Result<()> {
        for (_, w) in self.writers.drain() {
            self.set
                .finisher
                .submit(w)
                .map_err(StoreError::NotDurable)?;
        }
        self.set.wait_finished()
    }

    /// Numbers of the packs being appended to.
    pub fn open_packs(&self) -> impl Iterator<Item = u64> + '_ {
        self.writers.values().map(|w| w.number)
    }
}
