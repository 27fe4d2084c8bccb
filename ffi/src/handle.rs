//! The one place where C pointers to tern's opaque handles become Rust
//! references and back (after rustls-ffi's `Castable`).
//!
//! A handle type implements [`Handle`]; every exported function borrows its
//! handles through [`borrow`], hands new ones out through [`into_raw`] and
//! releases them through [`free`]. So the safety argument for a handle
//! pointer is made once, here, from the contract in tern.h: a non-NULL
//! handle pointer came from the matching `_open`/`_create` function and has
//! not been passed to its `_free` function yet.

use crate::error::{tern_status, Failure, FfiResult};

/// An opaque type handed to C only as a pointer made by [`into_raw`].
pub(crate) trait Handle: Sized {
    /// The argument's name in a NULL-pointer error ("client", "image").
    const NAME: &'static str;
}

/// Borrows the handle `p` points to for the length of a call; NULL is
/// TERN_NULL_POINTER.
///
/// # Safety
/// `p` is NULL or was returned by [`into_raw`] for this `T` and not freed.
pub(crate) unsafe fn borrow<'a, T: Handle>(p: *const T) -> FfiResult<&'a T> {
    // SAFETY: by this function's contract a non-NULL `p` points to a live,
    // boxed `T`; handles are shared (`&T`), their mutable state is behind locks.
    unsafe { p.as_ref() }.ok_or_else(|| {
        Failure::new(
            tern_status::TERN_NULL_POINTER,
            format!("{} is NULL", T::NAME),
        )
    })
}

/// Moves `value` to the heap and gives C its pointer; [`free`] takes it back.
pub(crate) fn into_raw<T: Handle>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Drops the handle `p` points to; NULL does nothing. A panic in the drop
/// stops here, and the calling thread's last error is left as it was: a
/// `_free` returns no status, so it must not clear the message of the call
/// before it (`if (tern_image_commit(img, NULL)) { tern_image_free(img);
/// log(tern_last_error()); }` logs the commit's error).
///
/// # Safety
/// `p` is NULL or was returned by [`into_raw`] for this `T`, is freed only
/// once, and no other thread uses it during or after this call.
pub(crate) unsafe fn free<T: Handle>(p: *mut T) {
    if p.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: by this function's contract `p` came from `Box::into_raw`
        // in `into_raw` and nothing else owns it.
        drop(unsafe { Box::from_raw(p) });
    }));
}
