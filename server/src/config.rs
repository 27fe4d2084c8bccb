//! `ternd.toml`: the server's configuration, with defaults for every field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tern_core::defaults;

/// The file written into a new data directory: every setting, at its default, explained.
pub const DEFAULT_CONFIG: &str = r#"# ternd configuration. Every setting is shown at its default.

# TLS listener for clients and replication partners.
listen = "0.0.0.0:9443"

# Optional plaintext listener; it may only bind to a loopback address.
# plain_listen = "127.0.0.1:9080"

# Optional metrics for Prometheus (OpenMetrics text at http://ADDR/metrics,
# plain HTTP without authentication: keep it on loopback or a management
# network).
# metrics_listen = "127.0.0.1:9464"

# The server certificate and key (PEM). Relative paths are taken from the data
# directory. When both are absent, ternd creates a self-signed pair there.
cert = "tls/server.crt"
key = "tls/server.key"

# Accept TLS 1.2 clients as well as TLS 1.3.
allow_tls12 = false

# Log filter (tracing syntax), overridden by the TERN_LOG environment variable.
log = "info"

# Secure Connect: how long a client session survives without any connection
# (an outage) before its unfinished images are left incomplete (see
# incomplete_retention_secs below).
grace_period_secs = 600

# Bytes of sent but unacknowledged frames kept in memory per session, for
# resending after a reconnect.
session_cache_bytes = 67108864

# Past session_cache_bytes, up to this many bytes more per session go to a
# spill file in session_spill_dir (relative to the data directory); senders
# wait when both are full. 0 turns spilling off.
session_spill_bytes = 1073741824
session_spill_dir = "spill"

# Spill files of all sessions together, and of one user's sessions: a client
# that never acknowledges what it asked for cannot fill the disk.
spill_bytes_total = 8589934592
spill_bytes_per_user = 2147483648

# Connections open at once, in all and from one address. Past them a new
# connection is closed at once. ternd raises its file-descriptor limit as far
# as the system allows and keeps 64 of them in reserve (the control socket,
# pack files, the catalog), so the total may end up lower than set here.
max_connections = 1024
max_connections_per_address = 64

# New data may not take the last bytes of the filesystem: they stay free so
# that images can be deleted and gc can run on a full store. Capped at 5% of
# the filesystem's size.
reserved_space_bytes = 268435456

# Copies to one replication partner that run at once; the others wait, queued.
max_copies_per_partner = 4

# An image whose writer went away before committing it (a crash, kill -9,
# an outage past the grace period, a server restart) is kept as incomplete,
# resumable by name (`tern backup --resume`), for this long after its last
# checkpoint; then it is dropped and GC frees its chunks.
incomplete_retention_secs = 86400

# What a target received of a copy that was cut off (an outage, a restart of
# either server) is kept for this long after its last checkpoint, so that the
# copy continues without resending it; then it is dropped, with a trail
# entry. `tern copy abort ID` drops it at once.
replica_retention_secs = 604800

# GC in a cloud storage group rewrites sparse packs as new objects and drops
# the old ones from the catalog at once, but deletes them from the bucket
# only this long after (at a later GC), so that a read in flight still finds
# its object.
cloud_grace_secs = 3600
# Cloud groups: how often each one's catalog (containers, images, recipes,
# its live objects) is saved to its bucket when it changed, so that
# `ternd group recover` can rebuild the group on a new machine. A lost
# machine loses at most the commits of this interval.
cloud_catalog_secs = 10

# How often the cloud tier's mover looks for images its container
# policies select (`tern container tier`), in seconds; it also runs when a
# policy changes.
tier_interval_secs = 300
"#;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub plain_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub allow_tls12: bool,
    pub log: String,
    pub grace_period_secs: u64,
    pub session_cache_bytes: usize,
    pub session_spill_bytes: u64,
    pub session_spill_dir: PathBuf,
    pub spill_bytes_total: u64,
    pub spill_bytes_per_user: u64,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub reserved_space_bytes: u64,
    pub max_copies_per_partner: usize,
    pub incomplete_retention_secs: u64,
    pub replica_retention_secs: u64,
    pub cloud_grace_secs: u64,
    pub cloud_catalog_secs: u64,
    pub tier_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], defaults::PORT)),
            plain_listen: None,
            metrics_listen: None,
            cert: "tls/server.crt".into(),
            key: "tls/server.key".into(),
            allow_tls12: false,
            log: "info".into(),
            grace_period_secs: defaults::GRACE_PERIOD.as_secs(),
            session_cache_bytes: defaults::SESSION_CACHE_MEMORY,
            session_spill_bytes: defaults::SESSION_CACHE_DISK,
            session_spill_dir: "spill".into(),
            spill_bytes_total: 8 << 30,
            spill_bytes_per_user: 2 << 30,
            max_connections: 1024,
            max_connections_per_address: 64,
            reserved_space_bytes: crate::store::DEFAULT_RESERVE,
            max_copies_per_partner: 4,
            incomplete_retention_secs: 24 * 3600,
            replica_retention_secs: 7 * 24 * 3600,
            cloud_grace_secs: crate::store::cloud::DEFAULT_GRACE.as_secs(),
            cloud_catalog_secs: 10,
            tier_interval_secs: 300,
        }
    }
}

impl Config {
    /// Reads `path`, or the defaults if it does not exist.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let cfg: Config =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.max_copies_per_partner == 0 {
            bail!("max_copies_per_partner must be at least 1");
        }
        if self.max_connections == 0 || self.max_connections_per_address == 0 {
            bail!("max_connections and max_connections_per_address must be at least 1");
        }
        if let Some(p) = self.plain_listen {
            if !p.ip().is_loopback() {
                bail!("plain_listen {p} is not a loopback address; plaintext is allowed on loopback only");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses_to_the_defaults() {
        let cfg: Config = toml::from_str(DEFAULT_CONFIG).unwrap();
        let def = Config::default();
        assert_eq!(cfg.listen, def.listen);
        assert_eq!(cfg.cert, def.cert);
        assert_eq!(cfg.allow_tls12, def.allow_tls12);
        assert_eq!(cfg.grace_period_secs, def.grace_period_secs);
        assert_eq!(cfg.cloud_grace_secs, def.cloud_grace_secs);
        assert_eq!(cfg.cloud_catalog_secs, def.cloud_catalog_secs);
        assert_eq!(cfg.tier_interval_secs, def.tier_interval_secs);
        assert_eq!(cfg.session_cache_bytes, def.session_cache_bytes);
        assert_eq!(cfg.session_spill_bytes, def.session_spill_bytes);
        assert_eq!(cfg.session_spill_dir, def.session_spill_dir);
        assert_eq!(cfg.max_connections, def.max_connections);
        assert_eq!(
            cfg.max_connections_per_address,
            def.max_connections_per_address
        );
    }

    #[test]
    fn a_config_file_sets_every_value_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ternd.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7443\"\nplain_listen = \"127.0.0.1:7080\"\n\
             cert = \"a.crt\"\nkey = \"a.key\"\nallow_tls12 = true\nlog = \"debug\"\n\
             grace_period_secs = 17\nsession_cache_bytes = 1000\n\
             session_spill_bytes = 2000\nsession_spill_dir = \"/var/tmp/x\"\n\
             max_connections = 10\nmax_connections_per_address = 3\n",
        )
        .unwrap();
        let cfg = Config::load(&path).unwrap();
        let def = Config::default();
        assert_eq!(cfg.listen, "127.0.0.1:7443".parse().unwrap());
        assert_ne!(cfg.listen, def.listen);
        assert_eq!(cfg.plain_listen, Some("127.0.0.1:7080".parse().unwrap()));
        assert_eq!(
            (cfg.cert.as_path(), cfg.key.as_path()),
            (Path::new("a.crt"), Path::new("a.key"))
        );
        assert!(cfg.allow_tls12 && !def.allow_tls12);
        assert_eq!(cfg.log, "debug");
        assert_eq!(cfg.grace_period_secs, 17);
        assert_eq!(
            (cfg.session_cache_bytes, cfg.session_spill_bytes),
            (1000, 2000)
        );
        assert_eq!(cfg.session_spill_dir, Path::new("/var/tmp/x"));
        assert_eq!(
            (cfg.max_connections, cfg.max_connections_per_address),
            (10, 3)
        );
        std::fs::write(&path, "grace_perod_secs = 1\n").unwrap();
        assert!(
            Config::load(&path).is_err(),
            "a misspelt setting must be refused"
        );
    }

    #[test]
    fn plaintext_off_loopback_is_refused() {
        let cfg = Config {
            plain_listen: Some("0.0.0.0:9080".parse().unwrap()),
            ..Config::default()
        };
        assert!(cfg.validate().is_err());
    }
}
