//! Retention locks: a container's lock holds each of its images, from its
//! commit, for the lock's days; a held image can be neither deleted nor
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

use tern_core::wire::{LockMode, RetentionLock};
use tern_core::{ContainerName, ImageName};

use super::records::{now_unix, ContainerRecord};
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

    /// Until when (unix seconds) `container`'s lock holds an image committed
    /// at `created`; 0 if it does not hold it now.
    pub(crate) fn lock_until(&self, container: &ContainerRecord, created: u64) -> u64 {
        match container.lock {
            Some(lock) => {
                let until = created.saturating_add(u64::from(lock.days) * DAY);
                if until > self.now() {
                    until
                } else {
                    0
                }
            }
            None => 0,
        }
    }

    /// `Ok` unless `container`'s lock holds the image committed at
    /// `created`; `bypass` lifts a governance lock (the caller checked that
    /// an admin asked).
    pub(crate) fn check_unlocked(
        &self,
        container: &ContainerRecord,
        image: &ImageName,
        created: u64,
        what: &str,
        bypass: bool,
    ) -> Result<()> {
        let until = self.lock_until(container, created);
        if until == 0 {
            return Ok(());
        }
        let mode = container.lock.map(|l| l.mode);
        if bypass && mode == Some(LockMode::Governance) {
            return Ok(());
        }
        let how = match mode {
            Some(LockMode::Governance) if what == "deleted" => {
                "; an admin may delete it with --bypass-lock (governance mode)"
            }
            Some(LockMode::Compliance) => "; nobody can lift a compliance lock",
            _ => "",
        };
        Err(StoreError::Locked(format!(
            "image {image} is under its container's retention lock until {}: it cannot be {what}{how}",
            tern_core::time::rfc3339(until)
        )))
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
