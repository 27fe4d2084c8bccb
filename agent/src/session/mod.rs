//! A session with a server: one or more TLS (or loopback plaintext)
//! connections that carry it, reconnected after outages (Secure Connect), a
//! router that hands answers to their requests, and a pump that feeds the
//! session from ordinary threads.
//!
//! Callers are ordinary threads; the session's tasks run on a small tokio
//! runtime it owns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_core::session::{self, Session};
use tern_core::tls::Fingerprint;
use tern_core::wire::{self, Feature, Frame, Msg};
use tokio::sync::mpsc;

mod dial;
mod router;

pub use router::Due;
mod slot;

use crate::identity::Identity;
use crate::stop::{Deadline, Stop};
use crate::ClientError;
use dial::Dialer;
use router::Router;
use slot::Slot;

/// Frames queued by callers before they wait.
const SEND_QUEUE: usize = 64;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Outgoing = (u64, Msg, Vec<u8>);
type Routes = Arc<Mutex<Router>>;
type Closed = Arc<Mutex<Option<Ended>>>;

/// Why a session ended.
#[derive(Debug, Clone)]
enum Ended {
    /// Its connections were lost, or it was closed.
    Lost(String),
    /// The server broke the protocol (an answer to nothing, more than a
    /// request allows).
    Broken(String),
}

/// How a session connects and survives.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub plain: bool,
    /// The certificate presented to the server (TLS only).
    pub identity: Option<Identity>,
    /// Accept TLS 1.2 as well as 1.3.
    pub allow_tls12: bool,
    pub pin: Option<Fingerprint>,
    /// Connections carrying the session (MultiConnect).
    pub connections: usize,
    /// Reconnect and resume after a connection is lost (Secure Connect).
    pub resume: bool,
    /// How long to keep trying when no connection is left; the server's own
    /// grace period caps it.
    pub grace: Duration,
    /// Where unacknowledged frames are kept for resending.
    pub cache: session::CacheLimits,
    /// The longest the server may take to say Welcome.
    pub handshake: Duration,
}

/// A session with a server over one or more connections (MultiConnect),
/// which outlives any one of them (Secure Connect).
pub struct ClientSession {
    tx: mpsc::Sender<Outgoing>,
    routes: Routes,
    next_req: AtomicU64,
    /// Why the session ended, once it has.
    closed: Closed,
    server: Arc<str>,
    /// Dials the server's addresses; knows the one in use.
    dialer: Arc<Dialer>,
    session: Arc<Session>,
    /// The protocol version Welcome named.
    version: u16,
    /// Last, so the queue closes before the tasks are stopped.
    _rt: tokio::runtime::Runtime,
}

/// Answers to one request, as they arrive.
pub struct Answers {
    routes: Routes,
    closed: Closed,
    server: Arc<str>,
    req: u64,
    rx: mpsc::Receiver<Frame>,
    /// Ends the wait early (cancel, time limit).
    stop: Arc<Stop>,
    rt: tokio::runtime::Handle,
}

impl Answers {
    /// The next answer frame; an `Error` message becomes `Err`; a fired stop
    /// ends the wait.
    pub fn recv(&mut self) -> Result<Frame, ClientError> {
        self.stop.check()?;
        let next = match self.rx.try_recv() {
            Ok(f) => Some(f),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                let (rx, stop) = (&mut self.rx, &self.stop);
                self.rt
                    .block_on(async {
                        tokio::select! {
                            f = rx.recv() => Ok(f),
                            _ = stop.fired() => Err(()),
                        }
                    })
                    .map_err(|()| stop.check().err().unwrap_or(ClientError::Cancelled))?
            }
        };
        match next {
            Some(Frame { env, payload }) => match env.msg {
                Msg::Error { kind, message } => Err(ClientError::Server { kind, message }),
                _ => Ok(Frame { env, payload }),
            },
            None => Err(lost(&self.server, &self.closed)),
        }
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        lock(&self.routes).close(self.req);
    }
}

/// The server's refusals of one image's answerless frames (chunk data, raw
/// data): they carry this route's request number, and the server echoes it
/// in its `Error`. Kept per image, so an image's commit reports its own
/// error with its own kind.
pub struct DataErrors {
    routes: Routes,
    req: u64,
    rx: mpsc::Receiver<Frame>,
}

impl DataErrors {
    /// The first refusal the server sent for this image, if any.
    pub fn take(&mut self) -> Option<ClientError> {
        let frame = self.rx.try_recv().ok()?;
        Some(match frame.env.msg {
            Msg::Error { kind, message } => ClientError::Server { kind, message },
            other => ClientError::Protocol(format!(
                "the server answered a data frame with {}",
                msg_name(&other)
            )),
        })
    }
}

impl Drop for DataErrors {
    fn drop(&mut self) {
        lock(&self.routes).close(self.req);
    }
}

fn lost(server: &str, closed: &Mutex<Option<Ended>>) -> ClientError {
    match lock(closed).clone() {
        Some(Ended::Broken(why)) => ClientError::Protocol(why),
        Some(Ended::Lost(reason)) => ClientError::Connect {
            server: server.to_string(),
            reason,
        },
        None => ClientError::Connect {
            server: server.to_string(),
            reason: "connection closed".into(),
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClientSession {
    /// Connects, handshakes TLS (unless `plain`), says hello and brings up the
    /// other connections. Returns the session and the fingerprint the server presented.
    ///
    /// With Secure Connect on, a first connection cut before the server said
    /// Welcome (end of stream or reset during the TLS handshake or the Hello)
    /// is tried twice more, a quarter second apart: a WAN may drop it, and a
    /// server that will not talk to us still fails the call within a second.
    ///
    /// `servers` are the server's addresses: the first that answers is used.
    pub fn open(
        servers: Vec<String>,
        opts: &SessionOptions,
    ) -> Result<(Self, Option<Fingerprint>), ClientError> {
        let mut attempt = 0;
        loop {
            match Self::open_once(servers.clone(), opts) {
                Ok(open) => return Ok(open),
                Err((e, cut)) if cut && opts.resume && attempt < 2 => {
                    tracing::debug!("first connection cut before the session was set up: {e}");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// One attempt at [`ClientSession::open`]; the error says whether the connection
    /// was cut before Welcome (as opposed to refused or answered with an error).
    fn open_once(
        servers: Vec<String>,
        opts: &SessionOptions,
    ) -> Result<(Self, Option<Fingerprint>), (ClientError, bool)> {
        let server = servers.first().cloned().unwrap_or_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("tern-conn")
            .build()
            .map_err(|e| (e.into(), false))?;
        let dialer = Arc::new(Dialer::new(servers, opts).map_err(|e| (e, false))?);
        // Each address once, in order, until one answers.
        let mut first = rt.block_on(dialer.dial_once());
        for _ in 1..dialer.paths() {
            match &first {
                Err((ClientError::Untrusted(_), _)) | Ok(_) => break,
                Err(_) => first = rt.block_on(dialer.dial_once()),
            }
        }
        let first = first?;
        let seen = dialer.seen();

        let routes: Routes = Arc::new(Mutex::new(Router::default()));
        let closed = Arc::new(Mutex::new(None));
        let (in_tx, in_rx) = mpsc::channel(256);
        let session = Session::new(opts.cache.clone(), in_tx);
        rt.spawn(route(
            in_rx,
            routes.clone(),
            closed.clone(),
            session.clone(),
        ));
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        rt.spawn(pump(rx, session.clone()));

        let token: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
        let outage = Arc::new(Mutex::new(None::<Instant>));
        let slot = Slot {
            dialer: dialer.clone(),
            session: session.clone(),
            token: token.clone(),
            outage: outage.clone(),
            resume: opts.resume,
            grace: Arc::new(Mutex::new(opts.grace)),
        };
        rt.spawn(slot.clone().run(Some(first)));

        let mut conn = ClientSession {
            tx,
            routes,
            next_req: AtomicU64::new(1),
            closed,
            server: server.as_str().into(),
            dialer: dialer.clone(),
            session,
            version: 0,
            _rt: rt,
        };
        let (t, grace_secs) = conn.hello(opts.handshake)?;
        if !t.is_empty() {
            *lock(&token) = Some(t);
            *lock(&slot.grace) = opts.grace.min(Duration::from_secs(grace_secs.max(1)));
            for _ in 1..opts.connections.max(1) {
                conn._rt.spawn(slot.clone().run(None));
            }
        }
        Ok((conn, seen))
    }

    /// Hello and Welcome: the protocol version; the session's resume token
    /// and grace period. The error says whether the connection was cut.
    /// A server that says nothing for `limit` fails it: the client keeps
    /// its own deadline, whatever the server does.
    fn hello(&mut self, limit: Duration) -> Result<(Vec<u8>, u64), (ClientError, bool)> {
        let hello = Msg::Hello {
            min_version: wire::PROTOCOL_MIN,
            max_version: wire::PROTOCOL_MAX,
            features: wire::FEATURES.iter().map(|s| s.to_string()).collect(),
            agent: format!("tern-agent {}", env!("CARGO_PKG_VERSION")),
        };
        let stop = Arc::new(Stop::default());
        let _limit = Deadline::arm(&self.runtime(), &stop, Some(limit));
        let welcome = match self.call(hello, Vec::new(), &stop) {
            Ok(w) => w,
            Err(ClientError::TimedOut(limit)) => {
                let reason = format!(
                    "the server did not say Welcome within {} s of the connection",
                    limit.as_secs_f64()
                );
                let server = self.server.to_string();
                return Err((ClientError::Connect { server, reason }, false));
            }
            // Lost before Welcome: the slot closed the session.
            Err(e @ ClientError::Connect { .. }) => return Err((e, true)),
            Err(e) => return Err((e, false)),
        };
        let Msg::Welcome {
            session,
            grace_secs,
            version,
            ..
        } = welcome.env.msg
        else {
            return Err((
                ClientError::Protocol(format!("expected Welcome, got {:?}", welcome.env.msg)),
                false,
            ));
        };
        self.version = version;
        Ok((session, grace_secs))
    }

    /// The server address connections go to now (one of several paths).
    pub fn server_in_use(&self) -> String {
        self.dialer.server().to_string()
    }

    fn lost(&self) -> ClientError {
        lost(&self.server, &self.closed)
    }

    /// Sends a request and returns a stream of its answers; `stop` ends
    /// every wait of it early.
    pub fn request(
        &self,
        msg: Msg,
        payload: Vec<u8>,
        stop: &Arc<Stop>,
    ) -> Result<Answers, ClientError> {
        let due = Due::of(&msg);
        self.request_due(msg, payload, stop, due)
    }

    /// [`Self::request`] for a caller that knows better than the message
    /// what its answers may be (a reader knows its chunks' lengths).
    pub fn request_due(
        &self,
        msg: Msg,
        payload: Vec<u8>,
        stop: &Arc<Stop>,
        due: Due,
    ) -> Result<Answers, ClientError> {
        stop.check()?;
        // The one check of what the server's protocol version allows: a
        // request it lacks fails here, before anything is sent.
        if let Some(feature) = Feature::needed_by(&msg) {
            feature.check(self.version, &msg_name(&msg))?;
        }
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let srx = lock(&self.routes).open(req, due);
        let answers = Answers {
            routes: self.routes.clone(),
            closed: self.closed.clone(),
            server: self.server.clone(),
            req,
            rx: srx,
            stop: stop.clone(),
            rt: self.runtime(),
        };
        // The router clears the routes after it records why the session ended;
        // a route added after that would wait forever.
        if lock(&self.closed).is_some() {
            return Err(self.lost());
        }
        let sender = Sender {
            tx: self.tx.clone(),
            req,
            closed: self.closed.clone(),
            server: self.server.clone(),
            stop: stop.clone(),
            rt: self.runtime(),
        };
        sender.send(msg, payload)?;
        Ok(answers)
    }

    /// Sends a request and waits for its single answer.
    pub fn call(&self, msg: Msg, payload: Vec<u8>, stop: &Arc<Stop>) -> Result<Frame, ClientError> {
        self.request(msg, payload, stop)?.recv()
    }

    /// Queues a request nobody waits on, without waiting: a task sends it
    /// once the queue has room (an abort during an outage must not block).
    /// Its answer is counted and dropped.
    pub fn send_later(&self, msg: Msg) {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        lock(&self.routes).unheard(req, Due::of(&msg));
        let tx = self.tx.clone();
        if let Err(mpsc::error::TrySendError::Full(frame)) = tx.try_send((req, msg, Vec::new())) {
            self._rt.spawn(async move {
                let _ = tx.send(frame).await;
            });
        }
    }

    /// A handle for sending one image's answerless frames from other
    /// threads: they carry `errors`' request number, so the server's refusal
    /// of one reaches that image alone. `stop` ends its waits for room in
    /// the queue.
    pub fn sender(&self, errors: &DataErrors, stop: &Arc<Stop>) -> Sender {
        Sender {
            tx: self.tx.clone(),
            req: errors.req,
            closed: self.closed.clone(),
            server: self.server.clone(),
            stop: stop.clone(),
            rt: self.runtime(),
        }
    }

    /// A route for the server's refusals of one image's data frames.
    pub fn data_errors(&self) -> DataErrors {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let rx = lock(&self.routes).open(req, Due::Refusals);
        DataErrors {
            routes: self.routes.clone(),
            req,
            rx,
        }
    }

    /// The runtime the connections run on.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self._rt.handle().clone()
    }

    /// Bytes written to the network so far (frame headers and payloads).
    pub fn bytes_sent(&self) -> u64 {
        self.session.bytes_sent()
    }

    /// Bytes read from the network so far.
    pub fn bytes_received(&self) -> u64 {
        self.session.bytes_received()
    }

    /// The protocol version of the session.
    pub fn version(&self) -> u16 {
        self.version
    }
}

/// How long closing a client waits for the server to take its goodbye.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);

impl ClientSession {
    /// Tells the server the session is over, so that it frees the session's
    /// caches and stream slots at once rather than after the grace period.
    /// Waits at most [`GOODBYE_WAIT`], and not at all without a connection
    /// (an outage is no time to wait: the grace period ends the session).
    fn goodbye(&self) {
        if self.session.live_connections() == 0 || lock(&self.closed).is_some() {
            return;
        }
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let mut srx = lock(&self.routes).open(req, Due::ONE);
        // Not blocking_send: a client may be dropped inside an async runtime.
        if self.tx.try_send((req, Msg::Goodbye, Vec::new())).is_ok() {
            let deadline = Instant::now() + GOODBYE_WAIT;
            while Instant::now() < deadline {
                match srx.try_recv() {
                    Err(mpsc::error::TryRecvError::Empty) => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => break,
                }
            }
        }
        lock(&self.routes).close(req);
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.goodbye();
        self.session.close("the client closed the session");
    }
}

/// Sends one image's frames that have no answer; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Outgoing>,
    /// The request number of the image's [`DataErrors`].
    req: u64,
    closed: Closed,
    server: Arc<str>,
    stop: Arc<Stop>,
    rt: tokio::runtime::Handle,
}

impl Sender {
    /// Queues a frame that has no answer, waiting while the queue is full;
    /// fails once the session is gone or the stop fires.
    pub fn send(&self, msg: Msg, payload: Vec<u8>) -> Result<(), ClientError> {
        self.queue(self.req, msg, payload)
    }

    fn queue(&self, req: u64, msg: Msg, payload: Vec<u8>) -> Result<(), ClientError> {
        self.stop.check()?;
        let frame = match self.tx.try_send((req, msg, payload)) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(self.lost()),
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        let (tx, stop) = (&self.tx, &self.stop);
        let sent = self.rt.block_on(async {
            tokio::select! {
                r = tx.send(frame) => Ok(r.is_ok()),
                _ = stop.fired() => Err(()),
            }
        });
        match sent {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.lost()),
            Err(()) => Err(stop.check().err().unwrap_or(ClientError::Cancelled)),
        }
    }

    fn lost(&self) -> ClientError {
        lost(&self.server, &self.closed)
    }
}

/// Feeds frames from caller threads into the session.
async fn pump(mut rx: mpsc::Receiver<Outgoing>, session: Arc<Session>) {
    while let Some((req, msg, payload)) = rx.recv().await {
        if session.send(req, msg, payload).await.is_err() {
            return;
        }
    }
}

/// Hands each in-order frame to the request it answers; a frame the
/// protocol does not allow ends the session.
async fn route(
    mut rx: mpsc::Receiver<Frame>,
    routes: Routes,
    closed: Closed,
    session: Arc<Session>,
) {
    while let Some(frame) = rx.recv().await {
        let routed = lock(&routes).route(frame);
        if let Err(why) = routed {
            tracing::warn!("ending the session: the server broke the protocol: {why}");
            lock(&closed).get_or_insert(Ended::Broken(why.clone()));
            session.close(&format!("protocol error: {why}"));
            break;
        }
    }
    let why = session
        .closed()
        .unwrap_or_else(|| "the session ended".into());
    lock(&closed).get_or_insert(Ended::Lost(why));
    // Dropping the routes wakes every waiting caller with the error.
    lock(&routes).clear();
}

/// The name of a message's variant, for errors.
fn msg_name(m: &Msg) -> String {
    let s = format!("{m:?}");
    s.split([' ', '{', '(']).next().unwrap_or("?").to_string()
}
