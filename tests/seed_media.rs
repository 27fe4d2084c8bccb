//! Seed media are outside input: a volume that is a device, a FIFO or a
//! symlink to one, a volume longer than its manifest says, a manifest that
//! asks for absurd key derivation work, a seed without encryption imported
//! without saying so, and an import whose asker is gone.

mod seed_common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use seed_common::*;
use seed_common::{json, ok};
use tern_test_support::*;

/// A source holding `len` bytes in container `c`, exported to a new device
/// in volumes of `volume_size`; returns the device's directory.
fn exported(media: &Path, len: usize, volume_size: &str, encrypt: Option<&Path>) -> PathBuf {
    let source = TestServer::start();
    let src = source.client();
    src.container_create("c", Default::default()).unwrap();
    let mut w = src.create_image("c", "a", b"").unwrap();
    std::io::Write::write_all(&mut w, &test_data(len, 5)).unwrap();
    w.commit().unwrap();
    let dev = media.join("dev");
    let dev_s = dev.to_str().unwrap();
    let mut args = vec!["seed", "export", "--containers", "c", "--to", dev_s];
    args.extend(["--volume-size", volume_size, "--json"]);
    match encrypt {
        Some(pw) => args.extend(["--password-file", pw.to_str().unwrap()]),
        None => args.push("--no-encrypt"),
    }
    ok(&source.ternd(&args));
    dev
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn volumes_that_are_devices_fifos_or_symlinks_to_them_are_refused_within_seconds() {
    let media = tempfile::tempdir().unwrap();
    let dev = exported(media.path(), 96 << 20, "8MiB", None);
    // Chunks in the clear: for the owner's eyes only.
    assert_eq!(mode(&dev), 0o700, "the device's directory");
    let vols = volumes(&dev);
    assert!(vols.len() >= 5, "{vols:?}");
    for v in vols.iter().chain([&dev.join("manifest.tern")]) {
        assert_eq!(mode(v), 0o600, "{v:?}");
    }

    // Volume 1 a symlink to /dev/zero, 2 a FIFO, 3 a symlink to a FIFO
    // elsewhere, 4 longer than the manifest says.
    std::fs::remove_file(&vols[0]).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &vols[0]).unwrap();
    let fifo = media.path().join("fifo");
    for p in [&vols[1], &fifo] {
        std::fs::remove_file(p).ok();
        let made = Command::new("mkfifo").arg(p).status().unwrap();
        assert!(made.success());
    }
    std::fs::remove_file(&vols[2]).unwrap();
    std::os::unix::fs::symlink(&fifo, &vols[2]).unwrap();
    let mut longer = std::fs::OpenOptions::new()
        .append(true)
        .open(&vols[3])
        .unwrap();
    std::io::Write::write_all(&mut longer, &[0u8; 4096]).unwrap();

    let target = TestServer::start();
    let started = Instant::now();
    let out = target.ternd(&[
        "seed",
        "import",
        "--unencrypted",
        "--from",
        dev.to_str().unwrap(),
        "--json",
    ]);
    let took = started.elapsed();
    let report = json(&out);
    eprintln!("import of hostile media: {took:?}: {report}");
    assert!(!out.status.success(), "refusals must fail the command");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let refused = report["refused"].as_array().unwrap();
    let why = |file: &str| {
        refused
            .iter()
            .find(|r| r["file"] == file)
            .map(|r| r["why"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{file} not refused: {report}"))
    };
    assert!(why("vol-000001.tern").contains("a device"), "{report}");
    assert!(why("vol-000002.tern").contains("a FIFO"), "{report}");
    assert!(why("vol-000003.tern").contains("a FIFO"), "{report}");
    assert!(why("vol-000004.tern").contains("more than"), "{report}");
    assert_eq!(refused.len(), 4, "{report}");
    let loaded = report["loaded"].as_array().unwrap().len();
    assert_eq!(
        loaded,
        vols.len() - 4,
        "the good volumes still load: {report}"
    );
}

#[test]
fn a_plain_seed_needs_unencrypted_and_a_manifest_asking_4_gib_of_argon2_is_refused() {
    let media = tempfile::tempdir().unwrap();
    let plain = exported(media.path(), 1 << 20, "64MiB", None);
    let target = TestServer::start();
    let out = target.ternd(&["seed", "import", "--from", plain.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not encrypted") && err.contains("--unencrypted"),
        "{err}"
    );

    let secret = tempfile::tempdir().unwrap();
    let pw = password_file(secret.path(), "seed-secret");
    let dev = exported(secret.path(), 1 << 20, "64MiB", Some(&pw));
    // The key block follows the 32-byte header: m_kib first, little-endian.
    let manifest = dev.join("manifest.tern");
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[32..36].copy_from_slice(&(4u32 << 20).to_le_bytes());
    std::fs::write(&manifest, &bytes).unwrap();
    let started = Instant::now();
    let out = target.ternd(&[
        "seed",
        "import",
        "--from",
        dev.to_str().unwrap(),
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("asks for 4096 MiB"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn an_import_stops_within_a_second_when_its_asker_is_gone() {
    let media = tempfile::tempdir().unwrap();
    let dev = exported(media.path(), 192 << 20, "1GiB", None);
    let target = TestServer::start();
    let before = target.pack_bytes();
    // The command talks to the running server's control socket; killed (as
    // Ctrl-C would), it leaves the server's job without its asker.
    let mut child = Command::new(ternd_bin())
        .args(["seed", "import", "--unencrypted", "--data"])
        .arg(target.data())
        .args(["--from", dev.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while target.pack_bytes() < before + (8 << 20) {
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        assert!(start.elapsed() < Duration::from_secs(120), "import hung");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let stopped_at = target.pack_bytes();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        target.pack_bytes(),
        stopped_at,
        "the server's import went on without its asker"
    );
    assert!(stopped_at < before + (80 << 20), "it was all but done");
}
