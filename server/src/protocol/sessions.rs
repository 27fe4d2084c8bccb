//! Sessions on the server: the registry of live sessions ([`Sessions`]),
//! the start or join of a session on a new connection, and the task that
//! feeds a session's frames in order to its [`SessionHandler`].
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
use tern_core::wire::{ErrorKind, Frame, FrameLimits, Msg};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::handler::{Fatal, SessionHandler};
use super::logins::LoginGuard;
use super::metrics::Metrics;
use crate::service::audit::AuditLog;
use crate::service::replication::Replicator;
use crate::service::tier::Tierer;
use crate::store::Store;

/// How long a new connection may take, from accept to a completed login
/// (TLS, Hello and Login together), whatever it sends meanwhile.
pub use tern_core::defaults::HANDSHAKE_TIMEOUT;
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
    pub(super) logins: Arc<LoginGuard>,
    /// Copies to partners (this server as a replication source).
    pub replicator: Arc<Replicator>,
    /// The cloud tier's policies and mover.
    pub tier: Arc<Tierer>,
    /// The newest protocol version this server offers (lower only to test
    /// how partners handle an old server).
    pub protocol_max: u16,
    /// Where security-relevant acts are recorded.
    pub audit: Arc<AuditLog>,
    /// What Prometheus scrapes.
    pub metrics: Arc<Metrics>,
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
        services: (Arc<Replicator>, Arc<Tierer>),
        protocol_max: u16,
        audit: Arc<AuditLog>,
    ) -> Arc<Self> {
        let (replicator, tier) = services;
        Arc::new(Self {
            store,
            grace,
            cache,
            live: Mutex::new(HashMap::new()),
            logins: Arc::new(LoginGuard::new()),
            replicator,
            tier,
            protocol_max,
            audit,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// Sessions alive now (logged in or not).
    pub fn count(&self) -> usize {
        self.live().len()
    }

    /// The connections those sessions have now (MultiConnect: several each).
    pub fn connection_count(&self) -> usize {
        self.live()
            .values()
            .map(|r| r.session.live_connections())
            .sum()
    }

    /// Forgets a session that ended.
    pub(super) fn unregister(&self, token: &[u8]) {
        self.live().remove(token);
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
    let handler = SessionHandler::new(sessions.clone(), s.clone(), token, peer);
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
    let session = handler.session().clone();
    let watchdog = tokio::spawn(grace_watch(session.clone(), sessions.grace));
    let end = loop {
        let next = if handler.logged_in() {
            match rx.try_recv() {
                Ok(frame) => Some(frame),
                Err(_) => {
                    handler.idle();
                    rx.recv().await
                }
            }
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
    sessions.unregister(handler.token());
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
