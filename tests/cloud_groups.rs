//! Cloud storage groups on a real Garage, through real ternd processes and
//! the tern CLI: backup, restore, resume, GC and fsck in a bucket; what the
//! bucket, the audit log and the data directory hold of the secrets; the
//! object store stopped in the middle of a backup; one node of three killed;
//! a copy from one cloud group into another server's; a seed loaded into a
//! cloud group; a lost data directory rebuilt from the bucket alone.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tern_agent::{ContainerSettings, CopyInfo, CopyState, CopyTarget};
use tern_test_support::garage::{Garage, SECRET};
use tern_test_support::*;

const PASSPHRASE: &str = "the group's long passphrase";
const PARTNER_PASSWORD: &str = "partner-secret-1";

fn with_env(mut cmd: Command, passphrase: &str) -> Output {
    cmd.envs(Garage::env(passphrase));
    run_with_stdin(cmd, None)
}

/// A ternd with group `cloud` in `g`'s bucket (under `prefix`) and
/// container `cloud/c`; doomed objects go at once, and the group's catalog
/// is saved to the bucket every second.
fn server_with_cloud_group(g: &Garage, prefix: &str) -> TestServer {
    let edits = [
        ("cloud_grace_secs = 3600", "cloud_grace_secs = 0"),
        ("cloud_catalog_secs = 10", "cloud_catalog_secs = 1"),
    ];
    let server = g.ternd_with_group(&edits, prefix, PASSPHRASE);
    ok(
        "container create",
        &server.tern(&["container", "create", "cloud/c"], None),
    );
    server
}

fn cloud_group(server: &TestServer) -> Value {
    let list = json(&ok(
        "group ls",
        &server.tern(&["--json", "group", "ls"], None),
    ));
    list.as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "cloud")
        .cloned()
        .unwrap()
}

fn read(server: &TestServer, name: &str) -> Vec<u8> {
    let mut back = Vec::new();
    let mut r = server.client().open_image("cloud/c", name).unwrap();
    r.read_to_end(&mut back).unwrap();
    back
}

#[test]
fn a_cloud_group_backs_up_restores_resumes_and_is_collected_and_checked() {
    let Some(g) = Garage::start() else { return };
    let mut server = server_with_cloud_group(&g, "site-a");
    let files = tempfile::tempdir().unwrap();
    let one = data_file(files.path(), "one", 12 << 20, 1);
    let file = one.to_str().unwrap();
    let args = ["backup", "--container", "cloud/c", "--name", "one", file];
    ok("backup", &server.tern(&args, None));

    // A resume: half an image, suspended, continued by another client.
    let data = test_data(5 << 20, 3);
    let client = server.client();
    let mut w = client.create_image("cloud/c", "two", b"").unwrap();
    w.write_all(&data[..3 << 20]).unwrap();
    let at = w.suspend().unwrap();
    drop(client);
    let (mut w, resumed_at) = server.client().resume_image("cloud/c", "two").unwrap();
    assert_eq!(resumed_at, at);
    w.write_all(&data[at as usize..]).unwrap();
    w.commit().unwrap();

    server.assert_restores_as("cloud/c", "one", &one);
    assert!(read(&server, "two") == data, "the resumed image differs");

    let g1 = cloud_group(&server);
    assert_eq!(g1["kind"], "cloud");
    assert_eq!(g1["location"], format!("{}/site-a/", g.url()));
    assert_eq!(g1["images"], 2);
    assert!(g1["objects"].as_u64().unwrap() >= 2, "{g1}");
    assert!(g1["requests"]["put"].as_u64().unwrap() >= 2, "{g1}");
    assert_eq!(g1["staged_bytes"], 0, "{g1}");
    // Packs sent to the bucket: about what is stored, not more.
    let up = g1["bytes_up"].as_u64().unwrap();
    let stored = g1["pack_bytes"].as_u64().unwrap();
    assert!(
        up <= stored + stored / 20 + 4096,
        "{up} sent for {stored} stored"
    );

    // The same figures for Prometheus. The catalog thread saves to the
    // bucket every second, so the count can grow between two reads: the
    // one `group ls` shows lies between two scrapes taken around it.
    let scraped = |kind: &str| {
        let (_, metrics) = http_get(server.metrics_url.as_ref().unwrap());
        let name = format!("tern_group_bucket_requests{{group=\"cloud\",kind=\"{kind}\"}}");
        metric_sample(&metrics, &name).unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let before = scraped("put");
    let listed = cloud_group(&server)["requests"]["put"].as_f64().unwrap();
    let after = scraped("put");
    assert!(
        before <= listed && listed <= after,
        "group ls shows {listed} PUTs, the metrics {before} before and {after} after"
    );
    // Nothing failed: a lease not there yet at the first start is an
    // answer, not a failed request an admin should be paged for.
    assert_eq!(scraped("failed"), 0.0);

    // The secrets: the key file only ternd reads, nothing in the audit log.
    let secret = server.data().join("groups/cloud/cloud.secret");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let audit = std::fs::read_to_string(server.data().join("audit.log")).unwrap();
    assert!(audit.contains("group_add"), "{audit}");
    assert!(!audit.contains(SECRET) && !audit.contains(PASSPHRASE));

    // GC: the deleted image's objects leave the bucket (grace period 0 here).
    let args = ["rm", "--container", "cloud/c", "--name", "one"];
    ok("rm", &server.tern(&args, None));
    let gc = json(&ok(
        "gc",
        &server.ternd(&["gc", "--group", "cloud", "--json"]),
    ));
    assert!(gc["objects_deleted"].as_u64().unwrap() >= 1, "{gc}");
    let g2 = cloud_group(&server);
    assert!(g2["objects"].as_u64() < g1["objects"].as_u64(), "{g2}");
    // fsck of the stopped store reads the bucket and changes nothing local.
    server.kill();
    let journal = server.data().join("groups/cloud/objects");
    let before = std::fs::read(&journal).unwrap();
    ok(
        "fsck, stopped",
        &server.ternd(&["fsck", "--group", "cloud"]),
    );
    assert!(std::fs::read(&journal).unwrap() == before);

    // A restart needs no passphrase. fsck (the read cache empty now) asks
    // for every object, reading its table, and reads a sample whole.
    server.spawn();
    let fsck = json(&ok(
        "fsck",
        &server.ternd(&["fsck", "--group", "cloud", "--json"]),
    ));
    assert_eq!(fsck["packs"], g2["objects"], "{fsck}");
    let packs = fsck["packs"].as_u64().unwrap();
    assert!(fsck["bucket_requests"].as_u64().unwrap() >= packs, "{fsck}");
    assert!(read(&server, "two") == data);
}

#[test]
fn a_backup_waits_out_the_object_store_going_down_and_comes_back_whole() {
    let Some(mut g) = Garage::start() else { return };
    let server = server_with_cloud_group(&g, "");
    let files = tempfile::tempdir().unwrap();
    let big = data_file(files.path(), "big", 48 << 20, 7);
    let file = big.to_str().unwrap();
    let args = ["backup", "--container", "cloud/c", "--name", "big", file];
    let mut backup = server.tern_command(&args).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    g.stop();
    // Meanwhile a backup into a group on disk commits: the bucket's outage
    // holds up only its own group's commits.
    ok(
        "container create",
        &server.tern(&["container", "create", "local"], None),
    );
    let small = data_file(files.path(), "small", 3 << 20, 8);
    let small = small.to_str().unwrap();
    let args = ["backup", "--container", "local", "--name", "s", small];
    ok(
        "backup to disk during the outage",
        &server.tern(&args, None),
    );
    std::thread::sleep(Duration::from_secs(3));
    g.restart();
    let status = backup.wait().unwrap();
    assert!(status.success(), "the backup failed across the outage");
    server.assert_restores_as("cloud/c", "big", &big);
    let g1 = cloud_group(&server);
    assert_eq!(g1["staged_bytes"], 0, "{g1}");
    ok("fsck", &server.ternd(&["fsck", "--group", "cloud"]));
}

#[test]
fn a_backup_completes_while_one_of_three_garage_nodes_is_killed() {
    let Some(mut g) = Garage::start_nodes(3) else {
        return;
    };
    let mut server = server_with_cloud_group(&g, "three");
    let files = tempfile::tempdir().unwrap();
    let big = data_file(files.path(), "big", 32 << 20, 9);
    let file = big.to_str().unwrap();
    let args = ["backup", "--container", "cloud/c", "--name", "big", file];
    let mut backup = server.tern_command(&args).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Not the node ternd talks to: the other two still make a quorum.
    g.nodes[2].kill();
    let status = backup.wait().unwrap();
    assert!(status.success(), "the backup failed with a node down");
    server.assert_restores_as("cloud/c", "big", &big);
    server.kill();
    server.spawn();
    let fsck = json(&ok(
        "fsck --full",
        &server.ternd(&["fsck", "--group", "cloud", "--full", "--json"]),
    ));
    assert_eq!(fsck["packs_table_only"], 0, "{fsck}");
    assert_eq!(fsck["damage"].as_array().unwrap().len(), 0, "{fsck}");
    // Every object read whole: its table, then its segments (an 8 MiB pack
    // takes more than one request).
    let packs = fsck["packs"].as_u64().unwrap();
    assert!(fsck["bucket_requests"].as_u64().unwrap() > packs, "{fsck}");
}

/// Waits for copy `id` to end and asserts that it is done.
fn copy_done(client: &tern_agent::Client, id: tern_agent::CopyId) -> CopyInfo {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let info = client.copy_status(id).unwrap();
        if info.state.is_final() {
            assert_eq!(info.state, CopyState::Done, "{info:?}");
            return info;
        }
        assert!(std::time::Instant::now() < deadline, "{info:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The target's side of a pair: user `partner` may replicate into group
/// `cloud`, and `cloud/dr` takes replicas.
fn replica_target(target: &TestServer) {
    let t = target.client();
    t.user_add("partner", PARTNER_PASSWORD, false).unwrap();
    t.user_set_replicate_into("partner", &["cloud"]).unwrap();
    let replica = ContainerSettings {
        replica: true,
        import: true,
        ..Default::default()
    };
    t.container_create("cloud/dr", replica).unwrap();
}

/// Makes `target` partner "b" of `source`.
fn pair(source: &TestServer, target: &TestServer) {
    let fingerprint = target.fingerprint().to_string();
    source
        .client()
        .partner_add(
            "b",
            &[&target.address()],
            &fingerprint,
            "partner",
            PARTNER_PASSWORD,
        )
        .unwrap();
}

/// Restarts `target` (its read cache empty) and asserts that the replica
/// `info` made in `cloud/dr` reads back as `data`, from the bucket.
fn restarted_reads_replica(mut target: TestServer, info: &CopyInfo, data: &[u8]) -> TestServer {
    target.kill();
    target.spawn();
    let mut back = Vec::new();
    target
        .client()
        .open_image("cloud/dr", info.to_name.as_str())
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data, "the replica differs");
    target
}

#[test]
fn a_copy_from_a_cloud_group_into_a_cloud_group_restores_on_the_target() {
    let Some(g) = Garage::start() else { return };
    let source = server_with_cloud_group(&g, "site-a");
    let target = server_with_cloud_group(&g, "site-b");
    replica_target(&target);
    pair(&source, &target);
    let s = source.client();

    let data = test_data(20 << 20, 11);
    let mut w = s.create_image("cloud/c", "img", b"props").unwrap();
    w.write_all(&data).unwrap();
    w.commit().unwrap();
    let to = CopyTarget {
        partner: "b",
        container: "cloud/dr",
        name: None,
    };
    let info = copy_done(&s, s.copy_start("cloud/c", "img", &to).unwrap());

    // The replica's packs are in the target's bucket, none left staged, and
    // it reads back from there after a restart (an empty read cache).
    let group = cloud_group(&target);
    assert_eq!(group["images"], 1, "{group}");
    assert_eq!(group["staged_bytes"], 0, "{group}");
    assert!(group["objects"].as_u64().unwrap() >= 1, "{group}");
    let target = restarted_reads_replica(target, &info, &data);
    ok("fsck", &target.ternd(&["fsck", "--group", "cloud"]));
}

#[test]
fn a_seed_loads_into_a_cloud_group_and_the_copy_after_it_sends_only_the_recipe() {
    let Some(g) = Garage::start() else { return };
    let source = TestServer::start();
    let s = source.client();
    s.container_create("c", Default::default()).unwrap();
    let data = test_data(24 << 20, 23);
    let mut w = s.create_image("c", "v1", b"").unwrap();
    w.write_all(&data).unwrap();
    w.commit().unwrap();
    let media = tempfile::tempdir().unwrap();
    let dev = media.path().join("dev");
    let dev = dev.to_str().unwrap();
    let export = [
        "seed",
        "export",
        "--containers",
        "c",
        "--to",
        dev,
        "--volume-size",
        "8MiB",
        "--no-encrypt",
        "--json",
    ];
    let report = json(&ok("seed export", &source.ternd(&export)));

    let target = server_with_cloud_group(&g, "seeded");
    replica_target(&target);
    let import = [
        "seed",
        "import",
        "--unencrypted",
        "--from",
        dev,
        "--group",
        "cloud",
        "--json",
    ];
    let imported = json(&ok("seed import", &target.ternd(&import)));
    assert_eq!(imported["chunks_loaded"], report["chunks"], "{imported}");
    // Loaded means in the bucket: nothing left staged.
    let group = cloud_group(&target);
    assert_eq!(group["staged_bytes"], 0, "{group}");
    assert!(group["objects"].as_u64().unwrap() >= 1, "{group}");
    // GC in the bucket keeps the pinned chunks no image refers to yet.
    ok("gc", &target.ternd(&["gc", "--group", "cloud"]));

    pair(&source, &target);
    let to = CopyTarget {
        partner: "b",
        container: "cloud/dr",
        name: None,
    };
    let info = copy_done(&s, s.copy_start("c", "v1", &to).unwrap());
    assert_eq!((info.sent_chunks, info.sent_bytes), (0, 0), "{info:?}");
    // The replica reads back from the bucket after a restart.
    let target = restarted_reads_replica(target, &info, &data);
    let fsck = json(&ok(
        "fsck",
        &target.ternd(&["fsck", "--group", "cloud", "--json"]),
    ));
    assert_eq!(fsck["damage"].as_array().unwrap().len(), 0, "{fsck}");
}

/// `ternd group recover` of group `cloud` (prefix `prefix`) into `data`.
fn recover(g: &Garage, data: &Path, prefix: &str, passphrase: &str, more: &[&str]) -> Output {
    let mut cmd = Command::new(ternd_bin());
    cmd.args([
        "group",
        "recover",
        "cloud",
        "--s3",
        &g.url(),
        "--prefix",
        prefix,
    ])
    .arg("--data")
    .arg(data)
    .args(more);
    with_env(cmd, passphrase)
}

#[test]
fn a_lost_data_directory_is_rebuilt_from_the_bucket_and_its_old_server_is_fenced_off() {
    let Some(g) = Garage::start() else { return };
    let mut old = server_with_cloud_group(&g, "dr");
    ok(
        "container create",
        &old.tern(&["container", "create", "cloud/d"], None),
    );
    let files = tempfile::tempdir().unwrap();
    let images = [
        ("cloud/c", "one", 12 << 20),
        ("cloud/c", "two", 3 << 20),
        ("cloud/d", "three", 5 << 20),
    ];
    let mut originals = Vec::new();
    for (i, (container, name, len)) in images.iter().enumerate() {
        let f = data_file(files.path(), name, *len, 20 + i as u64);
        let args = [
            "backup",
            "--container",
            container,
            "--name",
            name,
            f.to_str().unwrap(),
        ];
        ok("backup", &old.tern(&args, None));
        originals.push(f);
    }
    // The catalog thread saves within a second or so of the commits.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let group = cloud_group(&old);
        if group["catalog_images"] == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "catalog not saved: {group}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The machine is lost: ternd killed, its data directory never seen again.
    old.kill();
    let dir = tempfile::tempdir().unwrap();

    // Its lease still stands; a wrong passphrase is told as such.
    let held = recover(&g, dir.path(), "dr", PASSPHRASE, &[]);
    assert!(!held.status.success());
    let said = String::from_utf8_lossy(&held.stderr);
    assert!(said.contains("--take-over"), "{said}");
    let wrong = recover(
        &g,
        dir.path(),
        "dr",
        "not the passphrase at all",
        &["--take-over"],
    );
    assert!(!wrong.status.success());
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("passphrase does not open"), "{said}");

    let report = json(&ok(
        "recover",
        &recover(&g, dir.path(), "dr", PASSPHRASE, &["--take-over", "--json"]),
    ));
    assert_eq!(report["containers"], 2, "{report}");
    assert_eq!(report["images"], 3, "{report}");
    assert!(report["chunks"].as_u64().unwrap() > 0, "{report}");
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("group_recover"), "{audit}");
    assert!(!audit.contains(SECRET) && !audit.contains(PASSPHRASE));

    // The new machine serves every image, byte for byte, and takes more.
    let new = TestServer::start_with(dir, &[]);
    for ((container, name, _), original) in images.iter().zip(&originals) {
        new.assert_restores_as(container, name, original);
    }
    let four = data_file(files.path(), "four", 4 << 20, 30);
    let args = [
        "backup",
        "--container",
        "cloud/c",
        "--name",
        "four",
        four.to_str().unwrap(),
    ];
    ok("backup after the recovery", &new.tern(&args, None));
    new.assert_restores_as("cloud/c", "four", &four);
    let fsck = json(&ok(
        "fsck",
        &new.ternd(&["fsck", "--group", "cloud", "--json"]),
    ));
    assert_eq!(fsck["damage"].as_array().unwrap().len(), 0, "{fsck}");

    // The old machine comes back: it finds the lease taken and writes no
    // more to the bucket.
    old.spawn();
    let log = old.data().with_extension("log");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("another server took over")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the old server did not notice the take-over"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let five = data_file(files.path(), "five", 2 << 20, 31);
    let args = [
        "backup",
        "--container",
        "cloud/c",
        "--name",
        "five",
        five.to_str().unwrap(),
    ];
    let refused = old.tern(&args, None);
    assert!(
        !refused.status.success(),
        "the old server still writes to the bucket"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("took over"), "{said}");
    new.assert_restores_as("cloud/c", "four", &four);
}
