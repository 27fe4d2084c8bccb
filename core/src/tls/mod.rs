//! TLS for client and server: identities ([`identity`]), fingerprints,
//! certificate pinning, and the rustls configurations both ends use.
//!
//! tern does not use a CA hierarchy: the client pins the server's certificate by
//! its SHA-256 fingerprint, given explicitly or trusted on first use. Clients
//! present a certificate of their own; the server does not judge it (users log
//! in with a password) but binds sessions to its fingerprint, so a session
//! token is worth nothing on a connection with another client's identity.

mod identity;

use std::fmt;
use std::sync::{Arc, Mutex};

pub use identity::{host_name, save, GeneratedIdentity, Identity, IdentityError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// SHA-256 of a certificate's DER bytes, shown as `sha256:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Parses `sha256:<hex>` or bare hex, with or without `:` between bytes.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        crate::ChunkId::from_hex(&hex.to_ascii_lowercase()).map(|id| Self(id.0))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", crate::ChunkId(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The crypto provider every tern endpoint uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks handshake signatures with tern's crypto provider: the part of
/// certificate verification that both verifiers below share.
#[derive(Debug)]
struct Signatures(Arc<CryptoProvider>);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The server presented another certificate than the one pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("server certificate fingerprint {presented} does not match the pinned {pinned}")]
pub struct PinMismatch {
    /// What the server presented.
    pub presented: Fingerprint,
    /// What the client expected.
    pub pinned: Fingerprint,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// rustls refused the versions, the certificate or the key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn versions(allow_tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static BOTH: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    if allow_tls12 {
        &BOTH
    } else {
        &BOTH[..1]
    }
}

/// The server's configuration: TLS 1.3 (and 1.2 only when allowed); every
/// client presents a certificate, which is not judged but fingerprinted
/// (see [`AnyClientCert`]).
pub fn server_config(
    identity: Identity,
    allow_tls12: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(allow_tls12))?
        .with_client_cert_verifier(AnyClientCert::new())
        .with_single_cert(identity.chain, identity.key)?;
    Ok(Arc::new(config))
}

/// A client's configuration: the server is checked by `pin` alone, and the
/// client presents `identity`.
pub fn client_config(
    pin: Arc<PinnedServer>,
    identity: Identity,
    allow_tls12: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(allow_tls12))?
        .dangerous()
        .with_custom_certificate_verifier(pin)
        .with_client_auth_cert(identity.chain, identity.key)?;
    Ok(Arc::new(config))
}

/// Accepts exactly one server certificate, named by fingerprint; or, with no
/// fingerprint given, any certificate, remembering which (trust on first use).
#[derive(Debug)]
pub struct PinnedServer {
    expected: Option<Fingerprint>,
    seen: Mutex<Option<Fingerprint>>,
    signatures: Signatures,
}

impl PinnedServer {
    /// A verifier for `expected`, or for any certificate (trust on first use).
    pub fn new(expected: Option<Fingerprint>) -> Arc<Self> {
        Arc::new(Self {
            expected,
            seen: Mutex::new(None),
            signatures: Signatures(provider()),
        })
    }

    /// The fingerprint of the last certificate presented.
    pub fn seen(&self) -> Option<Fingerprint> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set when the last certificate presented was not the pinned one: the
    /// typed reason behind a failed handshake.
    pub fn mismatch(&self) -> Option<PinMismatch> {
        match (self.expected, self.seen()) {
            (Some(pinned), Some(presented)) if pinned != presented => {
                Some(PinMismatch { presented, pinned })
            }
            _ => None,
        }
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity.as_ref());
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(got);
        match self.expected {
            Some(pinned) if pinned != got => Err(rustls::Error::General(
                PinMismatch {
                    presented: got,
                    pinned,
                }
                .to_string(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Asks every client for a certificate and accepts any, as long as the client
/// proves it holds the key: what matters is the identity's fingerprint, not who
/// signed it.
#[derive(Debug)]
pub struct AnyClientCert {
    signatures: Signatures,
}

impl AnyClientCert {
    /// The verifier.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            signatures: Signatures(provider()),
        })
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_common_spellings() {
        let fp = Fingerprint::of(b"cert");
        let s = fp.to_string();
        assert_eq!(Fingerprint::parse(&s), Some(fp));
        assert_eq!(
            Fingerprint::parse(&s["sha256:".len()..].to_uppercase()),
            Some(fp)
        );
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(Fingerprint::parse(&colons.join(":")), Some(fp));
        assert_eq!(Fingerprint::parse("sha256:1234"), None);
    }
}
