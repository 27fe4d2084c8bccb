//! Shaping groups through a client (protocol 4): bandwidth limits with
//! weekly windows that partners' copies and users' backups and restores
//! draw from (admins only).

use tern_core::wire::{Msg, ShapingInfo, ShapingSettings};

use crate::client::unexpected;
use crate::{Client, ClientError};

impl Client {
    /// Creates or replaces a shaping group; running jobs follow within 2 s.
    pub fn shaping_set(&self, name: &str, settings: ShapingSettings) -> Result<(), ClientError> {
        match self
            .ask(Msg::ShapingSet {
                name: name.into(),
                settings,
            })?
            .env
            .msg
        {
            Msg::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Every shaping group: its settings, the rate and window in force,
    /// its throughput over the last 10 s.
    pub fn shaping_list(&self) -> Result<Vec<ShapingInfo>, ClientError> {
        match self.ask(Msg::ShapingList)?.env.msg {
            Msg::ShapingGroups { list } => Ok(list),
            other => Err(unexpected(other)),
        }
    }

    /// Removes a shaping group no partner or user draws from.
    pub fn shaping_remove(&self, name: &str) -> Result<(), ClientError> {
        match self.ask(Msg::ShapingRemove { name: name.into() })?.env.msg {
            Msg::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}
