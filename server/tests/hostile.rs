//! A hostile peer without credentials, speaking raw frames: what it can make
//! ternd spend is bounded, and guessing passwords is slow, bounded and logged.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_core::names::UserName;
use tern_core::wire::{ErrorKind, Frame, Msg, PROTOCOL_MAX};
use tern_test_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

fn hello() -> Msg {
    Msg::Hello {
        min_version: 1,
        max_version: PROTOCOL_MAX,
        features: Vec::new(),
        agent: "hostile".into(),
    }
}

/// A plaintext connection to `server` from `from` (any loopback address).
async fn connect_from(server: &TestServer, from: IpAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    sock.connect(([127, 0, 0, 1], server.plain_port).into())
        .await
        .unwrap()
}

/// The next frame that is not an acknowledgement; `None` once the server closed.
async fn next(s: &mut TcpStream) -> Option<Msg> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), Frame::read_from(s)).await {
            Ok(Ok(f)) if matches!(f.env.msg, Msg::Ack) => continue,
            Ok(Ok(f)) => return Some(f.env.msg),
            Ok(Err(_)) => return None,
            Err(_) => panic!("the server neither answered nor closed within 60 s"),
        }
    }
}

/// ternd's resident memory, current and peak, in MiB.
fn rss_mib(server: &TestServer) -> (u64, u64) {
    let pid = server.child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 1, last])
}

#[test]
fn large_or_early_frames_before_login_close_the_connection_and_cost_little() {
    let server = TestServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (before, _) = rss_mib(&server);
    rt.block_on(async {
        // A header of about 1 MiB that decodes to a million strings (~22 MiB):
        // twenty of them used to wait in the reorder buffer.
        let bomb = Msg::Hello {
            min_version: 1,
            max_version: PROTOCOL_MAX,
            features: vec![String::new(); 900_000],
            agent: String::new(),
        };
        for i in 0..20u8 {
            let mut s = connect_from(&server, loopback(10 + i)).await;
            frame(1, hello()).write_to(&mut s).await.unwrap();
            assert!(matches!(next(&mut s).await, Some(Msg::Welcome { .. })));
            let _ = frame(3, bomb.clone()).write_to(&mut s).await;
            let _ = s.flush().await;
            // Whatever is still queued, the server ends the connection.
            while next(&mut s).await.is_some() {}
        }
        // More than a handful of frames ahead of a missing one: closed too.
        let mut s = connect_from(&server, loopback(40)).await;
        frame(1, hello()).write_to(&mut s).await.unwrap();
        assert!(matches!(next(&mut s).await, Some(Msg::Welcome { .. })));
        for seq in 3..40 {
            if frame(seq, Msg::Ping).write_to(&mut s).await.is_err() {
                break;
            }
        }
        let _ = s.flush().await;
        while next(&mut s).await.is_some() {}
    });
    let (_, peak) = rss_mib(&server);
    assert!(
        peak < before + 64,
        "ternd grew from {before} MiB to a peak of {peak} MiB on frames before login"
    );
    // Real clients are not affected.
    server.client().container_list().unwrap();
}

#[test]
fn unacknowledged_empty_frames_do_not_grow_the_server_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ternd.toml"),
        "session_cache_bytes = 1048576\n",
    )
    .unwrap();
    let server = TestServer::start_with(dir, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (before, _) = rss_mib(&server);
    let pongs = Arc::new(AtomicU64::new(0));
    let counted = pongs.clone();
    let sent = rt.block_on(async {
        let s = connect_from(&server, loopback(50)).await;
        let (mut rd, mut wr) = s.into_split();
        // Read and count every answer, never acknowledging one.
        tokio::spawn(async move {
            while let Ok(f) = Frame::read_from(&mut rd).await {
                if matches!(f.env.msg, Msg::Pong) {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        frame(1, hello()).write_to(&mut wr).await.unwrap();
        let mut seq = 2;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut batch = Vec::new();
        while seq < 400_000 && Instant::now() < deadline {
            batch.clear();
            for _ in 0..1000 {
                batch.extend(frame(seq, Msg::Ping).encode_head().unwrap());
                seq += 1;
            }
            // The server stops reading once its cache is full: a write that
            // does not finish means it is pushing back, as it should.
            match tokio::time::timeout(Duration::from_secs(2), wr.write_all(&batch)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        seq - 2
    });
    let (_, peak) = rss_mib(&server);
    let answered = pongs.load(Ordering::Relaxed);
    eprintln!("sent {sent} pings, {answered} answered; ternd {before} MiB -> peak {peak} MiB");
    // The server must have taken the pings up to its cache, answering them,
    // before it pushed back: one that just hung up answers none.
    assert!(
        answered >= 1_000,
        "the server answered only {answered} of {sent} pings before it stopped reading"
    );
    assert!(
        peak < before + 48,
        "{sent} unacknowledged pings grew ternd from {before} MiB to {peak} MiB"
    );
}

/// Logs in on a fresh raw session from `from`; the answer and how long it took.
async fn raw_login(
    server: &TestServer,
    from: IpAddr,
    user: &str,
    password: &str,
) -> (Msg, Duration) {
    let mut s = connect_from(server, from).await;
    frame(1, hello()).write_to(&mut s).await.unwrap();
    assert!(matches!(next(&mut s).await, Some(Msg::Welcome { .. })));
    let login = Msg::Login {
        user: UserName::new(user).unwrap(),
        password: tern_core::wire::Password::new(password),
    };
    let start = Instant::now();
    frame(2, login).write_to(&mut s).await.unwrap();
    let answer = next(&mut s).await.expect("an answer to Login");
    (answer, start.elapsed())
}

fn is_auth_error(m: &Msg) -> bool {
    matches!(
        m,
        Msg::Error {
            kind: ErrorKind::Auth,
            ..
        }
    )
}

#[test]
fn three_failed_logins_end_the_session() {
    let server = TestServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut s = connect_from(&server, loopback(60)).await;
        frame(1, hello()).write_to(&mut s).await.unwrap();
        assert!(matches!(next(&mut s).await, Some(Msg::Welcome { .. })));
        for seq in 2..5 {
            let login = Msg::Login {
                user: UserName::new("admin").unwrap(),
                password: tern_core::wire::Password::new(format!("guess-{seq}")),
            };
            frame(seq, login).write_to(&mut s).await.unwrap();
            let answer = next(&mut s).await;
            assert!(answer.as_ref().is_some_and(is_auth_error), "{answer:?}");
        }
        // Closed now, not at the handshake deadline 30 s on.
        let start = Instant::now();
        assert_eq!(next(&mut s).await, None, "a fourth guess was allowed");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "closed only after {:?}",
            start.elapsed()
        );
    });
}

#[test]
fn repeated_failures_from_one_address_slow_down_and_are_logged() {
    let server = TestServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let me = loopback(70);
    let times: Vec<Duration> = rt.block_on(async {
        let mut times = Vec::new();
        for i in 0..7 {
            let (answer, took) = raw_login(&server, me, "admin", &format!("not-it-{i}")).await;
            assert!(is_auth_error(&answer), "{answer:?}");
            times.push(took);
        }
        times
    });
    // Six earlier failures: the seventh waits at least a second.
    assert!(times[0] < Duration::from_millis(900), "{times:?}");
    assert!(
        times[6] >= Duration::from_secs(1),
        "no slow-down: {times:?}"
    );
    // Another address is not slowed; the right password still works here.
    let (answer, took) = rt.block_on(raw_login(&server, loopback(71), "admin", "wrong"));
    assert!(
        is_auth_error(&answer) && took < Duration::from_millis(900),
        "{took:?}"
    );
    let (answer, _) = rt.block_on(raw_login(&server, me, "admin", PASSWORD));
    assert!(
        matches!(answer, Msg::LoggedIn { admin: true }),
        "{answer:?}"
    );
    // Each failure is in the log with user and address, never the password.
    let log = std::fs::read_to_string(server.data().with_extension("log")).unwrap();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("failed login")).collect();
    assert!(failures.len() >= 8, "{log}");
    assert!(
        failures
            .iter()
            .all(|l| l.contains("admin") && l.contains("127.0.1.")),
        "{log}"
    );
    assert!(!log.contains("not-it-"), "a password reached the log");
}

#[test]
fn the_answer_time_does_not_tell_whether_a_user_exists() {
    let server = TestServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    rt.block_on(async {
        // A fresh address for each try, so no slow-down is involved.
        for i in 0..6u8 {
            known.push(
                raw_login(&server, loopback(100 + i), "admin", "wrong")
                    .await
                    .1,
            );
            unknown.push(
                raw_login(&server, loopback(120 + i), "nobody", "wrong")
                    .await
                    .1,
            );
        }
    });
    known.sort();
    unknown.sort();
    let (k, u) = (known[3].as_secs_f64(), unknown[3].as_secs_f64());
    assert!(
        (0.5..2.0).contains(&(k / u)),
        "median answer {k:.3} s for a known user, {u:.3} s for an unknown one"
    );
}

#[test]
fn concurrent_password_checks_are_bounded() {
    let server = TestServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (before, _) = rss_mib(&server);
    rt.block_on(async {
        let tries: Vec<_> = (0..32u8)
            .map(|i| raw_login(&server, loopback(150 + i), "admin", "wrong"))
            .collect();
        for (answer, _) in futures_join(tries).await {
            assert!(is_auth_error(&answer), "{answer:?}");
        }
    });
    let (_, peak) = rss_mib(&server);
    // argon2 takes ~19 MiB per check: 32 at once would be ~600 MiB.
    assert!(
        peak < before + 160,
        "ternd grew from {before} MiB to {peak} MiB"
    );
}

/// Runs futures concurrently on the current runtime and collects their results.
async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in pinned.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// A TCP connection to the TLS port from `from`, saying nothing.
fn idle_tls_connection(server: &TestServer, from: IpAddr) -> std::net::TcpStream {
    let sock = connect_std_from(from, server.port);
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    sock
}

/// Connects from a chosen loopback address with the standard library alone.
fn connect_std_from(from: IpAddr, port: u16) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        sock.connect(([127, 0, 0, 1], port).into()).await.unwrap()
    });
    s.into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
        .unwrap()
}

/// How long until the server closes `s` (at most `limit`; `None` if it stays open).
fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> Option<Duration> {
    use std::io::Read;
    s.set_read_timeout(Some(limit)).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Some(start.elapsed()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(_) => Some(start.elapsed()),
        Ok(n) => panic!("the server sent {n} bytes to a silent TLS client"),
    }
}

#[test]
fn connections_are_limited_per_address_and_silent_ones_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ternd.toml"),
        "max_connections_per_address = 4\n",
    )
    .unwrap();
    let server = TestServer::start_with(dir, &[]);
    let crowd = IpAddr::from([127, 0, 2, 1]);
    let opened = Instant::now();
    let mut idle: Vec<_> = (0..4)
        .map(|_| idle_tls_connection(&server, crowd))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The fifth from the same address is closed at once...
    let mut fifth = idle_tls_connection(&server, crowd);
    let refused = closed_within(&mut fifth, Duration::from_secs(3));
    assert!(
        refused.is_some(),
        "a fifth connection from one address was kept"
    );
    // ... while other addresses are served.
    server.client().container_list().unwrap();
    // Silent connections are closed once the TLS handshake time is up.
    for s in &mut idle {
        let left = Duration::from_secs(20).saturating_sub(opened.elapsed());
        assert!(
            closed_within(s, left).is_some(),
            "a silent connection stayed open 20 s"
        );
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(8),
        "closed too early: {:?}",
        opened.elapsed()
    );
    // Their places are free again.
    let mut again = idle_tls_connection(&server, crowd);
    assert_eq!(
        closed_within(&mut again, Duration::from_secs(1)),
        None,
        "not admitted again"
    );
}
