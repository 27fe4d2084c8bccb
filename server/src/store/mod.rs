//! The chunk store: pack files per storage group, a redb catalog beside them.
//!
//! Durability rule: a chunk is written to a pack as it arrives and recorded in
//! an in-memory pending map; an image's close syncs the packs and then commits
//! the pending index entries, the image record and its recipe in one redb
//! transaction. Nothing becomes visible before that commit, so a crash leaves
//! committed images intact and no half image. See `docs/store-format.md`.

pub mod catalog;
mod finisher;
mod gc;
pub mod pack;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tern_core::codec::{Compressor, Decoder};
use tern_core::names::{GroupName, UserName};
use tern_core::wire::{
    ChunkRef, ContainerInfo, ContainerSettings, ErrorKind, ImageInfo, RecipeEntry, StoreStats,
    WriteStats,
};
use tern_core::{ChunkId, Codec, ContainerName, ImageName, StreamChunker};

use catalog::*;
use finisher::PackFinisher;
pub use gc::{FsckReport, GcReport};
use pack::{Location, PackWriter};

/// redb's page cache. Its default (1 GiB) would let ternd's memory grow with
/// the chunk index; past this size index pages are read from the file (the
/// kernel's page cache) instead.
const CATALOG_CACHE: usize = 256 << 20;

thread_local! {
    /// Checks received chunks; one per thread keeps its zstd context warm.
    static VERIFIER: std::cell::RefCell<Decoder> = std::cell::RefCell::new(Decoder::new());
}

/// The default zstd level of new containers (see the benchmark in the README).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// A pack is finished once it grows past this size.
const PACK_TARGET: u64 = 8 << 20;
/// Open read handles kept before the cache is emptied.
const MAX_OPEN_PACKS: usize = 256;
pub const DEFAULT_GROUP: &str = "default";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The user may not do this.
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Invalid(String),
    /// A limit such as the stream limit is reached.
    #[error("{0}")]
    Busy(String),
    /// The filesystem is full.
    #[error("no space left in the store: {0}")]
    NoSpace(String),
    /// Stored data failed verification or could not be decoded.
    #[error("store damage: {0}")]
    Corrupt(String),
    #[error("store I/O: {0}")]
    Io(String),
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            StoreError::Denied(_) => ErrorKind::Denied,
            StoreError::Invalid(_) => ErrorKind::Invalid,
            StoreError::Busy(_) => ErrorKind::Busy,
            StoreError::NoSpace(_) => ErrorKind::NoSpace,
            StoreError::Corrupt(_) => ErrorKind::Corrupt,
            StoreError::Io(_) => ErrorKind::Internal,
        }
    }
}

fn is_no_space(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.raw_os_error() == Some(28)
        || e.raw_os_error() == Some(122)
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        if is_no_space(&e) {
            StoreError::NoSpace(e.to_string())
        } else {
            StoreError::Io(e.to_string())
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                let text = e.to_string();
                if text.contains("No space left") || text.contains("StorageFull") {
                    StoreError::NoSpace(text)
                } else {
                    StoreError::Io(format!("catalog: {text}"))
                }
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct User {
    pub name: UserName,
    pub admin: bool,
    pub groups: Vec<GroupName>,
}

impl User {
    fn may_use(&self, group: &GroupName) -> bool {
        self.admin || self.groups.contains(group)
    }
}

/// Identifies an image being written.
pub type WriterId = u64;

/// A committed image opened for reading.
#[derive(Debug, Clone)]
pub struct ReadableImage {
    pub info: ImageInfo,
    pub image_id: u64,
    pub group: u32,
}

struct OpenImage {
    container_id: u64,
    container: ContainerName,
    group: u32,
    name: ImageName,
    props: Vec<u8>,
    recipe: Vec<(u64, ChunkId, u32)>,
    size: u64,
    /// Chunks asked of the writer and not yet received, with their lengths.
    missing: HashMap<ChunkId, u32>,
    stats: WriteStats,
    max_chunk: u32,
    passthrough: Option<Passthrough>,
}

struct Passthrough {
    chunker: StreamChunker,
    compressor: Compressor,
}

/// The store of one `ternd` data directory.
pub struct Store {
    root: PathBuf,
    db: Database,
    /// Held shared by every data operation and exclusively by GC.
    gate: RwLock<()>,
    writers: Mutex<HashMap<u32, PackWriter>>,
    /// Writes the table of full packs and syncs them, off the write path.
    finisher: PackFinisher,
    pending: Mutex<HashMap<[u8; 36], Location>>,
    open: Mutex<HashMap<WriterId, OpenImage>>,
    next_writer: AtomicU64,
    next_pack: AtomicU64,
    group_dirs: Mutex<HashMap<u32, PathBuf>>,
    read_files: Mutex<HashMap<u64, Arc<File>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the store; the data under these locks
    // stays consistent because every update is a single insert or remove.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens (creating if needed) the store under `root`, finishing any pack
    /// a crash left open.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("groups"))?;
        let db = redb::Builder::new()
            .set_cache_size(CATALOG_CACHE)
            .create(root.join("catalog.redb"))?;
        let store = Self {
            root: root.to_path_buf(),
            db,
            gate: RwLock::new(()),
            writers: Mutex::new(HashMap::new()),
            finisher: PackFinisher::start()?,
            pending: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            next_writer: AtomicU64::new(1),
            next_pack: AtomicU64::new(1),
            group_dirs: Mutex::new(HashMap::new()),
            read_files: Mutex::new(HashMap::new()),
        };
        store.init_catalog()?;
        store.recover_packs()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn init_catalog(&self) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let format = meta.get("format")?.map(|v| v.value());
            match format {
                None => {
                    meta.insert("format", FORMAT_VERSION)?;
                }
                Some(FORMAT_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::Invalid(format!(
                        "catalog format {other} is not supported by this ternd (it reads format {FORMAT_VERSION})"
                    )))
                }
            }
            for t in [CONTAINERS, USERS, GROUPS] {
                tx.open_table(t)?;
            }
            tx.open_table(IMAGES)?;
            tx.open_table(RECIPES)?;
            tx.open_table(CHUNKS)?;
        }
        tx.commit()?;
        self.ensure_group(&GroupName::new(DEFAULT_GROUP).expect("valid name"))?;
        let groups = self.db.begin_read()?.open_table(GROUPS)?;
        let mut dirs = lock(&self.group_dirs);
        for row in groups.iter()? {
            let (name, rec) = row?;
            let rec: GroupRecord = decode("group", rec.value())?;
            dirs.insert(rec.id, self.group_dir(name.value()));
        }
        Ok(())
    }

    fn group_dir(&self, name: &str) -> PathBuf {
        self.root.join("groups").join(name).join("packs")
    }

    /// Creates a storage group if it does not exist; returns its id.
    fn ensure_group(&self, name: &GroupName) -> Result<u32> {
        if let Some(id) = self.group_id(name)? {
            return Ok(id);
        }
        std::fs::create_dir_all(self.group_dir(name.as_str()))?;
        let tx = self.db.begin_write()?;
        let id = {
            let mut groups = tx.open_table(GROUPS)?;
            let existing = groups
                .get(name.as_str())?
                .map(|rec| decode::<GroupRecord>("group", rec.value()))
                .transpose()?;
            if let Some(rec) = existing {
                rec.id
            } else {
                let id = next_counter(&tx, "next_group")? as u32;
                groups.insert(name.as_str(), encode(&GroupRecord { id })?.as_slice())?;
                id
            }
        };
        tx.commit()?;
        lock(&self.group_dirs).insert(id, self.group_dir(name.as_str()));
        Ok(id)
    }

    fn group_id(&self, name: &GroupName) -> Result<Option<u32>> {
        let groups = self.db.begin_read()?.open_table(GROUPS)?;
        let found = groups.get(name.as_str())?;
        found
            .map(|rec| decode::<GroupRecord>("group", rec.value()).map(|r| r.id))
            .transpose()
    }

    /// Every pack of every group, with the group it belongs to.
    fn pack_files(&self) -> Result<Vec<(u32, u64, PathBuf)>> {
        let dirs: Vec<(u32, PathBuf)> = lock(&self.group_dirs)
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
                if let Some(n) = pack::pack_number(&path) {
                    out.push((group, n, path));
                }
            }
        }
        out.sort_by_key(|(_, n, _)| *n);
        Ok(out)
    }

    fn recover_packs(&self) -> Result<()> {
        let mut max = 0;
        for (_, number, path) in self.pack_files()? {
            max = max.max(number);
            let contents = pack::read_contents(&path, number)?;
            if !contents.finished {
                tracing::warn!(
                    pack = %path.display(),
                    entries = contents.entries.len(),
                    torn_bytes = contents.file_len - contents.data_end,
                    "finishing a pack left open by an unclean stop"
                );
                pack::repair(&path, &contents)?;
            }
        }
        self.next_pack.store(max + 1, Ordering::SeqCst);
        Ok(())
    }

    // ---- users -------------------------------------------------------------

    /// Adds a user, or replaces the password and rights of an existing one.
    pub fn user_set(
        &self,
        name: &UserName,
        password: &str,
        admin: bool,
        groups: Vec<GroupName>,
    ) -> Result<()> {
        if password.is_empty() {
            return Err(StoreError::Invalid("the password is empty".into()));
        }
        for g in &groups {
            self.ensure_group(g)?;
        }
        let rec = UserRecord {
            password_hash: crate::auth::hash_password(password)?,
            admin,
            groups,
        };
        let tx = self.db.begin_write()?;
        tx.open_table(USERS)?
            .insert(name.as_str(), encode(&rec)?.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    pub fn user_exists(&self, name: &UserName) -> Result<bool> {
        Ok(self
            .db
            .begin_read()?
            .open_table(USERS)?
            .get(name.as_str())?
            .is_some())
    }

    /// Checks a password; the same error for an unknown user and a wrong password.
    pub fn authenticate(&self, name: &UserName, password: &str) -> Result<User> {
        let refused = || StoreError::Denied("wrong user name or password".into());
        let rec: UserRecord = {
            let users = self.db.begin_read()?.open_table(USERS)?;
            let Some(v) = users.get(name.as_str())? else {
                // Spend the same time as a real check so names cannot be probed.
                let _ = crate::auth::verify_password("x", crate::auth::dummy_hash());
                return Err(refused());
            };
            decode("user", v.value())?
        };
        if !crate::auth::verify_password(password, &rec.password_hash) {
            return Err(refused());
        }
        Ok(User {
            name: name.clone(),
            admin: rec.admin,
            groups: rec.groups,
        })
    }

    // ---- containers --------------------------------------------------------

    pub fn container_create(
        &self,
        user: &User,
        name: &ContainerName,
        s: &ContainerSettings,
    ) -> Result<ContainerInfo> {
        let group = s
            .group
            .clone()
            .unwrap_or_else(|| GroupName::new(DEFAULT_GROUP).expect("valid name"));
        if !user.may_use(&group) {
            return Err(StoreError::Denied(format!(
                "user {} may not use storage group {group}",
                user.name
            )));
        }
        if self.group_id(&group)?.is_none() && !user.admin {
            return Err(StoreError::Denied(format!(
                "storage group {group} does not exist, and only an admin may create it"
            )));
        }
        let chunking = s.chunking.unwrap_or_default();
        chunking.validate().map_err(StoreError::Invalid)?;
        let zstd_level = s.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL);
        if !(1..=19).contains(&zstd_level) {
            return Err(StoreError::Invalid(format!(
                "zstd level {zstd_level} is outside 1..=19"
            )));
        }
        self.ensure_group(&group)?;
        let tx = self.db.begin_write()?;
        let rec = {
            let mut t = tx.open_table(CONTAINERS)?;
            if t.get(name.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "container {name} already exists"
                )));
            }
            let rec = ContainerRecord {
                id: next_counter(&tx, "next_container")?,
                group,
                chunking,
                zstd_level,
                stream_limit: s.stream_limit.unwrap_or(0),
                created: now_unix(),
            };
            t.insert(name.as_str(), encode(&rec)?.as_slice())?;
            rec
        };
        tx.commit()?;
        Ok(container_info(name.clone(), &rec, 0, 0))
    }

    fn container(&self, user: &User, name: &ContainerName) -> Result<ContainerRecord> {
        let t = self.db.begin_read()?.open_table(CONTAINERS)?;
        let Some(v) = t.get(name.as_str())? else {
            return Err(StoreError::NotFound(format!(
                "container {name} does not exist"
            )));
        };
        let rec: ContainerRecord = decode("container", v.value())?;
        if !user.may_use(&rec.group) {
            // Indistinguishable from absence: names of other tenants' containers stay private.
            return Err(StoreError::NotFound(format!(
                "container {name} does not exist"
            )));
        }
        Ok(rec)
    }

    pub fn container_list(&self, user: &User) -> Result<Vec<ContainerInfo>> {
        let tx = self.db.begin_read()?;
        let containers = tx.open_table(CONTAINERS)?;
        let images = tx.open_table(IMAGES)?;
        let mut out = Vec::new();
        for row in containers.iter()? {
            let (name, v) = row?;
            let rec: ContainerRecord = decode("container", v.value())?;
            if !user.may_use(&rec.group) {
                continue;
            }
            let (mut count, mut bytes) = (0, 0);
            for img in images.range((rec.id, "")..(rec.id + 1, ""))? {
                let (_, v) = img?;
                count += 1;
                bytes += decode::<ImageRecord>("image", v.value())?.size;
            }
            let name =
                ContainerName::new(name.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push(container_info(name, &rec, count, bytes));
        }
        Ok(out)
    }

    /// Removes an empty container.
    pub fn container_remove(&self, user: &User, name: &ContainerName) -> Result<()> {
        let rec = self.container(user, name)?;
        if lock(&self.open).values().any(|o| o.container_id == rec.id) {
            return Err(StoreError::Busy(format!(
                "container {name} has images being written"
            )));
        }
        let tx = self.db.begin_write()?;
        {
            let images = tx.open_table(IMAGES)?;
            let n = images.range((rec.id, "")..(rec.id + 1, ""))?.count();
            if n > 0 {
                return Err(StoreError::Invalid(format!(
                    "container {name} still holds {n} images; delete them first"
                )));
            }
            tx.open_table(CONTAINERS)?.remove(name.as_str())?;
        }
        tx.commit()?;
        Ok(())
    }

    // ---- writing -------------------------------------------------------------

    /// Opens a new image for writing.
    pub fn image_begin(
        &self,
        user: &User,
        container: &ContainerName,
        name: &ImageName,
        props: Vec<u8>,
        passthrough: bool,
    ) -> Result<(WriterId, ContainerRecord)> {
        let rec = self.container(user, container)?;
        let group = self.group_id(&rec.group)?.ok_or_else(|| {
            StoreError::Corrupt(format!("storage group {} is missing", rec.group))
        })?;
        if self.image_record(rec.id, name)?.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "image {name} already exists in container {container}"
            )));
        }
        let passthrough = if passthrough {
            Some(Passthrough {
                chunker: StreamChunker::new(rec.chunking),
                compressor: Compressor::new(rec.zstd_level)?,
            })
        } else {
            None
        };
        let mut open = lock(&self.open);
        if open
            .values()
            .any(|o| o.container_id == rec.id && o.name == *name)
        {
            return Err(StoreError::AlreadyExists(format!(
                "image {name} is already being written in container {container}"
            )));
        }
        let streams = open.values().filter(|o| o.container_id == rec.id).count();
        if rec.stream_limit > 0 && streams >= rec.stream_limit as usize {
            return Err(StoreError::Busy(format!(
                "container {container} allows {} images written at once; try again later",
                rec.stream_limit
            )));
        }
        let id = self.next_writer.fetch_add(1, Ordering::SeqCst);
        open.insert(
            id,
            OpenImage {
                container_id: rec.id,
                container: container.clone(),
                group,
                name: name.clone(),
                props,
                recipe: Vec::new(),
                size: 0,
                missing: HashMap::new(),
                stats: WriteStats::default(),
                max_chunk: rec.chunking.max,
                passthrough,
            },
        );
        Ok((id, rec))
    }

    /// Appends chunks to an image's recipe; returns the indexes of those the store lacks.
    pub fn image_append(&self, w: WriterId, entries: &[ChunkRef]) -> Result<Vec<u32>> {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let mut open = lock(&self.open);
        let img = open
            .get_mut(&w)
            .ok_or_else(|| StoreError::NotFound("no such image being written".into()))?;
        if img.passthrough.is_some() {
            return Err(StoreError::Invalid(
                "a passthrough image takes raw data, not chunks".into(),
            ));
        }
        let group = img.group;
        let tx = self.db.begin_read()?;
        let index = tx.open_table(CHUNKS)?;
        let pending = lock(&self.pending);
        let mut missing = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if e.len == 0 || e.len > img.max_chunk {
                return Err(StoreError::Invalid(format!(
                    "chunk of {} bytes is outside this container's limit of 1..={}",
                    e.len, img.max_chunk
                )));
            }
            img.recipe.push((img.size, e.id, e.len));
            img.size += e.len as u64;
            img.stats.chunks += 1;
            if img.missing.contains_key(&e.id) {
                continue;
            }
            let key = chunk_key(group, &e.id);
            if pending.contains_key(&key) || index.get(key.as_slice())?.is_some() {
                continue;
            }
            img.missing.insert(e.id, e.len);
            missing.push(i as u32);
        }
        Ok(missing)
    }

    /// Stores a chunk the writer was asked for, after checking it is what its id says.
    pub fn image_put_chunk(
        &self,
        w: WriterId,
        id: &ChunkId,
        codec: Codec,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<()> {
        let group = {
            let open = lock(&self.open);
            let img = open
                .get(&w)
                .ok_or_else(|| StoreError::NotFound("no such image being written".into()))?;
            match img.missing.get(id) {
                Some(&len) if len == raw_len => img.group,
                Some(&len) => {
                    return Err(StoreError::Invalid(format!(
                        "chunk {id} announced with {len} bytes but sent with {raw_len}"
                    )))
                }
                None => return Err(StoreError::Invalid(format!("chunk {id} was not asked for"))),
            }
        };
        // Verify before storing: a client must not be able to plant bytes under
        // another chunk's id and so corrupt other images through dedup.
        VERIFIER
            .with_borrow_mut(|d| d.verify(id, codec, raw_len, bytes))
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let stored = self.store_chunk(group, id, codec, raw_len, bytes)?;
        let mut open = lock(&self.open);
        if let Some(img) = open.get_mut(&w) {
            img.missing.remove(id);
            if stored {
                img.stats.new_chunks += 1;
                img.stats.new_stored_bytes += bytes.len() as u64;
            }
        }
        Ok(())
    }

    /// Passthrough: takes raw image bytes; the store chunks, dedups and compresses them.
    pub fn image_write_raw(&self, w: WriterId, data: &[u8], last: bool) -> Result<()> {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let mut open = lock(&self.open);
        let img = open
            .get_mut(&w)
            .ok_or_else(|| StoreError::NotFound("no such image being written".into()))?;
        let group = img.group;
        let Some(pt) = img.passthrough.as_mut() else {
            return Err(StoreError::Invalid(
                "raw data sent to an image opened for dedup writes".into(),
            ));
        };
        pt.chunker.push(data);
        if last {
            pt.chunker.finish();
        }
        let mut chunks = Vec::new();
        while let Some(c) = pt.chunker.next_chunk() {
            let id = ChunkId::of(c);
            let enc = if self.has_chunk(group, &id)? {
                None
            } else {
                Some(pt.compressor.encode(c))
            };
            chunks.push((id, c.len() as u32, enc));
        }
        for (id, len, enc) in chunks {
            img.recipe.push((img.size, id, len));
            img.size += len as u64;
            img.stats.chunks += 1;
            if let Some(enc) = enc {
                if self.store_chunk(group, &id, enc.codec, enc.raw_len, &enc.bytes)? {
                    img.stats.new_chunks += 1;
                    img.stats.new_stored_bytes += enc.bytes.len() as u64;
                }
            }
        }
        Ok(())
    }

    fn has_chunk(&self, group: u32, id: &ChunkId) -> Result<bool> {
        let key = chunk_key(group, id);
        if lock(&self.pending).contains_key(&key) {
            return Ok(true);
        }
        Ok(self
            .db
            .begin_read()?
            .open_table(CHUNKS)?
            .get(key.as_slice())?
            .is_some())
    }

    /// Appends a chunk to its group's pack unless the store has it; true if written.
    fn store_chunk(
        &self,
        group: u32,
        id: &ChunkId,
        codec: Codec,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<bool> {
        let key = chunk_key(group, id);
        let mut writers = lock(&self.writers);
        if lock(&self.pending).contains_key(&key)
            || self
                .db
                .begin_read()?
                .open_table(CHUNKS)?
                .get(key.as_slice())?
                .is_some()
        {
            return Ok(false);
        }
        let writer = self.group_writer(&mut writers, group)?;
        let loc = writer.append(id, codec, raw_len, bytes)?;
        lock(&self.pending).insert(key, loc);
        if writer.size() >= PACK_TARGET {
            if let Some(full) = writers.remove(&group) {
                self.finisher.submit(full).map_err(StoreError::Io)?;
            }
        }
        Ok(true)
    }

    /// The pack being appended to in `group`, started if there is none.
    fn group_writer<'a>(
        &self,
        writers: &'a mut HashMap<u32, PackWriter>,
        group: u32,
    ) -> Result<&'a mut PackWriter> {
        match writers.entry(group) {
            std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                let dir = lock(&self.group_dirs).get(&group).cloned().ok_or_else(|| {
                    StoreError::Corrupt(format!("storage group {group} has no directory"))
                })?;
                let number = self.next_pack.fetch_add(1, Ordering::SeqCst);
                Ok(v.insert(PackWriter::create(&dir, number)?))
            }
        }
    }

    /// Commits an image: syncs packs, then records index, image and recipe in one transaction.
    pub fn image_commit(&self, w: WriterId) -> Result<(ImageInfo, WriteStats)> {
        {
            let mut open = lock(&self.open);
            let img = open
                .get_mut(&w)
                .ok_or_else(|| StoreError::NotFound("no such image being written".into()))?;
            if !img.missing.is_empty() {
                let n = img.missing.len();
                open.remove(&w);
                return Err(StoreError::Invalid(format!(
                    "image closed with {n} announced chunks never sent; it was not committed"
                )));
            }
        }
        if lock(&self.open)
            .get(&w)
            .is_some_and(|i| i.passthrough.is_some())
        {
            self.image_write_raw(w, &[], true)?;
        }
        let result = self.commit_open_image(w);
        lock(&self.open).remove(&w);
        result
    }

    fn commit_open_image(&self, w: WriterId) -> Result<(ImageInfo, WriteStats)> {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let durable: Vec<([u8; 36], Location)> = {
            // Packs are only handed to the finisher under this lock, so the
            // wait ends and every pending entry is durable below.
            let mut writers = lock(&self.writers);
            for pw in writers.values_mut() {
                pw.sync()?;
            }
            self.finisher.wait_idle().map_err(StoreError::Io)?;
            lock(&self.pending).iter().map(|(k, v)| (*k, *v)).collect()
        };
        let (info, stats, image_id) = {
            let open = lock(&self.open);
            let img = open
                .get(&w)
                .ok_or_else(|| StoreError::NotFound("no such image being written".into()))?;
            let info = ImageInfo {
                container: img.container.clone(),
                name: img.name.clone(),
                size: img.size,
                chunks: img.recipe.len() as u64,
                props: img.props.clone(),
                created: now_unix(),
            };
            let mut stats = img.stats;
            stats.logical_bytes = img.size;
            (info, stats, img.container_id)
        };
        let tx = self.db.begin_write()?;
        {
            let mut chunks = tx.open_table(CHUNKS)?;
            for (k, loc) in &durable {
                chunks.insert(k.as_slice(), loc.encode().as_slice())?;
            }
            let mut images = tx.open_table(IMAGES)?;
            if images.get((image_id, info.name.as_str()))?.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "image {} already exists in container {}",
                    info.name, info.container
                )));
            }
            let id = next_counter(&tx, "next_image")?;
            let rec = ImageRecord {
                id,
                size: info.size,
                chunks: info.chunks,
                props: info.props.clone(),
                created: info.created,
            };
            images.insert((image_id, info.name.as_str()), encode(&rec)?.as_slice())?;
            let mut recipes = tx.open_table(RECIPES)?;
            let open = lock(&self.open);
            let img = open
                .get(&w)
                .ok_or_else(|| StoreError::NotFound("no such image being written".into()))?;
            for (offset, cid, len) in &img.recipe {
                recipes.insert((id, *offset), recipe_value(cid, *len).as_slice())?;
            }
        }
        tx.commit()?;
        let mut pending = lock(&self.pending);
        for (k, loc) in durable {
            if pending.get(&k) == Some(&loc) {
                pending.remove(&k);
            }
        }
        Ok((info, stats))
    }

    /// Drops an image being written; chunks it stored are left for GC.
    pub fn image_abort(&self, w: WriterId) {
        lock(&self.open).remove(&w);
    }

    // ---- reading -------------------------------------------------------------

    fn image_record(&self, container_id: u64, name: &ImageName) -> Result<Option<ImageRecord>> {
        let t = self.db.begin_read()?.open_table(IMAGES)?;
        let found = t.get((container_id, name.as_str()))?;
        found.map(|v| decode("image", v.value())).transpose()
    }

    pub fn image_open(
        &self,
        user: &User,
        container: &ContainerName,
        name: &ImageName,
    ) -> Result<ReadableImage> {
        let c = self.container(user, container)?;
        let rec = self.image_record(c.id, name)?.ok_or_else(|| {
            StoreError::NotFound(format!(
                "image {name} does not exist in container {container}"
            ))
        })?;
        let group = self
            .group_id(&c.group)?
            .ok_or_else(|| StoreError::Corrupt(format!("storage group {} is missing", c.group)))?;
        Ok(ReadableImage {
            image_id: rec.id,
            group,
            info: image_info(container.clone(), name.clone(), rec),
        })
    }

    /// Recipe entries from the one holding `offset`, at most `max`.
    pub fn recipe_from(&self, image_id: u64, offset: u64, max: usize) -> Result<Vec<RecipeEntry>> {
        let t = self.db.begin_read()?.open_table(RECIPES)?;
        let start = match t.range((image_id, 0)..=(image_id, offset))?.next_back() {
            Some(row) => row?.0.value().1,
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for row in t.range((image_id, start)..(image_id, u64::MAX))?.take(max) {
            let (k, v) = row?;
            let (id, len) = split_recipe_value(v.value())?;
            out.push(RecipeEntry {
                offset: k.value().1,
                id,
                len,
            });
        }
        Ok(out)
    }

    /// The stored bytes of the chunk that starts at `offset` of an image.
    pub fn read_chunk(
        &self,
        img: &ReadableImage,
        offset: u64,
    ) -> Result<(RecipeEntry, Location, Vec<u8>)> {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let tx = self.db.begin_read()?;
        let recipes = tx.open_table(RECIPES)?;
        let v = recipes.get((img.image_id, offset))?.ok_or_else(|| {
            StoreError::Invalid(format!("no chunk starts at offset {offset} of this image"))
        })?;
        let (id, len) = split_recipe_value(v.value())?;
        let chunks = tx.open_table(CHUNKS)?;
        let loc = chunks
            .get(chunk_key(img.group, &id).as_slice())?
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "chunk {id} at offset {offset} is missing from the index"
                ))
            })?;
        let loc = Location::decode(loc.value()).ok_or_else(|| {
            StoreError::Corrupt(format!("undecodable index entry for chunk {id}"))
        })?;
        let file = self.pack_file(img.group, loc.pack)?;
        let bytes = pack::read_stored(&file, &loc)
            .map_err(|e| StoreError::Corrupt(format!("reading chunk {id}: {e}")))?;
        Ok((RecipeEntry { offset, id, len }, loc, bytes))
    }

    fn pack_file(&self, group: u32, number: u64) -> Result<Arc<File>> {
        let mut files = lock(&self.read_files);
        if let Some(f) = files.get(&number) {
            return Ok(f.clone());
        }
        let dir = lock(&self.group_dirs).get(&group).cloned().ok_or_else(|| {
            StoreError::Corrupt(format!("storage group {group} has no directory"))
        })?;
        let f = Arc::new(File::open(pack::pack_path(&dir, number))?);
        if files.len() >= MAX_OPEN_PACKS {
            files.clear();
        }
        files.insert(number, f.clone());
        Ok(f)
    }

    pub fn image_list(
        &self,
        user: &User,
        container: &ContainerName,
        prefix: &str,
    ) -> Result<Vec<ImageInfo>> {
        let c = self.container(user, container)?;
        let t = self.db.begin_read()?.open_table(IMAGES)?;
        let mut out = Vec::new();
        for row in t.range((c.id, prefix)..(c.id + 1, ""))? {
            let (k, v) = row?;
            let name = k.value().1;
            if !name.starts_with(prefix) {
                break;
            }
            let name = ImageName::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push(image_info(
                container.clone(),
                name,
                decode("image", v.value())?,
            ));
        }
        Ok(out)
    }

    /// Deletes an image; its chunks are reclaimed by the next GC.
    pub fn image_remove(
        &self,
        user: &User,
        container: &ContainerName,
        name: &ImageName,
    ) -> Result<()> {
        let c = self.container(user, container)?;
        let tx = self.db.begin_write()?;
        {
            let mut images = tx.open_table(IMAGES)?;
            let rec: ImageRecord = match images.remove((c.id, name.as_str()))? {
                Some(v) => decode("image", v.value())?,
                None => {
                    return Err(StoreError::NotFound(format!(
                        "image {name} does not exist in container {container}"
                    )))
                }
            };
            let mut recipes = tx.open_table(RECIPES)?;
            recipes.retain_in((rec.id, 0)..=(rec.id, u64::MAX), |_, _| false)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn stats(&self, user: &User) -> Result<StoreStats> {
        let containers = self.container_list(user)?;
        let mut s = StoreStats {
            containers: containers.len() as u64,
            images: containers.iter().map(|c| c.images).sum(),
            logical_bytes: containers.iter().map(|c| c.logical_bytes).sum(),
            ..Default::default()
        };
        let visible: HashSet<u32> = {
            let mut set = HashSet::new();
            for c in &containers {
                if let Some(id) = self.group_id(&c.group)? {
                    set.insert(id);
                }
            }
            if user.admin {
                set.extend(lock(&self.group_dirs).keys().copied());
            }
            set
        };
        let t = self.db.begin_read()?.open_table(CHUNKS)?;
        if user.admin {
            s.unique_chunks = t.len()?;
        }
        for row in t.iter()? {
            let (k, v) = row?;
            let Some((group, _)) = split_chunk_key(k.value()) else {
                continue;
            };
            if !visible.contains(&group) {
                continue;
            }
            if let Some(loc) = Location::decode(v.value()) {
                if !user.admin {
                    s.unique_chunks += 1;
                }
                s.unique_bytes += loc.raw_len as u64;
                s.stored_bytes += loc.stored_len as u64;
            }
        }
        for (group, _, path) in self.pack_files()? {
            if visible.contains(&group) {
                s.pack_bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            }
        }
        Ok(s)
    }
}

fn next_counter(tx: &redb::WriteTransaction, name: &str) -> Result<u64> {
    let mut meta = tx.open_table(META)?;
    let next = meta.get(name)?.map(|v| v.value()).unwrap_or(1);
    meta.insert(name, next + 1)?;
    Ok(next)
}

fn container_info(
    name: ContainerName,
    rec: &ContainerRecord,
    images: u64,
    logical_bytes: u64,
) -> ContainerInfo {
    ContainerInfo {
        name,
        group: rec.group.clone(),
        chunking: rec.chunking,
        zstd_level: rec.zstd_level,
        stream_limit: rec.stream_limit,
        images,
        logical_bytes,
    }
}

fn image_info(container: ContainerName, name: ImageName, rec: ImageRecord) -> ImageInfo {
    ImageInfo {
        container,
        name,
        size: rec.size,
        chunks: rec.chunks,
        props: rec.props,
        created: rec.created,
    }
}
