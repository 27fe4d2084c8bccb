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
use tern_core::session::{Receipt, SeqState};
use tern_core::wire::{self, ErrorKind, Frame, Handle, Msg, WriteMode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
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
pub async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, store: Arc<Store>) {
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
        let store = store.clone();
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
            serve_connection(tls, peer, store).await;
        });
    }
}

/// Accepts plaintext connections (loopback only; checked by the config).
pub async fn serve_plain(listener: TcpListener, store: Arc<Store>) {
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
        tokio::spawn(serve_connection(tcp, peer, store.clone()));
    }
}

type Outgoing = (u64, Msg, Vec<u8>);

/// Runs one connection to its end, logging why it ended.
pub async fn serve_connection<S>(stream: S, peer: SocketAddr, store: Arc<Store>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let seq = Arc::new(Mutex::new(SeqState::default()));
    let (tx, rx) = mpsc::channel::<Outgoing>(256);
    let writer = tokio::spawn(write_loop(wr, rx, seq.clone()));
    let mut conn = Connection {
        store,
        tx,
        user: None,
        welcomed: false,
        writers: HashMap::new(),
        readers: HashMap::new(),
        next_handle: 1,
    };
    let end = loop {
        let read = Frame::read_from(&mut rd);
        let frame = if conn.user.is_none() {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, read).await {
                Ok(r) => r,
                Err(_) => break Some("no login within the handshake timeout".to_string()),
            }
        } else {
            read.await
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) if e.is_disconnect() => break None,
            Err(e) => break Some(e.to_string()),
        };
        let receipt = seq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .receive(&frame.env);
        match receipt {
            Receipt::Deliver => {}
            Receipt::Duplicate => continue,
            Receipt::Gap { expected, got } => {
                break Some(format!("frame {got} arrived, {expected} expected"))
            }
        }
        match conn.handle(frame).await {
            Ok(()) => {}
            Err(Fatal(why)) => break Some(why),
        }
    };
    match &end {
        Some(why) => tracing::warn!(%peer, "closing connection: {why}"),
        None => tracing::debug!(%peer, "client disconnected"),
    }
    conn.abort_all();
    drop(conn);
    let _ = writer.await;
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Outgoing>,
    seq: Arc<Mutex<SeqState>>,
) {
    while let Some((req, msg, payload)) = rx.recv().await {
        let env = seq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stamp(req, msg);
        if Frame::new(env, payload).write_to(&mut wr).await.is_err() {
            return;
        }
        // Flush only when nothing else is queued: batches small frames into one write.
        if rx.is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// An error that ends the connection.
struct Fatal(String);

struct Connection {
    store: Arc<Store>,
    tx: mpsc::Sender<Outgoing>,
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
        self.tx
            .send((req, msg, payload))
            .await
            .map_err(|_| Fatal("connection writer stopped".into()))
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

/// Binds the configured listeners and serves until the process ends.
pub async fn run(
    store: Arc<Store>,
    tls: Arc<rustls::ServerConfig>,
    listen: SocketAddr,
    plain: Option<SocketAddr>,
) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!("listening for TLS on {}", listener.local_addr()?);
    let mut tasks = vec![tokio::spawn(serve_tls(
        listener,
        TlsAcceptor::from(tls),
        store.clone(),
    ))];
    if let Some(addr) = plain {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!("listening for plaintext on {}", l.local_addr()?);
        tasks.push(tokio::spawn(serve_plain(l, store.clone())));
    }
    for t in tasks {
        t.await.context("listener task")?;
    }
    Ok(())
}
