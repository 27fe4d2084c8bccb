//! Loads libtern.so at run time, as a DMA loads a storage plugin, and drives
//! a backup and restore through the function table alone.

use std::ffi::{CStr, CString};
use std::ptr::null_mut;

use tern::{
    tern_client_options, tern_image_statistics, tern_plugin_api, tern_status, TERN_ABI_VERSION,
};
use tern_test_support::*;

type Entry = unsafe extern "C" fn(u32) -> *const tern_plugin_api;

#[test]
fn a_host_drives_the_library_through_the_plugin_entry() {
    let server = TestServer::start();
    server
        .client()
        .container_create("c", Default::default())
        .unwrap();
    let lib = unsafe { libloading::Library::new(libtern_so()) }.expect("loading libtern.so");
    let entry: libloading::Symbol<Entry> = unsafe { lib.get(b"tern_plugin_entry") }.unwrap();

    assert!(unsafe { entry(TERN_ABI_VERSION + 1) }.is_null());
    let api = unsafe { &*entry(TERN_ABI_VERSION) };
    let err = || {
        unsafe { CStr::from_ptr((api.last_error)()) }
            .to_string_lossy()
            .into_owned()
    };
    assert!(err().is_empty() || api.abi_version == TERN_ABI_VERSION);

    let strings: Vec<CString> = [
        server.address(),
        "admin".into(),
        PASSWORD.into(),
        server.fingerprint().to_string(),
    ]
    .into_iter()
    .map(|s| CString::new(s).unwrap())
    .collect();
    let mut opts = unsafe { std::mem::zeroed::<tern_client_options>() };
    unsafe { (api.client_options_init_sized)(&mut opts, std::mem::size_of_val(&opts)) };
    opts.server = strings[0].as_ptr();
    opts.user = strings[1].as_ptr();
    opts.password = strings[2].as_ptr();
    opts.fingerprint = strings[3].as_ptr();
    opts.remember_server = 0;
    let mut client = null_mut();
    assert_eq!(
        unsafe { (api.client_open)(&opts, &mut client) },
        tern_status::TERN_OK,
        "{}",
        err()
    );

    let data = test_data(3 << 20, 77);
    let (container, name) = (c"c", c"plugin");
    let mut image = null_mut();
    let props = b"host-props";
    assert_eq!(
        unsafe {
            (api.image_create)(
                client,
                container.as_ptr(),
                name.as_ptr(),
                props.as_ptr(),
                props.len(),
                &mut image,
            )
        },
        tern_status::TERN_OK
    );
    for piece in data.chunks(100_000) {
        assert_eq!(
            unsafe { (api.image_write)(image, piece.as_ptr(), piece.len()) },
            tern_status::TERN_OK
        );
    }
    let mut stats = tern_image_statistics {
        struct_size: std::mem::size_of::<tern_image_statistics>(),
        ..Default::default()
    };
    assert_eq!(
        unsafe { (api.image_commit)(image, &mut stats) },
        tern_status::TERN_OK,
        "{}",
        err()
    );
    assert_eq!(stats.logical_bytes, data.len() as u64);
    unsafe { (api.image_free)(image) };

    let mut reader = null_mut();
    assert_eq!(
        unsafe { (api.image_open)(client, container.as_ptr(), name.as_ptr(), &mut reader) },
        tern_status::TERN_OK
    );
    let mut out = vec![0u8; data.len()];
    let mut got = 0;
    assert_eq!(
        unsafe { (api.image_read)(reader, 0, out.as_mut_ptr(), out.len(), &mut got) },
        tern_status::TERN_OK
    );
    assert_eq!(got, data.len());
    assert!(out == data);
    let mut props_out = [0u8; 32];
    let mut len = 0;
    assert_eq!(
        unsafe {
            (api.image_properties)(reader, props_out.as_mut_ptr(), props_out.len(), &mut len)
        },
        tern_status::TERN_OK
    );
    assert_eq!(&props_out[..len], props);
    unsafe { (api.image_free)(reader) };
    unsafe { (api.client_free)(client) };
}
