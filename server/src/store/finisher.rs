//! Finishing full packs off the write path.
//!
//! A full pack needs its table written and an fsync, which waits for the disk.
//! Done inline, every 8 MiB of new data would stall the session that filled
//! the pack. The finisher does it on its own thread; a commit, GC or fsck first
//! waits until every pack handed over before it is finished ([`wait_idle`]).
//!
//! A pack that cannot be made durable (a failed write or fsync) means the
//! kernel may have dropped its data: the store then refuses every further
//! commit until ternd is restarted and recovery has looked at the pack, rather
//! than index chunks that might not be on disk.
//!
//! [`wait_idle`]: PackFinisher::wait_idle

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::pack::PackWriter;
use super::pack_store::PackStore;

/// A full pack and the store that keeps it (which may move it elsewhere
/// once it is finished: a cloud group uploads it).
type Job = (PackWriter, Arc<dyn PackStore>);

/// Full packs waiting for the finisher before `submit` waits: bounds the
/// unsynced data when the disk is slower than the network.
const QUEUE: usize = 4;

#[derive(Default)]
struct Progress {
    submitted: u64,
    finished: u64,
    failed: Option<String>,
}

#[derive(Default)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct PackFinisher {
    queue: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl PackFinisher {
    pub(crate) fn start() -> std::io::Result<Self> {
        let (queue, packs) = sync_channel::<Job>(QUEUE);
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pack-finisher".into())
            .spawn(move || {
                for (pack, store) in packs {
                    let number = pack.number;
                    let outcome = pack.finish().and_then(|()| store.seal(number));
                    let mut p = worker.lock();
                    p.finished += 1;
                    if let Err(e) = outcome {
                        tracing::error!(pack = number, "could not finish pack: {e}");
                        p.failed
                            .get_or_insert(format!("pack {number} could not be made durable: {e}"));
                    }
                    worker.changed.notify_all();
                }
            })?;
        Ok(Self {
            queue: Some(queue),
            shared,
            thread: Some(thread),
        })
    }

    /// Hands a full pack over; waits only while [`QUEUE`] packs are already waiting.
    pub(crate) fn submit(&self, pack: PackWriter, store: Arc<dyn PackStore>) -> Result<(), String> {
        self.check()?;
        let queue = self.queue.as_ref().ok_or("the pack finisher has stopped")?;
        self.shared.lock().submitted += 1;
        if queue.send((pack, store)).is_err() {
            let mut p = self.shared.lock();
            p.submitted -= 1;
            return Err("the pack finisher has stopped".into());
        }
        Ok(())
    }

    /// Waits until every pack submitted so far is finished and durable (and
    /// handed to its store's `seal`).
    pub(crate) fn wait_idle(&self) -> Result<(), String> {
        let mut p = self.shared.lock();
        while p.finished < p.submitted {
            p = self
                .shared
                .changed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
        match &p.failed {
            Some(why) => Err(stopped(why)),
            None => Ok(()),
        }
    }

    /// Fails once a pack could not be finished.
    pub(crate) fn check(&self) -> Result<(), String> {
        match &self.shared.lock().failed {
            Some(why) => Err(stopped(why)),
            None => Ok(()),
        }
    }
}

fn stopped(why: &str) -> String {
    format!("{why}; the store accepts no more writes until ternd is restarted")
}

impl Drop for PackFinisher {
    fn drop(&mut self) {
        // Closing the queue lets the thread finish what is queued and end.
        self.queue = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pack::read_contents;
    use crate::store::pack_store::{DirPackStore, PackStore};
    use tern_core::{ChunkId, Codec};

    /// Hands over packs `1..=n`, one chunk each.
    fn submit_packs(finisher: &PackFinisher, packs: &Arc<DirPackStore>, n: u64) {
        for number in 1..=n {
            let mut w = PackWriter::create(packs.create(number).unwrap(), number).unwrap();
            let data = number.to_le_bytes();
            w.append(&ChunkId::of(&data), Codec::Raw, 8, &data).unwrap();
            finisher.submit(w, packs.clone()).unwrap();
        }
    }

    #[test]
    fn every_submitted_pack_is_finished_when_wait_idle_returns() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Arc::new(DirPackStore::open(dir.path().to_path_buf(), false).unwrap());
        let finisher = PackFinisher::start().unwrap();
        submit_packs(&finisher, &packs, 10);
        finisher.wait_idle().unwrap();
        for n in 1..=10 {
            let c = read_contents(&*packs.open(n).unwrap(), n).unwrap();
            assert!(c.finished, "pack {n}");
            assert_eq!(c.entries.len(), 1);
        }
    }

    #[test]
    fn dropping_the_finisher_finishes_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Arc::new(DirPackStore::open(dir.path().to_path_buf(), false).unwrap());
        let finisher = PackFinisher::start().unwrap();
        submit_packs(&finisher, &packs, 3);
        drop(finisher);
        for n in 1..=3 {
            assert!(read_contents(&*packs.open(n).unwrap(), n).unwrap().finished);
        }
    }
}
