//! The engine's replication tables: the trail and import events (format
//! 3), both written inside the engine's own transactions (a replica's
//! commit). Partners and copy jobs are the service layer's
//! (`service::replication::tables`). `docs/store-format.md` describes them.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tern_core::wire::{CopyId, ImportEvent, ImportState, TrailEntry};
use tern_core::ContainerName;

use super::{decode, encode, next_counter, Catalog};
use crate::store::records::EventRecord;
use crate::store::{Result, StoreError};

/// Attempt number -> [`TrailEntry`], oldest first; trimmed to [`TRAIL_KEEP`].
pub const TRAIL: TableDefinition<u64, &[u8]> = TableDefinition::new("trail");
/// (container id, event id) -> [`EventRecord`].
pub const EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("events");
/// Copy id -> (container id, event id) of the event its replica raised.
pub const EVENT_OF_COPY: TableDefinition<u128, (u64, u64)> = TableDefinition::new("event_of_copy");

/// Trail entries kept: at least 10,000, trimmed in steps so that not every
/// attempt deletes one.
pub const TRAIL_KEEP: u64 = 10_000;
const TRAIL_SLACK: u64 = 1_000;

/// Creates the tables in a write transaction (a new catalog or format 2 -> 3).
pub(super) fn create_tables(tx: &redb::WriteTransaction) -> Result<()> {
    tx.open_table(TRAIL)?;
    tx.open_table(EVENTS)?;
    tx.open_table(EVENT_OF_COPY)?;
    Ok(())
}

fn key(id: CopyId) -> u128 {
    u128::from_be_bytes(id.0)
}

/// Appends a trail entry inside `tx`, trimming the oldest past the limit.
pub(in crate::store) fn push_trail(tx: &redb::WriteTransaction, entry: &TrailEntry) -> Result<()> {
    let n = next_counter(tx, "next_trail")?;
    let mut t = tx.open_table(TRAIL)?;
    t.insert(n, encode(entry)?.as_slice())?;
    if n > TRAIL_KEEP + TRAIL_SLACK {
        let below = n - TRAIL_KEEP;
        t.retain_in(0..below, |_, _| false)?;
    }
    Ok(())
}

impl Catalog {
    // ---- the trail -----------------------------------------------------------

    pub fn push_trail(&self, entry: &TrailEntry) -> Result<()> {
        let tx = self.begin_write()?;
        push_trail(&tx, entry)?;
        tx.commit()?;
        Ok(())
    }

    /// The newest `max` entries older than row `before` that `shown`
    /// keeps, newest first, with their row numbers.
    pub fn trail(
        &self,
        max: usize,
        before: Option<u64>,
        shown: impl Fn(&TrailEntry) -> bool,
    ) -> Result<Vec<(u64, TrailEntry)>> {
        let t = self.db.begin_read()?.open_table(TRAIL)?;
        let mut out = Vec::new();
        for row in t.range(..before.unwrap_or(u64::MAX))?.rev() {
            if out.len() >= max {
                break;
            }
            let row = row?;
            let entry: TrailEntry = decode("trail", row.1.value())?;
            if shown(&entry) {
                out.push((row.0.value(), entry));
            }
        }
        Ok(out)
    }

    // ---- import events -------------------------------------------------------

    /// Unacknowledged events of a container after event `after`, oldest
    /// first, at most `max`.
    pub fn events(
        &self,
        container_id: u64,
        container: &ContainerName,
        max: usize,
        after: Option<u64>,
    ) -> Result<Vec<ImportEvent>> {
        let t = self.db.begin_read()?.open_table(EVENTS)?;
        let mut out = Vec::new();
        let from = after.map_or(0, |a| a.saturating_add(1));
        for row in t.range((container_id, from)..=(container_id, u64::MAX))? {
            if out.len() >= max {
                break;
            }
            let (k, v) = row?;
            let rec: EventRecord = decode("event", v.value())?;
            if rec.acked {
                continue;
            }
            out.push(ImportEvent {
                id: k.value().1,
                time: rec.time,
                container: container.clone(),
                image: rec.image,
                size: rec.size,
                props: rec.props,
                origin: rec.origin,
            });
        }
        Ok(out)
    }

    /// Acknowledges events of a container; `NotFound` names the first
    /// unknown id, and then none is acknowledged.
    pub fn ack_events(&self, container_id: u64, ids: &[u64]) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut t = tx.open_table(EVENTS)?;
            for &id in ids {
                let mut rec: EventRecord = match t.get((container_id, id))? {
                    Some(v) => decode("event", v.value())?,
                    None => {
                        return Err(StoreError::NotFound(format!(
                            "no import event {id} in this container"
                        )))
                    }
                };
                if !rec.acked {
                    rec.acked = true;
                    t.insert((container_id, id), encode(&rec)?.as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether each copy's import event was acknowledged.
    pub fn import_states(
        &self,
        copies: &[CopyId],
        visible: impl Fn(u64) -> bool,
    ) -> Result<Vec<ImportState>> {
        let tx = self.db.begin_read()?;
        let of_copy = tx.open_table(EVENT_OF_COPY)?;
        let events = tx.open_table(EVENTS)?;
        let mut out = Vec::new();
        for &c in copies {
            let at = of_copy.get(key(c))?.map(|v| v.value());
            let state = match at {
                None => ImportState::NoEvent,
                // Another group's replica is as absent.
                Some((container, _)) if !visible(container) => ImportState::NoEvent,
                Some(at) => match events.get(at)? {
                    None => ImportState::NoEvent,
                    Some(v) => {
                        if decode::<EventRecord>("event", v.value())?.acked {
                            ImportState::Imported
                        } else {
                            ImportState::Pending
                        }
                    }
                },
            };
            out.push(state);
        }
        Ok(out)
    }
}

/// Records the import event of a replica inside its commit transaction.
pub(super) fn insert_event(
    tx: &redb::WriteTransaction,
    container_id: u64,
    rec: &EventRecord,
) -> Result<u64> {
    let id = next_counter(tx, "next_event")?;
    tx.open_table(EVENTS)?
        .insert((container_id, id), encode(rec)?.as_slice())?;
    tx.open_table(EVENT_OF_COPY)?
        .insert(key(rec.origin.copy), (container_id, id))?;
    Ok(id)
}
