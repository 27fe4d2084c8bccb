//! Secure Connect and MultiConnect through a bad WAN: a fault-injecting proxy
//! between a real client and a real ternd over TLS.

use std::io::Write;
use std::time::Duration;

use tern_agent::{Client, ClientOptions, ContainerSettings};
use tern_faultproxy::{FaultProxy, Faults};
use tern_test_support::*;

fn proxy(server: &TestServer, faults: Faults) -> FaultProxy {
    FaultProxy::start("127.0.0.1:0", server.address().parse().unwrap(), faults).unwrap()
}

fn via(server: &TestServer, proxy: &FaultProxy) -> ClientOptions {
    let mut o = server.options();
    o.server = proxy.addr().to_string();
    o
}

fn backup(client: &Client, name: &str, data: &[u8]) -> tern_agent::Committed {
    let mut w = client.create_image("c", name, b"").unwrap();
    for piece in data.chunks(1 << 20) {
        w.write_all(piece).unwrap();
    }
    w.commit().unwrap()
}

fn restore(client: &Client, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    client
        .open_image("c", name)
        .unwrap()
        .copy_to(&mut out)
        .unwrap();
    out
}

/// Pack files hold nothing twice: their size is the stored chunks plus framing.
fn assert_each_chunk_stored_once(server: &TestServer) {
    let stats = server.client().stats().unwrap();
    let overhead = stats.unique_chunks * (44 + 49) + 4096 * 64;
    assert!(
        stats.pack_bytes <= stats.stored_bytes + overhead,
        "packs hold {} bytes for {} stored bytes: something was stored twice",
        stats.pack_bytes,
        stats.stored_bytes
    );
}

#[test]
fn a_backup_through_a_link_cut_every_two_seconds_completes_and_restores_identical() {
    let server = TestServer::start();
    server
        .client()
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let p = proxy(&server, Faults::default());
    let client = Client::connect(&via(&server, &p)).unwrap();
    p.set(Faults {
        cut_every: Some(Duration::from_secs(2)),
        ..Faults::default()
    });
    let data = test_data(512 << 20, 41);
    backup(&client, "cut", &data);
    assert!(p.cuts() >= 2, "the link was never cut ({} cuts)", p.cuts());
    // Restore through the same cutting link.
    assert!(restore(&client, "cut") == data, "restored bytes differ");
    assert_each_chunk_stored_once(&server);
    assert!(server.ternd(&["fsck"]).status.success());
}

#[test]
fn a_stall_longer_than_the_dead_connection_timeout_is_ridden_out() {
    let server = TestServer::start();
    server
        .client()
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let p = proxy(&server, Faults::default());
    let client = Client::connect(&via(&server, &p)).unwrap();
    let data = test_data(48 << 20, 42);
    let mut w = client.create_image("c", "stalled", b"").unwrap();
    w.write_all(&data[..16 << 20]).unwrap();
    p.stall();
    std::thread::sleep(tern_core::session::DEAD_AFTER + Duration::from_secs(2));
    p.resume();
    w.write_all(&data[16 << 20..]).unwrap();
    w.commit().unwrap();
    assert!(restore(&client, "stalled") == data);
}

#[test]
fn one_lost_connection_of_four_is_survived() {
    let server = TestServer::start();
    server
        .client()
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let p = proxy(&server, Faults::default());
    let mut opts = via(&server, &p);
    opts.connections = 4;
    let client = Client::connect(&opts).unwrap();
    let data = test_data(64 << 20, 43);
    let mut w = client.create_image("c", "multi", b"").unwrap();
    for (i, piece) in data.chunks(4 << 20).enumerate() {
        w.write_all(piece).unwrap();
        if i % 4 == 1 {
            p.cut_one();
        }
    }
    w.commit().unwrap();
    assert!(p.accepted() > 4, "no connection was replaced");
    assert!(restore(&client, "multi") == data);
}

#[test]
fn the_servers_shorter_grace_period_caps_the_first_connection_too() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), &["--grace-period", "2"]);
    server
        .client()
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let p = proxy(&server, Faults::default());
    let mut opts = via(&server, &p);
    // One connection: the session's only slot is the one dialed before Welcome.
    opts.connections = 1;
    opts.grace_period = Duration::from_secs(600);
    let client = Client::connect(&opts).unwrap();
    let mut w = client.create_image("c", "doomed", b"").unwrap();
    w.write_all(&test_data(4 << 20, 45)).unwrap();
    p.set(Faults {
        refuse_new: true,
        ..Faults::default()
    });
    p.cut_all();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(w.commit().map(|_| ()).map_err(|e| e.to_string()));
    });
    // The server keeps the session 2 s; a client still waiting 60 s later
    // used its own 600 s instead.
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Err(text)) => assert!(
            text.contains("grace period") || text.contains("session"),
            "{text}"
        ),
        Ok(Ok(())) => panic!("committed through a dead link"),
        Err(_) => panic!("the client waited past the server's 2 s grace period"),
    }
}

#[test]
fn an_outage_longer_than_the_grace_period_fails_clearly_and_leaves_no_image() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), &["--grace-period", "2"]);
    server
        .client()
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let p = proxy(&server, Faults::default());
    let mut opts = via(&server, &p);
    opts.grace_period = Duration::from_secs(3);
    let client = Client::connect(&opts).unwrap();
    let mut w = client.create_image("c", "doomed", b"").unwrap();
    w.write_all(&test_data(8 << 20, 44)).unwrap();
    p.set(Faults {
        refuse_new: true,
        ..Faults::default()
    });
    p.cut_all();
    let started = std::time::Instant::now();
    let err = w.commit().expect_err("committed through a dead link");
    let text = err.to_string();
    assert!(
        text.contains("grace period") || text.contains("session"),
        "unclear error: {text}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // The server ended the session and dropped the image; its store is clean.
    std::thread::sleep(Duration::from_secs(3));
    assert!(server.client().image_list("c", "").unwrap().is_empty());
    let fsck = server.ternd(&["fsck"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// A TLS connection to `server` presenting `identity`.
async fn tls_as(
    server: &TestServer,
    identity: tern_core::tls::Identity,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let pin = tern_core::tls::PinnedServer::new(Some(server.fingerprint()));
    let config = tern_core::tls::client_config(pin, identity, false).unwrap();
    let tcp = tokio::net::TcpStream::connect(server.address())
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// The next frame that is not a bare acknowledgement.
async fn next_message<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> tern_core::wire::Msg {
    loop {
        let f = tokio::time::timeout(
            Duration::from_secs(10),
            tern_core::wire::Frame::read_from(s),
        )
        .await
        .expect("no answer")
        .unwrap();
        if !matches!(f.env.msg, tern_core::wire::Msg::Ack) {
            return f.env.msg;
        }
    }
}

#[test]
fn a_session_token_is_refused_on_a_connection_with_another_client_identity() {
    use tern_core::tls::Identity;
    use tern_core::wire::{Envelope, Frame, Msg};
    let server = TestServer::start();
    let (cert, key) = server.client_identity();
    let mine = Identity::load(&cert, &key).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut first = tls_as(&server, mine.clone()).await;
        let hello = Msg::Hello {
            min_version: tern_core::wire::PROTOCOL_MIN,
            max_version: tern_core::wire::PROTOCOL_MAX,
            features: Vec::new(),
            agent: "test".into(),
        };
        let env = Envelope {
            seq: 1,
            ack: 0,
            req: 1,
            msg: hello,
        };
        Frame::new(env, Vec::new())
            .write_to(&mut first)
            .await
            .unwrap();
        let Msg::Welcome { session: token, .. } = next_message(&mut first).await else {
            panic!("no Welcome");
        };
        assert_eq!(token.len(), 32);
        let join = || Msg::Join {
            session: token.clone(),
            received: 1,
        };

        // The token alone is not enough: another identity is told nothing about it.
        let mut thief = tls_as(
            &server,
            Identity::generate(vec!["thief".into()]).unwrap().identity,
        )
        .await;
        tern_core::session::write_control(&mut thief, join())
            .await
            .unwrap();
        match next_message(&mut thief).await {
            Msg::Error { kind, .. } => assert_eq!(kind, tern_core::wire::ErrorKind::SessionExpired),
            other => panic!("another identity joined the session: {other:?}"),
        }

        // The same identity joins.
        let mut second = tls_as(&server, mine).await;
        tern_core::session::write_control(&mut second, join())
            .await
            .unwrap();
        assert!(matches!(
            next_message(&mut second).await,
            Msg::Joined { .. }
        ));
    });
}

/// The proxy cuts the first `cuts` connections when the server first answers:
/// over TLS that is the ServerHello, over plaintext the Welcome after Hello.
fn connect_through_first_answer_cuts(
    plain: bool,
    secure_connect: bool,
    cuts: u32,
) -> (Result<Client, String>, u64) {
    let server = TestServer::start();
    let target = if plain {
        format!("127.0.0.1:{}", server.plain_port)
    } else {
        server.address()
    };
    let p = FaultProxy::start(
        "127.0.0.1:0",
        target.parse().unwrap(),
        Faults {
            cut_at_first_answer: cuts,
            ..Faults::default()
        },
    )
    .unwrap();
    let mut opts = via(&server, &p);
    opts.plain = plain;
    opts.secure_connect = secure_connect;
    let client = Client::connect(&opts).map_err(|e| e.to_string());
    if let Ok(c) = &client {
        c.stats().expect("the session works once connected");
    }
    (client, p.cuts())
}

#[test]
fn a_first_connection_cut_during_the_tls_handshake_is_dialed_again() {
    let (client, cuts) = connect_through_first_answer_cuts(false, true, 2);
    assert!(client.is_ok(), "{:?}", client.err());
    assert_eq!(cuts, 2);
}

#[test]
fn a_first_connection_cut_before_welcome_is_dialed_again() {
    let (client, cuts) = connect_through_first_answer_cuts(true, true, 2);
    assert!(client.is_ok(), "{:?}", client.err());
    assert_eq!(cuts, 2);
}

#[test]
fn without_secure_connect_or_after_three_cuts_connecting_fails_clearly() {
    for (secure_connect, cuts) in [(false, 1), (true, 3)] {
        let (client, _) = connect_through_first_answer_cuts(true, secure_connect, cuts);
        let err = client
            .err()
            .expect("connected through a cut first connection");
        assert!(err.contains("before the session was set up"), "{err}");
    }
}
