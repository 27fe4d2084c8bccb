//! The client's TLS identity: a key and a self-signed certificate presented to
//! every server. Servers bind sessions to its fingerprint, so a stolen session
//! token cannot be used from another client.
//!
//! By default the pair lives in the user's config directory (`client.crt`,
//! `client.key`) and is created there on first use; an operator may replace
//! it with their own, or name other files.

use std::path::{Path, PathBuf};

pub use tern_core::tls::Identity;
use tern_core::tls::{self, IdentityError};

use crate::{trust, ClientError};

impl From<IdentityError> for ClientError {
    fn from(e: IdentityError) -> Self {
        ClientError::Invalid(format!("client identity: {e}"))
    }
}

fn names() -> Vec<String> {
    vec![match tls::host_name() {
        Some(host) => format!("tern-client.{host}"),
        None => "tern-client".to_string(),
    }]
}

/// Creates a new identity at `cert` and `key`; fails if the key exists.
pub fn create(cert: &Path, key: &Path) -> Result<Identity, ClientError> {
    Ok(Identity::create(cert, key, names())?)
}

/// The identity at `cert` and `key` if given (both must exist), else the
/// default pair in the config directory, created there on first use.
pub fn load_or_create(paths: Option<(&Path, &Path)>) -> Result<Identity, ClientError> {
    if let Some((cert, key)) = paths {
        return Ok(Identity::load(cert, key)?);
    }
    let Some((cert, key)) = default_paths() else {
        tracing::warn!(
            "no config directory (set TERN_CONFIG_DIR or HOME): using a client identity for this process only"
        );
        return Ok(Identity::generate(names())?.identity);
    };
    // Another client may be creating the pair right now: the key comes first.
    for _ in 0..20 {
        if cert.exists() || !key.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(Identity::load(&cert, &key)?),
        (false, false) => {
            let g = Identity::generate(names())?;
            if let Err(e) = tls::save(&g, &cert, &key) {
                tracing::warn!(
                    "cannot save the client identity: {e}; using it for this process only"
                );
            }
            Ok(g.identity)
        }
        _ => Err(ClientError::Invalid(format!(
            "only one of {} and {} exists; supply both or remove the other",
            cert.display(),
            key.display()
        ))),
    }
}

/// `client.crt` and `client.key` in the user's config directory.
pub fn default_paths() -> Option<(PathBuf, PathBuf)> {
    let dir = trust::config_dir()?;
    Some((dir.join("client.crt"), dir.join("client.key")))
}
