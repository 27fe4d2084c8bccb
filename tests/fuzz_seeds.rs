//! The fuzz corpus (`fuzz/corpus/<target>/`) starts from real inputs, so the
//! fuzzers begin past the first bytes of each format. This test checks that the
//! committed seeds are still what they are meant to be (a format change that
//! leaves them stale fails here); `TERN_WRITE_FUZZ_SEEDS=1` writes them anew.

use std::path::PathBuf;

use tern_core::names::UserName;
use tern_core::wire::{Envelope, Frame, Msg, Password, PROTOCOL_MAX};
use tern_core::{ChunkId, Codec};

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn bytes(seq: u64, ack: u64, msg: Msg, payload: &[u8]) -> Vec<u8> {
    let env = Envelope {
        seq,
        ack,
        req: seq,
        msg,
    };
    let mut out = Frame::new(env, payload.to_vec()).encode_head().unwrap();
    out.extend_from_slice(payload);
    out
}

fn hello() -> Vec<u8> {
    let msg = Msg::Hello {
        min_version: 1,
        max_version: PROTOCOL_MAX,
        features: vec!["multiconnect".into()],
        agent: "seed".into(),
    };
    bytes(1, 0, msg, b"")
}

fn login() -> Vec<u8> {
    let msg = Msg::Login {
        user: UserName::new("admin").unwrap(),
        password: Password::new("not-the-password"),
    };
    bytes(2, 0, msg, b"")
}

fn join() -> Vec<u8> {
    let msg = Msg::Join {
        session: vec![7; 32],
        received: 3,
    };
    bytes(0, 0, msg, b"")
}

/// A container's cloud tier policy set, then the tier's status asked (protocol 9).
fn tier() -> Vec<u8> {
    let policy = tern_core::wire::TierPolicy {
        to: tern_core::ContainerName::new("cloud/c").unwrap(),
        mode: tern_core::wire::TierMode::Copy,
        idle_secs: 3600,
        matches: vec!["*.full".into()],
        excludes: vec!["tmp*".into()],
        prefixes: vec!["db-".into()],
        shaping: Some("wan".into()),
        local_days: 0,
    };
    let set = Msg::ContainerTier {
        name: tern_core::ContainerName::new("c").unwrap(),
        policy: Some(policy),
    };
    [bytes(3, 0, set, b""), bytes(4, 0, Msg::TierStatusGet, b"")].concat()
}

/// A source server's replica, announced and acknowledged (protocol 2).
fn replica() -> Vec<u8> {
    let create = Msg::ReplicaCreate {
        container: tern_core::ContainerName::new("dr").unwrap(),
        name: tern_core::ImageName::new("img").unwrap(),
        props: b"props".to_vec(),
        origin: tern_core::wire::ReplicaOrigin {
            copy: tern_core::wire::CopyId([9; 16]),
            server: "sha256:00".into(),
            container: tern_core::ContainerName::new("c").unwrap(),
            image: tern_core::ImageName::new("img").unwrap(),
            lock: Some(tern_core::wire::ImageLock {
                until: 1_900_000_000,
                mode: tern_core::wire::LockMode::Compliance,
            }),
        },
        chunking: Default::default(),
        zstd_level: 1,
    };
    let ack = Msg::EventsAck {
        container: tern_core::ContainerName::new("dr").unwrap(),
        ids: vec![1, 2, u64::MAX],
    };
    [bytes(3, 0, create, b""), bytes(4, 0, ack, b"")].concat()
}

/// A resume of an incomplete image and the server's answer (protocol 3),
/// the abort of a copy (protocol 4), a suspend and its answer and an
/// audit listing (6).
fn resume() -> Vec<u8> {
    let ask = Msg::ImageResume {
        container: tern_core::ContainerName::new("c").unwrap(),
        name: tern_core::ImageName::new("img").unwrap(),
        mode: tern_core::wire::WriteMode::Dedup,
    };
    let answer = Msg::ImageResumed {
        handle: 1,
        chunking: Default::default(),
        zstd_level: 1,
        offset: 65536,
        props: b"props".to_vec(),
    };
    let abort = Msg::CopyAbort {
        id: tern_core::wire::CopyId([7; 16]),
    };
    [
        bytes(5, 0, ask, b""),
        bytes(6, 0, answer, b""),
        bytes(7, 0, abort, b""),
        bytes(8, 0, Msg::ImageSuspend { handle: 1 }, b""),
        bytes(9, 0, Msg::ImageSuspended { offset: 65536 }, b""),
        bytes(10, 0, Msg::AuditGet { since: 1 }, b""),
    ]
    .concat()
}

/// Every seed: (target, file name, contents).
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let ping = |seq, ack| bytes(seq, ack, Msg::Ping, b"payload");
    let ack = |n| bytes(0, n, Msg::Ack, b"");
    let chunk = b"a chunk of plain text, a chunk of plain text".to_vec();
    let zstd = zstd::bulk::compress(&chunk, 1).unwrap();
    let mut codec_raw = (chunk.len() as u32).to_le_bytes().to_vec();
    codec_raw.push(0);
    codec_raw.extend_from_slice(&chunk);
    let mut codec_zstd = (chunk.len() as u32).to_le_bytes().to_vec();
    codec_zstd.push(1);
    codec_zstd.extend_from_slice(&zstd);
    vec![
        ("frame", "hello", hello()),
        ("frame", "login", login()),
        ("frame", "join", join()),
        ("frame", "pings", [ping(1, 0), ping(2, 1)].concat()),
        ("frame", "replica", replica()),
        ("frame", "resume", resume()),
        ("frame", "tier", tier()),
        ("handshake", "hello-login", [hello(), login()].concat()),
        ("handshake", "join", join()),
        (
            "handshake",
            "hello-ping-early",
            [hello(), ping(3, 0), ping(2, 0)].concat(),
        ),
        (
            "session",
            "trusted-in-order",
            [vec![1], ping(1, 0), ack(0), ping(2, 0)].concat(),
        ),
        (
            "session",
            "untrusted-reordered",
            [vec![0], ping(3, 0), ping(1, 0), ping(2, 0)].concat(),
        ),
        ("session", "join-ack", [vec![1], join(), ack(5)].concat()),
        ("codec", "raw", codec_raw),
        ("codec", "zstd", codec_zstd),
        (
            "pack",
            "two-chunks",
            pack_with(&[b"first chunk", b"second"]),
        ),
        ("seed", "volume", seed_volume(&[&chunk, b"second"])),
    ]
}

/// An unencrypted seed volume of these chunks, as `ternd seed export`
/// writes it: one segment of records, then the empty last one.
fn seed_volume(chunks: &[&[u8]]) -> Vec<u8> {
    use tern_server::service::seed::format::{Header, Record, SegmentWriter, KIND_VOLUME};
    use tern_server::service::seed::seal::Sealer;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol-000001.tern");
    let header = Header {
        kind: KIND_VOLUME,
        encrypted: false,
        seed: [7; 16],
        number: 1,
    };
    let mut w = SegmentWriter::create(&path, header).unwrap();
    let mut plain = Vec::new();
    for c in chunks {
        let rec = Record {
            id: ChunkId::of(c),
            codec: Codec::Raw,
            raw_len: c.len() as u32,
            bytes: c.to_vec(),
        };
        rec.encode_into(&mut plain);
    }
    w.write_segment(&Sealer::Plain, &plain, false).unwrap();
    w.write_segment(&Sealer::Plain, &[], true).unwrap();
    w.finish().unwrap();
    std::fs::read(path).unwrap()
}

/// A finished pack of these chunks, as ternd writes it.
fn pack_with(chunks: &[&[u8]]) -> Vec<u8> {
    use tern_server::store::pack_store::{DirPackStore, PackStore};
    let dir = tempfile::tempdir().unwrap();
    let packs = DirPackStore::open(dir.path().to_path_buf(), false).unwrap();
    let mut w = tern_server::store::pack::PackWriter::create(packs.create(1).unwrap(), 1).unwrap();
    for c in chunks {
        w.append(&ChunkId::of(c), Codec::Raw, c.len() as u32, c)
            .unwrap();
    }
    w.finish().unwrap();
    std::fs::read(packs.path(1)).unwrap()
}

#[test]
fn the_fuzz_seeds_are_current() {
    let write = std::env::var_os("TERN_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, contents) in seeds() {
        let path = corpus(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &contents).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (TERN_WRITE_FUZZ_SEEDS=1 writes it)",
                path.display()
            )
        });
        assert!(
            committed == contents,
            "{} is stale: the format changed; TERN_WRITE_FUZZ_SEEDS=1 cargo test -p tern-tests \
             --test fuzz_seeds rewrites it",
            path.display()
        );
    }
    // What the frame seeds hold decodes, frame by frame, to the end.
    for (_, _, contents) in seeds().into_iter().filter(|s| s.0 == "frame") {
        let mut rest = contents.as_slice();
        while !rest.is_empty() {
            let (_, used) = Frame::decode(rest).unwrap();
            rest = &rest[used..];
        }
    }
}
