//! Seeding: the unique chunks of some containers carried to a new replica
//! on portable media instead of over the WAN.
//!
//! - [`format`]: the files' format (header, segments, chunk records).
//! - [`seal`]: the key from the password and the segments' seals.
//! - [`export`]: writes volumes and the manifest, resumably.
//! - [`import`]: verifies volumes and loads their chunks, pinned.
//!
//! `docs/seed-format.md` describes the media; `store/seed.rs` the store's side
//! (the chunk list, loading, pins).

pub mod export;
pub mod format;
pub mod import;
pub mod seal;
mod status;

pub use status::{cleanup, status, CleanupReport, SeedStatus};

use std::path::Path;

use serde::{Deserialize, Serialize};
use tern_core::names::GroupName;
use tern_core::ChunkParams;

use crate::store::StoreError;
use format::{damaged, Header, SegmentReader, SegmentWriter, KIND_MANIFEST};
use seal::{KdfParams, Key, Sealer, KEY_BLOCK_LEN};

/// What a seed operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file} is damaged or was tampered with: {why}")]
    Damaged { file: String, why: String },
    #[error("wrong password for this seed (its key check does not match)")]
    WrongPassword,
    #[error("{0}")]
    Invalid(String),
    #[error("stopped before the end; run the same command again to go on")]
    Interrupted,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SeedError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Hears of a long job's progress (done, total bytes); returns false to
/// stop it (the client that asked is gone).
pub type Progress<'a> = &'a dyn Fn(u64, u64) -> bool;

/// A container the seed carries, as the source had it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedContainer {
    pub group: String,
    pub name: String,
    pub chunking: ChunkParams,
    /// Its images at the export: a target is in sync with the seed once
    /// these have arrived by replication (`ternd seed cleanup` checks).
    pub images: Vec<String>,
}

/// One volume, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    pub number: u32,
    pub size: u64,
    /// blake3 of the whole file, hex.
    pub blake3: String,
    pub chunks: u64,
}

/// The manifest: what a seed holds. Sealed like the volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u16,
    /// The seed's id, hex (also in every file's header).
    pub seed: String,
    /// The source's server id: the fingerprint of its certificate, which
    /// replication uses as its id.
    pub source_server_id: String,
    pub source_fingerprint: String,
    pub created: u64,
    pub containers: Vec<SeedContainer>,
    /// Unique chunks in the seed, and their stored bytes.
    pub chunks: u64,
    pub stored_bytes: u64,
    pub volume_size: u64,
    pub encrypted: bool,
    pub kdf: Option<KdfParams>,
    /// The volumes written so far, in order.
    pub volumes: Vec<VolumeEntry>,
    /// False while the export goes on (on this or another device).
    pub complete: bool,
}

/// The largest manifest a reader accepts.
const MAX_MANIFEST: usize = 64 << 20;
/// The largest manifest file: its header, key block, revision and one
/// sealed segment.
const MAX_MANIFEST_FILE: u64 =
    (format::HEADER_LEN + KEY_BLOCK_LEN + 8 + 4 + format::MAX_SEALED) as u64;

/// A seed loaded (or being loaded) into this store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedRecord {
    /// The source's server id (its certificate's fingerprint).
    pub source: String,
    /// When the source exported it, and when its first volume was loaded here.
    pub created: u64,
    pub imported: u64,
    /// The storage group its chunks went into.
    pub group: GroupName,
    /// Its chunks are kept from GC until then (Unix seconds).
    pub pin_expires: u64,
    pub containers: Vec<SeedContainer>,
    /// Chunks in the whole seed, per its manifest.
    pub chunks_total: u64,
    /// Chunks this store stored from it, and those it already had.
    pub chunks_loaded: u64,
    pub chunks_present: u64,
    pub bytes_loaded: u64,
    /// Volumes loaded whole, and how many the seed has (once a complete
    /// manifest was seen).
    pub volumes_done: Vec<u32>,
    pub volumes_total: Option<u32>,
}

pub use crate::store::hex;

/// Writes the manifest to `dir` (through a temporary file and a rename, so
/// a device never holds half a manifest). Its nonce is taken from what it
/// says (volumes listed, complete), and it is deterministic, so a nonce
/// never seals two different manifests.
pub fn write_manifest(
    dir: &Path,
    m: &Manifest,
    seed: [u8; 16],
    key: Option<&Key>,
) -> Result<(), SeedError> {
    let path = dir.join(format::MANIFEST_FILE);
    let tmp = dir.join(".manifest.tern.tmp");
    let header = Header {
        kind: KIND_MANIFEST,
        encrypted: key.is_some(),
        seed,
        number: 0,
    };
    let io = |e| SeedError::io(&tmp, e);
    let mut w = SegmentWriter::create(&tmp, header).map_err(io)?;
    if let (Some(k), Some(kdf)) = (key, m.kdf.as_ref()) {
        w.write_raw(&kdf.encode(&k.check())).map_err(io)?;
    }
    let body = serde_json::to_vec(m).map_err(|e| SeedError::Invalid(e.to_string()))?;
    let revision = m.volumes.len() as u64 | (u64::from(m.complete) << 63);
    w.write_raw(&revision.to_le_bytes()).map_err(io)?;
    w.skip_to_segment(revision);
    w.write_segment(&Sealer::new(key), &body, true)
        .map_err(io)?;
    w.finish().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(|e| SeedError::io(&path, e))?;
    crate::store::pack::sync_dir(dir).map_err(|e| SeedError::io(dir, e))?;
    Ok(())
}

/// Reads the manifest of the seed in `dir`; an encrypted one needs the
/// password. Returns it with the key.
pub fn read_manifest(
    dir: &Path,
    password: Option<&str>,
) -> Result<(Manifest, Header, Option<Key>), SeedError> {
    let path = dir.join(format::MANIFEST_FILE);
    if !path.exists() {
        return Err(SeedError::Invalid(format!(
            "{} holds no seed manifest ({})",
            dir.display(),
            format::MANIFEST_FILE
        )));
    }
    let plain = Sealer::Plain;
    let mut r = SegmentReader::open(&path, &plain, MAX_MANIFEST_FILE)?;
    let header = r.header;
    if header.kind != KIND_MANIFEST {
        return Err(damaged(format::MANIFEST_FILE, "it is not a manifest"));
    }
    let key = if header.encrypted {
        let mut block = [0u8; KEY_BLOCK_LEN];
        r.read_raw(&mut block)?;
        let (kdf, check) = KdfParams::decode(&block);
        let Some(password) = password else {
            return Err(SeedError::Invalid(
                "this seed is encrypted: give its password with --password-file".into(),
            ));
        };
        let key = kdf.derive(password)?;
        if key.check() != check {
            return Err(SeedError::WrongPassword);
        }
        Some(key)
    } else {
        None
    };
    let sealer = Sealer::new(key.as_ref());
    // Re-read with the right sealer: the manifest's one segment carries its
    // revision as its index.
    let mut r = SegmentReader::open(&path, &sealer, MAX_MANIFEST_FILE)?;
    if header.encrypted {
        let mut block = [0u8; KEY_BLOCK_LEN];
        r.read_raw(&mut block)?;
    }
    let mut rev = [0u8; 8];
    r.read_raw(&mut rev)?;
    let stated = u64::from_le_bytes(rev);
    r.skip_to_segment(stated);
    let body = r
        .next_segment()?
        .ok_or_else(|| damaged(format::MANIFEST_FILE, "no body"))?;
    if body.len() > MAX_MANIFEST || r.next_segment()?.is_some() {
        return Err(damaged(format::MANIFEST_FILE, "more than one body"));
    }
    let m: Manifest = serde_json::from_slice(&body)
        .map_err(|e| damaged(format::MANIFEST_FILE, format!("undecodable: {e}")))?;
    let revision = m.volumes.len() as u64 | (u64::from(m.complete) << 63);
    if stated != revision || m.seed != hex(&header.seed) {
        return Err(damaged(
            format::MANIFEST_FILE,
            "its revision or seed id does not match its header",
        ));
    }
    Ok((m, header, key))
}
