//! Users through a client: add them, set their passwords, storage groups,
//! admin right, shaping group and the groups they may replicate into.

use tern_core::names::{GroupName, UserName};
use tern_core::wire::{Msg, Password};

use crate::{Client, ClientError};

impl Client {
    /// Adds a user (admins only) with access to the default storage group.
    pub fn user_add(&self, name: &str, password: &str, admin: bool) -> Result<(), ClientError> {
        let name = UserName::new(name)?;
        if password.is_empty() {
            return Err(ClientError::Invalid("the password is empty".into()));
        }
        self.expect_ok(Msg::UserAdd {
            name,
            password: Password::new(password),
            admin,
        })
    }

    /// Sets a user's password (an admin may set anyone's, a user their own).
    pub fn user_passwd(&self, name: &str, password: &str) -> Result<(), ClientError> {
        let name = UserName::new(name)?;
        if password.is_empty() {
            return Err(ClientError::Invalid("the password is empty".into()));
        }
        self.expect_ok(Msg::UserPasswd {
            name,
            password: Password::new(password),
        })
    }

    /// Changes a user's storage groups (replacing the list) and admin right,
    /// each only if given (admins only).
    pub fn user_set(
        &self,
        name: &str,
        groups: Option<&[&str]>,
        admin: Option<bool>,
    ) -> Result<(), ClientError> {
        let name = UserName::new(name)?;
        let groups = groups
            .map(|g| {
                g.iter()
                    .map(|g| GroupName::new(*g))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        self.expect_ok(Msg::UserSet {
            name,
            groups,
            admin,
            replicate_into: None,
            shaping: None,
        })
    }

    /// Puts a user's backups and restores into a shaping group (`None`:
    /// unshaped); it applies from their next login (admins only).
    pub fn user_set_shaping(&self, name: &str, group: Option<&str>) -> Result<(), ClientError> {
        // An older server would ignore the field and say Ok: the
        // request's feature check refuses before it is sent.
        self.expect_ok(Msg::UserSet {
            name: UserName::new(name)?,
            groups: None,
            admin: None,
            replicate_into: None,
            shaping: Some(group.unwrap_or_default().to_string()),
        })
    }

    /// Sets the storage groups whose replica containers a user may
    /// replicate into (replacing the list; admins only). A source server
    /// logs in as such a user to copy images here.
    pub fn user_set_replicate_into(&self, name: &str, groups: &[&str]) -> Result<(), ClientError> {
        let groups = groups
            .iter()
            .map(|g| GroupName::new(*g))
            .collect::<Result<Vec<_>, _>>()?;
        self.expect_ok(Msg::UserSet {
            name: UserName::new(name)?,
            groups: None,
            admin: None,
            replicate_into: Some(groups),
            shaping: None,
        })
    }
}
