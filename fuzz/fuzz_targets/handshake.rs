//! A connection's first bytes, as ternd's accept path takes them: whatever a
//! peer sends before login (Hello, Login, Join, garbage) must end in an answer
//! or a closed connection, never a panic.
#![no_main]
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tern_core::session::CacheLimits;
use tern_server::protocol::sessions::{serve_connection, Sessions};
use tern_server::service::audit::AuditLog;
use tern_server::service::replication::{LocalIdentity, Replicator};
use tern_server::service::shaping::{schedule::Clock, Shaper};
use tern_server::service::tier::Tierer;
use tern_server::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    sessions: Arc<Sessions>,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // No users: a Login can only fail, as a stranger's does.
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let cache = CacheLimits::memory_only(1 << 20);
        // Sessions end quickly once their connection is gone.
        // Copies never run: nothing before login reaches the replicator.
        let me = LocalIdentity {
            cert: dir.path().join("unused.crt"),
            key: dir.path().join("unused.key"),
            server_id: "fuzz".into(),
        };
        let shaper = Arc::new(Shaper::new(store.clone(), Clock::default()));
        let replicator = Replicator::start(store.clone(), me, 1, shaper).unwrap();
        // The tier mover finds no policy: nothing before login sets one.
        let every = Duration::from_secs(3600);
        let tier = Tierer::start(store.clone(), replicator.clone(), every).unwrap();
        let sessions = Sessions::new(
            store,
            Duration::from_millis(1),
            cache,
            (replicator, tier),
            tern_core::wire::PROTOCOL_MAX,
            Arc::new(AuditLog::new(dir.path())),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        World {
            rt,
            sessions,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    // A new address each time: failed logins slow down their address.
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let peer = SocketAddr::new(IpAddr::from((10u32 << 24 | n).to_be_bytes()), 40000);
    w.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        let served = tokio::spawn(serve_connection(
            server,
            peer,
            None,
            deadline,
            w.sessions.clone(),
        ));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut sink = vec![0u8; 64 << 10];
        let drain = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(2), served).await;
    });
});
