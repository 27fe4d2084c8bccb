//! A session's connection after the handshake: control frames (Join, Joined,
//! Ack), sequence numbers out of order, duplicates and garbage must be taken,
//! dropped or refused within the session's bounds, never panic.
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tern_core::session::{CacheLimits, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    rt().block_on(async {
        let (inbound, mut delivered) = tokio::sync::mpsc::channel(32);
        let session = Session::new(CacheLimits::memory_only(1 << 20), inbound);
        // Half the inputs meet a server session before login, half after.
        if mode & 1 == 0 {
            session.distrust();
        }
        let (mut peer, ours) = tokio::io::duplex(64 << 10);
        let run = {
            let session = session.clone();
            tokio::spawn(async move { session.run_connection(ours, None, None).await })
        };
        let _ = peer.write_all(data).await;
        let _ = peer.shutdown().await;
        let mut sink = vec![0u8; 64 << 10];
        let work = async {
            loop {
                tokio::select! {
                    f = delivered.recv() => if f.is_none() { break },
                    n = peer.read(&mut sink) => if !matches!(n, Ok(n) if n > 0) { break },
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), work).await;
        session.close("fuzz input done");
        drop(peer);
        let _ = tokio::time::timeout(Duration::from_secs(2), run).await;
    });
});
