//! Cloud storage groups: packs kept in an S3 bucket, sealed.
//!
//! A pack is built in the group's local staging directory like any other;
//! when it is finished (full, or sealed for a commit) the group's upload
//! thread (`uploads`) puts it whole as one object under a random name,
//! records the name in the group's journal and deletes the staged file. An
//! image commits only after every pack it references is uploaded, so the
//! commit point stays one catalog transaction. Reads fetch sealed segments
//! by range through a bounded cache, reading ahead when a pack is read in
//! order. GC's deletes doom an object; it is deleted a grace period later
//! ([`CloudPackStore::purge`]), so a read that found it still finds it.
//!
//! - `sealed`: the object and key formats (ChaCha20-Poly1305, argon2id).
//! - `bucket`: the S3 requests, retried, counted.
//! - `journal`: pack number -> object name, locally.
//! - `orphans`: objects no record names, found by a LIST (fsck, GC).
//! - `reader`: ranged reads and the segment cache.
//! - `uploads`: the upload thread and what a commit waits for.
//! - `setup`: making a group (probe, key object, secrets).
//! - `catalog_objects`, `saving`: the group's catalog in its bucket, for
//!   disaster recovery (the engine's `cloud_catalog.rs` drives them).

pub mod bucket;
pub mod catalog_objects;
pub mod journal;
mod orphans;
mod reader;
mod saving;
pub mod sealed;
mod setup;
mod uploads;

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bucket::Bucket;
use catalog_objects::SavedState;
use journal::Journal;
pub use orphans::Orphan;
use reader::{ObjectReader, SegmentCache};
use sealed::DataKey;
use uploads::Uploads;

use super::hex;
use super::pack_store::{DirPackStore, PackObject, PackStore};
pub use setup::{adopt, create as create_group, open_key, CloudSecrets, GroupPassphrase};

/// How long a doomed object stays in the bucket after GC dropped its pack,
/// unless ternd.toml's `cloud_grace_secs` says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// Decrypted segments kept for reads, per group (in memory, filled only by
/// reads). A restore reads a duplicate chunk from the object it was first
/// stored in, whose segment is fetched again (1 MiB) if the cache let it go:
/// restoring v1 (2 GiB, 616 MiB stored) fetched 734 MiB with a 64 MiB
/// cache, 634 MiB with this one. Every byte fetched is an S3 egress charge.
const CACHE_BYTES: usize = 256 << 20;
/// The group's next objects a reader reads ahead into: read-ahead reaches
/// 16 segments past the reader, two objects of 8 MiB (more if GC or small
/// commits cut them shorter).
const SUCCESSORS: usize = 4;

/// What a cloud group did with its bucket since ternd started, and holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudUsage {
    pub objects: u64,
    pub object_bytes: u64,
    pub doomed: u64,
    /// When the group's catalog was last saved to the bucket (0: never),
    /// and the images it listed.
    pub catalog_saved: u64,
    pub catalog_images: u64,
    pub staged_bytes: u64,
    pub cache_bytes: u64,
    pub puts: u64,
    pub gets: u64,
    pub deletes: u64,
    pub heads: u64,
    pub errors: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// The packs of one cloud group.
pub struct CloudPackStore {
    inner: Arc<Inner>,
    uploads: Uploads,
}

struct Inner {
    bucket: Arc<Bucket>,
    key: DataKey,
    staging: DirPackStore,
    journal: Mutex<Journal>,
    /// Names of objects being uploaded, from before their PUT until the
    /// journal (packs) or the saved catalog state (recipe objects) has them:
    /// what tells `orphans` they are not orphans.
    in_flight: Mutex<HashSet<[u8; 16]>>,
    cache: Arc<SegmentCache>,
    /// The group's directory (staging, journal, secrets, catalog-saved).
    dir: PathBuf,
    /// What was saved of the group's catalog (`saving.rs`).
    saved: Mutex<SavedState>,
    /// The objects that were doomed already when the last manifest's
    /// snapshot was taken: it does not list them, so a recovery never looks
    /// for them, and only they may be purged.
    purgeable: Mutex<HashSet<[u8; 16]>>,
    /// Why this server no longer writes to the bucket, once another server
    /// took the prefix's lease.
    taken_over: Mutex<Option<String>>,
    lease_checked: AtomicBool,
    /// Held by whoever saves the catalog (the catalog thread, GC): one at a time.
    saving: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl CloudPackStore {
    /// The store of group `name`, whose local files are in `dir` (staging,
    /// journal, secrets) and whose objects are in `spec`'s bucket.
    pub fn open(
        name: &str,
        dir: &Path,
        spec: bucket::BucketSpec,
        read_only: bool,
    ) -> io::Result<Self> {
        let secrets = CloudSecrets::load(dir)?;
        let bucket = Bucket::new(spec, &secrets.credentials)?;
        let staging = DirPackStore::open(staging_dir(dir), read_only)?;
        let journal = if read_only {
            Journal::open_read_only(&dir.join("objects"))?
        } else {
            Journal::open(&dir.join("objects"))?
        };
        let saved = saving::load_state(dir, read_only)?;
        let inner = Arc::new(Inner {
            bucket: Arc::new(bucket),
            key: secrets.data_key()?,
            staging,
            journal: Mutex::new(journal),
            in_flight: Mutex::new(HashSet::new()),
            cache: Arc::new(SegmentCache::new(CACHE_BYTES)),
            dir: dir.to_path_buf(),
            purgeable: Mutex::new(HashSet::new()),
            saved: Mutex::new(saved),
            taken_over: Mutex::new(None),
            lease_checked: AtomicBool::new(false),
            saving: Mutex::new(()),
        });
        let worker = inner.clone();
        let uploads = Uploads::start(name, move |n| worker.upload(n))?;
        Ok(Self { inner, uploads })
    }

    /// Where it is, for `tern group ls`.
    pub fn location(&self) -> String {
        self.inner.bucket.spec().location()
    }

    /// The objects in the bucket no record of the group names (one LIST).
    pub fn orphans(&self) -> io::Result<Vec<Orphan>> {
        self.inner.orphans()
    }

    /// Deletes the orphans older than `grace`; how many.
    pub fn delete_orphans(&self, grace: Duration) -> io::Result<u64> {
        self.inner.delete_orphans(grace)
    }
}

impl Inner {
    fn sealed(&self, number: u64) -> bool {
        lock(&self.journal).get(number).is_some()
    }

    /// Uploads finished pack `number` as a new object, records it, and drops
    /// the staged file. A crash before the record leaves the staged file
    /// (uploaded again at the next start, under a new name; the first object
    /// is then unreferenced); after it, a staged file already recorded is
    /// simply deleted.
    fn upload(&self, number: u64) -> io::Result<()> {
        if let Some(why) = lock(&self.taken_over).clone() {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
        }
        let path = self.staging.path(number);
        if self.sealed(number) {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let mut file = std::fs::File::open(&path)?;
        let plain_len = file.metadata()?.len();
        let name: [u8; 16] = sealed::random().map_err(io::Error::other)?;
        let object =
            sealed::seal_object_from(&self.key, &name, plain_len, |part| file.read_exact(part))?;
        lock(&self.in_flight).insert(name);
        let recorded = self
            .bucket
            .put(&hex(&name), object)
            .map_err(io::Error::from)
            .and_then(|()| lock(&self.journal).uploaded(number, name, plain_len));
        lock(&self.in_flight).remove(&name);
        recorded?;
        std::fs::remove_file(&path)?;
        Ok(())
    }

    /// Deletes the objects doomed longer ago than the grace period that the
    /// last saved manifest does not list.
    fn purge_older_than(&self, grace: Duration) -> io::Result<u64> {
        let cutoff = now_unix().saturating_sub(grace.as_secs());
        let purgeable = lock(&self.purgeable).clone();
        self.purge_doomed(|d| d.since <= cutoff && purgeable.contains(&d.name))
    }

    /// Deletes the doomed objects `due` picks.
    fn purge_doomed(&self, due: impl Fn(&journal::Doomed) -> bool) -> io::Result<u64> {
        let due: Vec<_> = lock(&self.journal)
            .doomed()
            .iter()
            .filter(|d| due(d))
            .copied()
            .collect();
        for d in &due {
            self.bucket.delete(&hex(&d.name))?;
            lock(&self.journal).gone(d.name)?;
        }
        Ok(due.len() as u64)
    }

    pub fn usage(&self) -> CloudUsage {
        use std::sync::atomic::Ordering::Relaxed;
        let j = lock(&self.journal);
        let c = &self.bucket.counters;
        let object_len = |plain: u64| {
            sealed::ObjectHeader {
                segment: sealed::SEGMENT,
                plain_len: plain,
            }
            .object_len()
        };
        let saved = lock(&self.saved);
        CloudUsage {
            objects: (j.live().len() + j.doomed().len()) as u64,
            object_bytes: j.live().values().map(|e| object_len(e.plain_len)).sum(),
            doomed: j.doomed().len() as u64,
            catalog_saved: if saved.seq > 0 { saved.saved_at } else { 0 },
            catalog_images: saved.images,
            staged_bytes: self
                .staging
                .list()
                .unwrap_or_default()
                .iter()
                .map(|n| self.staging.size(*n).unwrap_or(0))
                .sum(),
            cache_bytes: self.cache.bytes() as u64,
            puts: c.put.load(Relaxed),
            gets: c.get.load(Relaxed),
            deletes: c.delete.load(Relaxed),
            heads: c.head.load(Relaxed),
            errors: c.errors.load(Relaxed),
            bytes_up: c.bytes_up.load(Relaxed),
            bytes_down: c.bytes_down.load(Relaxed),
        }
    }
}

/// Where a cloud group builds its packs before they are uploaded.
pub fn staging_dir(group_dir: &Path) -> PathBuf {
    group_dir.join("staging")
}

fn sealed_in_bucket(number: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("pack {number} is sealed in the bucket and cannot be changed in place"),
    )
}

impl PackStore for CloudPackStore {
    fn describe(&self, number: u64) -> String {
        let entry = lock(&self.inner.journal).get(number);
        match entry {
            Some(e) => format!(
                "object {} (pack {number}) in {}",
                hex(&e.name),
                self.location()
            ),
            None => self.inner.staging.describe(number),
        }
    }

    fn list(&self) -> io::Result<Vec<u64>> {
        let mut out: Vec<u64> = lock(&self.inner.journal).live().keys().copied().collect();
        for n in self.inner.staging.list()? {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        Ok(out)
    }

    fn create(&self, number: u64) -> io::Result<Box<dyn PackObject>> {
        self.inner.staging.create(number)
    }

    fn open(&self, number: u64) -> io::Result<Arc<dyn PackObject>> {
        let this = &self.inner;
        // The group's next objects: packs are written in the order backups
        // write, so a restore that reads to the end of one goes on there.
        let (entry, successors) = {
            let journal = lock(&this.journal);
            let next = journal.live().range(number + 1..).take(SUCCESSORS);
            (journal.get(number), next.map(|(_, e)| *e).collect())
        };
        match entry {
            Some(e) => Ok(Arc::new(ObjectReader::new(
                this.bucket.clone(),
                this.key.clone(),
                this.cache.clone(),
                e,
                successors,
            ))),
            None => this.staging.open(number),
        }
    }

    fn open_to_change(&self, number: u64) -> io::Result<Box<dyn PackObject>> {
        if self.inner.sealed(number) {
            return Err(sealed_in_bucket(number));
        }
        self.inner.staging.open_to_change(number)
    }

    fn size(&self, number: u64) -> io::Result<u64> {
        let entry = lock(&self.inner.journal).get(number);
        match entry {
            Some(e) => Ok(e.plain_len),
            None => self.inner.staging.size(number),
        }
    }

    fn delete(&self, number: u64) -> io::Result<()> {
        if self.inner.sealed(number) {
            return lock(&self.inner.journal).doom(number, now_unix());
        }
        self.inner.staging.delete(number)
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.staging.sync()
    }

    fn seals_open_packs(&self) -> bool {
        true
    }

    fn sealed(&self, number: u64) -> bool {
        self.inner.sealed(number)
    }

    /// Queues finished pack `number` for the group's upload thread.
    fn seal(&self, number: u64) -> io::Result<()> {
        self.uploads.push(number);
        Ok(())
    }

    fn wait_sealed(&self) -> io::Result<()> {
        self.uploads.wait_queued()
    }

    /// Deletes every object of the group now (its catalog objects and
    /// lease too), the key object last.
    fn clear(&self) -> io::Result<()> {
        for number in self.list()? {
            self.delete(number)?;
        }
        self.inner.purge_doomed(|_| true)?;
        self.clear_catalog()?;
        self.inner.bucket.delete(setup::KEY_OBJECT)?;
        Ok(())
    }

    fn purge(&self, grace: Duration) -> io::Result<u64> {
        self.inner.purge_older_than(grace)
    }

    fn cloud_usage(&self) -> Option<CloudUsage> {
        Some(self.inner.usage())
    }

    fn cloud(&self) -> Option<&CloudPackStore> {
        Some(self)
    }
}

#[cfg(test)]
mod tests;
