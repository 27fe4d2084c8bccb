//! Opening connections: TCP (never writev, so no SIGPIPE), TLS against the
//! pinned certificate, and joining an existing session.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tern_core::defaults::SOCKET_BUFFER;
use tern_core::session;
use tern_core::tls::{Fingerprint, PinnedServer};
use tern_core::wire::{Frame, Msg};
use tokio::io::{AsyncRead, AsyncWrite, BufStream};
use tokio::net::TcpStream;

use super::{SessionOptions, CONNECT_TIMEOUT};
use crate::ClientError;

/// A TCP stream that never uses writev(2). Plain writes go through send(2)
/// with MSG_NOSIGNAL, so a connection cut by the network cannot raise SIGPIPE
/// and kill a C host program that has not ignored it; writev offers no such flag.
struct NoSigPipe(TcpStream);

impl AsyncRead for NoSigPipe {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NoSigPipe {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let buf = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        self.poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Opens connections to one server, each verified against the same pin,
/// over the first of its addresses that answers: dials go to the address in
/// use until it fails to answer a dial or a connection to it falls silent,
/// then to the next (wrapping around).
pub(super) struct Dialer {
    servers: Vec<String>,
    /// Index into `servers` of the address dials go to.
    current: AtomicUsize,
    plain: bool,
    tls: Option<(tokio_rustls::TlsConnector, Arc<PinnedServer>)>,
    /// The longest a TLS handshake may take (the client's handshake limit).
    tls_limit: std::time::Duration,
}

impl Dialer {
    /// A dialer for `servers` (at least one: the first is tried first).
    pub(super) fn new(servers: Vec<String>, opts: &SessionOptions) -> Result<Self, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::Invalid("no server address".into()));
        }
        let plain = opts.plain;
        if plain {
            return Ok(Self {
                servers,
                current: AtomicUsize::new(0),
                plain,
                tls: None,
                tls_limit: opts.handshake,
            });
        }
        let verifier = PinnedServer::new(opts.pin);
        let Some(identity) = opts.identity.clone() else {
            return Err(ClientError::Invalid(
                "a TLS session needs a client identity".into(),
            ));
        };
        let config = tern_core::tls::client_config(verifier.clone(), identity, opts.allow_tls12)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        // Every address must make a valid TLS server name.
        for server in &servers {
            server_name(server)?;
        }
        let connector = tokio_rustls::TlsConnector::from(config);
        Ok(Self {
            servers,
            current: AtomicUsize::new(0),
            plain,
            tls: Some((connector, verifier)),
            tls_limit: opts.handshake.min(CONNECT_TIMEOUT),
        })
    }

    /// The address in use.
    pub(super) fn server(&self) -> &str {
        &self.servers[self.current.load(Ordering::SeqCst) % self.servers.len()]
    }

    /// Address `index`.
    pub(super) fn address(&self, index: usize) -> &str {
        &self.servers[index % self.servers.len()]
    }

    /// How many addresses the server has.
    pub(super) fn paths(&self) -> usize {
        self.servers.len()
    }

    /// Gives up address `index` (it failed to answer, or fell silent):
    /// later dials go to the next one. Several connections giving up the
    /// same address move on once.
    pub(super) fn abandon(&self, index: usize) {
        let n = self.servers.len();
        if n > 1 {
            let next = (index + 1) % n;
            if self
                .current
                .compare_exchange(index, next, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                tracing::warn!(
                    "{} stopped answering; going on over {}",
                    self.servers[index],
                    self.servers[next]
                );
            }
        }
    }

    async fn dial(&self) -> Result<(Box<dyn Stream>, usize), ClientError> {
        self.dial_once().await.map_err(|(e, _)| e)
    }

    /// One attempt, at the address in use, which is given up if it does
    /// not answer; returns the stream and the address's index. The error
    /// says whether the connection was cut (as opposed to refused or failed).
    pub(super) async fn dial_once(&self) -> Result<(Box<dyn Stream>, usize), (ClientError, bool)> {
        let index = self.current.load(Ordering::SeqCst) % self.servers.len();
        let dialed = self.dial_at(&self.servers[index]).await;
        if let Err((e, _)) = &dialed {
            if !matches!(e, ClientError::Untrusted(_)) {
                self.abandon(index);
            }
        }
        dialed.map(|s| (s, index))
    }

    async fn dial_at(&self, server: &str) -> Result<Box<dyn Stream>, (ClientError, bool)> {
        let connect_err = |reason: String| ClientError::Connect {
            server: server.to_string(),
            reason,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| (connect_err("timed out".into()), false))?
            .map_err(|e| (connect_err(e.to_string()), false))?;
        let _ = tcp.set_nodelay(true);
        let tcp = BufStream::with_capacity(SOCKET_BUFFER, SOCKET_BUFFER, NoSigPipe(tcp));
        if self.plain {
            return Ok(Box::new(tcp));
        }
        let Some((connector, verifier)) = &self.tls else {
            return Err((connect_err("no TLS configuration".into()), false));
        };
        let name = server_name(server).map_err(|e| (e, false))?;
        let tls = tokio::time::timeout(self.tls_limit, connector.connect(name, tcp))
            .await
            .map_err(|_| (connect_err("TLS handshake timed out".into()), false))?;
        let tls = tls.map_err(|e| {
            let cut = matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            );
            match verifier.mismatch() {
                Some(mismatch) => (
                    ClientError::Untrusted(format!(
                        "{server}: {mismatch}. If the server's certificate was replaced on \
                         purpose, pass the new fingerprint with --fingerprint (ternd \
                         fingerprint prints it)"
                    )),
                    false,
                ),
                None => (connect_err(format!("TLS handshake failed: {e}")), cut),
            }
        })?;
        Ok(Box::new(tls))
    }

    pub(super) fn seen(&self) -> Option<Fingerprint> {
        self.tls.as_ref().and_then(|(_, v)| v.seen())
    }

    /// Dials and joins an existing session; returns the stream, how far
    /// the server got, and the index of the address it went to.
    pub(super) async fn join(
        &self,
        token: &[u8],
        received: u64,
    ) -> Result<(Box<dyn Stream>, u64, usize), ClientError> {
        let (mut s, index) = self.dial().await?;
        let server = &self.servers[index];
        session::write_control(
            &mut s,
            Msg::Join {
                session: token.to_vec(),
                received,
            },
        )
        .await
        .map_err(|e| ClientError::Connect {
            server: server.clone(),
            reason: e.to_string(),
        })?;
        let answer = tokio::time::timeout(CONNECT_TIMEOUT, Frame::read_from(&mut s))
            .await
            .map_err(|_| ClientError::Connect {
                server: server.clone(),
                reason: "no answer to Join".into(),
            })?
            .map_err(|e| ClientError::Connect {
                server: server.clone(),
                reason: e.to_string(),
            })?;
        match answer.env.msg {
            Msg::Joined { received } => Ok((s, received, index)),
            Msg::Error { kind, message } => Err(ClientError::Server { kind, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Joined, got {other:?}"
            ))),
        }
    }
}

/// The TLS server name of `host:port` (the pin, not the name, is checked).
fn server_name(server: &str) -> Result<ServerName<'static>, ClientError> {
    let host = server.rsplit_once(':').map(|(h, _)| h).unwrap_or(server);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| ClientError::Connect {
        server: server.to_string(),
        reason: e.to_string(),
    })
}
