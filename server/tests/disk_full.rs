//! A full filesystem fails the backup that hit it, and nothing else.

use std::io::Write;
use std::process::Command;

use tern_agent::ContainerSettings;
use tern_test_support::*;

/// Mounts a small tmpfs; unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(mib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallFs(dir))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_full_disk_fails_the_backup_clearly_and_keeps_earlier_images() {
    let Some(fs) = SmallFs::mount(48) else {
        return cannot_run("cannot mount a tmpfs here (needs root)");
    };
    let mut server = TestServer::start_with(tempfile::tempdir_in(fs.0.path()).unwrap(), &[]);
    let client = server.client();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let small = random(8 << 20, 1);
    let mut w = client.create_image("c", "fits", b"").unwrap();
    w.write_all(&small).unwrap();
    w.commit().unwrap();

    let mut w = client.create_image("c", "too-big", b"").unwrap();
    let big = random(64 << 20, 2);
    let result = w
        .write_all(&big)
        .map_err(|e| e.to_string())
        .and_then(|_| w.commit().map_err(|e| e.to_string()));
    let err = result.expect_err("a 64 MiB backup fit in 48 MiB");
    assert!(err.contains("no space"), "unclear error: {err}");
    eprintln!("backup on a full disk failed with: {err}");

    // Reads still work, over the same connection or a new one.
    let mut out = Vec::new();
    server
        .client()
        .open_image("c", "fits")
        .unwrap()
        .copy_to(&mut out)
        .unwrap();
    assert_eq!(out, small);
    let names: Vec<String> = client
        .image_list("c", "")
        .unwrap()
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(names, ["fits"]);

    // Checked through the running server: a stopped one would first need space
    // to recover its catalog, which is the operator's job to free.
    let fsck = server.ternd(&["fsck"]);
    assert!(
        fsck.status.success(),
        "{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    server.kill();
    drop(server);
    drop(fs);
}
