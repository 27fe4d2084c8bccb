//! The cloud tier on a real Garage, through real ternd processes and the
//! tern CLI: a container's policy copies the images it selects, once
//! settled (ternd's clock moved by `TERND_CLOCK_SKEW_SECS`), sending only
//! what the cloud group lacks; a copy waits out the object store going
//! down; ternd killed in the middle of copies comes back with every copy
//! committed once and fsck clean.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_test_support::garage::Garage;
use tern_test_support::*;

const PASSPHRASE: &str = "the tier's long passphrase";

/// A ternd whose tier mover runs every second, with cloud group `cloud` in
/// `g`'s bucket and local container `c`.
fn tiered_server(g: &Garage, prefix: &str) -> TestServer {
    let edits = [
        ("tier_interval_secs = 300", "tier_interval_secs = 1"),
        ("cloud_catalog_secs = 10", "cloud_catalog_secs = 1"),
    ];
    let server = g.ternd_with_group(&edits, prefix, PASSPHRASE);
    ok(
        "container create",
        &server.tern(&["container", "create", "c"], None),
    );
    server
}

fn backup(server: &TestServer, name: &str, data: &[u8]) {
    let args = ["backup", "--container", "c", "--name", name, "-"];
    ok("backup", &server.tern(&args, Some(data)));
}

fn tier_status(server: &TestServer) -> Value {
    let out = ok(
        "tier status",
        &server.tern(&["--json", "tier", "status"], None),
    );
    json(&out)[0].clone()
}

/// The tier copies, by image name.
fn tier_copies(server: &TestServer) -> Vec<Value> {
    let out = ok("copy ls", &server.tern(&["--json", "copy", "ls"], None));
    let list = json(&out);
    let copies = list.as_array().unwrap();
    copies
        .iter()
        .filter(|c| c["tier"] == true)
        .cloned()
        .collect()
}

/// Waits until `copied` images of the tiered container have a committed
/// copy; fails if that takes more than two minutes.
fn wait_copied(server: &TestServer, copied: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = tier_status(server);
        if s["copied"] == copied && s["copying"] == 0 {
            return s;
        }
        assert!(Instant::now() < deadline, "not copied in time: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The cloud group's (chunk bytes stored, bytes sent to the bucket since
/// ternd started).
fn cloud_bytes(server: &TestServer) -> (u64, u64) {
    let out = ok("group ls", &server.tern(&["--json", "group", "ls"], None));
    let list = json(&out);
    let cloud = list
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "cloud");
    let cloud = cloud.unwrap();
    let n = |k: &str| cloud[k].as_u64().unwrap();
    (n("stored_bytes"), n("bytes_up"))
}

fn read_cloud(server: &TestServer, name: &str) -> Vec<u8> {
    let mut back = Vec::new();
    let mut r = server.client().open_image("cloud/tier", name).unwrap();
    r.read_to_end(&mut back).unwrap();
    back
}

fn names_in(server: &TestServer, container: &str) -> Vec<String> {
    let out = ok(
        "ls",
        &server.tern(&["--json", "ls", "--container", container], None),
    );
    let list = json(&out);
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn the_tier_copies_the_images_its_policy_selects_once_settled_and_only_what_the_cloud_lacks() {
    let Some(g) = Garage::start() else { return };
    let mut server = tiered_server(&g, "tier-a");
    let full = test_data(12 << 20, 1);
    backup(&server, "db-1.full", &full);
    backup(&server, "db-1.incr", &test_data(2 << 20, 2));
    backup(&server, "tmp-1.full", &test_data(2 << 20, 3));

    // Refused: a group that is not a cloud group, local days without a
    // holding mode, and a user who is not an admin.
    let bad = server.tern(&["container", "tier", "c", "--to", "default/x"], None);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("not a cloud storage group"), "{err}");
    let args = [
        "container",
        "tier",
        "c",
        "--to",
        "cloud/tier",
        "--local-days",
        "3",
    ];
    let days = server.tern(&args, None);
    assert!(
        !days.status.success(),
        "--local-days taken without a holding mode"
    );
    let admin = server.client();
    admin.user_add("bob", "bob's password", false).unwrap();
    admin.user_set("bob", Some(&["default"]), None).unwrap();
    let mut o = server.options();
    o.user = "bob".into();
    o.password = "bob's password".into();
    let bob = tern_agent::Client::connect(&o).unwrap();
    let policy = tern_core::wire::TierPolicy {
        to: tern_core::ContainerName::new("cloud/tier").unwrap(),
        mode: tern_core::wire::TierMode::Copy,
        idle_secs: 0,
        matches: Vec::new(),
        excludes: Vec::new(),
        prefixes: Vec::new(),
        shaping: None,
        local_days: 0,
    };
    let denied = bob.container_tier("c", Some(policy)).unwrap_err();
    assert!(denied.to_string().contains("only an admin"), "{denied}");

    let args = [
        "container",
        "tier",
        "c",
        "--to",
        "cloud/tier",
        "--idle-hours",
        "1",
        "--match",
        "*.full",
        "--exclude",
        "tmp*",
    ];
    ok("container tier", &server.tern(&args, None));
    // The mover runs every second; two runs later, nothing has settled.
    let first = tier_status(&server)["next_run"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tier_status(&server)["next_run"].as_u64().unwrap() < first + 2 {
        assert!(Instant::now() < deadline, "the tier mover does not run");
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = tier_status(&server);
    assert_eq!(
        (s["pending"].as_u64(), s["copied"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert!(tier_copies(&server).is_empty());

    // Two hours on, db-1.full has settled: it alone is copied.
    server.kill();
    server.env = vec![("TERND_CLOCK_SKEW_SECS".into(), "7200".into())];
    server.spawn();
    let s = wait_copied(&server, 1);
    assert_eq!(s["pending"], 0, "{s}");
    assert_eq!(names_in(&server, "cloud/tier"), ["db-1.full"]);
    assert!(
        read_cloud(&server, "db-1.full") == full,
        "the cloud copy differs"
    );
    // `tern ls` says where each image's bytes are.
    let out = ok(
        "ls",
        &server.tern(&["--json", "ls", "--container", "c"], None),
    );
    let listed = json(&out);
    let location = |name: &str| {
        let list = listed.as_array().unwrap();
        let image = list.iter().find(|i| i["name"] == name).unwrap();
        image["location"].as_str().unwrap().to_string()
    };
    assert_eq!(location("db-1.full"), "local+cloud");
    assert_eq!(location("db-1.incr"), "local");
    // Local images stay (copy mode).
    assert_eq!(
        names_in(&server, "c"),
        ["db-1.full", "db-1.incr", "tmp-1.full"]
    );
    // What the copy sent is what the cloud group lacked (all of it), and
    // the bucket got little more (sealing, the saved catalog).
    std::thread::sleep(Duration::from_secs(2));
    let copies = tier_copies(&server);
    assert_eq!(copies.len(), 1, "{copies:?}");
    let sent_1 = copies[0]["sent_bytes"].as_u64().unwrap();
    let (stored_1, up_1) = cloud_bytes(&server);
    assert_eq!(sent_1, stored_1);
    assert!(
        up_1 as f64 <= 1.05 * sent_1 as f64,
        "{up_1} bytes to the bucket for {sent_1} lacked"
    );

    // A second full that shares 9 of its 12 MiB with the first: only what
    // the cloud group lacks goes to the bucket.
    let mut second = full[..9 << 20].to_vec();
    second.extend_from_slice(&test_data(3 << 20, 4));
    backup(&server, "db-2.full", &second);
    let args = [
        "container",
        "tier",
        "c",
        "--to",
        "cloud/tier",
        "--match",
        "*.full",
        "--exclude",
        "tmp*",
    ];
    ok("container tier, idle 0", &server.tern(&args, None));
    wait_copied(&server, 2);
    std::thread::sleep(Duration::from_secs(2));
    let copies = tier_copies(&server);
    let two = copies.iter().find(|c| c["image"] == "db-2.full").unwrap();
    let sent_2 = two["sent_bytes"].as_u64().unwrap();
    let (stored_2, up_2) = cloud_bytes(&server);
    assert_eq!(sent_2, stored_2 - stored_1);
    assert!(
        sent_2 < sent_1 / 2,
        "{sent_2} sent of a second full, {sent_1} of the first"
    );
    let up = up_2 - up_1;
    assert!(
        up as f64 <= 1.05 * sent_2 as f64,
        "{up} bytes to the bucket for {sent_2} lacked"
    );
    assert!(
        read_cloud(&server, "db-2.full") == second,
        "the second cloud copy differs"
    );

    // Prometheus sees them by state, apart from copies to partners.
    let (_, metrics) = http_get(server.metrics_url.as_ref().unwrap());
    let done = metric_sample(&metrics, "tern_tier_moves{state=\"done\"}");
    assert_eq!(done, Some(2.0), "{metrics}");
    assert_eq!(metric_sample(&metrics, "tern_copies{state=\"done\"}"), None);

    // The trail and history name the tier copies; nothing is copied twice.
    let history = json(&ok(
        "tier history",
        &server.tern(&["--json", "tier", "history"], None),
    ));
    let ok_entries = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["tier"] == true && t["result"] == "ok")
        .count();
    assert_eq!(ok_entries, 2, "{history}");
    server.kill();
    server.spawn();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(tier_copies(&server).len(), 2);
    // A delete takes the cloud copy with it, unless told to keep it.
    let args = ["rm", "--container", "c", "--name", "db-1.full"];
    ok("rm", &server.tern(&args, None));
    let args = [
        "rm",
        "--container",
        "c",
        "--name",
        "db-2.full",
        "--keep-cloud",
    ];
    ok("rm --keep-cloud", &server.tern(&args, None));
    assert_eq!(names_in(&server, "cloud/tier"), ["db-2.full"]);
    assert!(read_cloud(&server, "db-2.full") == second);
    // Unlinked: new images stay local.
    ok(
        "tier off",
        &server.tern(&["container", "tier", "c", "--off"], None),
    );
    backup(&server, "db-3.full", &test_data(1 << 20, 5));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(names_in(&server, "cloud/tier"), ["db-2.full"]);
}

#[test]
fn a_tier_copy_waits_out_the_object_store_and_ternd_killed_mid_copy_leaves_each_copy_whole() {
    let Some(mut g) = Garage::start() else { return };
    let mut server = tiered_server(&g, "tier-b");
    let images: Vec<Vec<u8>> = (0..4).map(|i| test_data(24 << 20, 10 + i)).collect();
    for (i, data) in images.iter().enumerate() {
        backup(&server, &format!("img-{i}"), data);
    }
    // The bucket is down when the copies start.
    g.stop();
    let args = ["container", "tier", "c", "--to", "cloud/tier"];
    ok("container tier", &server.tern(&args, None));
    std::thread::sleep(Duration::from_secs(4));
    let s = tier_status(&server);
    assert_eq!(s["copied"], 0, "copied with the bucket down: {s}");
    assert_eq!(s["copying"], 4, "{s}");
    g.restart();

    // ternd killed while copies run, three times, at different points.
    for pause in [700, 1500, 2500] {
        std::thread::sleep(Duration::from_millis(pause));
        server.kill();
        server.spawn();
    }
    let s = wait_copied(&server, 4);
    assert_eq!(s["failed"], 0, "{s}");
    for (i, data) in images.iter().enumerate() {
        assert!(
            read_cloud(&server, &format!("img-{i}")) == *data,
            "img-{i} differs in the cloud"
        );
        let args = [
            "restore",
            "--container",
            "c",
            "--name",
            &format!("img-{i}"),
            "-",
        ];
        let out = server.tern(&args, None);
        assert!(
            out.status.success() && out.stdout == *data,
            "img-{i} differs locally"
        );
    }
    // One copy per image, each committed once.
    assert_eq!(tier_copies(&server).len(), 4);
    assert_eq!(names_in(&server, "cloud/tier").len(), 4);
    server.kill();
    let fsck = json(&ok("fsck", &server.ternd(&["fsck", "--json"])));
    assert_eq!(fsck["damage"].as_array().unwrap().len(), 0, "{fsck}");
}

/// The default group's pack bytes (what its packs take on disk).
fn local_pack_bytes(server: &TestServer) -> u64 {
    let out = ok("group ls", &server.tern(&["--json", "group", "ls"], None));
    let list = json(&out);
    let local = list
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "default");
    local.unwrap()["pack_bytes"].as_u64().unwrap()
}

fn location_of(server: &TestServer, name: &str) -> String {
    let out = ok(
        "ls",
        &server.tern(&["--json", "ls", "--container", "c"], None),
    );
    let listed = json(&out);
    let list = listed.as_array().unwrap();
    let image = list.iter().find(|i| i["name"] == name).unwrap();
    image["location"].as_str().unwrap().to_string()
}

fn restores_as(server: &TestServer, name: &str, data: &[u8]) {
    let args = ["restore", "--container", "c", "--name", name, "-"];
    let out = server.tern(&args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == data, "{name} restores different bytes");
}

#[test]
fn a_held_image_frees_local_space_reads_from_its_copy_and_a_recall_brings_it_back() {
    let Some(g) = Garage::start() else { return };
    let mut server = tiered_server(&g, "tier-c");
    let big = test_data(24 << 20, 21);
    let small = test_data(2 << 20, 22);
    backup(&server, "big", &big);
    backup(&server, "small", &small);
    let args = [
        "container",
        "tier",
        "c",
        "--to",
        "cloud/tier",
        "--mode",
        "copy+hold",
        "--local-days",
        "1",
        "--match",
        "big",
    ];
    ok("container tier", &server.tern(&args, None));
    // Copied at once (no idle time), held only after a day.
    let s = wait_copied(&server, 1);
    assert_eq!(s["held"], 0, "{s}");
    // What big takes stored (the cloud group lacked all of it).
    let unique = tier_copies(&server)[0]["sent_bytes"].as_u64().unwrap();
    assert_eq!(location_of(&server, "big"), "local+cloud");

    server.kill();
    server.env = vec![("TERND_CLOCK_SKEW_SECS".into(), "172800".into())];
    server.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tier_status(&server)["held"] != 1 {
        assert!(
            Instant::now() < deadline,
            "not held: {}",
            tier_status(&server)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(location_of(&server, "big"), "cloud");
    assert_eq!(location_of(&server, "small"), "local");
    // Its cloud copy cannot go while the image reads from it.
    let args = ["rm", "--container", "cloud/tier", "--name", "big"];
    let refused = server.tern(&args, None);
    assert!(
        !refused.status.success(),
        "the held image's copy was deleted"
    );

    // GC frees the held image's chunks here; it still reads whole.
    let before = local_pack_bytes(&server);
    ok("gc", &server.ternd(&["gc", "--group", "default"]));
    let after = local_pack_bytes(&server);
    assert!(
        (before - after) as f64 >= 0.95 * unique as f64,
        "GC freed {} of {before} bytes; big takes {unique}",
        before - after
    );
    restores_as(&server, "big", &big);
    restores_as(&server, "small", &small);
    // Its bytes are in another group now: no extents of it until recalled.
    let args = [
        "synth",
        "--container",
        "c",
        "--name",
        "s",
        "--from",
        "big:0:4096",
    ];
    let synth = server.tern(&args, None);
    let err = String::from_utf8_lossy(&synth.stderr);
    assert!(!synth.status.success() && err.contains("held"), "{err}");

    // A recall brings its chunks back, going on where one that ternd's
    // kill -9 cut off stopped; the next GC keeps them, and the policy
    // does not hold it again before its local days.
    let args = [
        "--json",
        "image",
        "recall",
        "--container",
        "c",
        "--name",
        "big",
    ];
    // The cut one fails at the kill rather than reconnecting for the grace
    // period: the restarted ternd listens on another port.
    let mut cut_args = args.to_vec();
    cut_args.push("--no-secure-connect");
    let mut cut = server.tern_command(&cut_args).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    server.kill();
    let _ = cut.wait();
    server.spawn();
    restores_as(&server, "big", &big);
    // Unless the first recall was done before the kill, a second one
    // goes on from its last batch.
    if location_of(&server, "big") == "cloud" {
        let out = ok("recall", &server.tern(&args, None));
        let stored = json(&out)["stored_bytes"].as_u64().unwrap();
        assert!(stored <= unique, "{stored} bytes recalled of {unique}");
    }
    assert_eq!(location_of(&server, "big"), "local+cloud");
    let recalled = local_pack_bytes(&server);
    ok("gc", &server.ternd(&["gc", "--group", "default"]));
    assert!(
        local_pack_bytes(&server) + (1 << 20) >= recalled,
        "GC took recalled chunks"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(tier_status(&server)["held"], 0);
    // The trail has the copy, the hold and the recall.
    let history = json(&ok(
        "tier history",
        &server.tern(&["--json", "tier", "history"], None),
    ));
    let reasons: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.iter().any(|r| r.starts_with("held")), "{history}");
    assert!(
        reasons.iter().any(|r| r.starts_with("recalled")),
        "{history}"
    );
    server.kill();
    server.env.clear();
    server.spawn();
    restores_as(&server, "big", &big);
    server.kill();
    let fsck = json(&ok("fsck", &server.ternd(&["fsck", "--json"])));
    assert_eq!(fsck["damage"].as_array().unwrap().len(), 0, "{fsck}");
}
