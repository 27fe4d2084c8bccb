//! Making a cloud group: the bucket is probed, a data key is made and
//! written to the bucket wrapped by the passphrase, and the credentials and
//! the data key are kept in the group's directory (0600) so that a restart
//! needs no human. Whoever reads that file can read the group's objects:
//! docs/store-format.md says so.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::bucket::{Bucket, BucketSpec, Credentials};
use super::sealed::{self, DataKey, SealError};
use crate::store::{hex, StoreError};

/// The key object's name under the group's prefix.
pub const KEY_OBJECT: &str = "tern-key";
const SECRETS_FILE: &str = "cloud.secret";
/// Shorter passphrases are refused: the key object is public to whoever
/// can read the bucket, and argon2id only slows a guess down.
const MIN_PASSPHRASE: usize = 12;

/// A cloud group's passphrase, never printed.
pub struct GroupPassphrase(pub String);

impl std::fmt::Debug for GroupPassphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupPassphrase(..)")
    }
}

/// What a restart needs and a human should not have to give again.
#[derive(Serialize, Deserialize)]
pub struct CloudSecrets {
    pub credentials: Credentials,
    data_key: String,
}

impl CloudSecrets {
    pub fn load(dir: &Path) -> io::Result<Self> {
        let path = dir.join(SECRETS_FILE);
        let bytes = std::fs::read(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    fn save(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(SECRETS_FILE))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        crate::store::pack::sync_dir(dir)
    }

    pub fn data_key(&self) -> io::Result<DataKey> {
        let bytes = self.data_key.as_bytes();
        let mut k = [0u8; 32];
        let ok = bytes.len() == 64
            && k.iter_mut().enumerate().all(|(i, b)| {
                std::str::from_utf8(&bytes[2 * i..2 * i + 2])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .map(|v| *b = v)
                    .is_some()
            });
        if !ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the cloud group's data key is not 64 hex digits",
            ));
        }
        Ok(DataKey(k))
    }
}

/// Opens the key object of `bucket` with `passphrase`, saying which of
/// "no group there" and "wrong passphrase" it is.
pub fn open_key(bucket: &Bucket, passphrase: &GroupPassphrase) -> Result<DataKey, StoreError> {
    let at = bucket.spec().location();
    let object = match bucket.get(KEY_OBJECT) {
        Err(super::bucket::BucketError::NotFound { .. }) => {
            return Err(StoreError::NotFound(format!(
                "{at} holds no tern storage group (no {KEY_OBJECT} object)"
            )))
        }
        other => other?,
    };
    sealed::unwrap_key(&object, &passphrase.0).map_err(|e| match e {
        SealError::WrongPassphrase => StoreError::Invalid(format!(
            "the passphrase does not open the key of the storage group at {at}"
        )),
        e => StoreError::Corrupt(format!("{at}/{KEY_OBJECT}: {e}")),
    })
}

/// Makes the local files of a group rebuilt from its bucket in `dir`: the
/// secrets and a journal naming its live objects as packs `(number, name,
/// plaintext length)`.
pub fn adopt(
    dir: &Path,
    credentials: Credentials,
    key: &DataKey,
    packs: &[(u64, [u8; 16], u64)],
) -> io::Result<()> {
    CloudSecrets {
        credentials,
        data_key: hex(&key.0),
    }
    .save(dir)?;
    let mut journal = super::journal::Journal::open(&dir.join("objects"))?;
    for (number, name, plain_len) in packs {
        journal.uploaded(*number, *name, *plain_len)?;
    }
    Ok(())
}

/// Probes `spec`'s bucket with `credentials`, writes a new data key there
/// wrapped by `passphrase`, and keeps the secrets in `dir`. A prefix that
/// already holds a group's key is refused (and says whether the
/// passphrase opens it).
pub fn create(
    dir: &Path,
    spec: &BucketSpec,
    credentials: Credentials,
    passphrase: &GroupPassphrase,
) -> Result<(), StoreError> {
    if passphrase.0.chars().count() < MIN_PASSPHRASE {
        return Err(StoreError::Invalid(format!(
            "the group passphrase must be at least {MIN_PASSPHRASE} characters"
        )));
    }
    let at = spec.location();
    let bucket =
        Bucket::new(spec.clone(), &credentials).map_err(|e| StoreError::Invalid(e.to_string()))?;
    bucket.probe().map_err(StoreError::Invalid)?;
    if bucket.size(KEY_OBJECT)?.is_some() {
        let object = bucket.get(KEY_OBJECT)?;
        return Err(match sealed::unwrap_key(&object, &passphrase.0) {
            Ok(_) => StoreError::AlreadyExists(format!(
                "{at} already holds a tern storage group (the passphrase opens its key): \
                 choose another --prefix, or rebuild that group with `ternd group recover`"
            )),
            Err(SealError::WrongPassphrase) => StoreError::Invalid(format!(
                "{at} already holds a tern storage group, and this passphrase does not open \
                 its key: wrong passphrase, or choose another --prefix"
            )),
            Err(e) => StoreError::Invalid(format!("{at}/{KEY_OBJECT}: {e}")),
        });
    }
    let key = DataKey(sealed::random().map_err(io::Error::other)?);
    let wrapped = sealed::wrap_key(&key, &passphrase.0).map_err(io::Error::other)?;
    bucket.put(KEY_OBJECT, wrapped)?;
    CloudSecrets {
        credentials,
        data_key: hex(&key.0),
    }
    .save(dir)?;
    Ok(())
}
