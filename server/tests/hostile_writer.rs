//! A logged-in writer that lies about its chunks: an entry labelled with
//! another length than the store holds for its chunk is refused, 30 s of
//! 1-byte entries cost the server no memory to speak of, and chunk bytes
//! that are not their id's are refused and never stored.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tern_core::names::{ContainerName, ImageName, UserName};
use tern_core::wire::{ChunkRef, ErrorKind, Frame, Msg, Password, WriteMode, PROTOCOL_MAX};
use tern_core::ChunkId;
use tern_test_support::*;
use tokio::net::TcpStream;

/// One raw session, frames numbered in order; answers read one by one.
struct Raw {
    s: TcpStream,
    seq: u64,
    /// Answers to frames sent with [`Raw::send`] (a chunk's failure is the
    /// answer to the image's next request: a later chunk's, or the close),
    /// in the order they came.
    unasked: Vec<Msg>,
}

impl Raw {
    /// Logs in as the admin over the test server's plaintext port.
    async fn login(server: &TestServer) -> Self {
        let s = TcpStream::connect(("127.0.0.1", server.plain_port))
            .await
            .unwrap();
        let mut raw = Raw {
            s,
            seq: 0,
            unasked: Vec::new(),
        };
        let hello = Msg::Hello {
            min_version: 1,
            max_version: PROTOCOL_MAX,
            features: Vec::new(),
            agent: "liar".into(),
        };
        assert!(matches!(raw.ask(hello).await, Msg::Welcome { .. }));
        let login = Msg::Login {
            user: UserName::new("admin").unwrap(),
            password: Password::new(PASSWORD),
        };
        assert!(matches!(raw.ask(login).await, Msg::LoggedIn { .. }));
        raw
    }

    /// Sends a frame that has no answer (chunk data).
    async fn send(&mut self, msg: Msg, payload: Vec<u8>) {
        self.seq += 1;
        let mut f = frame(self.seq, msg);
        f.payload = payload;
        f.write_to(&mut self.s).await.unwrap();
    }

    /// Sends a request and returns its answer; answers to earlier frames
    /// that come first go to `unasked`.
    async fn ask(&mut self, msg: Msg) -> Msg {
        self.seq += 1;
        frame(self.seq, msg).write_to(&mut self.s).await.unwrap();
        loop {
            let f = tokio::time::timeout(Duration::from_secs(60), Frame::read_from(&mut self.s))
                .await
                .expect("an answer within 60 s")
                .expect("the session goes on");
            match f.env.msg {
                Msg::Ack => {}
                msg if f.env.req == self.seq => return msg,
                msg => self.unasked.push(msg),
            }
        }
    }
}

fn rss_mib(server: &TestServer) -> u64 {
    let pid = server.child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

fn new_image(name: &str) -> Msg {
    Msg::ImageCreate {
        container: ContainerName::new("c").unwrap(),
        name: ImageName::new(name).unwrap(),
        props: Vec::new(),
        mode: WriteMode::Dedup,
    }
}

fn refused_as_invalid(m: &Msg) -> bool {
    matches!(
        m,
        Msg::Error {
            kind: ErrorKind::Invalid,
            ..
        }
    )
}

#[test]
fn mislabelled_and_one_byte_entries_are_refused_and_cost_no_memory() {
    let server = TestServer::start();
    let client = server.client();
    client.container_create("c", Default::default()).unwrap();
    let mut w = client.create_image("c", "a", b"").unwrap();
    w.write_all(&test_data(4 << 20, 9)).unwrap();
    w.commit().unwrap();
    drop(client);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut raw = Raw::login(&server).await;
        // A real chunk of `a`, with its true length.
        let open = Msg::ImageOpen {
            container: ContainerName::new("c").unwrap(),
            name: ImageName::new("a").unwrap(),
        };
        let Msg::ImageOpened { handle, .. } = raw.ask(open).await else {
            panic!("open")
        };
        let get = Msg::RecipeGet {
            handle,
            from_offset: 0,
            max: 4,
        };
        let Msg::Recipe { entries } = raw.ask(get).await else {
            panic!("recipe")
        };
        let real = entries[0];

        let Msg::ImageCreated { handle, .. } = raw.ask(new_image("liar")).await else {
            panic!("create")
        };
        // The stored chunk, announced 200,000 bytes long.
        let lie = vec![ChunkRef {
            id: real.id,
            len: 200_000,
        }];
        let answer = raw
            .ask(Msg::ImageAppend {
                handle,
                entries: lie,
            })
            .await;
        assert!(
            refused_as_invalid(&answer),
            "a mislabelled entry: {answer:?}"
        );

        // 30 s of announces of 4,096 one-byte entries each.
        let before = rss_mib(&server);
        let started = Instant::now();
        let (mut sent, mut n) = (0u64, 0u64);
        while started.elapsed() < Duration::from_secs(30) {
            n += 1;
            let Msg::ImageCreated { handle, .. } = raw.ask(new_image(&format!("tiny-{n}"))).await
            else {
                panic!("create")
            };
            let entries = (0..4096u32)
                .map(|i| ChunkRef {
                    id: ChunkId(*blake3::hash(&[(n as u32 ^ i) as u8; 7]).as_bytes()),
                    len: 1,
                })
                .collect();
            let answer = raw.ask(Msg::ImageAppend { handle, entries }).await;
            assert!(refused_as_invalid(&answer), "1-byte entries: {answer:?}");
            sent += 4096;
        }
        let peak = rss_mib(&server);
        eprintln!("{sent} one-byte entries refused in 30 s; ternd peak RSS {before} -> {peak} MiB");
        assert!(peak < 600, "ternd grew to {peak} MiB");
        assert!(matches!(raw.ask(Msg::Ping).await, Msg::Pong));
    });
}

/// The session's intake checks chunks off its request task: a forged chunk
/// (another chunk's bytes under an id the store lacks) among good ones is
/// still refused, reported at the image's next request, the image is not
/// committed, the store still lacks the forged id, and the true bytes sent
/// later under it restore as they are.
#[test]
fn forged_chunk_bytes_are_refused_at_the_next_request_and_never_stored() {
    let server = TestServer::start();
    let client = server.client();
    client.container_create("c", Default::default()).unwrap();
    let chunks: Vec<Vec<u8>> = (0..16).map(|i| test_data(20_000, 100 + i)).collect();
    let forged = 7;
    let entries: Vec<ChunkRef> = chunks
        .iter()
        .map(|c| ChunkRef {
            id: ChunkId::of(c),
            len: c.len() as u32,
        })
        .collect();
    let data = |handle, c: &[u8]| Msg::ChunkData {
        handle,
        id: ChunkId::of(c),
        codec: tern_core::Codec::Raw,
        raw_len: c.len() as u32,
        offset: 0,
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut raw = Raw::login(&server).await;
        let Msg::ImageCreated { handle, .. } = raw.ask(new_image("forged")).await else {
            panic!("create")
        };
        let append = Msg::ImageAppend {
            handle,
            entries: entries.clone(),
        };
        let Msg::ImageNeed { missing, .. } = raw.ask(append).await else {
            panic!("append")
        };
        assert_eq!(missing.len(), chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            // The forged one carries its neighbour's bytes: the same
            // length, a valid encoding, another id.
            let bytes = if i == forged { &chunks[i + 1] } else { c };
            raw.send(data(handle, c), bytes.clone()).await;
        }
        // Refused at the image's next request after the check: a later
        // chunk's (whichever the checkers finish before) or the close.
        let answer = raw.ask(Msg::ImageClose { handle }).await;
        assert!(
            refused_as_invalid(&answer),
            "an image with a forged chunk: {answer:?}"
        );
        let forged_id = ChunkId::of(&chunks[forged]).to_string();
        let said =
            |m: &Msg| matches!(m, Msg::Error { message, .. } if message.contains(&forged_id));
        assert!(
            said(&answer) || raw.unasked.iter().any(said),
            "no refusal names the forged chunk: {answer:?}, {:?}",
            raw.unasked
        );
        // The image left the session with the failure.
        let again = raw.ask(Msg::ImageClose { handle }).await;
        assert!(refused_as_invalid(&again), "{again:?}");

        // The store lacks the forged id; sent true, the image commits.
        let Msg::ImageCreated { handle, .. } = raw.ask(new_image("true")).await else {
            panic!("create")
        };
        let append = Msg::ImageAppend { handle, entries };
        let Msg::ImageNeed { missing, .. } = raw.ask(append).await else {
            panic!("append")
        };
        assert!(
            missing.contains(&(forged as u32)),
            "the forged chunk's id is stored: {missing:?}"
        );
        for i in missing {
            let c = &chunks[i as usize];
            raw.send(data(handle, c), c.clone()).await;
        }
        let answer = raw.ask(Msg::ImageClose { handle }).await;
        assert!(matches!(answer, Msg::ImageCommitted { .. }), "{answer:?}");
    });

    let listed = client.image_list("c", "").unwrap();
    assert!(
        listed.iter().all(|i| i.name.as_str() != "forged"),
        "the image with a forged chunk is listed as committed"
    );
    let mut back = Vec::new();
    client
        .open_image("c", "true")
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(
        back == chunks.concat(),
        "the restore differs from what was written"
    );
}
