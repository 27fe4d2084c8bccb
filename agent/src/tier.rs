//! The cloud tier through a client (protocol 9): link a container to a
//! container in a cloud storage group with a policy, and see what the tier
//! mover has done. Tier copies are copy jobs: `copy_list`, `copy_cancel`
//! and the trail (`replication_history`, entries with `tier`) show them.

use tern_core::wire::{Msg, TierPolicy, TierStatus};
use tern_core::ContainerName;

use crate::client::unexpected;
use crate::{Client, ClientError};

impl Client {
    /// Links `container` to the cloud tier with `policy`, or unlinks it
    /// with `None` (admins only). Copies already made stay.
    pub fn container_tier(
        &self,
        container: &str,
        policy: Option<TierPolicy>,
    ) -> Result<(), ClientError> {
        let msg = Msg::ContainerTier {
            name: ContainerName::new(container)?,
            policy,
        };
        match self.ask(msg)?.env.msg {
            Msg::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Brings image `name` of `container`, held in the cloud tier, back to
    /// its own storage group (for a large restore ahead); the chunk bytes
    /// stored for it.
    pub fn image_recall(&self, container: &str, name: &str) -> Result<u64, ClientError> {
        let msg = Msg::ImageRecall {
            container: ContainerName::new(container)?,
            name: tern_core::ImageName::new(name)?,
        };
        match self.ask(msg)?.env.msg {
            Msg::ImageRecalled { stored_bytes } => Ok(stored_bytes),
            other => Err(unexpected(other)),
        }
    }

    /// Each tiered container the user sees: its policy and its images'
    /// tier states.
    pub fn tier_status(&self) -> Result<Vec<TierStatus>, ClientError> {
        match self.ask(Msg::TierStatusGet)?.env.msg {
            Msg::TierStatuses { list } => Ok(list),
            other => Err(unexpected(other)),
        }
    }
}
