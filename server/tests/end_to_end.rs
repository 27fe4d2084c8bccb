//! The foundation's promises, checked against real ternd processes over TLS.

use std::io::{Read, Seek, SeekFrom, Write};

use tern_agent::{ClientError, ContainerSettings, WriteMode};
use tern_core::tls::Fingerprint;
use tern_core::wire::ErrorKind;
use tern_test_support::*;

fn backup(
    client: &tern_agent::Client,
    container: &str,
    name: &str,
    data: &[u8],
) -> tern_agent::Committed {
    let mut w = client.create_image(container, name, b"dma-props").unwrap();
    for piece in data.chunks(1 << 20) {
        w.write_all(piece).unwrap();
    }
    w.commit().unwrap()
}

fn restore(client: &tern_agent::Client, container: &str, name: &str) -> Vec<u8> {
    let mut r = client.open_image(container, name).unwrap();
    let mut out = Vec::new();
    r.copy_to(&mut out).unwrap();
    out
}

#[test]
fn backup_restores_identical_and_an_edited_version_sends_only_its_edits() {
    let server = TestServer::start();
    let client = server.client();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let v1 = test_data(24 << 20, 1);
    let first = backup(&client, "c", "v1", &v1);
    assert_eq!(first.stats.logical_bytes, v1.len() as u64);
    assert!(
        first.sent_bytes < v1.len() as u64,
        "compression did nothing"
    );
    assert_eq!(restore(&client, "c", "v1"), v1);

    // Forty edits: insertions and overwrites at spread-out offsets.
    let mut v2 = v1.clone();
    let edits = 40;
    for i in 0..edits {
        let at = (i * 600_000 + 77_777) % (v2.len() - 5000);
        if i % 2 == 0 {
            v2.splice(at..at, test_data(1500, 100 + i as u64));
        } else {
            v2[at..at + 2000].copy_from_slice(&test_data(2000, 200 + i as u64));
        }
    }
    let before = server.pack_bytes();
    let second = backup(&client, "c", "v2", &v2);
    let growth = server.pack_bytes() - before;
    // At most two average (64 KiB) chunks per edit, compressed, plus slack for pack tables.
    let bound = edits as u64 * 2 * 65536;
    assert!(
        second.sent_bytes <= bound,
        "sent {} for {edits} edits",
        second.sent_bytes
    );
    assert!(
        growth <= bound + 64 * 1024,
        "store grew {growth} for {edits} edits"
    );
    assert_eq!(restore(&client, "c", "v2"), v2);

    let names: Vec<String> = client
        .image_list("c", "")
        .unwrap()
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(names, ["v1", "v2"]);
    assert_eq!(client.image_list("c", "v2").unwrap()[0].props, b"dma-props");

    client.image_remove("c", "v1").unwrap();
    let before_gc = server.pack_bytes();
    let gc = server.ternd(&["gc"]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(server.pack_bytes() < before_gc, "gc reclaimed nothing");
    assert_eq!(restore(&client, "c", "v2"), v2);
    let fsck = server.ternd(&["fsck"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn reads_at_any_offset_and_seeks() {
    let server = TestServer::start();
    let client = server.client();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let data = test_data(3 << 20, 5);
    backup(&client, "c", "img", &data);
    let mut r = client.open_image("c", "img").unwrap();
    for &off in &[0u64, 1, 65_535, 1_000_000, 3 * 1024 * 1024 - 10] {
        let mut buf = [0u8; 100];
        let n = r.read_at(off, &mut buf).unwrap();
        assert!(n > 0);
        assert_eq!(&buf[..n], &data[off as usize..off as usize + n]);
    }
    r.seek(SeekFrom::Start(2_000_000)).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, &data[2_000_000..]);
    let mut buf = [0u8; 10];
    assert_eq!(r.read_at(data.len() as u64 + 5, &mut buf).unwrap(), 0);
}

#[test]
fn several_images_written_at_once_from_several_threads() {
    let server = TestServer::start();
    let client = server.client();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let datas: Vec<Vec<u8>> = (0..4).map(|i| test_data(6 << 20, 10 + i)).collect();
    std::thread::scope(|s| {
        for (i, d) in datas.iter().enumerate() {
            let client = &client;
            s.spawn(move || backup(client, "c", &format!("stream{i}"), d));
        }
    });
    for (i, d) in datas.iter().enumerate() {
        assert_eq!(&restore(&client, "c", &format!("stream{i}")), d);
    }
}

#[test]
fn passthrough_mode_dedups_on_the_server() {
    let server = TestServer::start();
    let mut opts = server.options();
    opts.mode = WriteMode::Passthrough;
    let client = tern_agent::Client::connect(&opts).unwrap();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let data = test_data(5 << 20, 3);
    let first = backup(&client, "c", "a", &data);
    assert!(first.stats.new_chunks > 0);
    let second = backup(&client, "c", "b", &data);
    assert_eq!(second.stats.new_chunks, 0, "the same data stored twice");
    assert_eq!(restore(&client, "c", "b"), data);
}

/// Yields `data`, then fails.
struct FailingAfter<'a>(&'a [u8]);

impl Read for FailingAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() {
            return Err(std::io::Error::other("the disk went away"));
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn copy_from_reads_a_source_whole_and_fails_on_a_read_error() {
    let server = TestServer::start();
    for mode in [WriteMode::Dedup, WriteMode::Passthrough] {
        let mut opts = server.options();
        opts.mode = mode;
        let client = tern_agent::Client::connect(&opts).unwrap();
        let container = format!("{mode:?}");
        client
            .container_create(&container, ContainerSettings::default())
            .unwrap();
        // Odd length: the last piece is short, the last chunk partial.
        let data = test_data((13 << 20) + 12_345, 9);
        let mut w = client.create_image(&container, "whole", b"").unwrap();
        let mut reported = 0;
        let copied = w.copy_from(&data[..], |n| reported += n).unwrap();
        assert_eq!((copied, reported), (data.len() as u64, data.len() as u64));
        w.commit().unwrap();
        assert_eq!(restore(&client, &container, "whole"), data, "{mode:?}");

        let mut w = client.create_image(&container, "torn", b"").unwrap();
        let err = w
            .copy_from(FailingAfter(&data[..9 << 20]), |_| {})
            .unwrap_err();
        assert!(matches!(err, ClientError::Io(_)), "{mode:?}: {err}");
        drop(w);
        let names: Vec<_> = client
            .image_list(&container, "")
            .unwrap()
            .into_iter()
            .map(|i| i.name.to_string())
            .collect();
        assert_eq!(names, ["whole"], "{mode:?}");
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let server = TestServer::start();
    let client = server.client();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    for bad in ["a/b", "..", "nul\0x", &"x".repeat(256)] {
        let err = client
            .create_image("c", bad, b"")
            .err()
            .expect("bad name accepted");
        assert!(matches!(err, ClientError::Invalid(_)), "{bad:?}: {err}");
    }
    let err = client.create_image("nope", "img", b"").err().unwrap();
    assert_eq!(err.kind(), Some(ErrorKind::NotFound), "{err}");
    assert!(err.to_string().contains("nope"));
    let err = client.open_image("c", "missing").err().unwrap();
    assert_eq!(err.kind(), Some(ErrorKind::NotFound));

    let mut wrong = server.options();
    wrong.password = "wrong".into();
    let err = tern_agent::Client::connect(&wrong).err().unwrap();
    assert_eq!(err.kind(), Some(ErrorKind::Auth), "{err}");

    let mut pinned = server.options();
    pinned.fingerprint = Fingerprint::parse(&"ab".repeat(32));
    let err = tern_agent::Client::connect(&pinned).err().unwrap();
    assert!(matches!(err, ClientError::Untrusted(_)), "{err}");
    assert!(err.to_string().contains("does not match"));
}

#[test]
fn garbage_on_the_port_closes_that_connection_only() {
    use std::net::TcpStream;
    let server = TestServer::start();
    let client = server.client();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let inputs: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\n\r\n",
        &[0xff; 64],                                       // oversized lengths
        &[0, 0, 0, 4, 0, 0, 0, 0, 0xc1, 0xc1, 0xc1, 0xc1], // undecodable header
    ];
    for input in inputs {
        let mut s = TcpStream::connect(("127.0.0.1", server.plain_port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(input).unwrap();
        let mut buf = Vec::new();
        // The server answers with at most an error frame, then closes: the
        // read ends, and not by running into its timeout.
        let end = s.read_to_end(&mut buf);
        assert!(
            !end.as_ref().is_err_and(|e| matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )),
            "the server kept a connection open after {input:?}: {end:?}"
        );
    }
    // A truncated frame: the peer hangs up mid-frame.
    {
        let mut s = TcpStream::connect(("127.0.0.1", server.plain_port)).unwrap();
        s.write_all(&[0, 0, 1, 0]).unwrap();
    }
    let data = test_data(1 << 20, 9);
    backup(&client, "c", "after", &data);
    assert_eq!(restore(&server.client(), "c", "after"), data);
}

#[test]
fn kill_during_backup_leaves_committed_images_and_no_half_image() {
    let mut server = TestServer::start();
    let fp = server.fingerprint();
    let data = test_data(8 << 20, 4);
    {
        // The client would ride out a short outage; this one outlasts its grace period.
        let mut opts = server.options();
        opts.grace_period = std::time::Duration::from_secs(2);
        let client = tern_agent::Client::connect(&opts).unwrap();
        client
            .container_create("c", ContainerSettings::default())
            .unwrap();
        backup(&client, "c", "committed", &data);
        let mut w = client.create_image("c", "interrupted", b"").unwrap();
        w.write_all(&test_data(16 << 20, 44)).unwrap();
        server.kill();
        // The writer may fail now or at commit; either way it must fail.
        assert!(w.commit().is_err());
    }
    let fsck = server.ternd(&["fsck"]);
    assert!(
        fsck.status.success(),
        "fsck after kill: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    server.spawn();
    assert_eq!(
        server.fingerprint(),
        fp,
        "the certificate must survive restarts"
    );
    let client = server.client();
    let names: Vec<String> = client
        .image_list("c", "")
        .unwrap()
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(names, ["committed"]);
    assert_eq!(restore(&client, "c", "committed"), data);
    let gc = server.ternd(&["gc"]);
    assert!(gc.status.success());
    assert!(server.ternd(&["fsck"]).status.success());
}

#[test]
fn gc_while_a_backup_runs_keeps_the_backup_whole() {
    let server = TestServer::start();
    let client = server.client();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    // Garbage for GC to find: an image that shares chunks with the next one, then deleted.
    let data = test_data(12 << 20, 61);
    backup(&client, "c", "old", &data[..8 << 20]);
    client.image_remove("c", "old").unwrap();
    let mut w = client.create_image("c", "new", b"").unwrap();
    w.write_all(&data[..6 << 20]).unwrap();
    let gc = server.ternd(&["gc"]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    w.write_all(&data[6 << 20..]).unwrap();
    w.commit().unwrap();
    assert_eq!(restore(&client, "c", "new"), data);
    let fsck = server.ternd(&["fsck"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// Reads of any pattern return the image's bytes, and a random small read
/// fetches the chunk it needs, not the megabytes of read-ahead a stream gets.
#[test]
fn random_reads_return_the_right_bytes_and_fetch_only_what_they_need() {
    let server = TestServer::start();
    let client = server.client();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let data = test_data(24 << 20, 31);
    backup(&client, "c", "img", &data);
    let mut r = client.open_image("c", "img").unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    // Seeks, runs in order, small skips ahead, steps back.
    let mut off = 0u64;
    for _ in 0..400 {
        off = match next(4) {
            0 => next(data.len() as u64),
            1 => off,
            2 => off + next(300_000),
            _ => off.saturating_sub(next(100_000)),
        }
        .min(data.len() as u64 - 1);
        let mut buf = vec![0u8; 1 + next(400_000) as usize];
        let n = r.read_at(off, &mut buf).unwrap();
        assert!(n > 0);
        assert_eq!(&buf[..n], &data[off as usize..off as usize + n], "at {off}");
        off += n as u64;
    }

    // 50 random 4 KiB reads: at most a chunk (256 KiB at most) and the
    // recipe each, far from the 16 MiB a stream reads ahead.
    let mut r = client.open_image("c", "img").unwrap();
    let before = client.bytes_received();
    for _ in 0..50 {
        let off = next(data.len() as u64 - 4096);
        let mut buf = [0u8; 4096];
        let n = r.read_at(off, &mut buf).unwrap();
        assert_eq!(&buf[..n], &data[off as usize..off as usize + n]);
    }
    let fetched = client.bytes_received() - before;
    assert!(
        fetched < 50 * (256 << 10) + (1 << 20),
        "50 random 4 KiB reads fetched {fetched} bytes"
    );
    // A stream still reads the whole image back.
    let mut all = Vec::new();
    r.seek(SeekFrom::Start(0)).unwrap();
    r.read_to_end(&mut all).unwrap();
    assert!(all == data);
}
