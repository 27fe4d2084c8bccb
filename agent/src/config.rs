//! `client.toml`: the client's configuration file.
//!
//! Read from `--config PATH`, else `client.toml` in the user's config
//! directory (see [`trust::config_dir`]); a missing default file is the same as
//! an empty one. Every setting is optional; command-line flags and environment
//! variables override the file, the file overrides the built-in defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tern_core::tls::Fingerprint;

use crate::{trust, ClientError, ClientOptions};

/// The settings of `client.toml`; `None` leaves the default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `host[:port]` of the server.
    pub server: Option<String>,
    /// The user to log in as.
    pub user: Option<String>,
    /// The server certificate's fingerprint (`sha256:...`).
    pub fingerprint: Option<String>,
    /// Use the loopback plaintext port.
    pub plain: Option<bool>,
    /// MultiConnect: connections per session.
    pub connections: Option<usize>,
    /// Ride out lost connections.
    pub secure_connect: Option<bool>,
    /// How long to ride them out.
    pub grace_period_secs: Option<u64>,
    /// Unacknowledged bytes kept in memory for resending.
    pub cache_memory_bytes: Option<usize>,
    /// Then in a spill file, up to this many.
    pub cache_disk_bytes: Option<u64>,
    /// Where the spill file goes.
    pub spill_dir: Option<PathBuf>,
    /// The client certificate (PEM).
    pub client_cert: Option<PathBuf>,
    /// Its key (PEM).
    pub client_key: Option<PathBuf>,
    /// Accept a server that speaks only TLS 1.2.
    pub allow_tls12: Option<bool>,
}

impl ClientConfig {
    /// `client.toml` in the config directory.
    pub fn default_path() -> Option<PathBuf> {
        trust::config_dir().map(|d| d.join("client.toml"))
    }

    /// Reads `path`; or, with no path, the default file if there is one.
    pub fn load(path: Option<&Path>) -> Result<Self, ClientError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => match Self::default_path() {
                Some(p) => (p, false),
                None => return Ok(Self::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default())
            }
            Err(e) => {
                return Err(ClientError::Invalid(format!(
                    "reading {}: {e}",
                    path.display()
                )))
            }
        };
        let cfg: Self = toml::from_str(&text)
            .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?;
        cfg.validate(&path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ClientError> {
        let bad = |what: String| Err(ClientError::Invalid(format!("{}: {what}", path.display())));
        if let Some(fp) = &self.fingerprint {
            if Fingerprint::parse(fp).is_none() {
                return bad(format!("fingerprint {fp:?} is not a SHA-256 fingerprint"));
            }
        }
        if self
            .connections
            .is_some_and(|n| !(1..=crate::options::MAX_CONNECTIONS).contains(&n))
        {
            return bad(format!(
                "connections must be 1..={}",
                crate::options::MAX_CONNECTIONS
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return bad("client_cert and client_key go together: set both or neither".into());
        }
        Ok(())
    }

    /// Options for `server`, `user` and `password` with this file's settings applied.
    pub fn options(&self, server: &str, user: &str, password: &str) -> ClientOptions {
        let mut o = ClientOptions::new(server, user, password);
        o.fingerprint = self.fingerprint.as_deref().and_then(Fingerprint::parse);
        if let Some(v) = self.plain {
            o.plain = v;
        }
        if let Some(v) = self.connections {
            o.connections = v;
        }
        if let Some(v) = self.secure_connect {
            o.secure_connect = v;
        }
        if let Some(v) = self.grace_period_secs {
            o.grace_period = std::time::Duration::from_secs(v);
        }
        if let Some(v) = self.cache_memory_bytes {
            o.cache_memory = v;
        }
        if let Some(v) = self.cache_disk_bytes {
            o.cache_disk = v;
        }
        o.spill_dir = self.spill_dir.clone();
        if let (Some(c), Some(k)) = (&self.client_cert, &self.client_key) {
            o.identity = Some((c.clone(), k.clone()));
        }
        if let Some(v) = self.allow_tls12 {
            o.allow_tls12 = v;
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_example_parses_and_applies() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("README shows client.toml") + 8;
        let example = &readme[start..][..readme[start..].find("```").unwrap()];
        let cfg: ClientConfig = toml::from_str(example).unwrap();
        assert!(cfg.fingerprint.is_some());
        let cfg = ClientConfig {
            fingerprint: None,
            ..cfg
        };
        cfg.validate(Path::new("README.md")).unwrap();
        let o = cfg.options("s", "u", "p");
        assert_eq!(o.connections, 4);
        assert_eq!(o.cache_disk, 1 << 30);
        assert!(o.identity.is_some());
        assert!(o.secure_connect && !o.plain && !o.allow_tls12);
    }

    #[test]
    fn every_setting_overrides_its_default() {
        let cfg: ClientConfig = toml::from_str(
            "plain = true\nconnections = 3\nsecure_connect = false\n\
             grace_period_secs = 77\ncache_memory_bytes = 12345\ncache_disk_bytes = 0\n\
             spill_dir = \"/var/tmp/s\"\nallow_tls12 = true\n",
        )
        .unwrap();
        let def = ClientOptions::new("s", "u", "p");
        let o = cfg.options("s", "u", "p");
        assert!(o.plain && !def.plain);
        assert_eq!(o.connections, 3);
        assert_ne!(o.connections, def.connections);
        assert!(!o.secure_connect && def.secure_connect);
        assert_eq!(o.grace_period, std::time::Duration::from_secs(77));
        assert_eq!((o.cache_memory, o.cache_disk), (12345, 0));
        assert_ne!(o.cache_memory, def.cache_memory);
        assert_eq!(o.spill_dir.as_deref(), Some(Path::new("/var/tmp/s")));
        assert!(o.allow_tls12 && !def.allow_tls12);
    }

    #[test]
    fn unknown_or_bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        for bad in [
            "servr = \"x\"",
            "connections = 0",
            "fingerprint = \"sha256:12\"",
            "client_cert = \"/c\"",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(ClientConfig::load(Some(&path)).is_err(), "{bad}");
        }
        // A file named explicitly must exist.
        assert!(ClientConfig::load(Some(&dir.path().join("none.toml"))).is_err());
    }
}
