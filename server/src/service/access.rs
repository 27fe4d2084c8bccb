//! Who may do what: the one place that decides.
//!
//! A request names what it is about to do as an [`Action`] and asks
//! [`User::may`]; data a user reaches by name (containers, images, copies)
//! is filtered by the user's [`Scope`], which the engine applies. The
//! engine itself knows no users.

use tern_core::names::{GroupName, UserName};

use crate::store::{Owner, Scope, StoreError};

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct User {
    pub name: UserName,
    pub admin: bool,
    pub groups: Vec<GroupName>,
    /// Groups whose replica containers the user may replicate into.
    pub replicate_into: Vec<GroupName>,
    /// The shaping group the user's backups and restores draw from.
    pub shaping: Option<String>,
}

/// Something a user asks to do that not every user may.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Add a user.
    AddUser,
    /// Set this user's password.
    SetPassword(&'a UserName),
    /// Change a user's groups, admin right or shaping group.
    ChangeUserRights,
    /// Use the containers of a storage group.
    UseGroup(&'a GroupName),
    /// Create a storage group that does not exist yet.
    CreateGroup(&'a GroupName),
    /// Turn a replica container into an ordinary one.
    PromoteContainer,
    /// Set or end a container's replication policy.
    SetReplicationPolicy,
    /// Link a container to the cloud tier, or unlink it.
    SetTierPolicy,
    /// Add, change or remove replication partners.
    ChangePartners(&'static str),
    /// List replication partners.
    ListPartners,
    /// Set, list or remove shaping groups.
    Shaping(&'static str),
    /// Write replicas into this storage group's replica containers.
    ReplicateInto(&'a GroupName),
    /// Act as a replication source's user on this server (ask for import
    /// states, abort replicas): any replicate-into right will do.
    ActAsSource,
    /// Drop the partial replica a copy left on this (target) server.
    DropPartialReplicas,
    /// Read the audit log.
    ReadAudit,
    /// Set, lengthen or remove a container's retention lock.
    LockContainer,
    /// Delete an image a governance retention lock holds.
    BypassLock,
    /// Add or remove storage groups.
    ManageGroups(&'static str),
}

impl User {
    /// Allowed, or `Denied` saying why.
    pub fn may(&self, action: Action<'_>) -> Result<(), StoreError> {
        let allowed = match action {
            Action::SetPassword(whose) => self.admin || self.name == *whose,
            Action::UseGroup(g) => self.may_use(g),
            Action::ReplicateInto(g) => self.may_replicate_into(g),
            Action::ActAsSource => self.admin || !self.replicate_into.is_empty(),
            Action::AddUser
            | Action::ChangeUserRights
            | Action::CreateGroup(_)
            | Action::PromoteContainer
            | Action::SetReplicationPolicy
            | Action::SetTierPolicy
            | Action::ChangePartners(_)
            | Action::ListPartners
            | Action::Shaping(_)
            | Action::DropPartialReplicas
            | Action::ReadAudit
            | Action::LockContainer
            | Action::BypassLock
            | Action::ManageGroups(_) => self.admin,
        };
        if allowed {
            return Ok(());
        }
        Err(StoreError::Denied(self.why_not(action)))
    }

    fn why_not(&self, action: Action<'_>) -> String {
        let name = &self.name;
        match action {
            Action::AddUser => "only an admin may add users".into(),
            Action::SetPassword(_) => "only an admin may set another user's password".into(),
            Action::ChangeUserRights => "only an admin may change a user's rights".into(),
            Action::UseGroup(g) => format!("user {name} may not use storage group {g}"),
            Action::CreateGroup(g) => {
                format!("storage group {g} does not exist, and only an admin may create it")
            }
            Action::PromoteContainer => "only an admin may promote a replica container".into(),
            Action::SetReplicationPolicy => "only an admin may set a replication policy".into(),
            Action::SetTierPolicy => "only an admin may set a cloud tier policy".into(),
            Action::ChangePartners(what) => {
                format!("only an admin may {what} replication partners")
            }
            Action::ListPartners => "only an admin may list replication partners".into(),
            Action::Shaping(what) => format!("only an admin may {what} shaping groups"),
            Action::ReplicateInto(g) => format!(
                "user {name} may not replicate into storage group {g} \
                 (tern user set {name} --replicate-into {g})"
            ),
            Action::ActAsSource => format!("user {name} replicates into no storage group"),
            Action::DropPartialReplicas => "only an admin may drop partial replicas".into(),
            Action::ReadAudit => "only an admin may read the audit log".into(),
            Action::LockContainer => "only an admin may change a retention lock".into(),
            Action::BypassLock => "only an admin may bypass a governance retention lock".into(),
            Action::ManageGroups(what) => format!("only an admin may {what} storage groups"),
        }
    }

    /// True if the user may see and use storage group `group`.
    pub fn may_use(&self, group: &GroupName) -> bool {
        self.admin || self.groups.contains(group)
    }

    /// True if the user may write replicas into `group`'s replica containers.
    pub fn may_replicate_into(&self, group: &GroupName) -> bool {
        self.admin || self.replicate_into.contains(group)
    }

    /// The storage groups the user's requests see.
    pub fn scope(&self) -> Scope {
        if self.admin {
            Scope::Every
        } else {
            Scope::Groups(self.groups.clone())
        }
    }

    /// The groups a replication user reaches containers in: its own and
    /// those it replicates into (a source names replica containers it may
    /// only write).
    pub fn replica_scope(&self) -> Scope {
        if self.admin {
            return Scope::Every;
        }
        let mut groups = self.groups.clone();
        groups.extend(self.replicate_into.iter().cloned());
        Scope::Groups(groups)
    }

    /// The groups whose replicas a replication source acting as this user
    /// may abort or ask about: those it replicates into.
    pub fn replicate_scope(&self) -> Scope {
        if self.admin {
            return Scope::Every;
        }
        Scope::Groups(self.replicate_into.clone())
    }

    /// Whose incomplete images the user may resume or remove: their own, or
    /// anyone's for an admin.
    pub fn owner(&self) -> Owner<'_> {
        if self.admin {
            Owner::Any
        } else {
            Owner::Only(&self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(admin: bool) -> User {
        User {
            name: UserName::new("u").unwrap(),
            admin,
            groups: vec![GroupName::new("a").unwrap()],
            replicate_into: vec![GroupName::new("r").unwrap()],
            shaping: None,
        }
    }

    #[test]
    fn users_reach_their_groups_and_admins_every_one() {
        let (a, r, b) = (
            GroupName::new("a").unwrap(),
            GroupName::new("r").unwrap(),
            GroupName::new("b").unwrap(),
        );
        let u = user(false);
        assert!(u.may(Action::UseGroup(&a)).is_ok());
        assert!(u.may(Action::UseGroup(&r)).is_err());
        assert!(u.may(Action::ReplicateInto(&r)).is_ok());
        assert!(u.may(Action::ReplicateInto(&a)).is_err());
        assert!(u.scope().sees(&a) && !u.scope().sees(&r));
        assert!(u.replica_scope().sees(&r) && !u.replica_scope().sees(&b));
        assert!(u.may(Action::PromoteContainer).is_err());
        assert!(u.may(Action::SetPassword(&u.name)).is_ok());
        let admin = user(true);
        assert!(admin.may(Action::PromoteContainer).is_ok());
        assert!(admin.scope().sees(&b) && admin.scope().is_every());
        let other = UserName::new("v").unwrap();
        assert!(matches!(u.owner(), Owner::Only(_)) && !u.owner().allows(&other));
        assert!(admin.owner().allows(&other));
    }
}
