//! The catalog: the redb tables and every query on them.
//!
//! Nothing outside this module opens a table (the definitions are public for
//! tests that damage a catalog on purpose); `maintenance.rs` holds the
//! whole-table passes of GC and fsck, `images.rs` images and recipes,
//! `replication.rs` the trail and import events, `seeds.rs` seeds and pins;
//! the rest of the store asks the catalog questions in its own terms (a
//! container, an image's recipe, a chunk's location). The tables of the
//! layers above (users, partners, copies, shaping groups) share this
//! database through `store::tables` and are never read here. Every method is one transaction, so what it returns is
//! consistent with itself. `docs/store-format.md` describes every table.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tern_core::names::GroupName;
use tern_core::{ChunkId, ContainerName, ImageName};

use super::pack::Location;
use super::records::*;
use super::{Result, StoreError};

/// Counters and the format version: `format`, `next_container`, `next_image`, `next_group`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Storage group name -> [`GroupRecord`].
pub const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// (storage group name, container name) -> [`ContainerRecord`]: names are
/// per group, so two tenants may both have `nightly`.
pub const CONTAINERS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("group_containers");
/// Format 1's container table (container name -> record), migrated at open.
const CONTAINERS_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
/// (container id, image name) -> [`ImageRecord`].
pub const IMAGES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("images");
/// (image id, offset of the chunk in the image) -> chunk id (32) | u32 LE length.
pub const RECIPES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("recipes");
/// group id (u32 BE) | chunk id -> encoded [`Location`].
pub const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunks");

/// 2: container names per storage group (format 1 had one namespace).
/// 3: the replication tables (partners, copies, trail, import events).
/// 4: partial images (durable while written, resumable) and index totals.
/// 5: shaping groups.
/// 6: seeds and their pins.
const FORMAT_VERSION: u64 = 6;

pub mod groups;
pub mod held;
mod images;
mod index;
mod maintenance;
mod overlay;
pub mod partials;
pub mod replication;
pub mod seeds;
mod synthetic;

pub use images::{NewImage, RecipeSnapshot};
pub use index::{GroupTotals, GROUP_TOTALS};
pub use partials::PARTIALS;

/// redb's page cache. Its default (1 GiB) would let ternd's memory grow with
/// the chunk index and the recipes; past this size their pages are read from
/// the file (the kernel's page cache) instead. 32 MiB holds the upper levels
/// of the index's tree for tens of millions of chunks, so a lookup reads at
/// most a leaf from the file; a larger cache lets the server's memory follow
/// the store's growth up to the cache's size.
const CACHE_BYTES: usize = 32 << 20;

/// The redb database of one data directory.
pub struct Catalog {
    db: Database,
    /// Opened through [`overlay::CopyOnWrite`]: every write is refused.
    read_only: Option<&'static str>,
}

impl Catalog {
    /// Opens (creating if needed) `path` and checks its format.
    pub fn open(path: &Path) -> Result<Self> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        // It holds the users' password hashes: 0600 whatever the umask.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let catalog = Self {
            db,
            read_only: None,
        };
        catalog.init()?;
        Ok(catalog)
    }

    /// Opens `path` without ever writing it: redb's own writes (the allocator
    /// repair after an unclean stop) stay in memory, and every write
    /// transaction of the store is refused, giving `why` as the reason.
    pub fn open_read_only(path: &Path, why: &'static str) -> Result<Self> {
        // Read and write access for the byte-range locks a running ternd
        // would conflict with; the file is only read.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(overlay::CopyOnWrite::new(file)?)?;
        let catalog = Self {
            db,
            read_only: Some(why),
        };
        // An older format is migrated in the overlay: in memory only.
        catalog.migrate(|| Ok(catalog.db.begin_write()?))?;
        catalog.check_format()?;
        Ok(catalog)
    }

    /// The database, for [`super::tables`].
    pub(in crate::store) fn db(&self) -> &Database {
        &self.db
    }

    /// A write transaction, unless the catalog is read-only.
    pub(in crate::store) fn begin_write(&self) -> Result<redb::WriteTransaction> {
        if let Some(why) = self.read_only {
            return Err(StoreError::ReadOnly(why));
        }
        Ok(self.db.begin_write()?)
    }

    fn format(&self) -> Result<Option<u64>> {
        let tx = self.db.begin_read()?;
        match tx.open_table(META) {
            Ok(meta) => Ok(meta.get("format")?.map(|v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn check_format(&self) -> Result<()> {
        match self.format()? {
            Some(FORMAT_VERSION) => Ok(()),
            None => Err(StoreError::Corrupt(
                "the catalog has no format version".into(),
            )),
            Some(other) => Err(unsupported_format(other)),
        }
    }

    fn init(&self) -> Result<()> {
        // An existing catalog is only read: a start on a full disk must not
        // need to write (the tables come with the format version).
        match self.format()? {
            Some(FORMAT_VERSION) => return Ok(()),
            Some(1..=5) => return self.migrate(|| self.begin_write()),
            _ => {}
        }
        let tx = self.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let format = meta.get("format")?.map(|v| v.value());
            match format {
                None => {
                    meta.insert("format", FORMAT_VERSION)?;
                }
                Some(FORMAT_VERSION) => {}
                Some(other) => return Err(unsupported_format(other)),
            }
            tx.open_table(CONTAINERS)?;
            tx.open_table(GROUPS)?;
            tx.open_table(IMAGES)?;
            tx.open_table(RECIPES)?;
            tx.open_table(CHUNKS)?;
            replication::create_tables(&tx)?;
            tx.open_table(PARTIALS)?;
            tx.open_table(GROUP_TOTALS)?;
            tx.open_table(seeds::SEEDS)?;
            tx.open_table(seeds::PINS)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Brings an older format up to date, one step per transaction (a
    /// crash between steps leaves a format the next start migrates on from).
    fn migrate(&self, begin: impl Fn() -> Result<redb::WriteTransaction>) -> Result<()> {
        if self.format()? == Some(1) {
            self.migrate_from_1(begin()?)?;
        }
        if self.format()? == Some(2) {
            let tx = begin()?;
            replication::create_tables(&tx)?;
            tx.open_table(META)?.insert("format", 3)?;
            tx.commit()?;
            tracing::info!("catalog migrated to format 3: replication tables");
        }
        if self.format()? == Some(3) {
            let tx = begin()?;
            tx.open_table(PARTIALS)?;
            index::recount(&tx)?;
            tx.open_table(META)?.insert("format", 4)?;
            tx.commit()?;
            tracing::info!("catalog migrated to format 4: partial images, index totals");
        }
        if self.format()? == Some(4) {
            // The shaping table is the service layer's: made by its first write.
            let tx = begin()?;
            tx.open_table(META)?.insert("format", 5)?;
            tx.commit()?;
            tracing::info!("catalog migrated to format 5: shaping groups");
        }
        if self.format()? == Some(5) {
            let tx = begin()?;
            tx.open_table(seeds::SEEDS)?;
            tx.open_table(seeds::PINS)?;
            tx.open_table(META)?.insert("format", 6)?;
            tx.commit()?;
            tracing::info!("catalog migrated to format 6: seeds and pins");
        }
        Ok(())
    }

    /// Format 1 -> 2: container names move under their storage group, in
    /// one transaction (a crash leaves format 1, migrated again next time).
    fn migrate_from_1(&self, tx: redb::WriteTransaction) -> Result<()> {
        {
            let old = tx.open_table(CONTAINERS_V1)?;
            let mut new = tx.open_table(CONTAINERS)?;
            for row in old.iter()? {
                let (name, v) = row?;
                let rec: ContainerRecord = decode("container", v.value())?;
                new.insert((rec.group.as_str(), name.value()), v.value())?;
            }
        }
        tx.delete_table(CONTAINERS_V1)?;
        tx.open_table(META)?.insert("format", 2)?;
        tx.commit()?;
        tracing::info!("catalog migrated to format 2: container names per storage group");
        Ok(())
    }

    // ---- containers ----------------------------------------------------------

    /// The container `name` of storage group `group`.
    pub fn container(
        &self,
        group: &GroupName,
        name: &ContainerName,
    ) -> Result<Option<ContainerRecord>> {
        let t = self.db.begin_read()?.open_table(CONTAINERS)?;
        let found = t.get((group.as_str(), name.as_str()))?;
        found.map(|v| decode("container", v.value())).transpose()
    }

    /// The group and name of the container with id `container_id`, if it
    /// still exists (a scan: containers are few).
    pub fn container_place(&self, container_id: u64) -> Result<Option<(GroupName, String)>> {
        let t = self.db.begin_read()?.open_table(CONTAINERS)?;
        for row in t.iter()? {
            let (k, v) = row?;
            let rec: ContainerRecord = decode("container", v.value())?;
            if rec.id == container_id {
                return Ok(Some((rec.group, k.value().1.to_string())));
            }
        }
        Ok(None)
    }

    /// The group of an image and `container/image` for messages, from its
    /// container's id (no group, and the image's name alone, if the
    /// container is gone).
    pub fn image_place(&self, container_id: u64, image: &ImageName) -> (Option<GroupName>, String) {
        match self.container_place(container_id) {
            Ok(Some((group, c))) => (Some(group), format!("{c}/{image}")),
            _ => (None, image.to_string()),
        }
    }

    /// Every container called `name`, in whichever storage group.
    pub fn containers_named(&self, name: &ContainerName) -> Result<Vec<ContainerRecord>> {
        let tx = self.db.begin_read()?;
        let containers = tx.open_table(CONTAINERS)?;
        let mut out = Vec::new();
        for row in tx.open_table(GROUPS)?.iter()? {
            let (group, _) = row?;
            if let Some(v) = containers.get((group.value(), name.as_str()))? {
                out.push(decode("container", v.value())?);
            }
        }
        Ok(out)
    }

    /// Every container with its record, its image count and logical bytes.
    pub fn containers(&self) -> Result<Vec<(ContainerName, ContainerRecord, u64, u64)>> {
        let tx = self.db.begin_read()?;
        let containers = tx.open_table(CONTAINERS)?;
        let images = tx.open_table(IMAGES)?;
        let mut out = Vec::new();
        for row in containers.iter()? {
            let (key, v) = row?;
            let name = key.value().1;
            let rec: ContainerRecord = decode("container", v.value())?;
            let (mut count, mut bytes) = (0, 0);
            for img in images.range((rec.id, "")..(rec.id + 1, ""))? {
                let (_, v) = img?;
                count += 1;
                bytes += decode::<ImageRecord>("image", v.value())?.size;
            }
            let name = ContainerName::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push((name, rec, count, bytes));
        }
        Ok(out)
    }

    /// Records a new container in `group`; `make` builds its record from the new id.
    pub fn insert_container(
        &self,
        group: &GroupName,
        name: &ContainerName,
        make: impl FnOnce(u64) -> ContainerRecord,
    ) -> Result<ContainerRecord> {
        let tx = self.begin_write()?;
        let rec = {
            let mut t = tx.open_table(CONTAINERS)?;
            let key = (group.as_str(), name.as_str());
            if t.get(key)?.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "container {name} already exists in storage group {group}"
                )));
            }
            let rec = make(next_counter(&tx, "next_container")?);
            t.insert(key, encode(&rec)?.as_slice())?;
            rec
        };
        tx.commit()?;
        Ok(rec)
    }

    /// A number kept in the `meta` table, if set.
    pub fn meta(&self, key: &str) -> Result<Option<u64>> {
        let tx = self.db.begin_read()?;
        match tx.open_table(META) {
            Ok(meta) => Ok(meta.get(key)?.map(|v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets a number in the `meta` table.
    pub fn set_meta(&self, key: &str, value: u64) -> Result<()> {
        let tx = self.begin_write()?;
        tx.open_table(META)?.insert(key, value)?;
        tx.commit()?;
        Ok(())
    }

    /// Changes a container's record in one transaction; `change` also
    /// learns whether the container holds images.
    pub fn update_container(
        &self,
        rec: &ContainerRecord,
        name: &ContainerName,
        change: impl FnOnce(&mut ContainerRecord, bool) -> Result<()>,
    ) -> Result<ContainerRecord> {
        let tx = self.begin_write()?;
        let updated = {
            let mut t = tx.open_table(CONTAINERS)?;
            let key = (rec.group.as_str(), name.as_str());
            let mut current: ContainerRecord = match t.get(key)? {
                Some(v) => decode("container", v.value())?,
                None => {
                    return Err(StoreError::NotFound(format!(
                        "container {name} does not exist"
                    )))
                }
            };
            let has_images = tx
                .open_table(IMAGES)?
                .range((current.id, "")..(current.id + 1, ""))?
                .next()
                .is_some();
            change(&mut current, has_images)?;
            t.insert(key, encode(&current)?.as_slice())?;
            current
        };
        tx.commit()?;
        Ok(updated)
    }

    /// Removes a container that holds no image.
    pub fn remove_empty_container(
        &self,
        group: &GroupName,
        name: &ContainerName,
        id: u64,
    ) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let images = tx.open_table(IMAGES)?;
            let n = images.range((id, "")..(id + 1, ""))?.count();
            if n > 0 {
                return Err(StoreError::Invalid(format!(
                    "container {name} still holds {n} images; delete them first"
                )));
            }
            tx.open_table(CONTAINERS)?
                .remove((group.as_str(), name.as_str()))?;
        }
        tx.commit()?;
        Ok(())
    }

    // ---- the chunk index -----------------------------------------------------

    /// A reader of the chunk index that sees one snapshot, for batches of lookups.
    pub fn index_snapshot(&self) -> Result<IndexSnapshot> {
        Ok(IndexSnapshot(self.db.begin_read()?.open_table(CHUNKS)?))
    }

    /// Where the index says a chunk is.
    pub fn chunk_location(&self, key: &ChunkKey) -> Result<Option<Location>> {
        let t = self.db.begin_read()?.open_table(CHUNKS)?;
        let found = t.get(key.as_slice())?;
        match found {
            None => Ok(None),
            Some(v) => Location::decode(v.value())
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt("an undecodable index entry".into())),
        }
    }

    pub fn has_chunk(&self, key: &ChunkKey) -> Result<bool> {
        self.index_snapshot()?.contains(key)
    }
}

/// One read snapshot of the chunk index.
pub struct IndexSnapshot(redb::ReadOnlyTable<&'static [u8], &'static [u8]>);

impl IndexSnapshot {
    pub fn contains(&self, key: &ChunkKey) -> Result<bool> {
        Ok(self.0.get(key.as_slice())?.is_some())
    }

    /// The plaintext length the index holds for a chunk, if it has it.
    pub fn raw_len(&self, key: &ChunkKey) -> Result<Option<u32>> {
        Ok(self.location(key)?.map(|loc| loc.raw_len))
    }

    /// The pack the index says a chunk is in, if it has it.
    pub fn pack_of(&self, key: &ChunkKey) -> Result<Option<u64>> {
        Ok(self.location(key)?.map(|loc| loc.pack))
    }

    fn location(&self, key: &ChunkKey) -> Result<Option<Location>> {
        match self.0.get(key.as_slice())? {
            None => Ok(None),
            Some(v) => Location::decode(v.value())
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt("an undecodable index entry".into())),
        }
    }
}

fn next_counter(tx: &redb::WriteTransaction, name: &str) -> Result<u64> {
    let mut meta = tx.open_table(META)?;
    let next = meta.get(name)?.map(|v| v.value()).unwrap_or(1);
    meta.insert(name, next + 1)?;
    Ok(next)
}

fn unsupported_format(found: u64) -> StoreError {
    StoreError::Invalid(format!(
        "catalog format {found} is not supported by this ternd (it reads format {FORMAT_VERSION})"
    ))
}

#[cfg(test)]
mod tests;
