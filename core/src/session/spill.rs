//! Spill files: where a session keeps unacknowledged frames once its memory
//! cache is full, and the budget that bounds them across sessions.
//!
//! A spill file is appended to while frames are spilled, and written from the
//! start again whenever no spilled frame is left unacknowledged (it is not
//! truncated: it stays at its high-water mark until the session ends and the
//! unlinked file goes). A server charges every byte a spill file grows by to a
//! [`SpillBudget`] shared by all its sessions, per user and in total, so that
//! no user can tie up the disk by never acknowledging what it asked for.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Spill space shared by the sessions of one server: at most `total` bytes in
/// all, and at most `per_user` for the sessions of one user.
#[derive(Debug)]
pub struct SpillBudget {
    total: u64,
    per_user: u64,
    used: Mutex<Usage>,
    /// Woken when space is given back: a session waiting for spill space may
    /// go on although its own peer acknowledged nothing.
    pub freed: Notify,
}

#[derive(Debug, Default)]
struct Usage {
    total: u64,
    by_user: HashMap<Arc<str>, u64>,
    /// Users told in the log that they reached their bound (once until they
    /// drop below it again).
    warned: Vec<Arc<str>>,
}

impl SpillBudget {
    /// A budget of `total` bytes in all and `per_user` for each user.
    pub fn new(total: u64, per_user: u64) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_user,
            used: Mutex::new(Usage::default()),
            freed: Notify::new(),
        })
    }

    /// Takes `n` bytes for `user`, if both bounds allow it.
    fn charge(&self, user: &Arc<str>, n: u64) -> bool {
        let mut u = lock(&self.used);
        let mine = u.by_user.get(user).copied().unwrap_or(0);
        if u.total + n > self.total || mine + n > self.per_user {
            if !u.warned.contains(user) {
                u.warned.push(user.clone());
                tracing::warn!(
                    user = %user,
                    user_spill_bytes = mine,
                    total_spill_bytes = u.total,
                    "session spill files reached their bound ({} per user, {} in all): the \
                     user's sessions wait for their peers' acknowledgements",
                    self.per_user,
                    self.total
                );
            }
            return false;
        }
        u.total += n;
        *u.by_user.entry(user.clone()).or_insert(0) += n;
        true
    }

    /// Gives back `n` bytes of `user`'s.
    fn release(&self, user: &Arc<str>, n: u64) {
        if n == 0 {
            return;
        }
        let mut u = lock(&self.used);
        u.total = u.total.saturating_sub(n);
        if let Some(mine) = u.by_user.get_mut(user) {
            *mine = mine.saturating_sub(n);
            if *mine == 0 {
                u.by_user.remove(user);
            }
        }
        u.warned.retain(|w| w != user);
        drop(u);
        self.freed.notify_waiters();
    }

    /// Bytes held in spill files now: in all, and per user (largest first).
    pub fn usage(&self) -> (u64, Vec<(String, u64)>) {
        let u = lock(&self.used);
        let mut by_user: Vec<(String, u64)> =
            u.by_user.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        by_user.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        (u.total, by_user)
    }
}

/// Who pays for a session's spill file.
#[derive(Debug, Clone)]
pub(super) struct Payer {
    pub budget: Arc<SpillBudget>,
    pub user: Arc<str>,
}

/// The spill file of one session.
pub(super) struct Spill {
    file: Arc<File>,
    /// Bytes written (or reserved) from the start of the file.
    pub end: u64,
    /// Spilled frames not acknowledged yet, counting reservations.
    live: usize,
    /// Charged for `end` bytes, if a budget applies.
    payer: Option<Payer>,
}

impl Spill {
    /// An empty spill file in `dir`.
    pub fn create(dir: &std::path::Path, payer: Option<Payer>) -> std::io::Result<Self> {
        Ok(Self {
            file: Arc::new(create_spill_file(dir)?),
            end: 0,
            live: 0,
            payer,
        })
    }

    /// Reserves `len` bytes at the end, if the session's own `limit` and the
    /// budget allow; the caller writes them to the file returned.
    pub fn reserve(&mut self, len: usize, limit: u64) -> Option<(Arc<File>, u64)> {
        let len = len as u64;
        if self.end + len > limit {
            return None;
        }
        if let Some(p) = &self.payer {
            if !p.budget.charge(&p.user, len) {
                return None;
            }
        }
        let offset = self.end;
        self.end += len;
        // Counted from the reservation on, so the file is not started over
        // under a write in progress.
        self.live += 1;
        Some((self.file.clone(), offset))
    }

    /// Forgets `n` spilled frames (acknowledged, or a reservation that failed).
    pub fn release(&mut self, n: usize) {
        self.live -= n;
        if n > 0 && self.live == 0 {
            // Nothing spilled is waiting any more: start the file over.
            self.give_back();
        }
    }

    /// Reads a spilled payload back.
    pub fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn give_back(&mut self) {
        if let Some(p) = &self.payer {
            p.budget.release(&p.user, self.end);
        }
        self.end = 0;
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.give_back();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates a spill file in `dir` and unlinks it at once: only this process
/// can reach it, and the kernel frees it when the session ends or the process dies.
fn create_spill_file(dir: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = dir.join(format!(
        ".tern-spill-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_each_user_and_the_total() {
        let b = SpillBudget::new(100, 60);
        let (a, c): (Arc<str>, Arc<str>) = ("a".into(), "c".into());
        assert!(b.charge(&a, 60));
        assert!(!b.charge(&a, 1), "past the per-user bound");
        assert!(b.charge(&c, 40));
        assert!(!b.charge(&c, 1), "past the total");
        b.release(&a, 30);
        assert!(b.charge(&c, 20));
        assert_eq!(b.usage(), (90, vec![("c".into(), 60), ("a".into(), 30)]));
    }

    #[test]
    fn a_spill_file_gives_its_bytes_back_when_it_starts_over_or_goes() {
        let dir = tempfile::tempdir().unwrap();
        let budget = SpillBudget::new(1000, 1000);
        let payer = Payer {
            budget: budget.clone(),
            user: "u".into(),
        };
        let mut s = Spill::create(dir.path(), Some(payer.clone())).unwrap();
        assert!(s.reserve(100, 1000).is_some());
        assert!(s.reserve(50, 1000).is_some());
        assert_eq!(budget.usage().0, 150);
        s.release(2);
        assert_eq!(budget.usage().0, 0);
        assert!(s.reserve(70, 1000).is_some());
        drop(s);
        assert_eq!(budget.usage().0, 0);
    }
}
