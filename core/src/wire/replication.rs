//! The types of the replication messages (protocol version 2): partners,
//! copies, the replication trail and import events. `docs/protocol.md`
//! describes them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::{ContainerName, ImageName, UserName};

/// Most import events one `EventsGet` returns.
pub const MAX_EVENTS_PER_POLL: u32 = 1000;

/// A copy job's id: 128 random bits, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CopyId(
    /// The id's bits.
    pub [u8; 16],
);

impl fmt::Display for CopyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CopyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for CopyId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a copy id (32 hex digits)");
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(CopyId(id))
    }
}

/// Where a replica comes from, as the source server tells the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaOrigin {
    /// The copy that writes the replica.
    pub copy: CopyId,
    /// The source server's id (the fingerprint of its certificate).
    pub server: String,
    /// The container on the source.
    pub container: ContainerName,
    /// The image on the source.
    pub image: ImageName,
    /// (protocol 6) The retention lock holding the image on the source when
    /// the copy began: the target holds the replica alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<crate::wire::ImageLock>,
}

/// A replication partner as listed (never its password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerInfo {
    /// The partner's name on this server.
    pub name: String,
    /// Its addresses, tried in order.
    pub addresses: Vec<String>,
    /// The fingerprint its certificate must have.
    pub fingerprint: String,
    /// The user this server logs in as.
    pub user: UserName,
    /// The protocol version it spoke when last checked.
    pub version: u16,
    /// Seconds since the Unix epoch when it was added.
    pub added: u64,
    /// How its copies travel.
    #[serde(default)]
    pub settings: PartnerSettings,
}

/// How a partner's copies travel (protocol 4; older peers leave the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerSettings {
    /// Connections per copy (MultiConnect); 0: the default, 4.
    #[serde(default)]
    pub connections: u32,
    /// The shaping group its copies draw bandwidth from; None: unshaped.
    #[serde(default)]
    pub shaping: Option<String>,
}

/// The state of a copy job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyState {
    /// Waiting for a slot (`max_copies_per_partner`) or for a retry.
    Queued,
    /// Sending.
    Running,
    /// The target committed the replica.
    Done,
    /// Given up; the reason says why.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Done, and the target's DMA acknowledged the import event.
    Imported,
}

impl CopyState {
    /// The lower-case name the CLI prints.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyState::Queued => "queued",
            CopyState::Running => "running",
            CopyState::Done => "done",
            CopyState::Failed => "failed",
            CopyState::Cancelled => "cancelled",
            CopyState::Imported => "imported",
        }
    }

    /// True once the job will not change any more (but `Done` may still
    /// become `Imported`).
    pub fn is_final(self) -> bool {
        !matches!(self, CopyState::Queued | CopyState::Running)
    }
}

/// A copy job as its status reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyInfo {
    /// The copy.
    pub id: CopyId,
    /// Where it stands.
    pub state: CopyState,
    /// Why it failed, or the last error it is retrying after.
    pub reason: String,
    /// The source container.
    pub container: ContainerName,
    /// The source image.
    pub image: ImageName,
    /// The partner it goes to.
    pub partner: String,
    /// The replica container there.
    pub to_container: ContainerName,
    /// The replica's name there.
    pub to_name: ImageName,
    /// The image's size.
    pub logical_bytes: u64,
    /// Logical bytes whose chunks the target has (sent or already there).
    pub done_bytes: u64,
    /// Chunk bytes sent, as stored (compressed).
    pub sent_bytes: u64,
    /// Chunks sent.
    pub sent_chunks: u64,
    /// Attempts so far.
    pub attempts: u32,
    /// Seconds since the Unix epoch when it was asked for.
    pub created: u64,
    /// Seconds since the Unix epoch of its last change of state.
    pub updated: u64,
    /// Running but parked: its shaping group's rate is 0 now (protocol 4).
    #[serde(default)]
    pub paused: bool,
    /// The rate of its shaping group now, bytes per second (0: unshaped,
    /// or paused).
    #[serde(default)]
    pub rate: u64,
    /// The partner address the running attempt uses (empty when not running).
    #[serde(default)]
    pub path: String,
    /// (protocol 9) A cloud tier copy on this server: `partner` is empty
    /// and `to_container` the cloud container (`GROUP/NAME`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tier: bool,
}

/// An import event: a replica arrived in an import container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportEvent {
    /// Increasing on this server, never reused.
    pub id: u64,
    /// Seconds since the Unix epoch of the replica's commit.
    pub time: u64,
    /// The import container.
    pub container: ContainerName,
    /// The replica's name.
    pub image: ImageName,
    /// Its size in bytes.
    pub size: u64,
    /// The DMA's image properties, as the source image had them.
    #[serde(with = "serde_bytes")]
    pub props: Vec<u8>,
    /// Where the image came from.
    pub origin: ReplicaOrigin,
}

/// Whether the target's DMA has taken a copy's import event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportState {
    /// The event waits for the DMA.
    Pending,
    /// The DMA acknowledged it.
    Imported,
    /// No event: the replica is in a container without `--import`, or gone.
    NoEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ids_print_and_parse_as_32_hex_digits() {
        let id = CopyId([0xab; 16]);
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse::<CopyId>().unwrap(), id);
        assert!("abc".parse::<CopyId>().is_err());
        assert!("zz".repeat(16).parse::<CopyId>().is_err());
        assert!("é".repeat(16).parse::<CopyId>().is_err());
    }
}
