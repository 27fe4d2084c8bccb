//! How a client reaches and logs in to a server: [`ClientOptions`].

use tern_core::tls::Fingerprint;
use tern_core::wire::WriteMode;

use crate::ClientError;

/// The default TLS port.
pub const DEFAULT_PORT: u16 = tern_core::defaults::PORT;
/// Most connections one session may run over (MultiConnect).
pub const MAX_CONNECTIONS: usize = 64;

/// How to reach and log in to a server.
#[derive(Clone)]
pub struct ClientOptions {
    /// `host` or `host:port` (default port 9443).
    pub server: String,
    /// Other addresses of the same server (other paths to it), tried in
    /// order when `server` does not answer, and when a connection to the
    /// address in use stops answering (nothing received for 10 s); a new
    /// client starts again from `server`.
    pub alternates: Vec<String>,
    /// The user to log in as.
    pub user: String,
    /// Their password (shown as `<hidden>` in debug output).
    pub password: String,
    /// The server certificate's fingerprint; `None` trusts on first use.
    pub fingerprint: Option<Fingerprint>,
    /// Use the loopback plaintext listener instead of TLS.
    pub plain: bool,
    /// How images are written: dedup here, or passthrough to the server.
    pub mode: WriteMode,
    /// Remember fingerprints accepted on first use in the user's config directory.
    pub remember_servers: bool,
    /// MultiConnect: connections per session (0: 4 over TLS, 1 over plaintext).
    pub connections: usize,
    /// Secure Connect: reconnect and resume after connection loss.
    pub secure_connect: bool,
    /// How long to keep reconnecting when every connection is lost.
    pub grace_period: std::time::Duration,
    /// Bytes of sent, unacknowledged frames kept in memory for resending.
    pub cache_memory: usize,
    /// Bytes more of them kept in a spill file once memory is full (0: none).
    pub cache_disk: u64,
    /// Where the spill file goes (`None`: the system's temporary directory).
    pub spill_dir: Option<std::path::PathBuf>,
    /// The client's certificate and key (PEM); `None`: `client.crt` and
    /// `client.key` in the config directory, created on first use.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Accept a server that speaks only TLS 1.2 (TLS 1.3 otherwise).
    pub allow_tls12: bool,
    /// The longest any one call may wait (`None`: no limit of its own; a call
    /// then waits as long as the session lives, at most the grace period of
    /// an outage). Past it the call fails with [`ClientError::TimedOut`]; a
    /// call on an image loses the image, a call on the client does not.
    pub call_timeout: Option<std::time::Duration>,
    /// The longest the server may take to say Welcome, and again to answer
    /// the login (the TLS handshake has 10 s of its own): a server that
    /// accepts and then says nothing fails the connect with
    /// [`ClientError::Connect`] instead of hanging it.
    pub handshake_timeout: std::time::Duration,
}

impl std::fmt::Debug for ClientOptions {
    // By hand, so that the password never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("server", &self.server)
            .field("alternates", &self.alternates)
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("fingerprint", &self.fingerprint)
            .field("plain", &self.plain)
            .field("mode", &self.mode)
            .field("remember_servers", &self.remember_servers)
            .field("connections", &self.connections)
            .field("secure_connect", &self.secure_connect)
            .field("grace_period", &self.grace_period)
            .field("cache_memory", &self.cache_memory)
            .field("cache_disk", &self.cache_disk)
            .field("spill_dir", &self.spill_dir)
            .field("identity", &self.identity)
            .field("allow_tls12", &self.allow_tls12)
            .field("call_timeout", &self.call_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl ClientOptions {
    /// Options with every default: TLS, trust on first use, dedup, four
    /// connections, Secure Connect with a 600 s grace period.
    pub fn new(server: &str, user: &str, password: &str) -> Self {
        Self {
            server: server.to_string(),
            alternates: Vec::new(),
            user: user.to_string(),
            password: password.to_string(),
            fingerprint: None,
            plain: false,
            mode: WriteMode::Dedup,
            remember_servers: true,
            connections: 0,
            secure_connect: true,
            grace_period: tern_core::defaults::GRACE_PERIOD,
            cache_memory: tern_core::defaults::SESSION_CACHE_MEMORY,
            cache_disk: tern_core::defaults::SESSION_CACHE_DISK,
            spill_dir: None,
            identity: None,
            allow_tls12: false,
            call_timeout: None,
            handshake_timeout: tern_core::defaults::HANDSHAKE_TIMEOUT,
        }
    }

    /// Checks the settings a caller may have set to anything: done once, by
    /// [`Client::connect`], for the CLI, the config file, the C ABI and Rust callers alike.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.connections > MAX_CONNECTIONS {
            return Err(ClientError::Invalid(format!(
                "{} connections asked; at most {MAX_CONNECTIONS} (0: the default)",
                self.connections
            )));
        }
        if self.handshake_timeout.is_zero() {
            return Err(ClientError::Invalid(
                "a handshake time limit of 0: no server could answer in time".into(),
            ));
        }
        if self.grace_period.is_zero() && self.secure_connect {
            return Err(ClientError::Invalid(
                "a grace period of 0 with Secure Connect on; turn Secure Connect off instead"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `server`, with the default port if it names none.
    pub(crate) fn address(&self) -> String {
        with_port(&self.server)
    }

    /// `server` and the alternates, in order, each with a port.
    pub(crate) fn addresses(&self) -> Vec<String> {
        std::iter::once(&self.server)
            .chain(&self.alternates)
            .map(|a| with_port(a))
            .collect()
    }
}

fn with_port(address: &str) -> String {
    let s = address.trim();
    let has_port = match s.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        s.to_string()
    } else if s.contains(':') && !s.starts_with('[') {
        format!("[{s}]:{DEFAULT_PORT}")
    } else {
        format!("{s}:{DEFAULT_PORT}")
    }
}
