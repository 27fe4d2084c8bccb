//! Reading an image: open, recipe, chunks, release.

use tern_core::wire::{ErrorKind, Msg};

use super::{blocking, msg_name, refuse, Answer, Refusal};
use crate::protocol::handler::{Fatal, SessionHandler};

/// Most recipe entries returned by one `RecipeGet`.
const MAX_RECIPE_BATCH: u32 = 16_384;
/// Most chunks asked for by one `ChunkGet`.
const MAX_CHUNK_GET: usize = 4096;

pub async fn handle(h: &mut SessionHandler, req: u64, msg: Msg) -> Answer {
    match msg {
        Msg::ImageOpen { container, name } => {
            let scope = h.user()?.scope();
            let img = blocking(|| h.store().image_open(&scope, &container, &name))?;
            let info = img.info.clone();
            let handle = h.add_reader(img);
            Ok(Some(Msg::ImageOpened { handle, info }))
        }
        Msg::RecipeGet {
            handle,
            from_offset,
            max,
        } => {
            let img = h.reader(handle)?;
            let max = max.clamp(1, MAX_RECIPE_BATCH) as usize;
            let entries = blocking(|| h.store().open_recipe(&img, from_offset, max))?;
            Ok(Some(Msg::Recipe { entries }))
        }
        Msg::ChunkGet { handle, offsets } => {
            if offsets.len() > MAX_CHUNK_GET {
                return refuse(
                    ErrorKind::Protocol,
                    format!("{} chunks asked at once", offsets.len()),
                );
            }
            let img = h.reader(handle)?;
            for offset in offsets {
                let (entry, loc, bytes) = blocking(|| h.store().read_chunk(&img, offset))?;
                h.shape(bytes.len()).await?;
                h.metrics().sent(bytes.len());
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
            h.release_reader(handle);
            Ok(Some(Msg::Ok))
        }
        other => refuse(
            ErrorKind::Protocol,
            format!("not a read request: {}", msg_name(&other)),
        ),
    }
}
