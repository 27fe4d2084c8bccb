//! The source side's part of the replication trail: entries for copies and
//! refusals, who sees which, and how much one party may write into it.
//!
//! Every entry names the storage group of its image; a user sees the
//! entries of their groups, admins all (partner checks and entries older
//! servers wrote name no group: admins only). Refusals are what anyone can
//! cause at will, so each party (a user, a peer address) has them written
//! one by one only up to a burst and then at a steady rate; the rest are
//! counted into the next one written (`repeats`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tern_core::names::GroupName;
use tern_core::wire::{CopyId, TrailEntry, TrailResult, TrailSide};

use super::{lock, CopyRecord, Replicator};
use crate::store::records::now_unix;
use crate::store::{Scope, StoreError};

/// Refusals one party has written one by one before the rate applies.
const BURST: f64 = 20.0;
/// Then one more per this long.
const REFILL: Duration = Duration::from_secs(3);
/// Parties remembered at most; past it those with nothing held are forgotten.
const MAX_PARTIES: usize = 4096;
/// Trail entries asked for at most.
const MAX_HISTORY: u32 = 100_000;

/// How many refusals each party may still have written one by one.
#[derive(Default)]
pub struct RefusalGate {
    parties: Mutex<HashMap<String, Allowance>>,
}

struct Allowance {
    tokens: f64,
    at: Instant,
    /// Refusals counted and not written since the last one written.
    held: u64,
}

impl RefusalGate {
    /// `Some(held)` if a refusal by `party` now is written, carrying the
    /// count of those held back before it; `None` if it is only counted.
    pub fn admit(&self, party: &str, now: Instant) -> Option<u64> {
        let mut parties = lock(&self.parties);
        if parties.len() >= MAX_PARTIES && !parties.contains_key(party) {
            parties.retain(|_, a| a.held > 0);
        }
        let a = parties.entry(party.to_string()).or_insert(Allowance {
            tokens: BURST,
            at: now,
            held: 0,
        });
        let earned = now.saturating_duration_since(a.at).as_secs_f64() / REFILL.as_secs_f64();
        a.tokens = (a.tokens + earned).min(BURST);
        a.at = now;
        if a.tokens >= 1.0 {
            a.tokens -= 1.0;
            Some(std::mem::take(&mut a.held))
        } else {
            a.held += 1;
            if a.held == 1 {
                tracing::warn!(
                    party,
                    "refusals come faster than one per {} s: counted, not written one by one",
                    REFILL.as_secs()
                );
            }
            None
        }
    }
}

impl Replicator {
    /// Writes a refusal caused by `party` into the trail, or counts it
    /// (see [`RefusalGate`]).
    pub fn record_refusal(&self, party: &str, mut entry: TrailEntry) {
        let Some(repeats) = self.refusals.admit(party, Instant::now()) else {
            return;
        };
        entry.repeats = repeats;
        if let Err(e) = self.store.push_trail(&entry) {
            tracing::warn!("recording a refusal in the trail: {e}");
        }
    }

    /// The entry of one attempt of copy `id`.
    pub(super) fn trail(
        &self,
        id: CopyId,
        rec: &CopyRecord,
        started: u64,
        result: TrailResult,
        reason: &str,
    ) -> TrailEntry {
        let mut entry = refusal(&rec.partner, started, reason);
        entry.copy = id;
        entry.image = format!("{}/{}", rec.container, rec.image);
        entry.logical_bytes = rec.logical_bytes;
        entry.result = result;
        entry.group = Some(rec.group.clone());
        entry.tier = rec.tier;
        if rec.tier {
            entry.peer = rec.to_container.to_string();
        }
        entry
    }

    /// The newest `max` entries `scope` sees, newest first.
    /// The newest `max` entries `scope` sees older than row `before`,
    /// newest first, with their row numbers (a page's cursor).
    pub fn history(
        &self,
        scope: &Scope,
        max: u32,
        before: Option<u64>,
    ) -> Result<Vec<(u64, TrailEntry)>, StoreError> {
        let max = max.clamp(1, MAX_HISTORY) as usize;
        self.store
            .trail(max, before, |e| sees(scope, e.group.as_ref()))
    }
}

/// True if an entry of `group` is shown to `scope`.
fn sees(scope: &Scope, group: Option<&GroupName>) -> bool {
    match group {
        Some(g) => scope.sees(g),
        None => scope.is_every(),
    }
}

/// A source side's entry for a refusal before any copy ran: failed, of no
/// image and no group until the caller says.
pub fn refusal(partner: &str, started: u64, reason: &str) -> TrailEntry {
    TrailEntry {
        copy: CopyId([0; 16]),
        side: TrailSide::Source,
        peer: partner.into(),
        image: String::new(),
        started,
        ended: now_unix(),
        logical_bytes: 0,
        sent_bytes: 0,
        sent_chunks: 0,
        result: TrailResult::Failed,
        reason: reason.into(),
        group: None,
        repeats: 0,
        tier: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_party_gets_a_burst_then_a_rate_and_the_rest_is_counted() {
        let gate = RefusalGate::default();
        let t0 = Instant::now();
        for _ in 0..BURST as usize {
            assert_eq!(gate.admit("mallory", t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(gate.admit("mallory", t0), None);
        }
        // Another party is not held back by the first.
        assert_eq!(gate.admit("alice", t0), Some(0));
        // One refill later, the next is written with the count held back.
        assert_eq!(gate.admit("mallory", t0 + REFILL), Some(1000));
        assert_eq!(gate.admit("mallory", t0 + REFILL), None);
    }

    #[test]
    fn users_see_their_groups_entries_and_only_admins_see_ungrouped_ones() {
        let a = GroupName::new("a").unwrap();
        let b = GroupName::new("b").unwrap();
        let user = Scope::Groups(vec![a.clone()]);
        assert!(sees(&user, Some(&a)));
        assert!(!sees(&user, Some(&b)));
        assert!(!sees(&user, None));
        assert!(sees(&Scope::Every, None));
        assert!(sees(&Scope::Every, Some(&b)));
    }
}
