//! What ternd keeps is private: the data directory 0700, the catalog (password
//! hashes), keys and packs 0600, whatever the umask; and ternd refuses a data
//! directory that other users can write.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tern_agent::ContainerSettings;
use tern_test_support::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_data_directory_and_its_secrets_are_private() {
    let server = TestServer::start();
    let client = server.client();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let mut w = client.create_image("c", "img", b"").unwrap();
    w.write_all(&test_data(2 << 20, 3)).unwrap();
    w.commit().unwrap();
    let data = server.data();
    assert_eq!(mode(data), 0o700, "data directory");
    assert_eq!(mode(&data.join("catalog.redb")), 0o600, "catalog");
    assert_eq!(mode(&data.join("tls/server.key")), 0o600, "server key");
    let packs: Vec<_> = std::fs::read_dir(data.join("groups/default/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!packs.is_empty());
    for p in packs {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
}

#[test]
fn a_data_directory_others_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = std::process::Command::new(ternd_bin());
    cmd.args(["serve", "--data"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("TERN_PASSWORD", PASSWORD);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run_with_stdin(cmd, None));
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("ternd served from a world-writable data directory");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writable by other users"), "{err}");
    assert!(
        !dir.path().join("catalog.redb").exists(),
        "it wrote into the directory"
    );
}
