//! Calls on the client about committed images, by name: list them, delete
//! one, replace its properties.

use std::ffi::{c_char, c_int, c_void};

use crate::client::{cstring, tern_client};
use crate::error::{c_str, guard, opt_c_str, tern_status, Failure};
use crate::handle::borrow;
use crate::image::bytes;

/// One image, as passed to a tern_image_cb. Valid only during the callback.
#[repr(C)]
pub struct tern_image_info {
    pub container: *const c_char,
    pub name: *const c_char,
    pub size: u64,
    pub chunks: u64,
    /// Seconds since the Unix epoch when it was committed.
    pub created: u64,
    /// The DMA's properties, as given to tern_image_create().
    pub props: *const u8,
    pub props_len: usize,
    /// Seconds since the Unix epoch until which a retention lock (its
    /// container's, or for a replica its source's) holds it (it can be
    /// neither deleted nor changed); 0 if it is not locked (0 from servers older than protocol 6). Appended last, so
    /// callbacks built against older headers are unaffected.
    pub lock_until: u64,
    /// Where its bytes are: "local", "local+cloud" when a cloud tier copy
    /// of it is committed, or "cloud" when it is held in the cloud tier
    /// (reads go to its copy; tern_image_recall() brings it back)
    /// (protocol 9; "local" from older servers).
    /// Appended last, like `lock_until`.
    pub location: *const c_char,
}

/// Called once per image; return 0 to go on, nonzero to stop.
pub type tern_image_cb =
    Option<unsafe extern "C" fn(ctx: *mut c_void, info: *const tern_image_info) -> c_int>;

/// Calls `cb` for each image in `container` whose name starts with `prefix`
/// (NULL or "" for all), in name order.
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT, TERN_NOT_FOUND, TERN_CLOSED, TERN_CONNECT.
///
/// # Safety
/// `client` is NULL or a live handle; `container` and `prefix` are NULL or NUL-terminated; `cb` is NULL (refused) or a valid function; `ctx` is passed to it untouched.
#[no_mangle]
pub unsafe extern "C" fn tern_image_list(
    client: *const tern_client,
    container: *const c_char,
    prefix: *const c_char,
    cb: tern_image_cb,
    ctx: *mut c_void,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let container = unsafe { c_str(container, "container")? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let prefix = unsafe { opt_c_str(prefix, "prefix")? }.unwrap_or("");
        let cb =
            cb.ok_or_else(|| Failure::new(tern_status::TERN_NULL_POINTER, "callback is NULL"))?;
        for info in c.get()?.image_list(container, prefix)? {
            let cont = cstring(info.container.as_str());
            let name = cstring(info.name.as_str());
            let ii = tern_image_info {
                container: cont.as_ptr(),
                name: name.as_ptr(),
                size: info.size,
                chunks: info.chunks,
                created: info.created,
                props: info.props.as_ptr(),
                props_len: info.props.len(),
                lock_until: info.lock_until,
                location: location_str(info.location),
            };
            // SAFETY: tern.h: a non-NULL callback is a valid function; `ctx` is passed through untouched and the item lives for the call.
            if unsafe { cb(ctx, &ii) } != 0 {
                break;
            }
        }
        Ok(())
    })
}

/// The location's word as a static C string.
fn location_str(l: tern_core::wire::ImageLocation) -> *const c_char {
    match l {
        tern_core::wire::ImageLocation::Local => c"local".as_ptr(),
        tern_core::wire::ImageLocation::LocalAndCloud => c"local+cloud".as_ptr(),
        tern_core::wire::ImageLocation::Cloud => c"cloud".as_ptr(),
    }
}

/// Deletes a committed image; its space returns at the server's next GC.
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT, TERN_NOT_FOUND, TERN_LOCKED
/// (its container's retention lock holds it), TERN_CLOSED, TERN_CONNECT.
///
/// # Safety
/// `client` is NULL or a live handle; `container` and `name` are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tern_image_delete(
    client: *const tern_client,
    container: *const c_char,
    name: *const c_char,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let container = unsafe { c_str(container, "container")? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let name = unsafe { c_str(name, "name")? };
        c.get()?.image_remove(container, name)?;
        Ok(())
    })
}

/// Brings an image held in the cloud tier (`location` "cloud" in
/// tern_image_list()) back to local storage, for a large restore ahead:
/// its chunks the local group lacks are read from its cloud copy and
/// stored; it reads locally again once this returns. `stored_bytes` (may
/// be NULL) receives the chunk bytes stored. Blocks until done (the
/// client's call timeout applies). Errors: TERN_NULL_POINTER,
/// TERN_INVALID_ARGUMENT (not held), TERN_NOT_FOUND, TERN_BUSY (another
/// recall of it runs), TERN_PROTOCOL (a server older than protocol 9),
/// TERN_CLOSED, TERN_CONNECT, TERN_TIMEOUT.
///
/// # Safety
/// `client` is NULL or a live handle; `container` and `name` are NULL or NUL-terminated; `stored_bytes` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tern_image_recall(
    client: *const tern_client,
    container: *const c_char,
    name: *const c_char,
    stored_bytes: *mut u64,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let container = unsafe { c_str(container, "container")? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let name = unsafe { c_str(name, "name")? };
        let stored = c.get()?.image_recall(container, name)?;
        // SAFETY: tern.h: a non-NULL out pointer is writable.
        if let Some(out) = unsafe { stored_bytes.as_mut() } {
            *out = stored;
        }
        Ok(())
    })
}

/// Replaces a committed image's DMA properties (`props` may be NULL when
/// `props_len` is 0, which clears them; at most TERN_MAX_PROPS_LEN, refused
/// before sending). Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT,
/// TERN_NOT_FOUND, TERN_LOCKED, TERN_CLOSED, TERN_CONNECT, TERN_CANCELLED, TERN_TIMEOUT.
///
/// # Safety
/// `client` is NULL or a live handle; `container` and `name` are NULL or NUL-terminated; `props` is valid for `props_len` bytes (NULL only with 0).
#[no_mangle]
pub unsafe extern "C" fn tern_image_set_properties(
    client: *const tern_client,
    container: *const c_char,
    name: *const c_char,
    props: *const u8,
    props_len: usize,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let container = unsafe { c_str(container, "container")? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let name = unsafe { c_str(name, "name")? };
        // SAFETY: tern.h: a buffer is valid for its length in bytes (NULL only with length 0).
        let props = unsafe { bytes(props, props_len, "props")? };
        c.get()?.image_set_props(container, name, props)?;
        Ok(())
    })
}
