//! Progress callbacks on images, for hosts that show job progress.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{guard, tern_status};
use crate::handle::borrow;
use crate::image::tern_image;

/// How far an image has come, as passed to a tern_progress_cb. Valid only
/// during the callback; fields may be added at the end in later versions
/// (check struct_size).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct tern_progress {
    /// sizeof(tern_progress) in this library.
    pub struct_size: usize,
    /// Bytes given to tern_image_write so far.
    pub written_bytes: u64,
    /// Compressed chunk bytes sent to the server so far (dedup mode), or raw
    /// bytes sent (passthrough mode).
    pub sent_bytes: u64,
    /// Bytes the server's store grew by: known once the image is committed
    /// (0 before).
    pub stored_bytes: u64,
    /// Bytes returned by tern_image_read so far.
    pub read_bytes: u64,
    /// 1 on the last report of a commit, else 0.
    pub committed: u32,
}

/// Called with an image's progress; see tern_image_set_progress().
pub type tern_progress_cb =
    Option<unsafe extern "C" fn(ctx: *mut c_void, progress: *const tern_progress)>;

/// Reports at most once per this many bytes moved.
const STEP: u64 = 1 << 20;

/// An image's progress callback and what it was told last.
#[derive(Default)]
pub(crate) struct Progress {
    /// The callback and its context (as an address: the host owns it).
    cb: Mutex<
        Option<(
            unsafe extern "C" fn(*mut c_void, *const tern_progress),
            usize,
        )>,
    >,
    /// Set while the callback runs: a call it makes on the image reports nothing.
    reporting: AtomicBool,
    /// written + read bytes at the last report.
    last: AtomicU64,
    /// Bytes read so far.
    pub read: AtomicU64,
}

impl Progress {
    /// Calls the callback on this thread, if one is set, `p` has moved at
    /// least [`STEP`] since the last report (or `last` is set), and it is not
    /// running already. Call it without holding the image's lock.
    pub fn report(&self, mut p: tern_progress, last: bool) {
        let Some((cb, ctx)) = *self.cb.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let moved = p.written_bytes + p.read_bytes;
        if !last && moved < self.last.load(Ordering::Relaxed) + STEP {
            return;
        }
        if self.reporting.swap(true, Ordering::SeqCst) {
            return;
        }
        self.last.store(moved, Ordering::Relaxed);
        p.struct_size = std::mem::size_of::<tern_progress>();
        // SAFETY: tern.h: the host's callback is a valid function; ctx is passed back untouched.
        unsafe { cb(ctx as *mut c_void, &p) };
        self.reporting.store(false, Ordering::SeqCst);
    }
}

/// Sets (or, with a NULL cb, clears) the image's progress callback. It is
/// called on the thread of the call that made progress (tern_image_write,
/// tern_image_commit, tern_image_read), after that call's work and before
/// it returns: at most once per MiB written or read, and once at the end of
/// a successful commit. It is never re-entered: a call the callback makes on
/// the same image reports nothing. It must not free the image.
/// Errors: TERN_NULL_POINTER.
///
/// # Safety
/// `image` is NULL or a live handle; `cb` is NULL or a valid function; `ctx`
/// is passed to it untouched and must stay valid while the callback is set.
#[no_mangle]
pub unsafe extern "C" fn tern_image_set_progress(
    image: *const tern_image,
    cb: tern_progress_cb,
    ctx: *mut c_void,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let img = unsafe { borrow(image)? };
        *img.progress.cb.lock().unwrap_or_else(|e| e.into_inner()) = cb.map(|f| (f, ctx as usize));
        Ok(())
    })
}
