//! Writing an image: create, resume, append (dedup), extents of committed
//! images (synthetic fulls), chunk data, raw data (passthrough), close
//! (commit), abort and suspend.

use tern_core::wire::{ChunkRef, ErrorKind, Handle, Msg, WriteMode};
use tern_core::{ContainerName, ImageName};

use super::{blocking, msg_name, refuse, Answer, Refusal};
use crate::protocol::handler::SessionHandler;

/// Most chunks announced by one `ImageAppend`.
pub const MAX_APPEND: usize = 4096;

pub fn handle(h: &mut SessionHandler, msg: Msg, payload: Vec<u8>) -> Answer {
    match msg {
        Msg::ImageCreate {
            container,
            name,
            props,
            mode,
        } => create(h, container, name, props, mode),
        Msg::ImageResume {
            container,
            name,
            mode,
        } => resume(h, container, name, mode),
        Msg::ImageAppend { handle, entries } => append(h, handle, &entries),
        Msg::ImageAppendExtent {
            handle,
            container,
            name,
            offset,
            len,
        } => {
            // An extent follows only stored chunks.
            h.settle_chunks(handle)?;
            let w = h.writer(handle)?;
            let scope = h.user()?.scope();
            let stats = blocking(|| {
                h.store()
                    .image_append_extent(&scope, w, &container, &name, offset, len)
            })?;
            Ok(Some(Msg::ExtentAppended {
                handle,
                referenced_bytes: stats.referenced_bytes,
                sliced_bytes: stats.sliced_bytes,
            }))
        }
        Msg::ChunkData {
            handle,
            id,
            codec,
            raw_len,
            ..
        } => {
            h.submit_chunk(handle, id, codec, raw_len, payload)?;
            Ok(None)
        }
        Msg::ImageWriteRaw { handle } => {
            let w = h.writer(handle)?;
            let stored = blocking(|| h.store().image_write_raw(w, &payload));
            detach_on_error(h, handle, stored)
        }
        Msg::ImageClose { handle } => close(h, handle),
        Msg::ImageAbort { handle } => {
            let w = h.take_writer(handle)?;
            h.store().image_abort(w);
            Ok(Some(Msg::Ok))
        }
        Msg::ImageSuspend { handle } => {
            let w = h.take_writer(handle)?;
            match blocking(|| Ok(h.store().image_detach(w)))? {
                Some(offset) => Ok(Some(Msg::ImageSuspended { offset })),
                None => refuse(
                    ErrorKind::NotFound,
                    "the image was taken from this session by a resume",
                ),
            }
        }
        other => refuse(
            ErrorKind::Protocol,
            format!("not a write request: {}", msg_name(&other)),
        ),
    }
}

fn create(
    h: &mut SessionHandler,
    container: ContainerName,
    name: ImageName,
    props: Vec<u8>,
    mode: WriteMode,
) -> Answer {
    let user = h.user()?.clone();
    let passthrough = mode == WriteMode::Passthrough;
    let store = h.store().clone();
    let (w, rec) = blocking(|| {
        store.image_begin(
            &user.scope(),
            &user.name,
            &container,
            &name,
            props,
            passthrough,
        )
    })?;
    store.set_session_probe(w, h.session_probe());
    Ok(Some(Msg::ImageCreated {
        handle: h.add_writer(w),
        chunking: rec.chunking,
        zstd_level: rec.zstd_level,
    }))
}

fn resume(
    h: &mut SessionHandler,
    container: ContainerName,
    name: ImageName,
    mode: WriteMode,
) -> Answer {
    let user = h.user()?.clone();
    let probe = h.session_probe();
    let passthrough = mode == WriteMode::Passthrough;
    let r = blocking(|| {
        h.store().image_resume(
            &user.scope(),
            user.owner(),
            &container,
            &name,
            passthrough,
            Some(probe),
        )
    })?;
    tracing::info!(
        "{container}/{name} resumed by {} at offset {}{}",
        user.name,
        r.offset,
        if r.taken_over {
            " (taken from a disconnected session)"
        } else {
            ""
        }
    );
    Ok(Some(Msg::ImageResumed {
        handle: h.add_writer(r.writer),
        chunking: r.container.chunking,
        zstd_level: r.container.zstd_level,
        offset: r.offset,
        props: r.props,
    }))
}

fn append(h: &mut SessionHandler, handle: Handle, entries: &[ChunkRef]) -> Answer {
    if entries.len() > MAX_APPEND {
        return refuse(
            ErrorKind::Protocol,
            format!("{} entries in one append", entries.len()),
        );
    }
    h.chunks_ok(handle)?;
    let w = h.writer(handle)?;
    let missing = blocking(|| h.store().image_append(w, entries))?;
    Ok(Some(Msg::ImageNeed { handle, missing }))
}

/// Commits the image, then queues the copy its container's policy asks for.
fn close(h: &mut SessionHandler, handle: Handle) -> Answer {
    h.settle_chunks(handle)?;
    let w = h.take_writer(handle)?;
    let (info, stats) = blocking(|| h.store().image_commit(w))?;
    h.metrics()
        .committed(stats.chunks, stats.new_chunks, stats.new_stored_bytes);
    let scope = h.user()?.replica_scope();
    let repl = h.replicator().clone();
    blocking(|| {
        repl.after_commit(&scope, &info);
        Ok(())
    })?;
    Ok(Some(Msg::ImageCommitted { info, stats }))
}

/// Data frames have no answer of their own: an error ends the image's
/// writing (it stays incomplete, resumable from its last checkpoint), and
/// the client hears of it at once (raw data) or at its next request on the
/// image (chunks, which the session's intake checks off this task).
fn detach_on_error(h: &mut SessionHandler, handle: Handle, outcome: Result<(), Refusal>) -> Answer {
    if let Err(e) = outcome {
        if let Ok(w) = h.take_writer(handle) {
            h.store().image_detach(w);
        }
        return Err(e);
    }
    Ok(None)
}
