//! Writing an image: create, resume, append (dedup), chunk data, raw data
//! (passthrough), close (commit) and abort.

use tern_core::wire::{ErrorKind, Handle, Msg, WriteMode};

use super::{blocking, msg_name, refuse, Answer, Refusal};
use crate::protocol::handler::SessionHandler;
use crate::store::WriterId;

/// Most chunks announced by one `ImageAppend`.
pub const MAX_APPEND: usize = 4096;

pub fn handle(h: &mut SessionHandler, msg: Msg, payload: &[u8]) -> Answer {
    match msg {
        Msg::ImageCreate {
            container,
            name,
            props,
            mode,
        } => {
            let user = h.user()?.clone();
            let passthrough = mode == WriteMode::Passthrough;
            let (w, rec) = blocking(|| {
                h.store.image_begin(
                    &user.scope(),
                    &user.name,
                    &container,
                    &name,
                    props,
                    passthrough,
                )
            })?;
            h.store.set_session_probe(w, h.session_probe());
            let handle = h.new_handle();
            h.writers.insert(handle, w);
            Ok(Some(Msg::ImageCreated {
                handle,
                chunking: rec.chunking,
                zstd_level: rec.zstd_level,
            }))
        }
        Msg::ImageResume {
            container,
            name,
            mode,
        } => {
            let user = h.user()?.clone();
            let probe = h.session_probe();
            let passthrough = mode == WriteMode::Passthrough;
            let r = blocking(|| {
                h.store.image_resume(
                    &user.scope(),
                    user.owner(),
                    &container,
                    &name,
                    passthrough,
                    Some(probe),
                )
            })?;
            tracing::info!(
                "{}/{} resumed by {} at offset {}{}",
                container,
                name,
                user.name,
                r.offset,
                if r.taken_over {
                    " (taken from a disconnected session)"
                } else {
                    ""
                }
            );
            let handle = h.new_handle();
            h.writers.insert(handle, r.writer);
            Ok(Some(Msg::ImageResumed {
                handle,
                chunking: r.container.chunking,
                zstd_level: r.container.zstd_level,
                offset: r.offset,
                props: r.props,
            }))
        }
        Msg::ImageAppend { handle, entries } => {
            if entries.len() > MAX_APPEND {
                return refuse(
                    ErrorKind::Protocol,
                    format!("{} entries in one append", entries.len()),
                );
            }
            let w = writer(h, handle)?;
            let missing = blocking(|| h.store.image_append(w, &entries))?;
            Ok(Some(Msg::ImageNeed { handle, missing }))
        }
        Msg::ChunkData {
            handle,
            id,
            codec,
            raw_len,
            ..
        } => {
            let w = writer(h, handle)?;
            shape(h, payload.len());
            let stored = blocking(|| h.store.image_put_chunk(w, &id, codec, raw_len, payload));
            fail_image_on_error(h, handle, w, stored)
        }
        Msg::ImageWriteRaw { handle } => {
            let w = writer(h, handle)?;
            shape(h, payload.len());
            let stored = blocking(|| h.store.image_write_raw(w, payload));
            fail_image_on_error(h, handle, w, stored)
        }
        Msg::ImageClose { handle } => {
            let w = writer(h, handle)?;
            h.writers.remove(&handle);
            let (info, stats) = blocking(|| h.store.image_commit(w))?;
            if let Ok(user) = h.user() {
                let (user, repl) = (user.clone(), h.sessions.replicator.clone());
                blocking(|| {
                    repl.after_commit(&user.replica_scope(), &info);
                    Ok(())
                })?;
            }
            Ok(Some(Msg::ImageCommitted { info, stats }))
        }
        Msg::ImageAbort { handle } => {
            let w = writer(h, handle)?;
            h.writers.remove(&handle);
            h.store.image_abort(w);
            Ok(Some(Msg::Ok))
        }
        other => refuse(
            ErrorKind::Protocol,
            format!("not a write request: {}", msg_name(&other)),
        ),
    }
}

fn writer(h: &SessionHandler, handle: Handle) -> Result<WriterId, Refusal> {
    h.writers.get(&handle).copied().ok_or_else(|| {
        Refusal(
            ErrorKind::Invalid,
            format!("no image open for writing under handle {handle}"),
        )
    })
}

/// Data frames have no answer of their own: an error ends the image's
/// writing (it stays incomplete, resumable from its last checkpoint), and
/// the client hears of it at its next request on the image.
fn fail_image_on_error(
    h: &mut SessionHandler,
    handle: Handle,
    w: WriterId,
    outcome: Result<(), Refusal>,
) -> Answer {
    if let Err(e) = outcome {
        h.writers.remove(&handle);
        h.store.image_detach(w);
        return Err(e);
    }
    Ok(None)
}

/// Paces the user's data by their shaping group: waiting here holds back
/// the session's frames, so the client's sends slow down.
pub(super) fn shape(h: &SessionHandler, bytes: usize) {
    if let Some(job) = &h.shaped {
        let shaper = &h.sessions.replicator.shaper;
        tokio::task::block_in_place(|| shaper.acquire(Some(job), bytes as u64, &|| false));
    }
}
