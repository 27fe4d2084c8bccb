//! Retention locks through real processes: the `tern` CLI as an admin, a
//! plain user's client, `ternd gc` and `ternd fsck`, and ternd restarted
//! with its clock moved (`TERND_CLOCK_SKEW_SECS`).

use std::process::Output;

use serde_json::Value;
use std::io::Write;

use tern_agent::{Client, ClientError};
use tern_core::wire::ErrorKind;
use tern_test_support::*;

const DAY: u64 = 86_400;

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The CLI's error, after asserting it failed.
fn refused(what: &str, out: Output) -> String {
    assert!(!out.status.success(), "{what} was allowed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn is_locked(e: ClientError) -> String {
    match e {
        ClientError::Server {
            kind: ErrorKind::Locked,
            message,
        } => message,
        other => panic!("expected Locked, got {other:?}"),
    }
}

/// A server with container `c` holding image `i` (4 MiB), written by user
/// `bob` (not an admin); `bob`'s client.
fn server_with_bob_image() -> (TestServer, Client, Vec<u8>) {
    let server = TestServer::start();
    let t = |what: &str, args: &[&str], stdin: Option<&[u8]>| ok(what, server.tern(args, stdin));
    t("user add", &["user", "add", "bob"], Some(b"bob-password-1"));
    t("container create", &["container", "create", "c"], None);
    let mut o = server.options();
    o.user = "bob".into();
    o.password = "bob-password-1".into();
    let bob = Client::connect(&o).unwrap();
    let data = test_data(4 << 20, 7);
    let mut w = bob.create_image("c", "i", b"props").unwrap();
    w.write_all(&data).unwrap();
    w.commit().unwrap();
    (server, bob, data)
}

/// `tern container lock c ARGS`.
fn lock(server: &TestServer, args: &str) -> Output {
    let mut all = vec!["container", "lock", "c"];
    all.extend(args.split_whitespace());
    server.tern(&all, None)
}

fn image_json(server: &TestServer) -> Value {
    let out = ok(
        "ls",
        server.tern(&["--json", "ls", "--container", "c"], None),
    );
    let list: Value = serde_json::from_str(&out).unwrap();
    list[0].clone()
}

fn restore(client: &Client) -> Vec<u8> {
    let mut r = client.open_image("c", "i").unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut out).unwrap();
    out
}

#[test]
fn a_compliance_lock_keeps_an_image_from_everyone_and_only_grows() {
    let (server, bob, data) = server_with_bob_image();
    let t = |args: &[&str]| server.tern(args, None);
    ok("lock", lock(&server, "--days 30 --mode compliance"));
    let img = image_json(&server);
    let created = img["created"].as_u64().unwrap();
    assert_eq!(
        img["lock_until"].as_u64(),
        Some(created + 30 * DAY),
        "{img}"
    );

    // The user who wrote it, and an admin with or without --bypass-lock.
    let why = is_locked(bob.image_remove("c", "i").unwrap_err());
    assert!(why.contains("retention lock"), "{why}");
    is_locked(bob.image_set_props("c", "i", b"other").unwrap_err());
    let why = refused("admin rm", t(&["rm", "--container", "c", "--name", "i"]));
    assert!(why.contains("retention lock"), "{why}");
    let why = refused(
        "admin rm --bypass-lock",
        t(&["rm", "--container", "c", "--name", "i", "--bypass-lock"]),
    );
    assert!(why.contains("compliance"), "{why}");
    // Nobody shortens, downgrades or removes it, or removes the container.
    for (what, args) in [
        ("shorter", "--days 29 --mode compliance"),
        ("governance", "--days 60 --mode governance"),
        ("off", "--off"),
    ] {
        let why = refused(what, lock(&server, args));
        assert!(why.contains("compliance retention lock"), "{what}: {why}");
    }
    refused("container rm", t(&["container", "rm", "c"]));
    // Longer is allowed, and shows.
    ok("longer", lock(&server, "--days 90 --mode compliance"));
    let img = image_json(&server);
    assert_eq!(
        img["lock_until"].as_u64(),
        Some(created + 90 * DAY),
        "{img}"
    );
    let containers: Value =
        serde_json::from_str(&ok("container ls", t(&["--json", "container", "ls"]))).unwrap();
    assert_eq!(containers[0]["lock"]["days"], 90, "{containers}");
    // A commit into the locked container tells its lock at once.
    let mut w = bob.create_image("c", "j", b"").unwrap();
    w.write_all(&data[..1 << 20]).unwrap();
    let done = w.commit().unwrap();
    assert_eq!(done.info.lock_until, done.info.created + 90 * DAY);

    // GC after the attempts frees nothing of it; fsck finds it whole.
    ok("gc", server.ternd(&["gc"]));
    assert_eq!(restore(&bob), data);
    let admin = server.client();
    let (list, _) = admin.image_list_all("c", "").unwrap();
    assert_eq!(list[0].props, b"props");
    ok("fsck", server.ternd(&["fsck"]));
}

#[test]
fn a_governance_lock_yields_to_an_admin_who_bypasses_it_and_the_audit_log_says_so() {
    let (server, bob, _) = server_with_bob_image();
    let t = |args: &[&str]| server.tern(args, None);
    ok("lock", lock(&server, "--days 7 --mode governance"));
    is_locked(bob.image_remove("c", "i").unwrap_err());
    // Only an admin may bypass it or change it.
    let e = bob.image_remove_bypassing_lock("c", "i").unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Server {
                kind: ErrorKind::Denied,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(bob.container_lock("c", None).is_err());
    refused("admin rm", t(&["rm", "--container", "c", "--name", "i"]));
    ok(
        "admin rm --bypass-lock",
        t(&["rm", "--container", "c", "--name", "i", "--bypass-lock"]),
    );
    let audit = ok("audit", t(&["audit", "--json"]));
    let acts: Vec<Value> = serde_json::from_str(&audit).unwrap();
    let bypass = acts
        .iter()
        .find(|v| v["act"] == "image_remove" && v["bypass_lock"] == true && v["by"] == "admin");
    let bypass = bypass.unwrap_or_else(|| panic!("no bypass in the audit log:\n{audit}"));
    assert_eq!(bypass["ok"], true, "{bypass}");
    assert_eq!(bypass["image"], "i", "{bypass}");
    // A governance lock can be removed by an admin.
    ok("off", lock(&server, "--off"));
    ok("container rm", t(&["container", "rm", "c"]));
}

/// ternd run 20 days ahead, then with its clock set back: the time it has
/// seen stays, so a new image is not dated earlier and the lock of the
/// first still holds; 31 days later (by the skewed clock) it has ended.
#[test]
fn setting_the_clock_back_neither_unlocks_nor_dates_back() {
    let mut server = TestServer::start();
    let t = |s: &TestServer, args: &[&str], stdin: Option<&[u8]>| s.tern(args, stdin);
    ok("create", t(&server, &["container", "create", "c"], None));
    ok("lock", lock(&server, "--days 30 --mode compliance"));
    let restart = |s: &mut TestServer, skew_days: i64| {
        s.kill();
        s.env = vec![(
            "TERND_CLOCK_SKEW_SECS".into(),
            (skew_days * DAY as i64).to_string(),
        )];
        s.spawn();
    };
    restart(&mut server, 20);
    let backup = |s: &TestServer, name: &str| {
        let args = ["backup", "--container", "c", "--name", name, "-"];
        ok("backup", t(s, &args, Some(b"bytes")));
    };
    backup(&server, "ahead");
    let ahead = image_json(&server);
    let ahead_created = ahead["created"].as_u64().unwrap();
    assert!(ahead_created >= now() + 20 * DAY - 60, "{ahead}");

    restart(&mut server, 0);
    backup(&server, "later");
    let out = ok(
        "ls",
        t(&server, &["--json", "ls", "--container", "c"], None),
    );
    let list: Value = serde_json::from_str(&out).unwrap();
    let later = &list[1];
    assert_eq!(later["name"], "later", "{list}");
    assert!(
        later["created"].as_u64().unwrap() >= ahead_created,
        "an image dated before an earlier one: {list}"
    );
    assert_eq!(
        list[0]["lock_until"].as_u64(),
        Some(ahead_created + 30 * DAY)
    );
    refused(
        "rm",
        t(
            &server,
            &["rm", "--container", "c", "--name", "ahead"],
            None,
        ),
    );

    // 51 days on, the lock of "ahead" (committed on day 20) has ended.
    restart(&mut server, 51);
    let list: Value = serde_json::from_str(&ok(
        "ls",
        t(&server, &["--json", "ls", "--container", "c"], None),
    ))
    .unwrap();
    assert_eq!(list[0]["lock_until"], Value::Null, "{list}");
    ok(
        "rm",
        t(
            &server,
            &["rm", "--container", "c", "--name", "ahead"],
            None,
        ),
    );
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
