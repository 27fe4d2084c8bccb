//! `ternd seed export`: every unique chunk of some containers, in volumes
//! of bounded size, plus a manifest, resumable after any interruption.
//!
//! The export's state lives in the source's data directory
//! (`seeds/export/`): the chunk list fixed at the start (in pack order) and
//! how far the volumes got, saved after each synced stretch. A resumed
//! export cuts the current volume back to its last saved length and goes
//! on from there; since the output is a function of the chunk list alone,
//! the volumes come out byte-identical to an uninterrupted export's.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tern_core::{ChunkId, ContainerName};

use super::format::{
    volume_file, Header, SegmentWriter, KIND_VOLUME, RECORD_HEADER, SEGMENT_OVERHEAD,
    SEGMENT_TARGET,
};
use super::seal::{KdfParams, Sealer};
use super::{hex, write_manifest, Manifest, SeedContainer, SeedError, VolumeEntry};
use crate::store::records::now_unix;
use crate::store::Store;

/// The smallest volume: room for the largest chunk with its framing.
pub const MIN_VOLUME: u64 = 8 << 20;
/// How many chunks the reader may be ahead of the sealer (at most 64 MiB
/// of chunks up to 1 MiB).
const READ_AHEAD: usize = 64;
/// A volume's progress is saved (synced) after this many bytes.
const SAVE_EVERY: u64 = 64 << 20;
const ENTRY: usize = 36;

/// What `ternd seed export` asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportRequest {
    /// Containers (`NAME` or `GROUP/NAME`); empty with `resume` alone.
    pub containers: Vec<String>,
    /// Where the volumes go; `None` with `resume`: where the last run wrote.
    pub to: Option<PathBuf>,
    pub volume_size: u64,
    pub password: Option<String>,
    /// `--continue`: go on with the unfinished export.
    pub resume: bool,
    /// A fixed seed id (hex), from which the salt follows too: two exports
    /// with the same id, password and chunks write the same volumes (to
    /// test that a resumed export does). Random when `None`.
    #[serde(default)]
    pub seed_id: Option<String>,
}

/// What an export run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportReport {
    pub seed: String,
    pub to: PathBuf,
    pub chunks: u64,
    pub stored_bytes: u64,
    pub volumes: Vec<VolumeEntry>,
    /// Volumes this run finished.
    pub written: Vec<u32>,
    pub complete: bool,
    /// Set when the destination filled up: the volume that comes next.
    pub next_volume: Option<u32>,
    pub resumed: bool,
}

/// The export's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    seed: [u8; 16],
    manifest: Manifest,
    key_check: Option<[u8; 32]>,
    to: PathBuf,
    /// The first chunk (index into the list) of the volume being written.
    volume_start: u64,
    /// The volume being written, as far as it is synced.
    current: Option<Progress>,
    /// Stored bytes of the chunks in finished volumes.
    bytes_done: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Progress {
    number: u32,
    len: u64,
    segments: u64,
    next_chunk: u64,
}

fn state_dir(data: &Path) -> PathBuf {
    data.join("seeds").join("export")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SeedError + '_ {
    move |e| SeedError::io(path, e)
}

impl State {
    fn load(data: &Path) -> Result<Option<Self>, SeedError> {
        let path = state_dir(data).join("state.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                SeedError::Invalid(format!(
                    "{} is undecodable ({e}); remove {} to start the export over",
                    path.display(),
                    state_dir(data).display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SeedError::io(&path, e)),
        }
    }

    fn save(&self, data: &Path) -> Result<(), SeedError> {
        let dir = state_dir(data);
        let tmp = dir.join("state.json.tmp");
        let body =
            serde_json::to_vec_pretty(self).map_err(|e| SeedError::Invalid(e.to_string()))?;
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&body).map_err(io(&tmp))?;
        f.sync_data().map_err(io(&tmp))?;
        std::fs::rename(&tmp, dir.join("state.json")).map_err(io(&dir))?;
        crate::store::pack::sync_dir(&dir).map_err(io(&dir))
    }
}

/// Runs (or continues) the export of `req` from `store`, whose data
/// directory is `data`; `progress(done, total)` hears of the stored bytes.
pub fn export(
    store: &Store,
    data: &Path,
    source_id: &str,
    req: &ExportRequest,
    progress: super::Progress<'_>,
) -> Result<ExportReport, SeedError> {
    let (mut state, resumed) = match State::load(data)? {
        Some(s) => {
            let names: Vec<String> = s.manifest.containers.iter().map(label).collect();
            if !req.resume && !same_containers(&req.containers, &s.manifest.containers) {
                return Err(SeedError::Invalid(format!(
                    "an export of {} is unfinished (volume {} next): continue it with --continue, \
                     or remove {} to give it up",
                    names.join(", "),
                    s.manifest.volumes.len() + 1,
                    state_dir(data).display()
                )));
            }
            (s, true)
        }
        None if req.resume => {
            return Err(SeedError::Invalid(
                "there is no unfinished export to continue".into(),
            ))
        }
        None => (begin(store, data, source_id, req)?, false),
    };
    if let Some(to) = &req.to {
        state.to = to.clone();
    }
    let key = match (&state.manifest.kdf, &state.key_check) {
        (Some(kdf), Some(check)) => {
            let password = req.password.as_deref().ok_or_else(|| {
                SeedError::Invalid("this export is encrypted: give its password again".into())
            })?;
            let key = kdf.derive(password)?;
            if &key.check() != check {
                return Err(SeedError::WrongPassword);
            }
            Some(key)
        }
        _ => None,
    };
    std::fs::create_dir_all(&state.to).map_err(io(&state.to))?;
    let sealer = Sealer::new(key.as_ref());
    let mut list = File::open(state_dir(data).join("chunks.bin")).map_err(io(data))?;
    let total = state.manifest.chunks;
    let mut written = Vec::new();
    let mut next_volume = None;
    while state.volume_start < total {
        match write_volume(store, data, &mut state, &mut list, &sealer, progress)? {
            Some(number) => written.push(number),
            None => {
                next_volume = Some(state.manifest.volumes.len() as u32 + 1);
                break;
            }
        }
        // The device always holds a manifest of what is on it so far.
        state.manifest.complete = state.volume_start >= total;
        write_manifest(&state.to, &state.manifest, state.seed, key.as_ref())?;
    }
    if total == 0 || (next_volume.is_none() && !state.manifest.complete) {
        state.manifest.complete = true;
        write_manifest(&state.to, &state.manifest, state.seed, key.as_ref())?;
    }
    if next_volume.is_some() {
        // The device is full: a manifest of what it holds, then stop.
        write_manifest(&state.to, &state.manifest, state.seed, key.as_ref())?;
        state.save(data)?;
    } else {
        std::fs::remove_dir_all(state_dir(data)).map_err(io(data))?;
    }
    Ok(ExportReport {
        seed: state.manifest.seed.clone(),
        to: state.to.clone(),
        chunks: total,
        stored_bytes: state.manifest.stored_bytes,
        volumes: state.manifest.volumes.clone(),
        written,
        complete: next_volume.is_none(),
        next_volume,
        resumed,
    })
}

fn label(c: &SeedContainer) -> String {
    format!("{}/{}", c.group, c.name)
}

fn same_containers(asked: &[String], had: &[SeedContainer]) -> bool {
    asked.len() == had.len()
        && asked
            .iter()
            .all(|a| had.iter().any(|c| *a == c.name || *a == label(c)))
}

/// A new export: the chunk list, the seed's id and key parameters.
fn begin(
    store: &Store,
    data: &Path,
    source_id: &str,
    req: &ExportRequest,
) -> Result<State, SeedError> {
    if req.containers.is_empty() {
        return Err(SeedError::Invalid("name the containers to export".into()));
    }
    let to = req
        .to
        .clone()
        .ok_or_else(|| SeedError::Invalid("say where the volumes go (--to)".into()))?;
    if req.volume_size < MIN_VOLUME {
        return Err(SeedError::Invalid(format!(
            "a volume must hold at least {} MiB",
            MIN_VOLUME >> 20
        )));
    }
    let names = req
        .containers
        .iter()
        .map(|c| ContainerName::new(c.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SeedError::Invalid(e.to_string()))?;
    let sources = store.seed_sources(&names)?;
    let chunks = store.seed_chunk_list(&sources)?;
    let dir = state_dir(data);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut stored_bytes = 0;
    {
        let path = dir.join("chunks.bin");
        let mut f = std::io::BufWriter::new(File::create(&path).map_err(io(&path))?);
        for (group, id, len) in &chunks {
            stored_bytes += u64::from(*len);
            f.write_all(&group.to_le_bytes()).map_err(io(&path))?;
            f.write_all(id.as_bytes()).map_err(io(&path))?;
        }
        f.flush().map_err(io(&path))?;
        f.get_ref().sync_data().map_err(io(&path))?;
    }
    let rng = SystemRandom::new();
    let mut seed = [0u8; 16];
    let mut salt = [0u8; 16];
    match &req.seed_id {
        Some(hexid) => {
            let bytes = (0..hexid.len())
                .step_by(2)
                .map(|i| {
                    hexid
                        .get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .filter(|b| b.len() == 16)
                .ok_or_else(|| SeedError::Invalid("--seed-id takes 32 hex digits".into()))?;
            seed.copy_from_slice(&bytes);
            let derived = blake3::keyed_hash(blake3::hash(b"tern seed salt").as_bytes(), &seed);
            salt.copy_from_slice(&derived.as_bytes()[..16]);
        }
        None => rng
            .fill(&mut seed)
            .and_then(|_| rng.fill(&mut salt))
            .map_err(|_| SeedError::Invalid("the system's random source failed".into()))?,
    }
    let (kdf, key_check) = match &req.password {
        Some(p) => {
            let kdf = KdfParams::new(salt);
            let check = kdf.derive(p)?.check();
            (Some(kdf), Some(check))
        }
        None => (None, None),
    };
    let manifest = Manifest {
        format: super::format::FORMAT,
        seed: hex(&seed),
        source_server_id: source_id.to_string(),
        source_fingerprint: source_id.to_string(),
        created: now_unix(),
        containers: sources
            .into_iter()
            .map(|s| SeedContainer {
                group: s.rec.group.to_string(),
                name: s.name.to_string(),
                chunking: s.rec.chunking,
                images: s.images,
            })
            .collect(),
        chunks: chunks.len() as u64,
        stored_bytes,
        volume_size: req.volume_size,
        encrypted: kdf.is_some(),
        kdf,
        volumes: Vec::new(),
        complete: false,
    };
    let state = State {
        seed,
        manifest,
        key_check,
        to,
        volume_start: 0,
        current: None,
        bytes_done: 0,
    };
    state.save(data)?;
    Ok(state)
}

fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Writes the next volume; `None` if the destination has no room for it
/// (what was written of it is removed: the next device starts it again).
fn write_volume(
    store: &Store,
    data: &Path,
    state: &mut State,
    list: &mut File,
    sealer: &Sealer,
    progress: super::Progress<'_>,
) -> Result<Option<u32>, SeedError> {
    let number = state.manifest.volumes.len() as u32 + 1;
    let path = state.to.join(volume_file(number));
    let header = Header {
        kind: KIND_VOLUME,
        encrypted: state.manifest.encrypted,
        seed: state.seed,
        number,
    };
    let size = state.manifest.volume_size;
    let total = state.manifest.chunks;
    let resume = state
        .current
        .filter(|p| p.number == number)
        .filter(|p| std::fs::metadata(&path).is_ok_and(|m| m.len() >= p.len));
    let (mut w, mut next) = match resume {
        Some(p) => (
            SegmentWriter::resume(&path, header, p.len, p.segments).map_err(io(&path))?,
            p.next_chunk,
        ),
        None => {
            let left = state.manifest.stored_bytes - state.bytes_done
                + (total - state.volume_start) * (RECORD_HEADER as u64 + SEGMENT_OVERHEAD);
            let need = size.min(left + (1 << 20));
            let free = crate::store::statvfs(&state.to).map_err(io(&state.to))?.0;
            if free < need {
                return Ok(None);
            }
            (
                SegmentWriter::create(&path, header).map_err(io(&path))?,
                state.volume_start,
            )
        }
    };
    let mut seg: Vec<u8> = Vec::with_capacity(SEGMENT_TARGET + (1 << 20));
    let mut since_save = 0u64;
    let mut bytes_here = 0u64;
    let mut stopped = false;
    // A reader thread stays up to READ_AHEAD chunks ahead, so that reading
    // the packs overlaps sealing, writing and the saves' syncs. What it has
    // read past the end of this volume is read again for the next one.
    let result: std::io::Result<bool> = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
        let (first, reader_list) = (next, &mut *list);
        scope.spawn(move || {
            for i in first..total {
                let rec = read_entry(reader_list, i).and_then(|(group, id)| {
                    store
                        .seed_read_chunk(group, &id)
                        .map_err(std::io::Error::other)
                });
                let failed = rec.is_err();
                if tx.send(rec).is_err() || failed {
                    return;
                }
            }
        });
        while next < total {
            let rec = rx
                .recv()
                .map_err(|_| std::io::Error::other("the chunk reader stopped"))??;
            let id = rec.id;
            let len = (RECORD_HEADER + rec.bytes.len()) as u64;
            let (written, _) = w.position();
            let pending = if seg.is_empty() {
                0
            } else {
                seg.len() as u64 + SEGMENT_OVERHEAD
            };
            // This record's segment and the end segment must still fit.
            if written + pending + len + 2 * SEGMENT_OVERHEAD > size {
                if written + pending == super::format::HEADER_LEN as u64 {
                    return Err(std::io::Error::other(format!(
                        "chunk {id} ({len} bytes) does not fit in a volume of {size} bytes"
                    )));
                }
                break;
            }
            if !seg.is_empty() && seg.len() as u64 + len > SEGMENT_TARGET as u64 {
                w.write_segment(sealer, &seg, false)?;
                seg.clear();
            }
            rec.encode_into(&mut seg);
            next += 1;
            bytes_here += rec.bytes.len() as u64;
            since_save += len;
            if !progress(state.bytes_done + bytes_here, state.manifest.stored_bytes) {
                // Left as it is: a resume cuts the volume back to the last
                // saved length (a segment closed here would change the bytes).
                stopped = true;
                return Err(std::io::Error::other("stopped"));
            }
            if since_save >= SAVE_EVERY {
                w.write_segment(sealer, &seg, false)?;
                seg.clear();
                w.sync()?;
                let (len, segments) = w.position();
                state.current = Some(Progress {
                    number,
                    len,
                    segments,
                    next_chunk: next,
                });
                state.save(data).map_err(std::io::Error::other)?;
                since_save = 0;
            }
        }
        if !seg.is_empty() {
            w.write_segment(sealer, &seg, false)?;
        }
        w.write_segment(sealer, &[], true)?;
        Ok(true)
    });
    match result {
        Ok(_) => {}
        Err(_) if stopped => return Err(SeedError::Interrupted),
        Err(e) if is_full(&e) => {
            drop(w);
            std::fs::remove_file(&path).map_err(io(&path))?;
            state.current = None;
            state.save(data)?;
            return Ok(None);
        }
        Err(e) => return Err(SeedError::io(&path, e)),
    }
    let (len, blake3) = match w.finish() {
        Ok(done) => done,
        Err(e) if is_full(&e) => {
            std::fs::remove_file(&path).map_err(io(&path))?;
            state.current = None;
            state.save(data)?;
            return Ok(None);
        }
        Err(e) => return Err(SeedError::io(&path, e)),
    };
    // The chunks of a resumed volume's first part count too.
    let chunks = next - state.volume_start;
    let bytes = chunk_bytes(store, list, state.volume_start, next)?;
    state.manifest.volumes.push(VolumeEntry {
        number,
        size: len,
        blake3,
        chunks,
    });
    state.bytes_done += bytes;
    state.volume_start = next;
    state.current = None;
    crate::store::pack::sync_dir(&state.to).map_err(io(&state.to))?;
    state.save(data)?;
    Ok(Some(number))
}

/// Stored bytes of chunks `from..to` of the list.
fn chunk_bytes(store: &Store, list: &mut File, from: u64, to: u64) -> Result<u64, SeedError> {
    let mut sum = 0;
    for i in from..to {
        let (group, id) = read_entry(list, i).map_err(|e| SeedError::Invalid(e.to_string()))?;
        sum += u64::from(store.seed_stored_len(group, &id)?);
    }
    Ok(sum)
}

fn read_entry(list: &mut File, i: u64) -> std::io::Result<(u32, ChunkId)> {
    let mut b = [0u8; ENTRY];
    list.seek(SeekFrom::Start(i * ENTRY as u64))?;
    list.read_exact(&mut b)?;
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[4..]);
    Ok((u32::from_le_bytes([b[0], b[1], b[2], b[3]]), ChunkId(id)))
}
