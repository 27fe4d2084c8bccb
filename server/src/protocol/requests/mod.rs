//! The requests of a session, one module per family. [`dispatch`] routes a
//! frame by its message; each family's function answers its messages.
//!
//! - `handshake`: Hello and Login (the only requests before login, with Ping).
//! - `catalog`: containers, image names, users, statistics.
//! - `listings`: every listing, in pages.
//! - `write`: writing an image (dedup and passthrough).
//! - `read`: reading an image.
//! - `replication`: partners, shaping groups, copies and the trail (source).
//! - `replica`: replicas and import events (target).

mod catalog;
mod handshake;
mod listings;
mod read;
mod replica;
mod replication;
mod write;

use tern_core::wire::{ErrorKind, Feature, Missing, Msg};

use crate::protocol::handler::{Phase, SessionHandler};
use crate::store::StoreError;

/// A failed request: reported to the client; the session goes on unless
/// the kind is [`ErrorKind::Protocol`].
pub struct Refusal(pub ErrorKind, pub String);

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal(e.kind(), e.to_string())
    }
}

type Answer = Result<Option<Msg>, Refusal>;

fn refuse<T>(kind: ErrorKind, msg: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(kind, msg.into()))
}

/// Runs a blocking store call off the async worker's back.
fn blocking<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, Refusal> {
    Ok(tokio::task::block_in_place(f)?)
}

/// Answers one request: `Ok(Some(msg))` is the reply, `Ok(None)` means the
/// request answered itself (chunk streams) or has no answer (chunk data).
pub async fn dispatch(h: &mut SessionHandler, req: u64, msg: Msg, payload: Vec<u8>) -> Answer {
    if !matches!(h.phase(), Phase::Ready(_)) {
        return handshake::handle(h, msg).await;
    }
    // The one check of what the session's protocol version allows.
    if let Some(feature) = Feature::needed_by(&msg).filter(|f| !f.in_version(h.version())) {
        let missing = Missing {
            feature,
            what: msg_name(&msg),
            version: h.version(),
        };
        return refuse(ErrorKind::Incompatible, missing.to_string());
    }
    match msg {
        Msg::Ping => Ok(Some(Msg::Pong)),
        Msg::Login { .. } => handshake::handle(h, msg).await,
        m @ (Msg::ContainerList
        | Msg::ImageList { .. }
        | Msg::PartnerList
        | Msg::CopyList
        | Msg::TrailGet { .. }
        | Msg::EventsGet { .. }
        | Msg::ListMore { .. }) => listings::handle(h, m),
        m @ (Msg::ContainerCreate { .. }
        | Msg::ContainerRemove { .. }
        | Msg::ImageRemove { .. }
        | Msg::ImagePropsSet { .. }
        | Msg::UserAdd { .. }
        | Msg::UserPasswd { .. }
        | Msg::UserSet { .. }
        | Msg::StatsGet) => catalog::handle(h, m),
        m @ (Msg::ImageCreate { .. }
        | Msg::ImageResume { .. }
        | Msg::ImageAppend { .. }
        | Msg::ChunkData { .. }
        | Msg::ImageWriteRaw { .. }
        | Msg::ImageClose { .. }
        | Msg::ImageAbort { .. }) => {
            // Data waits for the user's shaping group before it is stored;
            // the wait is the task's, not a thread's.
            if matches!(m, Msg::ChunkData { .. } | Msg::ImageWriteRaw { .. }) {
                h.shape(payload.len()).await?;
            }
            write::handle(h, m, &payload)
        }
        m @ (Msg::ContainerPromote { .. }
        | Msg::ContainerReplicate { .. }
        | Msg::PartnerAdd { .. }
        | Msg::PartnerRemove { .. }
        | Msg::PartnerSet { .. }
        | Msg::ShapingSet { .. }
        | Msg::ShapingList
        | Msg::ShapingRemove { .. }
        | Msg::CopyStart { .. }
        | Msg::CopyStatusGet { .. }
        | Msg::CopyCancel { .. }
        | Msg::CopyAbort { .. }) => replication::handle(h, m).await,
        m @ (Msg::ReplicaCreate { .. }
        | Msg::ReplicaAbort { .. }
        | Msg::ImportStatesGet { .. }
        | Msg::EventsAck { .. }) => replica::handle(h, m),
        m @ (Msg::ImageOpen { .. }
        | Msg::RecipeGet { .. }
        | Msg::ChunkGet { .. }
        | Msg::ImageRelease { .. }) => read::handle(h, req, m).await,
        other => refuse(
            ErrorKind::Protocol,
            format!("unexpected message {}", msg_name(&other)),
        ),
    }
}

/// The name of a message's variant, for errors.
pub(super) fn msg_name(m: &Msg) -> String {
    let s = format!("{m:?}");
    s.split([' ', '{', '(']).next().unwrap_or("?").to_string()
}
