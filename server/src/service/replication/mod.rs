//! DMA-managed replication on the source side: partners, and copies as
//! durable jobs.
//!
//! A copy is a record in the catalog (`copies`) from the moment it is asked
//! for; a scheduler thread runs queued copies, at most
//! `max_copies_per_partner` at once per partner, each attempt on a thread of
//! its own (`copy.rs`) as a client of the partner (`partner.rs`). A failed
//! attempt that may succeed later (the link, a restart of the target) goes
//! back to the queue with a growing delay; a restart of this server finds
//! the copies that were queued or running in the catalog and runs them
//! again. Every attempt goes into the replication trail. Done copies into
//! import containers are asked about until the target's DMA has
//! acknowledged the import event (`imported`). `scheduler.rs` runs the
//! copies; `partners.rs` manages the partners; this file takes the copy
//! requests.

mod copy;
mod partner;
mod partners;
mod queue;
mod scheduler;
pub mod tables;
mod tier_copy;
pub mod trail;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use tern_agent::Client;
use tern_core::names::UserName;
use tern_core::wire::{CopyId, CopyInfo, CopyState, ErrorKind, ImageInfo, TrailResult};
use tern_core::{ContainerName, ImageName};

pub use partner::LocalIdentity;

use super::shaping::{ShapedJob, Shaper};
pub use tables::{CopyRecord, PartnerRecord, ReplicationTables, DEFAULT_COPY_CONNECTIONS};

use crate::store::records::now_unix;
use crate::store::{Scope, Store, StoreError};
use trail::refusal;

/// Attempts of one copy before it fails for good (the delays between them
/// grow to [`MAX_RETRY_DELAY`]: about an hour and a half in all).
const MAX_ATTEMPTS: u32 = 100;
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How long an abort waits for a running attempt to stop.
const ABORT_WAIT: Duration = Duration::from_secs(10);
/// Copies listed at most.
const LIST_MAX: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a replication request failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// On this server.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The partner could not be reached or refused (its kind as it said it).
    #[error("{message}")]
    Partner { kind: ErrorKind, message: String },
}

impl ReplicationError {
    /// What the client is told.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReplicationError::Store(e) => e.kind(),
            ReplicationError::Partner { kind, .. } => *kind,
        }
    }
}

/// A copy a user asks for: an image, the partner, and where it goes there.
pub struct CopyAsk {
    pub container: ContainerName,
    pub image: ImageName,
    pub partner: String,
    pub to_container: ContainerName,
    /// The name there (default: the same).
    pub to_name: Option<ImageName>,
}

/// A running attempt's counters, read by status requests as they change.
#[derive(Default)]
pub struct Live {
    partner: String,
    /// A cloud tier copy (run on this server, no partner).
    tier: bool,
    /// Logical bytes the target has (announced and settled).
    done: AtomicU64,
    sent_bytes: AtomicU64,
    sent_chunks: AtomicU64,
    cancelled: AtomicBool,
    /// The client of the attempt, for cancelling its calls.
    client: Mutex<Option<Client>>,
    /// The partner's shaping group, while the attempt draws from it.
    shaped: Mutex<Option<Arc<ShapedJob>>>,
}

/// The source side of replication.
pub struct Replicator {
    store: Arc<Store>,
    /// The shaping groups copies (and users' sessions) draw from.
    pub shaper: Arc<Shaper>,
    me: LocalIdentity,
    max_per_partner: usize,
    live: Mutex<HashMap<CopyId, Arc<Live>>>,
    /// Copies waiting to run, and the partners found down.
    queue: Mutex<queue::CopyQueue>,
    /// Done copies whose import the target has yet to report.
    awaiting_import: Mutex<HashSet<CopyId>>,
    /// Partners being asked about imports now.
    polling: Mutex<HashSet<String>>,
    wake: Condvar,
    woken: Mutex<bool>,
    /// How many refusals each party may have written one by one.
    refusals: trail::RefusalGate,
}

impl Replicator {
    /// The partner and copy tables.
    fn tables(&self) -> ReplicationTables<'_> {
        ReplicationTables(self.store.tables())
    }

    /// Loads the copies a stop interrupted and starts the scheduler thread.
    pub fn start(
        store: Arc<Store>,
        me: LocalIdentity,
        max_per_partner: usize,
        shaper: Arc<Shaper>,
    ) -> Result<Arc<Self>, StoreError> {
        let mut queue = queue::CopyQueue::default();
        let mut awaiting = HashSet::new();
        let now = Instant::now();
        for (id, rec) in ReplicationTables(store.tables()).copies()? {
            match rec.state {
                CopyState::Queued | CopyState::Running => queue.push(id, &rec.partner, now),
                CopyState::Done if rec.awaiting_import => {
                    awaiting.insert(id);
                }
                _ => {}
            }
        }
        if !queue.is_empty() {
            tracing::info!("{} copies to resume", queue.len());
        }
        let r = Arc::new(Self {
            store,
            shaper,
            me,
            max_per_partner: max_per_partner.max(1),
            live: Mutex::new(HashMap::new()),
            queue: Mutex::new(queue),
            awaiting_import: Mutex::new(awaiting),
            polling: Mutex::new(HashSet::new()),
            wake: Condvar::new(),
            woken: Mutex::new(false),
            refusals: trail::RefusalGate::default(),
        });
        let sched = r.clone();
        std::thread::Builder::new()
            .name("ternd-copies".into())
            .spawn(move || sched.schedule_forever())
            .map_err(StoreError::Io)?;
        Ok(r)
    }

    fn wake(&self) {
        *lock(&self.woken) = true;
        self.wake.notify_all();
    }

    // ---- copies ------------------------------------------------------------------

    /// Records a copy (or finds the live one of the same image to the same
    /// place) and queues it; returns at once. A refusal goes into the trail,
    /// as one of `who`'s.
    pub fn copy_start(
        &self,
        scope: &Scope,
        who: &UserName,
        ask: CopyAsk,
    ) -> Result<CopyId, StoreError> {
        let started = now_unix();
        let mut group = None;
        let outcome = (|| {
            if self.tables().partner(&ask.partner)?.is_none() {
                return Err(StoreError::NotFound(format!("no partner {}", ask.partner)));
            }
            let c = self.store.container_record(scope, &ask.container)?;
            group = Some(c.group.clone());
            let (img, _) = self
                .store
                .copy_source(&c.group, &ask.container, &ask.image)?;
            let to = (ask.to_container.clone(), ask.to_name.clone());
            self.enqueue(c.group, &ask.container, &img.info, &ask.partner, to.0, to.1)
        })();
        if let Err(e) = &outcome {
            let mut entry = refusal(&ask.partner, started, &format!("copy refused: {e}"));
            entry.image = format!("{}/{}", ask.container, ask.image);
            entry.group = group;
            self.record_refusal(who.as_str(), entry);
        }
        outcome
    }

    /// Queues the copy of a committed image (a request, or a container's policy).
    fn enqueue(
        &self,
        group: tern_core::names::GroupName,
        container: &ContainerName,
        image: &ImageInfo,
        partner: &str,
        to_container: ContainerName,
        to_name: Option<ImageName>,
    ) -> Result<CopyId, StoreError> {
        let rec = new_copy(
            group,
            container,
            (&image.name, image.size),
            partner,
            to_container,
            to_name,
        );
        let (id, new) = self.tables().find_or_insert_copy(rec, fresh_id()?)?;
        if new {
            lock(&self.queue).push(id, partner, Instant::now());
            self.wake();
        }
        Ok(id)
    }

    /// Queues the cloud tier copy of image `image_id` (`image`) of
    /// `container` in `group` (its name and size) into cloud container `to`
    /// (`GROUP/NAME`),
    /// unless the image has had one; `again` is a failed earlier copy of
    /// it that this one replaces. None if it has one (another than `again`).
    pub fn tier_enqueue(
        &self,
        group: tern_core::names::GroupName,
        container: &ContainerName,
        image_id: u64,
        (name, size): (&ImageName, u64),
        to: ContainerName,
        again: Option<CopyId>,
    ) -> Result<Option<CopyId>, StoreError> {
        let mut rec = new_copy(group, container, (name, size), "", to, None);
        rec.tier = true;
        let id = fresh_id()?;
        if !self.tables().insert_tier_copy(image_id, rec, id, again)? {
            return Ok(None);
        }
        lock(&self.queue).push(id, "", Instant::now());
        self.wake();
        Ok(Some(id))
    }

    /// After a commit: the copy a container's replication policy asks for.
    /// `scope` is the writer's, who named the container.
    pub fn after_commit(&self, scope: &Scope, info: &ImageInfo) {
        let outcome = (|| {
            let c = self.store.container_record(scope, &info.container)?;
            let Some((partner, to)) = c.replicate_to.clone() else {
                return Ok(None);
            };
            self.enqueue(c.group, &info.container, info, &partner, to, None)
                .map(Some)
        })();
        match outcome {
            Ok(Some(id)) => {
                tracing::info!(copy = %id, image = %info.name, "copy queued by the container's policy")
            }
            Ok(None) => {}
            Err(e) => tracing::error!(image = %info.name, "queueing the policy's copy: {e}"),
        }
    }

    /// A copy of an image in a storage group of `scope` (others are as
    /// absent).
    fn visible_copy(&self, scope: &Scope, id: CopyId) -> Result<CopyRecord, StoreError> {
        match self.tables().copy(id)? {
            Some(rec) if scope.sees(&rec.group) => Ok(rec),
            _ => Err(StoreError::NotFound(format!("no copy {id}"))),
        }
    }

    /// A copy's status: the catalog's record with the running attempt's counters.
    pub fn status(&self, scope: &Scope, id: CopyId) -> Result<CopyInfo, StoreError> {
        let rec = self.visible_copy(scope, id)?;
        Ok(self.info(id, rec))
    }

    /// Every copy of the storage groups of `scope`, newest first.
    pub fn list(&self, scope: &Scope) -> Result<Vec<CopyInfo>, StoreError> {
        let mut all = self.tables().copies()?;
        all.retain(|(_, rec)| scope.sees(&rec.group));
        all.sort_by(|a, b| b.1.created.cmp(&a.1.created).then(b.0.cmp(&a.0)));
        all.truncate(LIST_MAX);
        Ok(all
            .into_iter()
            .map(|(id, rec)| self.info(id, rec))
            .collect())
    }

    fn info(&self, id: CopyId, rec: CopyRecord) -> CopyInfo {
        let live = lock(&self.live).get(&id).cloned();
        let (mut done, mut sent, mut chunks) = (rec.done_bytes, rec.sent_bytes, rec.sent_chunks);
        let (mut paused, mut rate, mut path) = (false, 0, String::new());
        if let Some(l) = live {
            if let Some(job) = lock(&l.shaped).as_ref() {
                (paused, rate) = (job.paused(), job.rate());
            }
            if let Some(c) = lock(&l.client).as_ref() {
                path = c.server_address();
            }
            // Counters never go backwards: a new attempt starts from what
            // the earlier ones recorded.
            done = done.max(l.done.load(Ordering::Relaxed));
            sent += l.sent_bytes.load(Ordering::Relaxed);
            chunks += l.sent_chunks.load(Ordering::Relaxed);
        }
        CopyInfo {
            id,
            state: rec.state,
            reason: rec.reason,
            container: rec.container,
            image: rec.image,
            partner: rec.partner,
            to_container: rec.to_container,
            to_name: rec.to_name,
            logical_bytes: rec.logical_bytes,
            done_bytes: done.min(rec.logical_bytes),
            sent_bytes: sent,
            sent_chunks: chunks,
            attempts: rec.attempts,
            created: rec.created,
            updated: rec.updated,
            paused,
            rate,
            path,
            tier: rec.tier,
        }
    }

    /// Cancels a copy: a queued one at once, a running one as soon as its
    /// calls return (at once: they are cancelled too).
    pub fn cancel(&self, scope: &Scope, id: CopyId) -> Result<(), StoreError> {
        let rec = self.visible_copy(scope, id)?;
        if rec.state.is_final() {
            return Err(StoreError::Invalid(format!(
                "copy {id} has ended ({})",
                rec.state.as_str()
            )));
        }
        // Queued or running: the scheduler moves a copy from the queue to
        // the running set under the queue's lock.
        let queued = lock(&self.queue).remove(id);
        let running = lock(&self.live).get(&id).cloned();
        if let (false, Some(l)) = (queued, running) {
            l.cancelled.store(true, Ordering::SeqCst);
            if let Some(c) = lock(&l.client).as_ref() {
                c.cancel();
            }
            return Ok(());
        }
        let entry = self.trail(
            id,
            &rec,
            now_unix(),
            TrailResult::Cancelled,
            "cancelled before it ran",
        );
        self.tables().update_copy(
            id,
            |r| {
                r.state = CopyState::Cancelled;
                r.reason = "cancelled".into();
                r.updated = now_unix();
            },
            Some(&entry),
        )?;
        Ok(())
    }

    /// Ends a copy and drops what it left on both sides. On the source, a
    /// copy not yet done is cancelled (a running one stops first), then
    /// the target is told to drop its partial replica; an unreachable
    /// target is an error that says so (the copy stays cancelled). On a
    /// target (when `drop_replicas`: an admin), the partial replica the
    /// copy left is dropped.
    pub fn abort(
        &self,
        scope: &Scope,
        drop_replicas: bool,
        id: CopyId,
    ) -> Result<(), ReplicationError> {
        let rec = match self.tables().copy(id)? {
            Some(rec) if scope.sees(&rec.group) => rec,
            _ if drop_replicas => {
                if self
                    .store
                    .replica_abort(&Scope::Every, id, "aborted on this server")?
                {
                    tracing::info!(copy = %id, "partial replica dropped by an abort");
                    return Ok(());
                }
                return Err(StoreError::NotFound(format!(
                    "no copy {id} here, and no partial replica of it"
                ))
                .into());
            }
            _ => return Err(StoreError::NotFound(format!("no copy {id}")).into()),
        };
        if matches!(rec.state, CopyState::Done | CopyState::Imported) {
            return Err(StoreError::Invalid(format!(
                "copy {id} is done: its replica is committed on {} (delete it there with tern rm)",
                rec.partner
            ))
            .into());
        }
        if !rec.state.is_final() {
            self.cancel(scope, id)?;
            let deadline = Instant::now() + ABORT_WAIT;
            while lock(&self.live).contains_key(&id) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if rec.tier {
            self.store
                .replica_abort(&Scope::Every, id, "the tier copy was aborted")?;
            let entry = self.trail(id, &rec, now_unix(), TrailResult::Aborted, "aborted");
            if let Err(e) = self.store.push_trail(&entry) {
                tracing::warn!(copy = %id, "recording the abort in the trail: {e}");
            }
            return Ok(());
        }
        let partner = self
            .tables()
            .partner(&rec.partner)?
            .ok_or_else(|| StoreError::NotFound(format!("partner {} was removed", rec.partner)))?;
        let told = partner::connect(&partner, &self.me).and_then(|c| c.replica_abort(id));
        let reason = match &told {
            Ok(()) => "aborted: the target dropped what it had".to_string(),
            Err(e) => format!("aborted; the target was not told: {e}"),
        };
        let entry = self.trail(id, &rec, now_unix(), TrailResult::Aborted, &reason);
        if let Err(e) = self.store.push_trail(&entry) {
            tracing::warn!(copy = %id, "recording the abort in the trail: {e}");
        }
        told.map_err(|e| ReplicationError::Partner {
            kind: partner::client_kind(&e),
            message: format!(
                "copy {id} is cancelled here, but partner {} could not be told to drop its \
                 partial replica ({e}); it drops it after its retention period, or run \
                 `tern copy abort {id}` there",
                rec.partner
            ),
        })
    }
}

/// The record of a copy asked for now.
fn new_copy(
    group: tern_core::names::GroupName,
    container: &ContainerName,
    (name, size): (&ImageName, u64),
    partner: &str,
    to_container: ContainerName,
    to_name: Option<ImageName>,
) -> CopyRecord {
    let now = now_unix();
    CopyRecord {
        state: CopyState::Queued,
        reason: String::new(),
        group,
        container: container.split().1,
        image: name.clone(),
        partner: partner.into(),
        to_container,
        to_name: to_name.unwrap_or_else(|| name.clone()),
        logical_bytes: size,
        done_bytes: 0,
        sent_bytes: 0,
        sent_chunks: 0,
        attempts: 0,
        created: now,
        updated: now,
        awaiting_import: false,
        tier: false,
    }
}

/// A new copy id: 128 bits from the system's random source.
fn fresh_id() -> Result<CopyId, StoreError> {
    let mut id = [0u8; 16];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| StoreError::Io(std::io::Error::other("the system random source failed")))?;
    Ok(CopyId(id))
}
