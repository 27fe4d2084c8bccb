//! Stopping calls from outside: cancel and time limits.
//!
//! Every wait of a call (for room in the send queue, for an answer) also
//! watches a [`Stop`]. A call made on the client gets a stop of its own; an
//! image has one for its whole life, shared by its pipeline threads. The
//! client keeps a weak list of every live stop, so that
//! [`Client::cancel`](crate::Client::cancel) fires them all, and a per-call
//! time limit is a timer that fires the call's stop.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::ClientError;

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const TIMED_OUT: u8 = 2;

/// Fired once, by a cancel or a time limit; every wait that watches it ends.
#[derive(Debug, Default)]
pub struct Stop {
    why: AtomicU8,
    /// The limit that fired, for the message.
    limit: Mutex<Duration>,
    notify: Notify,
}

impl Stop {
    /// Ends every wait watching this stop with [`ClientError::Cancelled`].
    pub fn cancel(&self) {
        self.fire(CANCELLED);
    }

    /// Ends every wait watching this stop with [`ClientError::TimedOut`].
    pub fn time_out(&self, limit: Duration) {
        *self.limit.lock().unwrap_or_else(|e| e.into_inner()) = limit;
        self.fire(TIMED_OUT);
    }

    fn fire(&self, why: u8) {
        if self
            .why
            .compare_exchange(RUNNING, why, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.notify.notify_waiters();
        }
    }

    /// The error to end a call with, once fired.
    pub fn check(&self) -> Result<(), ClientError> {
        match self.why.load(Ordering::SeqCst) {
            RUNNING => Ok(()),
            CANCELLED => Err(ClientError::Cancelled),
            _ => Err(ClientError::TimedOut(
                *self.limit.lock().unwrap_or_else(|e| e.into_inner()),
            )),
        }
    }

    /// True once fired.
    pub fn is_fired(&self) -> bool {
        self.why.load(Ordering::SeqCst) != RUNNING
    }

    /// Resolves once fired.
    pub async fn fired(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_fired() {
                return;
            }
            notified.await;
        }
    }
}

/// Every live stop of a client, so that a cancel reaches them all.
#[derive(Debug, Default)]
pub struct Stops {
    cancelled: std::sync::atomic::AtomicBool,
    live: Mutex<Vec<Weak<Stop>>>,
}

impl Stops {
    /// A new stop, already cancelled if the client was.
    pub fn make(&self) -> Arc<Stop> {
        let stop = Arc::new(Stop::default());
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&stop));
        drop(live);
        if self.cancelled.load(Ordering::SeqCst) {
            stop.cancel();
        }
        stop
    }

    /// Cancels every live stop and every later one.
    pub fn cancel_all(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let live: Vec<Arc<Stop>> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for s in live {
            s.cancel();
        }
    }
}

/// A time limit on one call: fires `stop` when `limit` passes, unless dropped first.
pub struct Deadline(Option<tokio::task::JoinHandle<()>>);

impl Deadline {
    /// Arms the limit on the runtime `rt`; `None` sets no limit.
    pub fn arm(rt: &tokio::runtime::Handle, stop: &Arc<Stop>, limit: Option<Duration>) -> Self {
        Deadline(limit.map(|limit| {
            let stop = stop.clone();
            rt.spawn(async move {
                tokio::time::sleep(limit).await;
                stop.time_out(limit);
            })
        }))
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_every_live_stop_and_every_later_one() {
        let stops = Stops::default();
        let a = stops.make();
        drop(stops.make());
        assert!(a.check().is_ok());
        stops.cancel_all();
        assert!(matches!(a.check(), Err(ClientError::Cancelled)));
        assert!(matches!(stops.make().check(), Err(ClientError::Cancelled)));
    }

    #[test]
    fn the_first_reason_stays() {
        let s = Stop::default();
        s.time_out(Duration::from_secs(3));
        s.cancel();
        assert!(matches!(s.check(), Err(ClientError::TimedOut(d)) if d.as_secs() == 3));
    }
}
