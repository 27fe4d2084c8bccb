//! Listeners: one accept loop serves the TLS port and the loopback plaintext
//! port, admitting connections within limits in total and per address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tern_core::defaults::SOCKET_BUFFER;
use tern_core::tls::Fingerprint;
use tokio::io::BufStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::sessions::{serve_connection, Sessions, HANDSHAKE_TIMEOUT};

/// A connection that has not finished its TLS handshake by then is closed:
/// idle sockets must not hold file descriptors that real clients need.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections may be open at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// In all.
    pub total: usize,
    /// From one address (room for a few MultiConnect sessions).
    pub per_address: usize,
}

/// The connections open now, by address.
struct Admissions {
    limits: ConnectionLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; it leaves the count when dropped.
struct Admitted {
    admissions: Arc<Admissions>,
    ip: IpAddr,
}

impl Admissions {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.limits.total {
            return Err("the server's connection limit");
        }
        let from_ip = open.1.entry(ip).or_insert(0);
        if *from_ip >= self.limits.per_address {
            return Err("the per-address connection limit");
        }
        *from_ip += 1;
        open.0 += 1;
        Ok(Admitted {
            admissions: self.clone(),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .admissions
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// The bound listeners of a server, before it serves.
pub struct Listeners {
    tls: TcpListener,
    plain: Option<TcpListener>,
}

/// What a listener's connections speak.
#[derive(Clone)]
enum Transport {
    Tls(TlsAcceptor),
    /// Loopback only (the config checks the address).
    Plain,
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
    pub async fn serve(
        self,
        sessions: Arc<Sessions>,
        tls: Arc<rustls::ServerConfig>,
        limits: ConnectionLimits,
    ) -> Result<()> {
        let admissions = Arc::new(Admissions {
            limits,
            open: Mutex::new((0, HashMap::new())),
        });
        let acceptor = Transport::Tls(TlsAcceptor::from(tls));
        let mut tasks = vec![tokio::spawn(accept_loop(
            self.tls,
            acceptor,
            sessions.clone(),
            admissions.clone(),
        ))];
        if let Some(l) = self.plain {
            tasks.push(tokio::spawn(accept_loop(
                l,
                Transport::Plain,
                sessions,
                admissions,
            )));
        }
        for t in tasks {
            t.await.context("listener task")?;
        }
        Ok(())
    }
}

/// Accepts connections forever; each gets its own task.
async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    sessions: Arc<Sessions>,
    admissions: Arc<Admissions>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = match admissions.admit(peer.ip()) {
            Ok(a) => a,
            Err(limit) => {
                // Closed at once (dropped): refusing costs no task and no buffer.
                tracing::debug!(%peer, "connection refused: {limit}");
                continue;
            }
        };
        // One deadline for TLS, Hello and Login together, from the accept on.
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let sessions = sessions.clone();
        let transport = transport.clone();
        tokio::spawn(async move {
            connection(tcp, peer, transport, deadline, sessions).await;
            drop(admitted);
        });
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    deadline: Instant,
    sessions: Arc<Sessions>,
) {
    let _ = tcp.set_nodelay(true);
    let tcp = BufStream::with_capacity(SOCKET_BUFFER, SOCKET_BUFFER, tcp);
    let acceptor = match transport {
        Transport::Plain => return serve_connection(tcp, peer, None, deadline, sessions).await,
        Transport::Tls(acceptor) => acceptor,
    };
    let tls_deadline = deadline.min(Instant::now() + TLS_HANDSHAKE_TIMEOUT);
    let tls = match tokio::time::timeout_at(tls_deadline, acceptor.accept(tcp)).await {
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
    serve_connection(tls, peer, identity, deadline, sessions).await;
}
