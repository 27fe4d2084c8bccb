//! The C and C++ examples, built with the system compiler and run against a
//! real ternd, as a DMA would use libtern.

use std::process::Command;

use tern_test_support::*;

mod common;

use common::examples::*;

/// tern.h's promises to careful and old callers, checked by a C program
/// (ffi/tests/c/abi_promises.c): init never writes past a libtern 0.1
/// options struct, and freeing a handle keeps the last error.
#[test]
fn c_callers_old_options_are_not_overrun_and_errors_outlive_free() {
    let server = TestServer::start();
    let build = tempfile::tempdir().unwrap();
    let source = root().join("ffi/tests/c/abi_promises.c");
    let program = cc_source(&source, build.path());
    let alone = Command::new(&program).output().unwrap();
    assert_ok("abi_promises (no server)", &alone);
    let out = run(&server, &program, &[], None);
    assert_ok("abi_promises", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("after tern_image_free: ") && text.ends_with("ok\n"),
        "{text}"
    );
}

#[test]
fn c_backup_and_restore_round_trip_and_list_shows_the_image() {
    let server = TestServer::start();
    server
        .client()
        .container_create("c", Default::default())
        .unwrap();
    let build = tempfile::tempdir().unwrap();
    let backup = cc("backup.c", build.path());
    let restore = cc("restore.c", build.path());
    let list = cc("list.c", build.path());

    let data = test_data(7 << 20, 31);
    assert_ok(
        "backup",
        &run(&server, &backup, &["c", "from-c"], Some(&data)),
    );
    let out = run(&server, &restore, &["c", "from-c"], None);
    assert_ok("restore", &out);
    assert!(out.stdout == data, "restored bytes differ");

    let out = run(&server, &list, &["c"], None);
    assert_ok("list", &out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("from-c\tsize=7340032"), "{text}");
    assert!(text.contains("props=example-dma:backup.c"), "{text}");
    let out = run(&server, &list, &[], None);
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("c\tgroup=default\timages=1"));

    // Errors reach the C caller as a status and a message.
    let out = run(&server, &restore, &["c", "absent"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TERN_NOT_FOUND"));
}

#[test]
fn cpp_host_loads_the_library_at_run_time_and_round_trips_four_streams() {
    let server = TestServer::start();
    server
        .client()
        .container_create("dma", Default::default())
        .unwrap();
    let build = tempfile::tempdir().unwrap();
    let host = build.path().join("dma_host");
    let status = Command::new("c++")
        .arg("-std=c++17")
        .arg(format!("-I{}", root().join("include").display()))
        .arg(root().join("examples/dma_host.cpp"))
        .arg("-o")
        .arg(&host)
        .args(["-ldl", "-lpthread"])
        .status()
        .expect("running c++");
    assert!(status.success());
    let lib = libtern_so();
    let out = run(&server, &host, &["dma", lib.to_str().unwrap()], None);
    assert_ok("dma_host", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 streams round-tripped, 0 failed"));
    assert_eq!(
        server.client().image_list("dma", "stream-").unwrap().len(),
        4
    );
}

#[test]
fn the_makefile_builds_every_example_with_pkg_config() {
    let build = tempfile::tempdir().unwrap();
    let profile = target_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let status = Command::new("make")
        .arg("-C")
        .arg(root().join("examples"))
        .arg(format!("PROFILE={profile}"))
        .arg(format!("LIBDIR={}", libtern_dir().display()))
        .arg(format!("BUILD={}", build.path().display()))
        .status()
        .expect("running make");
    assert!(status.success());
    for bin in ["backup", "restore", "list", "synth", "recall", "dma_host"] {
        assert!(build.path().join(bin).exists(), "{bin} not built");
    }
    let pc = std::fs::read_to_string(build.path().join("tern.pc")).unwrap();
    assert!(pc.contains("-ltern"));
}

#[test]
fn c_examples_run_clean_under_valgrind() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return cannot_run("valgrind is not installed");
    }
    let server = TestServer::start();
    server
        .client()
        .container_create("c", Default::default())
        .unwrap();
    let build = tempfile::tempdir().unwrap();
    let backup = cc("backup.c", build.path());
    let restore = cc("restore.c", build.path());
    let valgrind = common::valgrind();
    let vg: Vec<&str> = valgrind.iter().map(String::as_str).collect();
    let data = test_data(1 << 20, 8);
    let out = run_wrapped(&server, Some(&vg), &backup, &["c", "vg"], Some(&data));
    assert_ok("backup under valgrind", &out);
    let out = run_wrapped(&server, Some(&vg), &restore, &["c", "vg"], None);
    assert_ok("restore under valgrind", &out);
    assert!(out.stdout == data);
}

/// examples/synth.c merges a full and an incremental (the changed blocks,
/// back to back) into a synthetic full from the DMA's runs, under valgrind:
/// the result is the new full byte for byte, and no run's data was sent.
#[test]
fn c_synth_builds_the_new_full_from_a_full_and_an_incremental_under_valgrind() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return cannot_run("valgrind is not installed");
    }
    let server = TestServer::start();
    let client = server.client();
    client.container_create("c", Default::default()).unwrap();
    let full = test_data(3 << 20, 61);
    let edits = [
        (10_001usize, 5_000usize),
        (1_500_000, 70_000),
        ((3 << 20) - 100, 100),
    ];
    let mut new_full = full.clone();
    let mut incr = Vec::new();
    let mut runs = String::new();
    let mut at = 0;
    for (i, &(offset, len)) in edits.iter().enumerate() {
        let changed = test_data(len, 70 + i as u64);
        new_full[offset..offset + len].copy_from_slice(&changed);
        runs += &format!("full {at} {}\nincr {} {len}\n", offset - at, incr.len());
        incr.extend_from_slice(&changed);
        at = offset + len;
    }
    for (name, data) in [("full", &full), ("incr", &incr)] {
        let mut w = client.create_image("c", name, b"").unwrap();
        std::io::Write::write_all(&mut w, data).unwrap();
        w.commit().unwrap();
    }
    let build = tempfile::tempdir().unwrap();
    let synth = cc("synth.c", build.path());
    let valgrind = common::valgrind();
    let vg: Vec<&str> = valgrind.iter().map(String::as_str).collect();
    let out = run_wrapped(
        &server,
        Some(&vg),
        &synth,
        &["c", "synthetic"],
        Some(runs.as_bytes()),
    );
    assert_ok("synth under valgrind", &out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("from 6 runs") && said.contains(" 0 bytes sent"),
        "{said}"
    );
    let mut back = Vec::new();
    let mut r = client.open_image("c", "synthetic").unwrap();
    std::io::Read::read_to_end(&mut r, &mut back).unwrap();
    assert!(
        back == new_full,
        "the synthetic full differs from the new full"
    );
    // A run past its source's end is refused, and the example says which.
    let out = run(
        &server,
        &synth,
        &["c", "bad"],
        Some(b"full 0 4096\nincr 0 999999999\n"),
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("run 1") && said.contains("TERN_INVALID_ARGUMENT"),
        "{said}"
    );
    assert!(
        client.image_list("c", "bad").unwrap().is_empty(),
        "the failed image was committed"
    );
}

#[test]
fn c_examples_see_no_error_through_a_link_cut_every_second() {
    use tern_faultproxy::{FaultProxy, Faults};
    let server = TestServer::start();
    server
        .client()
        .container_create("c", Default::default())
        .unwrap();
    let build = tempfile::tempdir().unwrap();
    let backup = cc("backup.c", build.path());
    let restore = cc("restore.c", build.path());
    let faults = Faults {
        cut_every: Some(std::time::Duration::from_secs(1)),
        // Slow enough that each direction takes seconds (4 connections at
        // 4 MiB/s): a faster link could finish between two cuts.
        per_connection_rate: Some(4 << 20),
        ..Faults::default()
    };
    let proxy =
        FaultProxy::start("127.0.0.1:0", server.address().parse().unwrap(), faults).unwrap();
    let address = proxy.addr().to_string();
    let data = test_data(32 << 20, 51);
    let out = run_at(&server, &address, None, &backup, &["c", "cut"], Some(&data));
    assert_ok("backup through cuts", &out);
    let out = run_at(&server, &address, None, &restore, &["c", "cut"], None);
    assert_ok("restore through cuts", &out);
    assert!(out.stdout == data, "restored bytes differ");
    assert!(
        proxy.cuts() >= 2,
        "the link was cut only {} times",
        proxy.cuts()
    );
}

/// A DMA that crashes mid-backup cannot say goodbye: its stream slot comes
/// back when its session's grace period ends on the server (as tern.h says),
/// and a clean exit gives it back at once.
#[test]
fn a_crashed_writers_stream_slot_comes_back_when_its_grace_period_ends() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), &["--grace-period", "3"]);
    let admin = server.client();
    let one_stream = tern_agent::ContainerSettings {
        stream_limit: Some(1),
        ..Default::default()
    };
    admin.container_create("c", one_stream).unwrap();
    let build = tempfile::tempdir().unwrap();
    let backup = cc("backup.c", build.path());
    let mut crashing = Command::new(&backup)
        .args([&server.address(), "c", "crashed"])
        .env("TERN_PASSWORD", PASSWORD)
        .env("TERN_FINGERPRINT", server.fingerprint().to_string())
        .env("TERN_CONFIG_DIR", server.data().join("client-config"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    crashing
        .stdin
        .as_mut()
        .unwrap()
        .write_all(&test_data(1 << 20, 3))
        .unwrap();
    // The slot is taken once the image exists.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match admin.create_image("c", "probe", b"") {
            Err(e) if e.kind() == Some(tern_core::wire::ErrorKind::Busy) => break,
            Ok(w) => drop(w),
            Err(e) => panic!("{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the C writer never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    crashing.kill().unwrap();
    crashing.wait().unwrap();
    let killed = std::time::Instant::now();
    // Still taken right after the crash: the server cannot tell a crash from an outage.
    let busy = admin.create_image("c", "too-early", b"");
    assert_eq!(
        busy.err().and_then(|e| e.kind()),
        Some(tern_core::wire::ErrorKind::Busy)
    );
    // Free once the 3 s grace period is over (with a little slack, never 600 s).
    let w = loop {
        match admin.create_image("c", "after", b"") {
            Ok(w) => break w,
            Err(e) if e.kind() == Some(tern_core::wire::ErrorKind::Busy) => {
                assert!(
                    killed.elapsed() < std::time::Duration::from_secs(10),
                    "the slot was still taken {:?} after the crash",
                    killed.elapsed()
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(killed.elapsed() >= std::time::Duration::from_secs(2));
    w.commit().unwrap();
}

/// A DMA killed mid-backup continues with `backup --resume`
/// (tern_image_resume): the server says how much it holds, the rest of the
/// stream goes, and the image reads back the same as one written in one go.
#[test]
fn a_c_backup_killed_midway_resumes_and_restores_identical() {
    c_backup_killed_midway_resumes(false);
}

/// The same when the killed DMA's connections stay open and silent (a power
/// cut behind a NAT that keeps the flow): the resume, started at once, takes
/// the image over without a retry.
#[test]
fn a_c_backup_killed_with_its_connections_left_open_resumes_at_once() {
    c_backup_killed_midway_resumes(true);
}

fn c_backup_killed_midway_resumes(half_open: bool) {
    use std::io::Write;
    let server = TestServer::start();
    let proxy = tern_faultproxy::FaultProxy::start(
        "127.0.0.1:0",
        server.address().parse().unwrap(),
        tern_faultproxy::Faults {
            keep_server_side: half_open,
            ..Default::default()
        },
    )
    .unwrap();
    let admin = server.client();
    admin.container_create("c", Default::default()).unwrap();
    let build = tempfile::tempdir().unwrap();
    let backup = cc("backup.c", build.path());
    let restore = cc("restore.c", build.path());
    let data = test_data(24 << 20, 17);
    let half = 12 << 20;
    let env = |c: &mut Command| {
        c.env("TERN_PASSWORD", PASSWORD)
            .env("TERN_FINGERPRINT", server.fingerprint().to_string())
            .env("TERN_CONFIG_DIR", server.data().join("client-config"));
    };
    let mut cmd = Command::new(&backup);
    cmd.args([&proxy.addr().to_string(), "c", "killed"]);
    env(&mut cmd);
    let mut crashing = cmd.stdin(std::process::Stdio::piped()).spawn().unwrap();
    crashing
        .stdin
        .as_mut()
        .unwrap()
        .write_all(&data[..half])
        .unwrap();
    // The writer now waits for more input: the server checkpoints the idle
    // image, and the part it holds durably shows as the resume offset.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, incomplete) = admin.image_list_all("c", "").unwrap();
        if incomplete.first().is_some_and(|i| i.resume_offset > 0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never checkpointed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    crashing.kill().unwrap();
    crashing.wait().unwrap();
    if half_open {
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            proxy.kept_connections() > 0,
            "the proxy closed the dead client's connections to the server"
        );
    }

    let started = std::time::Instant::now();
    let mut cmd = Command::new(&backup);
    cmd.args(["--resume", &server.address(), "c", "killed"]);
    env(&mut cmd);
    let out = run_with_stdin(cmd, Some(&data));
    assert_ok("backup --resume", &out);
    eprintln!("resumed and finished in {:?}", started.elapsed());
    let text = String::from_utf8_lossy(&out.stderr);
    let offset: u64 = text
        .split("resuming c/killed at offset ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume offset in: {text}"));
    assert!(offset > 0 && offset <= half as u64, "offset {offset}");
    assert!(
        text.contains(&format!("committed c/killed: {} bytes", data.len())),
        "{text}"
    );

    let out = run(&server, &restore, &["c", "killed"], None);
    assert_ok("restore", &out);
    assert!(
        out.stdout == data,
        "the resumed image differs from its input"
    );
    let (images, incomplete) = admin.image_list_all("c", "").unwrap();
    assert_eq!(images.len(), 1, "listed once");
    assert!(incomplete.is_empty(), "{incomplete:?}");
}

#[test]
fn c_copy_waits_for_the_replica_and_c_import_acknowledges_its_event() {
    use std::io::Write;
    let (target, source) = (TestServer::start(), TestServer::start());
    let t = target.client();
    t.user_add("partner", "partner-pw-1", false).unwrap();
    t.user_set_replicate_into("partner", &["default"]).unwrap();
    let replica = tern_agent::ContainerSettings {
        replica: true,
        import: true,
        ..Default::default()
    };
    t.container_create("dr", replica).unwrap();
    let s = source.client();
    s.container_create("c", Default::default()).unwrap();
    let data = test_data(3 << 20, 91);
    let mut w = s.create_image("c", "img", b"dma-catalog-entry").unwrap();
    w.write_all(&data).unwrap();
    w.commit().unwrap();
    let fp = target.fingerprint().to_string();
    s.partner_add(
        "site-b",
        &[&target.address()],
        &fp,
        "partner",
        "partner-pw-1",
    )
    .unwrap();

    let build = tempfile::tempdir().unwrap();
    let copy = cc("copy.c", build.path());
    let import = cc("import.c", build.path());
    let out = run(&source, &copy, &["c", "img", "site-b", "dr"], None);
    assert_ok("copy", &out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\ndone sent="), "{text}");
    let id: tern_agent::CopyId = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("copy "))
        .unwrap()
        .parse()
        .unwrap();

    let out = run(&target, &import, &["dr"], None);
    assert_ok("import", &out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("image=img\tsize=3145728\tprops=dma-catalog-entry\tfrom=c/img"),
        "{text}"
    );
    assert!(text.contains(&format!("copy={id}")), "{text}");
    assert!(text.ends_with("acknowledged 1\n"), "{text}");
    let again = run(&target, &import, &["dr"], None);
    assert!(String::from_utf8(again.stdout)
        .unwrap()
        .ends_with("acknowledged 0\n"));

    // The acknowledgement reaches the source's copy.
    let start = std::time::Instant::now();
    while s.copy_status(id).unwrap().state != tern_agent::CopyState::Imported {
        assert!(
            start.elapsed().as_secs() < 30,
            "the source never saw the import"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A copy into a container that is no replica fails, and copy.c says why.
    t.container_create("plain", Default::default()).unwrap();
    let out = run(&source, &copy, &["c", "img", "site-b", "plain"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a replica container"));
}

#[test]
fn twenty_images_with_64_kib_properties_list_in_pages_through_c_the_cli_and_rust() {
    let server = TestServer::start();
    let admin = server.client();
    admin.container_create("c", Default::default()).unwrap();
    // 20 x 64 KiB of properties: 1.3 MB, more than one answer may carry.
    let props = |i: usize| vec![b'a' + i as u8; tern_core::wire::MAX_PROPS_LEN];
    for i in 0..20 {
        let mut w = admin
            .create_image("c", &format!("img-{i:02}"), &props(i))
            .unwrap();
        std::io::Write::write_all(&mut w, b"data").unwrap();
        w.commit().unwrap();
    }
    let listed = admin.image_list("c", "").unwrap();
    assert_eq!(listed.len(), 20);
    for (i, info) in listed.iter().enumerate() {
        assert_eq!(info.name.as_str(), format!("img-{i:02}"));
        assert_eq!(info.props, props(i), "{}", info.name);
    }

    let build = tempfile::tempdir().unwrap();
    let list = cc("list.c", build.path());
    let out = run(&server, &list, &["c"], None);
    assert_ok("list", &out);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 20, "one line per image");
    for (i, line) in lines.iter().enumerate() {
        let want = String::from_utf8(props(i)).unwrap();
        assert!(line.starts_with(&format!("img-{i:02}\t")), "{i}");
        assert!(
            line.ends_with(&format!("props={want}")),
            "image {i}'s properties"
        );
    }

    let out = server.tern(&["ls", "--container", "c"], None);
    assert!(out.status.success(), "{out:?}");
    let names = String::from_utf8_lossy(&out.stdout);
    assert_eq!(names.matches("img-").count(), 20, "{names}");
}
