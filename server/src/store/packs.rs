//! The set of packs: one [`PackStore`] per storage group (where its packs
//! are kept), the pack being appended to in each group, the finisher for
//! full packs, and open read handles. Nothing else in the engine touches
//! pack bytes but through here and `pack.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tern_core::{ChunkId, Codec};

use super::cloud::{CloudPackStore, CloudUsage, Orphan};
use super::finisher::PackFinisher;
use super::pack::{Location, PackWriter};
use super::pack_store::{DirPackStore, PackObject, PackStore};
use super::records::GroupRecord;
use super::space::FreeSpace;
use super::volume;
use super::{lock, Result, StoreError};

/// A pack is finished once it grows past this size.
pub const PACK_TARGET: u64 = 8 << 20;
/// Open read handles kept before the cache is emptied.
const MAX_OPEN_PACKS: usize = 256;

/// Every pack of a data directory.
pub struct PackSet {
    groups_root: PathBuf,
    /// Storage group id -> where its packs are kept.
    stores: Mutex<HashMap<u32, Arc<dyn PackStore>>>,
    /// The pack being appended to in each group.
    writers: Mutex<HashMap<u32, PackWriter>>,
    /// Writes the table of full packs and syncs them, off the write path.
    finisher: PackFinisher,
    next_pack: AtomicU64,
    read_files: Mutex<HashMap<u64, Arc<dyn PackObject>>>,
    /// Groups whose pack store gained a pack since it was last synced
    /// (changed only while the appender is held).
    unsynced: Mutex<Vec<u32>>,
    /// Why nothing may be appended, when the store is read-only.
    read_only: Option<&'static str>,
    /// Keeps new data from taking the space reserved for deletes and GC:
    /// the data directory's filesystem.
    pub space: Arc<FreeSpace>,
    /// The same for each group on a volume of its own.
    volumes: Mutex<HashMap<u32, Arc<FreeSpace>>>,
    /// Seconds a cloud group's doomed object stays in its bucket.
    cloud_grace: AtomicU64,
}

/// A pack, by its storage group and number (numbers are unique across groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackRef {
    pub group: u32,
    pub number: u64,
}

impl PackSet {
    /// The packs under `root/groups` and on the groups' own volumes; `groups`
    /// names the storage groups. A read-only set creates no directory and
    /// appends nothing.
    pub fn open(
        root: &Path,
        groups: &[(String, GroupRecord)],
        read_only: Option<&'static str>,
    ) -> Result<Self> {
        let groups_root = root.join("groups");
        if read_only.is_none() {
            std::fs::create_dir_all(&groups_root)?;
        }
        let set = Self {
            read_only,
            space: Arc::new(FreeSpace::new(root)),
            volumes: Mutex::new(HashMap::new()),
            groups_root,
            stores: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
            finisher: PackFinisher::start()?,
            next_pack: AtomicU64::new(1),
            read_files: Mutex::new(HashMap::new()),
            unsynced: Mutex::new(Vec::new()),
            cloud_grace: AtomicU64::new(super::cloud::DEFAULT_GRACE.as_secs()),
        };
        for (name, rec) in groups {
            set.add_group(name, rec)?;
        }
        Ok(set)
    }

    /// Makes the pack store of a storage group (its directory, if needed)
    /// and knows it. A group on a volume of its own is checked to be on
    /// that volume first.
    pub fn add_group(&self, name: &str, rec: &GroupRecord) -> Result<()> {
        if let Some(spec) = &rec.cloud {
            let dir = self.groups_root.join(name);
            let store = CloudPackStore::open(name, &dir, spec.clone(), self.read_only.is_some())?;
            lock(&self.stores).insert(rec.id, Arc::new(store));
            return Ok(());
        }
        let dir = match &rec.volume {
            Some(vol) => {
                volume::check(vol, name)?;
                let space = Arc::new(FreeSpace::new(&vol.path));
                space.set_reserve(self.space.reserve())?;
                lock(&self.volumes).insert(rec.id, space);
                volume::packs_dir(vol)
            }
            None => self.groups_root.join(name).join("packs"),
        };
        let store = DirPackStore::open(dir, self.read_only.is_some())?;
        lock(&self.stores).insert(rec.id, Arc::new(store));
        Ok(())
    }

    /// The data directory the set's groups live under (unless on volumes of their own).
    pub fn data_dir(&self) -> &Path {
        self.groups_root.parent().unwrap_or(&self.groups_root)
    }

    /// Deletes what a removed group left in its directory (packs with
    /// nothing indexed) and forgets its pack store.
    pub fn remove_group(&self, id: u32) -> Result<()> {
        if let Ok(store) = self.store(id) {
            store.clear()?;
        }
        lock(&self.writers).remove(&id);
        lock(&self.stores).remove(&id);
        lock(&self.volumes).remove(&id);
        Ok(())
    }

    /// The free space that group `group`'s new packs take from.
    pub fn space_of(&self, group: u32) -> Arc<FreeSpace> {
        lock(&self.volumes)
            .get(&group)
            .cloned()
            .unwrap_or_else(|| self.space.clone())
    }

    /// Sets the reserve on every filesystem packs are on.
    pub fn set_reserve(&self, bytes: u64) -> Result<()> {
        self.space.set_reserve(bytes)?;
        for space in lock(&self.volumes).values() {
            space.set_reserve(bytes)?;
        }
        Ok(())
    }

    pub fn group_ids(&self) -> Vec<u32> {
        lock(&self.stores).keys().copied().collect()
    }

    pub(super) fn store(&self, group: u32) -> Result<Arc<dyn PackStore>> {
        lock(&self.stores)
            .get(&group)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("storage group {group} has no pack store")))
    }

    /// Every pack of every group, by number.
    pub fn packs(&self) -> Result<Vec<PackRef>> {
        let stores: Vec<(u32, Arc<dyn PackStore>)> = lock(&self.stores)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut out = Vec::new();
        for (group, store) in stores {
            for number in store.list()? {
                out.push(PackRef { group, number });
            }
        }
        out.sort_by_key(|p| p.number);
        Ok(out)
    }

    /// Every pack of group `group`.
    pub fn packs_of(&self, group: u32) -> Result<Vec<PackRef>> {
        let mut out: Vec<PackRef> = self
            .store(group)?
            .list()?
            .into_iter()
            .map(|number| PackRef { group, number })
            .collect();
        out.sort_by_key(|p| p.number);
        Ok(out)
    }

    /// Where a pack is, for messages.
    pub fn describe(&self, p: &PackRef) -> String {
        match self.store(p.group) {
            Ok(store) => store.describe(p.number),
            Err(_) => format!("pack {} of storage group {}", p.number, p.group),
        }
    }

    /// A pack's length in bytes.
    pub fn size(&self, p: &PackRef) -> Result<u64> {
        Ok(self.store(p.group)?.size(p.number)?)
    }

    /// Opens a pack to change it in place (recovery and repair).
    pub fn open_to_change(&self, p: &PackRef) -> Result<Box<dyn PackObject>> {
        if let Some(why) = self.read_only {
            return Err(StoreError::ReadOnly(why));
        }
        lock(&self.read_files).remove(&p.number);
        Ok(self.store(p.group)?.open_to_change(p.number)?)
    }

    /// Continues numbering after `last`, the highest pack number on disk.
    pub fn number_after(&self, last: u64) {
        self.next_pack.store(last + 1, Ordering::SeqCst);
    }

    /// Takes `n` pack numbers no pack has (for packs a recovered group
    /// adopts); the first of them.
    pub fn reserve_numbers(&self, n: u64) -> u64 {
        self.next_pack.fetch_add(n, Ordering::SeqCst)
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
    pub fn reader(&self, group: u32, number: u64) -> Result<Arc<dyn PackObject>> {
        let mut files = lock(&self.read_files);
        if let Some(f) = files.get(&number) {
            return Ok(f.clone());
        }
        let f = self.store(group)?.open(number)?;
        if files.len() >= MAX_OPEN_PACKS {
            files.clear();
        }
        files.insert(number, f.clone());
        Ok(f)
    }

    /// True if pack `p` is sealed for good (a cloud group's uploaded pack):
    /// recovery need not look at it.
    pub fn sealed(&self, p: &PackRef) -> bool {
        self.store(p.group).is_ok_and(|s| s.sealed(p.number))
    }

    /// Hands every finished pack a cloud group still has staged (a crash or
    /// an unreachable bucket left them) to its uploads: start-up, after
    /// recovery. The next commit in the group waits for them.
    pub fn seal_staged(&self) -> Result<()> {
        for p in self.packs()? {
            let store = self.store(p.group)?;
            if store.seals_open_packs() && !store.sealed(p.number) {
                store.seal(p.number)?;
            }
        }
        Ok(())
    }

    /// Deletes what group `group`'s earlier deletes only doomed, once their
    /// grace period is over (a cloud group's objects).
    pub fn purge(&self, group: u32) -> Result<u64> {
        let grace = Duration::from_secs(self.cloud_grace.load(Ordering::Relaxed));
        Ok(self.store(group)?.purge(grace)?)
    }

    /// Deletes the objects in group `group`'s bucket that no record names,
    /// once older than the grace period; how many (0 for other groups). One
    /// LIST: for GC, not the steady state.
    pub fn delete_orphans(&self, group: u32) -> Result<u64> {
        let grace = Duration::from_secs(self.cloud_grace.load(Ordering::Relaxed));
        let store = self.store(group)?;
        match store.cloud() {
            Some(cloud) => Ok(cloud.delete_orphans(grace)?),
            None => Ok(0),
        }
    }

    /// The objects in group `group`'s bucket that no record names (none
    /// for other groups): one LIST, for fsck.
    pub fn orphans(&self, group: u32) -> Result<Vec<Orphan>> {
        let store = self.store(group)?;
        match store.cloud() {
            Some(cloud) => Ok(cloud.orphans()?),
            None => Ok(Vec::new()),
        }
    }

    /// How long GC's deletes in cloud groups wait before the objects go.
    pub fn set_cloud_grace(&self, grace: Duration) {
        self.cloud_grace.store(grace.as_secs(), Ordering::Relaxed);
    }

    /// Waits until group `group`'s finished packs are where its store keeps
    /// them for good (a cloud group's: uploaded). Called without the
    /// appender, so that a slow or unreachable bucket holds up only the
    /// commits of its own group.
    pub fn wait_sealed(&self, group: u32) -> Result<()> {
        Ok(self.store(group)?.wait_sealed()?)
    }

    /// Requests made to every cloud group's bucket since ternd started.
    pub fn bucket_requests(&self) -> u64 {
        self.group_ids()
            .into_iter()
            .filter_map(|g| self.cloud_usage(g))
            .map(|u| u.puts + u.gets + u.deletes + u.heads)
            .sum()
    }

    /// A cloud group's bucket figures; `None` for other groups.
    pub fn cloud_usage(&self, group: u32) -> Option<CloudUsage> {
        self.store(group).ok()?.cloud_usage()
    }

    /// Deletes a pack (GC) and makes its removal durable.
    pub fn remove(&self, p: &PackRef) -> Result<()> {
        lock(&self.read_files).remove(&p.number);
        Ok(self.store(p.group)?.delete(p.number)?)
    }

    /// Bytes held by the given packs (one that vanished counts 0).
    pub fn bytes(&self, packs: &[PackRef]) -> u64 {
        packs.iter().map(|p| self.size(p).unwrap_or(0)).sum()
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
        self.set.space_of(group).check(bytes.len() as u64)?;
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
                let w = PackWriter::create(self.set.store(group)?.create(number)?, number)?;
                let mut unsynced = lock(&self.set.unsynced);
                if !unsynced.contains(&group) {
                    unsynced.push(group);
                }
                v.insert(w)
            }
        };
        let loc = writer.append(id, codec, raw_len, bytes)?;
        if writer.size() >= PACK_TARGET {
            if let Some(full) = self.writers.remove(&group) {
                self.finish(group, full)?;
            }
        }
        Ok(loc)
    }

    /// Hands a pack to the finisher, which seals it in its group's store.
    fn finish(&mut self, group: u32, pack: PackWriter) -> Result<()> {
        let store = self.set.store(group)?;
        self.set
            .finisher
            .submit(pack, store)
            .map_err(StoreError::NotDurable)
    }

    /// Makes every chunk appended so far durable where it was written:
    /// syncs the open packs and waits for the finisher. Packs reach the
    /// finisher only under this lock, so nothing appended before this call
    /// is left unsynced. If group `committing` keeps its packs in a bucket,
    /// its open pack is sealed instead of synced (other cloud groups' open
    /// packs are synced where they are built, and sealed at their own
    /// group's commits, so that one group's checkpoints do not cut another's
    /// objects small); that its uploads are done is [`PackSet::wait_sealed`]'s
    /// business, after this lock is released.
    pub fn sync_all(&mut self, committing: u32) -> Result<()> {
        if self.set.store(committing)?.seals_open_packs() {
            if let Some(w) = self.writers.remove(&committing) {
                self.finish(committing, w)?;
            }
        }
        for w in self.writers.values_mut() {
            w.sync()?;
        }
        self.set.wait_finished()?;
        // New packs must be findable before an image that refers to them
        // commits (syncing a file does not persist its directory entry); one
        // store sync per commit, not one per pack.
        let unsynced: Vec<u32> = lock(&self.set.unsynced).clone();
        for g in unsynced {
            self.set.store(g)?.sync()?;
            lock(&self.set.unsynced).retain(|u| *u != g);
        }
        Ok(())
    }

    /// Finishes group `group`'s open pack (trailer, sync) and waits for it:
    /// GC may then delete or compact it like any other. The next append
    /// opens a new one.
    pub fn seal_group(&mut self, group: u32) -> Result<()> {
        if let Some(w) = self.writers.remove(&group) {
            self.finish(group, w)?;
        }
        self.set.wait_finished()
    }

    /// Numbers of the packs being appended to.
    pub fn open_packs(&self) -> impl Iterator<Item = u64> + '_ {
        self.writers.values().map(|w| w.number)
    }
}
