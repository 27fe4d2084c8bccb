//! Replication partners: add one (after a check that it answers and
//! accepts us), list, change and remove them, and point a container's
//! replication policy at one.

use tern_core::names::UserName;
use tern_core::wire::{PartnerInfo, PartnerSettings};
use tern_core::ContainerName;

use super::trail::refusal;
use super::{partner, PartnerRecord, ReplicationError, Replicator};
use crate::store::records::now_unix;
use crate::store::{Scope, StoreError};

impl Replicator {
    /// Adds a partner after connecting to it; a refusal is an error and a
    /// trail entry. Blocks for as long as the check takes (call it off the
    /// async workers).
    pub fn partner_add(
        &self,
        name: &str,
        addresses: Vec<String>,
        fingerprint: String,
        user: UserName,
        password: String,
        settings: PartnerSettings,
    ) -> Result<(), ReplicationError> {
        self.check_settings(&settings)?;
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(StoreError::Invalid(format!(
                "partner name {name:?}: 1 to 64 printable characters"
            ))
            .into());
        }
        if addresses.is_empty() {
            return Err(StoreError::Invalid("give the partner's address".into()).into());
        }
        if self.tables().partner(name)?.is_some() {
            return Err(StoreError::AlreadyExists(format!("partner {name} already exists")).into());
        }
        let mut rec = PartnerRecord {
            addresses,
            fingerprint,
            user,
            password,
            version: 0,
            added: now_unix(),
            settings,
        };
        let started = now_unix();
        match partner::connect(&rec, &self.me) {
            Ok(client) => rec.version = client.protocol_version(),
            Err(e) => {
                let reason = format!("partner {name} refused: {e}");
                self.trail_check(name, started, &reason);
                return Err(ReplicationError::Partner {
                    kind: partner::client_kind(&e),
                    message: reason,
                });
            }
        }
        self.tables().insert_partner(name, &rec)?;
        tracing::info!(partner = name, "replication partner added");
        Ok(())
    }

    fn trail_check(&self, partner: &str, started: u64, reason: &str) {
        let entry = refusal(partner, started, reason);
        if let Err(e) = self.store.push_trail(&entry) {
            tracing::warn!("recording a refused partner in the trail: {e}");
        }
    }

    pub fn partners(&self) -> Result<Vec<PartnerInfo>, StoreError> {
        Ok(self
            .tables()
            .partners()?
            .into_iter()
            .map(|(name, p)| PartnerInfo {
                name,
                addresses: p.addresses,
                fingerprint: p.fingerprint,
                user: p.user,
                version: p.version,
                added: p.added,
                settings: p.settings,
            })
            .collect())
    }

    /// Changes a partner's addresses, connections or shaping group; running
    /// copies keep theirs, the next attempt takes the new ones.
    pub fn partner_set(
        &self,
        name: &str,
        addresses: Option<Vec<String>>,
        connections: Option<u32>,
        shaping: Option<String>,
    ) -> Result<(), StoreError> {
        if addresses.as_ref().is_some_and(|a| a.is_empty()) {
            return Err(StoreError::Invalid("give at least one address".into()));
        }
        let mut rec = self
            .tables()
            .partner(name)?
            .ok_or_else(|| StoreError::NotFound(format!("no partner {name}")))?;
        if let Some(a) = addresses {
            rec.addresses = a;
        }
        if let Some(c) = connections {
            rec.settings.connections = c;
        }
        if let Some(s) = shaping {
            rec.settings.shaping = (!s.is_empty()).then_some(s);
        }
        self.check_settings(&rec.settings)?;
        self.tables().update_partner(name, &rec)?;
        tracing::info!(partner = name, "replication partner changed");
        Ok(())
    }

    fn check_settings(&self, s: &PartnerSettings) -> Result<(), StoreError> {
        if s.connections as usize > tern_agent::MAX_CONNECTIONS {
            return Err(StoreError::Invalid(format!(
                "{} connections per copy; at most {}",
                s.connections,
                tern_agent::MAX_CONNECTIONS
            )));
        }
        if let Some(g) = &s.shaping {
            crate::service::shaping::ShapingTable(self.store.tables()).group(g)?;
        }
        Ok(())
    }

    /// Sets or ends a container's replication policy; the partner must exist.
    pub fn set_policy(
        &self,
        scope: &Scope,
        container: &ContainerName,
        to: Option<(String, ContainerName)>,
    ) -> Result<(), StoreError> {
        if let Some((partner, _)) = &to {
            if self.tables().partner(partner)?.is_none() {
                return Err(StoreError::NotFound(format!("no partner {partner}")));
            }
        }
        self.store.container_replicate(scope, container, to)
    }

    pub fn partner_remove(&self, name: &str) -> Result<(), StoreError> {
        if !self.tables().remove_partner(name)? {
            return Err(StoreError::NotFound(format!("no partner {name}")));
        }
        Ok(())
    }
}
