//! What each protocol version added, named once: a request that needs a
//! newer version than its session speaks is refused by the server's
//! dispatch in one place, and by the client before it is sent.

use std::fmt;

use super::msg::Msg;
use super::replication::PartnerSettings;
use super::{PROTOCOL_MAX, PROTOCOL_MIN};

/// A part of the protocol that came with a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Feature {
    /// Partners, copies, replicas and import events (version 2).
    Replication,
    /// Resuming incomplete images (version 3).
    Resume,
    /// The WAN controls of replication: copies that resume where they
    /// stopped, `CopyAbort`, partner settings and shaping groups (version 4).
    WanControls,
    /// Listings in pages, `ListMore` (version 5).
    Paging,
    /// Suspending an image being written, `ImageSuspend` (version 6).
    Suspend,
    /// The audit log, `AuditGet` (version 6).
    Audit,
    /// Retention locks: `ContainerLock`, `ImageRemove` with `bypass_lock`,
    /// the `Locked` error (version 6).
    Lock,
    /// Synthetic fulls: `ImageAppendExtent` (version 7).
    Extents,
    /// Storage groups by name, on volumes of their own: `GroupAdd`,
    /// `GroupList`, `GroupRemove` (version 8).
    Groups,
    /// The cloud tier: `ContainerTier`, `TierStatusGet`, `ImageRecall`
    /// (version 9).
    Tier,
}

impl Feature {
    /// The first protocol version with this feature.
    pub const fn since(self) -> u16 {
        match self {
            Feature::Replication => 2,
            Feature::Resume => 3,
            Feature::WanControls => 4,
            Feature::Paging => 5,
            Feature::Suspend | Feature::Audit | Feature::Lock => 6,
            Feature::Extents => 7,
            Feature::Groups => 8,
            Feature::Tier => 9,
        }
    }

    /// True if a session of protocol `version` has this feature.
    pub const fn in_version(self, version: u16) -> bool {
        version >= self.since()
    }

    /// `Ok` if a session of protocol `version` has this feature, else why
    /// `what` (the request, as a user would name it) cannot be done.
    pub fn check(self, version: u16, what: &str) -> Result<(), Missing> {
        if self.in_version(version) {
            return Ok(());
        }
        Err(Missing {
            feature: self,
            what: what.to_string(),
            version,
        })
    }

    /// The feature a request needs beyond the first version, if any.
    pub fn needed_by(msg: &Msg) -> Option<Feature> {
        Some(match msg {
            Msg::ImageSuspend { .. } => Feature::Suspend,
            Msg::ImageAppendExtent { .. } => Feature::Extents,
            Msg::GroupAdd { .. } | Msg::GroupList | Msg::GroupRemove { .. } => Feature::Groups,
            Msg::ContainerTier { .. } | Msg::TierStatusGet | Msg::ImageRecall { .. } => {
                Feature::Tier
            }
            Msg::AuditGet { .. } => Feature::Audit,
            Msg::ContainerLock { .. }
            | Msg::ImageRemove {
                bypass_lock: true, ..
            } => Feature::Lock,
            // A target that cannot hold the replica locked must not get it.
            Msg::ReplicaCreate { origin, .. } if origin.lock.is_some() => Feature::Lock,
            Msg::ListMore { .. } => Feature::Paging,
            Msg::ImageResume { .. } => Feature::Resume,
            Msg::PartnerSet { .. }
            | Msg::ShapingSet { .. }
            | Msg::ShapingList
            | Msg::ShapingRemove { .. }
            | Msg::CopyAbort { .. }
            | Msg::PartnerAdd {
                settings:
                    PartnerSettings {
                        connections: 1.., ..
                    }
                    | PartnerSettings {
                        shaping: Some(_), ..
                    },
                ..
            }
            | Msg::UserSet {
                shaping: Some(_), ..
            } => Feature::WanControls,
            Msg::ContainerPromote { .. }
            | Msg::ContainerReplicate { .. }
            | Msg::PartnerAdd { .. }
            | Msg::PartnerList
            | Msg::PartnerRemove { .. }
            | Msg::CopyStart { .. }
            | Msg::CopyStatusGet { .. }
            | Msg::CopyList
            | Msg::CopyCancel { .. }
            | Msg::TrailGet { .. }
            | Msg::ReplicaCreate { .. }
            | Msg::ReplicaAbort { .. }
            | Msg::ImportStatesGet { .. }
            | Msg::EventsGet { .. }
            | Msg::EventsAck { .. } => Feature::Replication,
            _ => return None,
        })
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Feature::Replication => "replication",
            Feature::Resume => "resuming images",
            Feature::WanControls => "the WAN controls of replication",
            Feature::Paging => "listings in pages",
            Feature::Suspend => "suspending images",
            Feature::Audit => "the audit log",
            Feature::Lock => "retention locks",
            Feature::Extents => "synthetic fulls (extent writes)",
            Feature::Groups => "storage groups on volumes of their own",
            Feature::Tier => "the cloud tier",
        })
    }
}

/// A request that its session's protocol version does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// What the request needs.
    pub feature: Feature,
    /// The request.
    pub what: String,
    /// The session's version.
    pub version: u16,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} needs protocol version {} ({}); the session speaks version {} \
             (this build speaks {PROTOCOL_MIN}..={PROTOCOL_MAX})",
            self.what,
            self.feature.since(),
            self.feature,
            self.version
        )
    }
}

impl std::error::Error for Missing {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_feature_needs_its_version_and_says_which() {
        assert!(Feature::Replication.check(2, "CopyStart").is_ok());
        let e = Feature::WanControls.check(3, "CopyAbort").unwrap_err();
        assert_eq!(e.feature.since(), 4);
        assert!(e
            .to_string()
            .starts_with("CopyAbort needs protocol version 4"));
        assert_eq!(
            Feature::needed_by(&Msg::CopyList),
            Some(Feature::Replication)
        );
        assert_eq!(Feature::needed_by(&Msg::Ping), None);
        let unshaped = Msg::UserSet {
            name: crate::names::UserName::new("u").unwrap(),
            groups: None,
            admin: None,
            replicate_into: None,
            shaping: None,
        };
        assert_eq!(Feature::needed_by(&unshaped), None);
    }

    #[test]
    fn a_replica_that_carries_a_lock_needs_a_target_that_can_hold_it() {
        let name = |s| crate::names::ContainerName::new(s).unwrap();
        let create = |lock| Msg::ReplicaCreate {
            container: name("dr"),
            name: crate::names::ImageName::new("i").unwrap(),
            props: Vec::new(),
            origin: crate::wire::ReplicaOrigin {
                copy: crate::wire::CopyId([1; 16]),
                server: "s".into(),
                container: name("c"),
                image: crate::names::ImageName::new("i").unwrap(),
                lock,
            },
            chunking: Default::default(),
            zstd_level: 1,
        };
        assert_eq!(
            Feature::needed_by(&create(None)),
            Some(Feature::Replication)
        );
        let locked = crate::wire::ImageLock {
            until: 1,
            mode: crate::wire::LockMode::Governance,
        };
        assert_eq!(
            Feature::needed_by(&create(Some(locked))),
            Some(Feature::Lock)
        );
    }
}
