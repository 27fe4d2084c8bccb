//! Reading an image: open, recipe, chunks, release.

use tern_core::wire::{ErrorKind, Handle, Msg};

use super::{blocking, msg_name, refuse, Answer, Refusal};
use crate::protocol::handler::{Fatal, SessionHandler};
use crate::store::ReadableImage;

/// Most recipe entries returned by one `RecipeGet`.
const MAX_RECIPE_BATCH: u32 = 16_384;
/// Most chunks asked for by one `ChunkGet`.
const MAX_CHUNK_GET: usize = 4096;

pub async fn handle(h: &mut SessionHandler, req: u64, msg: Msg) -> Answer {
    match msg {
        Msg::ImageOpen { container, name } => {
            let user = h.user()?.clone();
            let img = blocking(|| h.store.image_open(&user.scope(), &container, &name))?;
            let handle = h.new_handle();
            let info = img.info.clone();
            h.readers.insert(handle, img);
            Ok(Some(Msg::ImageOpened { handle, info }))
        }
        Msg::RecipeGet {
            handle,
            from_offset,
            max,
        } => {
            let img = reader(h, handle)?;
            let max = max.clamp(1, MAX_RECIPE_BATCH) as usize;
            let entries = blocking(|| h.store.recipe_from(img.image_id, from_offset, max))?;
            Ok(Some(Msg::Recipe { entries }))
        }
        Msg::ChunkGet { handle, offsets } => {
            if offsets.len() > MAX_CHUNK_GET {
                return refuse(
                    ErrorKind::Protocol,
                    format!("{} chunks asked at once", offsets.len()),
                );
            }
            let img = reader(h, handle)?;
            for offset in offsets {
                let (entry, loc, bytes) = blocking(|| h.store.read_chunk(&img, offset))?;
                super::write::shape(h, bytes.len());
                let msg = Msg::ChunkData {
                    handle,
                    id: entry.id,
                    codec: loc.codec,
                    raw_len: loc.raw_len,
                    offset: entry.offset,
                };
                h.send(req, msg, bytes)
                    .await
                    .map_err(|Fatal(why)| Refusal(ErrorKind::Internal, why))?;
            }
            Ok(None)
        }
        Msg::ImageRelease { handle } => {
            h.readers.remove(&handle);
            Ok(Some(Msg::Ok))
        }
        other => refuse(
            ErrorKind::Protocol,
            format!("not a read request: {}", msg_name(&other)),
        ),
    }
}

fn reader(h: &SessionHandler, handle: Handle) -> Result<ReadableImage, Refusal> {
    h.readers.get(&handle).cloned().ok_or_else(|| {
        Refusal(
            ErrorKind::Invalid,
            format!("no image open for reading under handle {handle}"),
        )
    })
}
