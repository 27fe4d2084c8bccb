//! A session's chunk intake: the chunks it receives are checked against
//! their ids and stored on a few threads of the session's own, so one
//! session's writes (a backup, or a copy into this server) use more than
//! one core. Checking is most of what the server spends on a received chunk
//! (zstd decompression and blake3), and the session's frames arrive in
//! order on one task.
//!
//! Data frames have no answer, so nothing waits for a chunk here: a chunk
//! that fails is reported at the next request on its image (which is then
//! detached, as an inline failure detaches it), and every request that
//! ends an image's writing (close, suspend, abort, the session's end) first
//! waits until none of its chunks is in flight. A chunk in flight is still
//! in its image's missing set, so a checkpoint meanwhile never makes the
//! image durable past it, and a commit cannot happen before it is stored.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tern_core::wire::Handle;
use tern_core::{ChunkId, Codec};

use super::requests::Refusal;
use crate::store::{Store, WriterId};

/// Most threads one session checks chunks on.
const MAX_WORKERS: usize = 4;
/// Chunks handed to a thread at once: one wake-up per batch, not per
/// chunk (a thread's wake-up costs about what checking a small chunk does).
const BATCH_CHUNKS: usize = 16;
/// Stored bytes handed to a thread at once, at most (and past the batch's
/// last chunk).
const BATCH_BYTES: usize = 1 << 20;

/// A received chunk, waiting for its check.
struct Job {
    handle: Handle,
    writer: WriterId,
    id: ChunkId,
    codec: Codec,
    raw_len: u32,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// Chunks submitted and not yet stored or refused, by image handle.
    in_flight: HashMap<Handle, usize>,
    /// The first failure of each image's chunks, not yet reported.
    failed: HashMap<Handle, Refusal>,
    /// Whether the session waits in `settle` (only then is a chunk's end
    /// signalled).
    settling: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a chunk is done.
    done: Condvar,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, handle: Handle, outcome: Result<(), Refusal>) {
        let mut st = self.state();
        if let Some(n) = st.in_flight.get_mut(&handle) {
            *n -= 1;
            if *n == 0 {
                st.in_flight.remove(&handle);
            }
        }
        if let Err(e) = outcome {
            st.failed.entry(handle).or_insert(e);
        }
        if st.settling {
            self.done.notify_all();
        }
    }
}

/// The chunk intake of one session (see the module's text).
pub struct ChunkIntake {
    store: Arc<Store>,
    shared: Arc<Shared>,
    /// Started at the first chunk; `None` also when no thread could be.
    queue: Option<SyncSender<Vec<Job>>>,
    workers: Vec<JoinHandle<()>>,
    started: bool,
    /// Chunks taken and not yet handed to a thread, and their bytes.
    batch: Vec<Job>,
    batch_bytes: usize,
}

impl ChunkIntake {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                done: Condvar::new(),
            }),
            queue: None,
            workers: Vec::new(),
            started: false,
            batch: Vec::new(),
            batch_bytes: 0,
        }
    }

    /// Takes a received chunk of image `handle` (writer `writer`) for the
    /// intake's threads. Chunks go to them in batches: when a batch is
    /// full ([`Self::batch_full`], then the caller flushes), and when the
    /// session has no frame waiting ([`Self::flush`]). Never blocks.
    pub fn take(
        &mut self,
        handle: Handle,
        writer: WriterId,
        id: ChunkId,
        codec: Codec,
        raw_len: u32,
        bytes: Vec<u8>,
    ) {
        *self.shared.state().in_flight.entry(handle).or_insert(0) += 1;
        self.batch_bytes += bytes.len();
        self.batch.push(Job {
            handle,
            writer,
            id,
            codec,
            raw_len,
            bytes,
        });
    }

    /// The batch is as large as a batch gets: time to flush it.
    pub fn batch_full(&self) -> bool {
        self.batch.len() >= BATCH_CHUNKS || self.batch_bytes >= BATCH_BYTES
    }

    /// Whether chunks wait for [`Self::flush`].
    pub fn holds_chunks(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Hands the chunks taken so far to the threads. Blocks while they are
    /// all busy and the short queue is full, which holds back the session's
    /// frames: the memory a session's chunks take here is bounded.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if !self.started {
            self.start();
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let batch = match &self.queue {
            Some(queue) => match queue.send(batch) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => batch,
        };
        // No thread to take them: checked here, as before the intake.
        put_all(&self.store, &self.shared, batch);
    }

    /// The failure of a chunk of image `handle` not yet reported, if any
    /// (without waiting for the chunks in flight).
    pub fn failure(&self, handle: Handle) -> Option<Refusal> {
        self.shared.state().failed.remove(&handle)
    }

    /// Waits until no chunk of image `handle` is in flight; returns the
    /// failure of one of its chunks not yet reported, if any.
    pub fn settle(&mut self, handle: Handle) -> Option<Refusal> {
        self.flush();
        let mut st = self.shared.state();
        st.settling = true;
        while st.in_flight.contains_key(&handle) {
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.settling = false;
        st.failed.remove(&handle)
    }

    fn start(&mut self) {
        self.started = true;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = cores.clamp(1, MAX_WORKERS);
        let (tx, rx) = sync_channel::<Vec<Job>>(workers);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers {
            let (rx, shared, store) = (rx.clone(), self.shared.clone(), self.store.clone());
            let spawned = std::thread::Builder::new()
                .name("tern-intake".into())
                .spawn(move || loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(batch) = next else { return };
                    put_all(&store, &shared, batch);
                });
            match spawned {
                Ok(t) => self.workers.push(t),
                Err(e) => tracing::warn!("a chunk intake thread did not start: {e}"),
            }
        }
        if self.workers.is_empty() {
            tracing::warn!("no chunk intake thread started: this session checks chunks inline");
        } else {
            self.queue = Some(tx);
        }
    }
}

/// Checks each chunk of a batch against its id and stores it.
fn put_all(store: &Store, shared: &Shared, batch: Vec<Job>) {
    for job in batch {
        let outcome = store
            .image_put_chunk(job.writer, &job.id, job.codec, job.raw_len, &job.bytes)
            .map_err(Refusal::from);
        shared.finish(job.handle, outcome);
    }
}

impl Drop for ChunkIntake {
    /// Lets the threads finish what they hold, then ends them.
    fn drop(&mut self) {
        self.flush();
        self.queue = None;
        for t in self.workers.drain(..) {
            let _ = t.join();
        }
    }
}
