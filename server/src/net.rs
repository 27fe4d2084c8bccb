//! Listeners and the per-connection protocol handler.
//!
//! Each connection has a reader loop (this task) and a writer task fed by a
//! bounded channel, so chunk answers stream out while requests stream in. Store
//! calls are blocking and run under `block_in_place`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tern_core::session::{self, CacheLimits, Session};
use tern_core::tls::Fingerprint;
use tern_core::wire::{self, ErrorKind, Frame, Handle, Msg, WriteMode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::store::{ReadableImage, Store, StoreError, User, WriterId};

/// How long a new connection may take to say hello and log in.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most recipe entries returned by one `RecipeGet`.
const MAX_RECIPE_BATCH: u32 = 16_384;
/// Most chunks asked for by one `ChunkGet` or announced by one `ImageAppend`.
const MAX_BATCH: usize = 4096;

/// Accepts TLS connections forever.
pub async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, hub: Arc<Hub>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // The client's identity: sessions are bound to it.
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| Fingerprint::of(cert.as_ref()));
            serve_connection(tls, peer, identity, hub).await;
        });
    }
}

/// Accepts plaintext connections (loopback only; checked by the config).
pub async fn serve_plain(listener: TcpListener, hub: Arc<Hub>) {
    loop {
        let (tcp, peer): (TcpStream, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(tcp, peer, None, hub.clone()));
    }
}

/// Session settings and the sessions alive on this server.
pub struct Hub {
    pub store: Arc<Store>,
    /// How long a session waits for a connection before it is ended.
    pub grace: Duration,
    /// Where a session keeps the frames it sent until they are acknowledged.
    pub cache: CacheLimits,
    sessions: Mutex<HashMap<Vec<u8>, Registered>>,
}

/// A live session and the client identity it was started with.
struct Registered {
    session: Arc<Session>,
    identity: Option<Fingerprint>,
}

impl Hub {
    pub fn new(store: Arc<Store>, grace: Duration, cache: CacheLimits) -> Arc<Self> {
        Arc::new(Self {
            store,
            grace,
            cache,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The session `token` names, if it was started by the same client identity.
    fn session(&self, token: &[u8], identity: Option<Fingerprint>) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .filter(|r| r.identity == identity)
            .map(|r| r.session.clone())
    }
}

/// Runs one connection to its end: it starts a session (Hello) or joins one
/// (Join). `identity` is the fingerprint of the client's TLS certificate.
pub async fn serve_connection<S>(
    mut stream: S,
    peer: SocketAddr,
    identity: Option<Fingerprint>,
    hub: Arc<Hub>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, Frame::read_from(&mut stream)).await {
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
            let received = *received;
            // A token presented under another identity is treated as unknown,
            // telling a thief nothing.
            let Some(s) = hub.session(session, identity) else {
                let msg = Msg::Error {
                    kind: ErrorKind::SessionExpired,
                    message: "the session is unknown, its grace period ended, or it belongs to another client".into(),
                };
                let _ = session::write_control(&mut stream, msg).await;
                return;
            };
            if session::write_control(
                &mut stream,
                Msg::Joined {
                    received: s.received(),
                },
            )
            .await
            .is_err()
            {
                return;
            }
            tracing::debug!(%peer, "connection joined a session");
            let why = s.run_connection(stream, None, Some(received)).await;
            tracing::debug!(%peer, "session connection ended: {why}");
        }
        (1, Msg::Hello { .. }) => {
            let mut token = vec![0u8; 32];
            if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut token).is_err()
            {
                tracing::error!("the system random source failed");
                return;
            }
            let (tx, rx) = mpsc::channel(256);
            let s = Session::new(hub.cache.clone(), tx);
            hub.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    token.clone(),
                    Registered {
                        session: s.clone(),
                        identity,
                    },
                );
            let conn = Connection {
                store: hub.store.clone(),
                session: s.clone(),
                token: token.clone(),
                grace: hub.grace,
                user: None,
                welcomed: false,
                writers: HashMap::new(),
                readers: HashMap::new(),
                next_handle: 1,
            };
            tokio::spawn(run_session(conn, rx, hub.clone(), token, peer));
            let why = s.run_connection(stream, Some(first), None).await;
            tracing::debug!(%peer, "session connection ended: {why}");
        }
        _ => tracing::warn!(%peer, "closing connection: the first frame must be Hello or Join"),
    }
}

/// The application side of a session: handles its frames in order, and ends
/// it when the client leaves, breaks the protocol, or stays away past the grace period.
async fn run_session(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Frame>,
    hub: Arc<Hub>,
    token: Vec<u8>,
    peer: SocketAddr,
) {
    let session = conn.session.clone();
    let watchdog = tokio::spawn(grace_watch(session.clone(), hub.grace));
    let end = loop {
        let next = if conn.user.is_none() {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, rx.recv()).await {
                Ok(f) => f,
                Err(_) => break "no login within the handshake timeout".to_string(),
            }
        } else {
            rx.recv().await
        };
        let Some(frame) = next else {
            break session.closed().unwrap_or_else(|| "session closed".into());
        };
        if let Err(Fatal(why)) = conn.handle(frame).await {
            break why;
        }
    };
    tracing::info!(%peer, "session ended: {end}");
    session.close(&end);
    watchdog.abort();
    conn.abort_all();
    hub.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&token);
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
        let deadline = tokio::time::Instant::now() + grace;
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

/// An error that ends the connection.
struct Fatal(String);

struct Connection {
    store: Arc<Store>,
    session: Arc<Session>,
    token: Vec<u8>,
    grace: Duration,
    user: Option<User>,
    welcomed: bool,
    writers: HashMap<Handle, WriterId>,
    readers: HashMap<Handle, ReadableImage>,
    next_handle: Handle,
}

/// A failed request: reported to the client, the connection goes on.
struct Refusal(ErrorKind, String);

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal(e.kind(), e.to_string())
    }
}

fn refuse<T>(kind: ErrorKind, msg: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(kind, msg.into()))
}

impl Connection {
    async fn send(&self, req: u64, msg: Msg, payload: Vec<u8>) -> Result<(), Fatal> {
        self.session
            .send(req, msg, payload)
            .await
            .map_err(|e| Fatal(e.to_string()))
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), Fatal> {
        let req = frame.env.req;
        let outcome = self.dispatch(req, frame.env.msg, frame.payload).await;
        match outcome {
            Ok(Some(reply)) => self.send(req, reply, Vec::new()).await,
            Ok(None) => Ok(()),
            Err(Refusal(ErrorKind::Protocol, why)) => {
                let _ = self
                    .send(
                        req,
                        Msg::Error {
                            kind: ErrorKind::Protocol,
                            message: why.clone(),
                        },
                        Vec::new(),
                    )
                    .await;
                Err(Fatal(why))
            }
            Err(Refusal(kind, message)) => {
                self.send(req, Msg::Error { kind, message }, Vec::new())
                    .await
            }
        }
    }

    fn user(&self) -> Result<&User, Refusal> {
        self.user
            .as_ref()
            .ok_or_else(|| Refusal(ErrorKind::Protocol, "log in first".into()))
    }

    fn new_handle(&mut self) -> Handle {
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        h
    }

    fn writer(&self, h: Handle) -> Result<WriterId, Refusal> {
        self.writers.get(&h).copied().ok_or_else(|| {
            Refusal(
                ErrorKind::Invalid,
                format!("no image open for writing under handle {h}"),
            )
        })
    }

    fn reader(&self, h: Handle) -> Result<&ReadableImage, Refusal> {
        self.readers.get(&h).ok_or_else(|| {
            Refusal(
                ErrorKind::Invalid,
                format!("no image open for reading under handle {h}"),
            )
        })
    }

    async fn dispatch(
        &mut self,
        req: u64,
        msg: Msg,
        payload: Vec<u8>,
    ) -> Result<Option<Msg>, Refusal> {
        let store = self.store.clone();
        let blocking =
            |f: &mut dyn FnMut() -> Result<Msg, StoreError>| -> Result<Option<Msg>, Refusal> {
                Ok(Some(tokio::task::block_in_place(f)?))
            };
        if !self.welcomed {
            let Msg::Hello {
                min_version,
                max_version,
                features,
                ..
            } = msg
            else {
                return refuse(ErrorKind::Protocol, "the first frame must be Hello");
            };
            let Some(version) = wire::negotiate_version(min_version, max_version) else {
                return refuse(
                    ErrorKind::Protocol,
                    format!(
                        "incompatible protocol: client speaks {min_version}..={max_version}, this server {}..={}",
                        wire::PROTOCOL_MIN,
                        wire::PROTOCOL_MAX
                    ),
                );
            };
            self.welcomed = true;
            let features = wire::FEATURES
                .iter()
                .filter(|f| features.iter().any(|g| g == *f))
                .map(|f| f.to_string())
                .collect();
            return Ok(Some(Msg::Welcome {
                version,
                features,
                server: format!("ternd {}", env!("CARGO_PKG_VERSION")),
                session: self.token.clone(),
                grace_secs: self.grace.as_secs(),
            }));
        }
        if self.user.is_none() && !matches!(msg, Msg::Login { .. } | Msg::Ping) {
            return refuse(ErrorKind::Protocol, "log in first");
        }
        match msg {
            Msg::Login { user, password } => {
                let u = tokio::task::block_in_place(|| store.authenticate(&user, &password))
                    .map_err(|_| {
                        Refusal(
                            ErrorKind::Auth,
                            format!("wrong password or unknown user {user}"),
                        )
                    })?;
                let admin = u.admin;
                self.user = Some(u);
                Ok(Some(Msg::LoggedIn { admin }))
            }
            Msg::Ping => Ok(Some(Msg::Pong)),
            Msg::ContainerCreate { name, settings } => {
                let user = self.user()?.clone();
                blocking(&mut || {
                    store
                        .container_create(&user, &name, &settings)
                        .map(|_| Msg::Ok)
                })
            }
            Msg::ContainerList => {
                let user = self.user()?.clone();
                blocking(&mut || {
                    store
                        .container_list(&user)
                        .map(|list| Msg::Containers { list })
                })
            }
            Msg::ContainerRemove { name } => {
                let user = self.user()?.clone();
                blocking(&mut || store.container_remove(&user, &name).map(|_| Msg::Ok))
            }
            Msg::UserAdd {
                name,
                password,
                admin,
            } => {
                if !self.user()?.admin {
                    return refuse(ErrorKind::Denied, "only an admin may add users");
                }
                let groups = vec![
                    tern_core::names::GroupName::new(crate::store::DEFAULT_GROUP).expect("valid"),
                ];
                blocking(&mut || {
                    store
                        .user_set(&name, &password, admin, groups.clone())
                        .map(|_| Msg::Ok)
                })
            }
            Msg::ImageCreate {
                container,
                name,
                props,
                mode,
            } => {
                let user = self.user()?.clone();
                let passthrough = mode == WriteMode::Passthrough;
                let (w, rec) = tokio::task::block_in_place(|| {
                    store.image_begin(&user, &container, &name, props, passthrough)
                })?;
                let handle = self.new_handle();
                self.writers.insert(handle, w);
                Ok(Some(Msg::ImageCreated {
                    handle,
                    chunking: rec.chunking,
                    zstd_level: rec.zstd_level,
                }))
            }
            Msg::ImageAppend { handle, entries } => {
                if entries.len() > MAX_BATCH {
                    return refuse(
                        ErrorKind::Protocol,
                        format!("{} entries in one append", entries.len()),
                    );
                }
                let w = self.writer(handle)?;
                blocking(&mut || {
                    store
                        .image_append(w, &entries)
                        .map(|missing| Msg::ImageNeed { handle, missing })
                })
            }
            Msg::ChunkData {
                handle,
                id,
                codec,
                raw_len,
                ..
            } => {
                let w = self.writer(handle)?;
                match tokio::task::block_in_place(|| {
                    store.image_put_chunk(w, &id, codec, raw_len, &payload)
                }) {
                    Ok(()) => Ok(None),
                    // A chunk frame has no answer of its own: the error fails the image.
                    Err(e) => {
                        self.writers.remove(&handle);
                        store.image_abort(w);
                        Err(e.into())
                    }
                }
            }
            Msg::ImageWriteRaw { handle } => {
                let w = self.writer(handle)?;
                match tokio::task::block_in_place(|| store.image_write_raw(w, &payload, false)) {
                    Ok(()) => Ok(None),
                    Err(e) => {
                        self.writers.remove(&handle);
                        store.image_abort(w);
                        Err(e.into())
                    }
                }
            }
            Msg::ImageClose { handle } => {
                let w = self.writer(handle)?;
                self.writers.remove(&handle);
                blocking(&mut || {
                    store
                        .image_commit(w)
                        .map(|(info, stats)| Msg::ImageCommitted { info, stats })
                })
            }
            Msg::ImageAbort { handle } => {
                let w = self.writer(handle)?;
                self.writers.remove(&handle);
                store.image_abort(w);
                Ok(Some(Msg::Ok))
            }
            Msg::ImageOpen { container, name } => {
                let user = self.user()?.clone();
                let img =
                    tokio::task::block_in_place(|| store.image_open(&user, &container, &name))?;
                let handle = self.new_handle();
                let info = img.info.clone();
                self.readers.insert(handle, img);
                Ok(Some(Msg::ImageOpened { handle, info }))
            }
            Msg::RecipeGet {
                handle,
                from_offset,
                max,
            } => {
                let img = self.reader(handle)?.clone();
                let max = max.clamp(1, MAX_RECIPE_BATCH) as usize;
                blocking(&mut || {
                    store
                        .recipe_from(img.image_id, from_offset, max)
                        .map(|entries| Msg::Recipe { entries })
                })
            }
            Msg::ChunkGet { handle, offsets } => {
                if offsets.len() > MAX_BATCH {
                    return refuse(
                        ErrorKind::Protocol,
                        format!("{} chunks asked at once", offsets.len()),
                    );
                }
                let img = self.reader(handle)?.clone();
                for offset in offsets {
                    let (entry, loc, bytes) =
                        tokio::task::block_in_place(|| store.read_chunk(&img, offset))?;
                    let msg = Msg::ChunkData {
                        handle,
                        id: entry.id,
                        codec: loc.codec,
                        raw_len: loc.raw_len,
                        offset: entry.offset,
                    };
                    self.send(req, msg, bytes)
                        .await
                        .map_err(|Fatal(why)| Refusal(ErrorKind::Internal, why))?;
                }
                Ok(None)
            }
            Msg::ImageRelease { handle } => {
                self.readers.remove(&handle);
                Ok(Some(Msg::Ok))
            }
            Msg::ImageList { container, prefix } => {
                let user = self.user()?.clone();
                blocking(&mut || {
                    store
                        .image_list(&user, &container, &prefix)
                        .map(|list| Msg::Images { list })
                })
            }
            Msg::ImageRemove { container, name } => {
                let user = self.user()?.clone();
                blocking(&mut || {
                    store
                        .image_remove(&user, &container, &name)
                        .map(|_| Msg::Ok)
                })
            }
            Msg::StatsGet => {
                let user = self.user()?.clone();
                blocking(&mut || store.stats(&user).map(|stats| Msg::Stats { stats }))
            }
            other => refuse(
                ErrorKind::Protocol,
                format!("unexpected message {}", msg_name(&other)),
            ),
        }
    }

    /// Drops every image this connection was writing: none of them is committed.
    fn abort_all(&mut self) {
        for (_, w) in self.writers.drain() {
            self.store.image_abort(w);
        }
    }
}

fn msg_name(m: &Msg) -> String {
    let s = format!("{m:?}");
    s.split([' ', '{', '(']).next().unwrap_or("?").to_string()
}

/// The bound listeners of a server, before it serves.
pub struct Listeners {
    tls: TcpListener,
    plain: Option<TcpListener>,
}

impl Listeners {
    /// Binds the TLS listener and the optional plaintext one. Port 0 binds a
    /// port the system chooses; `tls_addr` and `plain_addr` say which.
    pub async fn bind(listen: SocketAddr, plain: Option<SocketAddr>) -> Result<Self> {
        let tls = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let plain = match plain {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?,
            ),
            None => None,
        };
        Ok(Self { tls, plain })
    }

    pub fn tls_addr(&self) -> Result<SocketAddr> {
        Ok(self.tls.local_addr()?)
    }

    pub fn plain_addr(&self) -> Result<Option<SocketAddr>> {
        Ok(self.plain.as_ref().map(|l| l.local_addr()).transpose()?)
    }

    /// Serves on every listener until the process ends.
    pub async fn serve(self, hub: Arc<Hub>, tls: Arc<rustls::ServerConfig>) -> Result<()> {
        let mut tasks = vec![tokio::spawn(serve_tls(
            self.tls,
            TlsAcceptor::from(tls),
            hub.clone(),
        ))];
        if let Some(l) = self.plain {
            tasks.push(tokio::spawn(serve_plain(l, hub)));
        }
        for t in tasks {
            t.await.context("listener task")?;
        }
        Ok(())
    }
}
