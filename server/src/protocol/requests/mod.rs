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
//! - `audited`: which requests the audit log records, with which fields.

mod audited;
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
/// A security-relevant request is recorded in the audit log, done or
/// refused, before it is answered.
pub async fn dispatch(h: &mut SessionHandler, req: u64, msg: Msg, payload: Vec<u8>) -> Answer {
    let act = audited::act_of(&msg);
    // Data frames are counted in bytes; every other request is timed.
    let data = matches!(msg, Msg::ChunkData { .. } | Msg::ImageWriteRaw { .. });
    let kind = (!data).then(|| variant_name(&msg));
    let login = matches!(msg, Msg::Login { .. });
    if data {
        h.metrics().received(payload.len());
    }
    let started = std::time::Instant::now();
    let answer = answer(h, req, msg, payload).await;
    if let Some(kind) = kind {
        let error = answer.as_ref().err().map(|r| error_kind(r.0));
        h.metrics().request(&kind, started.elapsed(), error);
    }
    if login {
        h.metrics().login(answer.is_ok());
    }
    if let Some((act, details)) = act {
        let outcome = answer.as_ref().map(|_| ()).map_err(|r| r.1.as_str());
        tokio::task::block_in_place(|| h.audit(act, outcome, details));
    }
    answer
}

/// The name of an error kind, for the metrics.
fn error_kind(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Auth => "auth",
        ErrorKind::NotFound => "not_found",
        ErrorKind::AlreadyExists => "already_exists",
        ErrorKind::Invalid => "invalid",
        ErrorKind::Denied => "denied",
        ErrorKind::Busy => "busy",
        ErrorKind::NoSpace => "no_space",
        ErrorKind::Incompatible => "incompatible",
        ErrorKind::Protocol => "protocol",
        ErrorKind::Internal => "internal",
        ErrorKind::Corrupt => "corrupt",
        ErrorKind::SessionExpired => "session_expired",
        ErrorKind::Locked => "locked",
        _ => "other",
    }
}

/// A message's variant name, without formatting its fields: the Debug
/// output is cut at the name (an `ImageAppend` holds thousands of entries).
fn variant_name(m: &Msg) -> String {
    struct Name(String);
    impl std::fmt::Write for Name {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            match s.find([' ', '{', '(']) {
                Some(end) => {
                    self.0.push_str(&s[..end]);
                    Err(std::fmt::Error)
                }
                None => {
                    self.0.push_str(s);
                    Ok(())
                }
            }
        }
    }
    let mut name = Name(String::new());
    let _ = std::fmt::write(&mut name, format_args!("{m:?}"));
    name.0
}

async fn answer(h: &mut SessionHandler, req: u64, msg: Msg, payload: Vec<u8>) -> Answer {
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
        | Msg::AuditGet { .. }
        | Msg::ListMore { .. }) => listings::handle(h, m),
        m @ (Msg::ContainerCreate { .. }
        | Msg::ContainerRemove { .. }
        | Msg::ImageRemove { .. }
        | Msg::ContainerLock { .. }
        | Msg::ImagePropsSet { .. }
        | Msg::UserAdd { .. }
        | Msg::UserPasswd { .. }
        | Msg::UserSet { .. }
        | Msg::StatsGet
        | Msg::GroupAdd { .. }
        | Msg::GroupList
        | Msg::GroupRemove { .. }) => catalog::handle(h, m),
        m @ (Msg::ImageCreate { .. }
        | Msg::ImageResume { .. }
        | Msg::ImageAppend { .. }
        | Msg::ChunkData { .. }
        | Msg::ImageWriteRaw { .. }
        | Msg::ImageClose { .. }
        | Msg::ImageAbort { .. }
        | Msg::ImageSuspend { .. }
        | Msg::ImageAppendExtent { .. }) => {
            // Data waits for the user's shaping group before it is stored;
            // the wait is the task's, not a thread's.
            if matches!(m, Msg::ChunkData { .. } | Msg::ImageWriteRaw { .. }) {
                h.shape(payload.len()).await?;
            }
            write::handle(h, m, payload)
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
        m @ (Msg::ContainerTier { .. } | Msg::TierStatusGet | Msg::ImageRecall { .. }) => {
            replication::handle_tier(h, m)
        }
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
