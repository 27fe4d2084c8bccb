//! Running copies: the scheduler thread starts queued copies within each
//! partner's limit, runs each attempt on a thread of its own, records how it
//! ended (queued again after a fault that may pass, with a growing delay),
//! and asks partners about the import events of done copies (each partner
//! on a thread of its own, so that one that stalls delays nothing else).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_core::wire::{CopyId, CopyState, ImportState, TrailResult};

use super::{copy, lock, partner, tier_copy, Live, Replicator, MAX_ATTEMPTS, MAX_RETRY_DELAY};

/// How often recently done copies are asked about their import events.
const IMPORT_POLL: Duration = Duration::from_secs(3);
/// Seconds after which a done copy is asked about only every [`IMPORT_POLL_SLOW`].
const IMPORT_FRESH: u64 = 120;
const IMPORT_POLL_SLOW: Duration = Duration::from_secs(60);
use crate::store::records::now_unix;
use crate::store::{Scope, StoreError};

impl Replicator {
    pub(super) fn schedule_forever(self: Arc<Self>) {
        let (mut last_poll, mut last_full_poll) = (Instant::now(), Instant::now());
        loop {
            self.start_due();
            if last_poll.elapsed() >= IMPORT_POLL {
                let all = last_full_poll.elapsed() >= IMPORT_POLL_SLOW;
                self.poll_imports(all);
                last_poll = Instant::now();
                if all {
                    last_full_poll = last_poll;
                }
            }
            let mut woken = lock(&self.woken);
            if !*woken {
                woken = self
                    .wake
                    .wait_timeout(woken, Duration::from_millis(500))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            *woken = false;
        }
    }

    /// Starts the queued copies that are due, within each partner's limit.
    /// Copies of a partner that is down are not even read (see `queue.rs`).
    fn start_due(self: &Arc<Self>) {
        let now = Instant::now();
        let due = lock(&self.queue).due(now);
        for (id, partner) in due {
            let running = {
                let live = lock(&self.live);
                live.values().filter(|l| l.partner == partner).count()
            };
            if running >= self.max_per_partner {
                continue;
            }
            let tier = match self.tables().copy(id) {
                Ok(Some(rec)) if !rec.state.is_final() => rec.tier,
                Ok(_) => {
                    lock(&self.queue).remove(id);
                    continue;
                }
                Err(e) => {
                    tracing::error!(copy = %id, "reading the copy: {e}");
                    continue;
                }
            };
            let live = Arc::new(Live {
                partner: partner.clone(),
                tier,
                ..Live::default()
            });
            {
                // Taken and live in one step: a cancel finds it in one or
                // the other (see `Replicator::cancel`).
                let mut queue = lock(&self.queue);
                if !queue.take(id) {
                    continue;
                }
                lock(&self.live).insert(id, live.clone());
            }
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("ternd-copy".into())
                .spawn(move || me.run(id, live));
            if let Err(e) = spawned {
                tracing::error!(copy = %id, "starting the copy's thread: {e}");
                lock(&self.live).remove(&id);
                let mut queue = lock(&self.queue);
                queue.no_dial(&partner);
                queue.push(id, &partner, now + Duration::from_secs(5));
            }
        }
    }

    /// Runs one attempt of a copy and records how it ended.
    fn run(self: Arc<Self>, id: CopyId, live: Arc<Live>) {
        let started = now_unix();
        let marked = self.tables().update_copy(
            id,
            |r| {
                r.state = CopyState::Running;
                r.attempts += 1;
                r.updated = started;
            },
            None,
        );
        let outcome = match &marked {
            Ok(rec) if rec.tier => tier_copy::attempt(&self, id, rec, &live),
            Ok(rec) => copy::attempt(&self, id, rec, &live),
            Err(e) => Err(copy::Failure::Transient(format!(
                "recording the start: {e}"
            ))),
        };
        // Dropped once the end is recorded: a client's goodbye may wait up
        // to 2 s behind a congested link, and a cancel must show at once.
        let client = lock(&live.client).take();
        lock(&live.shaped).take();
        // Only an attempt that got through says the partner is up (a copy
        // cancelled before its dial says nothing).
        let reached = client.is_some();

        let attempts = marked.as_ref().map_or(1, |r| r.attempts);
        let unreachable = matches!(outcome, Err(copy::Failure::Unreachable(_)));
        let drop_replica = matches!(
            outcome,
            Err(copy::Failure::Cancelled | copy::Failure::Permanent(_))
        );
        let (state, result, reason) = ending(outcome, attempts);
        let sent = live.sent_bytes.load(Ordering::Relaxed);
        let chunks = live.sent_chunks.load(Ordering::Relaxed);
        let done = live.done.load(Ordering::Relaxed);
        let mut entry = match &marked {
            Ok(rec) => self.trail(id, rec, started, result, &reason),
            Err(_) => {
                let mut e = super::trail::refusal(&live.partner, started, &reason);
                e.copy = id;
                e.result = result;
                e
            }
        };
        entry.sent_bytes = sent;
        entry.sent_chunks = chunks;
        let recorded = self.tables().update_copy(
            id,
            |r| {
                r.state = state;
                r.reason = reason.clone();
                if unreachable {
                    // A dial that found nobody is the partner's failure,
                    // not an attempt of this copy.
                    r.attempts = r.attempts.saturating_sub(1);
                }
                r.sent_bytes += sent;
                r.sent_chunks += chunks;
                r.done_bytes = r.done_bytes.max(done);
                if state == CopyState::Done {
                    r.done_bytes = r.logical_bytes;
                    // A tier copy's replica raises no event anyone acknowledges.
                    r.awaiting_import = !r.tier;
                }
                r.updated = now_unix();
            },
            Some(&entry),
        );
        lock(&self.live).remove(&id);
        drop(client);
        if drop_replica {
            // After the state is recorded: a cancel shows at once.
            self.abort_at_target(id, &live);
        }
        let dial = if unreachable {
            Dial::Failed
        } else if reached {
            Dial::Reached
        } else {
            Dial::None
        };
        self.follow_up(id, &live, recorded.map(|_| state), dial, attempts, &reason);
        self.wake();
    }

    /// What comes after an attempt whose end was recorded (or not): a
    /// retry (when its partner may be dialled again, if the dial failed),
    /// the wait for the import, or nothing but a log line.
    fn follow_up(
        &self,
        id: CopyId,
        live: &Live,
        recorded: Result<CopyState, StoreError>,
        dial: Dial,
        attempts: u32,
        reason: &str,
    ) {
        let (partner, now) = (live.partner.as_str(), Instant::now());
        let mut queue = lock(&self.queue);
        if dial == Dial::Failed {
            let again = queue.unreachable(partner, now);
            tracing::warn!(copy = %id, partner, "partner unreachable, its copies wait {} s: {reason}", (again - now).as_secs());
            queue.push(id, partner, again);
            return;
        }
        match dial {
            Dial::Reached if queue.answered(partner, now) => {
                tracing::info!(partner, "partner reachable again: its queued copies run");
            }
            Dial::None => queue.no_dial(partner),
            _ => {}
        }
        match recorded {
            Err(e) => {
                tracing::error!(copy = %id, "recording the end of an attempt: {e}");
                // Run it again: the catalog may take it later.
                queue.push(id, partner, now + MAX_RETRY_DELAY);
            }
            Ok(CopyState::Queued) => {
                let delay = Duration::from_secs(1 << attempts.min(6)).min(MAX_RETRY_DELAY);
                tracing::warn!(copy = %id, attempts, "copy attempt failed, again in {} s: {reason}", delay.as_secs());
                queue.push(id, partner, now + delay);
            }
            Ok(CopyState::Done) => {
                drop(queue);
                let sent = live.sent_bytes.load(Ordering::Relaxed);
                tracing::info!(copy = %id, sent_bytes = sent, tier = live.tier, "copy done");
                if !live.tier {
                    lock(&self.awaiting_import).insert(id);
                }
            }
            Ok(state) => tracing::warn!(copy = %id, "copy {}: {reason}", state.as_str()),
        }
    }

    /// Tells the target to drop what this copy wrote, through a session of
    /// its own: the old session's queue may hold seconds of chunk data, and
    /// the target would keep the replica open until its grace period ends.
    fn abort_at_target(&self, id: CopyId, live: &Live) {
        if live.tier {
            if let Err(e) = self
                .store
                .replica_abort(&Scope::Every, id, "the tier copy ended")
            {
                tracing::warn!(copy = %id, "dropping the tier copy's partial replica: {e}");
            }
            return;
        }
        let Ok(Some(p)) = self.tables().partner(&live.partner) else {
            return;
        };
        let outcome = partner::connect(&p, &self.me).and_then(|c| c.replica_abort(id));
        if let Err(e) = outcome {
            tracing::info!(copy = %id, "telling the target to drop the replica: {e}");
        }
    }

    /// Asks each partner whether the import events of done copies were
    /// acknowledged; records `imported` (or stops asking when there is no event).
    ///
    /// Copies done in the last [`IMPORT_FRESH`] seconds are asked about at
    /// every call, the others only when `all`: a target whose DMA takes its
    /// time is not logged into every few seconds forever.
    fn poll_imports(self: &Arc<Self>, all: bool) {
        let ids: Vec<CopyId> = lock(&self.awaiting_import).iter().copied().collect();
        let mut by_partner: HashMap<String, Vec<CopyId>> = HashMap::new();
        let now = now_unix();
        for id in ids {
            match self.tables().copy(id) {
                Ok(Some(rec)) if !all && now.saturating_sub(rec.updated) > IMPORT_FRESH => {}
                Ok(Some(rec)) => by_partner.entry(rec.partner).or_default().push(id),
                _ => {
                    lock(&self.awaiting_import).remove(&id);
                }
            }
        }
        // Each partner on a thread of its own, one poll at a time: a
        // partner that stalls delays neither the copies nor the others.
        let now = Instant::now();
        for (name, ids) in by_partner {
            if lock(&self.queue).is_down(&name, now) {
                continue;
            }
            if !lock(&self.polling).insert(name.clone()) {
                continue;
            }
            let (me, key) = (self.clone(), name.clone());
            let poll = move || {
                me.poll_partner(&name, ids);
                lock(&me.polling).remove(&name);
            };
            if let Err(e) = std::thread::Builder::new()
                .name("ternd-import-poll".into())
                .spawn(poll)
            {
                tracing::error!("starting an import poll: {e}");
                lock(&self.polling).remove(&key);
            }
        }
    }

    /// Asks partner `name` about the import of copies `ids` and records
    /// the answers.
    fn poll_partner(&self, name: &str, ids: Vec<CopyId>) {
        let Ok(Some(p)) = self.tables().partner(name) else {
            return;
        };
        let states = partner::connect(&p, &self.me).and_then(|c| c.import_states(&ids));
        let states = match states {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(partner = name, "asking about imports: {e}");
                return;
            }
        };
        for (id, state) in ids.into_iter().zip(states) {
            let change = match state {
                ImportState::Pending => continue,
                ImportState::Imported => Some(CopyState::Imported),
                ImportState::NoEvent => None,
            };
            let updated = self.tables().update_copy(
                id,
                |r| {
                    r.awaiting_import = false;
                    if let Some(s) = change {
                        r.state = s;
                        r.updated = now_unix();
                    }
                },
                None,
            );
            match updated {
                Ok(_) => {
                    lock(&self.awaiting_import).remove(&id);
                }
                Err(e) => tracing::warn!(copy = %id, "recording the import: {e}"),
            }
        }
    }
}

/// What an attempt's dial of its partner found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dial {
    /// Nobody answered.
    Failed,
    /// The partner answered.
    Reached,
    /// No dial (cancelled or failed before it).
    None,
}

/// How an attempt's outcome is recorded: the copy's next state, the trail's
/// result and the reason.
fn ending(outcome: Result<(), copy::Failure>, attempts: u32) -> (CopyState, TrailResult, String) {
    match outcome {
        Ok(()) => (CopyState::Done, TrailResult::Ok, String::new()),
        Err(copy::Failure::Cancelled) => (
            CopyState::Cancelled,
            TrailResult::Cancelled,
            "cancelled".into(),
        ),
        Err(copy::Failure::Unreachable(r)) => (CopyState::Queued, TrailResult::Retrying, r),
        Err(copy::Failure::Transient(r)) if attempts < MAX_ATTEMPTS => {
            (CopyState::Queued, TrailResult::Retrying, r)
        }
        Err(copy::Failure::Transient(r) | copy::Failure::Permanent(r)) => {
            (CopyState::Failed, TrailResult::Failed, r)
        }
    }
}
