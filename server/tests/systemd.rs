//! Running under systemd: the unit in dist/ passes `systemd-analyze
//! verify`, and `ternd serve` tells systemd (Type=notify) when it is ready
//! and when it stops on SIGTERM.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tern_test_support::*;

/// `systemd-analyze verify` of the unit with ExecStart pointing at `ternd`:
/// its status and what it said.
fn verify(unit: &str, dir: &Path) -> (bool, String) {
    let path = dir.join("ternd.service");
    let ternd = ternd_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/bin/ternd", ternd.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), said)
}

#[test]
fn the_unit_verifies_and_a_damaged_one_does_not() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        return cannot_run("systemd-analyze is not installed (Debian: systemd)");
    }
    cargo_build(&["-p", "tern-server", "--bin", "ternd"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let unit = std::fs::read_to_string(root.join("dist/ternd.service")).unwrap();
    for key in [
        "Type=notify",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/ternd",
        "NoNewPrivileges=yes",
        "User=ternd",
    ] {
        assert!(unit.lines().any(|l| l == key), "the unit sets {key}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, said) = verify(&unit, dir.path());
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    // A misspelt key is named, and a missing program fails.
    let (_, said) = verify(&unit.replace("ProtectHome=", "ProtectHom="), dir.path());
    assert!(said.contains("Unknown key"), "{said}");
    let (ok, _) = verify(
        &unit.replace("/usr/bin/ternd", "/nonexistent/ternd"),
        dir.path(),
    );
    assert!(!ok);
}

#[test]
fn ternd_tells_systemd_it_is_ready_once_listening_and_stopping_on_sigterm() {
    cargo_build(&["-p", "tern-server", "--bin", "ternd"]);
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut ternd = Command::new(ternd_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("TERN_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(ternd.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("ternd ended before listening").unwrap();
        if let Some(a) = line.strip_prefix("listening for TLS on ") {
            break a.to_string();
        }
    };
    let mut buf = [0u8; 512];
    let n = systemd.recv(&mut buf).expect("no READY=1 from ternd");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS=listening for TLS on {address}")
    );
    // Ready means it answers.
    std::net::TcpStream::connect(&address).unwrap();

    let term = Command::new("kill")
        .args(["-TERM", &ternd.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let n = systemd.recv(&mut buf).expect("no STOPPING=1 from ternd");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = ternd.wait().unwrap();
    assert!(status.success(), "ternd exited {status:?} on SIGTERM");
}
