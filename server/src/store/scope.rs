//! Who asks, as far as the engine cares: the storage groups a request may
//! see, and whose incomplete images it may take over. The service layer's
//! access rules (`service::access`) turn a logged-in user into these; the
//! engine applies them and decides nothing about users.

use tern_core::names::{GroupName, UserName};

/// The storage groups a request may see. A container in a group outside
/// the scope is indistinguishable from none.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every group (admins, and the server's own jobs).
    Every,
    /// These groups only.
    Groups(Vec<GroupName>),
}

impl Scope {
    /// True if containers of `group` are visible.
    pub fn sees(&self, group: &GroupName) -> bool {
        match self {
            Scope::Every => true,
            Scope::Groups(groups) => groups.contains(group),
        }
    }

    /// True if every group is visible, including groups with no container.
    pub fn is_every(&self) -> bool {
        matches!(self, Scope::Every)
    }
}

/// Whose incomplete image a request may resume, remove or take over.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// Anyone's.
    Any,
    /// Only images begun by this user.
    Only(&'a UserName),
}

impl Owner<'_> {
    /// True if an image begun by `owner` is within reach.
    pub fn allows(&self, owner: &UserName) -> bool {
        match self {
            Owner::Any => true,
            Owner::Only(name) => *name == owner,
        }
    }
}
