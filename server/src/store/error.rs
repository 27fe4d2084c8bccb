//! Why a store operation failed.
//!
//! Rules: an error that came from the operating system or from redb keeps that
//! error as its source, and is classified by what it is (errno `ENOSPC`, redb's
//! `DatabaseAlreadyOpen`), never by its message text. The wire sees only
//! [`StoreError::kind`] and the display text.

use std::io;

use tern_core::wire::ErrorKind;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The container, image or user does not exist (or is not visible to the user).
    #[error("{0}")]
    NotFound(String),
    /// A container, image or user of that name exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The user may not do this.
    #[error("{0}")]
    Denied(String),
    /// The request itself is wrong (a bad setting, an unannounced chunk).
    #[error("{0}")]
    Invalid(String),
    /// A retention lock forbids it.
    #[error("{0}")]
    Locked(String),
    /// A limit such as the stream limit is reached; trying later can help.
    #[error("{0}")]
    Busy(String),
    /// Stored data failed verification or could not be decoded.
    #[error("store damage: {0}")]
    Corrupt(String),
    /// A full pack could not be made durable: further commits are refused
    /// until ternd restarts and recovery has looked at the pack.
    #[error("{0}")]
    NotDurable(String),
    /// The store was opened read-only (by fsck, or on a disk too full to start
    /// otherwise): nothing may change.
    #[error("the store is read-only: {0}")]
    ReadOnly(&'static str),
    /// Free space fell below the reserve kept for deleting images and GC.
    #[error(
        "the store is full: {free} bytes are free and the last {reserve} stay free so that \
         images can be deleted and gc can run (delete images with `tern rm`, then run `ternd gc`)"
    )]
    Full { free: u64, reserve: u64 },
    /// Start-up recovery found damage it may not cut away.
    #[error("{0}")]
    NeedsRepair(String),
    /// The data directory's catalog is open in another process.
    #[error("the data directory is in use by a running ternd")]
    InUse,
    /// A file operation failed (classified by [`StoreError::is_no_space`]).
    #[error("{}", describe_io("store I/O", .0))]
    Io(#[from] io::Error),
    /// The catalog (redb) failed.
    #[error("{}", describe_catalog(.0))]
    Catalog(#[source] redb::Error),
}

/// A store result.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<super::cloud::bucket::BucketError> for StoreError {
    /// A failed bucket request is the store's I/O failing.
    fn from(e: super::cloud::bucket::BucketError) -> Self {
        StoreError::Io(e.into())
    }
}

impl StoreError {
    /// What the client is told.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            StoreError::Denied(_) => ErrorKind::Denied,
            StoreError::Invalid(_) => ErrorKind::Invalid,
            StoreError::Locked(_) => ErrorKind::Locked,
            StoreError::Busy(_) | StoreError::InUse => ErrorKind::Busy,
            StoreError::Corrupt(_) | StoreError::NeedsRepair(_) => ErrorKind::Corrupt,
            StoreError::ReadOnly(_) | StoreError::Full { .. } => ErrorKind::NoSpace,
            _ if self.is_no_space() => ErrorKind::NoSpace,
            StoreError::NotDurable(_) | StoreError::Io(_) | StoreError::Catalog(_) => {
                ErrorKind::Internal
            }
        }
    }

    /// True if the filesystem (or the user's quota) is full.
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::Io(e) => io_is_no_space(e),
            StoreError::Catalog(redb::Error::Io(e)) => io_is_no_space(e),
            StoreError::Full { .. } => true,
            _ => false,
        }
    }
}

fn describe_io(what: &str, e: &io::Error) -> String {
    if io_is_no_space(e) {
        format!("no space left in the store: {e}")
    } else {
        format!("{what}: {e}")
    }
}

fn describe_catalog(e: &redb::Error) -> String {
    match e {
        redb::Error::Io(io) => describe_io("catalog I/O", io),
        other => format!("catalog: {other}"),
    }
}

fn io_is_no_space(e: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::DatabaseAlreadyOpen => StoreError::InUse,
            other => StoreError::Catalog(other),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                redb::Error::from(e).into()
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_classified_by_errno_not_by_text() {
        let enospc = StoreError::from(io::Error::from_raw_os_error(28));
        assert!(enospc.is_no_space());
        assert_eq!(enospc.kind(), ErrorKind::NoSpace);
        let through_redb =
            StoreError::from(redb::StorageError::Io(io::Error::from_raw_os_error(122)));
        assert_eq!(through_redb.kind(), ErrorKind::NoSpace);
        let worded = StoreError::from(io::Error::other("No space left on device"));
        assert_eq!(worded.kind(), ErrorKind::Internal);
        assert!(matches!(
            StoreError::from(redb::DatabaseError::DatabaseAlreadyOpen),
            StoreError::InUse
        ));
    }
}
