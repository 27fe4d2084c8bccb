//! Synthetic fulls against a real ternd: `tern synth` builds v2 from v1's
//! extents and the edited bytes, byte for byte the v2 a backup makes,
//! while the fault proxy counts what crosses the wire; GC and a deleted
//! source during a build free nothing the new image names.

use std::io::{Read, Write};
use std::path::Path;

use tern_faultproxy::{FaultProxy, Faults};
use tern_test_support::*;

/// v1's size, and the edits that make v2: (offset, length), neither on a
/// chunk boundary of any likelihood.
const V1: usize = 48 << 20;
const EDITS: [(usize, usize); 6] = [
    (1_000_003, 4_099),
    (5_123_457, 70_001),
    (9_999_991, 12),
    (20_000_017, 300_007),
    (33_554_433, 65_536),
    (V1 - 5_000, 5_000),
];

fn read_image(server: &TestServer, name: &str) -> Vec<u8> {
    let mut back = Vec::new();
    let mut r = server.client().open_image("c", name).unwrap();
    r.read_to_end(&mut back).unwrap();
    back
}

fn assert_fsck_clean(server: &TestServer) {
    let out = server.ternd(&["fsck"]);
    assert!(
        out.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_synthetic_full_of_v2_is_v2_byte_for_byte_and_the_wire_carries_only_the_edits() {
    let server = TestServer::start();
    server
        .client()
        .container_create("c", Default::default())
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let v1 = test_data(V1, 101);
    let mut v2 = v1.clone();
    let mut pieces = Vec::new();
    let mut at = 0;
    for (i, &(offset, len)) in EDITS.iter().enumerate() {
        let edit = test_data(len, 200 + i as u64);
        v2[offset..offset + len].copy_from_slice(&edit);
        pieces.push(format!("v1:{at}:{}", offset - at));
        pieces.push(format!(
            "@{}",
            write_file(files.path(), &format!("edit{i}"), &edit)
        ));
        at = offset + len;
    }
    if at < V1 {
        pieces.push(format!("v1:{at}:{}", V1 - at));
    }
    let v1_file = write_file(files.path(), "v1", &v1);
    json_of(&server.tern(
        &[
            "--json",
            "backup",
            "--container",
            "c",
            "--name",
            "v1",
            &v1_file,
        ],
        None,
    ));

    let proxy = FaultProxy::start(
        "127.0.0.1:0",
        server.address().parse().unwrap(),
        Faults::default(),
    )
    .unwrap();
    let mut synth = std::process::Command::new(tern_bin());
    synth
        .args(["--server", &proxy.addr().to_string()])
        .args(["--fingerprint", &server.fingerprint().to_string()])
        .args(["--json", "synth", "--container", "c", "--name", "v2-synth"])
        .args(pieces.iter().flat_map(|p| ["--from", p.as_str()]))
        .env("TERN_PASSWORD", PASSWORD)
        .env("TERN_CONFIG_DIR", server.data().join("client-config"));
    let built = json_of(&run_with_stdin(synth, None));
    let edited: u64 = EDITS.iter().map(|&(_, len)| len as u64).sum();
    assert_eq!(built["logical_bytes"], V1 as u64, "{built}");
    assert_eq!(built["literal_bytes"], edited, "{built}");
    let referenced = built["referenced_bytes"].as_u64().unwrap();
    let sliced = built["sliced_bytes"].as_u64().unwrap();
    assert_eq!(referenced + sliced + edited, V1 as u64, "{built}");
    assert!(sliced < 2 * EDITS.len() as u64 * (256 << 10), "{built}");

    // What crossed, TLS and all, against 1% of v2 plus the edits.
    let wire = proxy.bytes_to_server();
    let bound = V1 as u64 / 100 + edited;
    eprintln!("synthetic full of {V1} bytes: {wire} bytes crossed, {edited} edited, bound {bound}");
    assert!(
        wire <= bound,
        "{wire} bytes crossed to build a {V1}-byte synthetic full with {edited} edited bytes \
         (bound {bound})"
    );

    // Byte for byte the v2 a backup makes.
    let v2_file = write_file(files.path(), "v2", &v2);
    json_of(&server.tern(
        &[
            "--json",
            "backup",
            "--container",
            "c",
            "--name",
            "v2",
            &v2_file,
        ],
        None,
    ));
    let synth = read_image(&server, "v2-synth");
    assert!(synth == v2, "the synthetic full differs from v2");
    assert!(synth == read_image(&server, "v2"));
    assert_fsck_clean(&server);
}

#[test]
fn gc_and_a_source_deleted_during_a_synthetic_build_free_nothing_it_names() {
    let server = TestServer::start();
    let client = server.client();
    client.container_create("c", Default::default()).unwrap();
    let old = test_data(6 << 20, 301);
    let other = test_data(3 << 20, 302);
    for (name, data) in [("old", &old), ("other", &other)] {
        let mut w = client.create_image("c", name, b"").unwrap();
        w.write_all(data).unwrap();
        w.commit().unwrap();
    }
    let mut w = client.create_image("c", "synth", b"").unwrap();
    let mut expected = Vec::new();
    w.write_from("c", "old", 12_345, 4 << 20).unwrap();
    expected.extend_from_slice(&old[12_345..12_345 + (4 << 20)]);
    w.write_all(b"between the extents").unwrap();
    expected.extend_from_slice(b"between the extents");
    // The source goes, and GC runs while the image is still being written.
    client.image_remove("c", "old").unwrap();
    let gc = server.ternd(&["gc"]);
    assert!(gc.status.success(), "gc: {gc:?}");
    w.write_from("c", "other", 777, 1 << 20).unwrap();
    expected.extend_from_slice(&other[777..777 + (1 << 20)]);
    // A deleted source is refused, and the image goes on as it was.
    let refused = w.write_from("c", "old", 0, 1).unwrap_err();
    assert_eq!(
        refused.kind(),
        Some(tern_core::wire::ErrorKind::NotFound),
        "{refused}"
    );
    let refused = w.write_from("c", "other", 3 << 20, 1).unwrap_err();
    assert_eq!(
        refused.kind(),
        Some(tern_core::wire::ErrorKind::Invalid),
        "{refused}"
    );
    let done = w.commit().unwrap();
    assert_eq!(done.info.size, expected.len() as u64);
    client.image_remove("c", "other").unwrap();
    let gc = server.ternd(&["gc"]);
    assert!(gc.status.success(), "gc: {gc:?}");
    assert!(
        read_image(&server, "synth") == expected,
        "the synthetic image differs"
    );
    assert_fsck_clean(&server);
}

/// splitmix64, for reproducible plans.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn random_extent_plans_through_a_real_ternd_give_the_plan_applied_to_the_bytes() {
    let server = TestServer::start();
    let admin = server.client();
    admin.container_create("c", Default::default()).unwrap();
    admin.container_create("c2", Default::default()).unwrap();
    let sources: Vec<(&str, &str, Vec<u8>)> = vec![
        ("c", "a", test_data(3 << 20, 401)),
        ("c", "b", test_data(700_000, 402)),
        ("c2", "z", test_data(2 << 20, 403)),
    ];
    for (container, name, data) in &sources {
        let mut w = admin.create_image(container, name, b"").unwrap();
        w.write_all(data).unwrap();
        w.commit().unwrap();
    }
    let mut rng = 0x5eed_u64;
    for plan in 0..12 {
        let mode = if plan % 3 == 2 {
            tern_core::wire::WriteMode::Passthrough
        } else {
            tern_core::wire::WriteMode::Dedup
        };
        let client = tern_agent::Client::connect(&tern_agent::ClientOptions {
            mode,
            ..server.options()
        })
        .unwrap();
        let name = format!("plan-{plan}");
        let mut w = client.create_image("c", &name, b"").unwrap();
        let mut expected = Vec::new();
        for _ in 0..1 + next(&mut rng) % 10 {
            if next(&mut rng).is_multiple_of(3) {
                let bytes = test_data(1 + (next(&mut rng) % 200_000) as usize, next(&mut rng));
                w.write_all(&bytes).unwrap();
                expected.extend_from_slice(&bytes);
                continue;
            }
            let (container, source, data) = &sources[(next(&mut rng) % 3) as usize];
            let size = data.len() as u64;
            let offset = match next(&mut rng) % 3 {
                0 => 0,
                _ => next(&mut rng) % size,
            };
            let len = match next(&mut rng) % 4 {
                0 => size - offset,
                1 => (next(&mut rng) % 10).min(size - offset),
                _ => next(&mut rng) % (size - offset + 1),
            };
            let done = w.write_from(container, source, offset, len).unwrap();
            assert_eq!(
                done.referenced_bytes + done.sliced_bytes,
                len,
                "plan {plan}"
            );
            expected.extend_from_slice(&data[offset as usize..(offset + len) as usize]);
        }
        let done = w.commit().unwrap();
        assert_eq!(done.info.size, expected.len() as u64, "plan {plan}");
        assert!(
            read_image(&server, &name) == expected,
            "plan {plan} ({mode:?}): bytes differ"
        );
    }
    assert_fsck_clean(&server);
}
