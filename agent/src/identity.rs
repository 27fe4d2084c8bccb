//! The client's TLS identity: a key and a self-signed certificate presented to
//! every server. Servers bind sessions to its fingerprint, so a stolen session
//! token cannot be used from another client.
//!
//! By default the pair lives in the user's config directory (`client.crt`,
//! `client.key`) and is created there on first use; an operator may replace
//! it with their own, or name other files.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tern_core::tls::Fingerprint;

use crate::{trust, ClientError};

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// The fingerprint servers bind sessions to.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.chain.first().map(|c| Fingerprint::of(c.as_ref()))
    }

    /// A new key and self-signed certificate.
    pub fn generate() -> Result<Self, ClientError> {
        Self::generate_pem().map(|(id, _)| id)
    }

    /// A new identity and its PEM encoding (certificate, key).
    fn generate_pem() -> Result<(Self, (String, String)), ClientError> {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let name = if host.is_empty() {
            "tern-client".to_string()
        } else {
            format!("tern-client.{host}")
        };
        let cert = rcgen::generate_simple_self_signed(vec![name])
            .map_err(|e| ClientError::Invalid(format!("generating a client certificate: {e}")))?;
        let pem = (cert.cert.pem(), cert.signing_key.serialize_pem());
        let id = Self {
            chain: vec![cert.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
        };
        Ok((id, pem))
    }

    /// Creates a new identity at `cert` and `key`; fails if the key exists.
    pub fn create(cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let (id, pem) = Self::generate_pem()?;
        save(&pem, cert, key)?;
        Ok(id)
    }

    /// Reads a PEM certificate chain and key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let bad = |path: &Path, e: &dyn std::fmt::Display| {
            ClientError::Invalid(format!("client identity {}: {e}", path.display()))
        };
        let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert, &e))?;
        if chain.is_empty() {
            return Err(bad(cert, &"holds no certificate"));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
        Ok(Self { chain, key })
    }

    /// The identity at `cert` and `key` if given (both must exist), else the
    /// default pair in the config directory, created there on first use.
    pub fn load_or_create(paths: Option<(&Path, &Path)>) -> Result<Self, ClientError> {
        if let Some((cert, key)) = paths {
            return Self::load(cert, key);
        }
        let Some((cert, key)) = default_paths() else {
            tracing::warn!(
                "no config directory (set TERN_CONFIG_DIR or HOME): using a client identity for this process only"
            );
            return Self::generate();
        };
        // Another client may be creating the pair right now: the key comes first.
        for _ in 0..20 {
            if cert.exists() || !key.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        match (cert.exists(), key.exists()) {
            (true, true) => Self::load(&cert, &key),
            (false, false) => {
                let (id, pem) = Self::generate_pem()?;
                if let Err(e) = save(&pem, &cert, &key) {
                    tracing::warn!(
                        "cannot save the client identity to {}: {e}; using it for this process only",
                        cert.display()
                    );
                }
                Ok(id)
            }
            _ => Err(ClientError::Invalid(format!(
                "only one of {} and {} exists; supply both or remove the other",
                cert.display(),
                key.display()
            ))),
        }
    }
}

/// Writes a new identity: the key first, created exclusively, so two clients
/// starting at once cannot end up with one's certificate and the other's key.
fn save((cert_pem, key_pem): &(String, String), cert: &Path, key: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)?;
    f.write_all(key_pem.as_bytes())?;
    f.sync_all()?;
    let tmp = cert.with_extension("crt.tmp");
    std::fs::write(&tmp, cert_pem)?;
    std::fs::rename(&tmp, cert)
}

/// `client.crt` and `client.key` in the user's config directory.
pub fn default_paths() -> Option<(PathBuf, PathBuf)> {
    let dir = trust::config_dir()?;
    Some((dir.join("client.crt"), dir.join("client.key")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_identity_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        let (id, pem) = Identity::generate_pem().unwrap();
        save(&pem, &cert, &key).unwrap();
        let back = Identity::load(&cert, &key).unwrap();
        assert_eq!(back.fingerprint(), id.fingerprint());
        assert_eq!(back.key.secret_der(), id.key.secret_der());
        // A second save must not overwrite the key under a running client.
        let (_, other) = Identity::generate_pem().unwrap();
        assert!(save(&other, &cert, &key).is_err());
    }
}
