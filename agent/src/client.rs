//! The client: log in once, then write and read images; the calls that
//! manage what the server holds are beside it (`catalog`, `users`,
//! `groups`, `replication`, `shaping`, `tier`).

use std::sync::Arc;

use tern_core::names::UserName;
use tern_core::wire::{Frame, Listing, Msg, Password, StoreStats, WriteMode};
use tern_core::{ContainerName, ImageName};

use crate::options::ClientOptions;
use crate::reader::ImageReader;
use crate::session::ClientSession;
use crate::stop::{Deadline, Stop, Stops};
use crate::writer::ImageWriter;
use crate::{trust, ClientError};

/// A logged-in connection to a server. Share it between threads: each image
/// writer or reader is used by one thread at a time, many may be open at once.
#[derive(Clone)]
pub struct Client {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    conn: ClientSession,
    admin: bool,
    mode: WriteMode,
    /// Every live call's and image's stop, for [`Client::cancel`].
    stops: Stops,
    call_timeout: Option<std::time::Duration>,
}

/// Logs in within the handshake's limit (or the call limit if shorter);
/// true if the user is an admin.
fn login(
    conn: &ClientSession,
    opts: &ClientOptions,
    user: UserName,
    stops: &Stops,
) -> Result<bool, ClientError> {
    let stop = stops.make();
    let limit = opts
        .call_timeout
        .map_or(opts.handshake_timeout, |c| c.min(opts.handshake_timeout));
    let _limit = Deadline::arm(&conn.runtime(), &stop, Some(limit));
    let login = Msg::Login {
        user,
        password: Password::new(opts.password.clone()),
    };
    let answer = conn.call(login, Vec::new(), &stop).map_err(|e| match e {
        ClientError::TimedOut(limit) => ClientError::Connect {
            server: opts.address(),
            reason: format!(
                "the server did not answer the login within {} s",
                limit.as_secs_f64()
            ),
        },
        e => e,
    })?;
    match answer.env.msg {
        Msg::LoggedIn { admin } => Ok(admin),
        other => Err(unexpected(other)),
    }
}

impl Client {
    /// Connects, verifies the server's certificate and logs in.
    pub fn connect(opts: &ClientOptions) -> Result<Client, ClientError> {
        opts.validate()?;
        let address = opts.address();
        if opts.plain {
            refuse_plain_off_loopback(&address)?;
        }
        let user = UserName::new(opts.user.clone())?;
        let remembered = if opts.plain || opts.fingerprint.is_some() {
            None
        } else {
            trust::remembered(&address)
        };
        let pin = opts.fingerprint.or(remembered);
        let connections = match opts.connections {
            0 if opts.plain => 1,
            0 => 4,
            n => n,
        };
        let identity = if opts.plain {
            None
        } else {
            let paths = opts
                .identity
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            Some(crate::identity::load_or_create(paths)?)
        };
        let session = crate::session::SessionOptions {
            plain: opts.plain,
            identity,
            allow_tls12: opts.allow_tls12,
            pin,
            connections,
            resume: opts.secure_connect,
            grace: opts.grace_period,
            cache: tern_core::session::CacheLimits {
                memory: opts.cache_memory,
                disk: opts.cache_disk,
                spill_dir: opts.spill_dir.clone().unwrap_or_else(std::env::temp_dir),
                budget: None,
            },
            handshake: opts.handshake_timeout,
        };
        let (conn, seen) = ClientSession::open(opts.addresses(), &session)?;
        if let (None, Some(fp), true) = (pin, seen, opts.remember_servers) {
            if !opts.plain {
                // Trust on first use: later connections must present the same certificate.
                if let Err(e) = trust::remember(&address, fp) {
                    tracing::warn!("could not remember the fingerprint of {address}: {e}");
                }
            }
        }
        let stops = Stops::default();
        let admin = login(&conn, opts, user, &stops)?;
        Ok(Client {
            inner: std::sync::Arc::new(Inner {
                conn,
                admin,
                mode: opts.mode,
                stops,
                call_timeout: opts.call_timeout,
            }),
        })
    }

    /// True if the user may administer the server.
    pub fn is_admin(&self) -> bool {
        self.inner.admin
    }

    /// The server address the session's connections go to now: the first
    /// of [`ClientOptions::alternates`] that answers after `server` failed.
    pub fn server_address(&self) -> String {
        self.conn().server_in_use()
    }

    pub(crate) fn conn(&self) -> &ClientSession {
        &self.inner.conn
    }

    /// A stop for one call or one image, reached by [`cancel`](Self::cancel).
    pub(crate) fn stop(&self) -> Arc<Stop> {
        self.inner.stops.make()
    }

    /// The client's time limit on `stop`'s call, until dropped.
    pub(crate) fn limit(&self, stop: &Arc<Stop>) -> Deadline {
        Deadline::arm(&self.conn().runtime(), stop, self.inner.call_timeout)
    }

    /// Sends a request and waits for its answer, within the call time limit.
    pub(crate) fn ask(&self, msg: Msg) -> Result<Frame, ClientError> {
        let stop = self.stop();
        let _limit = self.limit(&stop);
        self.conn().call(msg, Vec::new(), &stop)
    }

    /// Makes every call in progress on this client and its images, and every
    /// later one, fail at once with [`ClientError::Cancelled`], from any
    /// thread, outage or not. The client is done: drop it.
    pub fn cancel(&self) {
        self.inner.stops.cancel_all();
    }

    /// Bytes this client has written to the network.
    pub fn bytes_sent(&self) -> u64 {
        self.conn().bytes_sent()
    }

    /// Bytes this client has read from the network.
    pub fn bytes_received(&self) -> u64 {
        self.conn().bytes_received()
    }

    /// One round trip to the server.
    pub fn ping(&self) -> Result<std::time::Duration, ClientError> {
        let started = std::time::Instant::now();
        match self.ask(Msg::Ping)?.env.msg {
            Msg::Pong => Ok(started.elapsed()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `total` bytes to the server as 1 MiB `Ping` payloads, several in
    /// flight, and waits for every answer: the session's raw upload rate.
    pub fn upload_probe(&self, total: u64) -> Result<(), ClientError> {
        const PIECE: usize = 1 << 20;
        let payload = vec![0x5a; PIECE];
        let mut in_flight = std::collections::VecDeque::new();
        let mut sent = 0u64;
        let stop = self.stop();
        let _limit = self.limit(&stop);
        while sent < total || !in_flight.is_empty() {
            if sent < total && in_flight.len() < 16 {
                let n = (total - sent).min(PIECE as u64) as usize;
                in_flight.push_back(self.conn().request(
                    Msg::Ping,
                    payload[..n].to_vec(),
                    &stop,
                )?);
                sent += n as u64;
            } else if let Some(mut answer) = in_flight.pop_front() {
                answer.recv()?;
            }
        }
        Ok(())
    }

    /// Sends a request whose answer is `Ok`.
    pub(crate) fn expect_ok(&self, msg: Msg) -> Result<(), ClientError> {
        match self.ask(msg)?.env.msg {
            Msg::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Starts writing a new image; it becomes visible when committed.
    pub fn create_image(
        &self,
        container: &str,
        name: &str,
        props: &[u8],
    ) -> Result<ImageWriter, ClientError> {
        let container = ContainerName::new(container)?;
        let name = ImageName::new(name)?;
        check_props(props)?;
        ImageWriter::create(
            self.clone(),
            container,
            name,
            props.to_vec(),
            self.inner.mode,
        )
    }

    /// Reopens an incomplete image (its writer died, or the server
    /// restarted): returns the writer and the offset to continue from (seek
    /// the source there, or skip that much of a stream). One held by a
    /// session without connections is taken from it; none is `NotFound`.
    pub fn resume_image(
        &self,
        container: &str,
        name: &str,
    ) -> Result<(ImageWriter, u64), ClientError> {
        let container = ContainerName::new(container)?;
        let name = ImageName::new(name)?;
        ImageWriter::resume(self.clone(), container, name, self.inner.mode)
    }

    /// Opens a committed image for reading.
    pub fn open_image(&self, container: &str, name: &str) -> Result<ImageReader, ClientError> {
        let container = ContainerName::new(container)?;
        let name = ImageName::new(name)?;
        ImageReader::open(self.clone(), container, name)
    }

    /// What the store holds, as far as the user may see.
    pub fn stats(&self) -> Result<StoreStats, ClientError> {
        match self.ask(Msg::StatsGet)?.env.msg {
            Msg::Stats { stats } => Ok(stats),
            other => Err(unexpected(other)),
        }
    }

    /// The audit log's acts at or after `since` (unix seconds), oldest
    /// first, each the JSON line the server keeps (admins; protocol 6).
    pub fn audit(&self, since: u64) -> Result<Vec<String>, ClientError> {
        let take = |msg, out: &mut Vec<String>| match msg {
            Msg::Audit { mut lines, next } => {
                out.append(&mut lines);
                Ok(next)
            }
            other => Err(unexpected(other)),
        };
        self.pages(Msg::AuditGet { since }, |_| Listing::Audit { since }, take)
    }
}

/// Plain mode sends the password unencrypted: only to this machine, as the
/// server allows its plaintext listener only on loopback.
fn refuse_plain_off_loopback(address: &str) -> Result<(), ClientError> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| ClientError::Connect {
            server: address.to_string(),
            reason: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(ClientError::Invalid(format!(
            "plaintext sends the password unencrypted and is allowed only to a loopback address; {address} is not one"
        )));
    }
    Ok(())
}

/// Refuses image properties the server would refuse, before anything is sent.
pub(crate) fn check_props(props: &[u8]) -> Result<(), ClientError> {
    if props.len() > tern_core::wire::MAX_PROPS_LEN {
        return Err(ClientError::Invalid(format!(
            "image properties of {} bytes; the limit is {}",
            props.len(),
            tern_core::wire::MAX_PROPS_LEN
        )));
    }
    Ok(())
}

pub(crate) fn unexpected(msg: Msg) -> ClientError {
    if let Msg::Error { kind, message } = msg {
        return ClientError::Server { kind, message };
    }
    ClientError::Protocol(format!("unexpected answer {msg:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_CONNECTIONS;

    #[test]
    fn addresses_get_the_default_port() {
        let a = |s: &str| ClientOptions::new(s, "u", "p").address();
        assert_eq!(a("host"), "host:9443");
        assert_eq!(a("host:1234"), "host:1234");
        assert_eq!(a("127.0.0.1"), "127.0.0.1:9443");
        assert_eq!(a("::1"), "[::1]:9443");
        assert_eq!(a("[::1]:7"), "[::1]:7");
    }

    #[test]
    fn options_out_of_range_are_refused_before_any_connection() {
        let mut o = ClientOptions::new("127.0.0.1:1", "u", "p");
        o.connections = MAX_CONNECTIONS + 1;
        assert!(matches!(Client::connect(&o), Err(ClientError::Invalid(_))));
        o.connections = MAX_CONNECTIONS;
        o.grace_period = std::time::Duration::ZERO;
        assert!(matches!(Client::connect(&o), Err(ClientError::Invalid(_))));
        o.secure_connect = false;
        assert!(o.validate().is_ok());
    }

    #[test]
    fn plaintext_is_refused_off_loopback_before_anything_is_sent() {
        let mut o = ClientOptions::new("192.0.2.1:9080", "u", "p");
        o.plain = true;
        let err = Client::connect(&o).err().unwrap();
        assert!(matches!(err, ClientError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("loopback"), "{err}");
        // Loopback passes the check (and then finds no server on port 1).
        o.server = "127.0.0.1:1".into();
        let err = Client::connect(&o).err().unwrap();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let o = ClientOptions::new("h", "u", "s3cr3t-pw");
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("s3cr3t-pw") && shown.contains("<hidden>"),
            "{shown}"
        );
    }
}
