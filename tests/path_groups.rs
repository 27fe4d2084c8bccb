//! Storage groups on a directory of their own (a performance tier on
//! another volume): real ternd processes, the tern CLI and the client
//! library. Backup, restore, resume, GC and fsck in such a group; the
//! volume file that keeps ternd from writing into an unmounted mount point;
//! what `tern group add` and `tern group rm` refuse.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use tern_agent::{Client, ClientOptions};
use tern_test_support::*;

fn refused(what: &str, out: &Output, says: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} was not refused");
    assert!(err.contains(says), "{what}: {err:?} does not say {says:?}");
}

/// An empty directory only its owner may write, as a mounted volume's would be.
fn volume() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn group<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name} in {list}"))
}

fn read(server: &TestServer, name: &str) -> Vec<u8> {
    let mut back = Vec::new();
    let mut r = server.client().open_image("fast/c", name).unwrap();
    r.read_to_end(&mut back).unwrap();
    back
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| rd.count())
}

#[test]
fn a_group_on_its_own_volume_backs_up_restores_resumes_and_is_collected_and_checked_alone() {
    let mut server = TestServer::start();
    let vol = volume();
    let vol_path = vol.path().canonicalize().unwrap();
    let path = vol_path.to_str().unwrap();
    ok(
        "group add",
        &server.tern(&["group", "add", "fast", "--path", path], None),
    );
    ok(
        "container create",
        &server.tern(&["container", "create", "fast/c"], None),
    );
    ok(
        "container create",
        &server.tern(&["container", "create", "d"], None),
    );
    let files = tempfile::tempdir().unwrap();
    let one = data_file(files.path(), "one", 6 << 20, 1);
    let other = data_file(files.path(), "other", 3 << 20, 2);
    let backup = |container: &str, name: &str, file: &Path| {
        let file = file.to_str().unwrap();
        let args = ["backup", "--container", container, "--name", name, file];
        ok("backup", &server.tern(&args, None));
    };
    backup("fast/c", "one", &one);
    backup("d", "other", &other);
    // The group's packs are on its volume, and nowhere under the data directory.
    let packs = vol_path.join("packs");
    assert!(files_in(&packs) > 0, "no packs in {}", packs.display());
    assert!(!server.data().join("groups/fast").exists());
    let default_packs = server.data().join("groups/default/packs");
    let default_bytes = walk(&default_packs);
    assert!(default_bytes > 0);

    // A resume in the group: half an image, suspended, continued by another client.
    let data = test_data(5 << 20, 3);
    let client = server.client();
    let mut w = client.create_image("fast/c", "two", b"").unwrap();
    w.write_all(&data[..3 << 20]).unwrap();
    let at = w.suspend().unwrap();
    drop(client);
    let (mut w, resumed_at) = server.client().resume_image("fast/c", "two").unwrap();
    assert_eq!(resumed_at, at);
    w.write_all(&data[at as usize..]).unwrap();
    w.commit().unwrap();
    assert!(
        read(&server, "two") == data,
        "the resumed image reads back differently"
    );
    server.assert_restores_as("fast/c", "one", &one);

    // What each group holds, and the filesystem it is on.
    let list = json(&ok(
        "group ls",
        &server.tern(&["--json", "group", "ls"], None),
    ));
    let fast = group(&list, "fast");
    assert_eq!(fast["kind"], "volume");
    assert_eq!(fast["location"], path);
    assert_eq!(fast["containers"], 1);
    assert_eq!(fast["images"], 2);
    assert_eq!(fast["pack_bytes"].as_u64().unwrap(), walk(&packs));
    assert!(fast["fs_total_bytes"].as_u64().unwrap() > 0);
    assert!(fast["fs_used_bytes"].as_u64().unwrap() > 0);
    assert!(fast["free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(group(&list, "default")["kind"], "data");
    let stats = json(&ok("stats", &server.tern(&["--json", "stats"], None)));
    assert_eq!(group(&stats["groups"], "fast")["images"], 2);

    // GC of the group collects its deleted image and leaves the others alone.
    let args = ["rm", "--container", "fast/c", "--name", "one"];
    ok("rm", &server.tern(&args, None));
    let before = walk(&packs);
    let gc = json(&ok(
        "gc",
        &server.ternd(&["gc", "--group", "fast", "--json"]),
    ));
    assert!(gc["chunks_removed"].as_u64().unwrap() > 0, "{gc}");
    assert!(walk(&packs) < before, "gc freed nothing on the volume");
    assert_eq!(
        walk(&default_packs),
        default_bytes,
        "gc of fast changed default"
    );
    let fsck = json(&ok(
        "fsck",
        &server.ternd(&["fsck", "--group", "fast", "--json"]),
    ));
    assert_eq!(fsck["packs"].as_u64().unwrap(), files_in(&packs) as u64);
    ok("fsck of every group", &server.ternd(&["fsck"]));
    assert!(read(&server, "two") == data);

    // Unmounted: the volume file is gone and ternd refuses to start.
    server.kill();
    let moved = files.path().join("tern-volume");
    std::fs::rename(vol_path.join("tern-volume"), &moved).unwrap();
    let log = server
        .try_spawn()
        .expect_err("ternd started without the volume");
    assert!(
        log.contains("storage group fast") && log.contains("mounted"),
        "{log}"
    );
    std::fs::rename(&moved, vol_path.join("tern-volume")).unwrap();
    server.spawn();
    assert!(read(&server, "two") == data);

    // A flipped byte on the volume: fsck of the group names the pack; of
    // the default group it is not its business.
    let pack = std::fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    let out = server.ternd(&["fsck", "--group", "fast"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(pack.to_str().unwrap()), "{said}");
    ok(
        "fsck of default",
        &server.ternd(&["fsck", "--group", "default"]),
    );
}

#[test]
fn group_add_and_rm_refuse_what_they_must() {
    let server = TestServer::start();
    let add = |name: &str, dir: &Path| {
        server.tern(
            &["group", "add", name, "--path", dir.to_str().unwrap()],
            None,
        )
    };
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    refused("world-writable", &add("g", open.path()), "world-writable");
    let full = volume();
    std::fs::write(full.path().join("x"), b"x").unwrap();
    refused("not empty", &add("g", full.path()), "not empty");
    refused("relative", &add("g", Path::new("rel/dir")), "absolute");
    let inside = server.data().join("inside");
    std::fs::create_dir(&inside).unwrap();
    refused("in the data dir", &add("g", &inside), "overlaps");
    refused(
        "missing",
        &add("g", &full.path().join("nope")),
        "No such file",
    );
    // Only an admin adds groups.
    let admin = server.client();
    admin.user_add("u", "user-secret-1", false).unwrap();
    let mut o: ClientOptions = server.options();
    o.user = "u".into();
    o.password = "user-secret-1".into();
    let user = Client::connect(&o).unwrap();
    let vol = volume();
    let g = tern_core::names::GroupName::new("g").unwrap();
    let e = user
        .group_add(
            &g,
            tern_core::wire::GroupSettings::at_path(vol.path().to_str().unwrap()),
        )
        .unwrap_err();
    assert!(e.to_string().contains("only an admin"), "{e}");
    // A user sees only their groups, without where they are.
    let seen: Vec<String> = user
        .group_list()
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(seen, ["default"]);

    ok("add", &add("g", vol.path()));
    refused("the name again", &add("g", volume().path()), "exists");
    refused("the same dir", &add("h", vol.path()), "storage group g");

    // Removal: only when nothing is in it, nobody holds it, never default.
    ok(
        "container",
        &server.tern(&["container", "create", "g/c"], None),
    );
    let files = tempfile::tempdir().unwrap();
    let f = data_file(files.path(), "f", 1 << 20, 9);
    let backup = [
        "backup",
        "--container",
        "g/c",
        "--name",
        "i",
        f.to_str().unwrap(),
    ];
    ok("backup", &server.tern(&backup, None));
    let rm = || server.tern(&["group", "rm", "g"], None);
    refused("with a container", &rm(), "containers");
    ok(
        "rm image",
        &server.tern(&["rm", "--container", "g/c", "--name", "i"], None),
    );
    ok(
        "rm container",
        &server.tern(&["container", "rm", "g/c"], None),
    );
    refused("with chunks", &rm(), "gc");
    ok("gc", &server.ternd(&["gc", "--group", "g"]));
    admin.user_set("u", Some(&["default", "g"]), None).unwrap();
    refused("granted", &rm(), "granted to u");
    admin.user_set("u", Some(&["default"]), None).unwrap();
    ok("rm", &rm());
    assert_eq!(
        files_in(vol.path()),
        0,
        "the volume keeps files of a removed group"
    );
    refused(
        "default",
        &server.tern(&["group", "rm", "default"], None),
        "default",
    );
    // The directory is free for a new group.
    ok("add again", &add("g2", vol.path()));
}
