//! The one error type of the client library.

use tern_core::wire::ErrorKind;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached or the connection broke.
    #[error("connection to {server}: {reason}")]
    Connect {
        /// The server's address.
        server: String,
        /// What failed.
        reason: String,
    },
    /// The server's certificate is not the one pinned for it.
    #[error("{0}")]
    Untrusted(String),
    /// The server refused the request.
    #[error("{message}")]
    Server {
        /// The class of the refusal.
        kind: ErrorKind,
        /// The server's reason.
        message: String,
    },
    /// The server answered something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An argument was refused before anything was sent.
    #[error("{0}")]
    Invalid(String),
    /// Data read back did not verify.
    #[error("corrupt data from the server: {0}")]
    Corrupt(String),
    /// Local I/O (reading a file to back up, writing a restore).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The call was cancelled ([`Client::cancel`](crate::Client::cancel), or
    /// an abort of the image from another thread).
    #[error("cancelled")]
    Cancelled,
    /// The server's protocol version lacks what the call needs: an older
    /// server. Nothing was sent.
    #[error("the server is too old: {0}")]
    ServerTooOld(#[from] tern_core::wire::Missing),
    /// The call took longer than the client's call time limit.
    #[error("the call took longer than its limit of {} s", .0.as_secs_f64())]
    TimedOut(std::time::Duration),
}

impl ClientError {
    /// The server's error class, if the server refused (or would have:
    /// a server too old for the call is [`ErrorKind::Incompatible`]).
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Server { kind, .. } => Some(*kind),
            ClientError::ServerTooOld(_) => Some(ErrorKind::Incompatible),
            _ => None,
        }
    }
}

impl From<tern_core::NameError> for ClientError {
    fn from(e: tern_core::NameError) -> Self {
        ClientError::Invalid(e.to_string())
    }
}

impl From<ClientError> for std::io::Error {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Io(io) => io,
            other => std::io::Error::other(other),
        }
    }
}
