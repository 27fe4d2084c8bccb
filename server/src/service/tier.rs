//! The cloud tier: container policies that copy settled images to a
//! container in a cloud storage group, and the mover that applies them.
//!
//! A policy lives in its container's record. The mover thread wakes every
//! `tier_interval_secs` (and when a policy changes), lists each tiered
//! container's images, and queues a tier copy for every image the policy
//! selects that has none yet (`tier_images` maps a source image to its
//! copy, written in the copy's own transaction, so a crash neither loses a
//! copy nor queues one twice). Tier copies are the replicator's durable
//! copy jobs (`replication/tier_copy.rs`): ids, retries, cancel, trail.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tern_core::wire::{
    CopyId, CopyState, ImageInfo, ImageLocation, TierMode, TierPolicy, TierStatus, TrailResult,
};
use tern_core::{ContainerName, ImageName};

use super::replication::{CopyRecord, ReplicationTables, Replicator};
use super::shaping::ShapingTable;
use crate::store::records::{now_unix, ContainerRecord, ImageRecord};
use crate::store::{Owner, Scope, Store, StoreError};

/// The cloud tier's policies and mover.
pub struct Tierer {
    store: Arc<Store>,
    replicator: Arc<Replicator>,
    interval: Duration,
    /// Unix seconds of the mover's next run.
    next_run: AtomicU64,
    woken: Mutex<bool>,
    wake: Condvar,
    /// Images being recalled (`container\nname`).
    recalling: Mutex<HashSet<String>>,
}

impl Tierer {
    /// Starts the mover thread, which runs at once and then every `interval`.
    pub fn start(
        store: Arc<Store>,
        replicator: Arc<Replicator>,
        interval: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        let t = Arc::new(Self {
            store,
            replicator,
            interval: interval.max(Duration::from_secs(1)),
            next_run: AtomicU64::new(0),
            woken: Mutex::new(false),
            wake: Condvar::new(),
            recalling: Mutex::new(HashSet::new()),
        });
        let mover = t.clone();
        std::thread::Builder::new()
            .name("ternd-tier".into())
            .spawn(move || mover.move_forever())
            .map_err(StoreError::Io)?;
        Ok(t)
    }

    fn tables(&self) -> ReplicationTables<'_> {
        ReplicationTables(self.store.tables())
    }

    /// Links `container` to a cloud container with `policy`, or unlinks it.
    /// Copies already made stay; the mover runs at once.
    pub fn set_policy(
        &self,
        scope: &Scope,
        container: &ContainerName,
        policy: Option<TierPolicy>,
    ) -> Result<(), StoreError> {
        let rec = self.store.container_record(scope, container)?;
        if let Some(p) = &policy {
            self.check(&rec, p)?;
        }
        self.store.container_set_tier(scope, container, policy)?;
        self.wake();
        Ok(())
    }

    fn check(&self, rec: &ContainerRecord, p: &TierPolicy) -> Result<(), StoreError> {
        p.validate().map_err(StoreError::Invalid)?;
        let (Some(group), _) = p.to.split() else {
            return Err(StoreError::Invalid(format!(
                "--to {}: name the cloud storage group too (GROUP/CONTAINER)",
                p.to
            )));
        };
        if !self.store.group_is_cloud(&group)? {
            return Err(StoreError::Invalid(format!(
                "storage group {group} is not a cloud storage group (tern group add {group} --s3 URL)"
            )));
        }
        if group == rec.group {
            return Err(StoreError::Invalid(format!(
                "the container is in storage group {group} already"
            )));
        }
        // A cloud group's saved catalog (what `ternd group recover`
        // rebuilds) would keep a held image without its bytes.
        if p.mode.holds() && self.store.group_is_cloud(&rec.group)? {
            return Err(StoreError::Invalid(format!(
                "the container is in cloud storage group {}: its images can be copied to \
                 another, not held there",
                rec.group
            )));
        }
        match self.store.container_record(&Scope::Every, &p.to) {
            Ok(c) if !c.replica => {
                return Err(StoreError::Invalid(format!(
                    "container {} exists and is not a replica container: name a new one \
                     (the tier creates it) or one made with --replica",
                    p.to
                )))
            }
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if let Some(s) = &p.shaping {
            ShapingTable(self.store.tables()).group(s)?;
        }
        Ok(())
    }

    fn wake(&self) {
        *lock(&self.woken) = true;
        self.wake.notify_all();
    }

    fn move_forever(self: Arc<Self>) {
        loop {
            if let Err(e) = self.run_once() {
                tracing::error!("cloud tier: {e}");
            }
            let next = self.store.now() + self.interval.as_secs();
            self.next_run.store(next, Ordering::Relaxed);
            let mut woken = lock(&self.woken);
            if !*woken {
                woken = self
                    .wake
                    .wait_timeout(woken, self.interval)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            *woken = false;
        }
    }

    /// Queues a tier copy of every selected image that has none, and holds
    /// those whose copy is committed once their policy says so.
    fn run_once(&self) -> Result<(), StoreError> {
        let copies = self.tier_copies()?;
        let mut seen = HashSet::new();
        let mut gone = Vec::new();
        let now = self.store.now();
        for (name, rec) in self.store.tiered_containers()? {
            let Some(policy) = rec.tier.clone() else {
                continue;
            };
            let images = self.store.image_records(&rec)?;
            for (image, img) in &images {
                seen.insert(img.id);
                if !policy.selects(image.as_str()) || img.held.is_some() {
                    continue;
                }
                let due = Due::of(&policy, img, now);
                let again = match copies.records.get(&img.id) {
                    Some((id, c)) if matches!(c.state, CopyState::Done | CopyState::Imported) => {
                        if due.hold {
                            self.hold((&name, &rec), image, img.id, *id);
                        }
                        continue;
                    }
                    Some((id, c)) if c.state == CopyState::Failed => Some(*id),
                    Some(_) => continue,
                    None => None,
                };
                if !due.copy {
                    continue;
                }
                let queued = self.replicator.tier_enqueue(
                    rec.group.clone(),
                    &name,
                    img.id,
                    (image, img.size),
                    policy.to.clone(),
                    again,
                )?;
                if let Some(id) = queued {
                    tracing::info!(copy = %id, container = %name, image = %image, "tier copy queued");
                }
            }
            gone.extend(
                copies
                    .containers
                    .get(&(rec.group.to_string(), name.split().1.to_string()))
                    .into_iter()
                    .flatten()
                    .filter(|id| !seen.contains(*id)),
            );
        }
        self.tables().forget_tier_images(&gone)
    }

    /// Holds image `name` (id `image_id`) of `container` in its committed tier
    /// copy `copy`; a failure is logged and tried again at the next run.
    fn hold(
        &self,
        (container, rec): (&ContainerName, &ContainerRecord),
        name: &ImageName,
        image_id: u64,
        copy: CopyId,
    ) {
        let outcome = self.committed_copy(copy).and_then(|c| match c {
            Some(c) => self
                .store
                .image_hold(rec, name, image_id, &c.to_container, &c.to_name)
                .map(|()| true),
            None => Ok(false),
        });
        match outcome {
            Ok(true) => {
                tracing::info!(copy = %copy, image = %name, "image held in the cloud tier");
                let image = format!("{}/{name}", container.split().1);
                self.trail(copy, image, rec, "held: its reads go to its cloud copy");
            }
            Ok(false) => {
                tracing::warn!(copy = %copy, image = %name, "not held: its cloud copy is gone")
            }
            Err(e) => {
                tracing::warn!(copy = %copy, image = %name, "holding the image in the cloud tier: {e}")
            }
        }
    }

    /// Brings held image `name` back (see [`Store::image_recall`]); one
    /// recall of an image at a time. The policy holds it again only
    /// `local_days` after the recall.
    pub fn recall(
        &self,
        scope: &Scope,
        container: &ContainerName,
        name: &ImageName,
    ) -> Result<u64, StoreError> {
        let key = format!("{container}\n{name}");
        if !lock(&self.recalling).insert(key.clone()) {
            return Err(StoreError::Busy(format!("image {name} is being recalled")));
        }
        let out = self.store.image_recall(scope, container, name);
        lock(&self.recalling).remove(&key);
        if let Ok(stored) = &out {
            let copy = self.tier_copy_of(scope, container, name).ok().flatten();
            let rec = self.store.container_record(scope, container);
            if let (Some((id, _)), Ok(rec)) = (copy, rec) {
                let what = format!("recalled: {stored} bytes of chunks stored here again");
                let image = format!("{}/{name}", container.split().1);
                self.trail(id, image, &rec, &what);
            }
        }
        out
    }

    /// Records a hold or a recall in the replication trail, as a tier
    /// entry of the image's copy.
    fn trail(&self, copy: CopyId, image: String, rec: &ContainerRecord, what: &str) {
        let mut entry = super::replication::trail::refusal("", now_unix(), what);
        entry.copy = copy;
        entry.image = image;
        entry.result = TrailResult::Ok;
        entry.group = Some(rec.group.clone());
        entry.tier = true;
        if let Ok(Some(c)) = self.tables().copy(copy) {
            entry.peer = c.to_container.to_string();
            entry.logical_bytes = c.logical_bytes;
        }
        if let Err(e) = self.store.push_trail(&entry) {
            tracing::warn!(copy = %copy, "recording in the trail: {e}");
        }
    }

    /// Every image's tier copy and its state, and the images with one per
    /// source container (`(group, container)`).
    fn tier_copies(&self) -> Result<TierCopies, StoreError> {
        let mut out = TierCopies::default();
        for (image_id, copy, rec) in self.tables().tier_image_copies()? {
            out.containers
                .entry((rec.group.to_string(), rec.container.to_string()))
                .or_default()
                .push(image_id);
            out.records.insert(image_id, (copy, rec));
        }
        Ok(out)
    }

    /// What the tier has done with each tiered container `scope` sees.
    pub fn status(&self, scope: &Scope) -> Result<Vec<TierStatus>, StoreError> {
        let copies = self.tier_copies()?;
        let mut out = Vec::new();
        for (name, rec) in self.store.tiered_containers()? {
            let Some(policy) = rec.tier.clone() else {
                continue;
            };
            if !scope.sees(&rec.group) {
                continue;
            }
            let mut s = TierStatus {
                container: name,
                policy: policy.clone(),
                pending: 0,
                copying: 0,
                copied: 0,
                held: 0,
                failed: 0,
                copied_bytes: 0,
                sent_bytes: 0,
                next_run: self.next_run.load(Ordering::Relaxed),
            };
            for (image, img) in self.store.image_records(&rec)? {
                s.held += u64::from(img.held.is_some());
                match copies.records.get(&img.id) {
                    Some((_, c)) => {
                        s.sent_bytes += c.sent_bytes;
                        match c.state {
                            CopyState::Done | CopyState::Imported => {
                                s.copied += 1;
                                s.copied_bytes += c.logical_bytes;
                            }
                            CopyState::Queued | CopyState::Running => s.copying += 1,
                            _ => s.failed += 1,
                        }
                    }
                    None if policy.selects(image.as_str()) => s.pending += 1,
                    None => {}
                }
            }
            out.push(s);
        }
        Ok(out)
    }
}

/// How an image is deleted.
#[derive(Debug, Clone, Copy)]
pub struct RemoveHow {
    /// Past a governance lock (an admin asked).
    pub bypass_lock: bool,
    /// Its cloud tier copy stays.
    pub keep_cloud: bool,
}

impl Tierer {
    /// Deletes an image (as [`Store::image_remove`]) and, unless
    /// `keep_cloud`, its cloud tier copy: a committed copy is deleted from
    /// the cloud container (its space returns with the cloud group's GC),
    /// a copy still running is cancelled.
    pub fn image_remove(
        &self,
        scope: &Scope,
        owner: Owner<'_>,
        container: &ContainerName,
        name: &ImageName,
        how: RemoveHow,
    ) -> Result<(), StoreError> {
        let copy = match how.keep_cloud {
            true => None,
            false => self.tier_copy_of(scope, container, name)?,
        };
        self.store
            .image_remove(scope, owner, container, name, how.bypass_lock)?;
        let Some((id, rec)) = copy else {
            return Ok(());
        };
        if !rec.state.is_final() {
            return match self.replicator.cancel(&Scope::Every, id) {
                Ok(()) | Err(StoreError::Invalid(_)) => Ok(()),
                Err(e) => Err(e),
            };
        }
        // Only the image this copy made: a name may have been reused.
        if self.committed_copy(id)?.is_none() {
            return Ok(());
        }
        self.store
            .image_remove(
                &Scope::Every,
                Owner::Any,
                &rec.to_container,
                &rec.to_name,
                how.bypass_lock,
            )
            .map_err(|e| {
                StoreError::Invalid(format!(
                    "image {name} is deleted, but not its cloud copy {}/{}: {e}",
                    rec.to_container, rec.to_name
                ))
            })?;
        tracing::info!(copy = %id, "cloud tier copy {}/{} deleted with its image", rec.to_container, rec.to_name);
        Ok(())
    }

    /// Marks the images of `container` (as listed) that have a committed
    /// cloud tier copy `LocalAndCloud`.
    pub fn mark_locations(
        &self,
        scope: &Scope,
        container: &ContainerName,
        list: &mut [ImageInfo],
    ) -> Result<(), StoreError> {
        let tables = self.tables();
        if list.is_empty() || !tables.any_tier_image()? {
            return Ok(());
        }
        let rec = self.store.container_record(scope, container)?;
        // A lookup per listed image: a page of a big container costs its
        // own length, not the container's nor the tier's.
        for info in list.iter_mut() {
            if info.location != ImageLocation::Local {
                continue;
            }
            let Some(img) = self.store.image_of(&rec, &info.name)? else {
                continue;
            };
            let Some(copy) = tables.tier_image(img.id)? else {
                continue;
            };
            if self.committed_copy(copy)?.is_some() {
                info.location = ImageLocation::LocalAndCloud;
            }
        }
        Ok(())
    }

    /// The record of tier copy `id` if it is done and its cloud image
    /// (the one it made) is still there.
    fn committed_copy(&self, id: CopyId) -> Result<Option<CopyRecord>, StoreError> {
        let Some(rec) = self.tables().copy(id)? else {
            return Ok(None);
        };
        if !matches!(rec.state, CopyState::Done | CopyState::Imported) {
            return Ok(None);
        }
        let cloud = self
            .store
            .image_record(&Scope::Every, &rec.to_container, &rec.to_name);
        Ok(match cloud {
            Ok(Some((_, img))) if img.origin.as_ref().map(|o| o.copy) == Some(id) => Some(rec),
            Ok(_) | Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        })
    }

    /// The tier copy of a committed image, if it has one.
    fn tier_copy_of(
        &self,
        scope: &Scope,
        container: &ContainerName,
        name: &ImageName,
    ) -> Result<Option<(CopyId, CopyRecord)>, StoreError> {
        let Some((_, img)) = self.store.image_record(scope, container, name)? else {
            return Ok(None);
        };
        let Some(id) = self.tables().tier_image(img.id)? else {
            return Ok(None);
        };
        Ok(self.tables().copy(id)?.map(|rec| (id, rec)))
    }
}

/// What the mover knows of the tier copies made.
#[derive(Default)]
struct TierCopies {
    /// Source image id -> its tier copy.
    records: HashMap<u64, (CopyId, CopyRecord)>,
    /// `(group, container)` -> the source image ids with a tier copy.
    containers: HashMap<(String, String), Vec<u64>>,
}

/// What a policy asks for an image it selects by name, now.
struct Due {
    /// Its copy: settled for the idle time since its commit or last
    /// change (and, in hold mode, past its local days).
    copy: bool,
    /// Holding it in its copy: a holding mode, past its local days since
    /// its commit (or its last recall).
    hold: bool,
}

impl Due {
    fn of(policy: &TierPolicy, img: &ImageRecord, now: u64) -> Self {
        let settled = now.saturating_sub(img.created.max(img.changed)) >= policy.idle_secs;
        let local = u64::from(policy.local_days) * 86_400;
        let aged = now.saturating_sub(img.created.max(img.recalled)) >= local;
        let hold = policy.mode.holds() && aged;
        Due {
            copy: settled && (policy.mode != TierMode::Hold || aged),
            hold,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
