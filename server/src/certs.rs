//! The server's TLS identity: generated on first start, or supplied by the operator.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tern_core::tls::{self, Fingerprint, Identity};

/// Paths of the certificate chain and key, PEM encoded.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a self-signed certificate if none exists yet; true if it did.
pub fn ensure_server_cert(paths: &CertPaths) -> Result<bool> {
    match (paths.cert.exists(), paths.key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        _ => bail!(
            "only one of {} and {} exists; supply both or neither",
            paths.cert.display(),
            paths.key.display()
        ),
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(tls::host_name());
    Identity::create(&paths.cert, &paths.key, names).context("creating the server certificate")?;
    Ok(true)
}

fn load(paths: &CertPaths) -> Result<Identity> {
    Ok(Identity::load(&paths.cert, &paths.key)?)
}

pub fn fingerprint(paths: &CertPaths) -> Result<Fingerprint> {
    load(paths)?
        .fingerprint()
        .context("the server certificate file holds no certificate")
}

/// The rustls server configuration (see `tern_core::tls::server_config`).
pub fn server_config(paths: &CertPaths, allow_tls12: bool) -> Result<Arc<rustls::ServerConfig>> {
    Ok(tls::server_config(load(paths)?, allow_tls12)?)
}
