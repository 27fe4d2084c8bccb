//! Traffic shaping: the bandwidth groups partners' copies and users'
//! backups and restores draw from.
//!
//! Each group paces the bytes of all its jobs on one virtual clock: a job
//! reserves the next slot for a quantum of at most a tenth of a second of
//! the group's rate and waits for it, so the group's total stays within its
//! rate over any window (plus one quantum), and busy jobs, each holding one
//! reservation at a time, take turns: equal shares. The rate in force is
//! read from the group's windows at most a quarter second late; a rate of
//! 0 parks the jobs (they show as paused) until a window allows again.
//! A change of a group's settings resets its clock, so it reaches running
//! jobs at their next quantum.

pub mod schedule;
mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tern_core::wire::{ShapingInfo, ShapingSettings};
use tokio::sync::Notify;

use crate::store::{Store, StoreError};
use schedule::Clock;
pub use table::{ShapingTable, SHAPING};

/// How often the rate in force is read from the windows.
const REFRESH: Duration = Duration::from_millis(250);
/// The most one reservation covers, in time at the group's rate.
const QUANTUM: Duration = Duration::from_millis(100);
/// The smallest reservation, so that a slow group does not pace per byte.
const MIN_QUANTUM: u64 = 4 << 10;
/// Seconds of throughput history kept for `tern shaping ls`.
const METER_SECS: usize = 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every shaping group of the server, as jobs use them.
pub struct Shaper {
    store: Arc<Store>,
    clock: Clock,
    groups: Mutex<HashMap<String, Arc<Group>>>,
}

/// One group's pacing state.
pub struct Group {
    name: String,
    state: Mutex<GroupState>,
    /// Wakes parked sessions when the settings change.
    changed: Notify,
    jobs: AtomicU64,
}

struct GroupState {
    settings: ShapingSettings,
    zone: tz::TimeZone,
    rate: u64,
    window: Option<String>,
    refreshed: Option<Instant>,
    /// When the next reservation may start.
    next_free: Instant,
    /// Bytes per second over the last seconds: (second, bytes).
    meter: [(u64, u64); METER_SECS],
}

/// A job drawing from a group (a copy attempt, a user's session); the
/// group counts it until it is dropped.
pub struct ShapedJob {
    group: Arc<Group>,
    paused: AtomicBool,
}

impl Shaper {
    /// A shaper reading windows on `clock`.
    pub fn new(store: Arc<Store>, clock: Clock) -> Self {
        Self {
            store,
            clock,
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// The shaping groups' table.
    fn table(&self) -> ShapingTable<'_> {
        ShapingTable(self.store.tables())
    }

    /// The group `name`, loaded from the catalog on first use.
    fn group(&self, name: &str) -> Result<Arc<Group>, StoreError> {
        if let Some(g) = lock(&self.groups).get(name) {
            return Ok(g.clone());
        }
        let settings = self.table().group(name)?;
        let zone = schedule::zone(&settings.timezone).map_err(StoreError::Invalid)?;
        let mut groups = lock(&self.groups);
        let g = groups.entry(name.to_string()).or_insert_with(|| {
            Arc::new(Group {
                name: name.to_string(),
                state: Mutex::new(GroupState {
                    settings,
                    zone,
                    rate: 0,
                    window: None,
                    refreshed: None,
                    next_free: Instant::now(),
                    meter: [(0, 0); METER_SECS],
                }),
                changed: Notify::new(),
                jobs: AtomicU64::new(0),
            })
        });
        Ok(g.clone())
    }

    /// A job in group `name` (None: unshaped). A group that cannot be
    /// loaded leaves the job unshaped, with a log line: a missing group
    /// must not stop backups.
    pub fn job(&self, name: Option<&str>) -> Option<Arc<ShapedJob>> {
        let name = name?;
        match self.group(name) {
            Ok(group) => {
                group.jobs.fetch_add(1, Ordering::SeqCst);
                Some(Arc::new(ShapedJob {
                    group,
                    paused: AtomicBool::new(false),
                }))
            }
            Err(e) => {
                tracing::error!("shaping group {name}: {e}; the job runs unshaped");
                None
            }
        }
    }

    /// Creates or replaces a group; its running jobs follow at once.
    pub fn set(&self, name: &str, settings: ShapingSettings) -> Result<(), StoreError> {
        self.table()
            .set(name, &settings, |z| schedule::zone(z).map(|_| ()))?;
        let zone = schedule::zone(&settings.timezone).map_err(StoreError::Invalid)?;
        if let Some(g) = lock(&self.groups).get(name) {
            let mut st = lock(&g.state);
            st.settings = settings;
            st.zone = zone;
            st.refreshed = None;
            st.next_free = Instant::now();
            drop(st);
            g.changed.notify_waiters();
        }
        tracing::info!(group = name, "shaping group set");
        Ok(())
    }

    /// Removes a group no partner or user draws from.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.table().remove(name)?;
        lock(&self.groups).remove(name);
        Ok(())
    }

    /// Every group with its rate now, the window in force and its throughput.
    pub fn list(&self) -> Result<Vec<ShapingInfo>, StoreError> {
        let mut out = Vec::new();
        for (name, settings) in self.table().groups()? {
            let (partners, users) = self.table().assigned(&name)?;
            let group = self.group(&name)?;
            let (rate_now, window, throughput) = {
                let mut st = lock(&group.state);
                st.refresh(&self.clock, true);
                (st.rate, st.window.clone(), st.throughput())
            };
            out.push(ShapingInfo {
                name,
                settings,
                rate_now,
                window_now: window.unwrap_or_default(),
                throughput,
                jobs: group.jobs.load(Ordering::SeqCst) as u32,
                partners,
                users,
            });
        }
        Ok(out)
    }

    /// Waits until `job` may move `bytes` more (at once for no job); a
    /// paused group parks it, marked paused, until a window allows again.
    /// `stop` ends the wait early (a cancelled copy). Blocks the thread:
    /// for copies, which run on threads of their own.
    pub fn acquire(&self, job: Option<&ShapedJob>, bytes: u64, stop: &dyn Fn() -> bool) {
        let Some(job) = job else { return };
        let mut left = bytes;
        while left > 0 && !stop() {
            match self.reserve(job, left) {
                Slot::Paused => std::thread::sleep(REFRESH),
                Slot::At(start, q) => {
                    std::thread::sleep(start.saturating_duration_since(Instant::now()));
                    left -= q;
                }
            }
        }
    }

    /// [`Shaper::acquire`] for a session's task: the wait holds no thread,
    /// a settings change wakes a parked job at once, and `stop` is looked
    /// at every [`REFRESH`] at the latest (a session that has ended).
    /// False when `stop` ended the wait.
    pub async fn pace(
        &self,
        job: &ShapedJob,
        bytes: u64,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> bool {
        let mut left = bytes;
        while left > 0 {
            if stop() {
                return false;
            }
            let changed = job.group.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.reserve(job, left) {
                Slot::Paused => {
                    let _ = tokio::time::timeout(REFRESH, changed).await;
                }
                Slot::At(start, q) => {
                    // Waited out in steps, so that `stop` is heard in a
                    // slow group; the bytes are reserved already.
                    loop {
                        let wait = start.saturating_duration_since(Instant::now());
                        if wait.is_zero() {
                            break;
                        }
                        if stop() {
                            return false;
                        }
                        tokio::time::sleep(wait.min(REFRESH)).await;
                    }
                    left -= q;
                }
            }
        }
        true
    }

    /// Reserves the next slot of `job`'s group for at most one quantum of
    /// `left` bytes, or tells that the group is paused.
    fn reserve(&self, job: &ShapedJob, left: u64) -> Slot {
        let mut st = lock(&job.group.state);
        st.refresh(&self.clock, false);
        if st.rate == 0 {
            job.paused.store(true, Ordering::Relaxed);
            return Slot::Paused;
        }
        job.paused.store(false, Ordering::Relaxed);
        let quantum = (st.rate / (1000 / QUANTUM.as_millis() as u64)).max(MIN_QUANTUM);
        let q = left.min(quantum);
        let start = st.next_free.max(Instant::now());
        st.next_free = start + Duration::from_secs_f64(q as f64 / st.rate as f64);
        st.count(q);
        Slot::At(start, q)
    }
}

/// What a job may do next.
enum Slot {
    /// The group's rate is 0: wait for a window or a settings change.
    Paused,
    /// Move this many bytes once this time has come.
    At(Instant, u64),
}

impl ShapedJob {
    /// Whether the job is parked by a rate of 0.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// The group's rate now, bytes per second.
    pub fn rate(&self) -> u64 {
        lock(&self.group.state).rate
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group.name
    }
}

impl Drop for ShapedJob {
    fn drop(&mut self) {
        self.group.jobs.fetch_sub(1, Ordering::SeqCst);
    }
}

impl GroupState {
    /// Reads the rate in force from the windows, if the last reading is
    /// older than [`REFRESH`] (or `now`); a new rate restarts the pacing.
    fn refresh(&mut self, clock: &Clock, now: bool) {
        if !now && self.refreshed.is_some_and(|t| t.elapsed() < REFRESH) {
            return;
        }
        let (rate, window) = schedule::rate_at(&self.settings, &self.zone, clock.now());
        if rate != self.rate || self.refreshed.is_none() {
            self.next_free = Instant::now();
        }
        self.rate = rate;
        self.window = window;
        self.refreshed = Some(Instant::now());
    }

    fn count(&mut self, bytes: u64) {
        let sec = unix_secs();
        let slot = &mut self.meter[(sec % METER_SECS as u64) as usize];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 += bytes;
    }

    /// Bytes per second over the last [`METER_SECS`] whole seconds.
    fn throughput(&self) -> u64 {
        let now = unix_secs();
        let total: u64 = self
            .meter
            .iter()
            .filter(|(s, _)| *s < now && now - *s <= METER_SECS as u64)
            .map(|(_, b)| b)
            .sum();
        total / METER_SECS as u64
    }
}

fn unix_secs() -> u64 {
    crate::store::records::now_unix()
}
