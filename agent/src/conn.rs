//! One connection to a server: TLS (or loopback plaintext), a reader task that
//! routes answers to their requests, and a writer task that numbers frames.
//!
//! Callers are ordinary threads; the connection's tasks run on a small tokio
//! runtime the connection owns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::ServerName;
use tern_core::session::{Receipt, SeqState};
use tern_core::tls::{Fingerprint, PinnedServer};
use tern_core::wire::{self, Frame, Msg};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::ClientError;

/// Frames queued for the socket before senders wait.
const SEND_QUEUE: usize = 64;

type Outgoing = (u64, Msg, Vec<u8>);
type Routes = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Frame>>>>;

/// An open connection.
pub struct Conn {
    tx: mpsc::Sender<Outgoing>,
    routes: Routes,
    next_req: AtomicU64,
    /// Why the connection ended, once it has.
    closed: Arc<Mutex<Option<String>>>,
    /// Errors the server sent about frames that have no answer (chunk data).
    unsolicited: Arc<Mutex<Vec<String>>>,
    server: Arc<str>,
    bytes_sent: Arc<AtomicU64>,
    /// Last, so the queue closes before the tasks are stopped.
    _rt: tokio::runtime::Runtime,
}

/// Answers to one request, as they arrive.
pub struct Answers {
    routes: Routes,
    closed: Arc<Mutex<Option<String>>>,
    server: Arc<str>,
    req: u64,
    rx: mpsc::UnboundedReceiver<Frame>,
}

impl Answers {
    /// The next answer frame; an `Error` message becomes `Err`.
    pub fn recv(&mut self) -> Result<Frame, ClientError> {
        match self.rx.blocking_recv() {
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
        lock(&self.routes).remove(&self.req);
    }
}

fn lost(server: &str, closed: &Mutex<Option<String>>) -> ClientError {
    let reason = lock(closed)
        .clone()
        .unwrap_or_else(|| "connection closed".into());
    ClientError::Connect {
        server: server.to_string(),
        reason,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    /// Connects, handshakes TLS (unless `plain`) and says hello.
    ///
    /// Returns the connection and the fingerprint the server presented.
    pub fn open(
        server: &str,
        plain: bool,
        pin: Option<Fingerprint>,
    ) -> Result<(Self, Option<Fingerprint>), ClientError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("tern-conn")
            .build()?;
        let connect_err = |reason: String| ClientError::Connect {
            server: server.to_string(),
            reason,
        };
        let tcp = rt
            .block_on(TcpStream::connect(server))
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let routes: Routes = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(Mutex::new(None));
        let unsolicited = Arc::new(Mutex::new(Vec::new()));
        let bytes_sent = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let mut seen = None;
        let io = Io {
            routes: routes.clone(),
            closed: closed.clone(),
            unsolicited: unsolicited.clone(),
            bytes_sent: bytes_sent.clone(),
        };
        if plain {
            io.spawn(&rt, tcp, rx);
        } else {
            let verifier = PinnedServer::new(pin);
            let config = rustls::ClientConfig::builder_with_provider(tern_core::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| connect_err(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            let host = server.rsplit_once(':').map(|(h, _)| h).unwrap_or(server);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name =
                ServerName::try_from(host.to_string()).map_err(|e| connect_err(e.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let tls = rt.block_on(connector.connect(name, tcp));
            seen = verifier.seen();
            let tls = tls.map_err(|e| {
                let text = e.to_string();
                if text.contains("does not match the pinned") {
                    ClientError::Untrusted(format!(
                        "{server}: {text}. If the server's certificate was replaced on purpose, \
                         pass the new fingerprint with --fingerprint (ternd fingerprint prints it)"
                    ))
                } else {
                    connect_err(format!("TLS handshake failed: {text}"))
                }
            })?;
            io.spawn(&rt, tls, rx);
        }
        let conn = Conn {
            _rt: rt,
            tx,
            routes,
            next_req: AtomicU64::new(1),
            closed,
            unsolicited,
            server: server.into(),
            bytes_sent,
        };
        let welcome = conn.call(
            Msg::Hello {
                min_version: wire::PROTOCOL_MIN,
                max_version: wire::PROTOCOL_MAX,
                features: wire::FEATURES.iter().map(|s| s.to_string()).collect(),
                agent: format!("tern-agent {}", env!("CARGO_PKG_VERSION")),
            },
            Vec::new(),
        )?;
        match welcome.env.msg {
            Msg::Welcome { .. } => Ok((conn, seen)),
            other => Err(ClientError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    }

    fn lost(&self) -> ClientError {
        lost(&self.server, &self.closed)
    }

    /// Sends a request and returns a stream of its answers.
    pub fn request(&self, msg: Msg, payload: Vec<u8>) -> Result<Answers, ClientError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (stx, srx) = mpsc::unbounded_channel();
        lock(&self.routes).insert(req, stx);
        let answers = Answers {
            routes: self.routes.clone(),
            closed: self.closed.clone(),
            server: self.server.clone(),
            req,
            rx: srx,
        };
        // The reader clears the routes after it records why it stopped; a route
        // added after that would wait forever.
        if lock(&self.closed).is_some() {
            return Err(self.lost());
        }
        self.tx
            .blocking_send((req, msg, payload))
            .map_err(|_| self.lost())?;
        Ok(answers)
    }

    /// Sends a request and waits for its single answer.
    pub fn call(&self, msg: Msg, payload: Vec<u8>) -> Result<Frame, ClientError> {
        self.request(msg, payload)?.recv()
    }

    /// Sends a frame that has no answer.
    pub fn send(&self, msg: Msg, payload: Vec<u8>) -> Result<(), ClientError> {
        self.tx
            .blocking_send((0, msg, payload))
            .map_err(|_| self.lost())
    }

    /// A handle for sending answerless frames from other threads.
    pub fn sender(&self) -> Sender {
        Sender {
            tx: self.tx.clone(),
            closed: self.closed.clone(),
        }
    }

    /// Takes the errors the server reported for frames without answers.
    pub fn take_unsolicited(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.unsolicited))
    }

    /// Bytes written to the connection so far (frame headers and payloads).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    pub fn server(&self) -> &str {
        &self.server
    }
}

/// Sends frames that have no answer; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Outgoing>,
    closed: Arc<Mutex<Option<String>>>,
}

impl Sender {
    /// Queues a frame, waiting while the queue is full; fails once the connection is gone.
    pub fn send(&self, msg: Msg, payload: Vec<u8>) -> Result<(), String> {
        self.tx.blocking_send((0, msg, payload)).map_err(|_| {
            lock(&self.closed)
                .clone()
                .unwrap_or_else(|| "connection closed".into())
        })
    }
}

struct Io {
    routes: Routes,
    closed: Arc<Mutex<Option<String>>>,
    unsolicited: Arc<Mutex<Vec<String>>>,
    bytes_sent: Arc<AtomicU64>,
}

impl Io {
    fn spawn<S>(self, rt: &tokio::runtime::Runtime, stream: S, mut rx: mpsc::Receiver<Outgoing>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let seq = Arc::new(Mutex::new(SeqState::default()));
        let wseq = seq.clone();
        let bytes_sent = self.bytes_sent.clone();
        rt.spawn(async move {
            while let Some((req, msg, payload)) = rx.recv().await {
                let env = lock(&wseq).stamp(req, msg);
                let frame = Frame::new(env, payload);
                let Ok(n) = frame.write_to(&mut wr).await else {
                    break;
                };
                bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                if rx.is_empty() && wr.flush().await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        rt.spawn(async move {
            let why = loop {
                let frame = match Frame::read_from(&mut rd).await {
                    Ok(f) => f,
                    Err(e) if e.is_disconnect() => {
                        break "the server closed the connection".to_string()
                    }
                    Err(e) => break e.to_string(),
                };
                match lock(&seq).receive(&frame.env) {
                    Receipt::Deliver => {}
                    Receipt::Duplicate => continue,
                    Receipt::Gap { expected, got } => {
                        break format!("frame {got} arrived, {expected} expected")
                    }
                }
                let route = lock(&self.routes).get(&frame.env.req).cloned();
                match route {
                    Some(r) => {
                        let _ = r.send(frame);
                    }
                    None => {
                        if let Msg::Error { message, .. } = &frame.env.msg {
                            lock(&self.unsolicited).push(message.clone());
                        }
                    }
                }
            };
            *lock(&self.closed) = Some(why);
            // Dropping the routes wakes every waiting caller with the error.
            lock(&self.routes).clear();
        });
    }
}
