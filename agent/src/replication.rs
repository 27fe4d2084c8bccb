//! Replication through a client: partners, copies, the trail and import
//! events (protocol version 2), and [`ReplicaWriter`], with which a source
//! server writes a replica into a target as stored (chunks are sent in the
//! encoding the source keeps, never decompressed).

use std::sync::Arc;

use tern_core::names::UserName;
use tern_core::wire::{
    ChunkRef, CopyId, CopyInfo, Handle, ImageInfo, ImportEvent, ImportState, Listing, Msg,
    PartnerInfo, PartnerSettings, Password, ReplicaOrigin, TrailEntry, WriteStats,
    MAX_EVENTS_PER_POLL,
};
use tern_core::{ChunkId, ChunkParams, Codec, ContainerName, ImageName};

use crate::client::unexpected;
use crate::session::{Answers, DataErrors, Sender};
use crate::stop::Stop;
use crate::{Client, ClientError};

/// Where a copy goes: the partner, its container and the replica's name.
#[derive(Debug, Clone)]
pub struct CopyTarget<'a> {
    /// The partner's name on the source server.
    pub partner: &'a str,
    /// The replica container on the partner.
    pub container: &'a str,
    /// The replica's name (default: the image's).
    pub name: Option<&'a str>,
}

impl Client {
    fn expect_done(&self, msg: Msg) -> Result<(), ClientError> {
        match self.ask(msg)?.env.msg {
            Msg::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The protocol version of the session.
    pub fn protocol_version(&self) -> u16 {
        self.conn().version()
    }

    /// Adds a replication partner: the server checks that it can reach it,
    /// that its certificate has `fingerprint`, that `user` logs in and that
    /// it speaks a protocol version with replication (admins only).
    pub fn partner_add(
        &self,
        name: &str,
        addresses: &[&str],
        fingerprint: &str,
        user: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        self.partner_add_with(
            name,
            addresses,
            fingerprint,
            user,
            password,
            PartnerSettings::default(),
        )
    }

    /// [`Client::partner_add`] with connections per copy and a shaping
    /// group (a server older than protocol 4 ignores them).
    pub fn partner_add_with(
        &self,
        name: &str,
        addresses: &[&str],
        fingerprint: &str,
        user: &str,
        password: &str,
        settings: PartnerSettings,
    ) -> Result<(), ClientError> {
        self.expect_done(Msg::PartnerAdd {
            name: name.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            fingerprint: fingerprint.into(),
            user: UserName::new(user)?,
            password: Password::new(password),
            settings,
        })
    }

    /// Changes a partner (admins only): each `Some` replaces its value;
    /// `shaping: Some("")` takes it out of its shaping group. Running
    /// copies keep theirs; their next attempt takes the new ones.
    pub fn partner_set(
        &self,
        name: &str,
        addresses: Option<&[&str]>,
        connections: Option<u32>,
        shaping: Option<&str>,
    ) -> Result<(), ClientError> {
        self.expect_done(Msg::PartnerSet {
            name: name.into(),
            addresses: addresses.map(|a| a.iter().map(|a| a.to_string()).collect()),
            connections,
            shaping: shaping.map(str::to_string),
        })
    }

    /// The server's replication partners.
    pub fn partner_list(&self) -> Result<Vec<PartnerInfo>, ClientError> {
        self.pages(
            Msg::PartnerList,
            |_| Listing::Partners,
            crate::paging::each_page!(Msg::Partners),
        )
    }

    /// Removes a partner (admins only).
    pub fn partner_remove(&self, name: &str) -> Result<(), ClientError> {
        self.expect_done(Msg::PartnerRemove { name: name.into() })
    }

    /// Asks the server to copy an image to a partner; returns the copy's id
    /// at once (the copy runs on the server). Asking again for the same
    /// image and target while the copy runs returns the same id.
    pub fn copy_start(
        &self,
        container: &str,
        name: &str,
        to: &CopyTarget<'_>,
    ) -> Result<CopyId, ClientError> {
        let msg = Msg::CopyStart {
            container: ContainerName::new(container)?,
            name: ImageName::new(name)?,
            partner: to.partner.into(),
            to_container: ContainerName::new(to.container)?,
            to_name: to.name.map(ImageName::new).transpose()?,
        };
        match self.ask(msg)?.env.msg {
            Msg::CopyStarted { id } => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// A copy's status (at most a second old).
    pub fn copy_status(&self, id: CopyId) -> Result<CopyInfo, ClientError> {
        match self.ask(Msg::CopyStatusGet { id })?.env.msg {
            Msg::Copies { mut list, .. } if list.len() == 1 => Ok(list.remove(0)),
            other => Err(unexpected(other)),
        }
    }

    /// Every copy the server knows, newest first.
    pub fn copy_list(&self) -> Result<Vec<CopyInfo>, ClientError> {
        self.pages(
            Msg::CopyList,
            |_| Listing::Copies,
            crate::paging::each_page!(Msg::Copies),
        )
    }

    /// Cancels a copy; it shows `cancelled` within two seconds.
    pub fn copy_cancel(&self, id: CopyId) -> Result<(), ClientError> {
        self.expect_done(Msg::CopyCancel { id })
    }

    /// Ends a copy and drops what it left on both sides (see
    /// `Msg::CopyAbort`); on a target, drops the partial replica it left.
    pub fn copy_abort(&self, id: CopyId) -> Result<(), ClientError> {
        self.expect_done(Msg::CopyAbort { id })
    }

    /// The replication trail, newest first.
    pub fn replication_history(&self, max: u32) -> Result<Vec<TrailEntry>, ClientError> {
        let left = |got: usize| Listing::Trail {
            max: max.saturating_sub(got as u32),
        };
        self.pages(
            Msg::TrailGet { max },
            left,
            crate::paging::each_page!(Msg::Trail),
        )
    }

    /// Unacknowledged import events of a container, oldest first (at most
    /// `max`, and at most [`MAX_EVENTS_PER_POLL`]).
    pub fn events(&self, container: &str, max: u32) -> Result<Vec<ImportEvent>, ClientError> {
        let container = ContainerName::new(container)?;
        let max = max.min(MAX_EVENTS_PER_POLL);
        let first = Msg::EventsGet {
            container: container.clone(),
            max,
        };
        let left = |got: usize| Listing::Events {
            container: container.clone(),
            max: max.saturating_sub(got as u32),
        };
        self.pages(first, left, crate::paging::each_page!(Msg::Events))
    }

    /// Acknowledges import events: they are never returned again.
    pub fn events_ack(&self, container: &str, ids: &[u64]) -> Result<(), ClientError> {
        self.expect_done(Msg::EventsAck {
            container: ContainerName::new(container)?,
            ids: ids.to_vec(),
        })
    }

    /// Turns a replica container into an ordinary one (admins only).
    pub fn container_promote(&self, name: &str) -> Result<(), ClientError> {
        self.expect_done(Msg::ContainerPromote {
            name: ContainerName::new(name)?,
        })
    }

    /// Copies every image committed to `container` from now on to the
    /// partner's container; `None` ends that (admins only).
    pub fn container_replicate(
        &self,
        container: &str,
        to: Option<(&str, &str)>,
    ) -> Result<(), ClientError> {
        let to = to
            .map(|(p, c)| Ok::<_, ClientError>((p.to_string(), ContainerName::new(c)?)))
            .transpose()?;
        self.expect_done(Msg::ContainerReplicate {
            name: ContainerName::new(container)?,
            to,
        })
    }

    /// For a source server: whether the import events of these copies were
    /// acknowledged by this (target) server's DMA.
    pub fn import_states(&self, copies: &[CopyId]) -> Result<Vec<ImportState>, ClientError> {
        let msg = Msg::ImportStatesGet {
            copies: copies.to_vec(),
        };
        match self.ask(msg)?.env.msg {
            Msg::ImportStates { states } if states.len() == copies.len() => Ok(states),
            other => Err(unexpected(other)),
        }
    }

    /// For a source server: drops the replica `copy` is writing here, if
    /// any (from another session than the one that wrote it).
    pub fn replica_abort(&self, copy: CopyId) -> Result<(), ClientError> {
        self.expect_done(Msg::ReplicaAbort { copy })
    }

    /// For a source server: opens a replica in a replica container of this
    /// (target) server.
    pub fn replica_create(&self, replica: ReplicaSpec) -> Result<ReplicaStart, ClientError> {
        let stop = self.stop();
        let answer = {
            let _limit = self.limit(&stop);
            let msg = Msg::ReplicaCreate {
                container: replica.container,
                name: replica.name,
                props: replica.props,
                origin: replica.origin,
                chunking: replica.chunking,
                zstd_level: replica.zstd_level,
            };
            self.conn().call(msg, Vec::new(), &stop)?
        };
        let (handle, offset) = match answer.env.msg {
            Msg::ImageCreated { handle, .. } => (handle, 0),
            Msg::ImageResumed { handle, offset, .. } => (handle, offset),
            Msg::ImageCommitted { info, .. } => return Ok(ReplicaStart::Committed(info)),
            other => return Err(unexpected(other)),
        };
        let errors = self.conn().data_errors();
        Ok(ReplicaStart::Write(ReplicaWriter {
            sender: self.conn().sender(&errors, &stop),
            errors,
            client: self.clone(),
            handle,
            stop,
            finished: false,
            offset,
        }))
    }
}

/// A replica to create on a target.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    /// The replica container.
    pub container: ContainerName,
    /// The replica's name.
    pub name: ImageName,
    /// The source image's DMA properties.
    pub props: Vec<u8>,
    /// Where it comes from.
    pub origin: ReplicaOrigin,
    /// The source container's chunking.
    pub chunking: ChunkParams,
    /// The source container's zstd level.
    pub zstd_level: i32,
}

/// The target's answer to [`Client::replica_create`].
pub enum ReplicaStart {
    /// Write the replica.
    Write(ReplicaWriter),
    /// The same copy committed it before (its answer was lost).
    Committed(ImageInfo),
}

/// A replica being written: announce its recipe in batches, send the
/// chunks the target asks for as stored, commit. Dropping it uncommitted
/// aborts the replica.
pub struct ReplicaWriter {
    client: Client,
    sender: Sender,
    /// The target's refusals of this replica's chunks.
    errors: DataErrors,
    handle: Handle,
    stop: Arc<Stop>,
    finished: bool,
    offset: u64,
}

/// An announced batch awaiting the target's answer.
pub struct PendingNeed {
    answers: Answers,
    len: usize,
}

impl PendingNeed {
    /// Indexes into the batch of the chunks the target lacks: checked to be
    /// ascending and inside the batch, so that no answer can make the
    /// source send what the copy did not name.
    pub fn wait(mut self) -> Result<Vec<u32>, ClientError> {
        let missing = match self.answers.recv()?.env.msg {
            Msg::ImageNeed { missing, .. } => missing,
            other => return Err(unexpected(other)),
        };
        let ascending = missing.windows(2).all(|w| w[0] < w[1]);
        if !ascending || missing.last().is_some_and(|&i| i as usize >= self.len) {
            return Err(ClientError::Protocol(format!(
                "the target asked for chunks outside the batch of {} it was shown",
                self.len
            )));
        }
        Ok(missing)
    }
}

impl ReplicaWriter {
    /// Bytes of the replica the target already holds from an earlier
    /// attempt of this copy (0 for a new one): announce the recipe from
    /// this offset on.
    pub fn resume_offset(&self) -> u64 {
        self.offset
    }

    /// Announces the next chunks of the recipe; the answer comes later, so
    /// that several batches can be in flight.
    pub fn announce(&self, entries: Vec<ChunkRef>) -> Result<PendingNeed, ClientError> {
        let len = entries.len();
        let msg = Msg::ImageAppend {
            handle: self.handle,
            entries,
        };
        let answers = self.client.conn().request(msg, Vec::new(), &self.stop)?;
        Ok(PendingNeed { answers, len })
    }

    /// Sends one chunk in its stored encoding.
    pub fn send_chunk(
        &self,
        id: ChunkId,
        codec: Codec,
        raw_len: u32,
        stored: Vec<u8>,
    ) -> Result<(), ClientError> {
        let msg = Msg::ChunkData {
            handle: self.handle,
            id,
            codec,
            raw_len,
            offset: 0,
        };
        self.sender.send(msg, stored)
    }

    /// Commits the replica and waits for the target to say so.
    pub fn commit(mut self) -> Result<(ImageInfo, WriteStats), ClientError> {
        self.finished = true;
        let close = Msg::ImageClose {
            handle: self.handle,
        };
        let answer = {
            let _limit = self.client.limit(&self.stop);
            self.client.conn().call(close, Vec::new(), &self.stop)
        };
        match answer {
            Ok(a) => match a.env.msg {
                Msg::ImageCommitted { info, stats } => Ok((info, stats)),
                other => Err(unexpected(other)),
            },
            // The target's reason for refusing a chunk, with its kind.
            Err(e) => Err(self.errors.take().unwrap_or(e)),
        }
    }
}

impl Drop for ReplicaWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.client.conn().send_later(Msg::ImageAbort {
                handle: self.handle,
            });
        }
    }
}
