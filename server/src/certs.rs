//! The server's TLS identity: generated on first start, or supplied by the operator.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tern_core::tls::Fingerprint;

/// Paths of the certificate chain and key, PEM encoded.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    pub fn in_data_dir(data: &Path) -> Self {
        Self {
            cert: data.join("tls").join("server.crt"),
            key: data.join("tls").join("server.key"),
        }
    }
}

/// Creates a self-signed certificate if none exists yet.
pub fn ensure_server_cert(paths: &CertPaths) -> Result<bool> {
    if paths.cert.exists() && paths.key.exists() {
        return Ok(false);
    }
    if paths.cert.exists() != paths.key.exists() {
        bail!(
            "only one of {} and {} exists; supply both or neither",
            paths.cert.display(),
            paths.key.display()
        );
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !host.is_empty() {
        names.push(host);
    }
    let cert =
        rcgen::generate_simple_self_signed(names).context("generating the server certificate")?;
    if let Some(dir) = paths.cert.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(&paths.key, cert.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&paths.cert, cert.cert.pem())
        .with_context(|| format!("writing {}", paths.cert.display()))?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

pub fn load_chain(paths: &CertPaths) -> Result<Vec<CertificateDer<'static>>> {
    let chain: Vec<_> = CertificateDer::pem_file_iter(&paths.cert)
        .with_context(|| format!("reading {}", paths.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", paths.cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", paths.cert.display());
    }
    Ok(chain)
}

pub fn fingerprint(paths: &CertPaths) -> Result<Fingerprint> {
    Ok(Fingerprint::of(load_chain(paths)?[0].as_ref()))
}

/// The rustls server configuration: TLS 1.3, and 1.2 only when allowed; every
/// client presents a certificate (see `tern_core::tls::AnyClientCert`).
pub fn server_config(paths: &CertPaths, allow_tls12: bool) -> Result<Arc<rustls::ServerConfig>> {
    let chain = load_chain(paths)?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .with_context(|| format!("reading {}", paths.key.display()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let config = rustls::ServerConfig::builder_with_provider(tern_core::tls::provider())
        .with_protocol_versions(versions)
        .context("choosing TLS versions")?
        .with_client_cert_verifier(tern_core::tls::AnyClientCert::new())
        .with_single_cert(chain, key)
        .context("loading the server certificate and key")?;
    Ok(Arc::new(config))
}
