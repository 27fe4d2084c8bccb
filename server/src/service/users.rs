//! Users: who may log in (argon2id password hashes), and what they may
//! use. Their table lives in the catalog beside the engine's (see
//! `store::tables`); what a user may do is decided in [`super::access`].

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use redb::{ReadableTable, TableDefinition};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tern_core::names::{GroupName, UserName};

use super::access::User;
use super::shaping::ShapingTable;
use crate::store::tables::{self, decode, encode};
use crate::store::{Result, Store, StoreError};

/// User name -> [`UserRecord`].
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// PHC string of an argon2id hash.
    pub password_hash: String,
    pub admin: bool,
    /// Storage groups the user may use; admins may use all.
    pub groups: Vec<GroupName>,
    /// Storage groups whose replica containers the user may replicate into.
    #[serde(default)]
    pub replicate_into: Vec<GroupName>,
    /// The shaping group the user's backups and restores draw from.
    #[serde(default)]
    pub shaping: Option<String>,
}

/// The users of a store.
pub struct Users<'s> {
    store: &'s Store,
}

impl<'s> Users<'s> {
    pub fn new(store: &'s Store) -> Self {
        Self { store }
    }

    fn record(&self, name: &UserName) -> Result<Option<UserRecord>> {
        let tx = self.store.tables().read()?;
        let Some(users) = tables::open(&tx, USERS)? else {
            return Ok(None);
        };
        let found = users.get(name.as_str())?;
        found.map(|v| decode("user", v.value())).transpose()
    }

    /// Changes a user's record in one transaction; `change` sees every other
    /// user (to keep invariants such as "one admin remains") and edits this one.
    fn update(
        &self,
        name: &UserName,
        change: impl FnOnce(&mut UserRecord, &[UserRecord]) -> Result<()>,
    ) -> Result<()> {
        self.store.tables().write(|tx| {
            let mut users = tx.open_table(USERS)?;
            let mut others = Vec::new();
            for row in users.iter()? {
                let (k, v) = row?;
                if k.value() != name.as_str() {
                    others.push(decode::<UserRecord>("user", v.value())?);
                }
            }
            let mut rec: UserRecord = match users.get(name.as_str())? {
                Some(v) => decode("user", v.value())?,
                None => return Err(StoreError::NotFound(format!("user {name} does not exist"))),
            };
            change(&mut rec, &others)?;
            users.insert(name.as_str(), encode(&rec)?.as_slice())?;
            Ok(())
        })
    }

    /// Adds a user; `AlreadyExists` if there is one of that name (adding
    /// never changes an existing user's password, groups or rights).
    pub fn add(
        &self,
        name: &UserName,
        password: &str,
        admin: bool,
        groups: Vec<GroupName>,
    ) -> Result<()> {
        for g in &groups {
            self.store.ensure_group(g)?;
        }
        let rec = UserRecord {
            password_hash: hash_password(checked(password)?)?,
            admin,
            groups,
            replicate_into: Vec::new(),
            shaping: None,
        };
        self.store.tables().write(|tx| {
            let mut users = tx.open_table(USERS)?;
            if users.get(name.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "user {name} already exists"
                )));
            }
            users.insert(name.as_str(), encode(&rec)?.as_slice())?;
            Ok(())
        })
    }

    /// Sets a user's password; their groups and rights stay.
    pub fn passwd(&self, name: &UserName, password: &str) -> Result<()> {
        let hash = hash_password(checked(password)?)?;
        self.update(name, |rec, _| {
            rec.password_hash = hash;
            Ok(())
        })
    }

    /// Changes a user's storage groups, admin right and the groups they
    /// may replicate into (each if given). The last admin cannot be
    /// demoted: the server would have no one to run it.
    pub fn update_rights(
        &self,
        name: &UserName,
        groups: Option<Vec<GroupName>>,
        admin: Option<bool>,
        replicate_into: Option<Vec<GroupName>>,
        shaping: Option<String>,
    ) -> Result<()> {
        for g in groups.iter().chain(replicate_into.iter()).flatten() {
            self.store.ensure_group(g)?;
        }
        let shaping = shaping.map(|s| (!s.is_empty()).then_some(s));
        if let Some(Some(g)) = &shaping {
            ShapingTable(self.store.tables()).group(g)?;
        }
        self.update(name, |rec, others| {
            if admin == Some(false) && rec.admin && !others.iter().any(|o| o.admin) {
                return Err(StoreError::Invalid(format!(
                    "{name} is the only admin; make another user admin first"
                )));
            }
            if let Some(groups) = groups {
                rec.groups = groups;
            }
            if let Some(admin) = admin {
                rec.admin = admin;
            }
            if let Some(into) = replicate_into {
                rec.replicate_into = into;
            }
            if let Some(s) = shaping {
                rec.shaping = s;
            }
            Ok(())
        })
    }

    /// True if `name` is a user that may replicate into this server (a
    /// partner's login).
    pub fn replicates_here(&self, name: &UserName) -> Result<bool> {
        Ok(self
            .record(name)?
            .is_some_and(|rec| !rec.replicate_into.is_empty()))
    }

    /// The users granted storage group `group` (to use, or to replicate into).
    pub fn granted(&self, group: &GroupName) -> Result<Vec<String>> {
        let tx = self.store.tables().read()?;
        let Some(users) = tables::open(&tx, USERS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in users.iter()? {
            let (k, v) = row?;
            let rec: UserRecord = decode("user", v.value())?;
            if rec.groups.contains(group) || rec.replicate_into.contains(group) {
                out.push(k.value().to_string());
            }
        }
        Ok(out)
    }

    pub fn exists(&self, name: &UserName) -> Result<bool> {
        Ok(self.record(name)?.is_some())
    }

    /// Checks a password; the same error for an unknown user and a wrong password.
    pub fn authenticate(&self, name: &UserName, password: &str) -> Result<User> {
        let refused = || StoreError::Denied("wrong user name or password".into());
        let Some(rec) = self.record(name)? else {
            // Spend the same time as a real check so names cannot be probed.
            let _ = verify_password("x", dummy_hash());
            return Err(refused());
        };
        if !verify_password(password, &rec.password_hash) {
            return Err(refused());
        }
        Ok(User {
            name: name.clone(),
            admin: rec.admin,
            groups: rec.groups,
            replicate_into: rec.replicate_into,
            shaping: rec.shaping,
        })
    }
}

/// Hashes a password into a PHC string with a random salt.
fn checked(password: &str) -> Result<&str> {
    if password.is_empty() {
        return Err(StoreError::Invalid("the password is empty".into()));
    }
    Ok(password)
}

fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| no_random())?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Invalid(format!("hashing the password: {e}")))
}

fn no_random() -> StoreError {
    StoreError::Io(std::io::Error::other("the system random source failed"))
}

/// True if `password` matches the PHC string `hash`.
fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to check against when the user does not exist, so both cases take as long.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password("not a password").unwrap_or_default())
}

/// A random password for the first admin: 20 characters from an unambiguous alphabet.
pub fn generate_password() -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| no_random())?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let h = hash_password("secret").unwrap();
        assert!(verify_password("secret", &h));
        assert!(!verify_password("Secret", &h));
        assert!(!verify_password("secret", "garbage"));
        assert_eq!(generate_password().unwrap().len(), 20);
    }
}
