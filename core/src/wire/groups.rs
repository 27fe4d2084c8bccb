//! Storage groups on the wire (protocol 8): where a group keeps its packs,
//! and what each holds and has left.

use serde::{Deserialize, Serialize};

/// Where a new storage group keeps its packs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GroupSettings {
    /// An absolute directory on the server, on a volume of its own (a
    /// performance tier); `None`: under the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl GroupSettings {
    /// Packs in `path` on the server.
    pub fn at_path(path: impl Into<String>) -> Self {
        Self {
            path: Some(path.into()),
        }
    }
}

/// One storage group, as `GroupList` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// `data` (under the data directory) or `volume` (a directory of its own).
    pub kind: String,
    /// The directory its packs are in (empty for users who are not admins).
    #[serde(default)]
    pub location: String,
    /// Containers in it.
    pub containers: u64,
    /// Committed images in them.
    pub images: u64,
    /// Sum of the sizes of its images.
    pub logical_bytes: u64,
    /// Chunks stored once each in it.
    pub chunks: u64,
    /// Sum of the plaintext sizes of those chunks.
    pub unique_bytes: u64,
    /// Compressed bytes of those chunks.
    pub stored_bytes: u64,
    /// Bytes of its pack files, including space GC has yet to reclaim.
    pub pack_bytes: u64,
    /// Size of the filesystem its packs are on.
    pub fs_total_bytes: u64,
    /// Bytes used on that filesystem, by anything.
    pub fs_used_bytes: u64,
    /// Bytes new data may still take there: free space less the reserve
    /// kept for deletes and GC. Groups on one filesystem share it.
    pub free_bytes: u64,
}
