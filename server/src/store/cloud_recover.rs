//! `ternd group recover`: a cloud group rebuilt into a data directory from
//! its bucket alone (the catalog objects `cloud_catalog.rs` saves).
//!
//! The newest manifest that opens gives the containers, the images with
//! their recipe objects, and the live pack objects; each pack's table
//! (read by range) gives the chunk index. Every recipe is checked against
//! the index before its image is recorded. The lease is taken last, so a
//! recovery that fails leaves the old server's lease in place.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tern_core::names::{ContainerName, GroupName, ImageName};

use super::catalog::groups::Place;
use super::cloud::bucket::{Bucket, BucketSpec, Credentials};
use super::cloud::catalog_objects::{
    decode_recipe, manifest_name, parse_manifest_name, Lease, Manifest, SavedRecipe, SavedState,
    LEASE_OBJECT, MANIFEST_DIR,
};
use super::cloud::{self, sealed, GroupPassphrase};
use super::pack::{self, Location};
use super::packs::PackRef;
use super::records::{chunk_key, ChunkKey, ContainerRecord, GroupRecord};
use super::{Result, Store, StoreError};

/// Index entries written per transaction while packs are read.
const INDEX_BATCH: usize = 100_000;

/// What a recovery rebuilt, and what it cost in requests.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RecoveredGroup {
    pub manifest: u64,
    /// When the manifest was written (Unix seconds): commits after it are
    /// not in the bucket's catalog.
    pub manifest_written: u64,
    /// Newer manifests that did not open (damaged), skipped.
    pub manifests_skipped: u64,
    pub containers: u64,
    pub images: u64,
    pub packs: u64,
    pub chunks: u64,
    pub requests: u64,
}

/// Where to find the group and how to open it.
pub struct RecoverFrom {
    pub spec: BucketSpec,
    pub credentials: Credentials,
    pub passphrase: GroupPassphrase,
    /// Take the lease even if another server holds it.
    pub take_over: bool,
}

/// Rebuilds cloud group `name` into the data directory `root` (new, or
/// one without that group) from its bucket.
pub fn recover_cloud_group(
    root: &Path,
    name: &GroupName,
    from: RecoverFrom,
) -> Result<RecoveredGroup> {
    let at = from.spec.location();
    let bucket = Bucket::new(from.spec.clone(), &from.credentials)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let key = cloud::open_key(&bucket, &from.passphrase)?;
    if let Some(lease) = read_lease(&bucket)? {
        if !from.take_over {
            return Err(StoreError::Busy(format!(
                "a server holds the lease of {at} (since {}, Unix time): if that server is gone \
                 for good, run again with --take-over (it stops writing there once it sees \
                 the new lease)",
                lease.since
            )));
        }
    }
    let (manifest, salt, skipped) = newest_manifest(&bucket, &key)?;

    let store = Store::open(root)?;
    if store.catalog.group(name)?.is_some() {
        return Err(StoreError::AlreadyExists(format!(
            "{} already has a storage group {name}",
            root.display()
        )));
    }
    let dir = root.join("groups").join(name.as_str());
    if dir.exists() {
        return Err(StoreError::AlreadyExists(format!(
            "{} exists though no storage group {name} does: move it away first",
            dir.display()
        )));
    }
    let first = store.packs.reserve_numbers(manifest.packs.len() as u64);
    let packs: Vec<_> = (first..)
        .zip(&manifest.packs)
        .map(|(n, p)| (n, p.name, p.plain_len))
        .collect();
    cloud::adopt(&dir, from.credentials, &key, &packs)?;
    let id = store.catalog.insert_placed_group(
        name,
        Place {
            volume: None,
            cloud: Some(from.spec.clone()),
        },
    )?;
    let rec = GroupRecord {
        id,
        volume: None,
        cloud: Some(from.spec.clone()),
    };
    store.packs.add_group(name.as_str(), &rec)?;

    let mut report = RecoveredGroup {
        manifest: manifest.seq,
        manifest_written: manifest.written,
        manifests_skipped: skipped,
        packs: packs.len() as u64,
        ..Default::default()
    };
    report.chunks = store.index_packs(id, &packs)?;
    let recipes = store.record_images(name, id, &manifest, &mut report)?;

    let group_store = store.packs.store(id)?;
    let cloud = group_store
        .cloud()
        .ok_or_else(|| StoreError::Corrupt(format!("storage group {name} is not a cloud group")))?;
    let holder = cloud.saved().holder;
    cloud.set_saved(SavedState {
        holder,
        seq: manifest.seq,
        manifest_salt: salt,
        saved_at: manifest.written,
        images: report.images,
        // Unlike anything: the first save writes a manifest of this server's own.
        digest: [0; 32],
        recipes,
    })?;
    cloud.take_lease()?;
    report.requests = request_count(&bucket) + store.packs.bucket_requests();
    tracing::info!(
        "storage group {name} recovered from {at}: manifest {}, {} containers, {} images, {} packs",
        report.manifest,
        report.containers,
        report.images,
        report.packs
    );
    Ok(report)
}

fn read_lease(bucket: &Bucket) -> Result<Option<Lease>> {
    match bucket.get_if_present(LEASE_OBJECT)? {
        Some(b) => Ok(Some(Lease::decode(&b)?)),
        None => Ok(None),
    }
}

/// The manifest with the highest number that opens, its salt, and how many
/// newer ones did not.
fn newest_manifest(bucket: &Bucket, key: &sealed::DataKey) -> Result<(Manifest, [u8; 16], u64)> {
    let at = bucket.spec().location();
    let mut found: Vec<(u64, [u8; 16])> = bucket
        .list(MANIFEST_DIR)?
        .iter()
        .filter_map(|f| parse_manifest_name(f))
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    let mut skipped = 0;
    for (seq, salt) in found {
        let opened = bucket
            .get(&manifest_name(seq, &salt))
            .map_err(StoreError::from)
            .and_then(|b| {
                sealed::open_object(key, &salt, &b).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .and_then(|plain| Ok(Manifest::decode(&plain)?));
        match opened {
            Ok(m) if m.seq == seq => return Ok((m, salt, skipped)),
            Ok(_) => tracing::warn!("manifest {seq} in {at} names another number: skipped"),
            Err(e) => tracing::warn!("manifest {seq} in {at}: {e}: skipped"),
        }
        skipped += 1;
    }
    Err(StoreError::NotFound(format!(
        "{at} holds no readable catalog manifest ({skipped} damaged): the group's catalog was \
         never saved there"
    )))
}

fn request_count(bucket: &Bucket) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &bucket.counters;
    [&c.put, &c.get, &c.delete, &c.head, &c.list]
        .iter()
        .map(|n| n.load(Relaxed))
        .sum()
}

impl Store {
    /// Indexes the chunks of the adopted packs of group `id` from their
    /// tables; how many entries.
    fn index_packs(&self, id: u32, packs: &[(u64, [u8; 16], u64)]) -> Result<u64> {
        let mut batch: Vec<(ChunkKey, Option<Location>)> = Vec::new();
        let mut total = 0;
        for (number, _, _) in packs {
            let reader = self.packs.reader(id, *number)?;
            let contents = pack::read_contents(&*reader, *number).map_err(|e| {
                StoreError::Corrupt(format!(
                    "{}: {e}",
                    self.packs.describe(&PackRef {
                        group: id,
                        number: *number
                    })
                ))
            })?;
            if !contents.finished {
                return Err(StoreError::Corrupt(format!(
                    "{} has no valid table",
                    self.packs.describe(&PackRef {
                        group: id,
                        number: *number
                    })
                )));
            }
            total += contents.entries.len() as u64;
            batch.extend(
                contents
                    .entries
                    .iter()
                    .map(|e| (chunk_key(id, &e.id), Some(e.loc))),
            );
            if batch.len() >= INDEX_BATCH {
                self.catalog.set_index_entries(&batch)?;
                batch.clear();
            }
        }
        self.catalog.set_index_entries(&batch)?;
        Ok(total)
    }

    /// Records the manifest's containers and images in group `name`
    /// (id `id`), each image's recipe read from its object and checked
    /// against the index; the recipe objects by new image id.
    fn record_images(
        &self,
        name: &GroupName,
        id: u32,
        manifest: &Manifest,
        report: &mut RecoveredGroup,
    ) -> Result<BTreeMap<u64, SavedRecipe>> {
        let group_store = self.packs.store(id)?;
        let cloud = group_store.cloud().ok_or_else(|| {
            StoreError::Corrupt(format!("storage group {name} is not a cloud group"))
        })?;
        let mut containers = HashMap::new();
        for c in &manifest.containers {
            let cname =
                ContainerName::new(&c.name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let rec = self
                .catalog
                .insert_container(name, &cname, |cid| ContainerRecord {
                    id: cid,
                    group: name.clone(),
                    ..c.record.clone()
                })?;
            containers.insert(c.name.clone(), rec.id);
            report.containers += 1;
        }
        let mut recipes = BTreeMap::new();
        for img in &manifest.images {
            let place = format!("{}/{}", img.container, img.name);
            let bad = |why: String| StoreError::Corrupt(format!("image {place}: {why}"));
            let cid = *containers
                .get(&img.container)
                .ok_or_else(|| bad("its container is not in the manifest".into()))?;
            let iname = ImageName::new(&img.name).map_err(|e| bad(e.to_string()))?;
            let plain = cloud
                .read_object(&img.recipe)
                .map_err(|e| bad(format!("its recipe object: {e}")))?;
            let rows = decode_recipe(&plain).map_err(|e| bad(e.to_string()))?;
            let size: u64 = rows.iter().map(|r| u64::from(r.len)).sum();
            if size != img.record.size || rows.len() as u64 != img.record.chunks {
                return Err(bad(format!(
                    "its recipe holds {} chunks and {size} bytes, its record {} and {}",
                    rows.len(),
                    img.record.chunks,
                    img.record.size
                )));
            }
            let mut recipe = Vec::with_capacity(rows.len());
            for r in rows {
                if !self.catalog.has_chunk(&chunk_key(id, &r.id))? {
                    return Err(bad(format!(
                        "chunk {} at offset {} is in none of the group's packs",
                        r.id, r.offset
                    )));
                }
                recipe.push((r.offset, r.id, r.len));
            }
            let new_id = self
                .catalog
                .insert_recovered_image(cid, &iname, &img.record, &recipe)?;
            recipes.insert(new_id, SavedRecipe { name: img.recipe });
            report.images += 1;
        }
        Ok(recipes)
    }
}
