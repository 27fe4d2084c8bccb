//! `ternd seed export`: every unique chunk of some containers, in volumes
//! of bounded size, plus a manifest, resumable after any interruption.
//!
//! The export's state lives in the source's data directory
//! (`seeds/export/`): the chunk list fixed at the start (in pack order) and
//! how far the volumes got, saved after each synced stretch. A resumed
//! export cuts the current volume back to its last saved length and goes
//! on from there; since the output is a function of the chunk list alone,
//! the volumes come out byte-identical to an uninterrupted export's.

mod state;
mod volume;

use std::fs::File;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tern_core::ContainerName;

use super::seal::{KdfParams, Key, Sealer};
use super::{hex, write_manifest, Manifest, SeedContainer, SeedError, VolumeEntry};
use crate::store::records::now_unix;
use crate::store::{SeedSource, Store};
use state::{io, state_dir, write_chunk_list, State};
use volume::{write_volume, Run};

/// The smallest volume: room for the largest chunk with its framing.
pub const MIN_VOLUME: u64 = 8 << 20;

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

/// Runs (or continues) the export of `req` from `store`, whose data
/// directory is `data`; `progress(done, total)` hears of the stored bytes.
pub fn export(
    store: &Store,
    data: &Path,
    source_id: &str,
    req: &ExportRequest,
    progress: super::Progress<'_>,
) -> Result<ExportReport, SeedError> {
    let (mut state, resumed) = load_or_begin(store, data, source_id, req)?;
    if let Some(to) = &req.to {
        state.to = to.clone();
    }
    let key = unlock(&state, req)?;
    std::fs::create_dir_all(&state.to).map_err(io(&state.to))?;
    if key.is_none() {
        // Chunks in the clear: the volumes are 0600 (SegmentWriter) and
        // their directory 0700, for the owner's eyes only.
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(&state.to, private).map_err(io(&state.to))?;
    }
    let sealer = Sealer::new(key.as_ref());
    let run = Run {
        store,
        data,
        sealer: &sealer,
        progress,
    };
    let mut list = File::open(state_dir(data).join("chunks.bin")).map_err(io(data))?;
    let total = state.manifest.chunks;
    let mut written = Vec::new();
    let mut next_volume = None;
    while state.volume_start < total {
        match write_volume(&run, &mut state, &mut list)? {
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

/// The unfinished export (when `req` may continue it), or a new one; and
/// whether it was unfinished.
fn load_or_begin(
    store: &Store,
    data: &Path,
    source_id: &str,
    req: &ExportRequest,
) -> Result<(State, bool), SeedError> {
    match State::load(data)? {
        Some(s) => {
            if !req.resume && !same_containers(&req.containers, &s.manifest.containers) {
                let names: Vec<String> = s.manifest.containers.iter().map(label).collect();
                return Err(SeedError::Invalid(format!(
                    "an export of {} is unfinished (volume {} next): continue it with --continue, \
                     or remove {} to give it up",
                    names.join(", "),
                    s.manifest.volumes.len() + 1,
                    state_dir(data).display()
                )));
            }
            Ok((s, true))
        }
        None if req.resume => Err(SeedError::Invalid(
            "there is no unfinished export to continue".into(),
        )),
        None => Ok((begin(store, data, source_id, req)?, false)),
    }
}

/// The sealing key of an encrypted export, from the password `req` gives.
fn unlock(state: &State, req: &ExportRequest) -> Result<Option<Key>, SeedError> {
    let (Some(kdf), Some(check)) = (&state.manifest.kdf, &state.key_check) else {
        return Ok(None);
    };
    let password = req.password.as_deref().ok_or_else(|| {
        SeedError::Invalid("this export is encrypted: give its password again".into())
    })?;
    let key = kdf.derive(password)?;
    if &key.check() != check {
        return Err(SeedError::WrongPassword);
    }
    Ok(Some(key))
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
    let to = checked(req)?;
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
    let stored_bytes = write_chunk_list(&dir.join("chunks.bin"), &chunks)?;
    let (seed, salt) = seed_and_salt(req.seed_id.as_deref())?;
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
        containers: sources.into_iter().map(seed_container).collect(),
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

/// A new export's request checked; where its volumes go.
fn checked(req: &ExportRequest) -> Result<PathBuf, SeedError> {
    if req.containers.is_empty() {
        return Err(SeedError::Invalid("name the containers to export".into()));
    }
    if req.volume_size < MIN_VOLUME {
        return Err(SeedError::Invalid(format!(
            "a volume must hold at least {} MiB",
            MIN_VOLUME >> 20
        )));
    }
    req.to
        .clone()
        .ok_or_else(|| SeedError::Invalid("say where the volumes go (--to)".into()))
}

fn seed_container(s: SeedSource) -> SeedContainer {
    SeedContainer {
        group: s.rec.group.to_string(),
        name: s.name.to_string(),
        chunking: s.rec.chunking,
        images: s.images,
    }
}

/// The seed's id and its key's salt: random, or from a fixed id (32 hex
/// digits), from which the salt follows too.
fn seed_and_salt(fixed: Option<&str>) -> Result<([u8; 16], [u8; 16]), SeedError> {
    let mut seed = [0u8; 16];
    let mut salt = [0u8; 16];
    match fixed {
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
        None => {
            let rng = SystemRandom::new();
            rng.fill(&mut seed)
                .and_then(|_| rng.fill(&mut salt))
                .map_err(|_| SeedError::Invalid("the system's random source failed".into()))?
        }
    }
    Ok((seed, salt))
}
