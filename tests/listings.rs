//! Listings of any size, in pages: 5,000 copies and a full replication
//! trail (11,000 entries written, 10,001 kept) list whole through the CLI and the Rust API,
//! though neither fits one answer.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tern_test_support::*;

#[path = "replication_common.rs"]
mod common;
use common::*;

const COPIES: usize = 5000;
/// What a full trail holds: once 11,000 entries were written, every entry
/// written cuts it back to its newest `TRAIL_KEEP` (10,000) rows and itself.
const TRAIL_FULL: usize = 10_001;
/// Entries written to fill it.
const TRAIL_WRITTEN: usize = 11_000;

#[test]
fn five_thousand_copies_and_a_full_trail_list_whole_through_the_cli_and_rust() {
    let dir = tempfile::tempdir().unwrap();
    let config = "max_copies_per_partner = 64\n";
    std::fs::write(dir.path().join("ternd.toml"), config).unwrap();
    let mut pair = Pair::of(TestServer::start_with(dir, &[]), &[]);
    pair.pair().unwrap();
    let src = pair.source.client();
    backup(&src, "c", "a", b"", &test_data(1 << 16, 3));
    // The partner dies: its copies stay queued (one of them dials it now
    // and then), and each cancelled copy is a trail entry.
    pair.target.kill();
    let started = Instant::now();
    let first = queue_copies(&src, "a", COPIES);
    eprintln!("{COPIES} copies asked for in {:?}", started.elapsed());

    let copies = src.copy_list().unwrap();
    assert_eq!(copies.len(), COPIES);
    let out = pair.source.tern(&["--json", "copy", "ls"], None);
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        COPIES,
        "the CLI's copy ls"
    );

    // Fill the trail past what it keeps: 11,000 cancellations.
    let second = queue_copies(&src, "b", TRAIL_WRITTEN - COPIES);
    for id in first.into_iter().chain(second) {
        src.copy_cancel(id).unwrap();
    }
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("trail full after {:?}", started.elapsed());
    let trail = src.replication_history(20_000).unwrap();
    assert_eq!(trail.len(), TRAIL_FULL, "the Rust API's listing");
    // Each attempt once: none listed on two pages.
    let attempts: HashSet<_> = trail
        .iter()
        .map(|e| (e.copy, e.started, e.ended, e.result.to_string()))
        .collect();
    assert_eq!(attempts.len(), trail.len(), "entries listed twice");
    let out = pair.source.tern(
        &["--json", "replication", "history", "--max", "20000"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        TRAIL_FULL,
        "the CLI's trail"
    );
}
