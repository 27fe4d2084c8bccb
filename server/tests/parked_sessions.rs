//! A paused user holds no thread: a thousand sessions whose data waits for
//! a shaping group at rate 0 leave the server free to serve an admin, and
//! they go on the moment the admin lifts the rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_agent::ContainerSettings;
use tern_core::names::{ContainerName, ImageName, UserName};
use tern_core::wire::{Frame, Handle, Msg, Password, ShapingSettings, WriteMode, PROTOCOL_MAX};
use tern_test_support::*;
use tokio::sync::{mpsc, Semaphore};

const SESSIONS: usize = 1000;
const DMA_PASSWORD: &str = "dma-secret";

fn rate(rate: u64) -> ShapingSettings {
    ShapingSettings {
        rate,
        windows: Vec::new(),
        timezone: "UTC".into(),
    }
}

/// What a parked writer reports.
enum Step {
    /// Its data is sent and waits for the shaping group.
    Parked,
    /// Its image committed.
    Committed,
    Failed(String),
}

type Reader = tokio::net::tcp::OwnedReadHalf;
type Writer = tokio::net::tcp::OwnedWriteHalf;

/// Frames of one raw session, numbered in order.
struct Raw {
    rd: Reader,
    wr: Writer,
    seq: u64,
}

impl Raw {
    async fn send(&mut self, msg: Msg, payload: Vec<u8>) -> Result<(), String> {
        self.seq += 1;
        let mut f = frame(self.seq, msg);
        f.payload = payload;
        f.write_to(&mut self.wr).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Reads frames until `pick` takes one; an error frame fails.
async fn read_until<T>(rd: &mut Reader, pick: impl Fn(Msg) -> Option<T>) -> Result<T, String> {
    loop {
        match Frame::read_from(rd).await.map(|f| f.env.msg) {
            Ok(Msg::Error { message, .. }) => return Err(message),
            Ok(msg) => {
                if let Some(t) = pick(msg) {
                    return Ok(t);
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Logs in as `dma` and creates passthrough image `img-I`; its handle.
async fn log_in_and_create(port: u16, i: usize) -> Result<(Raw, Handle), String> {
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (rd, wr) = s.into_split();
    let mut raw = Raw { rd, wr, seq: 0 };
    let hello = Msg::Hello {
        min_version: 1,
        max_version: PROTOCOL_MAX,
        features: Vec::new(),
        agent: "parked".into(),
    };
    let login = Msg::Login {
        user: UserName::new("dma").unwrap(),
        password: Password::new(DMA_PASSWORD),
    };
    let create = Msg::ImageCreate {
        container: ContainerName::new("c").unwrap(),
        name: ImageName::new(format!("img-{i}")).unwrap(),
        props: Vec::new(),
        mode: WriteMode::Passthrough,
    };
    for msg in [hello, login, create] {
        raw.send(msg, Vec::new()).await?;
    }
    let handle = read_until(&mut raw.rd, |m| match m {
        Msg::ImageCreated { handle, .. } => Some(handle),
        _ => None,
    })
    .await?;
    Ok((raw, handle))
}

/// A raw session of user `dma` that writes one passthrough image of 64 KiB
/// and closes it; the close is answered only once the data has passed the
/// shaping group.
async fn parked_writer(
    port: u16,
    i: usize,
    logins: Arc<Semaphore>,
    report: mpsc::UnboundedSender<Step>,
) {
    let outcome = async {
        // Logins queue for the server's password checks (argon2, one core
        // each): a few at a time, so that none misses its handshake deadline.
        let login_turn = logins.acquire_owned().await.map_err(|e| e.to_string())?;
        let (mut raw, handle) = log_in_and_create(port, i).await?;
        drop(login_turn);
        let data = test_data(64 << 10, i as u64);
        raw.send(Msg::ImageWriteRaw { handle }, data).await?;
        raw.send(Msg::ImageClose { handle }, Vec::new()).await?;
        let _ = report.send(Step::Parked);
        let Raw { mut rd, mut wr, .. } = raw;
        // A live client's connection is never silent: an Ack every 2 s keeps
        // it (the server drops a connection it hears nothing from for 8 s).
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let mut ack = frame(0, Msg::Ack);
                ack.env.req = 0;
                if ack.write_to(&mut wr).await.is_err() {
                    return;
                }
            }
        });
        read_until(&mut rd, |m| {
            matches!(m, Msg::ImageCommitted { .. }).then_some(())
        })
        .await?;
        let _ = report.send(Step::Committed);
        // Hold the connection until the test is over.
        let _ = keepalive.await;
        Ok::<(), String>(())
    };
    if let Err(why) = outcome.await {
        let _ = report.send(Step::Failed(format!("session {i}: {why}")));
    }
}

#[test]
fn an_admin_lifts_a_rate_0_group_within_2_s_while_a_thousand_sessions_are_parked() {
    // Connections from one address are limited (64 by default): this
    // server admits all of them, to show that the parking costs no thread.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ternd.toml"),
        "max_connections = 2048\nmax_connections_per_address = 2048\n",
    )
    .unwrap();
    let server = TestServer::start_with(dir, &[]);
    let admin = server.client();
    admin
        .container_create("c", ContainerSettings::default())
        .unwrap();
    admin.shaping_set("stop", rate(0)).unwrap();
    admin.user_add("dma", DMA_PASSWORD, false).unwrap();
    admin.user_set("dma", Some(&["default"]), None).unwrap();
    admin.user_set_shaping("dma", Some("stop")).unwrap();
    drop(admin);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let logins = Arc::new(Semaphore::new(32));
    for i in 0..SESSIONS {
        rt.spawn(parked_writer(
            server.plain_port,
            i,
            logins.clone(),
            tx.clone(),
        ));
    }
    // Every session has logged in (one argon2 check each) and sent its data.
    let mut parked = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while parked < SESSIONS {
        let left = deadline.saturating_duration_since(Instant::now());
        match rt.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
            Ok(Some(Step::Parked)) => parked += 1,
            Ok(Some(Step::Committed)) => panic!("an image committed through a rate of 0"),
            Ok(Some(Step::Failed(why))) => panic!("{why}"),
            Ok(None) | Err(_) => panic!("only {parked} of {SESSIONS} sessions sent their data"),
        }
    }
    // Their data reached the server's handlers, and none gets through.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        rx.try_recv().is_err(),
        "a session went on through a rate of 0"
    );

    let t = Instant::now();
    let admin = server.client();
    let parked_jobs = admin.shaping_list().unwrap()[0].jobs;
    admin.shaping_set("stop", rate(1 << 30)).unwrap();
    let lifted = t.elapsed();
    eprintln!("admin login, listing and lift with {SESSIONS} parked sessions: {lifted:?}");
    assert_eq!(parked_jobs as usize, SESSIONS);
    assert!(
        lifted < Duration::from_secs(2),
        "the admin needed {lifted:?} to lift the rate"
    );

    // Every parked session goes on and commits.
    let mut committed = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed < SESSIONS {
        let left = deadline.saturating_duration_since(Instant::now());
        match rt.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
            Ok(Some(Step::Committed)) => committed += 1,
            Ok(Some(Step::Failed(why))) => panic!("{why}"),
            _ => panic!("only {committed} of {SESSIONS} images committed after the lift"),
        }
    }
    assert_eq!(admin.image_list("c", "").unwrap().len(), SESSIONS);
    rt.shutdown_background();
}
