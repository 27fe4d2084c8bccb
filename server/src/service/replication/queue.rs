//! The copies waiting to run, and the partners that did not answer.
//!
//! A copy that fails because its partner cannot be reached says nothing
//! about the copy: it says the partner is down. So the delay grows per
//! partner, not per copy: while a partner is down its queued copies wait
//! without being looked at, and one copy at a time (the probe) dials it
//! when the partner's delay has passed. The probe's dial decides for all:
//! when it reaches the partner, every copy queued to it is due at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tern_core::wire::CopyId;

/// The longest wait between two dials of a partner that is down.
pub const MAX_PARTNER_DELAY: Duration = Duration::from_secs(60);

/// Queued copies with the earliest time each may run, and the partners
/// found down.
#[derive(Default)]
pub struct CopyQueue {
    waiting: Vec<Waiting>,
    down: HashMap<String, Down>,
}

struct Waiting {
    id: CopyId,
    partner: String,
    at: Instant,
}

/// A partner whose last dial failed.
struct Down {
    /// When it may be dialled again.
    until: Instant,
    /// Dials failed in a row.
    failures: u32,
    /// A copy is dialling it now.
    probing: bool,
}

impl CopyQueue {
    /// Queues copy `id` to `partner` to run at `at` (or later, while the
    /// partner is down).
    pub fn push(&mut self, id: CopyId, partner: &str, at: Instant) {
        self.remove(id);
        self.waiting.push(Waiting {
            id,
            partner: partner.to_owned(),
            at,
        });
    }

    /// Takes copy `id` out of the queue; true if it was there.
    pub fn remove(&mut self, id: CopyId) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| w.id != id);
        self.waiting.len() < before
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The copies that may start at `now`, oldest first, with their
    /// partner: due ones whose partner is up, and for each partner that is
    /// down and due for a dial, one copy to probe it.
    pub fn due(&self, now: Instant) -> Vec<(CopyId, String)> {
        let mut probes: Vec<&str> = Vec::new();
        let mut due = Vec::new();
        for w in self.waiting.iter().filter(|w| w.at <= now) {
            match self.down.get(&w.partner) {
                None => {}
                Some(d) if d.probing || d.until > now => continue,
                Some(_) if probes.contains(&w.partner.as_str()) => continue,
                Some(_) => probes.push(&w.partner),
            }
            due.push((w.id, w.partner.clone()));
        }
        due
    }

    /// Takes copy `id` out of the queue to run it; if its partner is down,
    /// it is that partner's probe. False if it was not queued (cancelled
    /// meanwhile).
    pub fn take(&mut self, id: CopyId) -> bool {
        let Some(i) = self.waiting.iter().position(|w| w.id == id) else {
            return false;
        };
        let w = self.waiting.remove(i);
        if let Some(d) = self.down.get_mut(&w.partner) {
            d.probing = true;
        }
        true
    }

    /// A dial of `partner` failed: it is down until the returned time.
    /// The delay grows with each failed probe; copies that were already
    /// dialling when another found it down wait for the same time.
    pub fn unreachable(&mut self, partner: &str, now: Instant) -> Instant {
        let d = self.down.entry(partner.to_owned()).or_insert(Down {
            until: now,
            failures: 0,
            probing: true,
        });
        if d.probing {
            d.failures = d.failures.saturating_add(1);
            d.probing = false;
            let delay = Duration::from_secs(1 << d.failures.min(6)).min(MAX_PARTNER_DELAY);
            d.until = now + delay;
        }
        d.until
    }

    /// An attempt to `partner` ended otherwise than by a failed dial: if
    /// the partner was down, it is up again and its queued copies are due
    /// at once. True if it was down.
    pub fn answered(&mut self, partner: &str, now: Instant) -> bool {
        if self.down.remove(partner).is_none() {
            return false;
        }
        for w in self.waiting.iter_mut().filter(|w| w.partner == partner) {
            w.at = w.at.min(now);
        }
        true
    }

    /// An attempt to `partner` ended without a dial (cancelled, or failed
    /// on this server): if it was the partner's probe, another copy may
    /// dial in its place.
    pub fn no_dial(&mut self, partner: &str) {
        if let Some(d) = self.down.get_mut(partner) {
            d.probing = false;
        }
    }

    /// True while `partner` is down and not due for a dial.
    pub fn is_down(&self, partner: &str, now: Instant) -> bool {
        self.down.get(partner).is_some_and(|d| d.until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> CopyId {
        CopyId([n; 16])
    }

    #[test]
    fn a_down_partner_gets_one_probe_and_its_copies_wait_until_it_answers() {
        let now = Instant::now();
        let mut q = CopyQueue::default();
        for n in 1..=5 {
            q.push(id(n), "dead", now);
        }
        q.push(id(9), "alive", now);
        assert_eq!(q.due(now).len(), 6);

        q.take(id(1));
        let again = q.unreachable("dead", now);
        assert!(again > now);
        q.push(id(1), "dead", again);
        assert_eq!(q.due(now), vec![(id(9), "alive".to_string())]);

        // Due for a dial: one probe, not five.
        let due = q.due(again);
        let dead: Vec<_> = due.iter().filter(|(_, p)| p == "dead").cloned().collect();
        assert_eq!(dead.len(), 1, "{due:?}");
        q.take(dead[0].0);
        assert!(q.due(again).iter().all(|(_, p)| p != "dead"));

        // The probe fails: a longer wait. A copy that was dialling at the
        // same time waits as long, and does not lengthen it.
        let later = q.unreachable("dead", again);
        q.push(dead[0].0, "dead", later);
        assert!(later - again > again - now);
        assert_eq!(q.unreachable("dead", again), later);

        // Each failed probe waits longer, up to the cap.
        let mut t = later;
        for _ in 0..20 {
            let (probe, _) = q.due(t).into_iter().find(|(_, p)| p == "dead").unwrap();
            q.take(probe);
            let next = q.unreachable("dead", t);
            assert!(next > t && next - t <= MAX_PARTNER_DELAY);
            q.push(probe, "dead", next);
            t = next;
        }

        // The partner answers: all its copies are due at once.
        q.push(id(1), "dead", t + Duration::from_secs(3600));
        assert!(q.answered("dead", t));
        assert_eq!(q.due(t).iter().filter(|(_, p)| p == "dead").count(), 5);
        assert!(!q.answered("dead", t));
    }
}
