//! A cloud group's uploads: finished packs wait here, in number order, for
//! the group's own upload thread, so that neither the pack finisher nor
//! another group's commit ever waits on this group's bucket. A commit in
//! the group waits until what was queued before it is uploaded
//! ([`Uploads::wait_queued`]).
//!
//! A failed upload (after `object_store`'s retries) stays queued and is
//! tried again a little later; a commit waiting meanwhile fails with the
//! reason once an attempt made since it began has failed.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Pause between attempts after a failure.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    queue: BTreeSet<u64>,
    /// Attempts finished, successful or not.
    attempts: u64,
    /// Why the last attempt failed, if it did.
    failure: Option<String>,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Uploads {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl Uploads {
    /// Starts the upload thread; `upload(n)` moves pack `n` to the bucket.
    pub fn start(
        name: &str,
        upload: impl Fn(u64) -> io::Result<()> + Send + 'static,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let worker = std::thread::Builder::new()
            .name(format!("upload-{name}"))
            .spawn(move || run(&s, upload))?;
        Ok(Self {
            shared,
            worker: Some(worker),
        })
    }

    /// Queues finished pack `number`.
    pub fn push(&self, number: u64) {
        self.shared.lock().queue.insert(number);
        self.shared.changed.notify_all();
    }

    /// Packs waiting.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Waits until every pack queued before this call is uploaded (packs
    /// queued later do not keep it waiting); the failure of an attempt made
    /// since this call began, if one failed first.
    pub fn wait_queued(&self) -> io::Result<()> {
        let mut s = self.shared.lock();
        let began = s.attempts;
        let Some(upto) = s.queue.last().copied() else {
            return Ok(());
        };
        loop {
            if s.queue.first().is_none_or(|first| *first > upto) {
                return Ok(());
            }
            if s.attempts > began {
                if let Some(why) = &s.failure {
                    return Err(io::Error::other(format!(
                        "{why}; {} packs stay staged and go up once the bucket answers",
                        s.queue.len()
                    )));
                }
            }
            s = self
                .shared
                .changed
                .wait(s)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn run(shared: &Shared, upload: impl Fn(u64) -> io::Result<()>) {
    loop {
        let number = {
            let mut s = shared.lock();
            loop {
                if s.stop {
                    return;
                }
                if let Some(n) = s.queue.first() {
                    break *n;
                }
                s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        };
        let outcome = upload(number);
        let mut s = shared.lock();
        s.attempts += 1;
        match outcome {
            Ok(()) => {
                s.queue.remove(&number);
                s.failure = None;
            }
            Err(e) => {
                tracing::warn!(pack = number, "upload failed, will try again: {e}");
                s.failure = Some(format!("pack {number} could not be uploaded: {e}"));
            }
        }
        shared.changed.notify_all();
        if s.failure.is_some() && !s.stop {
            let _ = shared.changed.wait_timeout(s, RETRY_PAUSE);
        }
    }
}

impl Drop for Uploads {
    /// Stops after the upload under way; what is still queued stays staged
    /// and goes up at the next start.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_waiting_commit_hears_a_failure_and_the_pack_goes_up_once_it_can() {
        let up = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (u2, d2) = (up.clone(), done.clone());
        let uploads = Uploads::start("t", move |n| {
            if !u2.load(Ordering::SeqCst) {
                return Err(io::Error::other("bucket down"));
            }
            d2.lock().unwrap().push(n);
            Ok(())
        })
        .unwrap();
        uploads.push(7);
        uploads.push(3);
        let err = uploads.wait_queued().unwrap_err().to_string();
        assert!(
            err.contains("pack 3 could not be uploaded: bucket down"),
            "{err}"
        );
        assert_eq!(uploads.waiting(), 2);
        up.store(true, Ordering::SeqCst);
        uploads.wait_queued().unwrap();
        assert_eq!(*done.lock().unwrap(), vec![3, 7]);
    }
}
