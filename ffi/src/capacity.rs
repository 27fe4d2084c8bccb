//! tern_client_capacity: what the storage behind a client holds and has left,
//! for a host's disk-pool view.

use crate::client::{copy_prefix, tern_client};
use crate::error::{guard, out_struct_size, tern_status};
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
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
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
