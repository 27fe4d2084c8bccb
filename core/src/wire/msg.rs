//! Protocol messages: what a frame's header ([`Envelope`](super::Envelope)) carries.
//!
//! Requests carry a request id (`req`) chosen by the client; every answer to a
//! request echoes it. Bulk bytes (chunk data, passthrough data) travel in the
//! frame payload, never inside a message.

use serde::{Deserialize, Serialize};

use super::catalog::*;
use super::groups::{GroupInfo, GroupSettings};
use super::paging::Listing;
use super::password::Password;
use super::replication::*;
use super::shaping::*;
use super::tier::{TierPolicy, TierStatus};
use super::trail::TrailEntry;
use crate::chunker::ChunkParams;
use crate::codec::Codec;
use crate::names::{ContainerName, GroupName, ImageName, UserName};
use crate::ChunkId;

/// Handle of an open image within one session.
pub type Handle = u32;

/// Every message of every protocol version (docs/protocol.md says which
/// version brought each); one enum, as the wire names a message by variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Msg {
    /// Client's first frame: the versions and features it speaks.
    Hello {
        /// The oldest protocol version the client speaks.
        min_version: u16,
        /// The newest protocol version the client speaks.
        max_version: u16,
        /// Features the client would use (see `FEATURES`).
        features: Vec<String>,
        /// The client program and version, for the server's log.
        agent: String,
    },
    /// Server's answer to `Hello`.
    Welcome {
        /// The protocol version of the session.
        version: u16,
        /// Features both sides have.
        features: Vec<String>,
        /// The server program and version.
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
        /// The token from `Welcome`.
        #[serde(with = "serde_bytes")]
        session: Vec<u8>,
        /// The highest sequence number the client received in order.
        received: u64,
    },
    /// Control frame: the connection is part of the session; `received` is the
    /// highest frame the server got in order.
    Joined {
        /// The highest sequence number the server received in order.
        received: u64,
    },
    /// Control frame: an acknowledgement with nothing else to say (see the envelope's `ack`).
    Ack,
    /// Logs the session in; answered by `LoggedIn` or an `Auth` error.
    Login {
        /// Who logs in.
        user: UserName,
        /// The password.
        password: Password,
    },
    /// The session is logged in.
    LoggedIn {
        /// The user may administer the server.
        admin: bool,
    },
    /// Asks for a `Pong` (a round trip; its payload is ignored).
    Ping,
    /// The client is done: the server answers `Ok` and ends the session at
    /// once (aborting its unfinished images, freeing its caches and stream
    /// slots) instead of keeping it for the grace period.
    Goodbye,
    /// The answer to `Ping`.
    Pong,
    /// Success with nothing to report.
    Ok,
    /// Failure of the request named by the envelope's `req`.
    Error {
        /// The class of the failure.
        kind: ErrorKind,
        /// What went wrong, for people.
        message: String,
    },

    /// Creates a container; answered by `Ok`.
    ContainerCreate {
        /// The new container's name.
        name: ContainerName,
        /// Its settings; unset ones take the server's defaults.
        settings: ContainerSettings,
    },
    /// Lists the containers the user may see; answered by `Containers`.
    ContainerList,
    /// The answer to `ContainerList`.
    Containers {
        /// The containers, by name.
        list: Vec<ContainerInfo>,
        /// (protocol 5) The cursor of the next page, while more remain:
        /// ask `ListMore` with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Removes an empty container; answered by `Ok`.
    ContainerRemove {
        /// The container to remove.
        name: ContainerName,
    },
    /// Adds a user (admins only); answered by `Ok`, or `AlreadyExists`
    /// (an existing user is never changed by this).
    UserAdd {
        /// The new user's name.
        name: UserName,
        /// Their password.
        password: Password,
        /// Whether they may administer the server.
        admin: bool,
    },
    /// Sets a user's password (an admin's, or the user's own); answered by `Ok`.
    UserPasswd {
        /// Whose password.
        name: UserName,
        /// The new password.
        password: Password,
    },
    /// Changes a user's storage groups and admin right (admins only; each
    /// only if given); answered by `Ok`.
    UserSet {
        /// Whose rights.
        name: UserName,
        /// The storage groups the user may use, replacing the old list.
        groups: Option<Vec<GroupName>>,
        /// Whether the user may administer the server.
        admin: Option<bool>,
        /// The storage groups whose replica containers the user may
        /// replicate into, replacing the old list.
        #[serde(default)]
        replicate_into: Option<Vec<GroupName>>,
        /// The shaping group the user's backups and restores draw from
        /// (protocol 4; an empty name: none).
        #[serde(default)]
        shaping: Option<String>,
    },

    /// Opens a new image for writing.
    ImageCreate {
        /// The container to write into.
        container: ContainerName,
        /// The new image's name.
        name: ImageName,
        /// The DMA's opaque properties, stored with the image.
        #[serde(with = "serde_bytes")]
        props: Vec<u8>,
        /// Who chunks: the client (dedup) or the server (passthrough).
        mode: WriteMode,
    },
    /// The answer to `ImageCreate`.
    ImageCreated {
        /// The handle of the image being written.
        handle: Handle,
        /// The container's chunking, which the writer must use.
        chunking: ChunkParams,
        /// The container's zstd level, for the writer's compression.
        zstd_level: i32,
    },
    /// Reopens an incomplete image (its writer died, or the server
    /// restarted) to continue it; answered by `ImageResumed` (protocol 3).
    ImageResume {
        /// The container holding it.
        container: ContainerName,
        /// The incomplete image's name.
        name: ImageName,
        /// Who chunks from here on.
        mode: WriteMode,
    },
    /// The answer to `ImageResume`: write the image's bytes from `offset` on.
    ImageResumed {
        /// The handle of the image being written.
        handle: Handle,
        /// The container's chunking, which the writer must use.
        chunking: ChunkParams,
        /// The container's zstd level, for the writer's compression.
        zstd_level: i32,
        /// Bytes of the image already durable (a chunk boundary).
        offset: u64,
        /// The DMA's properties, as given when the image was begun.
        #[serde(with = "serde_bytes")]
        props: Vec<u8>,
    },
    /// Appends chunks to the image's recipe; the server answers `ImageNeed`.
    ImageAppend {
        /// The image being written.
        handle: Handle,
        /// The chunks, in image order.
        entries: Vec<ChunkRef>,
    },
    /// Indexes into the `ImageAppend` batch of the chunks the server lacks.
    ImageNeed {
        /// The image being written.
        handle: Handle,
        /// Indexes into the batch of the chunks to send, ascending.
        missing: Vec<u32>,
    },
    /// One chunk's bytes in the payload, encoded as `codec` says.
    ///
    /// Sent by a writer for a chunk the server asked for, and by the server in
    /// answer to `ChunkGet` (then `offset` is the chunk's place in the image).
    ChunkData {
        /// The image the chunk belongs to.
        handle: Handle,
        /// The blake3 of the chunk's plaintext.
        id: ChunkId,
        /// How the payload is encoded.
        codec: Codec,
        /// The plaintext's length.
        raw_len: u32,
        /// The chunk's place in the image (from the server; 0 from a writer).
        offset: u64,
    },
    /// Passthrough: raw image bytes in the payload, chunked by the server.
    ImageWriteRaw {
        /// The image being written.
        handle: Handle,
    },
    /// Commits the image; answered by `ImageCommitted`.
    ImageClose {
        /// The image being written.
        handle: Handle,
    },
    /// The image is durable and visible.
    ImageCommitted {
        /// The committed image.
        info: ImageInfo,
        /// What writing it cost.
        stats: WriteStats,
    },
    /// Drops an image being written; nothing of it becomes visible.
    ImageAbort {
        /// The image being written.
        handle: Handle,
    },
    /// Stops writing an image without committing or dropping it (version
    /// 6): the server makes what it holds durable and keeps the image
    /// incomplete, for an `ImageResume`; answered by `ImageSuspended`.
    ImageSuspend {
        /// The image being written.
        handle: Handle,
    },
    /// The image is incomplete and durable up to `offset`.
    ImageSuspended {
        /// Where a resume continues (a chunk boundary).
        offset: u64,
    },

    /// Opens a committed image for reading.
    ImageOpen {
        /// The container holding the image.
        container: ContainerName,
        /// The image's name.
        name: ImageName,
    },
    /// The answer to `ImageOpen`.
    ImageOpened {
        /// The read handle.
        handle: Handle,
        /// The image.
        info: ImageInfo,
    },
    /// Asks for recipe entries starting with the one that holds `from_offset`.
    RecipeGet {
        /// The read handle.
        handle: Handle,
        /// An offset in the image.
        from_offset: u64,
        /// Most entries wanted (the server caps it).
        max: u32,
    },
    /// The answer to `RecipeGet`.
    Recipe {
        /// Consecutive recipe entries; empty past the end.
        entries: Vec<RecipeEntry>,
    },
    /// Asks for the chunks at these image offsets (each the start of a
    /// recipe entry); answered by one `ChunkData` per offset, in order.
    ChunkGet {
        /// The read handle.
        handle: Handle,
        /// Offsets at which recipe entries start.
        offsets: Vec<u64>,
    },
    /// Releases a read handle.
    ImageRelease {
        /// The read handle.
        handle: Handle,
    },

    /// Lists a container's images; answered by `Images`.
    ImageList {
        /// The container.
        container: ContainerName,
        /// Only names that start with this.
        prefix: String,
    },
    /// The answer to `ImageList`.
    Images {
        /// The images, by name.
        list: Vec<ImageInfo>,
        /// Images begun and not committed: being written, or incomplete
        /// (resumable), by name.
        #[serde(default)]
        incomplete: Vec<IncompleteImage>,
        /// (protocol 5) The cursor of the next page, while more remain:
        /// ask `ListMore` with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Deletes an image (its space returns at the next GC); answered by `Ok`.
    ImageRemove {
        /// The container holding the image.
        container: ContainerName,
        /// The image's name.
        name: ImageName,
        /// (protocol 6; admins) Deletes it even though a governance
        /// retention lock holds it; the audit log records it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        bypass_lock: bool,
        /// (protocol 9) Keeps the image's cloud tier copy, which is
        /// otherwise deleted with it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_cloud: bool,
    },
    /// Replaces a committed image's properties (at most `MAX_PROPS_LEN`);
    /// answered by `Ok`.
    ImagePropsSet {
        /// The container holding the image.
        container: ContainerName,
        /// The image's name.
        name: ImageName,
        /// The DMA's new properties.
        #[serde(with = "serde_bytes")]
        props: Vec<u8>,
    },
    /// Asks what the store holds; answered by `Stats`.
    StatsGet,
    /// The answer to `StatsGet`.
    Stats {
        /// What the store holds, as far as the user may see.
        stats: StoreStats,
    },

    // ---- replication (protocol version 2; see replication.rs) ----
    /// Makes a replica container an ordinary one (admins only); answered by `Ok`.
    ContainerPromote {
        /// The replica container.
        name: ContainerName,
    },
    /// Sets or ends a container's replication policy (admins only): every
    /// image committed to it afterwards is copied; answered by `Ok`.
    ContainerReplicate {
        /// The source container.
        name: ContainerName,
        /// The partner and its container, or `None` to end the policy.
        to: Option<(String, ContainerName)>,
    },
    /// Adds a replication partner after checking it (admins only); answered by `Ok`.
    PartnerAdd {
        /// Its name on this server.
        name: String,
        /// `host:port` addresses, tried in order.
        addresses: Vec<String>,
        /// The fingerprint its certificate must have (`sha256:...`).
        fingerprint: String,
        /// The user to log in as there.
        user: UserName,
        /// Their password.
        password: Password,
        /// How its copies travel (protocol 4).
        #[serde(default)]
        settings: PartnerSettings,
    },
    /// Changes a partner (admins only; protocol 4): each field given
    /// replaces the partner's; answered by `Ok`.
    PartnerSet {
        /// Its name on this server.
        name: String,
        /// New addresses, tried in order (the first that answers is used).
        addresses: Option<Vec<String>>,
        /// Connections per copy (0: the default).
        connections: Option<u32>,
        /// The shaping group (an empty name: none).
        shaping: Option<String>,
    },
    /// Creates or replaces a shaping group (admins only; protocol 4; at
    /// most `MAX_SHAPING_GROUPS`); running jobs follow within 2 s.
    /// Answered by `Ok`.
    ShapingSet {
        /// Its name.
        name: String,
        /// Its rates and windows.
        settings: ShapingSettings,
    },
    /// Lists the shaping groups (admins only); answered by `ShapingGroups`.
    ShapingList,
    /// The answer to `ShapingList`.
    ShapingGroups {
        /// By name.
        list: Vec<ShapingInfo>,
    },
    /// Removes a shaping group no partner or user is assigned to (admins
    /// only); answered by `Ok`.
    ShapingRemove {
        /// Its name.
        name: String,
    },
    /// Lists the partners; answered by `Partners`.
    PartnerList,
    /// The answer to `PartnerList`.
    Partners {
        /// The partners, by name.
        list: Vec<PartnerInfo>,
        /// (protocol 5) The cursor of the next page, while more remain:
        /// ask `ListMore` with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Removes a partner (admins only); answered by `Ok`.
    PartnerRemove {
        /// The partner.
        name: String,
    },
    /// Starts (or finds) the copy of an image to a partner; answered by `CopyStarted`.
    CopyStart {
        /// The source container.
        container: ContainerName,
        /// The source image.
        name: ImageName,
        /// The partner to copy to.
        partner: String,
        /// The replica container there.
        to_container: ContainerName,
        /// The replica's name there (default: the image's name).
        to_name: Option<ImageName>,
    },
    /// The copy's id: a new job, or the live job of the same image, partner,
    /// container and name.
    CopyStarted {
        /// The copy.
        id: CopyId,
    },
    /// Asks for one copy's status; answered by `Copies` with one entry.
    CopyStatusGet {
        /// The copy.
        id: CopyId,
    },
    /// Lists copies, newest first; answered by `Copies`.
    CopyList,
    /// The answer to `CopyStatusGet` and `CopyList`.
    Copies {
        /// The copies.
        list: Vec<CopyInfo>,
        /// (protocol 5) The cursor of the next page, while more remain:
        /// ask `ListMore` with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Cancels a copy that has not ended; answered by `Ok`.
    CopyCancel {
        /// The copy.
        id: CopyId,
    },
    /// Ends a copy and drops what it left on both sides (protocol 4): on
    /// its source, a copy not yet done is cancelled and its target told to
    /// drop its partial replica; on its target, the partial replica is
    /// dropped. Answered by `Ok`.
    CopyAbort {
        /// The copy.
        id: CopyId,
    },
    /// Asks for the replication trail, newest first; answered by `Trail`.
    TrailGet {
        /// Most entries wanted.
        max: u32,
    },
    /// The answer to `TrailGet`.
    Trail {
        /// The attempts, newest first.
        list: Vec<TrailEntry>,
        /// (protocol 5) The cursor of the next page, while more remain:
        /// ask `ListMore` with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// From a source server: opens a replica for writing in a replica
    /// container; answered by `ImageCreated` (then written like a dedup
    /// image: `ImageAppend`, `ChunkData` as stored, `ImageClose`), by
    /// `ImageCommitted` if this copy already committed it, or (protocol 4)
    /// by `ImageResumed` if this copy left a partial replica: the source
    /// continues its recipe from `offset`.
    ReplicaCreate {
        /// The replica container.
        container: ContainerName,
        /// The replica's name.
        name: ImageName,
        /// The source image's DMA properties.
        #[serde(with = "serde_bytes")]
        props: Vec<u8>,
        /// Where it comes from.
        origin: ReplicaOrigin,
        /// The source container's chunking, which the replica container must have.
        chunking: ChunkParams,
        /// The source container's zstd level, inherited with the chunking.
        zstd_level: i32,
    },
    /// From a source server: drops the replica this copy is writing, from
    /// whichever session (a cancel must not wait for the old session's
    /// queue to drain); answered by `Ok`, also when there is none.
    ReplicaAbort {
        /// The copy.
        copy: CopyId,
    },
    /// From a source server: which of these copies' import events the
    /// target's DMA has acknowledged; answered by `ImportStates`.
    ImportStatesGet {
        /// The copies.
        copies: Vec<CopyId>,
    },
    /// The answer to `ImportStatesGet`, one per copy asked about.
    ImportStates {
        /// In the order asked.
        states: Vec<ImportState>,
    },
    /// Unacknowledged import events of a container, oldest first (at most
    /// `MAX_EVENTS_PER_POLL`); answered by `Events`.
    EventsGet {
        /// The import container.
        container: ContainerName,
        /// Most events wanted (capped at `MAX_EVENTS_PER_POLL`).
        max: u32,
    },
    /// The answer to `EventsGet`.
    Events {
        /// The events, oldest first.
        list: Vec<ImportEvent>,
        /// (protocol 5) The cursor of the next page, while more remain:
        /// ask `ListMore` with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// (protocol 5) The next page of a listing, after the cursor its last
    /// page ended with; answered as the listing's first request is.
    ListMore {
        /// The listing, with what its first request said.
        listing: Listing,
        /// The `next` of the page before.
        after: String,
    },
    /// Acknowledges import events; acknowledging one twice is fine, an
    /// unknown id is `NotFound`; answered by `Ok`.
    EventsAck {
        /// The import container.
        container: ContainerName,
        /// The events.
        ids: Vec<u64>,
    },
    /// Asks for the audit log, oldest first (admins; version 6); answered
    /// by `Audit`, in pages.
    AuditGet {
        /// Only acts at or after this time (unix seconds).
        since: u64,
    },
    /// The answer to `AuditGet`.
    Audit {
        /// The acts, each the JSON line of the log.
        lines: Vec<String>,
        /// The cursor of the next page, while more remain: ask `ListMore`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Sets, lengthens or (governance only) removes a container's retention
    /// lock (admins; version 6); answered by `Ok`.
    ContainerLock {
        /// The container.
        name: ContainerName,
        /// The new lock, or `None` to remove a governance lock.
        lock: Option<RetentionLock>,
    },
    /// Appends `len` bytes of committed image `name` of `container` (in
    /// the image's storage group), from its byte `offset`, to the image
    /// being written (version 7: synthetic fulls); answered by
    /// `ExtentAppended`. The writer first sends every chunk asked for.
    ImageAppendExtent {
        /// The image being written.
        handle: Handle,
        /// The source's container.
        container: ContainerName,
        /// The source image, committed.
        name: ImageName,
        /// Where the extent starts in the source.
        offset: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// The answer to `ImageAppendExtent`: the extent is in the image.
    ExtentAppended {
        /// The image being written.
        handle: Handle,
        /// Bytes taken as whole chunks of the source (no data moved).
        referenced_bytes: u64,
        /// Bytes of the source's chunks the extent cuts, sliced on the server.
        sliced_bytes: u64,
    },
    /// Creates a storage group where `settings` say (admins; version 8);
    /// answered by `Ok`.
    GroupAdd {
        /// Its name.
        name: GroupName,
        /// Where its packs live.
        settings: GroupSettings,
    },
    /// Lists the storage groups the user may use (admins: all); answered by `Groups`.
    GroupList,
    /// The answer to `GroupList`.
    Groups {
        /// By name.
        list: Vec<GroupInfo>,
    },
    /// Removes an empty storage group (admins; version 8); answered by `Ok`.
    GroupRemove {
        /// Its name.
        name: GroupName,
    },
    /// Links a container to a container in a cloud storage group with a
    /// policy, or unlinks it with `None` (admins; version 9); answered by
    /// `Ok`.
    ContainerTier {
        /// The local container.
        name: ContainerName,
        /// Its policy.
        policy: Option<TierPolicy>,
    },
    /// Asks what the tier mover has done with each tiered container the
    /// user sees (version 9); answered by `TierStatuses`.
    TierStatusGet,
    /// The answer to `TierStatusGet`.
    TierStatuses {
        /// By container.
        list: Vec<TierStatus>,
    },
    /// Brings an image held in the cloud tier back to its own storage
    /// group (version 9); answered by `ImageRecalled` when it is local.
    ImageRecall {
        /// The container holding it.
        container: ContainerName,
        /// The image's name.
        name: ImageName,
    },
    /// The answer to `ImageRecall`.
    ImageRecalled {
        /// Chunk bytes stored locally for it (what the group lacked).
        stored_bytes: u64,
    },
}
