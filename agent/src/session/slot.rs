//! One connection of a session, kept up for as long as the session lives:
//! dialed again (rejoining the session) when it is lost, until the session
//! closes or an outage outlasts the grace period.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_core::session::Session;
use tern_core::wire::ErrorKind;

use super::dial::{Dialer, Stream};
use super::lock;
use crate::ClientError;

/// One connection of the session, kept up for as long as the session lives.
#[derive(Clone)]
pub(super) struct Slot {
    pub(super) dialer: Arc<Dialer>,
    pub(super) session: Arc<Session>,
    pub(super) token: Arc<Mutex<Option<Vec<u8>>>>,
    /// When the session last lost its last connection.
    pub(super) outage: Arc<Mutex<Option<Instant>>>,
    pub(super) resume: bool,
    /// The client's grace period, capped by the server's once Welcome has
    /// told it; shared, so the first connection's slot is capped too.
    pub(super) grace: Arc<Mutex<Duration>>,
}

impl Slot {
    fn grace(&self) -> Duration {
        *lock(&self.grace)
    }

    pub(super) async fn run(self, first: Option<(Box<dyn Stream>, usize)>) {
        let mut next = first.map(|(s, index)| (s, None, index));
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.session.closed().is_some() {
                return;
            }
            let (stream, peer_received, path) = match next.take() {
                Some(n) => n,
                None => match self.rejoin().await {
                    Ok((s, r, index)) => (s, Some(r), index),
                    Err(ClientError::Server {
                        kind: ErrorKind::SessionExpired,
                        message,
                    }) => {
                        self.session
                            .close(&format!("the server ended the session: {message}"));
                        return;
                    }
                    // Another certificate is no outage: retrying cannot help.
                    Err(e @ ClientError::Untrusted(_)) => {
                        self.session.close(&e.to_string());
                        return;
                    }
                    Err(e) => {
                        if self.outage_exceeded() {
                            self.session.close(&format!(
                                "no connection to the server for {} s (the grace period); last error: {e}",
                                self.grace().as_secs()
                            ));
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            backoff = Duration::from_millis(50);
            *lock(&self.outage) = None;
            let end = self
                .session
                .run_connection(stream, None, peer_received)
                .await;
            if end.silent {
                // No reset, no data: a black hole. Another path may work.
                self.dialer.abandon(path);
            }
            let why = end.why;
            if self.session.closed().is_some() {
                return;
            }
            if lock(&self.token).is_none() {
                // Lost before the server said Welcome: not an outage of a
                // working session but a server that will not talk to us
                // (a TLS port dialed in plaintext, a refused handshake).
                self.session.close(&format!(
                    "the server closed the connection before the session was set up ({why}); \
                     is it a tern server, and is --plain (or its absence) right for this port?"
                ));
                return;
            }
            tracing::info!("connection to {} lost: {why}", self.dialer.address(path));
            if self.session.live_connections() == 0 {
                lock(&self.outage).get_or_insert_with(Instant::now);
                if !self.resume {
                    self.session.close(&format!("connection lost: {why}"));
                    return;
                }
            } else if !self.resume {
                return;
            }
        }
    }

    async fn rejoin(&self) -> Result<(Box<dyn Stream>, u64, usize), ClientError> {
        let token = lock(&self.token).clone();
        let Some(token) = token else {
            return Err(ClientError::Protocol("the session has no token yet".into()));
        };
        self.dialer.join(&token, self.session.received()).await
    }

    fn outage_exceeded(&self) -> bool {
        self.session.live_connections() == 0
            && lock(&self.outage).is_some_and(|since| since.elapsed() >= self.grace())
    }
}
