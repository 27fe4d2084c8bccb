//! Retention locks: a container's lock holds each of its images, from its
//! commit, for the lock's days, and a replica is held as long as its
//! source was when copied; a held image can be neither deleted nor
//! changed. The checks run here, in the engine, right before the catalog
//! change they guard.
//!
//! Time comes from a clock that never goes back: the latest time the store
//! has seen is kept in the catalog (`meta`, key `clock`), and "now" is the
//! later of that and the system clock, so setting the system clock back
//! neither unlocks anything nor dates a new image before an older one.
//! `TERND_CLOCK_SKEW_SECS` (tests only: it moves the system clock as root
//! could) is added to the system clock.

use std::sync::atomic::{AtomicU64, Ordering};

use tern_core::wire::{ImageLock, LockMode, ReplicaOrigin, RetentionLock};
use tern_core::{ContainerName, ImageName};

use super::records::{now_unix, ContainerRecord, ImageRecord};
use super::scope::Scope;
use super::{Result, Store, StoreError};

/// How far the clock may run ahead of the high-water mark in the catalog
/// before it is written again: a crash forgets at most this much.
const PERSIST_EVERY: u64 = 60;
const DAY: u64 = 86_400;

/// The store's clock: never earlier than a time it has already given.
pub(crate) struct Clock {
    high: AtomicU64,
    persisted: AtomicU64,
    skew: i64,
}

impl Clock {
    pub(crate) fn new(persisted: u64) -> Self {
        let skew = std::env::var("TERND_CLOCK_SKEW_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Self {
            high: AtomicU64::new(persisted),
            persisted: AtomicU64::new(persisted),
            skew,
        }
    }

    /// The system clock (skewed in tests).
    fn system(&self) -> u64 {
        now_unix().saturating_add_signed(self.skew)
    }
}

impl Store {
    /// Now, in unix seconds, by a clock that never goes back. Writes the
    /// high-water mark to the catalog when it ran a minute past it.
    pub fn now(&self) -> u64 {
        let now = self
            .clock
            .high
            .fetch_max(self.clock.system(), Ordering::SeqCst);
        let now = now.max(self.clock.system());
        if now >= self.clock.persisted.load(Ordering::SeqCst) + PERSIST_EVERY
            && self.read_only.is_none()
        {
            match self.catalog.set_meta("clock", now) {
                Ok(()) => {
                    self.clock.persisted.fetch_max(now, Ordering::SeqCst);
                }
                Err(e) => tracing::warn!("could not record the clock's high-water mark: {e}"),
            }
        }
        now
    }

    /// The retention lock holding image `rec` of `container` now, if any:
    /// its container's (from its commit, for the lock's days) and, for a
    /// replica, the one its source had. Held until the later of the two;
    /// compliance if either holding one is.
    pub(crate) fn image_lock(
        &self,
        container: &ContainerRecord,
        rec: &ImageRecord,
    ) -> Option<ImageLock> {
        let own = container.lock.map(|l| ImageLock {
            until: rec.created.saturating_add(u64::from(l.days) * DAY),
            mode: l.mode,
        });
        let carried = rec.origin.as_ref().and_then(|o| o.lock);
        let now = self.now();
        [own, carried]
            .into_iter()
            .flatten()
            .filter(|l| l.until > now)
            .reduce(|a, b| ImageLock {
                until: a.until.max(b.until),
                // Compliance orders after governance: the stricter wins.
                mode: a.mode.max(b.mode),
            })
    }

    /// `Ok` unless a retention lock holds image `rec`; `bypass` lifts a
    /// governance lock (the caller checked that an admin asked).
    pub(crate) fn check_unlocked(
        &self,
        container: &ContainerRecord,
        image: &ImageName,
        rec: &ImageRecord,
        what: &str,
        bypass: bool,
    ) -> Result<()> {
        let Some(lock) = self.image_lock(container, rec) else {
            return Ok(());
        };
        if bypass && lock.mode == LockMode::Governance {
            return Ok(());
        }
        let how = match lock.mode {
            LockMode::Governance if what == "deleted" => {
                "; an admin may delete it with --bypass-lock (governance mode)"
            }
            LockMode::Compliance => "; nobody can lift a compliance lock",
            LockMode::Governance => "",
        };
        Err(StoreError::Locked(format!(
            "image {image} is under a retention lock until {}: it cannot be {what}{how}",
            tern_core::time::rfc3339(lock.until)
        )))
    }

    /// The lock a replica carries from its source: refused if it ends
    /// further ahead than any lock could (a source may not make an image
    /// undeletable for ever).
    pub(crate) fn check_carried_lock(&self, origin: &ReplicaOrigin) -> Result<()> {
        let Some(lock) = origin.lock else {
            return Ok(());
        };
        let limit = self
            .now()
            .saturating_add(u64::from(RetentionLock::MAX_DAYS) * DAY);
        if lock.until > limit {
            return Err(StoreError::Invalid(format!(
                "the source's retention lock ends at {}, more than {} days ahead",
                tern_core::time::rfc3339(lock.until),
                RetentionLock::MAX_DAYS
            )));
        }
        Ok(())
    }

    /// Sets, lengthens or (governance only) removes a container's lock.
    /// A compliance lock can only grow: never shorter, never governance,
    /// never removed.
    pub fn container_lock(
        &self,
        scope: &Scope,
        name: &ContainerName,
        lock: Option<RetentionLock>,
    ) -> Result<()> {
        if let Some(l) = lock {
            if l.days == 0 || l.days > RetentionLock::MAX_DAYS {
                return Err(StoreError::Invalid(format!(
                    "a retention lock of {} days; it must be 1 to {}",
                    l.days,
                    RetentionLock::MAX_DAYS
                )));
            }
        }
        let rec = self.container(scope, name)?;
        // Checked on the record the transaction changes, so two admins
        // cannot both pass the check.
        self.catalog
            .update_container(&rec, &name.split().1, |r, _| {
                compliance_allows(name, r.lock, lock)?;
                r.lock = lock;
                Ok(())
            })?;
        Ok(())
    }
}

/// `Ok` unless `old` is a compliance lock that `new` would remove, turn
/// into governance or shorten.
fn compliance_allows(
    name: &ContainerName,
    old: Option<RetentionLock>,
    new: Option<RetentionLock>,
) -> Result<()> {
    let Some(old) = old.filter(|l| l.mode == LockMode::Compliance) else {
        return Ok(());
    };
    let refused = match new {
        None => "removed".to_string(),
        Some(l) if l.mode != LockMode::Compliance => "turned into a governance lock".to_string(),
        Some(l) if l.days < old.days => format!("shortened to {} days", l.days),
        Some(_) => return Ok(()),
    };
    Err(StoreError::Locked(format!(
        "container {name} has a compliance retention lock of {} days: it cannot be {refused}, \
         by anyone",
        old.days
    )))
}
