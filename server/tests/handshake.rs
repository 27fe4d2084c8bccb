//! The handshake as a raw peer sees it: one deadline for Hello and Login
//! together, and a clear refusal of an incompatible protocol version.

use std::time::{Duration, Instant};

use tern_core::wire::{ErrorKind, Frame, Msg, PROTOCOL_MAX};
use tern_test_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn hello(min_version: u16, max_version: u16) -> Msg {
    Msg::Hello {
        min_version,
        max_version,
        features: Vec::new(),
        agent: "test".into(),
    }
}

/// Reads frames until the server closes the connection; returns the
/// messages that were not bare acknowledgements.
async fn read_until_closed(mut rd: tokio::net::tcp::OwnedReadHalf) -> Vec<Msg> {
    let mut seen = Vec::new();
    while let Ok(f) = Frame::read_from(&mut rd).await {
        if !matches!(f.env.msg, Msg::Ack) {
            seen.push(f.env.msg);
        }
    }
    seen
}

#[test]
fn pings_do_not_extend_the_login_deadline() {
    let server = TestServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tcp = TcpStream::connect(("127.0.0.1", server.plain_port))
            .await
            .unwrap();
        let start = Instant::now();
        let (rd, mut wr) = tcp.into_split();
        let reader = tokio::spawn(read_until_closed(rd));
        frame(1, hello(1, PROTOCOL_MAX))
            .write_to(&mut wr)
            .await
            .unwrap();
        // A Ping every 5 s, never a Login; each used to restart the deadline.
        let mut seq = 2;
        while !reader.is_finished() && start.elapsed() < Duration::from_secs(50) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if frame(seq, Msg::Ping).write_to(&mut wr).await.is_err() {
                break;
            }
            let _ = wr.flush().await;
            seq += 1;
        }
        let closed_after = start.elapsed();
        assert!(
            reader.is_finished()
                || tokio::time::timeout(Duration::from_secs(2), reader)
                    .await
                    .is_ok(),
            "a peer that never logged in was still connected after {closed_after:?}"
        );
        assert!(
            closed_after >= Duration::from_secs(25) && closed_after < Duration::from_secs(40),
            "closed after {closed_after:?}, not at the 30 s deadline"
        );
    });
}

#[test]
fn an_incompatible_protocol_version_is_told_so_and_closed() {
    let server = TestServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen = rt.block_on(async {
        let tcp = TcpStream::connect(("127.0.0.1", server.plain_port))
            .await
            .unwrap();
        let (rd, mut wr) = tcp.into_split();
        frame(1, hello(PROTOCOL_MAX + 10, PROTOCOL_MAX + 20))
            .write_to(&mut wr)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), read_until_closed(rd))
            .await
            .expect("the server kept the connection open")
    });
    match seen.as_slice() {
        [Msg::Error { kind, message }] => {
            assert_eq!(*kind, ErrorKind::Incompatible, "{message}");
            assert!(
                message.contains(&(PROTOCOL_MAX + 10).to_string()),
                "{message}"
            );
        }
        other => panic!("expected one Incompatible error, got {other:?}"),
    }
}
