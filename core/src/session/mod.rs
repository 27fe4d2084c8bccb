//! Sessions that outlive their connections (Secure Connect) and spread over
//! several connections at once (MultiConnect).
//!
//! Every sequenced frame gets the next sequence number of its direction and
//! stays in the sender's cache until the peer acknowledges it (cumulatively,
//! in every frame's `ack` and in control `Ack` frames). Frames spread over all
//! live connections; the receiver puts them back in order and drops any it has
//! delivered before. When a connection dies, the frames it carried that are not
//! acknowledged are sent again on another connection, or on a reconnect.
//!
//! The cache keeps frames in memory up to a limit, then in a spill file on
//! disk up to a second limit (an outage need not stop the application at
//! once); past both, senders wait.
//!
//! Control frames (`seq` 0: `Join`, `Joined`, `Ack`) belong to one connection
//! and are neither cached nor delivered.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod connection;
mod liveness;
mod spill;

pub use connection::write_control;
use liveness::clock_ms;
pub use liveness::Mark;
pub use spill::SpillBudget;
use spill::{Payer, Spill};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

use crate::wire::{Envelope, Frame, FrameError, FrameLimits, Msg};

/// How much a session may keep of the frames it sent and the peer has not
/// acknowledged yet.
#[derive(Debug, Clone)]
pub struct CacheLimits {
    /// Bytes of frame payloads kept in memory.
    pub memory: usize,
    /// Bytes of frame payloads kept in a spill file once memory is full; 0
    /// turns spilling off.
    pub disk: u64,
    /// Where the spill file goes. It is unlinked as soon as it is created, so
    /// nothing is left behind by a crash.
    pub spill_dir: PathBuf,
    /// Spill space shared with other sessions (a server's), charged to the
    /// user the session is trusted as; without a user, nothing is spilled.
    pub budget: Option<Arc<SpillBudget>>,
}

impl CacheLimits {
    /// In memory only: senders wait once `memory` bytes are unacknowledged.
    pub fn memory_only(memory: usize) -> Self {
        Self {
            memory,
            disk: 0,
            spill_dir: PathBuf::new(),
            budget: None,
        }
    }
}

/// Bookkeeping overhead charged to every cached or reordered frame besides
/// its payload.
const FRAME_OVERHEAD: usize = 256;

/// Memory the bookkeeping of spilled frames may take at least, however
/// small the memory limit: 4096 frames.
const SPILL_BOOKKEEPING_MIN: usize = 1 << 20;

/// Most frames an untrusted peer may send ahead of the next in order: with
/// [`FrameLimits::BEFORE_LOGIN`] at most a few hundred KiB, decoded.
pub const UNTRUSTED_REORDER: usize = 8;

/// Where a cached frame's payload is.
#[derive(Debug)]
enum Payload {
    Memory(Vec<u8>),
    Spilled { offset: u64, len: usize },
}

/// A sequenced frame waiting for its acknowledgement.
#[derive(Debug)]
pub struct Outgoing {
    /// Its sequence number in the session.
    pub seq: u64,
    /// The request it belongs to.
    pub req: u64,
    /// Its message.
    pub msg: Msg,
    payload: Payload,
    /// Written to some connection at least once.
    written: AtomicBool,
}

impl Outgoing {
    /// What the frame counts against the memory limit.
    fn memory_cost(&self) -> usize {
        match &self.payload {
            Payload::Memory(p) => p.len() + FRAME_OVERHEAD,
            Payload::Spilled { .. } => FRAME_OVERHEAD,
        }
    }
}

/// Why a session or connection ended.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session was closed (by either side, or the grace period ran out).
    #[error("{0}")]
    Closed(String),
    /// The peer broke the session protocol.
    #[error("session protocol: {0}")]
    Protocol(String),
    /// Nothing arrived on a connection for [`DEAD_AFTER`]: the path may
    /// be black-holed.
    #[error("nothing received for {} s", DEAD_AFTER.as_secs())]
    Silent,
}

/// How one connection of a session ended.
#[derive(Debug, Clone, Default)]
pub struct ConnectionEnd {
    /// Why, for logs and errors.
    pub why: String,
    /// Nothing arrived on it for [`DEAD_AFTER`] (no reset, no data): a
    /// client with other addresses for the server tries the next one.
    pub silent: bool,
}

impl std::fmt::Display for ConnectionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// How long to wait between explicit acknowledgements when there is nothing
/// else to send.
const ACK_INTERVAL: Duration = Duration::from_millis(20);
/// An idle connection still sends an `Ack` this often, so the peer can tell a
/// quiet link from a dead one.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A connection that brings nothing for this long is taken for dead and
/// replaced; TCP alone would notice only after minutes or hours. Eight
/// heartbeats missed: a black-holed path is left within 10 s of going
/// silent, with room for a slow link's queues.
pub const DEAD_AFTER: Duration = Duration::from_secs(8);
/// How long closing a connection may take.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

struct State {
    next_seq: u64,
    cache: BTreeMap<u64, Arc<Outgoing>>,
    /// Memory held by `cache`.
    cache_bytes: usize,
    spill: Option<Spill>,
    /// Set when the spill file could not be created or written: the session
    /// goes on with its memory cache only.
    spill_broken: bool,
    /// The user charged for the spill file (see [`CacheLimits::budget`]).
    spill_user: Option<Arc<str>>,
    received: u64,
    reorder: BTreeMap<u64, Frame>,
    reorder_bytes: usize,
    peer_acked: u64,
    closed: Option<String>,
}

/// One side of a session.
pub struct Session {
    state: Mutex<State>,
    queue_tx: mpsc::UnboundedSender<Arc<Outgoing>>,
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Arc<Outgoing>>>,
    resend: Mutex<BTreeMap<u64, Arc<Outgoing>>>,
    /// Woken when frames are queued for resending or the session closes.
    wake: Notify,
    /// Woken when acknowledgements free cache space.
    space: Notify,
    /// In-order delivery to the application.
    inbound: Mutex<Option<mpsc::Sender<Frame>>>,
    limits: CacheLimits,
    live: AtomicUsize,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    /// The highest sequence number written and flushed to some connection.
    flushed_to: AtomicU64,
    /// False until the application trusts the peer (a login): until then
    /// frames are small and few may wait out of order.
    trusted: AtomicBool,
    /// Woken when the number of live connections changes.
    pub connections_changed: Notify,
    /// When bytes last arrived on any connection, by [`clock_ms`].
    heard: AtomicU64,
    /// Readers waiting for the application to take a frame they read.
    delivering: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    /// A session whose in-order frames go to `inbound`, keeping unacknowledged
    /// frames within `limits` before senders wait.
    pub fn new(mut limits: CacheLimits, inbound: mpsc::Sender<Frame>) -> Arc<Self> {
        limits.memory = limits.memory.max(1);
        let (queue_tx, queue) = mpsc::unbounded_channel();
        Arc::new(Self {
            state: Mutex::new(State {
                next_seq: 1,
                cache: BTreeMap::new(),
                cache_bytes: 0,
                spill: None,
                spill_broken: false,
                spill_user: None,
                received: 0,
                reorder: BTreeMap::new(),
                reorder_bytes: 0,
                peer_acked: 0,
                closed: None,
            }),
            queue_tx,
            queue: tokio::sync::Mutex::new(queue),
            resend: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            space: Notify::new(),
            inbound: Mutex::new(Some(inbound)),
            limits,
            live: AtomicUsize::new(0),
            heard: AtomicU64::new(clock_ms()),
            delivering: AtomicUsize::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            flushed_to: AtomicU64::new(0),
            trusted: AtomicBool::new(true),
            connections_changed: Notify::new(),
        })
    }

    /// Queues a frame, waiting while the cache of unacknowledged frames is full.
    pub async fn send(&self, req: u64, msg: Msg, mut payload: Vec<u8>) -> Result<(), SessionError> {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            // Spill space another session gives back also lets this one on.
            let freed = self.limits.budget.as_ref().map(|b| b.freed.notified());
            tokio::pin!(freed);
            if let Some(f) = freed.as_mut().as_pin_mut() {
                f.enable();
            }
            let reserved = {
                let mut st = lock(&self.state);
                if let Some(why) = &st.closed {
                    return Err(SessionError::Closed(why.clone()));
                }
                // An empty cache always takes one frame, whatever its size.
                if st.cache_bytes < self.limits.memory || st.cache.is_empty() {
                    self.enqueue(st, req, msg, Payload::Memory(payload));
                    return Ok(());
                }
                // A spilled frame still costs FRAME_OVERHEAD of memory: past a
                // quarter more than the limit (at least 1 MiB more), even
                // empty frames wait.
                let slack = (self.limits.memory / 4).max(SPILL_BOOKKEEPING_MIN);
                let bookkeeping = self.limits.memory.saturating_add(slack);
                if st.cache_bytes >= bookkeeping {
                    None
                } else {
                    self.reserve_spill(&mut st, payload.len())
                }
            };
            let Some((file, offset)) = reserved else {
                // Memory and spill file are full: wait for acknowledgements.
                match freed.as_mut().as_pin_mut() {
                    Some(freed) => {
                        tokio::select! {
                            _ = space => {}
                            _ = freed => {}
                        }
                    }
                    None => space.await,
                }
                continue;
            };
            // The write runs off the async workers and outside the state
            // lock, which every connection of the session takes.
            let (written, back) = tokio::task::spawn_blocking(move || {
                let r = file.write_all_at(&payload, offset);
                (r, payload)
            })
            .await
            .map_err(|e| SessionError::Closed(format!("the spill writer failed: {e}")))?;
            payload = back;
            let mut st = lock(&self.state);
            match written {
                Ok(()) => {
                    if let Some(why) = &st.closed {
                        return Err(SessionError::Closed(why.clone()));
                    }
                    let len = payload.len();
                    self.enqueue(st, req, msg, Payload::Spilled { offset, len });
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot write the session spill file in {}: {e}; unacknowledged frames stay in memory",
                        self.limits.spill_dir.display()
                    );
                    st.spill_broken = true;
                    if let Some(spill) = st.spill.as_mut() {
                        spill.release(1);
                    }
                }
            }
        }
    }

    /// Puts a frame in the cache and on the send queue, with the next sequence number.
    fn enqueue(
        &self,
        mut st: std::sync::MutexGuard<'_, State>,
        req: u64,
        msg: Msg,
        payload: Payload,
    ) {
        let out = Arc::new(Outgoing {
            seq: st.next_seq,
            req,
            msg,
            payload,
            written: AtomicBool::new(false),
        });
        st.next_seq += 1;
        st.cache_bytes += out.memory_cost();
        st.cache.insert(out.seq, out.clone());
        drop(st);
        let _ = self.queue_tx.send(out);
    }

    /// Reserves `len` bytes at the end of the spill file if they fit; the
    /// caller writes them, without the state lock.
    fn reserve_spill(&self, st: &mut State, len: usize) -> Option<(Arc<File>, u64)> {
        if self.limits.disk == 0 || st.spill_broken {
            return None;
        }
        if st.spill.is_none() {
            let payer = match &self.limits.budget {
                Some(budget) => Some(Payer {
                    budget: budget.clone(),
                    user: st.spill_user.clone()?,
                }),
                None => None,
            };
            match Spill::create(&self.limits.spill_dir, payer) {
                Ok(spill) => st.spill = Some(spill),
                Err(e) => {
                    tracing::warn!(
                        "cannot create a session spill file in {}: {e}; unacknowledged frames stay in memory",
                        self.limits.spill_dir.display()
                    );
                    st.spill_broken = true;
                    return None;
                }
            }
        }
        st.spill.as_mut()?.reserve(len, self.limits.disk)
    }

    /// Reads a spilled payload back for (re)sending.
    fn read_spilled(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        match lock(&self.state).spill.as_ref() {
            Some(spill) => spill.read(offset, len),
            None => Err(std::io::Error::other("the spill file is gone")),
        }
    }

    /// Starts the session untrusted: frames of at most
    /// [`FrameLimits::BEFORE_LOGIN`] and at most [`UNTRUSTED_REORDER`] early
    /// frames, until [`trust`](Self::trust). A server does this before login.
    pub fn distrust(&self) {
        self.trusted.store(false, Ordering::SeqCst);
    }

    /// Lifts the limits of [`distrust`](Self::distrust).
    pub fn trust(&self) {
        self.trusted.store(true, Ordering::SeqCst);
    }

    /// Charges what this session spills to `user`'s share of the budget.
    pub fn spill_as(&self, user: &str) {
        lock(&self.state).spill_user = Some(user.into());
    }

    fn frame_limits(&self) -> FrameLimits {
        if self.trusted.load(Ordering::SeqCst) {
            FrameLimits::FULL
        } else {
            FrameLimits::BEFORE_LOGIN
        }
    }

    /// Waits, at most `limit`, until every frame queued so far has been
    /// written and flushed to a connection: a last word (an error that ends
    /// the session) must reach the peer before [`close`](Self::close) cuts
    /// the connections.
    pub async fn flushed(&self, limit: Duration) {
        let last = lock(&self.state).next_seq.saturating_sub(1);
        let deadline = tokio::time::Instant::now() + limit;
        while self.flushed_to.load(Ordering::SeqCst) < last
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Ends the session: senders and connections stop, the inbound channel closes.
    pub fn close(&self, why: &str) {
        {
            let mut st = lock(&self.state);
            if st.closed.is_none() {
                st.closed = Some(why.to_string());
            }
        }
        self.wake.notify_waiters();
        self.space.notify_waiters();
        self.connections_changed.notify_waiters();
        lock(&self.inbound).take();
    }

    /// Why the session ended, once it has.
    pub fn closed(&self) -> Option<String> {
        lock(&self.state).closed.clone()
    }

    /// The highest sequence number delivered in order.
    pub fn received(&self) -> u64 {
        lock(&self.state).received
    }

    /// Connections currently carrying the session.
    pub fn live_connections(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Bytes written to all connections (frames and control frames).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// Bytes read from all connections.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    /// Memory held by frames sent and not yet acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        lock(&self.state).cache_bytes
    }

    /// Bytes in the spill file, counting those it holds for frames already
    /// acknowledged until it starts over.
    pub fn spilled_bytes(&self) -> u64 {
        lock(&self.state).spill.as_ref().map_or(0, |s| s.end)
    }

    fn on_ack(&self, ack: u64) {
        let mut st = lock(&self.state);
        if ack <= st.peer_acked || ack >= st.next_seq {
            return;
        }
        st.peer_acked = ack;
        let keep = st.cache.split_off(&(ack + 1));
        let acked = std::mem::replace(&mut st.cache, keep);
        st.cache_bytes -= acked.values().map(|o| o.memory_cost()).sum::<usize>();
        let unspilled = acked
            .values()
            .filter(|o| matches!(o.payload, Payload::Spilled { .. }))
            .count();
        if let Some(spill) = st.spill.as_mut() {
            spill.release(unspilled);
        }
        drop(st);
        self.space.notify_waiters();
    }

    /// Queues every frame after `peer_received` that was written before, to be
    /// sent again: the peer says it never got them.
    fn resend_after(&self, peer_received: u64) {
        let frames: Vec<Arc<Outgoing>> = lock(&self.state)
            .cache
            .range(peer_received + 1..)
            .map(|(_, o)| o.clone())
            .filter(|o| o.written.load(Ordering::SeqCst))
            .collect();
        self.requeue(frames);
    }

    fn requeue(&self, frames: Vec<Arc<Outgoing>>) {
        if frames.is_empty() {
            return;
        }
        let acked = lock(&self.state).peer_acked;
        let mut resend = lock(&self.resend);
        for f in frames {
            if f.seq > acked {
                resend.insert(f.seq, f);
            }
        }
        drop(resend);
        self.wake.notify_waiters();
    }

    /// Takes the next frame to write: resends first, then new frames.
    async fn next_outgoing(&self) -> Option<Arc<Outgoing>> {
        loop {
            // Registered before the checks, so a wake-up between them is not lost.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if lock(&self.state).closed.is_some() {
                return None;
            }
            if let Some((_, f)) = lock(&self.resend).pop_first() {
                return Some(f);
            }
            tokio::select! {
                mut q = self.queue.lock() => {
                    tokio::select! {
                        f = q.recv() => return f,
                        _ = &mut woken => continue,
                    }
                }
                _ = &mut woken => continue,
            }
        }
    }

    /// Records an in-order or early frame; delivers what is now in order.
    ///
    /// Cancel-safe: a frame leaves the reorder buffer only together with its
    /// delivery, under the state lock, so a connection dropped mid-way loses nothing.
    async fn receive(&self, frame: Frame) -> Result<(), SessionError> {
        {
            let mut st = lock(&self.state);
            let seq = frame.env.seq;
            // A duplicate is dropped, but delivery below still runs: the original
            // may be waiting in the reorder buffer because the connection that
            // brought it died before handing it on.
            if seq > st.received && !st.reorder.contains_key(&seq) {
                let untrusted = !self.trusted.load(Ordering::SeqCst);
                if untrusted && st.reorder.len() >= UNTRUSTED_REORDER {
                    return Err(SessionError::Protocol(format!(
                        "more than {UNTRUSTED_REORDER} frames ahead of frame {} before login",
                        st.received + 1
                    )));
                }
                // Early frames are bounded by the peer's cache; refuse a peer that ignores it.
                if st.reorder_bytes > 4 * self.limits.memory + (64 << 20) {
                    return Err(SessionError::Protocol(format!(
                        "{} bytes of frames arrived ahead of frame {}",
                        st.reorder_bytes,
                        st.received + 1
                    )));
                }
                st.reorder_bytes += frame.payload.len() + FRAME_OVERHEAD;
                st.reorder.insert(seq, frame);
            }
        }
        let Some(tx) = lock(&self.inbound).clone() else {
            return Err(SessionError::Closed("the session is closed".into()));
        };
        loop {
            let permit = tx
                .reserve()
                .await
                .map_err(|_| SessionError::Closed("the application stopped".into()))?;
            let mut st = lock(&self.state);
            let next = st.received + 1;
            let Some(f) = st.reorder.remove(&next) else {
                return Ok(());
            };
            st.reorder_bytes -= f.payload.len() + FRAME_OVERHEAD;
            st.received = next;
            permit.send(f);
        }
    }
}

#[cfg(test)]
mod tests;
