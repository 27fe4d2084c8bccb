//! What messages say about chunks, containers, images, the store and
//! failures: the records carried inside [`Msg`](super::Msg) variants.

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkParams;
use crate::names::{ContainerName, GroupName, ImageName};
use crate::ChunkId;

/// A chunk as the writer announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The blake3 of the chunk's plaintext.
    pub id: ChunkId,
    /// The plaintext's length.
    pub len: u32,
}

/// A chunk's place in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeEntry {
    /// Where the chunk starts in the image.
    pub offset: u64,
    /// The blake3 of the chunk's plaintext.
    pub id: ChunkId,
    /// The plaintext's length.
    pub len: u32,
}

/// What a client may set when it creates a container; unset means the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSettings {
    /// The storage group (dedup domain); default `default`.
    pub group: Option<GroupName>,
    /// FastCDC parameters; default 16/64/256 KiB. Fixed once data is written.
    pub chunking: Option<ChunkParams>,
    /// zstd level of stored chunks, 1..=19; default 1.
    pub zstd_level: Option<i32>,
    /// How many images may be written at once (0: no limit).
    pub stream_limit: Option<u32>,
    /// A replica container: only replication writes images into it; its
    /// chunking comes from the first copy's source.
    #[serde(default)]
    pub replica: bool,
    /// Replicas arriving raise import events (needs `replica`).
    #[serde(default)]
    pub import: bool,
}

/// A container as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Its name.
    pub name: ContainerName,
    /// Its storage group.
    pub group: GroupName,
    /// Its FastCDC parameters.
    pub chunking: ChunkParams,
    /// Its zstd level.
    pub zstd_level: i32,
    /// Images that may be written at once (0: no limit).
    pub stream_limit: u32,
    /// Committed images in it.
    pub images: u64,
    /// Sum of their sizes.
    pub logical_bytes: u64,
    /// Only replication writes images into it.
    #[serde(default)]
    pub replica: bool,
    /// Arriving replicas raise import events.
    #[serde(default)]
    pub import: bool,
    /// Where its new images are copied automatically: (partner, container).
    #[serde(default)]
    pub replicate_to: Option<(String, ContainerName)>,
    /// (protocol 6) Its retention lock, if it has one.
    #[serde(default)]
    pub lock: Option<RetentionLock>,
}

/// A container's retention lock: each of its images can be neither deleted
/// nor changed until `days` after its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionLock {
    /// How long after its commit an image stays locked.
    pub days: u32,
    /// Who may lift it.
    pub mode: LockMode,
}

/// Who may lift a retention lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LockMode {
    /// An admin may delete a locked image (`bypass_lock`, audited), change
    /// the period or remove the lock.
    Governance,
    /// Nobody may: the period can only grow, the mode never goes back to
    /// governance, and the container cannot be removed.
    Compliance,
}

impl RetentionLock {
    /// The longest period a lock may have: 100 years.
    pub const MAX_DAYS: u32 = 36_500;
}

/// The retention lock holding one image: until when, and who may lift it.
/// A copy carries it to the replica, which the target holds alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLock {
    /// Seconds since the Unix epoch until which the image is held.
    pub until: u64,
    /// Who may lift it.
    pub mode: LockMode,
}

/// A committed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The container holding it.
    pub container: ContainerName,
    /// Its name.
    pub name: ImageName,
    /// Its size in bytes.
    pub size: u64,
    /// How many chunks its recipe has.
    pub chunks: u64,
    /// Opaque properties owned by the DMA.
    #[serde(with = "serde_bytes")]
    pub props: Vec<u8>,
    /// Seconds since the Unix epoch when the image was committed.
    pub created: u64,
    /// (protocol 6) Seconds since the Unix epoch until which a retention
    /// lock holds it (its container's, or the one its source had if it is a
    /// replica); 0 if it is not locked (now, by the server's clock).
    #[serde(default)]
    pub lock_until: u64,
    /// (protocol 9) Where its bytes are; in listings (`ImageList`) only,
    /// `Local` elsewhere.
    #[serde(default)]
    pub location: ImageLocation,
}

/// Where a committed image's bytes are, as listings say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageLocation {
    /// In its own storage group only.
    #[default]
    Local,
    /// There, and a committed cloud tier copy of it in a cloud group.
    LocalAndCloud,
    /// Held in the cloud tier: only its cloud copy has its bytes (reads
    /// go there; a recall brings them back).
    Cloud,
}

impl ImageLocation {
    /// The word for it: `local`, `local+cloud`, `cloud`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageLocation::Local => "local",
            ImageLocation::LocalAndCloud => "local+cloud",
            ImageLocation::Cloud => "cloud",
        }
    }
}

/// An image begun and not committed: being written, or left incomplete by
/// a writer that went away (resumable by name until it expires).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncompleteImage {
    /// Its name.
    pub name: ImageName,
    /// Bytes durable as of its last checkpoint: a resume continues here.
    pub resume_offset: u64,
    /// Seconds since the Unix epoch when it was begun.
    pub started: u64,
    /// Seconds since the Unix epoch of its last checkpoint.
    pub checkpointed: u64,
    /// A session is writing it now.
    pub writing: bool,
    /// Opaque properties owned by the DMA.
    #[serde(with = "serde_bytes")]
    pub props: Vec<u8>,
}

/// What writing one image cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteStats {
    /// Bytes of the image.
    pub logical_bytes: u64,
    /// Chunks in its recipe.
    pub chunks: u64,
    /// Chunks the store did not have before.
    pub new_chunks: u64,
    /// Stored (compressed) bytes added to the store.
    pub new_stored_bytes: u64,
}

/// What the store holds, as far as one user may see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Containers visible to the user.
    pub containers: u64,
    /// Committed images in them.
    pub images: u64,
    /// Sum of the sizes of all images.
    pub logical_bytes: u64,
    /// Chunks stored once each, in the visible storage groups.
    pub unique_chunks: u64,
    /// Sum of the plaintext sizes of the unique chunks.
    pub unique_bytes: u64,
    /// Compressed bytes of the unique chunks.
    pub stored_bytes: u64,
    /// Bytes of pack files on disk, including space GC has yet to reclaim.
    pub pack_bytes: u64,
    /// Bytes in session spill files (unacknowledged frames past the memory
    /// cache): every session's for an admin, the user's own otherwise.
    #[serde(default)]
    pub spill_bytes: u64,
    /// Sessions alive on the server (for an admin; 0 for other users). A
    /// client that closes says goodbye and its session ends at once; one that
    /// vanishes counts until its grace period ends.
    #[serde(default)]
    pub sessions: u64,
    /// Size of the filesystem the store is on.
    #[serde(default)]
    pub capacity_bytes: u64,
    /// Bytes new data may still take: what the filesystem has free, less the
    /// reserve kept for deletes and GC (`reserved_space_bytes`).
    #[serde(default)]
    pub free_bytes: u64,
}

/// The class of a failure, so callers can react without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Wrong user or password.
    Auth,
    /// Authenticated, but not allowed to do this.
    Denied,
    /// No such container, image or handle (or not visible to the user).
    NotFound,
    /// A container or image of that name exists.
    AlreadyExists,
    /// A name or argument was refused.
    Invalid,
    /// The store has no space left.
    NoSpace,
    /// A limit (such as a container's stream limit) is reached; retry later.
    Busy,
    /// The peer speaks no common protocol version.
    Incompatible,
    /// The peer broke the protocol.
    Protocol,
    /// Stored data failed verification.
    Corrupt,
    /// Anything else on the server.
    Internal,
    /// The session to join is unknown or its grace period ran out.
    SessionExpired,
    /// (protocol 6) A retention lock forbids it; sessions of older versions
    /// hear `Denied`.
    Locked,
}

/// How a writer sends data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteMode {
    /// The client chunks and hashes, and sends only what the server lacks.
    Dedup,
    /// The client sends raw bytes; the server chunks and dedups.
    Passthrough,
}
