//! The calls a backup application's plugin relies on, through the C ABI:
//! capacity, the header's promises on errors and buffers, containers,
//! progress. Calls during an outage are in outages.rs.

mod common;

use std::ffi::CString;
use std::ptr::{null, null_mut};

use common::frozen::*;
use common::*;
use tern::*;
use tern_test_support::*;

#[test]
fn capacity_matches_tern_stats_and_closed_clients_say_so() {
    let server = TestServer::start();
    let (c, img) = client_and_image(&server, "i");
    let data: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert_eq!(
        unsafe { tern_image_write(img, data.as_ptr(), data.len()) },
        tern_status::TERN_OK
    );
    assert_eq!(
        unsafe { tern_image_commit(img, null_mut()) },
        tern_status::TERN_OK
    );
    unsafe { tern_image_free(img) };

    let mut cap: tern_capacity = unsafe { std::mem::zeroed() };
    cap.struct_size = std::mem::size_of::<tern_capacity>();
    assert_eq!(
        unsafe { tern_client_capacity(c, &mut cap) },
        tern_status::TERN_OK,
        "{}",
        last_error()
    );
    let out = server.tern(&["--json", "stats"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cap.total_bytes, stats["capacity_bytes"].as_u64().unwrap());
    assert_eq!(cap.used_bytes, stats["pack_bytes"].as_u64().unwrap());
    assert_eq!(cap.logical_bytes, stats["logical_bytes"].as_u64().unwrap());
    assert_eq!(cap.logical_bytes, data.len() as u64);
    assert!((cap.dedup_ratio - stats["dedup_ratio"].as_f64().unwrap()).abs() < 1e-9);
    assert!((cap.compression_ratio - stats["compression_ratio"].as_f64().unwrap()).abs() < 1e-9);
    // Free space moves with the filesystem; it is below the total and not 0 here.
    assert!(cap.free_bytes > 0 && cap.free_bytes < cap.total_bytes);

    // An older caller's shorter struct gets only its fields.
    let mut short: tern_capacity = unsafe { std::mem::zeroed() };
    short.struct_size = std::mem::offset_of!(tern_capacity, free_bytes);
    assert_eq!(
        unsafe { tern_client_capacity(c, &mut short) },
        tern_status::TERN_OK
    );
    assert_eq!(short.free_bytes, 0, "wrote past the caller's struct_size");
    assert_eq!(short.used_bytes, cap.used_bytes);

    // After close, capacity says TERN_CLOSED like every other call.
    assert_eq!(unsafe { tern_client_close(c) }, tern_status::TERN_OK);
    assert_eq!(
        unsafe { tern_client_capacity(c, &mut cap) },
        tern_status::TERN_CLOSED
    );
    unsafe { tern_client_free(c) };
}

#[test]
fn the_header_contract_holds() {
    let server = TestServer::start();
    let c = open(&server);
    let name = CString::new("c").unwrap();
    // tern_last_error is the most recent call's: "" after a success.
    assert_eq!(
        unsafe { tern_container_create(c, null()) },
        tern_status::TERN_NULL_POINTER
    );
    assert!(!last_error().is_empty());
    assert_eq!(
        unsafe { tern_container_create(c, name.as_ptr()) },
        tern_status::TERN_OK
    );
    assert_eq!(last_error(), "");
    // Names as the header states them.
    for bad in [".", "..", "a..b", "", "tab\there"] {
        let bad = CString::new(bad).unwrap();
        assert_eq!(
            unsafe { tern_container_create(c, bad.as_ptr()) },
            tern_status::TERN_INVALID_ARGUMENT,
            "{bad:?}"
        );
    }
    let props = b"dma-props";
    let image = CString::new("i").unwrap();
    let mut img = null_mut();
    assert_eq!(
        unsafe {
            tern_image_create(
                c,
                name.as_ptr(),
                image.as_ptr(),
                props.as_ptr(),
                props.len(),
                &mut img,
            )
        },
        tern_status::TERN_OK
    );
    // Properties: NULL with 0 asks for the length; NULL with room is a NULL pointer.
    let mut len = 0usize;
    assert_eq!(
        unsafe { tern_image_properties(img, null_mut(), 0, &mut len) },
        tern_status::TERN_BUFFER_TOO_SMALL
    );
    assert_eq!(len, props.len());
    assert_eq!(
        unsafe { tern_image_properties(img, null_mut(), 64, &mut len) },
        tern_status::TERN_NULL_POINTER
    );
    // A write refused for its arguments leaves the image committable.
    assert_eq!(
        unsafe { tern_image_write(img, null(), 5) },
        tern_status::TERN_NULL_POINTER
    );
    assert_eq!(
        unsafe { tern_image_write(img, b"hello".as_ptr(), 5) },
        tern_status::TERN_OK
    );
    assert_eq!(
        unsafe { tern_image_commit(img, null_mut()) },
        tern_status::TERN_OK
    );
    unsafe { tern_image_free(img) };

    // A write that fails past the checks loses the image: later calls say closed.
    let o = {
        let mut o = options(&server);
        o.raw.call_timeout_ms = 300;
        o.raw.cache_memory_bytes = 1 << 20;
        o.raw.cache_disk_bytes = TERN_CACHE_DISK_OFF;
        o
    };
    let mut c2 = null_mut();
    assert_eq!(
        unsafe { tern_client_open(&o.raw, &mut c2) },
        tern_status::TERN_OK
    );
    let lost = CString::new("lost").unwrap();
    let mut img = null_mut();
    assert_eq!(
        unsafe { tern_image_create(c2, name.as_ptr(), lost.as_ptr(), null(), 0, &mut img) },
        tern_status::TERN_OK
    );
    let frozen = Frozen::server(&server);
    let st = write_until_refused(img as usize);
    assert_eq!(st, tern_status::TERN_TIMEOUT, "{}", last_error());
    drop(frozen);
    assert_eq!(
        unsafe { tern_image_write(img, b"more".as_ptr(), 4) },
        tern_status::TERN_CLOSED
    );
    assert!(last_error().contains("lost"), "{}", last_error());
    assert_eq!(
        unsafe { tern_image_commit(img, null_mut()) },
        tern_status::TERN_CLOSED
    );
    assert_eq!(unsafe { tern_image_abort(img) }, tern_status::TERN_OK);
    unsafe {
        tern_image_free(img);
        tern_client_free(c2);
        tern_client_free(c);
    }
}

#[test]
fn containers_tell_their_settings_and_go_and_properties_change() {
    let server = TestServer::start();
    let c = open(&server);
    let name = CString::new("c").unwrap();
    assert_eq!(
        unsafe { tern_container_create(c, name.as_ptr()) },
        tern_status::TERN_OK
    );
    unsafe extern "C" fn keep(ctx: *mut std::ffi::c_void, info: *const tern_container_info) -> i32 {
        let seen = unsafe { &mut *(ctx as *mut Vec<(u32, u32, u32, i32, u32)>) };
        let i = unsafe { &*info };
        seen.push((
            i.chunk_min,
            i.chunk_avg,
            i.chunk_max,
            i.zstd_level,
            i.stream_limit,
        ));
        0
    }
    let mut seen: Vec<(u32, u32, u32, i32, u32)> = Vec::new();
    let ctx = &mut seen as *mut _ as *mut std::ffi::c_void;
    assert_eq!(
        unsafe { tern_container_list(c, Some(keep), ctx) },
        tern_status::TERN_OK
    );
    let info = server.client().container_list().unwrap();
    let want = &info[0];
    assert_eq!(
        seen,
        vec![(
            want.chunking.min,
            want.chunking.avg,
            want.chunking.max,
            want.zstd_level,
            want.stream_limit
        )]
    );

    // Properties of a committed image change through the C ABI.
    let image = CString::new("i").unwrap();
    let mut img = null_mut();
    assert_eq!(
        unsafe {
            tern_image_create(
                c,
                name.as_ptr(),
                image.as_ptr(),
                b"v1".as_ptr(),
                2,
                &mut img,
            )
        },
        tern_status::TERN_OK
    );
    assert_eq!(
        unsafe { tern_image_commit(img, null_mut()) },
        tern_status::TERN_OK
    );
    unsafe { tern_image_free(img) };
    let set = |p: &[u8]| unsafe {
        tern_image_set_properties(c, name.as_ptr(), image.as_ptr(), p.as_ptr(), p.len())
    };
    assert_eq!(
        set(b"version two"),
        tern_status::TERN_OK,
        "{}",
        last_error()
    );
    let listed = server.client().image_list("c", "").unwrap();
    assert_eq!(listed[0].props, b"version two");
    assert_eq!(
        set(&vec![0u8; TERN_MAX_PROPS_LEN + 1]),
        tern_status::TERN_INVALID_ARGUMENT
    );
    let missing = CString::new("nope").unwrap();
    assert_eq!(
        unsafe { tern_image_set_properties(c, name.as_ptr(), missing.as_ptr(), null(), 0) },
        tern_status::TERN_NOT_FOUND
    );

    // Under a retention lock the image can be neither deleted nor changed.
    let lock = tern_core::wire::RetentionLock {
        days: 1,
        mode: tern_core::wire::LockMode::Governance,
    };
    server.client().container_lock("c", Some(lock)).unwrap();
    assert_eq!(
        unsafe { tern_image_delete(c, name.as_ptr(), image.as_ptr()) },
        tern_status::TERN_LOCKED
    );
    assert!(last_error().contains("retention lock"), "{}", last_error());
    assert_eq!(set(b"version three"), tern_status::TERN_LOCKED);
    server.client().container_lock("c", None).unwrap();

    // A container with images stays; an empty one goes.
    assert_eq!(
        unsafe { tern_container_remove(c, name.as_ptr()) },
        tern_status::TERN_INVALID_ARGUMENT
    );
    assert_eq!(
        unsafe { tern_image_delete(c, name.as_ptr(), image.as_ptr()) },
        tern_status::TERN_OK
    );
    assert_eq!(
        unsafe { tern_container_remove(c, name.as_ptr()) },
        tern_status::TERN_OK
    );
    assert_eq!(
        unsafe { tern_container_remove(c, name.as_ptr()) },
        tern_status::TERN_NOT_FOUND
    );
    unsafe { tern_client_free(c) };
}

/// What the progress callback saw: every report, and whether one came while
/// another ran.
#[derive(Default)]
struct Seen {
    reports: Vec<tern_progress>,
    image: usize,
    nested_calls: u32,
}

unsafe extern "C" fn on_progress(ctx: *mut std::ffi::c_void, p: *const tern_progress) {
    let seen = unsafe { &mut *(ctx as *mut Seen) };
    seen.reports.push(unsafe { *p });
    // A call on the same image from the callback works and reports nothing.
    let mut size = 0u64;
    if unsafe { tern_image_size(seen.image as *const tern_image, &mut size) }
        == tern_status::TERN_OK
    {
        seen.nested_calls += 1;
    }
}

#[test]
fn progress_is_reported_on_the_calling_thread_per_mib_and_at_commit() {
    let server = TestServer::start();
    let (c, img) = client_and_image(&server, "p");
    let mut seen = Seen {
        image: img as usize,
        ..Default::default()
    };
    let ctx = &mut seen as *mut Seen as *mut std::ffi::c_void;
    assert_eq!(
        unsafe { tern_image_set_progress(img, Some(on_progress), ctx) },
        tern_status::TERN_OK
    );
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    for piece in data.chunks(256 << 10) {
        assert_eq!(
            unsafe { tern_image_write(img, piece.as_ptr(), piece.len()) },
            tern_status::TERN_OK
        );
    }
    let mut stats: tern_image_statistics = unsafe { std::mem::zeroed() };
    stats.struct_size = std::mem::size_of::<tern_image_statistics>();
    assert_eq!(
        unsafe { tern_image_commit(img, &mut stats) },
        tern_status::TERN_OK
    );
    // About one report per MiB written, one at commit; never more than asked.
    let writes = seen.reports.iter().filter(|r| r.committed == 0).count();
    assert!((6..=9).contains(&writes), "{writes} reports for 8 MiB");
    assert!(seen
        .reports
        .windows(2)
        .all(|w| w[0].written_bytes <= w[1].written_bytes && w[0].sent_bytes <= w[1].sent_bytes));
    let last = seen.reports.last().unwrap();
    assert_eq!(last.committed, 1);
    assert_eq!(last.written_bytes, data.len() as u64);
    assert_eq!(last.stored_bytes, stats.new_bytes);
    assert_eq!(last.sent_bytes, stats.sent_bytes);
    assert_eq!(seen.nested_calls as usize, seen.reports.len());
    assert_eq!(last.struct_size, std::mem::size_of::<tern_progress>());
    unsafe {
        tern_image_free(img);
        tern_client_free(c);
    }
}

#[test]
fn container_flags_say_replica_and_import() {
    let server = TestServer::start();
    let admin = server.client();
    let settings = |replica, import| tern_agent::ContainerSettings {
        replica,
        import,
        ..Default::default()
    };
    admin
        .container_create("plain", settings(false, false))
        .unwrap();
    admin
        .container_create("rep", settings(true, false))
        .unwrap();
    admin.container_create("imp", settings(true, true)).unwrap();
    unsafe extern "C" fn keep(ctx: *mut std::ffi::c_void, info: *const tern_container_info) -> i32 {
        let seen = unsafe { &mut *(ctx as *mut Vec<(String, u32)>) };
        let i = unsafe { &*info };
        let name = unsafe { std::ffi::CStr::from_ptr(i.name) };
        seen.push((name.to_string_lossy().into_owned(), i.flags));
        0
    }
    let c = open(&server);
    let mut seen: Vec<(String, u32)> = Vec::new();
    let ctx = &mut seen as *mut _ as *mut std::ffi::c_void;
    assert_eq!(
        unsafe { tern_container_list(c, Some(keep), ctx) },
        tern_status::TERN_OK
    );
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("imp".into(), TERN_CONTAINER_REPLICA | TERN_CONTAINER_IMPORT),
            ("plain".into(), 0),
            ("rep".into(), TERN_CONTAINER_REPLICA),
        ]
    );
    unsafe { tern_client_free(c) };
}

/// tern_image_suspend: the image stays incomplete, its handle is closed for
/// writing, and tern_image_resume continues it at the offset it gave.
#[test]
fn a_suspended_image_is_closed_here_and_resumes_at_the_offset_given() {
    let server = TestServer::start();
    let (c, img) = client_and_image(&server, "s");
    let data = test_data(3 << 20, 12);
    let mut offset = u64::MAX;
    assert_eq!(
        unsafe { tern_image_suspend(null_mut(), &mut offset) },
        tern_status::TERN_NULL_POINTER
    );
    assert_eq!(
        unsafe { tern_image_suspend(img, null_mut()) },
        tern_status::TERN_NULL_POINTER
    );
    assert_eq!(
        unsafe { tern_image_write(img, data.as_ptr(), 2 << 20) },
        tern_status::TERN_OK
    );
    assert_eq!(
        unsafe { tern_image_suspend(img, &mut offset) },
        tern_status::TERN_OK,
        "{}",
        last_error()
    );
    assert!(
        ((2 << 20) - (256 << 10)..=2 << 20).contains(&offset),
        "suspended at {offset}"
    );
    assert_eq!(
        unsafe { tern_image_write(img, data.as_ptr(), 1) },
        tern_status::TERN_CLOSED
    );
    assert!(
        last_error().contains("suspended at offset"),
        "{}",
        last_error()
    );
    unsafe { tern_image_free(img) };

    let (container, name) = (CString::new("c").unwrap(), CString::new("s").unwrap());
    let mut again = null_mut();
    let mut at = 0;
    assert_eq!(
        unsafe { tern_image_resume(c, container.as_ptr(), name.as_ptr(), &mut again, &mut at) },
        tern_status::TERN_OK,
        "{}",
        last_error()
    );
    assert_eq!(at, offset);
    let rest = &data[at as usize..];
    assert_eq!(
        unsafe { tern_image_write(again, rest.as_ptr(), rest.len()) },
        tern_status::TERN_OK
    );
    assert_eq!(
        unsafe { tern_image_commit(again, null_mut()) },
        tern_status::TERN_OK
    );
    unsafe { tern_image_free(again) };

    // A reader cannot be suspended.
    let mut reader = null_mut();
    assert_eq!(
        unsafe { tern_image_open(c, container.as_ptr(), name.as_ptr(), &mut reader) },
        tern_status::TERN_OK
    );
    assert_eq!(
        unsafe { tern_image_suspend(reader, &mut offset) },
        tern_status::TERN_WRONG_STATE
    );
    let mut back = vec![0u8; data.len()];
    let mut got = 0;
    assert_eq!(
        unsafe { tern_image_read(reader, 0, back.as_mut_ptr(), back.len(), &mut got) },
        tern_status::TERN_OK
    );
    assert!(got == data.len() && back == data);
    unsafe { tern_image_free(reader) };
    unsafe { tern_client_free(c) };
}
