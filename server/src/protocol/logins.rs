//! Password guessing: password checks run on one thread per core (each
//! argon2 check takes ~19 MiB and a core for tens of milliseconds; on their
//! own threads the memory is reused instead of being kept by every thread
//! that ever ran one), and an address that keeps failing waits longer and
//! longer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failures from one address before its logins are slowed down.
const FREE_FAILURES: u32 = 3;
/// The first delay; it doubles with every further failure.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest delay.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Failures older than this are forgotten.
const MEMORY: Duration = Duration::from_secs(600);
/// Addresses remembered at most; past it, the stalest are forgotten.
const MAX_ADDRESSES: usize = 65_536;
/// Failed logins after which a session is closed.
pub const FAILURES_PER_SESSION: u32 = 3;

type Check = Box<dyn FnOnce() + Send>;

/// Shared by every session of a server.
pub struct LoginGuard {
    checks: Mutex<mpsc::Sender<Check>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl LoginGuard {
    /// Starts one checking thread per core.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (checks, queue) = mpsc::channel::<Check>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..cores {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ternd-login-{i}"))
                .spawn(move || loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match next {
                        Ok(check) => check(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a password-checking thread: {e}");
            }
        }
        Self {
            checks: Mutex::new(checks),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a login from `ip` waits before it is checked.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let Some(f) = self.failures().get(&ip).copied() else {
            return Duration::ZERO;
        };
        if f.last.elapsed() > MEMORY || f.count < FREE_FAILURES {
            return Duration::ZERO;
        }
        let doublings = (f.count - FREE_FAILURES).min(16);
        FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
    }

    /// Runs a password check on a checking thread; `None` if none is running.
    pub async fn verify<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Check = Box::new(move || {
            let _ = done.send(check());
        });
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .ok()?;
        answer.await.ok()
    }

    /// Counts a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.failures();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, f| f.last.elapsed() <= MEMORY);
            if map.len() >= MAX_ADDRESSES {
                if let Some(stalest) = map.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k) {
                    map.remove(&stalest);
                }
            }
        }
        let f = map.entry(ip).or_insert(Failures {
            count: 0,
            last: Instant::now(),
        });
        if f.last.elapsed() > MEMORY {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = Instant::now();
    }

    /// Forgets the failures of `ip` after a successful login.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures().remove(&ip);
    }
}

impl Default for LoginGuard {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_a_few_failures_double_and_end_on_success() {
        let g = LoginGuard::new();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert_eq!(g.delay(ip), Duration::ZERO);
            g.failed(ip);
        }
        assert_eq!(g.delay(ip), FIRST_DELAY);
        g.failed(ip);
        assert_eq!(g.delay(ip), FIRST_DELAY * 2);
        for _ in 0..20 {
            g.failed(ip);
        }
        assert_eq!(g.delay(ip), MAX_DELAY);
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(g.delay(other), Duration::ZERO);
        g.succeeded(ip);
        assert_eq!(g.delay(ip), Duration::ZERO);
    }
}
