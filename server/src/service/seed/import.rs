//! `ternd seed import`: loads each volume's chunks into a storage group,
//! pinned, in one pass that opens every segment's seal, checks every chunk
//! against its id and, before the transaction that records the volume as
//! loaded, the file's size and blake3 against the manifest's; a damaged
//! volume is refused and the others still load. The seed's record in the
//! catalog says which volumes are in, so an interrupted import goes on with
//! the rest (a volume cut off midway loads again, and the chunks it already
//! stored are found and skipped).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tern_core::names::GroupName;

use super::format::{damaged, file_name, volume_file, Record, SegmentReader, KIND_VOLUME};
use super::seal::Sealer;
use super::SeedRecord;
use super::{read_manifest, Manifest, SeedError, VolumeEntry};
use crate::store::records::now_unix;
use crate::store::{LoadedBatch, SeedPin, Store, StoreError, Verified};

/// Chunks are loaded and committed in batches of about this many bytes.
const BATCH_BYTES: usize = 32 << 20;
/// Threads that check chunks against their ids while a volume loads.
const CHECKERS: usize = 2;
/// Segments (about 1 MiB each) queued between the stages of a load: a
/// batch's worth, so that the checkers go on while a batch is synced and
/// committed (with 8, they waited for it: import took 1.2x as long).
const CHECK_AHEAD: usize = 32;
/// Days a seed's chunks stay pinned unless the import says otherwise.
pub const DEFAULT_PIN_DAYS: u64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    pub from: PathBuf,
    pub password: Option<String>,
    pub group: String,
    pub pin_days: u64,
    /// The operator accepts a seed without encryption, whose tags anyone
    /// who can write the media can forge.
    #[serde(default)]
    pub unencrypted: bool,
}

/// A volume that was not loaded, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refused {
    pub file: String,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportReport {
    pub seed: String,
    pub source: String,
    pub group: String,
    /// Volumes loaded by this run, and those an earlier run loaded.
    pub loaded: Vec<u32>,
    pub already: Vec<u32>,
    pub refused: Vec<Refused>,
    /// Volumes the manifest lists that are neither here nor loaded before.
    pub missing: Vec<u32>,
    /// False when this device's manifest was written before the export
    /// went on to another device: later volumes are not listed here.
    pub manifest_complete: bool,
    pub chunks_loaded: u64,
    pub chunks_present: u64,
    pub bytes_loaded: u64,
    pub pinned_until: u64,
}

pub fn import(
    store: &Store,
    req: &ImportRequest,
    progress: super::Progress<'_>,
) -> Result<ImportReport, SeedError> {
    let (m, header, key) = read_manifest(&req.from, req.password.as_deref())?;
    if !header.encrypted && !req.unencrypted {
        return Err(SeedError::Invalid(
            "this seed is not encrypted: its tags are keyless checksums that anyone who \
             could write the media could have recomputed, so they prove nothing about where \
             its chunks came from; import it with --unencrypted if you trust the media's path"
                .into(),
        ));
    }
    let group_name =
        GroupName::new(req.group.clone()).map_err(|e| SeedError::Invalid(e.to_string()))?;
    let group = store.seed_group(&group_name)?;
    let mut rec = seed_record(store, &m, &group_name, req.pin_days)?;
    let mut report = ImportReport {
        seed: m.seed.clone(),
        source: m.source_server_id.clone(),
        group: group_name.to_string(),
        loaded: Vec::new(),
        already: Vec::new(),
        refused: strangers(&req.from, &m)?,
        missing: Vec::new(),
        manifest_complete: m.complete,
        chunks_loaded: 0,
        chunks_present: 0,
        bytes_loaded: 0,
        pinned_until: rec.pin_expires,
    };
    let sealer = Sealer::new(key.as_ref());
    let todo: Vec<&VolumeEntry> = m
        .volumes
        .iter()
        .filter(|v| !rec.volumes_done.contains(&v.number))
        .filter(|v| req.from.join(volume_file(v.number)).exists())
        .collect();
    let total: u64 = todo.iter().map(|v| v.size).sum();
    let mut done = 0u64;
    for v in &m.volumes {
        let path = req.from.join(volume_file(v.number));
        if rec.volumes_done.contains(&v.number) {
            report.already.push(v.number);
            continue;
        }
        if !path.exists() {
            report.missing.push(v.number);
            continue;
        }
        let keep_going = |bytes: u64| progress(done + bytes.min(v.size), total);
        let into = (group, &header.seed, m.seed.as_str());
        let mut stored = LoadedBatch::default();
        let loaded = load(
            store,
            &path,
            v,
            into,
            &sealer,
            &mut rec,
            &mut stored,
            &keep_going,
        );
        done += v.size;
        if matches!(loaded, Err(SeedError::Interrupted)) || !progress(done, total) {
            return Err(SeedError::Interrupted);
        }
        report.add(v.number, &path, stored, loaded)?;
    }
    if report.loaded.is_empty() && store.seed_record::<SeedRecord>(&m.seed)?.is_none() {
        // Nothing loaded: still record the seed (its pins' expiry, its
        // volumes) so that status shows it.
        let pin = SeedPin {
            seed: &header.seed,
            id: &m.seed,
            expires: rec.pin_expires,
        };
        store.seed_load(group, &Verified::default(), pin, &mut rec, |_, _| {})?;
    }
    Ok(report)
}

impl ImportReport {
    /// Counts a volume loaded, or refused for damage; other errors end the
    /// import. `stored` is what its committed batches stored either way: a
    /// volume found damaged midway keeps the chunks stored before (each was
    /// checked against its id), and a repaired one finds them present.
    fn add(
        &mut self,
        number: u32,
        path: &Path,
        stored: LoadedBatch,
        loaded: Result<(), SeedError>,
    ) -> Result<(), SeedError> {
        self.chunks_loaded += stored.loaded;
        self.chunks_present += stored.present;
        self.bytes_loaded += stored.bytes;
        match loaded {
            Ok(()) => self.loaded.push(number),
            Err(e @ (SeedError::Damaged { .. } | SeedError::Store(StoreError::Invalid(_)))) => {
                self.refused.push(Refused {
                    file: file_name(path),
                    why: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// The seed's record: an earlier import's (which must have loaded into the
/// same group), or a new one; its pins run `pin_days` from now.
fn seed_record(
    store: &Store,
    m: &Manifest,
    group: &GroupName,
    pin_days: u64,
) -> Result<SeedRecord, SeedError> {
    let now = now_unix();
    let mut rec = match store.seed_record::<SeedRecord>(&m.seed)? {
        Some(r) if r.group != *group => {
            return Err(SeedError::Invalid(format!(
                "seed {} was loaded into storage group {}; import the rest there too",
                m.seed, r.group
            )))
        }
        Some(r) => r,
        None => SeedRecord {
            source: m.source_server_id.clone(),
            created: m.created,
            imported: now,
            group: group.clone(),
            pin_expires: 0,
            containers: m.containers.clone(),
            chunks_total: m.chunks,
            chunks_loaded: 0,
            chunks_present: 0,
            bytes_loaded: 0,
            volumes_done: Vec::new(),
            volumes_total: None,
        },
    };
    rec.pin_expires = now + pin_days.saturating_mul(86_400);
    if m.complete {
        rec.volumes_total = Some(m.volumes.len() as u32);
    }
    Ok(rec)
}

/// Volume files in `dir` that the manifest does not list.
fn strangers(dir: &Path, m: &Manifest) -> Result<Vec<Refused>, SeedError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| SeedError::io(dir, e))?;
    for e in entries {
        let name = e.map_err(|e| SeedError::io(dir, e))?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("vol-")
            && name.ends_with(".tern")
            && !m.volumes.iter().any(|v| volume_file(v.number) == name)
        {
            out.push(Refused {
                file: name.to_string(),
                why: if m.complete {
                    "the manifest does not list it".into()
                } else {
                    "this device's manifest was written before it; import from the device \
                     that holds the export's last volume"
                        .into()
                },
            });
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// Calls `each` with the records of each segment of a volume, then checks
/// the file's size and blake3 against the manifest's (which its seal, or
/// tag, vouches for): a volume that passes is the one the export wrote.
fn read_volume(
    path: &Path,
    v: &VolumeEntry,
    seed: &[u8; 16],
    sealer: &Sealer,
    mut each: impl FnMut(Vec<Record>) -> Result<(), SeedError>,
) -> Result<(), SeedError> {
    let name = file_name(path);
    let mut r = SegmentReader::open(path, sealer, v.size)?;
    if r.size != v.size {
        return Err(damaged(
            &name,
            format!("{} bytes where the manifest says {}", r.size, v.size),
        ));
    }
    if r.header.kind != KIND_VOLUME || r.header.number != v.number || &r.header.seed != seed {
        return Err(damaged(&name, "its header names another seed or volume"));
    }
    while let Some(plain) = r.next_segment()? {
        each(Record::decode_all(&plain).map_err(|why| damaged(&name, why))?)?;
    }
    let (read, hash) = r.read_so_far();
    if read != v.size {
        return Err(damaged(&name, "it shrank while it was read"));
    }
    if hash.to_hex().as_str() != v.blake3 {
        return Err(damaged(&name, "its blake3 differs from the manifest's"));
    }
    Ok(())
}

/// Loads a volume in batches, adding what each stored to `sum`; the last
/// batch's transaction, after the whole file checked out, also records the
/// volume as loaded. Three stages overlap: a reader opens the segments (and
/// hashes the file), two checkers check the chunks against their ids (the
/// costly part), and this thread stores them. `keep_going` hears the bytes
/// stored.
#[allow(clippy::too_many_arguments)]
fn load(
    store: &Store,
    path: &Path,
    v: &VolumeEntry,
    (group, seed, id): (u32, &[u8; 16], &str),
    sealer: &Sealer,
    rec: &mut SeedRecord,
    sum: &mut LoadedBatch,
    keep_going: &dyn Fn(u64) -> bool,
) -> Result<(), SeedError> {
    let name = file_name(path);
    std::thread::scope(|scope| {
        let checked_rx = read_and_check(scope, path, v, seed, sealer, &name);
        let mut batch = Verified::default();
        let (mut chunks, mut bytes) = (0u64, 0u64);
        let mut store_batch = |batch: &mut Verified, rec: &mut SeedRecord, last: bool| {
            let pin = SeedPin {
                seed,
                id,
                expires: rec.pin_expires,
            };
            let b = store.seed_load(group, batch, pin, rec, |r, b| {
                count(r, b);
                if last {
                    r.volumes_done.push(v.number);
                }
            })?;
            sum.loaded += b.loaded;
            sum.present += b.present;
            sum.bytes += b.bytes;
            *batch = Verified::default();
            Ok::<_, SeedError>(())
        };
        // Ends when every checker is done: the reader's end (after its
        // size and blake3 check), or an error.
        for checked in checked_rx {
            let records = checked?;
            chunks += records.len() as u64;
            bytes += records.bytes() as u64;
            batch.append(records);
            if batch.bytes() >= BATCH_BYTES {
                store_batch(&mut batch, rec, false)?;
            }
            // After every segment (about 1 MiB): a gone asker stops the
            // load at once; what is stored so far is found next time.
            if !keep_going(bytes) {
                return Err(SeedError::Interrupted);
            }
        }
        // The file's blake3 matched (the reader is done): a difference here
        // is all but impossible, but costs nothing to rule out.
        if chunks != v.chunks {
            return Err(damaged(
                &name,
                format!("{chunks} chunks where the manifest says {}", v.chunks),
            ));
        }
        store_batch(&mut batch, rec, true)
    })
}

/// Starts a volume's reader and its checkers in `scope`; the receiver
/// yields checked segments, in no particular order, and ends when the
/// checkers do (the volume's end, or an error).
fn read_and_check<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    path: &'scope Path,
    v: &'scope VolumeEntry,
    seed: &'scope [u8; 16],
    sealer: &'scope Sealer,
    name: &'scope str,
) -> Receiver<Result<Verified, SeedError>> {
    let (read_tx, read_rx) = sync_channel::<Result<Vec<Record>, SeedError>>(CHECK_AHEAD);
    let (checked_tx, checked_rx) = sync_channel::<Result<Verified, SeedError>>(CHECK_AHEAD);
    scope.spawn(move || {
        let read = read_volume(path, v, seed, sealer, |records| {
            read_tx
                .send(Ok(records))
                .map_err(|_| SeedError::Interrupted)
        });
        if let Err(e) = read {
            let _ = read_tx.send(Err(e));
        }
    });
    // The checkers share the reader's output; once both are gone the
    // receiver drops, and a reader blocked on a full queue stops.
    let read_rx = Arc::new(Mutex::new(read_rx));
    for _ in 0..CHECKERS {
        let (rx, tx) = (Arc::clone(&read_rx), checked_tx.clone());
        scope.spawn(move || loop {
            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(records) = next else { return };
            let checked =
                records.and_then(|r| Verified::check(r).map_err(|e| damaged(name, e.to_string())));
            let failed = checked.is_err();
            if tx.send(checked).is_err() || failed {
                return;
            }
        });
    }
    checked_rx
}

fn count(r: &mut SeedRecord, b: crate::store::LoadedBatch) {
    r.chunks_loaded += b.loaded;
    r.chunks_present += b.present;
    r.bytes_loaded += b.bytes;
}
