//! Listeners: one accept loop serves the TLS port and the loopback plaintext port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tern_core::tls::Fingerprint;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::handler::{serve_connection, Sessions, HANDSHAKE_TIMEOUT};

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
    ) -> Result<()> {
        let acceptor = Transport::Tls(TlsAcceptor::from(tls));
        let mut tasks = vec![tokio::spawn(accept_loop(
            self.tls,
            acceptor,
            sessions.clone(),
        ))];
        if let Some(l) = self.plain {
            tasks.push(tokio::spawn(accept_loop(l, Transport::Plain, sessions)));
        }
        for t in tasks {
            t.await.context("listener task")?;
        }
        Ok(())
    }
}

/// Accepts connections forever; each gets its own task.
async fn accept_loop(listener: TcpListener, transport: Transport, sessions: Arc<Sessions>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // One deadline for TLS, Hello and Login together, from the accept on.
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        tokio::spawn(connection(
            tcp,
            peer,
            transport.clone(),
            deadline,
            sessions.clone(),
        ));
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
    let acceptor = match transport {
        Transport::Plain => return serve_connection(tcp, peer, None, deadline, sessions).await,
        Transport::Tls(acceptor) => acceptor,
    };
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
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
