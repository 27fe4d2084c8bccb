//! The catalog: redb tables and the records stored in them.
//!
//! Records are rmp-serde maps (named fields), so fields can be added later
//! with `#[serde(default)]` without a format change. `docs/store-format.md`
//! describes every table.

use redb::TableDefinition;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tern_core::names::GroupName;
use tern_core::{ChunkId, ChunkParams};

use super::StoreError;

/// Counters and the format version: `format`, `next_container`, `next_image`, `next_group`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Storage group name -> [`GroupRecord`].
pub const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// Container name -> [`ContainerRecord`].
pub const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
/// (container id, image name) -> [`ImageRecord`].
pub const IMAGES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("images");
/// (image id, offset of the chunk in the image) -> chunk id (32) | u32 LE length.
pub const RECIPES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("recipes");
/// group id (u32 BE) | chunk id -> encoded [`super::pack::Location`].
pub const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunks");
/// User name -> [`UserRecord`].
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");

pub const FORMAT_VERSION: u64 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: u64,
    pub group: GroupName,
    pub chunking: ChunkParams,
    pub zstd_level: i32,
    pub stream_limit: u32,
    pub created: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: u64,
    pub size: u64,
    pub chunks: u64,
    #[serde(with = "serde_bytes")]
    pub props: Vec<u8>,
    pub created: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// PHC string of an argon2id hash.
    pub password_hash: String,
    pub admin: bool,
    /// Storage groups the user may use; admins may use all.
    pub groups: Vec<GroupName>,
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(v).map_err(|e| StoreError::Corrupt(format!("encoding a record: {e}")))
}

pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("undecodable {what} record: {e}")))
}

pub fn chunk_key(group: u32, id: &ChunkId) -> [u8; 36] {
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
    let id = ChunkId(v[..32].try_into().expect("32 bytes"));
    let len = u32::from_le_bytes(v[32..].try_into().expect("4 bytes"));
    Ok((id, len))
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
