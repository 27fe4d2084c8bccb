//! Copies that continue where they stopped: after `kill -9` of the target
//! (at several points of the copy), `kill -9` of the source, and an outage
//! longer than the target's grace period, a copy of incompressible data
//! finishes by itself and sends (TLS and all, as counted by the fault proxy)
//! little more than an uncut copy: a cut target keeps even what it wrote
//! after its last checkpoint, so only what had not reached its packs (a
//! session window's worth at most) crosses twice; the other cuts stay within 1.1 times the image plus the
//! in-flight window, even when GC runs on the target while the copy is away.
//! `tern copy abort` drops what the copy left on both sides, and GC frees it.

use std::time::{Duration, Instant};

use tern_agent::{CopyId, CopyState, TrailResult, TrailSide};
use tern_faultproxy::{FaultProxy, Faults};

#[path = "replication_common.rs"]
mod common;
use common::*;

const IMAGE: usize = 256 << 20;
/// What may cross twice besides the 10%: the target checkpoints a replica
/// every 16 MiB (what it received since is lost in a crash), plus what the
/// link and the session queues hold at the cut.
const WINDOW: u64 = 24 << 20;
/// What a cut by `kill -9` of the target may cost over an uncut copy beyond
/// the bytes that had crossed but never reached its packs (those were in the
/// session's queues and windows, and are resent by design): recipes, frame
/// and TLS overhead, and chunks cut at the pack's end. Everything the target
/// had written to its packs it keeps, checkpointed or not.
const KILL_SLACK: u64 = 4 << 20;
/// Fast enough for CI, slow enough to cut the copy halfway.
const RATE: u64 = 32 << 20;

fn pair_through_proxy(target_args: &[&str]) -> (Pair, FaultProxy) {
    let pair = Pair::with_target_args(target_args);
    let proxy = FaultProxy::start(
        "127.0.0.1:0",
        pair.target.address().parse().unwrap(),
        Faults {
            link_rate: Some(RATE),
            ..Faults::default()
        },
    )
    .unwrap();
    pair.pair_at(&proxy.addr().to_string()).unwrap();
    (pair, proxy)
}

/// Backs up an incompressible image on the source and starts its copy.
fn start_copy(pair: &Pair, name: &str, seed: u64) -> (Vec<u8>, CopyId) {
    let src = pair.source.client();
    let data = incompressible(IMAGE, seed);
    backup(&src, "c", name, b"props", &data);
    let id = src.copy_start("c", name, &to_dr()).unwrap();
    (data, id)
}

/// Waits until the proxy has carried `bytes` towards the target.
fn wait_sent(proxy: &FaultProxy, bytes: u64) {
    let start = Instant::now();
    while proxy.bytes_to_server() < bytes {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {} bytes crossed in 120 s",
            proxy.bytes_to_server()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The copy is done, its replica restores byte for byte, and the bytes
/// that crossed stay within 1.1x the image plus the window.
fn assert_done_without_resending(pair: &Pair, proxy: &FaultProxy, id: CopyId, data: &[u8]) {
    let info = wait_for(&pair.source.client(), id, Duration::from_secs(240), |i| {
        i.state.is_final()
    });
    assert_eq!(info.state, CopyState::Done, "{info:?}");
    let sent = proxy.bytes_to_server();
    let bound = IMAGE as u64 + IMAGE as u64 / 10 + WINDOW;
    eprintln!(
        "copy of {} MiB: {:.1} MiB crossed ({:.3}x), {} attempts",
        IMAGE >> 20,
        sent as f64 / f64::from(1 << 20),
        sent as f64 / IMAGE as f64,
        info.attempts
    );
    assert!(
        sent <= bound,
        "{sent} bytes crossed for a {IMAGE}-byte image (bound {bound}): the copy resent \
         what the target had"
    );
    let name = info.to_name.as_str();
    assert!(restore(&pair.target.client(), "dr", name) == data);
    let events = pair.target.client().events("dr", 10).unwrap();
    assert_eq!(events.len(), 1, "one import event: {events:?}");
    for (server, side) in [(&pair.source, "source"), (&pair.target, "target")] {
        let out = server.ternd(&["fsck"]);
        assert!(
            out.status.success(),
            "fsck of the {side}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn a_copy_cut_by_kill_9_of_the_source_finishes_without_resending() {
    let (mut pair, proxy) = pair_through_proxy(&[]);
    let (data, id) = start_copy(&pair, "s", 172);
    wait_sent(&proxy, IMAGE as u64 / 2);
    pair.source.kill();
    pair.source.spawn();
    assert_done_without_resending(&pair, &proxy, id, &data);
}

#[test]
fn a_copy_cut_by_an_outage_longer_than_the_grace_period_finishes_without_resending() {
    // The target gives a silent session 3 s; the outage lasts 15 s, so the
    // copy's session is gone when the link comes back.
    let (pair, proxy) = pair_through_proxy(&["--grace-period", "3"]);
    let (data, id) = start_copy(&pair, "o", 173);
    wait_sent(&proxy, IMAGE as u64 / 2);
    proxy.stall();
    std::thread::sleep(Duration::from_secs(15));
    let trail = pair.target.client().replication_history(10).unwrap();
    assert!(
        trail.iter().all(|t| t.copy != id),
        "the target ended the replica in the outage: {trail:?}"
    );
    // What arrived is protected from GC while the copy is away.
    let gc = pair.target.ternd(&["gc"]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    proxy.resume();
    assert_done_without_resending(&pair, &proxy, id, &data);
}

#[test]
fn copy_abort_drops_the_partial_replica_on_both_sides_and_gc_frees_it() {
    let (mut pair, proxy) = pair_through_proxy(&[]);
    let (_, id) = start_copy(&pair, "a", 174);
    wait_sent(&proxy, IMAGE as u64 / 2);
    // The target dies mid-copy and comes back: it keeps what it had
    // checkpointed, for the copy to continue (slowly: the abort comes first).
    pair.target.kill();
    proxy.set(Faults {
        link_rate: Some(1 << 20),
        ..Faults::default()
    });
    pair.target.spawn();
    let dst = pair.target.client();
    let (_, partial) = dst.image_list_all("dr", "").unwrap();
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert!(partial[0].resume_offset >= 64 << 20, "{partial:?}");

    let out = pair.source.tern(&["copy", "abort", &id.to_string()], None);
    assert!(
        out.status.success(),
        "tern copy abort: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = pair.source.client().copy_status(id).unwrap();
    assert_eq!(info.state, CopyState::Cancelled, "{info:?}");
    let (images, partial) = dst.image_list_all("dr", "").unwrap();
    assert!(
        images.is_empty() && partial.is_empty(),
        "{images:?} {partial:?}"
    );
    let trail = dst.replication_history(10).unwrap();
    assert!(
        trail.iter().any(|t| t.copy == id
            && t.side == TrailSide::Target
            && t.result == TrailResult::Failed),
        "{trail:?}"
    );
    let gc = pair.target.ternd(&["gc"]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let stats = dst.stats().unwrap();
    assert!(
        stats.pack_bytes < 1 << 20,
        "{} bytes stay in the target's packs after gc",
        stats.pack_bytes
    );
    // Nothing is left to abort: the target says so.
    let again = dst.copy_abort(id).unwrap_err();
    assert!(again.to_string().contains("no copy"), "{again}");
}

/// A copy cut by `kill -9` of the target early, midway, late and just
/// after a 16 MiB step resends, every time, no more than what had crossed
/// without reaching the target's packs plus [`KILL_SLACK`]: whatever the
/// target wrote to its packs survives the crash. Each copy finishes by
/// itself and its replica restores byte for byte.
#[test]
fn a_copy_cut_by_kill_9_of_the_target_at_any_point_resends_little() {
    let (mut pair, proxy) = pair_through_proxy(&[]);
    let (_, id) = start_copy(&pair, "uncut", 180);
    let info = wait_for(&pair.source.client(), id, Duration::from_secs(240), |i| {
        i.state.is_final()
    });
    assert_eq!(info.state, CopyState::Done, "{info:?}");
    let uncut = proxy.bytes_to_server();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    for (i, at) in [0.1, 0.5, 0.9, 0.25 + 1.0 / 64.0].into_iter().enumerate() {
        let name = format!("k{i}");
        let (data, id) = start_copy(&pair, &name, 181 + i as u64);
        let before = proxy.bytes_to_server();
        let packs_before = pair.target.pack_bytes();
        wait_sent(&proxy, before + (IMAGE as f64 * at) as u64);
        pair.target.kill();
        let crossed = proxy.bytes_to_server() - before;
        // What the killed target had written (its page cache survives).
        let written = pair.target.pack_bytes() - packs_before;
        let unwritten = crossed.saturating_sub(written);
        pair.target.spawn();
        let (_, partial) = pair.target.client().image_list_all("dr", "").unwrap();
        let durable = partial.first().map_or(0, |p| p.resume_offset);
        let info = wait_for(&pair.source.client(), id, Duration::from_secs(240), |i| {
            i.state.is_final()
        });
        assert_eq!(info.state, CopyState::Done, "{info:?}");
        let sent = proxy.bytes_to_server() - before;
        eprintln!(
            "kill -9 at {:.1}%: {:.1} MiB had crossed, {:.1} MiB of them not yet in the packs, \
             the recipe checkpointed to {:.1} MiB; {:.1} MiB crossed in all, {:+.1} MiB against \
             the uncut copy, {} attempts",
            at * 100.0,
            mib(crossed),
            mib(unwritten),
            mib(durable),
            mib(sent),
            mib(sent) - mib(uncut),
            info.attempts
        );
        assert!(
            sent <= uncut + unwritten + KILL_SLACK,
            "cut at {at}: {sent} bytes crossed, an uncut copy {uncut}: more resent than the \
             {unwritten} that had not reached the target's packs and {KILL_SLACK}"
        );
        assert!(restore(&pair.target.client(), "dr", &name) == data);
    }
    let events = pair.target.client().events("dr", 10).unwrap();
    assert_eq!(events.len(), 5, "one import event per copy: {events:?}");
    let out = pair.target.ternd(&["fsck"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fsck of the target: {report}");
}
