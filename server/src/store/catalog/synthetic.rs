//! A store of a given size without its data: index entries, recipes and
//! image records made up directly, to measure GC and `tern stats` at scale
//! (`ternd synthetic-fill`, hidden). No pack holds these chunks: reading
//! such an image fails, and fsck reports every entry.

use redb::ReadableTable;
use tern_core::{ChunkId, Codec};

use super::index::IndexWriter;
use super::{next_counter, Catalog, IMAGES, RECIPES};
use crate::store::pack::Location;
use crate::store::records::*;
use crate::store::Result;

/// Index entries per transaction, and per synthetic image.
const BATCH: u64 = 1 << 20;
/// The made-up size of every chunk.
const CHUNK: u32 = 2048;

impl Catalog {
    /// Adds `entries` index entries to group `group`; every `live_every`-th
    /// is named by a recipe of an image `synthetic-N` of container
    /// `container_id`, the rest are garbage for GC to sweep.
    pub fn synthetic_fill(
        &self,
        container_id: u64,
        group: u32,
        entries: u64,
        live_every: u64,
    ) -> Result<()> {
        let mut done = 0;
        while done < entries {
            let n = BATCH.min(entries - done);
            let tx = self.begin_write()?;
            {
                let image_id = next_counter(&tx, "next_image")?;
                let mut index = IndexWriter::open(&tx)?;
                let mut recipes = tx.open_table(RECIPES)?;
                let mut size = 0u64;
                let mut chunks = 0u64;
                for i in done..done + n {
                    let id = ChunkId::of(&i.to_le_bytes());
                    let loc = Location {
                        pack: 1 << 40 | (i / 4096),
                        offset: (i % 4096) * u64::from(CHUNK),
                        stored_len: CHUNK,
                        raw_len: CHUNK,
                        codec: Codec::Raw,
                    };
                    index.insert(&chunk_key(group, &id), &loc)?;
                    if i % live_every.max(1) == 0 {
                        recipes.insert((image_id, size), recipe_value(&id, CHUNK).as_slice())?;
                        size += u64::from(CHUNK);
                        chunks += 1;
                    }
                }
                index.finish()?;
                let rec = ImageRecord {
                    id: image_id,
                    size,
                    chunks,
                    props: Vec::new(),
                    created: now_unix(),
                    origin: None,
                    changed: 0,
                    held: None,
                    recalled: 0,
                };
                let name = format!("synthetic-{image_id}");
                let mut images = tx.open_table(IMAGES)?;
                if images.get((container_id, name.as_str()))?.is_none() {
                    images.insert((container_id, name.as_str()), encode(&rec)?.as_slice())?;
                }
            }
            tx.commit()?;
            done += n;
        }
        Ok(())
    }
}
