//! Replication over a bad WAN: shaping groups (fair shares, a window's
//! boundary on an injected clock, rate 0 pauses), a user's backups drawing
//! from a group, and a partner with two paths whose first is black-holed.
//! Real ternd processes; the fault proxy stands in for the paths.

use std::time::{Duration, Instant};

use tern_agent::{Client, CopyId, CopyState};
use tern_core::wire::{ShapingSettings, ShapingWindow};
use tern_faultproxy::{FaultProxy, Faults};
use tern_test_support::*;

#[path = "replication_common.rs"]
mod common;
use common::*;

const MB: f64 = 1e6;

fn group(rate: u64, windows: &[&str], timezone: &str) -> ShapingSettings {
    ShapingSettings {
        rate,
        windows: windows
            .iter()
            .map(|w| w.parse::<ShapingWindow>().unwrap())
            .collect(),
        timezone: timezone.into(),
    }
}

/// Bytes each copy has sent, now.
fn sent(src: &Client, ids: &[CopyId]) -> Vec<u64> {
    ids.iter()
        .map(|id| src.copy_status(*id).unwrap().sent_bytes)
        .collect()
}

/// Each copy's rate over the next `secs`, in bytes per second.
fn rates_over(src: &Client, ids: &[CopyId], secs: u64) -> Vec<f64> {
    let a = sent(src, ids);
    std::thread::sleep(Duration::from_secs(secs));
    let b = sent(src, ids);
    a.iter()
        .zip(b)
        .map(|(a, b)| (b - a) as f64 / secs as f64)
        .collect()
}

#[test]
fn two_copies_in_a_20_mb_s_group_each_get_half_and_the_group_stays_within_it() {
    let pair = Pair::new();
    pair.pair().unwrap();
    let src = pair.source.client();
    src.shaping_set("wan", group(20_000_000, &[], "UTC"))
        .unwrap();
    src.partner_set("site-b", None, None, Some("wan")).unwrap();
    for (i, name) in ["a", "b"].iter().enumerate() {
        backup(
            &src,
            "c",
            name,
            b"",
            &incompressible(240 << 20, 200 + i as u64),
        );
    }
    let ids: Vec<CopyId> = ["a", "b"]
        .iter()
        .map(|n| src.copy_start("c", n, &to_dr()).unwrap())
        .collect();
    wait_for(&src, ids[1], Duration::from_secs(30), |i| i.sent_bytes > 0);
    std::thread::sleep(Duration::from_secs(1));
    for window in 0..2 {
        let r = rates_over(&src, &ids, 5);
        let sum: f64 = r.iter().sum();
        eprintln!(
            "5 s window {window}: {:.2} + {:.2} = {:.2} MB/s",
            r[0] / MB,
            r[1] / MB,
            sum / MB
        );
        for (i, rate) in r.iter().enumerate() {
            assert!(
                (8.0 * MB..=12.0 * MB).contains(rate),
                "copy {i} moved {:.2} MB/s, not 10 MB/s ± 20%",
                rate / MB
            );
        }
        assert!(sum <= 21.0 * MB, "the group moved {:.2} MB/s", sum / MB);
    }
    let list = src.shaping_list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].rate_now, list[0].jobs),
        (20_000_000, 2),
        "{list:?}"
    );
    assert!(
        list[0].throughput > 15_000_000 && list[0].throughput <= 21_000_000,
        "{list:?}"
    );
    assert_eq!(list[0].partners, ["site-b"]);
    for id in &ids {
        src.copy_cancel(*id).unwrap();
    }
    // A ninth group is refused; a group in use cannot be removed.
    for i in 1..8 {
        src.shaping_set(&format!("g{i}"), group(1_000_000, &[], ""))
            .unwrap();
    }
    let ninth = src.shaping_set("g9", group(1, &[], "")).unwrap_err();
    assert!(ninth.to_string().contains("at most 8"), "{ninth}");
    let in_use = src.shaping_remove("wan").unwrap_err();
    assert!(in_use.to_string().contains("site-b"), "{in_use}");
    src.shaping_remove("g7").unwrap();
}

#[test]
fn the_shaping_and_partner_commands_work_as_documented() {
    let pair = Pair::new();
    pair.pair().unwrap();
    let tern = |args: &[&str]| {
        let out = pair.source.tern(args, None);
        assert!(
            out.status.success(),
            "tern {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    tern(&[
        "shaping",
        "set",
        "wan",
        "--rate",
        "20MB/s",
        "--window",
        "mon-fri 07:00-19:00=5MB/s",
        "--window",
        "sat,sun 00:00-24:00=50MB/s",
        "--timezone",
        "UTC",
    ]);
    tern(&[
        "partner",
        "set",
        "site-b",
        "--shaping",
        "wan",
        "--connections",
        "2",
    ]);
    let ls: serde_json::Value = serde_json::from_str(&tern(&["--json", "shaping", "ls"])).unwrap();
    let g = &ls[0];
    assert_eq!(g["name"], "wan");
    assert_eq!(g["rate"], 20_000_000);
    assert_eq!(g["windows"][0], "mon,tue,wed,thu,fri 07:00-19:00=5MB/s");
    assert!([5_000_000, 20_000_000, 50_000_000].contains(&g["rate_now"].as_u64().unwrap()));
    assert_eq!(g["partners"][0], "site-b");
    let human = tern(&["shaping", "ls"]);
    assert!(
        human.contains("wan") && human.contains("last 10 s"),
        "{human}"
    );
    let partners: serde_json::Value =
        serde_json::from_str(&tern(&["--json", "partner", "ls"])).unwrap();
    assert_eq!(partners[0]["connections"], 2);
    assert_eq!(partners[0]["shaping"], "wan");
    // A group in use is not removed; out of use it is.
    let out = pair.source.tern(&["shaping", "rm", "wan"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("site-b"));
    let bad = pair
        .source
        .tern(&["shaping", "set", "x", "--rate", "5XB/s"], None);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unit"));
    let zone = pair.source.tern(
        &[
            "shaping",
            "set",
            "x",
            "--rate",
            "1MB/s",
            "--timezone",
            "Not/A_Zone",
        ],
        None,
    );
    assert!(!zone.status.success() && String::from_utf8_lossy(&zone.stderr).contains("time zone"));
    tern(&["partner", "set", "site-b", "--no-shaping"]);
    tern(&["shaping", "rm", "wan"]);
    assert_eq!(tern(&["--json", "shaping", "ls"]).trim(), "[]");
}

/// Monday 2026-11-23 07:00:00 UTC.
const MONDAY_7: i64 = 1_795_417_200;

#[test]
fn the_rate_follows_a_window_boundary_within_2_s_and_rate_0_pauses_until_a_change() {
    let mut pair = Pair::new();
    pair.pair().unwrap();
    {
        let src = pair.source.client();
        backup(&src, "c", "big", b"", &incompressible(400 << 20, 210));
        let settings = group(20_000_000, &["mon 07:00-08:00=5MB/s"], "UTC");
        src.shaping_set("wan", settings).unwrap();
        src.partner_set("site-b", None, None, Some("wan")).unwrap();
    }
    // The source reads its windows on a clock 8 s before 07:00 on a Monday.
    pair.source.kill();
    let start = MONDAY_7 - 8;
    pair.source.args = vec!["--shaping-clock".into(), start.to_string()];
    pair.source.spawn();
    let started = Instant::now();
    let src = pair.source.client();
    let id = src.copy_start("c", "big", &to_dr()).unwrap();
    wait_for(&src, id, Duration::from_secs(30), |i| i.sent_bytes > 0);
    let before = rates_over(&src, &[id], 3)[0];
    let boundary = Duration::from_secs(8);
    assert!(
        started.elapsed() < boundary,
        "setup took {:?}: the boundary passed before the measurement ended",
        started.elapsed()
    );
    std::thread::sleep(boundary + Duration::from_secs(2) - started.elapsed());
    let after = rates_over(&src, &[id], 3)[0];
    eprintln!(
        "before 07:00: {:.2} MB/s; from 2 s after: {:.2} MB/s",
        before / MB,
        after / MB
    );
    assert!(before > 16.0 * MB, "{:.2} MB/s before 07:00", before / MB);
    assert!(
        (4.0 * MB..=6.0 * MB).contains(&after),
        "{:.2} MB/s after 07:00",
        after / MB
    );
    let g = &src.shaping_list().unwrap()[0];
    assert_eq!(g.rate_now, 5_000_000);
    assert!(g.window_now.contains("07:00-08:00"), "{g:?}");
    let info = src.copy_status(id).unwrap();
    assert_eq!(info.rate, 5_000_000, "{info:?}");
    assert_eq!(info.path, pair.target.address());

    // The window's rate goes to 0: the copy parks, shown as paused.
    let paused = group(20_000_000, &["mon 07:00-08:00=0"], "UTC");
    src.shaping_set("wan", paused).unwrap();
    let info = wait_for(&src, id, Duration::from_secs(2), |i| i.paused);
    assert_eq!(info.state, CopyState::Running);
    std::thread::sleep(Duration::from_millis(500));
    let parked = rates_over(&src, &[id], 3)[0];
    assert!(parked < 0.2 * MB, "{:.2} MB/s while paused", parked / MB);
    // And goes on by itself when the group allows again.
    src.shaping_set("wan", group(50_000_000, &[], "UTC"))
        .unwrap();
    wait_for(&src, id, Duration::from_secs(2), |i| !i.paused);
    let info = wait_final(&src, id);
    assert_eq!(info.state, CopyState::Done, "{info:?}");
}

#[test]
fn a_users_backups_draw_from_their_shaping_group() {
    let server = TestServer::start();
    let admin = server.client();
    admin.user_add("dma", "dma-password-1", false).unwrap();
    admin.user_set("dma", Some(&["default"]), None).unwrap();
    admin
        .container_create("c", tern_agent::ContainerSettings::default())
        .unwrap();
    admin.shaping_set("lan", group(8_000_000, &[], "")).unwrap();
    admin.user_set_shaping("dma", Some("lan")).unwrap();
    let mut opts = server.options();
    opts.user = "dma".into();
    opts.password = "dma-password-1".into();
    let dma = Client::connect(&opts).unwrap();
    let data = incompressible(40 << 20, 220);
    let t = Instant::now();
    backup(&dma, "c", "shaped", b"", &data);
    let rate = data.len() as f64 / t.elapsed().as_secs_f64();
    eprintln!("backup through an 8 MB/s group: {:.2} MB/s", rate / MB);
    assert!(rate <= 8.8 * MB, "{:.2} MB/s", rate / MB);
    let t = Instant::now();
    assert!(restore(&dma, "c", "shaped") == data);
    let read = data.len() as f64 / t.elapsed().as_secs_f64();
    eprintln!("restore through an 8 MB/s group: {:.2} MB/s", read / MB);
    assert!(read <= 8.8 * MB, "restore at {:.2} MB/s", read / MB);
    // Out of the group (from the next login), it runs at full speed.
    admin.user_set_shaping("dma", None).unwrap();
    let dma = Client::connect(&opts).unwrap();
    let t = Instant::now();
    backup(&dma, "c", "free", b"", &incompressible(40 << 20, 221));
    let free = data.len() as f64 / t.elapsed().as_secs_f64();
    assert!(free > rate * 1.5, "{:.2} MB/s unshaped", free / MB);
}

#[test]
fn a_copy_whose_first_path_is_black_holed_finishes_over_the_second_and_the_next_copy_fails_back() {
    let pair = Pair::new();
    let target: std::net::SocketAddr = pair.target.address().parse().unwrap();
    let limited = Faults {
        link_rate: Some(8 << 20),
        ..Faults::default()
    };
    let first = FaultProxy::start("127.0.0.1:0", target, limited.clone()).unwrap();
    let second = FaultProxy::start("127.0.0.1:0", target, limited).unwrap();
    let (a1, a2) = (first.addr().to_string(), second.addr().to_string());
    pair.source
        .client()
        .partner_add(
            "site-b",
            &[&a1, &a2],
            &pair.target.fingerprint().to_string(),
            "partner",
            PARTNER_PASSWORD,
        )
        .unwrap();
    let src = pair.source.client();
    let data = incompressible(96 << 20, 230);
    backup(&src, "c", "x", b"", &data);
    let id = src.copy_start("c", "x", &to_dr()).unwrap();
    let info = wait_for(&src, id, Duration::from_secs(30), |i| {
        i.sent_bytes > 16 << 20
    });
    assert_eq!(info.path, a1, "{info:?}");
    // The first path drops everything from now on: no reset, no packets.
    first.stall();
    let cut = Instant::now();
    let on_second = wait_for(&src, id, Duration::from_secs(30), |i| {
        i.path == a2 || i.state.is_final()
    });
    let switched = cut.elapsed();
    eprintln!("the copy went on over the second path {switched:?} after the first went silent");
    assert!(
        switched <= Duration::from_secs(10),
        "{switched:?}: {on_second:?}"
    );
    let info = wait_final(&src, id);
    assert_eq!(info.state, CopyState::Done, "{info:?}");
    assert!(second.bytes_to_server() > 0);
    let crossed = first.bytes_to_server() + second.bytes_to_server();
    eprintln!(
        "{:.3}x the image crossed over both paths",
        crossed as f64 / data.len() as f64
    );
    assert!(
        crossed <= data.len() as u64 * 11 / 10 + (16 << 20),
        "{crossed} bytes crossed for {} bytes",
        data.len()
    );
    assert!(restore(&pair.target.client(), "dr", "x") == data);

    // The first path is back: the next copy uses it again.
    first.resume();
    let before = first.bytes_to_server();
    backup(&src, "c", "y", b"", &incompressible(8 << 20, 231));
    let id = src.copy_start("c", "y", &to_dr()).unwrap();
    assert_eq!(wait_final(&src, id).state, CopyState::Done);
    assert!(
        first.bytes_to_server() > before + (4 << 20),
        "the next copy did not fail back to the first path"
    );
}
