//! A full disk is recoverable: ternd on a small tmpfs is filled by backups
//! (the one that does not fit is refused with a clear message and leaves no
//! trace, earlier ones stay, and a reserve stays free), then by another
//! program to the last byte; it still starts and serves reads, and once images
//! are deleted, gc frees space even with almost nothing free (dead packs
//! first), and backups work again.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use tern_agent::ContainerSettings;
use tern_core::wire::ErrorKind;
use tern_test_support::*;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            cannot_run("mounting a tmpfs (a small filesystem to fill) needs root");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().nth(1).unwrap().trim().parse().unwrap()
}

/// Incompressible, unique per seed: every image takes its full size.
fn unique(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    let mut xof = h.finalize_xof();
    out.resize(len, 0);
    xof.fill(&mut out);
    out
}

/// Fills the filesystem with a file until the disk refuses, then gives
/// `leave` bytes back.
fn fill(path: &PathBuf, leave: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0x55u8; 1 << 16];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
}

fn read_image(server: &TestServer, name: &str) -> Vec<u8> {
    let mut back = Vec::new();
    server
        .client()
        .open_image("c", name)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    back
}

const IMAGE: usize = 6 << 20;

#[test]
fn a_full_disk_can_be_read_emptied_and_written_again() {
    let Some(fs) = Tmpfs::mount("64m") else {
        return;
    };
    let mut server = TestServer::start_with(tempfile::tempdir_in(fs.path()).unwrap(), &[]);
    let client = server.client();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();

    // Backups until the store refuses one: with a clear message, and the
    // reserve still free.
    let mut stored = 0u64;
    let refusal = loop {
        let mut w = client
            .create_image("c", &format!("i{stored}"), b"")
            .unwrap();
        // The refusal keeps its kind, through the io::Write adapter too.
        let written = w.write_all(&unique(IMAGE, stored)).map_err(|e| {
            let kind = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<tern_agent::ClientError>())
                .and_then(|c| c.kind());
            (e.to_string(), kind)
        });
        match written.and_then(|()| w.commit().map_err(|e| (e.to_string(), e.kind()))) {
            Ok(_) => stored += 1,
            Err((e, kind)) => {
                assert_eq!(kind, Some(ErrorKind::NoSpace), "{e}");
                break e;
            }
        }
        assert!(
            stored < 20,
            "a 64 MiB filesystem took {stored} images of 6 MiB"
        );
    };
    // The refused image is not there; the others are.
    let names = client.image_list("c", "").unwrap();
    assert_eq!(names.len() as u64, stored, "{names:?}");
    drop(client);
    assert!(stored >= 7, "only {stored} images fit");
    assert!(refusal.contains("store is full"), "{refusal}");
    assert!(
        free_bytes(fs.path()) > 1 << 20,
        "backups took the reserve: {} bytes free",
        free_bytes(fs.path())
    );

    // Another program takes the rest, to the last byte; ternd dies.
    let junk = fs.path().join("junk");
    fill(&junk, 0);
    server.kill();
    // It starts anyway (read-only if it must) and serves reads.
    server.spawn();
    assert!(read_image(&server, "i0") == unique(IMAGE, 0));
    // Deleting may need a byte the other program took: if so, it says why.
    let kept_i0 = match server.client().image_remove("c", "i0") {
        Ok(()) => false,
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("read-only") || e.contains("no space"), "{e}");
            true
        }
    };

    // The operator frees all but 512 KiB outside ternd and restarts it.
    std::fs::remove_file(&junk).unwrap();
    server.kill();
    server.spawn();
    fill(&junk, 512 << 10);
    // Images 1 and 2 share no pack with anything else that stays, but the
    // packs around them are partly live: gc must delete the dead ones before
    // it copies anything, or it has no room.
    let client = server.client();
    for name in ["i1", "i2"] {
        client.image_remove("c", name).unwrap();
    }
    drop(client);
    let free_before = free_bytes(fs.path());
    let out = server.ternd(&["gc", "--json"]);
    assert!(out.status.success(), "gc failed: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["packs_deleted"].as_u64().unwrap() >= 1, "{report}");
    let free_after = free_bytes(fs.path());
    assert!(
        free_after >= free_before + (2 * IMAGE as u64) * 9 / 10,
        "gc freed {free_before} -> {free_after}: {report}"
    );

    // Backups work again; what stayed reads back the same.
    std::fs::remove_file(&junk).unwrap();
    let client = server.client();
    let mut w = client.create_image("c", "after", b"").unwrap();
    w.write_all(&unique(IMAGE, 99)).unwrap();
    w.commit().unwrap();
    drop(client);
    for i in (0..stored).filter(|i| ![1, 2].contains(i) && (*i != 0 || kept_i0)) {
        assert!(read_image(&server, &format!("i{i}")) == unique(IMAGE, i));
    }

    // Image 4 shares its pack with image 5: moving image 5's chunks out needs
    // more than the 512 KiB left, so gc stops there, cleanly, and says why.
    server.client().image_remove("c", "i4").unwrap();
    fill(&junk, 512 << 10);
    let out = server.ternd(&["gc", "--json"]);
    assert!(out.status.success(), "gc failed: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let why = report["stopped"].as_str().unwrap_or_default();
    assert!(why.contains("short of space"), "{report}");
    std::fs::remove_file(&junk).unwrap();
    let out = server.ternd(&["gc", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["stopped"].is_null(), "{report}");
    assert!(report["packs_rewritten"].as_u64().unwrap() >= 1, "{report}");
    assert!(read_image(&server, "i5") == unique(IMAGE, 5));

    server.kill();
    let fsck = server.ternd(&["fsck"]);
    assert!(fsck.status.success(), "{}", text(&fsck));
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
