//! The chunk store: pack files per storage group, a redb catalog beside them.
//!
//! - [`catalog`]: the redb tables and every query on them; [`records`] their rows.
//! - [`packs`]: the packs of every group, each group's kept by a
//!   [`pack_store::PackStore`] (the one seam where pack bytes are read and
//!   written; [`pack`]: one pack's format; `finisher`: syncing full packs
//!   off the write path).
//! - `write`, `extent` (synthetic fulls), `read`, `containers`, `users`: the
//!   operations, each an `impl Store`.
//! - `gc` and `fsck`: the store's own tools.
//! - `cloud_catalog`, `cloud_recover`: cloud groups' catalogs saved to
//!   their buckets, and a group rebuilt from one.
//!
//! Durability rule: see `write.rs` and `docs/store-format.md`.
//!
//! Lock order (a thread holding one of these takes only later ones):
//! 0. `begin_lock`: held by image begins, resumes and the removal of
//!    partial images, so that the open set and the partial records change
//!    together.
//! 1. a group's gate (`gates.rs`): shared by every data operation on the
//!    group, exclusive by its GC; a thread holds one group's gate at most,
//!    or all of them (fsck, repair) taken in order.
//! 2. `open`: the set of images being written; held only to find, add or
//!    remove an entry, never across work.
//! 3. one open image's own mutex: held while that image's data is processed
//!    (passthrough chunking and compression run here, so writers of different
//!    images go on in parallel).
//! 4. the pack appender (`PackSet::appender`): the packs being appended to.
//! 5. `pending`: chunks written to packs but not yet in the index.
//! 6. leaves: the pack set's directory and read-handle maps, the finisher's state.

pub mod catalog;
mod checkpoint;
pub mod cloud;
mod cloud_catalog;
mod cloud_recover;
mod containers;
mod error;
mod extent;
mod finisher;
mod fsck;
mod gates;
mod gc;
mod groups;
mod held;
mod live_set;
pub mod pack;
pub mod pack_store;
pub mod packs;
mod partial;
mod read;
pub mod records;
mod recovery;
mod repair;
mod replica;
mod retention;
mod scope;
mod seed;
mod space;
pub mod tables;
mod volume;
mod write;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use tern_core::names::GroupName;

use catalog::Catalog;
pub use checkpoint::CHECKPOINT_BYTES;
pub use cloud_recover::{recover_cloud_group, RecoverFrom, RecoveredGroup};
pub use containers::{container_home, default_group};
pub use error::{Result, StoreError};
pub use extent::ExtentStats;
pub use fsck::FsckReport;
pub use gc::GcReport;
use pack::Location;
use packs::PackSet;
pub use partial::Resumed;
pub use read::ReadableImage;
use records::{ChunkKey, GroupRecord};
pub use repair::RepairReport;
pub use replica::{NewReplica, ReplicaStart};
pub use scope::{Owner, Scope};
pub use seed::{LoadedBatch, SeedPin, SeedSource, StoredChunk, Verified};
pub use space::{statvfs, DEFAULT_RESERVE};
pub use write::{Liveness, SessionProbe, WriterId};

/// The default zstd level of new containers (see the benchmark in the README).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// The storage group of users and containers that name none.
pub const DEFAULT_GROUP: &str = "default";

/// The store of one `ternd` data directory.
pub struct Store {
    catalog: Catalog,
    packs: PackSet,
    /// Per group: held shared by every data operation and exclusively by GC.
    gates: gates::Gates,
    /// Chunks in packs that no committed image has indexed yet.
    pending: Mutex<HashMap<ChunkKey, Location>>,
    open: Mutex<HashMap<WriterId, write::OpenEntry>>,
    begin_lock: Mutex<()>,
    next_writer: AtomicU64,
    /// Why nothing may change, when opened read-only.
    read_only: Option<&'static str>,
    /// Now, for retention locks and commit times: never goes back.
    clock: retention::Clock,
}

/// Lowercase hex of `bytes` (seed ids, object names).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the store; the data under these locks
    // stays consistent because every update is a single insert or remove.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens (creating if needed) the store under `root` to serve it: packs a
    /// crash left open are finished, as far as start-up recovery may go (see
    /// `recovery.rs`); damage past that is [`StoreError::NeedsRepair`].
    pub fn open(root: &Path) -> Result<Self> {
        let store = Self::open_writable(root)?;
        store.recover()?;
        store.packs.seal_staged()?;
        Ok(store)
    }

    /// Opens the store without changing a byte of it: no recovery, and every
    /// write refused with [`StoreError::ReadOnly`] giving `why`.
    pub fn open_read_only(root: &Path, why: &'static str) -> Result<Self> {
        let catalog = Catalog::open_read_only(&root.join("catalog.redb"), why)?;
        let packs = PackSet::open(root, &catalog.groups()?, Some(why))?;
        let store = Self::assemble(catalog, packs, Some(why))?;
        store.number_packs()?;
        Ok(store)
    }

    /// Opens the store for `fsck --repair`: writable, but without start-up
    /// recovery (the repair salvages what recovery would refuse to touch).
    pub fn open_for_repair(root: &Path) -> Result<Self> {
        let store = Self::open_writable(root)?;
        store.number_packs()?;
        Ok(store)
    }

    fn open_writable(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)?;
        let catalog = Catalog::open(&root.join("catalog.redb"))?;
        let default = containers::default_group();
        if catalog.group_id(&default)?.is_none() {
            catalog.insert_group(&default)?;
        }
        let packs = PackSet::open(root, &catalog.groups()?, None)?;
        Self::assemble(catalog, packs, None)
    }

    fn assemble(catalog: Catalog, packs: PackSet, read_only: Option<&'static str>) -> Result<Self> {
        let clock = retention::Clock::new(catalog.meta("clock")?.unwrap_or(0));
        Ok(Self {
            catalog,
            packs,
            gates: gates::Gates::new(),
            pending: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            begin_lock: Mutex::new(()),
            next_writer: AtomicU64::new(1),
            read_only,
            clock,
        })
    }

    /// The catalog, for the replication engine's own tables (partners,
    /// copies, the trail).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Why the store is read-only, if it is.
    pub fn read_only(&self) -> Option<&'static str> {
        self.read_only
    }

    /// Keeps `bytes` of the filesystem free of new data (capped at 5% of it).
    pub fn set_reserved_space(&self, bytes: u64) -> Result<()> {
        self.packs.set_reserve(bytes)
    }

    /// How long an object GC dropped from a cloud group stays in its bucket
    /// (so that a read in flight still finds it).
    pub fn set_cloud_grace(&self, grace: std::time::Duration) {
        self.packs.set_cloud_grace(grace)
    }

    /// Creates a storage group if it does not exist; returns its id.
    pub fn ensure_group(&self, name: &GroupName) -> Result<u32> {
        if let Some(id) = self.catalog.group_id(name)? {
            return Ok(id);
        }
        let id = self.catalog.insert_group(name)?;
        let rec = GroupRecord {
            id,
            volume: None,
            cloud: None,
        };
        self.packs.add_group(name.as_str(), &rec)?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_extent;
#[cfg(test)]
mod tests_groups;
#[cfg(test)]
mod tests_partial;
