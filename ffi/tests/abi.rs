//! Bad input at the C ABI: each case returns a documented status and a
//! message, never a crash.

mod common;

use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

use common::*;
use tern::*;
use tern_test_support::*;

#[test]
fn null_pointers_are_refused_with_a_message() {
    let mut c = null_mut();
    assert_eq!(
        unsafe { tern_client_open(null(), &mut c) },
        tern_status::TERN_NULL_POINTER
    );
    assert!(last_error().contains("options"));
    let mut img = null_mut();
    let name = c"x";
    assert_eq!(
        unsafe { tern_image_create(null(), name.as_ptr(), name.as_ptr(), null(), 0, &mut img) },
        tern_status::TERN_NULL_POINTER
    );
    assert!(last_error().contains("client is NULL"));
    assert_eq!(
        unsafe { tern_image_write(null_mut(), null(), 0) },
        tern_status::TERN_NULL_POINTER
    );
    assert_eq!(
        unsafe { tern_image_commit(null_mut(), null_mut()) },
        tern_status::TERN_NULL_POINTER
    );
    let mut size = 0;
    assert_eq!(
        unsafe { tern_image_size(null(), &mut size) },
        tern_status::TERN_NULL_POINTER
    );
    unsafe { tern_image_free(null_mut()) };
    unsafe { tern_client_free(null_mut()) };
    unsafe { tern_client_options_init(null_mut()) };
}

#[test]
fn options_of_another_size_are_handled() {
    let server = TestServer::start();
    let mut o = options(&server);
    let mut c = null_mut();
    o.raw.struct_size = 8;
    assert_eq!(
        unsafe { tern_client_open(&o.raw, &mut c) },
        tern_status::TERN_UNSUPPORTED_VERSION
    );
    assert!(last_error().contains("struct_size"));
    assert!(c.is_null(), "out written on failure");

    // An older caller's shorter struct (the first version, before
    // call_timeout_ms): accepted, the fields it lacks at their defaults.
    let mut o = options(&server);
    o.raw.struct_size = std::mem::offset_of!(tern_client_options, call_timeout_ms);
    o.raw.call_timeout_ms = 1; // past the caller's struct: must be ignored
    assert_eq!(
        unsafe { tern_client_open(&o.raw, &mut c) },
        tern_status::TERN_OK,
        "{}",
        last_error()
    );
    unsafe { tern_client_free(c) };
    c = null_mut();

    // A newer caller's larger struct: accepted when the fields we do not know are zero.
    #[repr(C)]
    struct Newer {
        base: tern_client_options,
        extra: u64,
    }
    let mut newer = Newer {
        base: options(&server).raw,
        extra: 0,
    };
    let keep = options(&server);
    newer.base = keep.raw;
    newer.base.struct_size = std::mem::size_of::<Newer>();
    assert_eq!(
        unsafe { tern_client_open(&newer.base, &mut c) },
        tern_status::TERN_OK,
        "{}",
        last_error()
    );
    unsafe { tern_client_free(c) };
    newer.extra = 7;
    let mut c2 = null_mut();
    assert_eq!(
        unsafe { tern_client_open(&newer.base, &mut c2) },
        tern_status::TERN_UNSUPPORTED_VERSION
    );

    let mut o = options(&server);
    o.raw.connections = 65;
    assert_eq!(
        unsafe { tern_client_open(&o.raw, &mut c2) },
        tern_status::TERN_INVALID_ARGUMENT
    );
    assert!(last_error().contains("connections"));
    o.raw.connections = 2;
    o.raw.secure_connect = 7;
    assert_eq!(
        unsafe { tern_client_open(&o.raw, &mut c2) },
        tern_status::TERN_INVALID_ARGUMENT
    );
    assert!(last_error().contains("secure_connect"));
}

#[test]
fn closed_handles_zero_lengths_reads_past_the_end_and_bad_names() {
    let server = TestServer::start();
    let client = open(&server);
    let container = c"c";
    assert_eq!(
        unsafe { tern_container_create(client, container.as_ptr()) },
        tern_status::TERN_OK
    );
    names_that_are_no_names_are_refused(client, container);
    let name = c"img";
    let data = test_data(300_000, 2);
    a_writer_refuses_what_it_cannot_do(client, container, name, &data);
    a_reader_reads_its_edges_and_nothing_past_them(client, container, name, &data);
    a_closed_client_refuses_use(client, container, name, &data);
    unsafe { tern_client_free(client) };
}

/// A non-UTF-8 name and a name with '/'.
fn names_that_are_no_names_are_refused(client: *mut tern_client, container: &CStr) {
    let mut img = null_mut();
    let bad = [0xffu8, 0xfe, 0];
    assert_eq!(
        unsafe {
            tern_image_create(
                client,
                container.as_ptr(),
                bad.as_ptr().cast(),
                null(),
                0,
                &mut img,
            )
        },
        tern_status::TERN_INVALID_ARGUMENT
    );
    assert!(last_error().contains("UTF-8"));
    let slash = c"a/b";
    assert_eq!(
        unsafe {
            tern_image_create(
                client,
                container.as_ptr(),
                slash.as_ptr(),
                null(),
                0,
                &mut img,
            )
        },
        tern_status::TERN_INVALID_ARGUMENT
    );
    assert!(img.is_null());
}

/// Zero and NULL writes, reads on a writer, use after commit.
fn a_writer_refuses_what_it_cannot_do(
    client: *mut tern_client,
    container: &CStr,
    name: &CStr,
    data: &[u8],
) {
    let mut img = null_mut();
    assert_eq!(
        unsafe {
            tern_image_create(
                client,
                container.as_ptr(),
                name.as_ptr(),
                b"p".as_ptr(),
                1,
                &mut img,
            )
        },
        tern_status::TERN_OK
    );
    assert_eq!(
        unsafe { tern_image_write(img, null(), 0) },
        tern_status::TERN_OK,
        "zero length is a no-op"
    );
    assert_eq!(
        unsafe { tern_image_write(img, null(), 5) },
        tern_status::TERN_NULL_POINTER
    );
    assert_eq!(
        unsafe { tern_image_write(img, data.as_ptr(), data.len()) },
        tern_status::TERN_OK
    );
    let mut got = 0usize;
    let mut buf = [0u8; 16];
    assert_eq!(
        unsafe { tern_image_read(img, 0, buf.as_mut_ptr(), buf.len(), &mut got) },
        tern_status::TERN_WRONG_STATE
    );
    assert_eq!(
        unsafe { tern_image_commit(img, null_mut()) },
        tern_status::TERN_OK,
        "{}",
        last_error()
    );
    // The committed handle is closed for writing.
    assert_eq!(
        unsafe { tern_image_write(img, data.as_ptr(), 1) },
        tern_status::TERN_CLOSED
    );
    assert_eq!(
        unsafe { tern_image_commit(img, null_mut()) },
        tern_status::TERN_CLOSED
    );
    let mut len = 0usize;
    assert_eq!(
        unsafe { tern_image_properties(img, null_mut(), 0, &mut len) },
        tern_status::TERN_BUFFER_TOO_SMALL
    );
    assert_eq!(len, 1);
    unsafe { tern_image_free(img) };
}

/// Reads at and past the end, of zero bytes, writes on a reader; an
/// absent image.
fn a_reader_reads_its_edges_and_nothing_past_them(
    client: *mut tern_client,
    container: &CStr,
    name: &CStr,
    data: &[u8],
) {
    let mut reader = null_mut();
    let mut buf = [0u8; 16];
    let mut got;
    assert_eq!(
        unsafe { tern_image_open(client, container.as_ptr(), name.as_ptr(), &mut reader) },
        tern_status::TERN_OK
    );
    got = 99;
    assert_eq!(
        unsafe {
            tern_image_read(
                reader,
                data.len() as u64 + 10,
                buf.as_mut_ptr(),
                buf.len(),
                &mut got,
            )
        },
        tern_status::TERN_OK
    );
    assert_eq!(got, 0, "a read past the end returns no bytes");
    assert_eq!(
        unsafe {
            tern_image_read(
                reader,
                data.len() as u64 - 4,
                buf.as_mut_ptr(),
                buf.len(),
                &mut got,
            )
        },
        tern_status::TERN_OK
    );
    assert_eq!(&buf[..got], &data[data.len() - 4..]);
    assert_eq!(
        unsafe { tern_image_read(reader, 0, buf.as_mut_ptr(), 0, &mut got) },
        tern_status::TERN_OK
    );
    assert_eq!(got, 0);
    assert_eq!(
        unsafe { tern_image_write(reader, data.as_ptr(), 1) },
        tern_status::TERN_WRONG_STATE
    );
    unsafe { tern_image_free(reader) };

    let absent = c"absent";
    assert_eq!(
        unsafe { tern_image_open(client, container.as_ptr(), absent.as_ptr(), &mut reader) },
        tern_status::TERN_NOT_FOUND
    );
    assert!(last_error().contains("absent"));
}

/// Statistics, then a closed client refuses further use, statistics included.
fn a_closed_client_refuses_use(
    client: *mut tern_client,
    container: &CStr,
    name: &CStr,
    data: &[u8],
) {
    let mut reader = null_mut();
    let mut stats = tern_client_statistics {
        struct_size: std::mem::size_of::<tern_client_statistics>(),
        ..Default::default()
    };
    assert_eq!(
        unsafe { tern_client_stats(client, &mut stats) },
        tern_status::TERN_OK
    );
    assert_eq!(stats.images_committed, 1);
    assert_eq!(stats.logical_bytes, data.len() as u64);

    // A closed client refuses further use, statistics included.
    assert_eq!(unsafe { tern_client_close(client) }, tern_status::TERN_OK);
    assert_eq!(
        unsafe { tern_client_close(client) },
        tern_status::TERN_CLOSED
    );
    assert_eq!(
        unsafe { tern_image_open(client, container.as_ptr(), name.as_ptr(), &mut reader) },
        tern_status::TERN_CLOSED
    );
    assert_eq!(
        unsafe { tern_client_stats(client, &mut stats) },
        tern_status::TERN_CLOSED
    );
}

#[test]
fn the_plugin_entry_refuses_unknown_abi_versions() {
    assert!(tern_plugin_entry(99).is_null());
    assert!(last_error().contains("ABI version"));
    // A host that has only tern_plugin_entry learns why from table 0.
    let why = unsafe { &*tern_plugin_entry(0) };
    assert_eq!(why.abi_version, TERN_ABI_VERSION);
    let said = unsafe { CStr::from_ptr((why.last_error)()) }
        .to_string_lossy()
        .into_owned();
    assert!(said.contains("not 99"), "{said}");
    let api = tern_plugin_entry(TERN_ABI_VERSION);
    assert!(!api.is_null());
    let api = unsafe { &*api };
    assert_eq!(api.abi_version, TERN_ABI_VERSION);
    assert_eq!(api.struct_size, std::mem::size_of::<tern_plugin_api>());
}

#[test]
fn status_names_cover_every_code_and_any_other_integer() {
    let name = |v: std::ffi::c_int| {
        // SAFETY: tern_status_name returns a static NUL-terminated string.
        unsafe { CStr::from_ptr(tern_status_name(v)) }
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(name(tern_status::TERN_OK as _), "TERN_OK");
    assert_eq!(name(tern_status::TERN_NOT_FOUND as _), "TERN_NOT_FOUND");
    assert_eq!(name(tern_status::TERN_PANIC as _), "TERN_PANIC");
    assert_eq!(name(tern_status::TERN_TIMEOUT as _), "TERN_TIMEOUT");
    assert_eq!(name(tern_status::TERN_LOCKED as _), "TERN_LOCKED");
    for unknown in [23, 99, -1, std::ffi::c_int::MAX, std::ffi::c_int::MIN] {
        assert_eq!(name(unknown), "TERN_UNKNOWN_STATUS", "{unknown}");
    }
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit`:
/// these calls used to wait out the whole grace period.
fn within<T: Send + 'static>(
    limit: std::time::Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

/// tern_client_open against `address` with `plain` and `password`; the status
/// and the message.
fn open_status(
    server: &TestServer,
    address: String,
    plain: bool,
    password: &str,
) -> impl FnOnce() -> (tern_status, String) + Send + 'static {
    let settings = Settings {
        address,
        password: password.into(),
        ..Settings::of(server)
    };
    move || {
        let mut o = settings.options();
        o.raw.plain = plain.into();
        let mut c = null_mut();
        let st = unsafe { tern_client_open(&o.raw, &mut c) };
        let msg = last_error();
        if !c.is_null() {
            unsafe { tern_client_free(c) };
        }
        (st, msg)
    }
}

#[test]
fn errors_that_are_not_outages_end_the_call_at_once() {
    let server = TestServer::start();
    let quick = std::time::Duration::from_secs(15);
    let tls = server.address();
    let plain = format!("127.0.0.1:{}", server.plain_port);

    let (st, msg) = within(
        quick,
        "plaintext to the TLS port",
        open_status(&server, tls.clone(), true, PASSWORD),
    );
    assert_ne!(st, tern_status::TERN_OK, "{msg}");
    assert!(msg.contains("--plain") || msg.contains("closed"), "{msg}");

    let (st, msg) = within(
        quick,
        "TLS to the plaintext port",
        open_status(&server, plain, false, PASSWORD),
    );
    assert_ne!(st, tern_status::TERN_OK, "{msg}");

    let (st, msg) = within(
        quick,
        "a wrong password",
        open_status(&server, tls, false, "wrong"),
    );
    assert_eq!(st, tern_status::TERN_AUTH, "{msg}");

    // Properties over the limit are refused before anything is sent; at the
    // limit they round-trip.
    let c = open(&server);
    let name = CString::new("c").unwrap();
    assert_eq!(
        unsafe { tern_container_create(c, name.as_ptr()) },
        tern_status::TERN_OK
    );
    let c_addr = c as usize;
    let (st, msg) = within(quick, "oversized properties", move || {
        let props = vec![7u8; TERN_MAX_PROPS_LEN + 1];
        let (container, image) = (CString::new("c").unwrap(), CString::new("big").unwrap());
        let mut img = null_mut();
        let st = unsafe {
            tern_image_create(
                c_addr as *const tern_client,
                container.as_ptr(),
                image.as_ptr(),
                props.as_ptr(),
                props.len(),
                &mut img,
            )
        };
        (st, last_error())
    });
    assert_eq!(st, tern_status::TERN_INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("properties"), "{msg}");
    let props = vec![9u8; TERN_MAX_PROPS_LEN];
    let (container, image) = (CString::new("c").unwrap(), CString::new("max").unwrap());
    let mut img = null_mut();
    let st = unsafe {
        tern_image_create(
            c,
            container.as_ptr(),
            image.as_ptr(),
            props.as_ptr(),
            props.len(),
            &mut img,
        )
    };
    assert_eq!(st, tern_status::TERN_OK, "{}", last_error());
    assert_eq!(
        unsafe { tern_image_commit(img, null_mut()) },
        tern_status::TERN_OK,
        "{}",
        last_error()
    );
    unsafe { tern_image_free(img) };
    unsafe { tern_client_free(c) };
}
