//! The cloud tier through the C API, on a real Garage: `tern_image_list`
//! says where each image's bytes are (`location`, appended to
//! `tern_image_info`); a held image restores through `tern_image_open`
//! from its cloud copy; `tern_image_recall` brings it back.

use std::time::{Duration, Instant};

use tern_core::names::GroupName;
use tern_core::wire::{CloudSettings, GroupSettings, TierMode, TierPolicy};
use tern_core::ContainerName;
use tern_test_support::garage::{Garage, KEY_ID, SECRET};
use tern_test_support::*;

mod common;

use common::examples::*;

#[test]
fn c_lists_restores_and_recalls_an_image_held_in_the_cloud_tier() {
    let Some(g) = Garage::start() else { return };
    let mut server = TestServer::start();
    let client = server.client();
    let bucket = CloudSettings::new(g.url(), KEY_ID, SECRET, "the C test's passphrase")
        .with_region("garage")
        .with_prefix("c-tier");
    let cloud = GroupName::new("cloud").unwrap();
    client
        .group_add(&cloud, GroupSettings::in_bucket(bucket))
        .unwrap();
    client.container_create("c", Default::default()).unwrap();
    let build = tempfile::tempdir().unwrap();
    let backup = cc("backup.c", build.path());
    let list = cc("list.c", build.path());
    let restore = cc("restore.c", build.path());
    let recall = cc("recall.c", build.path());
    let tiered = test_data(3 << 20, 41);
    for (name, data) in [("tiered", &tiered), ("kept", &test_data(3 << 20, 42))] {
        assert_ok("backup", &run(&server, &backup, &["c", name], Some(data)));
    }
    let policy = TierPolicy {
        to: ContainerName::new("cloud/c-cloud").unwrap(),
        mode: TierMode::CopyHold,
        idle_secs: 0,
        matches: vec!["tier*".into()],
        excludes: Vec::new(),
        prefixes: Vec::new(),
        shaping: None,
        local_days: 1,
    };
    // The mover runs at once when a policy is set: a copy, not yet held.
    client.container_tier("c", Some(policy)).unwrap();
    let text = list_until(&server, &list, "location=local+cloud");
    let kept = text.lines().find(|l| l.starts_with("kept\t")).unwrap();
    assert!(kept.contains("location=local\t"), "{text}");

    // Two days on, it is held: listed as cloud, restored from the bucket.
    drop(client);
    server.kill();
    server.env = vec![("TERND_CLOCK_SKEW_SECS".into(), "172800".into())];
    server.spawn();
    list_until(&server, &list, "location=cloud");
    let out = run(&server, &restore, &["c", "tiered"], None);
    assert_ok("restore of the held image", &out);
    assert!(
        out.stdout == tiered,
        "the held image restores different bytes"
    );

    let out = run(&server, &recall, &["c", "tiered"], None);
    assert_ok("recall", &out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("recalled c/tiered: "), "{text}");
    list_until(&server, &list, "location=local+cloud");
    let out = run(&server, &recall, &["c", "kept"], None);
    assert!(!out.status.success(), "recall of an image that is not held");
    assert!(String::from_utf8_lossy(&out.stderr).contains("TERN_INVALID_ARGUMENT"));
}

/// Runs list.c on container c until the line of image `tiered` says
/// `want`; fails after a minute. The listing.
fn list_until(server: &TestServer, list: &std::path::Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(server, list, &["c"], None);
        assert_ok("list", &out);
        let text = String::from_utf8(out.stdout).unwrap();
        let line = text.lines().find(|l| l.starts_with("tiered\t"));
        if line.is_some_and(|l| l.contains(&format!("{want}\t"))) {
            return text;
        }
        assert!(Instant::now() < deadline, "tiered is not {want}: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
