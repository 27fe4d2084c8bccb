//! Bad input at the C ABI: each case returns a documented status and a
//! message, never a crash.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStringExt;
use std::ptr::{null, null_mut};

use tern::*;
use tern_test_support::*;

fn last_error() -> String {
    unsafe { CStr::from_ptr(tern_last_error()) }
        .to_string_lossy()
        .into_owned()
}

struct Opts {
    raw: tern_client_options,
    _strings: Vec<CString>,
}

/// What a C caller puts in the options: owned, so it can move to another thread.
struct Settings {
    address: String,
    password: String,
    fingerprint: String,
    identity: (std::path::PathBuf, std::path::PathBuf),
}

impl Settings {
    fn of(server: &TestServer) -> Self {
        Self {
            address: server.address(),
            password: PASSWORD.into(),
            fingerprint: server.fingerprint().to_string(),
            identity: server.client_identity(),
        }
    }

    fn options(self) -> Opts {
        let strings = vec![
            CString::new(self.address).unwrap(),
            CString::new("admin").unwrap(),
            CString::new(self.password).unwrap(),
            CString::new(self.fingerprint).unwrap(),
            CString::new(self.identity.0.into_os_string().into_vec()).unwrap(),
            CString::new(self.identity.1.into_os_string().into_vec()).unwrap(),
        ];
        let mut raw = unsafe { std::mem::zeroed::<tern_client_options>() };
        unsafe { tern_client_options_init(&mut raw) };
        raw.server = strings[0].as_ptr();
        raw.user = strings[1].as_ptr();
        raw.password = strings[2].as_ptr();
        raw.fingerprint = strings[3].as_ptr();
        raw.remember_server = 0;
        raw.client_cert = strings[4].as_ptr();
        raw.client_key = strings[5].as_ptr();
        Opts {
            raw,
            _strings: strings,
        }
    }
}

fn options(server: &TestServer) -> Opts {
    Settings::of(server).options()
}

fn open(server: &TestServer) -> *mut tern_client {
    let o = options(server);
    let mut c = null_mut();
    assert_eq!(
        unsafe { tern_client_open(&o.raw, &mut c) },
        tern_status::TERN_OK,
        "{}",
        last_error()
    );
    c
}

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

    // A non-UTF-8 name and a name with '/'.
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

    let name = c"img";
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
    let data = test_data(300_000, 2);
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

    let mut reader = null_mut();
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
    unsafe { tern_client_free(client) };
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
    for unknown in [22, 99, -1, std::ffi::c_int::MAX, std::ffi::c_int::MIN] {
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

/// Freezes the server (SIGSTOP): connections stay open and nothing answers,
/// the outage a call cannot tell from a slow link. Thawed on drop.
struct Frozen(u32);

impl Frozen {
    fn server(server: &TestServer) -> Self {
        let pid = server.child.as_ref().expect("running").id();
        signal(pid, "-STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Options whose sends block as soon as 1 MiB is unacknowledged.
fn small_cache(server: &TestServer) -> Opts {
    let mut o = options(server);
    o.raw.cache_memory_bytes = 1 << 20;
    o.raw.cache_disk_bytes = TERN_CACHE_DISK_OFF;
    o
}

/// Writes until a call fails; returns that status.
fn write_until_refused(img: usize) -> tern_status {
    let data = vec![0x42u8; 1 << 20];
    for i in 0..4096u32 {
        // Unique data: every chunk has to cross.
        let mut piece = data.clone();
        piece[..4].copy_from_slice(&i.to_le_bytes());
        for (n, b) in piece.iter_mut().enumerate().skip(4) {
            *b = (n as u32).wrapping_mul(2654435761).wrapping_add(i) as u8;
        }
        let st = unsafe { tern_image_write(img as *mut tern_image, piece.as_ptr(), piece.len()) };
        if st != tern_status::TERN_OK {
            return st;
        }
    }
    tern_status::TERN_OK
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
fn capacity_matches_tern_stats_and_closed_clients_say_so() {
    let server = TestServer::start();
    let c = open(&server);
    let name = CString::new("c").unwrap();
    assert_eq!(
        unsafe { tern_container_create(c, name.as_ptr()) },
        tern_status::TERN_OK
    );
    let image = CString::new("i").unwrap();
    let mut img = null_mut();
    assert_eq!(
        unsafe { tern_image_create(c, name.as_ptr(), image.as_ptr(), null(), 0, &mut img) },
        tern_status::TERN_OK
    );
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
    let c = open(&server);
    let name = CString::new("c").unwrap();
    assert_eq!(
        unsafe { tern_container_create(c, name.as_ptr()) },
        tern_status::TERN_OK
    );
    let image = CString::new("p").unwrap();
    let mut img = null_mut();
    assert_eq!(
        unsafe { tern_image_create(c, name.as_ptr(), image.as_ptr(), null(), 0, &mut img) },
        tern_status::TERN_OK
    );
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
