//! What a session holds on the server ends with it: a client that closes
//! says goodbye and its session ends at once, and what sessions spill to
//! disk is bounded per user, however many sessions the user opens.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_agent::ContainerSettings;
use tern_core::names::{ContainerName, ImageName, UserName};
use tern_core::wire::{Frame, Msg, Password, PROTOCOL_MAX};
use tern_test_support::*;

fn sessions(admin: &tern_agent::Client) -> u64 {
    admin.stats().unwrap().sessions
}

#[test]
fn a_client_that_closes_ends_its_session_at_once() {
    let server = TestServer::start();
    let admin = server.client();
    let alone = sessions(&admin);
    assert_eq!(alone, 1, "the admin's own session");

    // The Rust client (and the C library, which wraps it) says goodbye.
    let c = server.client();
    c.container_list().unwrap();
    assert_eq!(sessions(&admin), 2);
    drop(c);
    assert_eq!(sessions(&admin), alone, "a dropped client left its session");

    // So does the CLI when it exits.
    let out = server.tern(&["container", "ls"], None);
    assert!(out.status.success());
    assert_eq!(sessions(&admin), alone, "tern left its session behind");

    // A client killed mid-backup cannot say goodbye: its session waits out
    // the grace period (it may come back), as documented.
    admin
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let mut backup = Command::new(tern_bin())
        .args(["--server", &server.address()])
        .args(["--fingerprint", &server.fingerprint().to_string()])
        .args(["backup", "--container", "c", "--name", "x", "-"])
        .env("TERN_PASSWORD", PASSWORD)
        .env("TERN_CONFIG_DIR", server.data().join("client-config"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    backup
        .stdin
        .as_mut()
        .unwrap()
        .write_all(&test_data(1 << 20, 1))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sessions(&admin) == alone {
        assert!(Instant::now() < deadline, "the backup never logged in");
        std::thread::sleep(Duration::from_millis(50));
    }
    backup.kill().unwrap();
    backup.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sessions(&admin), alone + 1);
}

/// A raw session logged in as admin that asks for `rounds` copies of every
/// chunk of `c/big` and never acknowledges a frame.
async fn hoarder(plain_port: u16, rounds: usize) {
    let s = tokio::net::TcpStream::connect(("127.0.0.1", plain_port))
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    // Reads everything, acknowledges nothing (our frames all carry ack 0).
    tokio::spawn(async move {
        while let Ok(f) = Frame::read_from(&mut rd).await {
            if !matches!(f.env.msg, Msg::Ack | Msg::ChunkData { .. }) {
                let _ = tx.send(f.env.msg);
            }
        }
    });
    let mut seq = 0;
    let mut ask = |msg: Msg| {
        seq += 1;
        frame(seq, msg)
    };
    let hello = Msg::Hello {
        min_version: 1,
        max_version: PROTOCOL_MAX,
        features: Vec::new(),
        agent: "hoarder".into(),
    };
    let login = Msg::Login {
        user: UserName::new("admin").unwrap(),
        password: Password::new(PASSWORD),
    };
    let open = Msg::ImageOpen {
        container: ContainerName::new("c").unwrap(),
        name: ImageName::new("big").unwrap(),
    };
    for msg in [hello, login, open] {
        ask(msg).write_to(&mut wr).await.unwrap();
    }
    let mut handle = None;
    while handle.is_none() {
        match answers.recv().await.expect("answers") {
            Msg::ImageOpened { handle: h, .. } => handle = Some(h),
            Msg::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    let handle = handle.unwrap();
    let recipe = Msg::RecipeGet {
        handle,
        from_offset: 0,
        max: 16384,
    };
    ask(recipe).write_to(&mut wr).await.unwrap();
    let offsets: Vec<u64> = loop {
        if let Msg::Recipe { entries } = answers.recv().await.expect("a recipe") {
            break entries.iter().map(|e| e.offset).collect();
        }
    };
    for _ in 0..rounds {
        let get = Msg::ChunkGet {
            handle,
            offsets: offsets.clone(),
        };
        // The server stops reading once it waits for acknowledgements.
        let f = ask(get);
        let write = f.write_to(&mut wr);
        if tokio::time::timeout(Duration::from_secs(2), write)
            .await
            .is_err()
        {
            break;
        }
    }
    // Keep the connection (and the session's claim) while the test looks.
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(wr);
}

#[test]
fn spill_files_are_bounded_per_user_however_many_sessions() {
    const PER_USER: u64 = 10 << 20;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ternd.toml"),
        format!(
            "session_cache_bytes = 1048576\nsession_spill_bytes = 8388608\n\
             spill_bytes_per_user = {PER_USER}\nspill_bytes_total = 67108864\n"
        ),
    )
    .unwrap();
    let server = TestServer::start_with(dir, &[]);
    let admin = server.client();
    admin
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let mut w = admin.create_image("c", "big", b"").unwrap();
    w.write_all(&test_data(4 << 20, 3)).unwrap();
    w.commit().unwrap();

    // Three sessions, each asking for ~30 MiB and acknowledging nothing: each
    // may spill 8 MiB by itself, 24 MiB together, but the user only 10.
    let rt = tokio::runtime::Runtime::new().unwrap();
    for _ in 0..3 {
        rt.spawn(hoarder(server.plain_port, 12));
    }
    // Wait until the spill stops growing.
    let (mut last, mut stable_since) = (0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(25);
    while Instant::now() < deadline && stable_since.elapsed() < Duration::from_secs(3) {
        let now = admin.stats().unwrap().spill_bytes;
        if now != last {
            (last, stable_since) = (now, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("the admin's sessions spilled {last} bytes");
    assert!(
        last >= 4 << 20,
        "the sessions hardly spilled ({last} bytes)"
    );
    assert!(
        last <= PER_USER,
        "one user's sessions spilled {last} bytes, past the {PER_USER} allowed"
    );
    drop(rt);
}
