//! The cloud tier through the C API: `tern_image_list` says where each
//! image's bytes are (`location`, appended to `tern_image_info`), here for
//! an image with a committed cloud tier copy on a real Garage.

use std::time::{Duration, Instant};

use tern_core::names::GroupName;
use tern_core::wire::{CloudSettings, GroupSettings, TierMode, TierPolicy};
use tern_core::ContainerName;
use tern_test_support::garage::{Garage, KEY_ID, SECRET};
use tern_test_support::*;

mod common;

use common::examples::*;

#[test]
fn c_list_says_an_image_with_a_cloud_tier_copy_is_local_and_cloud() {
    let Some(g) = Garage::start() else { return };
    let server = TestServer::start();
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
    for (name, seed) in [("tiered", 41), ("kept", 42)] {
        let data = test_data(3 << 20, seed);
        assert_ok("backup", &run(&server, &backup, &["c", name], Some(&data)));
    }
    let policy = TierPolicy {
        to: ContainerName::new("cloud/c-cloud").unwrap(),
        mode: TierMode::Copy,
        idle_secs: 0,
        matches: vec!["tier*".into()],
        excludes: Vec::new(),
        prefixes: Vec::new(),
        shaping: None,
        local_days: 0,
    };
    // The mover runs at once when a policy is set.
    client.container_tier("c", Some(policy)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let out = run(&server, &list, &["c"], None);
        assert_ok("list", &out);
        let text = String::from_utf8(out.stdout).unwrap();
        if text.contains("tiered\t") && text.contains("location=local+cloud") {
            break text;
        }
        assert!(Instant::now() < deadline, "no cloud copy listed: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let kept = text.lines().find(|l| l.starts_with("kept\t")).unwrap();
    assert!(kept.contains("location=local"), "{text}");
    assert!(!kept.contains("location=local+cloud"), "{text}");
    let tiered = text.lines().find(|l| l.starts_with("tiered\t")).unwrap();
    assert!(tiered.contains("location=local+cloud"), "{text}");
}
