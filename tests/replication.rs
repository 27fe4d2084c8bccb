//! DMA-managed replication between two real ternd processes: a source that
//! copies images as a client of a target, replica containers, import events.

use std::time::Duration;

use tern_agent::{ContainerSettings, CopyState, CopyTarget, TrailResult, TrailSide};
use tern_test_support::*;

#[path = "replication_common.rs"]
mod common;
use common::*;

#[test]
fn a_copy_lands_whole_in_the_replica_container_and_raises_one_import_event() {
    let pair = Pair::new();
    pair.pair().unwrap();
    let src = pair.source.client();
    let data = test_data(24 << 20, 71);
    backup(&src, "c", "v1", b"dma-props\0\x01", &data);

    let id = src.copy_start("c", "v1", &to_dr()).unwrap();
    // Asking again while it runs (or is queued) finds the same copy.
    let again = src.copy_start("c", "v1", &to_dr()).unwrap();
    let info = wait_final(&src, id);
    assert_eq!(info.state, CopyState::Done, "{info:?}");
    assert_eq!(info.done_bytes, data.len() as u64);
    if again != id {
        // The first one may have ended before the second ask.
        wait_final(&src, again);
    }

    let dst = pair.target.client();
    assert!(restore(&dst, "dr", "v1") == data, "the replica differs");
    let listed = dst.image_list("dr", "").unwrap();
    assert_eq!(listed[0].props, b"dma-props\0\x01");

    let events = dst.events("dr", 1000).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.image.as_str(), "v1");
    assert_eq!(e.size, data.len() as u64);
    assert_eq!(e.props, b"dma-props\0\x01");
    assert_eq!(e.origin.copy, id);
    assert_eq!(e.origin.image.as_str(), "v1");
    // Unacknowledged events come back on every poll.
    assert_eq!(dst.events("dr", 1000).unwrap(), events);

    dst.events_ack("dr", &[e.id]).unwrap();
    dst.events_ack("dr", &[e.id]).unwrap();
    assert!(dst.events("dr", 1000).unwrap().is_empty());
    let unknown = dst.events_ack("dr", &[e.id + 1000]).unwrap_err();
    assert_eq!(unknown.kind(), Some(tern_core::wire::ErrorKind::NotFound));

    // The acknowledgement reaches the source.
    let imported = wait_for(&src, id, Duration::from_secs(30), |i| {
        i.state == CopyState::Imported
    });
    assert_eq!(imported.done_bytes, data.len() as u64);

    // Both sides keep the attempt in their trail.
    let src_trail = src.replication_history(10).unwrap();
    assert!(src_trail
        .iter()
        .any(|t| t.copy == id && t.result == TrailResult::Ok && t.side == TrailSide::Source));
    let dst_trail = dst.replication_history(10).unwrap();
    assert!(dst_trail
        .iter()
        .any(|t| t.copy == id && t.result == TrailResult::Ok && t.side == TrailSide::Target));
}

/// A synthetic full (extents of v1 and the edited bytes) holds short
/// chunks mid-recipe where the extents cut v1's chunks: the target takes
/// them, the copy sends only what the target lacks, and the replica reads
/// back as v2.
#[test]
fn a_synthetic_full_replicates_sending_only_what_the_target_lacks() {
    let pair = Pair::new();
    pair.pair().unwrap();
    let src = pair.source.client();
    let v1 = test_data(12 << 20, 74);
    backup(&src, "c", "v1", b"", &v1);
    let first = wait_final(&src, src.copy_start("c", "v1", &to_dr()).unwrap());
    assert_eq!(first.state, CopyState::Done);
    // Shorter than any chunk: a short chunk mid-recipe for certain.
    let edit = test_data(100, 75);
    let at = (5 << 20) + 12_345;
    let mut v2 = v1.clone();
    v2[at..at + edit.len()].copy_from_slice(&edit);
    let mut w = src.create_image("c", "v2", b"").unwrap();
    w.write_from("c", "v1", 0, at as u64).unwrap();
    std::io::Write::write_all(&mut w, &edit).unwrap();
    let rest = at + edit.len();
    w.write_from("c", "v1", rest as u64, (v1.len() - rest) as u64)
        .unwrap();
    w.commit().unwrap();
    let second = wait_final(&src, src.copy_start("c", "v2", &to_dr()).unwrap());
    assert_eq!(second.state, CopyState::Done, "{second:?}");
    assert!(
        second.sent_bytes < 1 << 20,
        "the synthetic v2 sent {} bytes",
        second.sent_bytes
    );
    assert!(restore(&pair.target.client(), "dr", "v2") == v2);
}

#[test]
fn a_second_version_sends_only_what_the_target_lacks() {
    let pair = Pair::new();
    pair.pair().unwrap();
    let src = pair.source.client();
    let v1 = test_data(16 << 20, 72);
    let mut v2 = v1.clone();
    v2[8 << 20..(8 << 20) + 65536].copy_from_slice(&test_data(65536, 73));
    backup(&src, "c", "v1", b"", &v1);
    backup(&src, "c", "v2", b"", &v2);
    let first = wait_final(&src, src.copy_start("c", "v1", &to_dr()).unwrap());
    assert_eq!(first.state, CopyState::Done);
    let second = wait_final(&src, src.copy_start("c", "v2", &to_dr()).unwrap());
    assert_eq!(second.state, CopyState::Done);
    assert!(
        second.sent_bytes * 20 < first.sent_bytes,
        "v2 sent {} bytes, v1 {}",
        second.sent_bytes,
        first.sent_bytes
    );
    assert!(restore(&pair.target.client(), "dr", "v2") == v2);
    // A target that holds every chunk receives only the recipe.
    let again = CopyTarget {
        name: Some("v1-again"),
        ..to_dr()
    };
    let third = wait_final(&src, src.copy_start("c", "v1", &again).unwrap());
    assert_eq!(third.state, CopyState::Done);
    assert_eq!((third.sent_chunks, third.sent_bytes), (0, 0), "{third:?}");
    assert!(restore(&pair.target.client(), "dr", "v1-again") == v1);
}

#[test]
fn clients_cannot_write_into_a_replica_container_not_even_an_admin() {
    let pair = Pair::new();
    let dst = pair.target.client();
    let err = dst
        .create_image("dr", "sneaky", b"")
        .err()
        .expect("an admin wrote into a replica container");
    assert_eq!(
        err.kind(),
        Some(tern_core::wire::ErrorKind::Denied),
        "{err}"
    );
    // Promoted, it is an ordinary container.
    dst.container_promote("dr").unwrap();
    backup(&dst, "dr", "now-ok", b"", b"data");
}

#[test]
fn bad_partners_and_bad_copies_fail_clearly_and_enter_the_trail() {
    let pair = Pair::new();
    let src = pair.source.client();
    let fp = pair.target.fingerprint().to_string();
    let addr = pair.target.address();

    let err = src
        .partner_add("x", &[&addr], &fp, "partner", "wrong-password")
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong password"), "{err}");
    let other = TestServer::start().fingerprint().to_string();
    let err = src
        .partner_add("x", &[&addr], &other, "partner", PARTNER_PASSWORD)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fingerprint") || err.contains("certificate"),
        "{err}"
    );
    let trail = src.replication_history(10).unwrap();
    assert!(
        trail.len() >= 2 && trail.iter().all(|t| t.result == TrailResult::Failed),
        "{trail:?}"
    );
    // The target saw the wrong partner password, and says so in its trail.
    let target_trail = pair.target.client().replication_history(10).unwrap();
    assert!(
        target_trail
            .iter()
            .any(|t| t.side == TrailSide::Target && t.reason.contains("wrong password")),
        "{target_trail:?}"
    );

    pair.pair().unwrap();
    let data = test_data(1 << 20, 74);
    backup(&src, "c", "img", b"", &data);
    // Unknown partner, container or image: refused at once.
    let unknown = |to: CopyTarget<'_>, c: &str, n: &str| src.copy_start(c, n, &to).unwrap_err();
    let e = unknown(
        CopyTarget {
            partner: "nope",
            ..to_dr()
        },
        "c",
        "img",
    );
    assert!(e.to_string().contains("nope"), "{e}");
    let e = unknown(to_dr(), "missing", "img");
    assert!(e.to_string().contains("missing"), "{e}");
    let e = unknown(to_dr(), "c", "missing");
    assert!(e.to_string().contains("missing"), "{e}");

    // Into an ordinary container: the copy fails, saying why.
    let t = pair.target.client();
    t.container_create("plain", ContainerSettings::default())
        .unwrap();
    let id = src
        .copy_start(
            "c",
            "img",
            &CopyTarget {
                container: "plain",
                ..to_dr()
            },
        )
        .unwrap();
    let info = wait_final(&src, id);
    assert_eq!(info.state, CopyState::Failed);
    assert!(
        info.reason.contains("not a replica container"),
        "{}",
        info.reason
    );

    // Into a replica container with other chunking: refused, naming both.
    let other = ContainerSettings {
        replica: true,
        chunking: Some(tern_core::ChunkParams {
            min: 4096,
            avg: 16384,
            max: 65536,
        }),
        ..Default::default()
    };
    t.container_create("small", other).unwrap();
    let id = src
        .copy_start(
            "c",
            "img",
            &CopyTarget {
                container: "small",
                ..to_dr()
            },
        )
        .unwrap();
    let info = wait_final(&src, id);
    assert_eq!(info.state, CopyState::Failed);
    assert!(
        info.reason.contains("chunking differs") && info.reason.contains("16384"),
        "{}",
        info.reason
    );
    let dst_trail = t.replication_history(10).unwrap();
    assert!(dst_trail.is_empty() || dst_trail.iter().all(|t| t.result != TrailResult::Ok));
}

#[test]
fn a_target_with_an_older_protocol_is_refused_naming_both_versions() {
    let pair = Pair::with_target_args(&["--protocol-max", "1"]);
    let err = pair.pair().unwrap_err().to_string();
    assert!(
        err.contains("version 1") && err.contains("version 2"),
        "{err}"
    );
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(ok(out).trim()).unwrap()
}

#[test]
fn the_cli_pairs_copies_waits_lists_events_and_a_container_policy_copies_new_images() {
    let pair = Pair::new();
    let (src, dst) = (&pair.source, &pair.target);
    let fp = dst.fingerprint().to_string();
    let address = dst.address();
    let added = src.tern(
        &[
            "partner",
            "add",
            "site-b",
            "--address",
            &address,
            "--fingerprint",
            &fp,
            "--user",
            "partner",
        ],
        Some(format!("{PARTNER_PASSWORD}\n").as_bytes()),
    );
    ok(&added);
    let partners = json(&src.tern(&["--json", "partner", "ls"], None));
    assert_eq!(partners[0]["name"], "site-b");
    assert_eq!(partners[0]["version"], tern_core::wire::PROTOCOL_MAX);

    let data = test_data(2 << 20, 75);
    backup(&src.client(), "c", "img", b"\x00\xffprops", &data);
    let copy = cli_copy(src, "img");
    assert_eq!(copy["state"], "done", "{copy}");
    assert_eq!(copy["logical_bytes"], data.len() as u64);
    let id = copy["id"].as_str().unwrap().to_string();
    the_cli_lists_and_acks_the_event(dst, &id);

    let status = json(&src.tern(&["--json", "copy", "status", &id], None));
    assert_eq!(status[0]["id"], id.as_str());
    let all = json(&src.tern(&["--json", "copy", "ls"], None));
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == id.as_str()));
    let history = json(&src.tern(&["--json", "replication", "history"], None));
    assert_eq!(history[0]["copy_id"], id.as_str());
    assert_eq!(history[0]["result"], "ok");

    a_policy_copies_new_images_until_it_is_off(src, dst);
    let bad = src.tern(&["copy", "status", "not-an-id"], None);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("copy id"));
}

/// `tern copy --wait` of image `name` of container `c` to site-b's `dr`.
fn cli_copy(src: &TestServer, name: &str) -> serde_json::Value {
    json(&src.tern(
        &[
            "--json",
            "copy",
            "--container",
            "c",
            "--name",
            name,
            "--to",
            "site-b",
            "--to-container",
            "dr",
            "--wait",
        ],
        None,
    ))
}

/// The copy's import event has every field and goes once acknowledged.
fn the_cli_lists_and_acks_the_event(dst: &TestServer, id: &str) {
    let events = json(&dst.tern(&["--json", "events", "--container", "dr"], None));
    let e = &events[0];
    for key in [
        "id",
        "time",
        "container",
        "image",
        "size",
        "props",
        "source_server",
        "source_container",
        "source_image",
        "copy_id",
    ] {
        assert!(!e[key].is_null(), "{key} missing: {e}");
    }
    assert_eq!(e["props"], "AP9wcm9wcw==");
    assert_eq!(e["copy_id"], id);
    assert_eq!(e["source_image"], "img");
    let event_id = e["id"].to_string();
    ok(&dst.tern(&["events", "ack", "--container", "dr", &event_id], None));
    let left = json(&dst.tern(&["--json", "events", "--container", "dr"], None));
    assert_eq!(left.as_array().unwrap().len(), 0);
}

/// A policy: new images of `c` are copied without being asked for, until
/// it is turned off.
fn a_policy_copies_new_images_until_it_is_off(src: &TestServer, dst: &TestServer) {
    ok(&src.tern(
        &[
            "container",
            "replicate",
            "c",
            "--to",
            "site-b",
            "--to-container",
            "dr",
        ],
        None,
    ));
    backup(&src.client(), "c", "auto", b"", &test_data(1 << 20, 76));
    let start = std::time::Instant::now();
    let target = dst.client();
    while target.image_list("dr", "auto").unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the policy copied nothing"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(&src.tern(&["container", "replicate", "c", "--off"], None));
    backup(&src.client(), "c", "manual", b"", &test_data(1 << 20, 77));
    // A policy queues its copy inside the commit: the copy list, read after
    // the commit returned, shows it if there is one. And a copy asked for
    // later, once done, has passed any copy queued before it.
    let copies = json(&src.tern(&["--json", "copy", "ls"], None));
    assert!(
        !copies
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["image"] == "manual"),
        "a copy of manual was queued with the policy off: {copies}"
    );
    backup(&src.client(), "c", "later", b"", &test_data(1 << 20, 78));
    let later = cli_copy(src, "later");
    assert_eq!(later["state"], "done", "{later}");
    assert!(target.image_list("dr", "manual").unwrap().is_empty());
}

#[test]
fn a_replica_of_a_locked_image_is_locked_alike_on_the_target() {
    let pair = Pair::new();
    pair.pair().unwrap();
    let src = pair.source.client();
    let lock = |days, mode| Some(tern_core::wire::RetentionLock { days, mode });
    src.container_lock("c", lock(30, tern_core::wire::LockMode::Compliance))
        .unwrap();
    let data = test_data(4 << 20, 79);
    backup(&src, "c", "v1", b"p", &data);
    let until = src.image_list("c", "").unwrap()[0].lock_until;
    assert!(until > 0, "the source image is not locked");

    let id = src.copy_start("c", "v1", &to_dr()).unwrap();
    assert_eq!(wait_final(&src, id).state, CopyState::Done);

    // The target's container has no lock of its own: the replica carries
    // its source's end and mode.
    let dst = pair.target.client();
    let replica = &dst.image_list("dr", "").unwrap()[0];
    assert_eq!(replica.lock_until, until, "{replica:?}");
    let locked = |e: tern_agent::ClientError| {
        assert_eq!(e.kind(), Some(tern_core::wire::ErrorKind::Locked), "{e}");
    };
    locked(dst.image_remove("dr", "v1").unwrap_err());
    locked(dst.image_remove_bypassing_lock("dr", "v1").unwrap_err());
    locked(dst.image_set_props("dr", "v1", b"other").unwrap_err());
    // GC after the attempts frees nothing of it.
    let gc = pair.target.ternd(&["gc"]);
    assert!(gc.status.success(), "{gc:?}");
    assert!(restore(&dst, "dr", "v1") == data, "the replica differs");

    // A governance lock travels as governance: the target's admin may
    // delete the replica by bypassing it, and only so.
    src.container_create("g", ContainerSettings::default())
        .unwrap();
    src.container_lock("g", lock(7, tern_core::wire::LockMode::Governance))
        .unwrap();
    backup(&src, "g", "v2", b"", &data);
    let id = src.copy_start("g", "v2", &to_dr()).unwrap();
    assert_eq!(wait_final(&src, id).state, CopyState::Done);
    locked(dst.image_remove("dr", "v2").unwrap_err());
    dst.image_remove_bypassing_lock("dr", "v2").unwrap();
    assert_eq!(dst.image_list("dr", "").unwrap().len(), 1);
}
