//! Writing one volume of an export: records of the listed chunks in sealed
//! segments, saved (synced) every [`SAVE_EVERY`] bytes so that a resumed
//! export cuts the volume back to its last saved length and goes on.

use std::fs::File;
use std::path::Path;
use std::sync::mpsc::Receiver;

use super::super::format::{
    volume_file, Header, SegmentWriter, KIND_VOLUME, RECORD_HEADER, SEGMENT_OVERHEAD,
    SEGMENT_TARGET,
};
use super::super::seal::Sealer;
use super::super::{SeedError, VolumeEntry};
use super::state::{io, read_entry, Progress, State};
use crate::store::{Store, StoredChunk as SeedChunk};

/// How many chunks the reader may be ahead of the sealer (at most 64 MiB
/// of chunks up to 1 MiB).
const READ_AHEAD: usize = 64;
/// A volume's progress is saved (synced) after this many bytes.
const SAVE_EVERY: u64 = 64 << 20;

/// Where the export keeps its state and whom it tells of its progress.
pub(super) struct Run<'a> {
    pub store: &'a Store,
    pub data: &'a Path,
    pub sealer: &'a Sealer,
    pub progress: super::super::Progress<'a>,
}

/// Writes the next volume; `None` if the destination has no room for it
/// (what was written of it is removed: the next device starts it again).
pub(super) fn write_volume(
    run: &Run<'_>,
    state: &mut State,
    list: &mut File,
) -> Result<Option<u32>, SeedError> {
    let number = state.manifest.volumes.len() as u32 + 1;
    let path = state.to.join(volume_file(number));
    let Some((mut w, first)) = open_volume(state, &path, number)? else {
        return Ok(None);
    };
    let mut fill = Fill {
        number,
        next: first,
        bytes_here: 0,
        stopped: false,
    };
    match fill.run(run, state, list, &mut w) {
        Ok(()) => {}
        Err(_) if fill.stopped => return Err(SeedError::Interrupted),
        Err(e) if is_full(&e) => {
            drop(w);
            return give_up_volume(run.data, state, &path);
        }
        Err(e) => return Err(SeedError::io(&path, e)),
    }
    let (len, blake3) = match w.finish() {
        Ok(done) => done,
        Err(e) if is_full(&e) => return give_up_volume(run.data, state, &path),
        Err(e) => return Err(SeedError::io(&path, e)),
    };
    // The chunks of a resumed volume's first part count too.
    let next = fill.next;
    let bytes = chunk_bytes(run.store, list, state.volume_start, next)?;
    state.manifest.volumes.push(VolumeEntry {
        number,
        size: len,
        blake3,
        chunks: next - state.volume_start,
    });
    state.bytes_done += bytes;
    state.volume_start = next;
    state.current = None;
    crate::store::pack::sync_dir(&state.to).map_err(io(&state.to))?;
    state.save(run.data)?;
    Ok(Some(number))
}

/// The volume file, resumed at its saved length or created when the
/// destination has room for it; with the first chunk it is to take.
fn open_volume(
    state: &State,
    path: &Path,
    number: u32,
) -> Result<Option<(SegmentWriter, u64)>, SeedError> {
    let header = Header {
        kind: KIND_VOLUME,
        encrypted: state.manifest.encrypted,
        seed: state.seed,
        number,
    };
    let resume = state
        .current
        .filter(|p| p.number == number)
        .filter(|p| std::fs::metadata(path).is_ok_and(|m| m.len() >= p.len));
    if let Some(p) = resume {
        let w = SegmentWriter::resume(path, header, p.len, p.segments).map_err(io(path))?;
        return Ok(Some((w, p.next_chunk)));
    }
    let left = state.manifest.stored_bytes - state.bytes_done
        + (state.manifest.chunks - state.volume_start) * (RECORD_HEADER as u64 + SEGMENT_OVERHEAD);
    let need = state.manifest.volume_size.min(left + (1 << 20));
    let free = crate::store::statvfs(&state.to).map_err(io(&state.to))?.0;
    if free < need {
        return Ok(None);
    }
    let w = SegmentWriter::create(path, header).map_err(io(path))?;
    Ok(Some((w, state.volume_start)))
}

/// The destination filled up under a volume: it goes, to start again on
/// the next device.
fn give_up_volume(data: &Path, state: &mut State, path: &Path) -> Result<Option<u32>, SeedError> {
    std::fs::remove_file(path).map_err(io(path))?;
    state.current = None;
    state.save(data)?;
    Ok(None)
}

fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Filling one volume with records.
struct Fill {
    number: u32,
    /// The next chunk (index into the list) to write.
    next: u64,
    /// Stored bytes of the chunks this run put into the volume.
    bytes_here: u64,
    /// The caller's progress callback asked to stop.
    stopped: bool,
}

impl Fill {
    /// Writes records until the volume or the list ends; the end segment
    /// closes the volume.
    fn run(
        &mut self,
        run: &Run<'_>,
        state: &mut State,
        list: &mut File,
        w: &mut SegmentWriter,
    ) -> std::io::Result<()> {
        let total = state.manifest.chunks;
        let mut seg: Vec<u8> = Vec::with_capacity(SEGMENT_TARGET + (1 << 20));
        let mut since_save = 0u64;
        std::thread::scope(|scope| {
            // The reader stays up to READ_AHEAD chunks ahead, so that reading
            // the packs overlaps sealing, writing and the saves' syncs. What
            // it read past the end of this volume is read again for the next.
            let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
            let (store, first) = (run.store, self.next);
            scope.spawn(move || {
                for i in first..total {
                    let rec = read_entry(list, i).and_then(|(group, id)| {
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
            while self.next < total {
                let rec = next_chunk(&rx)?;
                let len = (RECORD_HEADER + rec.bytes.len()) as u64;
                if !fits(w, &seg, &rec, state.manifest.volume_size)? {
                    break;
                }
                if !seg.is_empty() && seg.len() as u64 + len > SEGMENT_TARGET as u64 {
                    w.write_segment(run.sealer, &seg, false)?;
                    seg.clear();
                }
                rec.encode_into(&mut seg);
                self.next += 1;
                self.bytes_here += rec.bytes.len() as u64;
                since_save += len;
                if !(run.progress)(
                    state.bytes_done + self.bytes_here,
                    state.manifest.stored_bytes,
                ) {
                    // Left as it is: a resume cuts the volume back to the last
                    // saved length (a segment closed here would change the bytes).
                    self.stopped = true;
                    return Err(std::io::Error::other("stopped"));
                }
                if since_save >= SAVE_EVERY {
                    w.write_segment(run.sealer, &seg, false)?;
                    seg.clear();
                    self.save(run.data, state, w)?;
                    since_save = 0;
                }
            }
            if !seg.is_empty() {
                w.write_segment(run.sealer, &seg, false)?;
            }
            w.write_segment(run.sealer, &[], true)
        })
    }

    /// Syncs the volume and saves how far it got.
    fn save(&self, data: &Path, state: &mut State, w: &mut SegmentWriter) -> std::io::Result<()> {
        w.sync()?;
        let (len, segments) = w.position();
        state.current = Some(Progress {
            number: self.number,
            len,
            segments,
            next_chunk: self.next,
        });
        state.save(data).map_err(std::io::Error::other)
    }
}

fn next_chunk(rx: &Receiver<std::io::Result<SeedChunk>>) -> std::io::Result<SeedChunk> {
    rx.recv()
        .map_err(|_| std::io::Error::other("the chunk reader stopped"))?
}

/// Whether `rec`'s record, its segment and the end segment still fit in
/// the volume; an error if it would not fit even in an empty one.
fn fits(w: &SegmentWriter, seg: &[u8], rec: &SeedChunk, size: u64) -> std::io::Result<bool> {
    let len = (RECORD_HEADER + rec.bytes.len()) as u64;
    let (written, _) = w.position();
    let pending = if seg.is_empty() {
        0
    } else {
        seg.len() as u64 + SEGMENT_OVERHEAD
    };
    if written + pending + len + 2 * SEGMENT_OVERHEAD <= size {
        return Ok(true);
    }
    if written + pending == super::super::format::HEADER_LEN as u64 {
        return Err(std::io::Error::other(format!(
            "chunk {} ({len} bytes) does not fit in a volume of {size} bytes",
            rec.id
        )));
    }
    Ok(false)
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
