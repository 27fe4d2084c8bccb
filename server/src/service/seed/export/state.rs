//! The export's saved state (`seeds/export/state.json`) and its chunk list
//! (`seeds/export/chunks.bin`: 36-byte entries, group id then chunk id, in
//! pack order), fixed when the export begins.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tern_core::ChunkId;

use super::super::{Manifest, SeedError};

const ENTRY: usize = 36;

/// The export's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    pub seed: [u8; 16],
    pub manifest: Manifest,
    pub key_check: Option<[u8; 32]>,
    pub to: PathBuf,
    /// The first chunk (index into the list) of the volume being written.
    pub volume_start: u64,
    /// The volume being written, as far as it is synced.
    pub current: Option<Progress>,
    /// Stored bytes of the chunks in finished volumes.
    pub bytes_done: u64,
}

/// How far the volume being written got, as synced.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Progress {
    pub number: u32,
    pub len: u64,
    pub segments: u64,
    pub next_chunk: u64,
}

pub(super) fn state_dir(data: &Path) -> PathBuf {
    data.join("seeds").join("export")
}

pub(super) fn io(path: &Path) -> impl Fn(std::io::Error) -> SeedError + '_ {
    move |e| SeedError::io(path, e)
}

impl State {
    pub fn load(data: &Path) -> Result<Option<Self>, SeedError> {
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

    pub fn save(&self, data: &Path) -> Result<(), SeedError> {
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

/// Writes (and syncs) the chunk list; returns the chunks' stored bytes.
pub(super) fn write_chunk_list(
    path: &Path,
    chunks: &[(u32, ChunkId, u32)],
) -> Result<u64, SeedError> {
    let mut stored_bytes = 0;
    let mut f = std::io::BufWriter::new(File::create(path).map_err(io(path))?);
    for (group, id, len) in chunks {
        stored_bytes += u64::from(*len);
        f.write_all(&group.to_le_bytes()).map_err(io(path))?;
        f.write_all(id.as_bytes()).map_err(io(path))?;
    }
    f.flush().map_err(io(path))?;
    f.get_ref().sync_data().map_err(io(path))?;
    Ok(stored_bytes)
}

/// Entry `i` of the chunk list: (group id, chunk id).
pub(super) fn read_entry(list: &mut File, i: u64) -> std::io::Result<(u32, ChunkId)> {
    let mut b = [0u8; ENTRY];
    list.seek(SeekFrom::Start(i * ENTRY as u64))?;
    list.read_exact(&mut b)?;
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[4..]);
    Ok((u32::from_le_bytes([b[0], b[1], b[2], b[3]]), ChunkId(id)))
}
