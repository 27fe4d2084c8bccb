//! Replication through faults: a link cut every second, `kill -9` of either
//! server mid-copy, a cancel mid-copy, and import events across restarts.

use std::time::Duration;

use tern_agent::{Client, CopyId, CopyState, TrailResult, TrailSide};
use tern_faultproxy::{FaultProxy, Faults};
use tern_test_support::*;

#[path = "replication_common.rs"]
mod common;
use common::*;

/// A pair whose source reaches the target through a proxy limited to
/// `rate` bytes per second, so a copy of a few MiB takes seconds.
fn slow_pair(rate: u64) -> (Pair, FaultProxy) {
    let pair = Pair::new();
    let proxy = FaultProxy::start(
        "127.0.0.1:0",
        pair.target.address().parse().unwrap(),
        Faults {
            link_rate: Some(rate),
            ..Faults::default()
        },
    )
    .unwrap();
    pair.pair_at(&proxy.addr().to_string()).unwrap();
    (pair, proxy)
}

fn assert_fsck_clean(server: &TestServer, side: &str) {
    let out = server.ternd(&["fsck"]);
    assert!(
        out.status.success(),
        "fsck of the {side}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pack files hold nothing twice: their size is the stored chunks plus framing.
fn assert_each_chunk_stored_once(server: &TestServer) {
    let stats = server.client().stats().unwrap();
    let overhead = stats.unique_chunks * (44 + 49) + 4096 * 64;
    assert!(
        stats.pack_bytes <= stats.stored_bytes + overhead,
        "packs hold {} bytes for {} stored bytes: something was stored twice",
        stats.pack_bytes,
        stats.stored_bytes
    );
}

/// Waits until the copy has moved some bytes (it is mid-copy).
fn wait_mid_copy(src: &Client, id: CopyId) {
    wait_for(src, id, Duration::from_secs(60), |i| {
        assert!(
            !i.state.is_final(),
            "the copy ended before the fault: {i:?}"
        );
        i.state == CopyState::Running && i.done_bytes > 0
    });
}

#[test]
fn a_copy_through_a_link_cut_every_second_completes_and_stores_each_chunk_once() {
    let (pair, proxy) = slow_pair(6 << 20);
    let src = pair.source.client();
    let data = test_data(24 << 20, 81);
    backup(&src, "c", "cut", b"p", &data);
    proxy.set(Faults {
        link_rate: Some(6 << 20),
        cut_every: Some(Duration::from_secs(1)),
        ..Faults::default()
    });
    let id = src.copy_start("c", "cut", &to_dr()).unwrap();
    let info = wait_final(&src, id);
    assert_eq!(info.state, CopyState::Done, "{info:?}");
    assert!(
        proxy.cuts() >= 2,
        "the link was cut only {} times",
        proxy.cuts()
    );
    assert!(restore(&pair.target.client(), "dr", "cut") == data);
    assert_each_chunk_stored_once(&pair.target);
    assert_fsck_clean(&pair.source, "source");
    assert_fsck_clean(&pair.target, "target");
}

#[test]
fn a_copy_resumes_on_its_own_after_the_target_is_killed_and_restarted() {
    let (mut pair, _proxy) = slow_pair(4 << 20);
    let src = pair.source.client();
    let data = test_data(24 << 20, 82);
    backup(&src, "c", "k", b"", &data);
    let id = src.copy_start("c", "k", &to_dr()).unwrap();
    wait_mid_copy(&src, id);
    pair.target.kill();
    std::thread::sleep(Duration::from_millis(500));
    pair.target.spawn();
    let info = wait_final(&src, id);
    assert_eq!(info.state, CopyState::Done, "{info:?}");
    assert!(info.attempts >= 2, "{info:?}");
    assert!(restore(&pair.target.client(), "dr", "k") == data);
    assert_eq!(pair.target.client().events("dr", 10).unwrap().len(), 1);
    assert_fsck_clean(&pair.source, "source");
    assert_fsck_clean(&pair.target, "target");
}

#[test]
fn a_copy_resumes_from_the_catalog_after_the_source_is_killed_and_restarted() {
    let (mut pair, _proxy) = slow_pair(4 << 20);
    let data = test_data(24 << 20, 83);
    let id = {
        let src = pair.source.client();
        backup(&src, "c", "k", b"", &data);
        let id = src.copy_start("c", "k", &to_dr()).unwrap();
        wait_mid_copy(&src, id);
        id
    };
    pair.source.kill();
    pair.source.spawn();
    let src = pair.source.client();
    let info = wait_final(&src, id);
    assert_eq!(info.state, CopyState::Done, "{info:?}");
    let dst = pair.target.client();
    assert!(restore(&dst, "dr", "k") == data);
    assert_eq!(dst.events("dr", 10).unwrap().len(), 1, "one event, not two");
    assert_fsck_clean(&pair.source, "source");
    assert_fsck_clean(&pair.target, "target");
}

#[test]
fn a_cancelled_copy_stops_within_two_seconds_and_leaves_nothing_on_the_target() {
    let (pair, _proxy) = slow_pair(2 << 20);
    let src = pair.source.client();
    let data = test_data(24 << 20, 84);
    backup(&src, "c", "x", b"", &data);
    let id = src.copy_start("c", "x", &to_dr()).unwrap();
    wait_mid_copy(&src, id);
    src.copy_cancel(id).unwrap();
    let info = wait_for(&src, id, Duration::from_secs(2), |i| i.state.is_final());
    assert_eq!(info.state, CopyState::Cancelled, "{info:?}");
    let dst = pair.target.client();
    assert!(dst.image_list("dr", "").unwrap().is_empty());
    assert!(dst.events("dr", 10).unwrap().is_empty());
    // The target drops the replica (its trail says so); what arrived
    // before the cancel is garbage then, and the next GC takes it.
    let start = std::time::Instant::now();
    while !dst
        .replication_history(10)
        .unwrap()
        .iter()
        .any(|t| t.copy == id && t.side == TrailSide::Target && t.result == TrailResult::Failed)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the target kept the cancelled replica open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let gc = pair.target.ternd(&["gc"]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let stats = dst.stats().unwrap();
    assert!(
        stats.pack_bytes < 1 << 20,
        "{} bytes stay in packs after gc: {}",
        stats.pack_bytes,
        String::from_utf8_lossy(&gc.stdout)
    );
    let again = src.copy_cancel(id).unwrap_err();
    assert!(again.to_string().contains("ended"), "{again}");
}

#[test]
fn import_events_survive_a_restart_and_acknowledged_ones_never_return() {
    let mut pair = Pair::new();
    pair.pair().unwrap();
    let src = pair.source.client();
    for name in ["a", "b"] {
        backup(&src, "c", name, name.as_bytes(), &test_data(1 << 20, 85));
        let id = src.copy_start("c", name, &to_dr()).unwrap();
        assert_eq!(wait_final(&src, id).state, CopyState::Done);
    }
    pair.target.kill();
    pair.target.spawn();
    let dst = pair.target.client();
    let events = dst.events("dr", 10).unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.image.as_str()).collect();
    assert_eq!(names, ["a", "b"], "oldest first");
    assert!(events[0].id < events[1].id);
    dst.events_ack("dr", &[events[0].id]).unwrap();
    drop(dst);
    pair.target.kill();
    pair.target.spawn();
    let left = pair.target.client().events("dr", 10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].image.as_str(), "b");
}

#[test]
fn at_most_four_copies_run_at_once_per_partner_and_the_rest_wait_queued() {
    let (pair, _proxy) = slow_pair(2 << 20);
    let src = pair.source.client();
    let names: Vec<String> = (0..6).map(|i| format!("img{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        backup(&src, "c", name, b"", &test_data(3 << 20, 90 + i as u64));
    }
    for name in &names {
        src.copy_start("c", name, &to_dr()).unwrap();
    }
    let start = std::time::Instant::now();
    let mut queued_behind_four = false;
    loop {
        let list = src.copy_list().unwrap();
        let running = list
            .iter()
            .filter(|c| c.state == CopyState::Running)
            .count();
        assert!(running <= 4, "{running} copies ran at once");
        queued_behind_four |= running == 4 && list.iter().any(|c| c.state == CopyState::Queued);
        if list.iter().all(|c| c.state.is_final()) {
            assert!(list.iter().all(|c| c.state == CopyState::Done), "{list:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{list:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(queued_behind_four, "no copy ever waited for a slot");
}

#[test]
fn a_partner_whose_import_poll_stalls_delays_no_copy_to_another_partner() {
    let pair = Pair::new();
    let target = pair.target.address().parse().unwrap();
    let proxy = FaultProxy::start("127.0.0.1:0", target, Faults::default()).unwrap();
    pair.pair_at(&proxy.addr().to_string()).unwrap();
    // A second target, honest and reached directly, as `site-c`.
    let other = TestServer::start();
    let o = other.client();
    o.user_add("partner", PARTNER_PASSWORD, false).unwrap();
    o.user_set_replicate_into("partner", &["default"]).unwrap();
    let replica = tern_agent::ContainerSettings {
        replica: true,
        ..Default::default()
    };
    o.container_create("dr", replica).unwrap();
    let src = pair.source.client();
    let fp = other.fingerprint().to_string();
    src.partner_add(
        "site-c",
        &[&other.address()],
        &fp,
        "partner",
        PARTNER_PASSWORD,
    )
    .unwrap();

    // A copy into site-b's import container: done, its event not yet
    // acknowledged, so the source asks site-b about it every 3 s.
    backup(&src, "c", "a", b"", &test_data(1 << 20, 7));
    let id = src.copy_start("c", "a", &to_dr()).unwrap();
    assert_eq!(wait_final(&src, id).state, CopyState::Done);
    // site-b goes mute (connections open, nothing passes): the next poll
    // hangs until the client's own limits end it.
    proxy.stall();
    std::thread::sleep(Duration::from_secs(4));

    let to_c = tern_agent::CopyTarget {
        partner: "site-c",
        container: "dr",
        name: None,
    };
    let started = std::time::Instant::now();
    let id = src.copy_start("c", "a", &to_c).unwrap();
    let info = wait_final(&src, id);
    let took = started.elapsed();
    eprintln!("a copy to site-c while site-b's import poll hung: {took:?}");
    assert_eq!(info.state, CopyState::Done, "{info:?}");
    assert!(
        took < Duration::from_secs(5),
        "the copy to site-c waited {took:?} behind site-b"
    );
    proxy.resume();
}
