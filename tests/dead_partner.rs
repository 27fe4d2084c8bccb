//! A dead partner costs nothing while it is dead: 5,000 copies queued to a
//! partner that accepts no connection leave the source idle (one copy dials
//! it now and then, not each on its own), and when the partner comes back,
//! they all run.

use std::time::{Duration, Instant};

use tern_agent::CopyState;
use tern_faultproxy::{FaultProxy, Faults};
use tern_test_support::*;

#[path = "replication_common.rs"]
mod common;
use common::*;

const COPIES: usize = 5000;
/// CPU the idle source may use over the window: 5% of a core.
const WINDOW: Duration = Duration::from_secs(30);

/// User plus system CPU seconds of a process so far, from /proc (Linux
/// counts them in USER_HZ, which is 100 on every architecture).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[test]
fn five_thousand_copies_to_a_dead_partner_leave_the_source_idle_and_run_when_it_returns() {
    let pair = Pair::new();
    let proxy = FaultProxy::start(
        "127.0.0.1:0",
        pair.target.address().parse().unwrap(),
        Faults::default(),
    )
    .unwrap();
    pair.pair_at(&proxy.addr().to_string()).unwrap();
    let src = pair.source.client();
    backup(&src, "c", "a", b"", &test_data(1 << 16, 5));

    // The partner accepts no connection from now on.
    proxy.set(Faults {
        refuse_new: true,
        ..Faults::default()
    });
    let started = Instant::now();
    let ids = queue_copies(&src, "a", COPIES);
    eprintln!("{COPIES} copies queued in {:?}", started.elapsed());
    // The attempts under way when the partner was found down end; this
    // client's session (its heartbeats) goes, so that only the queue counts.
    drop(src);
    std::thread::sleep(Duration::from_secs(3));

    let pid = pair.source.child.as_ref().unwrap().id();
    let (before, dials_before) = (cpu_seconds(pid), proxy.accepted());
    std::thread::sleep(WINDOW);
    let used = cpu_seconds(pid) - before;
    let dials = proxy.accepted() - dials_before;
    eprintln!(
        "idle source with {COPIES} copies to a dead partner: {used:.2} CPU s in {} s ({:.1}% of a core), {dials} dials",
        WINDOW.as_secs(),
        100.0 * used / WINDOW.as_secs_f64()
    );
    assert!(
        used < 0.05 * WINDOW.as_secs_f64(),
        "the source used {used:.2} CPU s in {} s with a dead partner",
        WINDOW.as_secs()
    );
    // One copy dials for all: a handful of dials, not one per copy.
    assert!(dials <= 10, "{dials} dials in {} s", WINDOW.as_secs());
    let src = pair.source.client();
    let queued = src.copy_list().unwrap();
    assert!(
        queued.iter().all(|c| c.state == CopyState::Queued),
        "a copy left the queue while its partner was down: {:?}",
        queued.iter().find(|c| c.state != CopyState::Queued)
    );

    // The partner comes back: the next dial finds it (within the longest
    // delay, a minute) and every copy runs.
    proxy.set(Faults::default());
    let back = Instant::now();
    wait_all_final(&src, ids.len());
    eprintln!(
        "all {COPIES} copies done {:?} after the partner came back",
        back.elapsed()
    );
    let dst = pair.target.client();
    let (images, _) = dst.image_list_all("dr", "").unwrap();
    assert_eq!(images.len(), COPIES);
}

/// Waits until `n` copies have ended, none of them failed (600 s at most).
fn wait_all_final(src: &tern_agent::Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let copies = src.copy_list().unwrap();
        let failed = copies
            .iter()
            .find(|c| matches!(c.state, CopyState::Failed | CopyState::Cancelled));
        assert!(failed.is_none(), "{failed:?}");
        let done = copies.iter().filter(|c| c.state.is_final()).count();
        if done == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} copies done 600 s after the partner came back"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
