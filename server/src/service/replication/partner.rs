//! Reaching a partner: a `tern_agent` client that presents this server's
//! certificate, pins the partner's, logs in as the partner user and checks
//! that the partner speaks a protocol version with replication.

use std::path::PathBuf;
use std::time::Duration;

use tern_agent::{Client, ClientError, ClientOptions};
use tern_core::tls::Fingerprint;
use tern_core::wire::{ErrorKind, Feature};

use super::PartnerRecord;

/// How long a copy's session rides out an outage before the attempt fails
/// (and the job retries with a new session).
const SESSION_GRACE: Duration = Duration::from_secs(60);
/// The longest one call to a partner may take.
const CALL_LIMIT: Duration = Duration::from_secs(300);
/// The longest a partner may take to say Welcome, and to answer the login.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(15);

/// What this server presents to partners.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// This server's id: its certificate's fingerprint.
    pub server_id: String,
}

/// Connects to the first address of `partner` that answers (the error of
/// the last one if none does); the others are its session's other paths,
/// taken when the one in use stops answering.
pub fn connect(partner: &PartnerRecord, me: &LocalIdentity) -> Result<Client, ClientError> {
    let pin = Fingerprint::parse(&partner.fingerprint).ok_or_else(|| {
        ClientError::Invalid(format!(
            "{:?} is not a certificate fingerprint",
            partner.fingerprint
        ))
    })?;
    let Some((first, others)) = partner.addresses.split_first() else {
        return Err(ClientError::Invalid("the partner has no address".into()));
    };
    let mut opts = ClientOptions::new(first, partner.user.as_str(), &partner.password);
    opts.alternates = others.to_vec();
    opts.fingerprint = Some(pin);
    opts.remember_servers = false;
    opts.identity = Some((me.cert.clone(), me.key.clone()));
    opts.grace_period = SESSION_GRACE;
    opts.call_timeout = Some(CALL_LIMIT);
    opts.handshake_timeout = HANDSHAKE_LIMIT;
    opts.connections = partner.connections();
    let client = Client::connect(&opts)?;
    check_version(&client)?;
    Ok(client)
}

fn check_version(client: &Client) -> Result<(), ClientError> {
    let theirs = client.protocol_version();
    Feature::Replication.check(theirs, "copying to this partner")?;
    Ok(())
}

/// True if an attempt that failed this way may succeed later.
/// A failed dial: the partner did not answer (refused, silent, cut).
pub fn is_unreachable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connect { .. } | ClientError::Io(_) | ClientError::TimedOut(_)
    )
}

pub fn is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::Io(_) | ClientError::TimedOut(_) => true,
        ClientError::Server { kind, .. } => matches!(
            kind,
            ErrorKind::SessionExpired | ErrorKind::Busy | ErrorKind::Internal | ErrorKind::NoSpace
        ),
        _ => false,
    }
}

/// The class of a partner's failure, for the client that asked.
pub(super) fn client_kind(e: &ClientError) -> ErrorKind {
    match e {
        ClientError::Server { kind, .. } => *kind,
        ClientError::ServerTooOld(_) => ErrorKind::Incompatible,
        ClientError::Untrusted(_) => ErrorKind::Denied,
        ClientError::Invalid(_) => ErrorKind::Invalid,
        _ => ErrorKind::Internal,
    }
}
