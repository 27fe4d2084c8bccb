//! A TLS identity (certificate chain and private key) in PEM files: created
//! self-signed on first use, or supplied by the operator. Both ternd and the
//! client use this.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::Fingerprint;

/// Why an identity could not be made, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Generating a key or certificate failed.
    #[error("generating a certificate: {0}")]
    Generate(String),
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Writing a new pair failed; an existing key is never overwritten.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
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

/// A generated identity and its PEM encoding.
pub struct GeneratedIdentity {
    /// The identity.
    pub identity: Identity,
    /// Its certificate, PEM encoded.
    pub cert_pem: String,
    /// Its key, PEM encoded.
    pub key_pem: String,
}

impl Identity {
    /// The fingerprint of the leaf certificate.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.chain.first().map(|c| Fingerprint::of(c.as_ref()))
    }

    /// A new key and a self-signed certificate for `names`.
    pub fn generate(names: Vec<String>) -> Result<GeneratedIdentity, IdentityError> {
        let cert = rcgen::generate_simple_self_signed(names)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Ok(GeneratedIdentity {
            identity: Self {
                chain: vec![cert.cert.der().clone()],
                key: PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            },
            cert_pem: cert.cert.pem(),
            key_pem: cert.signing_key.serialize_pem(),
        })
    }

    /// Generates an identity for `names` and saves it at `cert` and `key`.
    /// The key is created exclusively with mode 0600: an existing key is an
    /// error, never overwritten, so two processes starting at once cannot end
    /// up with one's certificate and the other's key.
    pub fn create(cert: &Path, key: &Path, names: Vec<String>) -> Result<Self, IdentityError> {
        let g = Self::generate(names)?;
        save(&g, cert, key)?;
        Ok(g.identity)
    }

    /// Reads a PEM certificate chain and key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, IdentityError> {
        let bad = |path: &Path, reason: &dyn std::fmt::Display| IdentityError::Unreadable {
            path: path.to_path_buf(),
            reason: reason.to_string(),
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
}

/// Writes a new identity: the key first, created exclusively, then the
/// certificate through a temporary name.
pub fn save(g: &GeneratedIdentity, cert: &Path, key: &Path) -> Result<(), IdentityError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Write { path, source }
    };
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)
        .map_err(write_err(key))?;
    f.write_all(g.key_pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(write_err(key))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    let tmp = cert.with_extension("crt.tmp");
    std::fs::write(&tmp, &g.cert_pem)
        .and_then(|()| std::fs::rename(&tmp, cert))
        .map_err(write_err(cert))
}

/// This machine's host name, if it has one.
pub fn host_name() -> Option<String> {
    let host = std::fs::read_to_string("/etc/hostname").ok()?;
    let host = host.trim();
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_saved_identity_loads_back_the_same_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        let id = Identity::create(&cert, &key, vec!["x".into()]).unwrap();
        let back = Identity::load(&cert, &key).unwrap();
        assert_eq!(back.fingerprint(), id.fingerprint());
        assert_eq!(back.key.secret_der(), id.key.secret_der());
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second create must not overwrite the key under a running process.
        assert!(matches!(
            Identity::create(&cert, &key, vec!["x".into()]),
            Err(IdentityError::Write { .. })
        ));
        assert_eq!(
            Identity::load(&cert, &key).unwrap().fingerprint(),
            id.fingerprint()
        );
    }
}
