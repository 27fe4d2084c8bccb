//! The audit log, through real processes: a scripted admin session with
//! the `tern` CLI and `ternd gc`, read back with `tern audit`.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use serde_json::Value;
use tern_test_support::*;

fn ok(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every byte of the audit log, rotated files too.
fn audit_files(server: &TestServer) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(server.data()).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("audit.log") {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{:?}", e.file_name());
            all.extend(std::fs::read(e.path()).unwrap());
        }
    }
    all
}

#[test]
fn an_admin_session_leaves_one_line_per_act_and_no_password() {
    let server = TestServer::start();
    let t = |what: &str, args: &[&str], stdin: Option<&[u8]>| ok(what, server.tern(args, stdin));
    let (bob_first, bob_second) = ("bob-secret-7f3a9", "bob-secret-c1e42");
    t(
        "user add",
        &["user", "add", "bob"],
        Some(bob_first.as_bytes()),
    );
    t(
        "user passwd",
        &["user", "passwd", "bob"],
        Some(bob_second.as_bytes()),
    );
    t(
        "user set",
        &["user", "set", "bob", "--group", "default", "--group", "g2"],
        None,
    );
    t("container create", &["container", "create", "tmp"], None);
    t("container rm", &["container", "rm", "tmp"], None);
    t("container create", &["container", "create", "c"], None);
    t(
        "backup",
        &["backup", "--container", "c", "--name", "i", "-"],
        Some(b"data"),
    );
    t("rm", &["rm", "--container", "c", "--name", "i"], None);
    t(
        "shaping set",
        &["shaping", "set", "night", "--rate", "10MB/s"],
        None,
    );
    t("shaping rm", &["shaping", "rm", "night"], None);
    // A refused act is recorded too, and so is a failed login.
    let refused = server.tern(&["container", "rm", "missing"], None);
    assert!(!refused.status.success());
    let mut wrong = Command::new(tern_bin());
    wrong
        .args(["--server", &server.address()])
        .args(["--fingerprint", &server.fingerprint().to_string()])
        .args(["stats"])
        .env("TERN_PASSWORD", "wrong-password-51d")
        .env("TERN_CONFIG_DIR", server.data().join("client-config"));
    assert!(!wrong.output().unwrap().status.success());
    ok("ternd gc", server.ternd(&["gc"]));

    let out = t("tern audit", &["--json", "audit"], None);
    let acts: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = acts
        .iter()
        .filter(|a| a["act"] != "login")
        .map(|a| a["act"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "user_add",
            "user_passwd",
            "user_set",
            "container_remove",
            "image_remove",
            "shaping_set",
            "shaping_remove",
            "container_remove",
            "gc"
        ]
    );
    let find = |act: &str| acts.iter().find(|a| a["act"] == act).unwrap();
    let added = find("user_add");
    assert_eq!(
        (&added["user"], &added["by"], &added["ok"]),
        (&"bob".into(), &"admin".into(), &true.into())
    );
    assert!(added["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    let set = find("user_set");
    assert_eq!(set["groups"], serde_json::json!(["default", "g2"]));
    let removed = find("image_remove");
    assert_eq!(
        (&removed["container"], &removed["image"]),
        (&"c".into(), &"i".into())
    );
    let refused = acts
        .iter()
        .rfind(|a| a["act"] == "container_remove")
        .unwrap();
    assert_eq!(refused["ok"], false);
    assert!(
        refused["error"].as_str().unwrap().contains("missing"),
        "{refused}"
    );
    let gc = find("gc");
    assert_eq!(gc["by"], "local: ternd gc");
    assert!(gc["report"]["chunks_removed"].is_u64(), "{gc}");
    // Each CLI run logged in once, and the wrong password is there too.
    let logins: Vec<&Value> = acts.iter().filter(|a| a["act"] == "login").collect();
    let failed: Vec<&&Value> = logins.iter().filter(|a| a["ok"] == false).collect();
    assert_eq!(failed.len(), 1, "{logins:?}");
    assert_eq!(
        (&failed[0]["user"], &failed[0]["by"]),
        (&"admin".into(), &Value::Null)
    );
    assert!(logins.len() > 10, "{} logins", logins.len());

    let log = String::from_utf8(audit_files(&server)).unwrap();
    assert_eq!(log.lines().count(), acts.len());
    for secret in [PASSWORD, bob_first, bob_second, "wrong-password-51d"] {
        assert!(!log.contains(secret), "the audit log holds a password");
    }

    // Only admins read it; --since in the future shows nothing.
    let bob = Command::new(tern_bin())
        .args(["--server", &server.address()])
        .args(["--fingerprint", &server.fingerprint().to_string()])
        .args(["--user", "bob", "audit"])
        .env("TERN_PASSWORD", bob_second)
        .env("TERN_CONFIG_DIR", server.data().join("client-config"))
        .output()
        .unwrap();
    assert!(!bob.status.success());
    assert!(String::from_utf8_lossy(&bob.stderr).contains("only an admin may read the audit log"));
    let later = t(
        "tern audit --since",
        &["--json", "audit", "--since", "2100-01-01"],
        None,
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&later.stdout).unwrap(),
        serde_json::json!([])
    );
}
