//! `ternd seed status` and `ternd seed cleanup`: the seeds a store loaded,
//! and dropping their pins once replication has caught up with them.

use serde::{Deserialize, Serialize};

use super::SeedError;
use crate::store::Store;

/// One seed, as `ternd seed status` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedStatus {
    pub seed: String,
    pub source: String,
    pub created: u64,
    pub imported: u64,
    pub group: String,
    /// Chunks pinned, and how many of them images refer to now.
    pub chunks: u64,
    pub referenced: u64,
    pub bytes_loaded: u64,
    pub volumes_loaded: u32,
    pub volumes_total: Option<u32>,
    pub pinned_until: u64,
    /// Images of the seeded containers that have not arrived by replication.
    pub images_awaited: Vec<String>,
}

/// What `ternd seed cleanup` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CleanupReport {
    pub seeds: Vec<String>,
    pub pins_dropped: u64,
}

pub fn status(store: &Store) -> Result<Vec<SeedStatus>, SeedError> {
    let arrived = store.replica_origins()?;
    let mut out = Vec::new();
    for (id, rec, pins, referenced) in store.seed_list::<super::SeedRecord>()? {
        let mut awaited = Vec::new();
        for c in &rec.containers {
            for image in &c.images {
                if !arrived.contains(&(rec.source.clone(), c.name.clone(), image.clone())) {
                    awaited.push(format!("{}/{image}", c.name));
                }
            }
        }
        out.push(SeedStatus {
            seed: id,
            source: rec.source,
            created: rec.created,
            imported: rec.imported,
            group: rec.group.to_string(),
            chunks: pins,
            referenced,
            bytes_loaded: rec.bytes_loaded,
            volumes_loaded: rec.volumes_done.len() as u32,
            volumes_total: rec.volumes_total,
            pinned_until: rec.pin_expires,
            images_awaited: awaited,
        });
    }
    Ok(out)
}

/// Drops the pins of seed `which` (every seed if `None`). Refused while
/// images of a seed's containers have not arrived by replication (the
/// replication policy from that source is not in sync yet: dropping the
/// pins now could let GC free chunks the copies would then send again),
/// unless `force`.
pub fn cleanup(
    store: &Store,
    which: Option<&str>,
    force: bool,
) -> Result<CleanupReport, SeedError> {
    let all = status(store)?;
    let chosen: Vec<&SeedStatus> = all
        .iter()
        .filter(|s| which.is_none_or(|w| s.seed == w || s.seed.starts_with(w)))
        .collect();
    if chosen.is_empty() {
        return Err(SeedError::Invalid(match which {
            Some(w) => format!("no seed {w} here (ternd seed status lists them)"),
            None => "no seeds here".into(),
        }));
    }
    if let (Some(w), true) = (which, chosen.len() > 1) {
        return Err(SeedError::Invalid(format!(
            "{w} names more than one seed; give more of its id"
        )));
    }
    if !force {
        for s in &chosen {
            if !s.images_awaited.is_empty() {
                return Err(SeedError::Invalid(format!(
                    "seed {} is not in sync yet: {} image(s) of its containers have not arrived \
                     from {} by replication (first: {}); run the copies first, or give --force",
                    s.seed,
                    s.images_awaited.len(),
                    s.source,
                    s.images_awaited[0]
                )));
            }
        }
    }
    let ids: Vec<String> = chosen.iter().map(|s| s.seed.clone()).collect();
    let pins_dropped = store.seed_unpin(&ids)?;
    Ok(CleanupReport {
        seeds: ids,
        pins_dropped,
    })
}
