//! What the C ABI tests share: C-style options for a test server, opening
//! a client, images in a fresh container, the thread's last error.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStringExt;
use std::ptr::{null, null_mut};

use tern::*;
use tern_test_support::*;

pub mod examples;
pub mod frozen;

/// valgrind with the suppressions of this crate's tests, failing a run
/// (exit 99) on any error or definite leak.
pub fn valgrind() -> Vec<String> {
    let supp = format!(
        "--suppressions={}/tests/valgrind.supp",
        env!("CARGO_MANIFEST_DIR")
    );
    [
        "valgrind",
        &supp,
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        "--quiet",
    ]
    .map(String::from)
    .to_vec()
}

pub fn last_error() -> String {
    unsafe { CStr::from_ptr(tern_last_error()) }
        .to_string_lossy()
        .into_owned()
}

pub struct Opts {
    pub raw: tern_client_options,
    _strings: Vec<CString>,
}

/// What a C caller puts in the options: owned, so it can move to another thread.
pub struct Settings {
    pub address: String,
    pub password: String,
    pub fingerprint: String,
    pub identity: (std::path::PathBuf, std::path::PathBuf),
}

impl Settings {
    pub fn of(server: &TestServer) -> Self {
        Self {
            address: server.address(),
            password: PASSWORD.into(),
            fingerprint: server.fingerprint().to_string(),
            identity: server.client_identity(),
        }
    }

    pub fn options(self) -> Opts {
        let strings = vec![
            CString::new(self.address).unwrap(),
            CString::new("admin").unwrap(),
            CString::new(self.password).unwrap(),
            CString::new(self.fingerprint).unwrap(),
            CString::new(self.identity.0.into_os_string().into_vec()).unwrap(),
            CString::new(self.identity.1.into_os_string().into_vec()).unwrap(),
        ];
        let mut raw = unsafe { std::mem::zeroed::<tern_client_options>() };
        unsafe { tern_client_options_init_sized(&mut raw, std::mem::size_of_val(&raw)) };
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

pub fn options(server: &TestServer) -> Opts {
    Settings::of(server).options()
}

pub fn open(server: &TestServer) -> *mut tern_client {
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

/// A client on `server` with an empty container "c" and a new image `name`
/// being written in it.
pub fn client_and_image(server: &TestServer, name: &str) -> (*mut tern_client, *mut tern_image) {
    let c = open(server);
    let container = CString::new("c").unwrap();
    assert_eq!(
        unsafe { tern_container_create(c, container.as_ptr()) },
        tern_status::TERN_OK
    );
    let image = CString::new(name).unwrap();
    let mut img = null_mut();
    assert_eq!(
        unsafe { tern_image_create(c, container.as_ptr(), image.as_ptr(), null(), 0, &mut img) },
        tern_status::TERN_OK,
        "{}",
        last_error()
    );
    (c, img)
}
