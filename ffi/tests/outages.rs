//! Calls on a server that stops answering, through the C ABI: abort and
//! cancel end calls stuck in an outage, a call past its time limit returns
//! TERN_TIMEOUT, and an open against a mute server fails within its
//! handshake limit.

mod common;

use std::ffi::CString;
use std::ptr::{null, null_mut};

use common::frozen::*;
use common::*;
use tern::*;
use tern_test_support::*;

/// Options whose sends block as soon as 1 MiB is unacknowledged.
fn small_cache(server: &TestServer) -> Opts {
    let mut o = options(server);
    o.raw.cache_memory_bytes = 1 << 20;
    o.raw.cache_disk_bytes = TERN_CACHE_DISK_OFF;
    o
}

#[test]
fn abort_and_cancel_end_calls_stuck_in_an_outage_within_a_second() {
    let server = TestServer::start();
    let o = small_cache(&server);
    let mut c = null_mut();
    assert_eq!(
        unsafe { tern_client_open(&o.raw, &mut c) },
        tern_status::TERN_OK
    );
    let name = CString::new("c").unwrap();
    assert_eq!(
        unsafe { tern_container_create(c, name.as_ptr()) },
        tern_status::TERN_OK
    );
    let create = |image: &str| {
        let image = CString::new(image).unwrap();
        let mut img = null_mut();
        let st =
            unsafe { tern_image_create(c, name.as_ptr(), image.as_ptr(), null(), 0, &mut img) };
        assert_eq!(st, tern_status::TERN_OK, "{}", last_error());
        img as usize
    };
    let (stuck, other) = (create("stuck"), create("other"));

    let frozen = Frozen::server(&server);
    // One thread writes until its call blocks (the server answers nothing).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send((write_until_refused(stuck), last_error()));
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_secs(3)).is_err(),
        "the writer was not stuck"
    );
    // Another aborts the image: both return within a second.
    let started = std::time::Instant::now();
    let st = unsafe { tern_image_abort(stuck as *mut tern_image) };
    assert_eq!(st, tern_status::TERN_OK, "{}", last_error());
    let (written, msg) = rx
        .recv_timeout(std::time::Duration::from_secs(1))
        .expect("the stuck write did not return within 1 s of the abort");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(written, tern_status::TERN_CANCELLED, "{msg}");

    // A client call stuck in the outage ends with tern_client_cancel, and so
    // does a write on another image.
    let c_addr = c as usize;
    let (tx, rx) = std::sync::mpsc::channel();
    let lister = tx.clone();
    std::thread::spawn(move || {
        unsafe extern "C" fn each(_: *mut std::ffi::c_void, _: *const tern_container_info) -> i32 {
            0
        }
        let st =
            unsafe { tern_container_list(c_addr as *const tern_client, Some(each), null_mut()) };
        let _ = lister.send(("list", st));
    });
    std::thread::spawn(move || {
        let _ = tx.send(("write", write_until_refused(other)));
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_secs(2)).is_err(),
        "not stuck"
    );
    let started = std::time::Instant::now();
    assert_eq!(unsafe { tern_client_cancel(c) }, tern_status::TERN_OK);
    for _ in 0..2 {
        let (what, st) = rx
            .recv_timeout(std::time::Duration::from_secs(1))
            .expect("a stuck call did not return within 1 s of the cancel");
        assert_eq!(st, tern_status::TERN_CANCELLED, "{what}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    drop(frozen);
    unsafe {
        tern_image_free(stuck as *mut tern_image);
        tern_image_free(other as *mut tern_image);
        tern_client_free(c);
    }
}

#[test]
fn a_call_past_its_time_limit_returns_timeout_and_the_client_goes_on() {
    let server = TestServer::start();
    let mut o = options(&server);
    o.raw.call_timeout_ms = 500;
    let mut c = null_mut();
    assert_eq!(
        unsafe { tern_client_open(&o.raw, &mut c) },
        tern_status::TERN_OK
    );
    unsafe extern "C" fn each(_: *mut std::ffi::c_void, _: *const tern_container_info) -> i32 {
        0
    }
    let frozen = Frozen::server(&server);
    let started = std::time::Instant::now();
    let st = unsafe { tern_container_list(c, Some(each), null_mut()) };
    let took = started.elapsed();
    assert_eq!(st, tern_status::TERN_TIMEOUT, "{}", last_error());
    assert!(
        took >= std::time::Duration::from_millis(450) && took < std::time::Duration::from_secs(3),
        "the limit of 500 ms fired after {took:?}"
    );
    drop(frozen);
    // The client is still usable once the server answers again.
    assert_eq!(
        unsafe { tern_container_list(c, Some(each), null_mut()) },
        tern_status::TERN_OK,
        "{}",
        last_error()
    );
    unsafe { tern_client_free(c) };
}

#[test]
fn an_open_against_a_mute_server_fails_within_the_handshake_limit() {
    let server = TestServer::start();
    let mut o = options(&server);
    o.raw.handshake_timeout_ms = 1000;
    // Frozen: the kernel still accepts the connection, nobody answers.
    let frozen = Frozen::server(&server);
    let started = std::time::Instant::now();
    let mut c = null_mut();
    let st = unsafe { tern_client_open(&o.raw, &mut c) };
    let took = started.elapsed();
    drop(frozen);
    assert_ne!(st, tern_status::TERN_OK);
    assert!(c.is_null());
    assert!(
        took < std::time::Duration::from_secs(5),
        "the 1 s handshake limit fired after {took:?}: {}",
        last_error()
    );
}
