//! A hostile or broken server can neither hang nor blow up its client: the
//! Rust client libtern and the CLI share, and a source ternd dialing a
//! partner. The hostile server here is real TLS and the real session layer
//! (Secure Connect framing), misbehaving on purpose in one way per test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_agent::{Client, ClientError, ClientOptions};
use tern_core::session::{CacheLimits, Session};
use tern_core::tls::{self, Fingerprint, Identity};
use tern_core::wire::{self, ErrorKind, Frame, Msg};
use tern_test_support::*;
use tokio::sync::mpsc;

/// How the hostile server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    /// Completes TLS, then never says Welcome.
    NoWelcome,
    /// Says Welcome, then never answers the login.
    NoLoginAnswer,
    /// After the login, sends error frames for requests never made, as
    /// fast as it can.
    Flood,
    /// Answers a Ping with a Pong carrying a megabyte nobody asked for.
    Oversized,
    /// Answers a Ping with two Pongs.
    AnswersTwice,
    /// Serves a one-chunk image of 100 bytes, and sends that chunk with a
    /// megabyte of payload.
    FatChunk,
}

/// A TLS server on loopback that misbehaves; it stops with the value.
struct Hostile {
    address: String,
    fingerprint: Fingerprint,
    _runtime: tokio::runtime::Runtime,
}

impl Hostile {
    fn start(how: Misbehaviour) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let id = Identity::generate(vec!["localhost".into()])
            .unwrap()
            .identity;
        let fingerprint = id.fingerprint().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(id, false).unwrap());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap().to_string();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        serve(stream, how).await;
                    }
                });
            }
        });
        Hostile {
            address,
            fingerprint,
            _runtime: runtime,
        }
    }

    fn options(&self) -> ClientOptions {
        let mut o = ClientOptions::new(&self.address, "admin", "whatever");
        o.fingerprint = Some(self.fingerprint);
        o.remember_servers = false;
        o.connections = 1;
        o.identity = Some(identity());
        o
    }
}

/// A client identity of this test's own, so that no config directory is touched.
fn identity() -> (std::path::PathBuf, std::path::PathBuf) {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let (cert, key) = (dir.join("client.crt"), dir.join("client.key"));
    if !cert.exists() {
        // Two tests at once: the loser finds the winner's files.
        let _ = tern_agent::identity::create(&cert, &key);
    }
    (cert, key)
}

/// One session on one connection: answers the handshake (or not), then
/// misbehaves.
async fn serve<S>(stream: S, how: Misbehaviour)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Frame>(16);
    let session = Session::new(CacheLimits::memory_only(64 << 20), tx);
    let carrier = session.clone();
    tokio::spawn(async move { carrier.run_connection(stream, None, None).await });
    while let Some(f) = rx.recv().await {
        let req = f.env.req;
        let answered = match (f.env.msg, how) {
            (Msg::Hello { .. }, Misbehaviour::NoWelcome) => Ok(()),
            (Msg::Hello { .. }, _) => session.send(req, welcome(), Vec::new()).await,
            (Msg::Login { .. }, Misbehaviour::NoLoginAnswer) => Ok(()),
            (Msg::Login { .. }, Misbehaviour::Flood) => {
                let logged_in = session.send(req, Msg::LoggedIn { admin: true }, Vec::new());
                match logged_in.await {
                    Ok(()) => flood(&session).await,
                    e => e,
                }
            }
            (Msg::Login { .. }, _) => {
                let logged_in = Msg::LoggedIn { admin: true };
                session.send(req, logged_in, Vec::new()).await
            }
            (Msg::Ping, Misbehaviour::Oversized) => {
                session.send(req, Msg::Pong, vec![7; 1 << 20]).await
            }
            (Msg::Ping, Misbehaviour::AnswersTwice) => {
                match session.send(req, Msg::Pong, Vec::new()).await {
                    Ok(()) => session.send(req, Msg::Pong, Vec::new()).await,
                    e => e,
                }
            }
            (Msg::Ping, _) => session.send(req, Msg::Pong, Vec::new()).await,
            (msg, Misbehaviour::FatChunk) => match fat_chunk(msg) {
                Some((answer, payload)) => session.send(req, answer, payload).await,
                None => Ok(()),
            },
            _ => Ok(()),
        };
        if answered.is_err() {
            return;
        }
    }
}

/// The fat-chunk server's answers: a one-chunk image of 100 bytes whose
/// chunk comes with a megabyte of payload.
fn fat_chunk(msg: Msg) -> Option<(Msg, Vec<u8>)> {
    let id = tern_core::ChunkId::of(&[7; 100]);
    match msg {
        Msg::ImageOpen { container, name } => {
            let info = wire::ImageInfo {
                container,
                name,
                size: 100,
                chunks: 1,
                props: Vec::new(),
                created: 0,
                lock_until: 0,
                location: Default::default(),
            };
            Some((Msg::ImageOpened { handle: 1, info }, Vec::new()))
        }
        Msg::RecipeGet { from_offset, .. } => {
            let entries = match from_offset {
                0 => vec![wire::RecipeEntry {
                    offset: 0,
                    id,
                    len: 100,
                }],
                _ => Vec::new(),
            };
            Some((Msg::Recipe { entries }, Vec::new()))
        }
        Msg::ChunkGet { handle, .. } => {
            let data = Msg::ChunkData {
                handle,
                id,
                codec: tern_core::Codec::Raw,
                raw_len: 100,
                offset: 0,
            };
            Some((data, vec![7; 1 << 20]))
        }
        _ => None,
    }
}

/// A Welcome without a session token: no further connections join.
fn welcome() -> Msg {
    Msg::Welcome {
        version: wire::PROTOCOL_MAX,
        features: wire::FEATURES.iter().map(|s| s.to_string()).collect(),
        server: "hostile".into(),
        session: Vec::new(),
        grace_secs: 60,
    }
}

/// Error frames for requests nobody made, until the client hangs up (or a
/// million were sent: a client that kept them all would hold a gigabyte).
async fn flood(session: &Arc<Session>) -> Result<(), tern_core::session::SessionError> {
    for i in 0..1_000_000u64 {
        let junk = Msg::Error {
            kind: ErrorKind::Internal,
            message: "x".repeat(1000),
        };
        session.send((1 << 40) + i, junk, Vec::new()).await?;
    }
    Ok(())
}

fn is_protocol_error(e: &ClientError) -> bool {
    matches!(e, ClientError::Protocol(_))
}

#[test]
fn a_server_that_never_says_welcome_fails_the_connect_within_the_handshake_limit() {
    for how in [Misbehaviour::NoWelcome, Misbehaviour::NoLoginAnswer] {
        let hostile = Hostile::start(how);
        let mut opts = hostile.options();
        opts.handshake_timeout = Duration::from_secs(2);
        let started = Instant::now();
        let err = Client::connect(&opts)
            .err()
            .expect("connected to a mute server");
        let took = started.elapsed();
        assert!(matches!(err, ClientError::Connect { .. }), "{how:?}: {err}");
        assert!(err.to_string().contains("within 2 s"), "{how:?}: {err}");
        assert!(took < Duration::from_secs(10), "{how:?}: took {took:?}");
    }
}

#[test]
fn answers_to_nothing_asked_end_the_session_as_a_protocol_error() {
    let hostile = Hostile::start(Misbehaviour::Flood);
    let mut opts = hostile.options();
    opts.call_timeout = Some(Duration::from_secs(60));
    // The flood may end the session before connect returns, or after.
    let err = match Client::connect(&opts) {
        Ok(client) => client.ping().expect_err("a flooded session went on"),
        Err(e) => e,
    };
    assert!(is_protocol_error(&err), "{err}");
    assert!(err.to_string().contains("not waiting on"), "{err}");
}

#[test]
fn an_answer_bigger_than_its_request_can_use_is_refused() {
    let hostile = Hostile::start(Misbehaviour::Oversized);
    let client = Client::connect(&hostile.options()).unwrap();
    let err = client.ping().expect_err("an oversized Pong was taken");
    assert!(is_protocol_error(&err), "{err}");
    assert!(err.to_string().contains("payload"), "{err}");
}

#[test]
fn a_chunk_bigger_than_its_recipe_entry_could_be_stored_is_refused() {
    let hostile = Hostile::start(Misbehaviour::FatChunk);
    let client = Client::connect(&hostile.options()).unwrap();
    let mut reader = client.open_image("c", "i").unwrap();
    let err = reader
        .copy_to(&mut std::io::sink())
        .expect_err("a 1 MiB answer for a 100-byte chunk was taken");
    assert!(is_protocol_error(&err), "{err}");
    assert!(err.to_string().contains("payload"), "{err}");
}

#[test]
fn a_second_answer_to_one_request_ends_the_session() {
    let hostile = Hostile::start(Misbehaviour::AnswersTwice);
    let client = Client::connect(&hostile.options()).unwrap();
    client.ping().expect("the first answer is a good one");
    // The second Pong ends the session; the next call hears why.
    let started = Instant::now();
    let err = loop {
        match client.ping() {
            Err(e) => break e,
            Ok(_) if started.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Ok(_) => panic!("the session survived a doubled answer"),
        }
    };
    assert!(is_protocol_error(&err), "{err}");
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn a_hostile_target_cannot_hang_or_bloat_its_source() {
    let source = TestServer::start();
    let pid = source.child.as_ref().unwrap().id();
    let mut opts = source.options();
    opts.call_timeout = Some(Duration::from_secs(120));
    let admin = Client::connect(&opts).unwrap();
    let before = rss_bytes(pid);
    for how in [Misbehaviour::Flood, Misbehaviour::NoWelcome] {
        let hostile = Hostile::start(how);
        let fp = hostile.fingerprint.to_string();
        let started = Instant::now();
        let added = admin.partner_add("evil", &[&hostile.address], &fp, "partner", "pw-123456");
        let took = started.elapsed();
        let after = rss_bytes(pid);
        eprintln!(
            "{how:?}: answered in {took:?}; source RSS {} -> {} KiB: {added:?}",
            before / 1024,
            after / 1024
        );
        // The partner dial's own limits: 15 s for Welcome (and Login).
        assert!(took < Duration::from_secs(40), "{how:?}: took {took:?}");
        assert!(
            after < before + (64 << 20),
            "{how:?}: the source grew from {before} to {after} bytes"
        );
        match (how, added) {
            // The login itself was honest; the flood after it ended that
            // session (or, racing, the add).
            (Misbehaviour::Flood, Ok(())) => admin.partner_remove("evil").unwrap(),
            (Misbehaviour::Flood, Err(e)) => {
                assert!(e.to_string().contains("protocol error"), "{e}")
            }
            (_, Err(e)) => assert!(e.to_string().contains("Welcome"), "{e}"),
            (_, Ok(())) => panic!("{how:?}: a mute partner was added"),
        }
    }
    // The source is none the worse.
    admin.ping().unwrap();
}
