//! Sessions on the server: the registry of live sessions ([`Sessions`]),
//! the start or join of a session on a new connection, and the per-session
//! request handler ([`SessionHandler`]) that runs a session's frames in order.
//!
//! Each connection has a reader loop and a writer task (in
//! `tern_core::session`); the handler receives the session's frames in
//! sequence order from a channel. Store calls are blocking and run under
//! `block_in_place`. The requests themselves are in `requests/`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tern_core::session::{self, CacheLimits, Session};
use tern_core::tls::Fingerprint;
use tern_core::wire::{ErrorKind, Frame, FrameLimits, Handle, Msg};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::protocol::logins::{LoginGuard, FAILURES_PER_SESSION};
use crate::protocol::requests::{self, Refusal};
use crate::service::access::User;
use crate::service::replication::Replicator;
use crate::store::{ReadableImage, Store, WriterId};

/// How long a new connection may take, from accept to a completed login
/// (TLS, Hello and Login together), whatever it sends meanwhile.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames delivered in order and waiting for the session's handler.
const INBOUND_QUEUE: usize = 32;

/// Session settings and the sessions alive on this server.
pub struct Sessions {
    pub store: Arc<Store>,
    /// How long a session waits for a connection before it is ended.
    pub grace: Duration,
    /// Where a session keeps the frames it sent until they are acknowledged.
    pub cache: CacheLimits,
    live: Mutex<HashMap<Vec<u8>, Registered>>,
    logins: Arc<LoginGuard>,
    /// Copies to partners (this server as a replication source).
    pub replicator: Arc<Replicator>,
    /// The newest protocol version this server offers (lower only to test
    /// how partners handle an old server).
    pub protocol_max: u16,
}

/// A live session and the client identity it was started with.
struct Registered {
    session: Arc<Session>,
    identity: Option<Fingerprint>,
}

impl Sessions {
    pub fn new(
        store: Arc<Store>,
        grace: Duration,
        cache: CacheLimits,
        replicator: Arc<Replicator>,
        protocol_max: u16,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            grace,
            cache,
            live: Mutex::new(HashMap::new()),
            logins: Arc::new(LoginGuard::new()),
            replicator,
            protocol_max,
        })
    }

    /// Sessions alive now (logged in or not).
    pub fn count(&self) -> usize {
        self.live().len()
    }

    fn live(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Registered>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session `token` names, if it was started by the same client identity.
    fn find(&self, token: &[u8], identity: Option<Fingerprint>) -> Option<Arc<Session>> {
        self.live()
            .get(token)
            .filter(|r| r.identity == identity)
            .map(|r| r.session.clone())
    }
}

/// Runs one connection to its end: it starts a session (Hello) or joins one
/// (Join). `identity` is the fingerprint of the client's TLS certificate; the
/// handshake must be over by `deadline`.
pub async fn serve_connection<S>(
    mut stream: S,
    peer: SocketAddr,
    identity: Option<Fingerprint>,
    deadline: Instant,
    sessions: Arc<Sessions>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let first = Frame::read_limited(&mut stream, FrameLimits::BEFORE_LOGIN);
    let first = match tokio::time::timeout_at(deadline, first).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) if e.is_disconnect() => return,
        Ok(Err(e)) => {
            tracing::warn!(%peer, "closing connection: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "closing connection: nothing said within the handshake timeout");
            return;
        }
    };
    match (first.env.seq, &first.env.msg) {
        (0, Msg::Join { session, received }) => {
            join(stream, peer, identity, session, *received, &sessions).await
        }
        (1, Msg::Hello { .. }) => start(stream, first, peer, identity, deadline, sessions).await,
        _ => tracing::warn!(%peer, "closing connection: the first frame must be Hello or Join"),
    }
}

/// Adds a connection to a live session.
async fn join<S>(
    mut stream: S,
    peer: SocketAddr,
    identity: Option<Fingerprint>,
    token: &[u8],
    received: u64,
    sessions: &Sessions,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // A token presented under another identity is treated as unknown,
    // telling a thief nothing.
    let Some(s) = sessions.find(token, identity) else {
        let msg = Msg::Error {
            kind: ErrorKind::SessionExpired,
            message:
                "the session is unknown, its grace period ended, or it belongs to another client"
                    .into(),
        };
        let _ = session::write_control(&mut stream, msg).await;
        return;
    };
    let joined = Msg::Joined {
        received: s.received(),
    };
    if session::write_control(&mut stream, joined).await.is_err() {
        return;
    }
    tracing::debug!(%peer, "connection joined a session");
    let why = s.run_connection(stream, None, Some(received)).await.why;
    tracing::debug!(%peer, "session connection ended: {why}");
}

/// Starts a session with its first connection, which sent `hello`.
async fn start<S>(
    stream: S,
    hello: Frame,
    peer: SocketAddr,
    identity: Option<Fingerprint>,
    deadline: Instant,
    sessions: Arc<Sessions>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut token = vec![0u8; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut token).is_err() {
        tracing::error!("the system random source failed");
        return;
    }
    // The handler takes frames one at a time; a short queue keeps what a
    // peer can make the server hold small (frames may be 4 MiB each).
    let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
    let s = Session::new(sessions.cache.clone(), tx);
    // Small frames and few early ones until the peer logs in.
    s.distrust();
    sessions.live().insert(
        token.clone(),
        Registered {
            session: s.clone(),
            identity,
        },
    );
    let handler = SessionHandler {
        store: sessions.store.clone(),
        session: s.clone(),
        token: token.clone(),
        grace: sessions.grace,
        peer,
        logins: sessions.logins.clone(),
        failed_logins: 0,
        phase: Phase::AwaitHello,
        writers: HashMap::new(),
        readers: HashMap::new(),
        next_handle: 1,
        sessions: sessions.clone(),
        version: 0,
        shaped: None,
    };
    tokio::spawn(run_session(handler, rx, deadline, sessions, peer));
    let why = s.run_connection(stream, Some(hello), None).await.why;
    tracing::debug!(%peer, "session connection ended: {why}");
}

/// The application side of a session: handles its frames in order, and ends
/// it when the client leaves, breaks the protocol, does not log in by
/// `deadline`, or stays away past the grace period.
async fn run_session(
    mut handler: SessionHandler,
    mut rx: mpsc::Receiver<Frame>,
    deadline: Instant,
    sessions: Arc<Sessions>,
    peer: SocketAddr,
) {
    let session = handler.session.clone();
    let watchdog = tokio::spawn(grace_watch(session.clone(), sessions.grace));
    let end = loop {
        let next = if handler.logged_in() {
            rx.recv().await
        } else {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(f) => f,
                Err(_) => break "no login within the handshake timeout".to_string(),
            }
        };
        let Some(frame) = next else {
            break session.closed().unwrap_or_else(|| "session closed".into());
        };
        if let Err(Fatal(why)) = handler.handle(frame).await {
            break why;
        }
    };
    tracing::info!(%peer, "session ended: {end}");
    // An error frame that ends the session must reach the client first.
    session.flushed(Duration::from_secs(2)).await;
    session.close(&end);
    watchdog.abort();
    tokio::task::block_in_place(|| handler.detach_all());
    sessions.live().remove(&handler.token);
}

/// Closes the session once it has had no connection for `grace`.
async fn grace_watch(session: Arc<Session>, grace: Duration) {
    loop {
        let changed = session.connections_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if session.closed().is_some() {
            return;
        }
        if session.live_connections() > 0 {
            changed.await;
            continue;
        }
        // No connection: wait for one, at most `grace`.
        let deadline = Instant::now() + grace;
        loop {
            let changed = session.connections_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if session.live_connections() > 0 || session.closed().is_some() {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                session.close(&format!(
                    "no connection for {} s (the grace period)",
                    grace.as_secs()
                ));
                return;
            }
        }
    }
}

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
    pub store: Arc<Store>,
    session: Arc<Session>,
    pub token: Vec<u8>,
    pub grace: Duration,
    /// Where the session's first connection came from.
    pub peer: SocketAddr,
    pub logins: Arc<LoginGuard>,
    /// Failed logins in this session; at [`FAILURES_PER_SESSION`] it ends.
    pub failed_logins: u32,
    pub phase: Phase,
    pub writers: HashMap<Handle, WriterId>,
    pub readers: HashMap<Handle, ReadableImage>,
    next_handle: Handle,
    /// Every session of the server, for the statistics.
    pub sessions: Arc<Sessions>,
    /// The protocol version Hello and Welcome agreed on.
    pub version: u16,
    /// The shaping group the user's backups and restores draw from.
    pub shaped: Option<Arc<crate::service::shaping::ShapedJob>>,
}

impl SessionHandler {
    fn logged_in(&self) -> bool {
        matches!(self.phase, Phase::Ready(_))
    }

    /// Sends a frame on the session.
    pub async fn send(&self, req: u64, msg: Msg, payload: Vec<u8>) -> Result<(), Fatal> {
        self.session
            .send(req, msg, payload)
            .await
            .map_err(|e| Fatal(e.to_string()))
    }

    /// Handles one frame and answers it; a protocol error ends the session.
    async fn handle(&mut self, frame: Frame) -> Result<(), Fatal> {
        let req = frame.env.req;
        if matches!(frame.env.msg, Msg::Goodbye) {
            // Its images and its registration go before the answer: once the
            // client has it, the stream slots are free and the session gone.
            tokio::task::block_in_place(|| self.detach_all());
            self.sessions.live().remove(&self.token);
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

    pub fn new_handle(&mut self) -> Handle {
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        h
    }

    /// Tells whether this session has a connection now.
    pub fn session_probe(&self) -> crate::store::SessionProbe {
        let session = Arc::downgrade(&self.session);
        Arc::new(move || session.upgrade().is_some_and(|s| s.live_connections() > 0))
    }

    /// Leaves every image this session was writing incomplete (none of them
    /// is committed): checkpointed, resumable until it expires.
    fn detach_all(&mut self) {
        for (_, w) in self.writers.drain() {
            self.store.image_detach(w);
        }
    }
}
