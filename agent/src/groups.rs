//! Storage groups through a client (protocol 8): add one on a volume of
//! its own, list what each holds and has left, remove an empty one.

use tern_core::names::GroupName;
use tern_core::wire::{GroupInfo, GroupSettings, Msg};

use crate::client::unexpected;
use crate::{Client, ClientError};

impl Client {
    /// Creates storage group `name` where `settings` say (admins only).
    pub fn group_add(&self, name: &GroupName, settings: GroupSettings) -> Result<(), ClientError> {
        let msg = Msg::GroupAdd {
            name: name.clone(),
            settings,
        };
        match self.ask(msg)?.env.msg {
            Msg::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The storage groups the user may use (an admin: all), with what each
    /// holds and the space of the filesystem it is on.
    pub fn group_list(&self) -> Result<Vec<GroupInfo>, ClientError> {
        match self.ask(Msg::GroupList)?.env.msg {
            Msg::Groups { list } => Ok(list),
            other => Err(unexpected(other)),
        }
    }

    /// Removes an empty storage group (admins only).
    pub fn group_remove(&self, name: &GroupName) -> Result<(), ClientError> {
        match self.ask(Msg::GroupRemove { name: name.clone() })?.env.msg {
            Msg::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}
