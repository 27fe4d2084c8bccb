//! The store's background upkeep while ternd serves: checkpoints of images
//! whose writers paused or vanished, the expiry of incomplete images, and
//! (on a thread of its own, as it waits on buckets) the saving of cloud
//! groups' catalogs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::Store;

/// How often open images are looked at for a checkpoint.
const TICK: Duration = Duration::from_secs(1);
/// How often incomplete images are looked at for expiry.
const EXPIRY_EVERY: Duration = Duration::from_secs(5);

/// How long what an interrupted writer left is kept after its last checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Incomplete images (backups).
    pub images: Duration,
    /// Partial replicas (copies).
    pub replicas: Duration,
}

/// Starts the upkeep thread; it runs as long as the process.
pub fn start(store: Arc<Store>, retention: Retention) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tern-upkeep".into())
        .spawn(move || {
            let mut last_expiry = Instant::now();
            loop {
                std::thread::sleep(TICK);
                if let Err(e) = store.checkpoint_idle() {
                    tracing::warn!("checkpointing idle images: {e}");
                }
                if last_expiry.elapsed() >= EXPIRY_EVERY {
                    last_expiry = Instant::now();
                    if let Err(e) = store.expire_incomplete(retention.images, retention.replicas) {
                        tracing::warn!("expiring incomplete images: {e}");
                    }
                }
            }
        })?;
    Ok(())
}

/// Starts the thread that saves cloud groups' catalogs to their buckets
/// every `every` (`cloud_catalog_secs`), first right away; it runs as long
/// as the process.
pub fn start_catalog_saver(store: Arc<Store>, every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tern-catalogs".into())
        .spawn(move || loop {
            // Each group's failure is logged where it happens.
            let _ = store.save_cloud_catalogs();
            std::thread::sleep(every);
        })?;
    Ok(())
}
