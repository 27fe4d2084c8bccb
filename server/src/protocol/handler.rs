//! One session's handler: its user, its protocol version and the images it
//! has open, behind methods; it runs the session's frames in order and
//! hands each request to `requests/`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tern_core::session::Session;
use tern_core::wire::{ErrorKind, Feature, Frame, Handle, Msg};

use super::intake::ChunkIntake;
use super::logins::{LoginGuard, FAILURES_PER_SESSION};
use super::metrics::Metrics;
use super::requests::{self, Refusal};
use super::sessions::Sessions;
use crate::service::access::User;
use crate::service::audit::{Actor, AuditLog, Outcome};
use crate::service::replication::Replicator;
use crate::service::shaping::ShapedJob;
use crate::store::{Liveness, ReadableImage, SessionProbe, Store, WriterId};

/// An error that ends the session.
pub struct Fatal(pub String);

/// Where a session is in its handshake.
pub enum Phase {
    /// The first frame must be Hello.
    AwaitHello,
    /// Only Login (and Ping) until a user has logged in.
    AwaitLogin,
    /// Logged in as this user.
    Ready(User),
}

/// The state of one session: its user and the images it has open.
pub struct SessionHandler {
    store: Arc<Store>,
    session: Arc<Session>,
    token: Vec<u8>,
    /// Where the session's first connection came from.
    peer: SocketAddr,
    /// Failed logins in this session; at [`FAILURES_PER_SESSION`] it ends.
    failed_logins: u32,
    phase: Phase,
    writers: HashMap<Handle, WriterId>,
    /// Where the chunks of the images it writes are checked and stored.
    intake: ChunkIntake,
    readers: HashMap<Handle, ReadableImage>,
    next_handle: Handle,
    /// Every session of the server, for the statistics.
    sessions: Arc<Sessions>,
    /// The protocol version Hello and Welcome agreed on.
    version: u16,
    /// The shaping group the user's backups and restores draw from.
    shaped: Option<Arc<ShapedJob>>,
}

impl SessionHandler {
    /// The handler of a session that has just been started with `token`.
    pub(super) fn new(
        sessions: Arc<Sessions>,
        session: Arc<Session>,
        token: Vec<u8>,
        peer: SocketAddr,
    ) -> Self {
        Self {
            store: sessions.store.clone(),
            session,
            token,
            peer,
            failed_logins: 0,
            phase: Phase::AwaitHello,
            writers: HashMap::new(),
            intake: ChunkIntake::new(sessions.store.clone()),
            readers: HashMap::new(),
            next_handle: 1,
            sessions,
            version: 0,
            shaped: None,
        }
    }

    pub(super) fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub(super) fn token(&self) -> &[u8] {
        &self.token
    }

    pub(super) fn logged_in(&self) -> bool {
        matches!(self.phase, Phase::Ready(_))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn replicator(&self) -> &Arc<Replicator> {
        &self.sessions.replicator
    }

    pub fn tier(&self) -> &Arc<crate::service::tier::Tierer> {
        &self.sessions.tier
    }

    /// Every session of this server.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The protocol version Hello and Welcome agreed on (0 before).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Where the session's first connection came from.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.sessions.metrics
    }

    /// The server's audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.sessions.audit
    }

    /// Records an act of this session's user (or of a login attempt) in the
    /// audit log.
    pub fn audit(&self, act: &str, outcome: Outcome<'_>, details: serde_json::Value) {
        let user = match &self.phase {
            Phase::Ready(u) => Some(u.name.as_str()),
            _ => None,
        };
        let actor = Actor::Session {
            user,
            address: self.peer,
        };
        self.sessions.audit.record(actor, act, outcome, details);
    }

    pub fn logins(&self) -> &Arc<LoginGuard> {
        &self.sessions.logins
    }

    /// How long the session outlives its connections.
    pub fn grace(&self) -> Duration {
        self.sessions.grace
    }

    /// The handshake agreed on `version`: Login comes next.
    pub fn hello_done(&mut self, version: u16) {
        self.version = version;
        self.phase = Phase::AwaitLogin;
    }

    /// Counts a failed login; returns how many this session has had.
    pub fn login_failed(&mut self) -> u32 {
        self.failed_logins += 1;
        self.failed_logins
    }

    /// Sends a frame on the session.
    pub async fn send(&self, req: u64, msg: Msg, payload: Vec<u8>) -> Result<(), Fatal> {
        self.session
            .send(req, msg, payload)
            .await
            .map_err(|e| Fatal(e.to_string()))
    }

    /// Handles one frame and answers it; a protocol error ends the session.
    pub(super) async fn handle(&mut self, frame: Frame) -> Result<(), Fatal> {
        let req = frame.env.req;
        if matches!(frame.env.msg, Msg::Goodbye) {
            // Its images and its registration go before the answer: once the
            // client has it, the stream slots are free and the session gone.
            tokio::task::block_in_place(|| self.detach_all());
            self.sessions.unregister(&self.token);
            self.send(req, Msg::Ok, Vec::new()).await?;
            return Err(Fatal("the client said goodbye".into()));
        }
        let outcome = requests::dispatch(self, req, frame.env.msg, frame.payload).await;
        match outcome {
            Ok(Some(reply)) => self.send(req, reply, Vec::new()).await,
            Ok(None) => Ok(()),
            // After these the peer cannot go on: the session ends.
            Err(Refusal(kind @ (ErrorKind::Protocol | ErrorKind::Incompatible), why)) => {
                let error = Msg::Error {
                    kind,
                    message: why.clone(),
                };
                let _ = self.send(req, error, Vec::new()).await;
                Err(Fatal(why))
            }
            Err(Refusal(kind, message)) => {
                // An older client could not decode the newer kind.
                let kind = match kind {
                    ErrorKind::Locked if !Feature::Lock.in_version(self.version) => {
                        ErrorKind::Denied
                    }
                    kind => kind,
                };
                self.send(req, Msg::Error { kind, message }, Vec::new())
                    .await?;
                if self.failed_logins >= FAILURES_PER_SESSION {
                    return Err(Fatal(format!("{} failed logins", self.failed_logins)));
                }
                Ok(())
            }
        }
    }

    /// The handshake is over: the peer may send full-size frames.
    pub fn logged_in_as(&mut self, user: User) {
        self.session.trust();
        self.session.spill_as(user.name.as_str());
        self.shaped = self.sessions.replicator.shaper.job(user.shaping.as_deref());
        self.phase = Phase::Ready(user);
    }

    /// The logged-in user.
    pub fn user(&self) -> Result<&User, Refusal> {
        match &self.phase {
            Phase::Ready(user) => Ok(user),
            _ => Err(Refusal(ErrorKind::Protocol, "log in first".into())),
        }
    }

    fn new_handle(&mut self) -> Handle {
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        h
    }

    /// Gives image writer `w` a handle of this session.
    pub fn add_writer(&mut self, w: WriterId) -> Handle {
        let handle = self.new_handle();
        self.writers.insert(handle, w);
        handle
    }

    /// The image being written under `handle`.
    pub fn writer(&self, handle: Handle) -> Result<WriterId, Refusal> {
        self.writers.get(&handle).copied().ok_or_else(|| {
            Refusal(
                ErrorKind::Invalid,
                format!("no image open for writing under handle {handle}"),
            )
        })
    }

    /// Takes the image being written under `handle` out of the session,
    /// once none of its chunks is in flight; a failure of one of them not
    /// yet reported is dropped (see [`Self::settle_chunks`]).
    pub fn take_writer(&mut self, handle: Handle) -> Result<WriterId, Refusal> {
        let w = self.writer(handle)?;
        tokio::task::block_in_place(|| self.intake.settle(handle));
        self.writers.remove(&handle);
        Ok(w)
    }

    /// Hands a received chunk of the image under `handle` to the session's
    /// intake (checked against its id and stored off this task). A chunk
    /// of the image that failed before is reported instead, and the image
    /// leaves the session (resumable from its last checkpoint).
    pub fn submit_chunk(
        &mut self,
        handle: Handle,
        id: tern_core::ChunkId,
        codec: tern_core::Codec,
        raw_len: u32,
        bytes: Vec<u8>,
    ) -> Result<(), Refusal> {
        self.chunks_ok(handle)?;
        let w = self.writer(handle)?;
        self.intake.take(handle, w, id, codec, raw_len, bytes);
        if self.intake.batch_full() {
            tokio::task::block_in_place(|| self.intake.flush());
        }
        Ok(())
    }

    /// The session has no frame waiting: the chunks its intake took go to
    /// the intake's threads now, not when more arrive.
    pub(super) fn idle(&mut self) {
        if self.intake.holds_chunks() {
            tokio::task::block_in_place(|| self.intake.flush());
        }
    }

    /// Reports the failure of a chunk of the image under `handle` not yet
    /// reported, without waiting for those in flight; the image then
    /// leaves the session (resumable from its last checkpoint).
    pub fn chunks_ok(&mut self, handle: Handle) -> Result<(), Refusal> {
        match self.intake.failure(handle) {
            Some(e) => Err(self.detach_failed(handle, e)),
            None => Ok(()),
        }
    }

    /// Waits until every chunk of the image under `handle` is stored, and
    /// reports a failure of one of them as [`Self::chunks_ok`] does.
    pub fn settle_chunks(&mut self, handle: Handle) -> Result<(), Refusal> {
        match tokio::task::block_in_place(|| self.intake.settle(handle)) {
            Some(e) => Err(self.detach_failed(handle, e)),
            None => Ok(()),
        }
    }

    fn detach_failed(&mut self, handle: Handle, e: Refusal) -> Refusal {
        if let Ok(w) = self.take_writer(handle) {
            tokio::task::block_in_place(|| self.store.image_detach(w));
        }
        e
    }

    /// Gives an image open for reading a handle of this session.
    pub fn add_reader(&mut self, img: ReadableImage) -> Handle {
        let handle = self.new_handle();
        self.readers.insert(handle, img);
        handle
    }

    /// The image open for reading under `handle`.
    pub fn reader(&self, handle: Handle) -> Result<ReadableImage, Refusal> {
        self.readers.get(&handle).cloned().ok_or_else(|| {
            Refusal(
                ErrorKind::Invalid,
                format!("no image open for reading under handle {handle}"),
            )
        })
    }

    pub fn release_reader(&mut self, handle: Handle) {
        self.readers.remove(&handle);
    }

    /// Paces `bytes` of the user's data by their shaping group: waiting
    /// here holds back the session's frames, so the client's sends slow
    /// down. The wait holds no thread and ends with the session.
    pub async fn shape(&self, bytes: usize) -> Result<(), Refusal> {
        let Some(job) = &self.shaped else {
            return Ok(());
        };
        let shaper = &self.sessions.replicator.shaper;
        let session = &self.session;
        let ended = || session.closed().is_some();
        if shaper.pace(job, bytes as u64, &ended).await {
            Ok(())
        } else {
            Err(Refusal(
                ErrorKind::Protocol,
                "the session ended while its data waited for its shaping group".into(),
            ))
        }
    }

    /// What the store may ask about this session (see [`SessionLiveness`]).
    pub fn session_probe(&self) -> SessionProbe {
        Arc::new(SessionLiveness(Arc::downgrade(&self.session)))
    }

    /// Leaves every image this session was writing incomplete (none of them
    /// is committed): checkpointed, resumable until it expires.
    pub(super) fn detach_all(&mut self) {
        for handle in self.writers.keys() {
            self.intake.settle(*handle);
        }
        for (_, w) in self.writers.drain() {
            self.store.image_detach(w);
        }
    }
}

/// How long a resume waits to hear from the client of a session that holds
/// the image: each of its connections sends at least a heartbeat a second,
/// so three seconds of silence on all of them means the client is gone
/// (a power cut, a crashed VM) even if its connections look open.
pub const LIVENESS_PROBE: Duration = Duration::from_secs(3);

/// The liveness of a session, for the store.
struct SessionLiveness(Weak<Session>);

impl Liveness for SessionLiveness {
    fn connected(&self) -> bool {
        self.0.upgrade().is_some_and(|s| s.live_connections() > 0)
    }

    /// Waits up to [`LIVENESS_PROBE`] for the client to show it is there
    /// (see [`Session::answered_since`]). A session whose frames still wait
    /// for its handler at the end (a parked or busy handler reads nothing
    /// meanwhile) is taken to be alive.
    fn answers(&self) -> bool {
        let Some(mark) = self.0.upgrade().map(|s| s.mark()) else {
            return false;
        };
        let asked = std::time::Instant::now();
        loop {
            let Some(s) = self.0.upgrade() else {
                return false;
            };
            if s.live_connections() == 0 {
                return false;
            }
            if s.answered_since(&mark) {
                return true;
            }
            if asked.elapsed() >= LIVENESS_PROBE {
                return s.is_delivering();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
