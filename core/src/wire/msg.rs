//! Protocol messages: the header of every frame.
//!
//! Requests carry a request id (`req`) chosen by the client; every answer to a
//! request echoes it. Bulk bytes (chunk data, passthrough data) travel in the
//! frame payload, never inside a message.

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkParams;
use crate::codec::Codec;
use crate::names::{ContainerName, GroupName, ImageName, UserName};
use crate::ChunkId;

/// The header of every frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's sequence number for this frame (starting at 1).
    pub seq: u64,
    /// The highest sequence number the sender has received in order.
    pub ack: u64,
    /// The request this frame belongs to (0 for none).
    pub req: u64,
    pub msg: Msg,
}

/// Handle of an open image within one session.
pub type Handle = u32;

/// Every message of protocol version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Msg {
    /// Client's first frame: the versions and features it speaks.
    Hello {
        min_version: u16,
        max_version: u16,
        features: Vec<String>,
        agent: String,
    },
    /// Server's answer to `Hello`.
    Welcome {
        version: u16,
        features: Vec<String>,
        server: String,
        /// The token that joins further connections to this session and
        /// resumes it after an outage.
        #[serde(default, with = "serde_bytes")]
        session: Vec<u8>,
        /// Seconds the server keeps the session without a connection.
        #[serde(default)]
        grace_secs: u64,
    },
    /// Control frame (sequence 0), first on a connection: attach it to a
    /// session. `received` is the highest frame the client got in order.
    Join {
        #[serde(with = "serde_bytes")]
        session: Vec<u8>,
        received: u64,
    },
    /// Control frame: the connection is part of the session; `received` is the
    /// highest frame the server got in order.
    Joined {
        received: u64,
    },
    /// Control frame: an acknowledgement with nothing else to say (see the envelope's `ack`).
    Ack,
    Login {
        user: UserName,
        password: String,
    },
    LoggedIn {
        admin: bool,
    },
    Ping,
    Pong,
    /// Success with nothing to report.
    Ok,
    /// Failure of the request named by the envelope's `req`.
    Error {
        kind: ErrorKind,
        message: String,
    },

    ContainerCreate {
        name: ContainerName,
        settings: ContainerSettings,
    },
    ContainerList,
    Containers {
        list: Vec<ContainerInfo>,
    },
    ContainerRemove {
        name: ContainerName,
    },
    UserAdd {
        name: UserName,
        password: String,
        admin: bool,
    },

    /// Opens a new image for writing.
    ImageCreate {
        container: ContainerName,
        name: ImageName,
        #[serde(with = "serde_bytes")]
        props: Vec<u8>,
        mode: WriteMode,
    },
    ImageCreated {
        handle: Handle,
        chunking: ChunkParams,
        zstd_level: i32,
    },
    /// Appends chunks to the image's recipe; the server answers `ImageNeed`.
    ImageAppend {
        handle: Handle,
        entries: Vec<ChunkRef>,
    },
    /// Indexes into the `ImageAppend` batch of the chunks the server lacks.
    ImageNeed {
        handle: Handle,
        missing: Vec<u32>,
    },
    /// One chunk's bytes in the payload, encoded as `codec` says.
    ///
    /// Sent by a writer for a chunk the server asked for, and by the server in
    /// answer to `ChunkGet` (then `offset` is the chunk's place in the image).
    ChunkData {
        handle: Handle,
        id: ChunkId,
        codec: Codec,
        raw_len: u32,
        offset: u64,
    },
    /// Passthrough: raw image bytes in the payload, chunked by the server.
    ImageWriteRaw {
        handle: Handle,
    },
    /// Commits the image; answered by `ImageCommitted`.
    ImageClose {
        handle: Handle,
    },
    ImageCommitted {
        info: ImageInfo,
        stats: WriteStats,
    },
    /// Drops an image being written; nothing of it becomes visible.
    ImageAbort {
        handle: Handle,
    },

    /// Opens a committed image for reading.
    ImageOpen {
        container: ContainerName,
        name: ImageName,
    },
    ImageOpened {
        handle: Handle,
        info: ImageInfo,
    },
    /// Asks for recipe entries starting with the one that holds `from_offset`.
    RecipeGet {
        handle: Handle,
        from_offset: u64,
        max: u32,
    },
    Recipe {
        entries: Vec<RecipeEntry>,
    },
    /// Asks for the chunks at these image offsets (each the start of a
    /// recipe entry); answered by one `ChunkData` per offset, in order.
    ChunkGet {
        handle: Handle,
        offsets: Vec<u64>,
    },
    /// Releases a read handle.
    ImageRelease {
        handle: Handle,
    },

    ImageList {
        container: ContainerName,
        prefix: String,
    },
    Images {
        list: Vec<ImageInfo>,
    },
    ImageRemove {
        container: ContainerName,
        name: ImageName,
    },
    StatsGet,
    Stats {
        stats: StoreStats,
    },
}

/// The class of a failure, so callers can react without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Wrong user or password.
    Auth,
    /// Authenticated, but not allowed to do this.
    Denied,
    NotFound,
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
}

/// How a writer sends data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteMode {
    /// The client chunks and hashes, and sends only what the server lacks.
    Dedup,
    /// The client sends raw bytes; the server chunks and dedups.
    Passthrough,
}

/// A chunk as the writer announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// A chunk's place in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeEntry {
    pub offset: u64,
    pub id: ChunkId,
    pub len: u32,
}

/// What a client may set when it creates a container; unset means the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSettings {
    pub group: Option<GroupName>,
    pub chunking: Option<ChunkParams>,
    pub zstd_level: Option<i32>,
    /// How many images may be written at once (0: no limit).
    pub stream_limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: ContainerName,
    pub group: GroupName,
    pub chunking: ChunkParams,
    pub zstd_level: i32,
    pub stream_limit: u32,
    pub images: u64,
    pub logical_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub container: ContainerName,
    pub name: ImageName,
    pub size: u64,
    pub chunks: u64,
    /// Opaque properties owned by the DMA.
    #[serde(with = "serde_bytes")]
    pub props: Vec<u8>,
    /// Seconds since the Unix epoch when the image was committed.
    pub created: u64,
}

/// What writing one image cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteStats {
    /// Bytes of the image.
    pub logical_bytes: u64,
    pub chunks: u64,
    /// Chunks the store did not have before.
    pub new_chunks: u64,
    /// Stored (compressed) bytes added to the store.
    pub new_stored_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    pub containers: u64,
    pub images: u64,
    /// Sum of the sizes of all images.
    pub logical_bytes: u64,
    pub unique_chunks: u64,
    /// Sum of the plaintext sizes of the unique chunks.
    pub unique_bytes: u64,
    /// Compressed bytes of the unique chunks.
    pub stored_bytes: u64,
    /// Bytes of pack files on disk, including space GC has yet to reclaim.
    pub pack_bytes: u64,
}
