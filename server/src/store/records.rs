//! The records stored in the catalog's tables, and the byte layouts of its keys.
//!
//! Records are rmp-serde maps (named fields), so fields can be added later
//! with `#[serde(default)]` without a format change. `docs/store-format.md`
//! describes every table.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tern_core::names::{ContainerName, GroupName, ImageName, UserName};
use tern_core::wire::ReplicaOrigin;
use tern_core::{ChunkId, ChunkParams};

use super::StoreError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: u32,
    /// Where its packs live when not under the data directory: a directory
    /// on another volume (a performance tier), marked by a volume file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<GroupVolume>,
    /// Where its packs live when in S3 object storage (a cloud group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<super::cloud::bucket::BucketSpec>,
}

/// A storage group's own directory and the id its volume file must hold
/// (see `store/volume.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupVolume {
    pub path: std::path::PathBuf,
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: u64,
    pub group: GroupName,
    pub chunking: ChunkParams,
    pub zstd_level: i32,
    pub stream_limit: u32,
    pub created: u64,
    /// Only replication writes images into it.
    #[serde(default)]
    pub replica: bool,
    /// Arriving replicas raise import events.
    #[serde(default)]
    pub import: bool,
    /// A replica container's chunking came from a copy's source (until
    /// then the first copy sets it).
    #[serde(default)]
    pub inherited: bool,
    /// Its new images are copied to (partner, container).
    #[serde(default)]
    pub replicate_to: Option<(String, ContainerName)>,
    /// Its retention lock.
    #[serde(default)]
    pub lock: Option<tern_core::wire::RetentionLock>,
    /// Its cloud tier policy (kept, not read, by the engine).
    #[serde(default)]
    pub tier: Option<tern_core::wire::TierPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: u64,
    pub size: u64,
    pub chunks: u64,
    #[serde(with = "serde_bytes")]
    pub props: Vec<u8>,
    pub created: u64,
    /// Where a replica came from.
    #[serde(default)]
    pub origin: Option<ReplicaOrigin>,
    /// When its properties last changed (0: never since its commit).
    #[serde(default)]
    pub changed: u64,
    /// Held in the cloud tier: its bytes are read from this image of a
    /// cloud group (its own recipe rows are gone, or being recalled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldIn>,
    /// When it was last recalled from the cloud tier (0: never): a tier
    /// policy holds it again only `local_days` after that.
    #[serde(default)]
    pub recalled: u64,
}

/// Where a held image's bytes are: its cloud tier copy, an image of a
/// cloud storage group of this store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldIn {
    pub group: GroupName,
    pub container_id: u64,
    pub name: ImageName,
    pub image_id: u64,
}

/// An image being written or left incomplete: what is durable of it up to
/// its last checkpoint. Its recipe rows are in `recipes` under `id`, which
/// the image keeps when it commits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartialRecord {
    pub id: u64,
    /// Logical bytes up to the last checkpoint: where a resume continues.
    pub size: u64,
    pub chunks: u64,
    #[serde(with = "serde_bytes")]
    pub props: Vec<u8>,
    pub started: u64,
    /// When the last checkpoint was taken; retention counts from here.
    pub checkpointed: u64,
    /// The user who began it: only they (or an admin) may resume it.
    pub owner: UserName,
    pub passthrough: bool,
    /// The container's chunking when it began: a resume must cut the same way.
    pub chunking: ChunkParams,
    /// New chunks and their stored bytes, up to the last checkpoint.
    pub new_chunks: u64,
    pub new_stored_bytes: u64,
    /// A replica being written by a copy.
    #[serde(default)]
    pub origin: Option<ReplicaOrigin>,
    /// Chunks it has received past the first one it still awaits (several
    /// connections deliver out of order): no recipe row names them yet, so
    /// they are listed here for GC to keep until a resume names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<ChunkId>,
}

/// An import event on the target server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    pub time: u64,
    pub image: ImageName,
    pub size: u64,
    #[serde(with = "serde_bytes")]
    pub props: Vec<u8>,
    pub origin: ReplicaOrigin,
    pub acked: bool,
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(v).map_err(|e| StoreError::Corrupt(format!("encoding a record: {e}")))
}

pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("undecodable {what} record: {e}")))
}

/// The chunk index key: group id (u32 BE) | chunk id.
pub type ChunkKey = [u8; 36];

pub fn chunk_key(group: u32, id: &ChunkId) -> ChunkKey {
    let mut k = [0u8; 36];
    k[..4].copy_from_slice(&group.to_be_bytes());
    k[4..].copy_from_slice(id.as_bytes());
    k
}

pub fn split_chunk_key(k: &[u8]) -> Option<(u32, ChunkId)> {
    if k.len() != 36 {
        return None;
    }
    Some((
        u32::from_be_bytes(k[..4].try_into().ok()?),
        ChunkId(k[4..].try_into().ok()?),
    ))
}

pub fn recipe_value(id: &ChunkId, len: u32) -> [u8; 36] {
    let mut v = [0u8; 36];
    v[..32].copy_from_slice(id.as_bytes());
    v[32..].copy_from_slice(&len.to_le_bytes());
    v
}

pub fn split_recipe_value(v: &[u8]) -> Result<(ChunkId, u32), StoreError> {
    if v.len() != 36 {
        return Err(StoreError::Corrupt(format!(
            "recipe entry of {} bytes",
            v.len()
        )));
    }
    let (id, len) = v.split_at(32);
    let mut id_bytes = [0u8; 32];
    id_bytes.copy_from_slice(id);
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(len);
    Ok((ChunkId(id_bytes), u32::from_le_bytes(len_bytes)))
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
