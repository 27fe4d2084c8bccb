//! tern_client_capacity and tern_client_group_capacity: what the storage
//! behind a client (or one storage group of it) holds and has left, for a
//! host's disk-pool view.

use std::ffi::c_char;

use crate::client::{copy_prefix, tern_client};
use crate::error::{c_str, guard, out_struct_size, tern_status, Failure};
use crate::handle::borrow;

/// The storage the client's user can see, as the server reports it (the same
/// figures as `tern stats`). Set struct_size before the call.
#[repr(C)]
#[derive(Default)]
pub struct tern_capacity {
    /// sizeof(tern_capacity), set by the caller.
    pub struct_size: usize,
    /// Size of the filesystem the server's store is on.
    pub total_bytes: u64,
    /// Bytes of pack files in the storage groups the user can see
    /// (including space the next GC reclaims).
    pub used_bytes: u64,
    /// Bytes new data may still take: the filesystem's free space less the
    /// server's reserve for deletes and GC. Shared by every storage group on
    /// that filesystem.
    pub free_bytes: u64,
    /// Sum of the sizes of the images the user can see.
    pub logical_bytes: u64,
    /// logical bytes / unique bytes (after dedup); 0 with nothing stored.
    pub dedup_ratio: f64,
    /// unique bytes / stored bytes (after compression); 0 with nothing stored.
    pub compression_ratio: f64,
}

/// Asks the server how much the user's storage holds and has left, and fills
/// *capacity. Set capacity->struct_size first; fields past it are not written.
/// Errors: TERN_NULL_POINTER, TERN_UNSUPPORTED_VERSION (struct_size),
/// TERN_CLOSED, TERN_CONNECT, TERN_CANCELLED, TERN_TIMEOUT.
///
/// # Safety
/// `client` is NULL or a live handle; `capacity` is NULL or points to at least `capacity->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn tern_client_capacity(
    client: *const tern_client,
    capacity: *mut tern_capacity,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: `capacity` is NULL or points to the caller's struct.
        let size = unsafe { out_struct_size(capacity, "capacity")? };
        let s = c.get()?.stats()?;
        let full = tern_capacity {
            struct_size: size.min(std::mem::size_of::<tern_capacity>()),
            total_bytes: s.capacity_bytes,
            used_bytes: s.pack_bytes,
            free_bytes: s.free_bytes,
            logical_bytes: s.logical_bytes,
            dedup_ratio: ratio(s.logical_bytes, s.unique_bytes),
            compression_ratio: ratio(s.unique_bytes, s.stored_bytes),
        };
        // SAFETY: the caller's struct_size (checked above) says how many bytes `capacity` has room for.
        unsafe { copy_prefix(&full, capacity, size) };
        Ok(())
    })
}

/// Asks the server what storage group `group` holds and has left, and fills
/// *capacity with the figures of that group alone: total_bytes, and
/// free_bytes, are those of the filesystem the group's packs are on (a
/// group on a volume of its own has its own). Set capacity->struct_size
/// first. Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT (not UTF-8),
/// TERN_NOT_FOUND (no such group, or not one the user may use),
/// TERN_UNSUPPORTED_VERSION (struct_size), TERN_PROTOCOL (a server older
/// than protocol 8), TERN_CLOSED, TERN_CONNECT, TERN_CANCELLED, TERN_TIMEOUT.
///
/// # Safety
/// `client` is NULL or a live handle; `group` is NULL (refused) or a NUL-terminated string; `capacity` is NULL or points to at least `capacity->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn tern_client_group_capacity(
    client: *const tern_client,
    group: *const c_char,
    capacity: *mut tern_capacity,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let group = unsafe { c_str(group, "group")? };
        // SAFETY: tern.h: `capacity` is NULL or points to the caller's struct.
        let size = unsafe { out_struct_size(capacity, "capacity")? };
        let list = c.get()?.group_list()?;
        let g = list.iter().find(|g| g.name == group).ok_or_else(|| {
            Failure::new(
                tern_status::TERN_NOT_FOUND,
                format!("no storage group {group} that this user may use"),
            )
        })?;
        let full = tern_capacity {
            struct_size: size.min(std::mem::size_of::<tern_capacity>()),
            total_bytes: g.fs_total_bytes,
            used_bytes: g.pack_bytes,
            free_bytes: g.free_bytes,
            logical_bytes: g.logical_bytes,
            dedup_ratio: ratio(g.logical_bytes, g.unique_bytes),
            compression_ratio: ratio(g.unique_bytes, g.stored_bytes),
        };
        // SAFETY: the caller's struct_size (checked above) says how many bytes `capacity` has room for.
        unsafe { copy_prefix(&full, capacity, size) };
        Ok(())
    })
}

/// a / b, 0 when b is.
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
