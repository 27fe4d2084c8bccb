//! Seeding a replica from media: export from a real source ternd, import
//! into a real target, damage and interruptions on purpose.

mod replication_common;
mod seed_common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use replication_common::*;
use seed_common::*;
use seed_common::{json, ok};
use tern_core::wire::CopyState;
use tern_test_support::*;

/// `ternd seed export` on a stopped store's data directory.
fn export_stopped(data: &Path, args: &[&str]) -> Output {
    Command::new(ternd_bin())
        .args(["seed", "export", "--data"])
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_copy_after_seeding_sends_only_the_recipe_and_what_changed_since() {
    let pair = Pair::new();
    pair.pair().unwrap();
    let src = pair.source.client();
    let v1 = test_data(24 << 20, 191);
    backup(&src, "c", "v1", b"", &v1);
    let media = tempfile::tempdir().unwrap();
    let dev = media.path().join("usb");
    let pw = password_file(media.path(), "carry-me");
    // Through the running source's control socket.
    let out = pair.source.ternd(&[
        "seed",
        "export",
        "--containers",
        "c",
        "--to",
        dev.to_str().unwrap(),
        "--volume-size",
        "8MiB",
        "--password-file",
        pw.to_str().unwrap(),
        "--json",
    ]);
    let report = json(&out);
    assert!(out.status.success(), "{report}");
    let vols = volumes(&dev);
    assert!(
        vols.len() >= 2,
        "one 24 MiB image in 8 MiB volumes: {vols:?}"
    );
    for v in &vols {
        let bytes = std::fs::read(v).unwrap();
        assert!(
            bytes.len() as u64 <= 8 << 20,
            "{v:?} is {} bytes",
            bytes.len()
        );
        // No plaintext: neither data nor chunk ids.
        let probe = &v1[1 << 20..(1 << 20) + 32];
        assert!(
            !bytes.windows(32).any(|w| w == probe),
            "{v:?} holds plaintext"
        );
    }
    let manifest = std::fs::read(dev.join("manifest.tern")).unwrap();
    assert!(!String::from_utf8_lossy(&manifest).contains("images"));

    // A wrong password loads nothing and says so.
    let wrong = password_file(media.path(), "guess");
    let out = pair.target.ternd(&[
        "seed",
        "import",
        "--from",
        dev.to_str().unwrap(),
        "--password-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong password"),
        "{out:?}"
    );
    let status = json(&pair.target.ternd(&["seed", "status", "--json"]));
    assert_eq!(status.as_array().unwrap().len(), 0, "{status}");

    let out = pair.target.ternd(&[
        "seed",
        "import",
        "--from",
        dev.to_str().unwrap(),
        "--password-file",
        pw.to_str().unwrap(),
        "--json",
    ]);
    let imported = json(&out);
    assert!(out.status.success(), "{imported}");
    assert_eq!(imported["loaded"].as_array().unwrap().len(), vols.len());
    assert_eq!(imported["chunks_loaded"], report["chunks"], "{imported}");

    // GC keeps the pinned chunks although no image refers to them yet.
    ok(&pair.target.ternd(&["gc"]));
    let status = json(&pair.target.ternd(&["seed", "status", "--json"]));
    assert_eq!(status[0]["chunks"], report["chunks"], "{status}");
    assert_eq!(status[0]["referenced"], 0, "{status}");
    // Not in sync yet: cleanup is refused.
    let out = pair.target.ternd(&["seed", "cleanup"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not in sync"),
        "{out:?}"
    );

    // v1 crosses as its recipe alone; v2, written after the export, sends
    // only what changed.
    let mut v2 = v1.clone();
    v2[12 << 20..(12 << 20) + 65536].copy_from_slice(&test_data(65536, 192));
    backup(&src, "c", "v2", b"", &v2);
    let first = wait_final(&src, src.copy_start("c", "v1", &to_dr()).unwrap());
    assert_eq!(first.state, CopyState::Done, "{first:?}");
    assert_eq!((first.sent_chunks, first.sent_bytes), (0, 0), "{first:?}");
    let second = wait_final(&src, src.copy_start("c", "v2", &to_dr()).unwrap());
    assert_eq!(second.state, CopyState::Done, "{second:?}");
    assert!(second.sent_bytes < 1 << 20, "{second:?}");
    assert!(restore(&pair.target.client(), "dr", "v2") == v2);

    let status = json(&pair.target.ternd(&["seed", "status", "--json"]));
    assert!(status[0]["referenced"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(status[0]["images_awaited"].as_array().unwrap().len(), 0);
    ok(&pair.target.ternd(&["seed", "cleanup"]));
    assert_eq!(
        json(&pair.target.ternd(&["seed", "status", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_damaged_volume_is_refused_a_missing_one_reported_and_the_rest_loads_once() {
    let source = TestServer::start();
    let src = source.client();
    src.container_create("c", Default::default()).unwrap();
    backup(&src, "c", "a", b"", &test_data(64 << 20, 7));
    let media = tempfile::tempdir().unwrap();
    let dev = media.path().join("dev");
    let out = source.ternd(&[
        "seed",
        "export",
        "--containers",
        "c",
        "--to",
        dev.to_str().unwrap(),
        "--volume-size",
        "8MiB",
        "--no-encrypt",
        "--json",
    ]);
    let report = json(&out);
    assert!(out.status.success(), "{report}");
    let vols = volumes(&dev);
    assert!(vols.len() >= 4, "{vols:?}");

    let target = TestServer::start();
    // One bit flipped in volume 2; volume 3 taken away.
    let mut damaged = std::fs::read(&vols[1]).unwrap();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x10;
    let original = std::fs::read(&vols[1]).unwrap();
    std::fs::write(&vols[1], &damaged).unwrap();
    let aside = media.path().join("aside");
    std::fs::rename(&vols[2], &aside).unwrap();
    let dev_s = dev.to_str().unwrap();
    let out = target.ternd(&[
        "seed",
        "import",
        "--unencrypted",
        "--from",
        dev_s,
        "--group",
        "dr",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r = json(&out);
    assert_eq!(r["refused"][0]["file"], "vol-000002.tern", "{r}");
    assert_eq!(r["missing"], serde_json::json!([3]), "{r}");
    let loaded = r["loaded"].as_array().unwrap().len();
    assert_eq!(loaded, vols.len() - 2, "{r}");

    // Repaired and found: only those two load now, and no chunk twice.
    std::fs::write(&vols[1], &original).unwrap();
    std::fs::rename(&aside, &vols[2]).unwrap();
    let out = target.ternd(&[
        "seed",
        "import",
        "--unencrypted",
        "--from",
        dev_s,
        "--group",
        "dr",
        "--json",
    ]);
    let again = json(&out);
    assert!(out.status.success(), "{again}");
    assert_eq!(again["loaded"], serde_json::json!([2, 3]), "{again}");
    assert_eq!(again["already"].as_array().unwrap().len(), loaded);
    let total = r["chunks_loaded"].as_u64().unwrap() + again["chunks_loaded"].as_u64().unwrap();
    assert_eq!(total, report["chunks"].as_u64().unwrap(), "{r}\n{again}");
    let fsck = target.ternd(&["fsck"]);
    assert!(fsck.status.success(), "{fsck:?}");
}

/// Runs `ternd seed export` on a stopped store, killing it with SIGKILL
/// once `kill_when` says so.
fn export_killed(data: &Path, args: &[&str], kill_when: impl Fn() -> bool) -> bool {
    let mut child = Command::new(ternd_bin())
        .args(["seed", "export", "--data"])
        .arg(data)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "export failed before the kill: {status}");
            return false;
        }
        if kill_when() {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "export hung");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn an_export_killed_twice_continues_and_writes_the_same_volumes() {
    let mut source = TestServer::start();
    let src = source.client();
    src.container_create("c", Default::default()).unwrap();
    backup(&src, "c", "a", b"", &incompressible(200 << 20, 5));
    drop(src);
    source.kill();
    let media = tempfile::tempdir().unwrap();
    let pw = password_file(media.path(), "pw");
    let id = "00112233445566778899aabbccddeeff";
    let run = |dev: &Path| {
        vec![
            "--containers".to_string(),
            "c".into(),
            "--to".into(),
            dev.to_str().unwrap().into(),
            "--volume-size".into(),
            "100MiB".into(),
            "--password-file".into(),
            pw.to_str().unwrap().into(),
            "--seed-id".into(),
            id.into(),
        ]
    };
    let whole = media.path().join("whole");
    let args = run(&whole);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&export_stopped(source.data(), &args));

    let cut = media.path().join("cut");
    let args = run(&cut);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let size =
        |n: u32| std::fs::metadata(cut.join(format!("vol-{n:06}.tern"))).map_or(0, |m| m.len());
    // Once inside volume 1 past its first saved stretch (64 MiB), once
    // early in volume 2.
    assert!(
        export_killed(source.data(), &args, || size(1) > 80 << 20),
        "not interrupted"
    );
    assert!(
        export_killed(source.data(), &args, || size(2) > 1 << 20),
        "not interrupted"
    );
    ok(&export_stopped(source.data(), &args));
    let (a, b) = (volumes(&whole), volumes(&cut));
    assert_eq!(a.len(), b.len());
    assert!(a.len() >= 2);
    for (x, y) in a.iter().zip(&b) {
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{y:?} differs"
        );
    }
    // And it loads.
    let target = TestServer::start();
    let out = target.ternd(&[
        "seed",
        "import",
        "--from",
        cut.to_str().unwrap(),
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    ok(&out);
}

/// A stopped source with one container `c` holding `len` bytes.
fn stopped_source(len: usize, seed: u64) -> TestServer {
    let mut source = TestServer::start();
    let src = source.client();
    src.container_create("c", Default::default()).unwrap();
    backup(&src, "c", "a", b"", &test_data(len, seed));
    drop(src);
    source.kill();
    source
}

#[test]
fn a_full_device_stops_the_export_cleanly_and_it_continues_on_the_next() {
    let source = stopped_source(64 << 20, 11);
    let media = tempfile::tempdir().unwrap();
    let (usb, first, second) = (
        media.path().join("usb"),
        media.path().join("first"),
        media.path().join("second"),
    );
    for d in [&usb, &first] {
        std::fs::create_dir(d).unwrap();
    }
    // A real 20 MiB filesystem: a tmpfs in a mount namespace of its own.
    // What the export wrote there is copied out before the namespace ends.
    let script = format!(
        "mount -t tmpfs -o size=20m tmpfs {usb} || exit 97; \
         {ternd} seed export --data {data} --containers c --to {usb} --volume-size 8MiB \
         --no-encrypt >{out}/stdout 2>{out}/stderr; rc=$?; cp -a {usb}/. {first}/; exit $rc",
        usb = usb.display(),
        ternd = ternd_bin().display(),
        data = source.data().display(),
        out = media.path().display(),
        first = first.display(),
    );
    let status = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .status()
        .unwrap();
    if status.code() == Some(97)
        || status.code() == Some(1) && !first.join("manifest.tern").exists()
    {
        cannot_run("mounting a small tmpfs in a mount namespace (unshare -rm) is not allowed here");
        return;
    }
    let stderr = std::fs::read_to_string(media.path().join("stderr")).unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("is full") && stderr.contains("--continue"),
        "{stderr}"
    );
    let on_first = volumes(&first).len();
    assert!(on_first >= 1, "{stderr}");
    assert!(
        stderr.contains(&format!("volume {} is next", on_first + 1)),
        "{stderr}"
    );

    let out = export_stopped(
        source.data(),
        &["--continue", "--to", second.to_str().unwrap(), "--json"],
    );
    let report = json(&out);
    assert!(out.status.success(), "{report}");
    assert_eq!(report["written"][0], on_first + 1, "{report}");

    // Each device imports by itself; together they make the whole seed.
    let target = TestServer::start();
    let a = json(&target.ternd(&[
        "seed",
        "import",
        "--unencrypted",
        "--from",
        first.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(a["manifest_complete"], false, "{a}");
    assert_eq!(a["loaded"].as_array().unwrap().len(), on_first, "{a}");
    let out = target.ternd(&[
        "seed",
        "import",
        "--unencrypted",
        "--from",
        second.to_str().unwrap(),
        "--json",
    ]);
    let b = json(&out);
    assert!(out.status.success(), "{b}");
    assert_eq!(b["already"].as_array().unwrap().len(), on_first, "{b}");
    assert_eq!(b["missing"].as_array().unwrap().len(), 0, "{b}");
    let loaded = a["chunks_loaded"].as_u64().unwrap() + b["chunks_loaded"].as_u64().unwrap();
    assert_eq!(loaded, report["chunks"].as_u64().unwrap());
}

#[test]
fn an_import_killed_midway_continues_without_loading_everything_again() {
    let source = stopped_source(64 << 20, 13);
    let media = tempfile::tempdir().unwrap();
    let dev = media.path().join("dev");
    let out = export_stopped(
        source.data(),
        &[
            "--containers",
            "c",
            "--to",
            dev.to_str().unwrap(),
            "--volume-size",
            "8MiB",
            "--no-encrypt",
            "--json",
        ],
    );
    let report = json(&out);
    let chunks = report["chunks"].as_u64().unwrap();
    let mut target = TestServer::start();
    target.kill();
    let mut child = Command::new(ternd_bin())
        .args(["seed", "import", "--unencrypted", "--data"])
        .arg(target.data())
        .args(["--from", dev.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    // Killed once a good part is stored, well before the end.
    while target.pack_bytes() < 16 << 20 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before the kill"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "import hung");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = target.ternd(&[
        "seed",
        "import",
        "--unencrypted",
        "--from",
        dev.to_str().unwrap(),
        "--json",
    ]);
    let again = json(&out);
    assert!(out.status.success(), "{again}");
    assert!(
        again["chunks_loaded"].as_u64().unwrap() < chunks,
        "the second run loaded everything again: {again}"
    );
    let status = json(&target.ternd(&["seed", "status", "--json"]));
    assert_eq!(status[0]["chunks"].as_u64().unwrap(), chunks, "{status}");
    let fsck = target.ternd(&["fsck"]);
    assert!(fsck.status.success(), "{fsck:?}");
}

#[test]
fn gc_keeps_pinned_chunks_until_cleanup_or_expiry_then_frees_them() {
    let source = stopped_source(16 << 20, 17);
    let media = tempfile::tempdir().unwrap();
    let dev = media.path().join("dev");
    let out = export_stopped(
        source.data(),
        &[
            "--containers",
            "c",
            "--to",
            dev.to_str().unwrap(),
            "--no-encrypt",
            "--json",
        ],
    );
    let chunks = json(&out)["chunks"].as_u64().unwrap();
    assert!(chunks > 100, "{chunks}");
    let gc = |t: &TestServer| json(&t.ternd(&["gc", "--json"]));
    let import = |t: &TestServer, extra: &[&str]| {
        let mut args = vec![
            "seed",
            "import",
            "--unencrypted",
            "--from",
            dev.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok(&t.ternd(&args));
    };

    // Pinned for the default 30 days: two GCs keep every chunk, whole.
    let kept = TestServer::start();
    import(&kept, &[]);
    for _ in 0..2 {
        let r = gc(&kept);
        assert_eq!(r["chunks_removed"], 0, "{r}");
        assert_eq!(r["live_chunks"], chunks, "{r}");
    }
    let fsck = kept.ternd(&["fsck"]);
    assert!(fsck.status.success(), "{fsck:?}");
    // The source's image never arrived, so cleanup wants --force; the next
    // GC then frees every chunk.
    assert!(!kept.ternd(&["seed", "cleanup"]).status.success());
    ok(&kept.ternd(&["seed", "cleanup", "--force"]));
    let r = gc(&kept);
    assert_eq!(r["chunks_removed"], chunks, "{r}");
    assert!(
        r["bytes_after"].as_u64().unwrap() < 1 << 20,
        "the seed's packs stayed: {r}"
    );

    // Pinned for 0 days: expired by the first GC, which frees them.
    let expired = TestServer::start();
    import(&expired, &["--pin-days", "0"]);
    let r = gc(&expired);
    assert_eq!(r["chunks_removed"], chunks, "{r}");
    // The seed stays listed (what came, from where), with no pins left.
    let status = json(&expired.ternd(&["seed", "status", "--json"]));
    assert_eq!(status[0]["chunks"], 0, "{status}");
}

#[test]
fn an_export_through_a_running_server_stops_with_its_command_and_continues() {
    let source = TestServer::start();
    let src = source.client();
    src.container_create("c", Default::default()).unwrap();
    backup(&src, "c", "a", b"", &incompressible(160 << 20, 21));
    let media = tempfile::tempdir().unwrap();
    let dev = media.path().join("dev");
    let dev_s = dev.to_str().unwrap();
    let args = [
        "--containers",
        "c",
        "--to",
        dev_s,
        "--volume-size",
        "100MiB",
        "--no-encrypt",
    ];
    let size = || std::fs::metadata(dev.join("vol-000001.tern")).map_or(0, |m| m.len());
    // The command talks to the running server's control socket; killing it
    // (as Ctrl-C would) leaves the server's job without its asker.
    assert!(
        export_killed(source.data(), &args, || size() > 70 << 20),
        "not interrupted"
    );
    std::thread::sleep(Duration::from_secs(1));
    let stopped_at = size();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        size(),
        stopped_at,
        "the server's job went on without its asker"
    );
    assert!(stopped_at < 100 << 20, "{stopped_at}");

    let mut again: Vec<&str> = vec!["seed", "export"];
    again.extend_from_slice(&args);
    again.push("--json");
    let out = source.ternd(&again);
    let report = json(&out);
    assert!(out.status.success(), "{report}");
    assert_eq!(report["resumed"], true, "{report}");
    let target = TestServer::start();
    let out = target.ternd(&["seed", "import", "--unencrypted", "--from", dev_s, "--json"]);
    let loaded = json(&out);
    assert!(out.status.success(), "{loaded}");
    assert_eq!(loaded["chunks_loaded"], report["chunks"], "{loaded}");
}
