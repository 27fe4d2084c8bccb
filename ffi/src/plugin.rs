//! tern_plugin_entry: the function table for hosts that load libtern at run time.

use std::ffi::{c_char, c_int, c_void};

use crate::catalog::*;
use crate::client::*;
use crate::error::*;
use crate::image::*;
use crate::TERN_ABI_VERSION;

/// Every libtern function, for a host that loads the library with dlopen() and
/// looks up only tern_plugin_entry. Later ABI versions append members; a host
/// checks struct_size before using a member it did not know when it was built.
/// The first five members (abi_version to status_name) are the same in every
/// ABI version.
#[repr(C)]
pub struct tern_plugin_api {
    /// The ABI version of this table (TERN_ABI_VERSION).
    pub abi_version: u32,
    /// sizeof(tern_plugin_api) in this library.
    pub struct_size: usize,
    pub version: extern "C" fn() -> *const c_char,
    pub last_error: extern "C" fn() -> *const c_char,
    pub status_name: extern "C" fn(c_int) -> *const c_char,
    pub client_options_init: unsafe extern "C" fn(*mut tern_client_options),
    pub client_open:
        unsafe extern "C" fn(*const tern_client_options, *mut *mut tern_client) -> tern_status,
    pub client_close: unsafe extern "C" fn(*mut tern_client) -> tern_status,
    pub client_free: unsafe extern "C" fn(*mut tern_client),
    pub client_stats:
        unsafe extern "C" fn(*const tern_client, *mut tern_client_statistics) -> tern_status,
    pub container_create: unsafe extern "C" fn(*const tern_client, *const c_char) -> tern_status,
    pub container_list:
        unsafe extern "C" fn(*const tern_client, tern_container_cb, *mut c_void) -> tern_status,
    pub image_create: unsafe extern "C" fn(
        *const tern_client,
        *const c_char,
        *const c_char,
        *const u8,
        usize,
        *mut *mut tern_image,
    ) -> tern_status,
    pub image_write: unsafe extern "C" fn(*mut tern_image, *const u8, usize) -> tern_status,
    pub image_commit:
        unsafe extern "C" fn(*mut tern_image, *mut tern_image_statistics) -> tern_status,
    pub image_abort: unsafe extern "C" fn(*mut tern_image) -> tern_status,
    pub image_open: unsafe extern "C" fn(
        *const tern_client,
        *const c_char,
        *const c_char,
        *mut *mut tern_image,
    ) -> tern_status,
    pub image_size: unsafe extern "C" fn(*const tern_image, *mut u64) -> tern_status,
    pub image_properties:
        unsafe extern "C" fn(*const tern_image, *mut u8, usize, *mut usize) -> tern_status,
    pub image_read:
        unsafe extern "C" fn(*mut tern_image, u64, *mut u8, usize, *mut usize) -> tern_status,
    pub image_free: unsafe extern "C" fn(*mut tern_image),
    pub image_list: unsafe extern "C" fn(
        *const tern_client,
        *const c_char,
        *const c_char,
        tern_image_cb,
        *mut c_void,
    ) -> tern_status,
    pub image_delete:
        unsafe extern "C" fn(*const tern_client, *const c_char, *const c_char) -> tern_status,
    // Appended in libtern 0.2 (check struct_size):
    pub client_cancel: unsafe extern "C" fn(*const tern_client) -> tern_status,
    pub client_capacity:
        unsafe extern "C" fn(*const tern_client, *mut crate::tern_capacity) -> tern_status,
    pub container_remove: unsafe extern "C" fn(*const tern_client, *const c_char) -> tern_status,
    pub image_set_properties: unsafe extern "C" fn(
        *const tern_client,
        *const c_char,
        *const c_char,
        *const u8,
        usize,
    ) -> tern_status,
    pub image_set_progress: unsafe extern "C" fn(
        *const tern_image,
        crate::tern_progress_cb,
        *mut c_void,
    ) -> tern_status,
    // Appended in libtern 0.3 (check struct_size): replication.
    pub copy_start: unsafe extern "C" fn(
        *const tern_client,
        *const c_char,
        *const c_char,
        *const c_char,
        *const c_char,
        *const c_char,
        *mut c_char,
    ) -> tern_status,
    pub copy_get_status: unsafe extern "C" fn(
        *const tern_client,
        *const c_char,
        *mut crate::tern_copy_status,
    ) -> tern_status,
    pub copy_cancel: unsafe extern "C" fn(*const tern_client, *const c_char) -> tern_status,
    pub events_poll: unsafe extern "C" fn(
        *const tern_client,
        *const c_char,
        u32,
        crate::tern_event_cb,
        *mut c_void,
    ) -> tern_status,
    pub events_ack:
        unsafe extern "C" fn(*const tern_client, *const c_char, *const u64, usize) -> tern_status,
    pub partner_list: unsafe extern "C" fn(
        *const tern_client,
        crate::tern_partner_cb,
        *mut c_void,
    ) -> tern_status,
    pub image_resume: unsafe extern "C" fn(
        *const tern_client,
        *const c_char,
        *const c_char,
        *mut *mut tern_image,
        *mut u64,
    ) -> tern_status,
    pub copy_abort: unsafe extern "C" fn(*const tern_client, *const c_char) -> tern_status,
    // Appended in libtern 0.4 (check struct_size). client_options_init
    // above fills only the first version of the options (libtern 0.1); this
    // one fills `size` bytes: pass sizeof(tern_client_options).
    pub client_options_init_sized: unsafe extern "C" fn(*mut tern_client_options, usize),
    // Appended in libtern 0.5 (check struct_size).
    pub image_suspend: unsafe extern "C" fn(*mut tern_image, *mut u64) -> tern_status,
    // Appended in libtern 0.6 (check struct_size): synthetic fulls.
    pub image_write_from: unsafe extern "C" fn(
        *mut tern_image,
        *const c_char,
        *const c_char,
        u64,
        u64,
    ) -> tern_status,
    // Appended in libtern 0.7 (check struct_size): storage groups on
    // volumes of their own.
    pub client_group_capacity: unsafe extern "C" fn(
        *const tern_client,
        *const c_char,
        *mut crate::tern_capacity,
    ) -> tern_status,
}

static API_V1: tern_plugin_api = tern_plugin_api {
    abi_version: TERN_ABI_VERSION,
    struct_size: std::mem::size_of::<tern_plugin_api>(),
    version: crate::tern_version,
    last_error: tern_last_error,
    status_name: tern_status_name,
    client_options_init: tern_client_options_init,
    client_open: tern_client_open,
    client_close: tern_client_close,
    client_free: tern_client_free,
    client_stats: tern_client_stats,
    container_create: tern_container_create,
    container_list: tern_container_list,
    image_create: tern_image_create,
    image_write: tern_image_write,
    image_commit: tern_image_commit,
    image_abort: tern_image_abort,
    image_open: tern_image_open,
    image_size: tern_image_size,
    image_properties: tern_image_properties,
    image_read: tern_image_read,
    image_free: tern_image_free,
    image_list: tern_image_list,
    image_delete: tern_image_delete,
    client_cancel: tern_client_cancel,
    client_capacity: crate::tern_client_capacity,
    container_remove: tern_container_remove,
    image_set_properties: tern_image_set_properties,
    image_set_progress: crate::tern_image_set_progress,
    copy_start: crate::tern_copy_start,
    copy_get_status: crate::tern_copy_get_status,
    copy_cancel: crate::tern_copy_cancel,
    events_poll: crate::tern_events_poll,
    events_ack: crate::tern_events_ack,
    partner_list: crate::tern_partner_list,
    image_resume: crate::image::tern_image_resume,
    copy_abort: crate::tern_copy_abort,
    client_options_init_sized: tern_client_options_init_sized,
    image_suspend: tern_image_suspend,
    image_write_from: crate::tern_image_write_from,
    client_group_capacity: crate::tern_client_group_capacity,
};

/// Returns the function table of ABI version `abi_version`, or NULL if this
/// library does not implement it. Why is then told by the table that
/// tern_plugin_entry(0) always returns, without touching the thread's last
/// error: its last_error() says why the previous call returned NULL, and its
/// abi_version which version this library does implement (only the first
/// five members of that table are to be used unless abi_version matches).
/// The tables are static: never free them.
#[no_mangle]
pub extern "C" fn tern_plugin_entry(abi_version: u32) -> *const tern_plugin_api {
    if abi_version == 0 {
        return &API_V1;
    }
    let mut table = std::ptr::null();
    let _ = guard(|| {
        if abi_version != TERN_ABI_VERSION {
            return Err(Failure::new(
                tern_status::TERN_UNSUPPORTED_VERSION,
                format!("libtern implements ABI version {TERN_ABI_VERSION}, not {abi_version}"),
            ));
        }
        table = &API_V1 as *const tern_plugin_api;
        Ok(())
    });
    table
}
