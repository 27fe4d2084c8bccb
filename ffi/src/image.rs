//! tern_image: writing, committing, reading, listing and deleting images.

use std::ffi::c_char;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use tern_agent::{Committed, ImageReader, ImageWriter};

use crate::client::{copy_prefix, tern_client, Counters};
use crate::error::{c_str, guard, out, out_struct_size, tern_status, Failure, FfiResult};
use crate::handle::{borrow, free, into_raw, Handle};
use crate::progress::{tern_progress, Progress};

/// An image being written, or a committed image opened for reading.
/// One thread at a time; see the header's notes on threads.
pub struct tern_image {
    state: Mutex<ImageState>,
    /// Ends the call in progress on another thread (tern_image_abort): kept
    /// outside the state's lock, which that call holds.
    canceller: std::sync::Arc<tern_agent::Stop>,
    /// The host's progress callback, if any.
    pub(crate) progress: Progress,
    /// The client's counters, shared so a commit updates them after the client is closed.
    counters: std::sync::Arc<Counters>,
}

pub(crate) enum ImageState {
    Writing {
        writer: Box<ImageWriter>,
        written: u64,
        props: Vec<u8>,
    },
    Reading(Box<ImageReader>),
    Committed(Box<Committed>),
    /// Suspended: incomplete on the server, resumable from this offset.
    Suspended(u64),
    Aborted,
    /// Writing failed after the library or the server took the data: the
    /// image is aborted; why.
    Lost(String),
}

/// What writing an image cost, filled by tern_image_commit().
#[repr(C)]
#[derive(Default)]
pub struct tern_image_statistics {
    /// sizeof(tern_image_statistics), set by the caller.
    pub struct_size: usize,
    /// Bytes of the image.
    pub logical_bytes: u64,
    pub chunks: u64,
    /// Chunks the server did not have before.
    pub new_chunks: u64,
    /// Bytes the server's store grew by.
    pub new_bytes: u64,
    /// Chunk bytes sent: in dedup mode the compressed chunks the server
    /// lacked, in passthrough mode every raw byte of the image.
    pub sent_bytes: u64,
    /// logical_bytes / new_bytes; 0 when the store grew by nothing (the same
    /// convention as tern_client_statistics).
    pub dedup_ratio: f64,
}

impl Handle for tern_image {
    const NAME: &'static str = "image";
}

pub(crate) unsafe fn bytes<'a>(p: *const u8, len: usize, what: &str) -> FfiResult<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::new(
            tern_status::TERN_NULL_POINTER,
            format!("{what} is NULL"),
        ));
    }
    // SAFETY: the caller provides `len` readable bytes at `p`.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

impl tern_image {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ImageState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn wrong_state(state: &ImageState, want: &str) -> Failure {
    match state {
        ImageState::Committed(_) => Failure::new(
            tern_status::TERN_CLOSED,
            format!("the image was committed; cannot {want}"),
        ),
        ImageState::Suspended(offset) => Failure::new(
            tern_status::TERN_CLOSED,
            format!(
                "the image was suspended at offset {offset} (resume it to go on); cannot {want}"
            ),
        ),
        ImageState::Aborted => Failure::new(
            tern_status::TERN_CLOSED,
            format!("the image was aborted; cannot {want}"),
        ),
        ImageState::Lost(why) => Failure::new(
            tern_status::TERN_CLOSED,
            format!("the image was lost by an earlier error ({why}); cannot {want}"),
        ),
        ImageState::Writing { .. } => Failure::new(
            tern_status::TERN_WRONG_STATE,
            format!("the image is being written; cannot {want}"),
        ),
        ImageState::Reading(_) => Failure::new(
            tern_status::TERN_WRONG_STATE,
            format!("the image is open for reading; cannot {want}"),
        ),
    }
}

/// Starts a new image in `container`. `props` (may be NULL when props_len is 0)
/// are opaque bytes kept with the image for the DMA, at most TERN_MAX_PROPS_LEN.
/// Nothing is visible until tern_image_commit() succeeds. Free the image with
/// tern_image_free().
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT (a name with '/', "..", NUL,
/// over 255 bytes, or not UTF-8; props over TERN_MAX_PROPS_LEN, refused before
/// anything is sent), TERN_NOT_FOUND, TERN_ALREADY_EXISTS, TERN_BUSY,
/// TERN_CLOSED, TERN_CONNECT.
///
/// # Safety
/// `client` is NULL or a live handle; `container` and `name` are NULL or NUL-terminated; `props` is valid for `props_len` bytes (NULL only with 0); `out_image` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tern_image_create(
    client: *const tern_client,
    container: *const c_char,
    name: *const c_char,
    props: *const u8,
    props_len: usize,
    out_image: *mut *mut tern_image,
) -> tern_status {
    guard(|| {
        // SAFETY: tern.h: an out-pointer is NULL (refused by `out`) or points to writable storage of its type.
        let out_image = unsafe { out(out_image, "out")? };
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let container = unsafe { c_str(container, "container")? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let name = unsafe { c_str(name, "name")? };
        // SAFETY: tern.h: a buffer is valid for its length in bytes (NULL only with length 0).
        let props = unsafe { bytes(props, props_len, "props")? };
        let writer = c.get()?.create_image(container, name, props)?;
        *out_image = writing(writer, c);
        Ok(())
    })
}

fn writing(writer: ImageWriter, c: &crate::client::tern_client) -> *mut tern_image {
    into_raw(tern_image {
        canceller: writer.canceller(),
        progress: Progress::default(),
        state: Mutex::new(ImageState::Writing {
            props: writer.props().to_vec(),
            writer: Box::new(writer),
            written: 0,
        }),
        counters: c.counters.clone(),
    })
}

/// Reopens an image left incomplete (the writer crashed or was killed, its
/// session ended, or the server restarted) to continue it from its last
/// checkpoint. `*out_offset` receives the offset to continue from (a chunk
/// boundary of the image): seek the source there, or skip that many bytes of
/// a stream, then tern_image_write() the rest and tern_image_commit(). The
/// committed image is the same as one written without interruption. An image
/// still held by a session whose connections are gone (a crashed writer in
/// its grace period) is taken from that session. Only the user who began the
/// image, or an admin, may resume it. Free the image with tern_image_free().
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT, TERN_NOT_FOUND (no
/// incomplete image of that name), TERN_ALREADY_EXISTS (already committed),
/// TERN_BUSY (still written by a connected session), TERN_DENIED,
/// TERN_PROTOCOL (a server older than protocol 3), TERN_CLOSED, TERN_CONNECT.
///
/// # Safety
/// `client` is NULL or a live handle; `container` and `name` are NULL or NUL-terminated; `out_image` and `out_offset` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tern_image_resume(
    client: *const tern_client,
    container: *const c_char,
    name: *const c_char,
    out_image: *mut *mut tern_image,
    out_offset: *mut u64,
) -> tern_status {
    guard(|| {
        // SAFETY: tern.h: an out-pointer is NULL (refused by `out`) or points to writable storage of its type.
        let out_image = unsafe { out(out_image, "out_image")? };
        // SAFETY: tern.h: an out-pointer is NULL (refused by `out`) or points to writable storage of its type.
        let out_offset = unsafe { out(out_offset, "out_offset")? };
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let container = unsafe { c_str(container, "container")? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let name = unsafe { c_str(name, "name")? };
        let (writer, offset) = c.get()?.resume_image(container, name)?;
        *out_offset = offset;
        *out_image = writing(writer, c);
        Ok(())
    })
}

/// Appends `len` bytes to an image being written. A zero `len` does nothing and
/// returns TERN_OK (buf may then be NULL). On an error the image is lost:
/// abort or free it.
/// Errors: TERN_NULL_POINTER, TERN_CLOSED (committed or aborted), TERN_WRONG_STATE
/// (opened for reading), TERN_CONNECT, TERN_NO_SPACE.
///
/// # Safety
/// `image` is NULL or a live handle used by no other thread at the time; `buf` is valid for `len` bytes (NULL only with 0).
#[no_mangle]
pub unsafe extern "C" fn tern_image_write(
    image: *mut tern_image,
    buf: *const u8,
    len: usize,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let img = unsafe { borrow(image)? };
        // SAFETY: tern.h: a buffer is valid for its length in bytes (NULL only with length 0).
        let data = unsafe { bytes(buf, len, "buf")? };
        let mut state = img.lock();
        match &mut *state {
            ImageState::Writing {
                writer, written, ..
            } => match writer.write_bytes(data) {
                Ok(()) => {
                    *written += data.len() as u64;
                    let now = tern_progress {
                        written_bytes: *written,
                        sent_bytes: writer.sent_bytes(),
                        ..Default::default()
                    };
                    drop(state);
                    img.progress.report(now, false);
                    Ok(())
                }
                Err(e) => {
                    // Past the argument checks, a failure loses the image:
                    // some of its data may be at the server, some not.
                    let failure = Failure::from(e);
                    *state = ImageState::Lost(failure.1.clone());
                    Err(failure)
                }
            },
            other => Err(wrong_state(other, "write")),
        }
    })
}

/// Commits an image being written: when this returns TERN_OK the image is
/// durable and visible. `stats` may be NULL; if not, set stats->struct_size.
/// The image stays valid for tern_image_size()/tern_image_properties() and must
/// still be freed. On failure the image is not committed and is closed.
/// Errors: TERN_NULL_POINTER, TERN_CLOSED, TERN_WRONG_STATE, TERN_CONNECT,
/// TERN_NO_SPACE, TERN_ALREADY_EXISTS.
///
/// # Safety
/// `image` is NULL or a live handle used by no other thread at the time; `stats` is NULL or points to at least `stats->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn tern_image_commit(
    image: *mut tern_image,
    stats: *mut tern_image_statistics,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let img = unsafe { borrow(image)? };
        // Checked before the commit: once it is done, only success may be reported.
        let stats_size = match stats.is_null() {
            true => None,
            // SAFETY: tern.h: `stats` is NULL (no statistics wanted) or points to the caller's struct.
            false => Some(unsafe { out_struct_size(stats, "stats")? }),
        };
        let mut state = img.lock();
        let ImageState::Writing { .. } = &*state else {
            return Err(wrong_state(&state, "commit"));
        };
        let ImageState::Writing { writer, .. } =
            std::mem::replace(&mut *state, ImageState::Aborted)
        else {
            unreachable!("checked just above");
        };
        let done = writer.commit()?;
        let k = &img.counters;
        k.images.fetch_add(1, Ordering::Relaxed);
        k.logical
            .fetch_add(done.stats.logical_bytes, Ordering::Relaxed);
        k.sent.fetch_add(done.sent_bytes, Ordering::Relaxed);
        k.new
            .fetch_add(done.stats.new_stored_bytes, Ordering::Relaxed);
        if let Some(size) = stats_size {
            let full = tern_image_statistics {
                struct_size: size.min(std::mem::size_of::<tern_image_statistics>()),
                logical_bytes: done.stats.logical_bytes,
                chunks: done.stats.chunks,
                new_chunks: done.stats.new_chunks,
                new_bytes: done.stats.new_stored_bytes,
                sent_bytes: done.sent_bytes,
                dedup_ratio: done.dedup_ratio(),
            };
            // SAFETY: the caller's struct_size (checked above) says how many bytes `stats` has room for.
            unsafe { copy_prefix(&full, stats, size) };
        }
        let now = tern_progress {
            written_bytes: done.stats.logical_bytes,
            sent_bytes: done.sent_bytes,
            stored_bytes: done.stats.new_stored_bytes,
            committed: 1,
            ..Default::default()
        };
        *state = ImageState::Committed(Box::new(done));
        drop(state);
        img.progress.report(now, true);
        Ok(())
    })
}

/// Stops writing an image without committing or abandoning it: the server
/// makes durable what it received and keeps the image incomplete, to be
/// continued by tern_image_resume() (from this or another client of the same
/// user) at `*out_offset`, which is at most the bytes written (the last chunk
/// boundary the library had sent; the rest is written again after the
/// resume). For a host whose source went away before the end (a client that
/// disconnected) and may come back. The image must still be freed. On
/// failure the image is closed; unless the server refused it, it stays
/// incomplete and resumable all the same.
/// Errors: TERN_NULL_POINTER, TERN_CLOSED, TERN_WRONG_STATE (opened for
/// reading), TERN_PROTOCOL (a server older than protocol 6: nothing is done,
/// the image may still be written), TERN_CONNECT, TERN_NO_SPACE.
///
/// # Safety
/// `image` is NULL or a live handle used by no other thread at the time; `out_offset` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tern_image_suspend(
    image: *mut tern_image,
    out_offset: *mut u64,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let img = unsafe { borrow(image)? };
        // SAFETY: tern.h: an out-pointer is NULL (refused by `out`) or points to writable storage of its type.
        let out_offset = unsafe { out(out_offset, "out_offset")? };
        let mut state = img.lock();
        let ImageState::Writing { writer, .. } = &*state else {
            return Err(wrong_state(&state, "suspend"));
        };
        writer.check_feature(tern_core::wire::Feature::Suspend, "tern_image_suspend")?;
        let ImageState::Writing { writer, .. } =
            std::mem::replace(&mut *state, ImageState::Aborted)
        else {
            unreachable!("checked just above");
        };
        match writer.suspend() {
            Ok(offset) => {
                *out_offset = offset;
                *state = ImageState::Suspended(offset);
                Ok(())
            }
            Err(e) => {
                let failure = Failure::from(e);
                *state = ImageState::Lost(failure.1.clone());
                Err(failure)
            }
        }
    })
}

/// Abandons an image being written (nothing of it becomes visible), or stops
/// reading one. Any thread may call it, at any time, outage or not: a call in
/// progress on the image in another thread returns TERN_CANCELLED, and this
/// call returns within a second, without waiting for the server (which drops
/// the image when the notice reaches it, or when the session ends). The image
/// must still be freed. Errors: TERN_NULL_POINTER, TERN_CLOSED (committed or
/// aborted before).
///
/// # Safety
/// `image` is NULL or a live handle; another thread may be in a call on it,
/// but none may free it during or before this call.
#[no_mangle]
pub unsafe extern "C" fn tern_image_abort(image: *mut tern_image) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let img = unsafe { borrow(image)? };
        // First end the call another thread may be in: it holds the lock.
        let mut state = match img.state.try_lock() {
            Ok(state) => state,
            Err(_) => {
                img.canceller.cancel();
                img.lock()
            }
        };
        match std::mem::replace(&mut *state, ImageState::Aborted) {
            // Lost already: the abort went out with the error.
            ImageState::Lost(_) => {}
            ImageState::Writing { writer, .. } => {
                img.canceller.cancel();
                writer.abort();
            }
            ImageState::Reading(reader) => {
                img.canceller.cancel();
                drop(reader);
            }
            other => {
                let failure = wrong_state(&other, "abort");
                *state = other;
                return Err(failure);
            }
        }
        Ok(())
    })
}

/// Opens a committed image for reading. Free it with tern_image_free().
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT, TERN_NOT_FOUND, TERN_CLOSED, TERN_CONNECT.
///
/// # Safety
/// `client` is NULL or a live handle; `container` and `name` are NULL or NUL-terminated; `out_image` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tern_image_open(
    client: *const tern_client,
    container: *const c_char,
    name: *const c_char,
    out_image: *mut *mut tern_image,
) -> tern_status {
    guard(|| {
        // SAFETY: tern.h: an out-pointer is NULL (refused by `out`) or points to writable storage of its type.
        let out_image = unsafe { out(out_image, "out")? };
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let container = unsafe { c_str(container, "container")? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let name = unsafe { c_str(name, "name")? };
        let reader = c.get()?.open_image(container, name)?;
        *out_image = into_raw(tern_image {
            canceller: reader.canceller(),
            progress: Progress::default(),
            state: Mutex::new(ImageState::Reading(Box::new(reader))),
            counters: c.counters.clone(),
        });
        Ok(())
    })
}

/// The image's size: for an image being written, the bytes written so far.
/// Errors: TERN_NULL_POINTER, TERN_CLOSED (aborted).
///
/// # Safety
/// `image` is NULL or a live handle; `size` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tern_image_size(image: *const tern_image, size: *mut u64) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let img = unsafe { borrow(image)? };
        // SAFETY: tern.h: an out-pointer is NULL (refused by `out`) or points to writable storage of its type.
        let size = unsafe { out(size, "size")? };
        *size = match &*img.lock() {
            ImageState::Writing { written, .. } => *written,
            ImageState::Reading(r) => r.size(),
            ImageState::Committed(c) => c.info.size,
            other => return Err(wrong_state(other, "tell its size")),
        };
        Ok(())
    })
}

/// Copies the image's DMA properties into buf (capacity `cap`) and sets *len to
/// their length. `buf` NULL with `cap` 0 asks for the length alone (TERN_OK,
/// or TERN_BUFFER_TOO_SMALL if there are properties); `buf` NULL with `cap`
/// above 0 is TERN_NULL_POINTER. If cap is too small, nothing is copied, *len
/// is still set and TERN_BUFFER_TOO_SMALL is returned: call again with a
/// larger buffer. Errors: TERN_NULL_POINTER, TERN_BUFFER_TOO_SMALL, TERN_CLOSED.
///
/// # Safety
/// `image` is NULL or a live handle; `buf` is NULL or valid for `cap` writable bytes; `len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tern_image_properties(
    image: *const tern_image,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let img = unsafe { borrow(image)? };
        // SAFETY: tern.h: an out-pointer is NULL (refused by `out`) or points to writable storage of its type.
        let len = unsafe { out(len, "len")? };
        if buf.is_null() && cap > 0 {
            return Err(Failure::new(
                tern_status::TERN_NULL_POINTER,
                format!("buf is NULL but cap is {cap}"),
            ));
        }
        let state = img.lock();
        let props: &[u8] = match &*state {
            ImageState::Writing { props, .. } => props,
            ImageState::Reading(r) => &r.info().props,
            ImageState::Committed(c) => &c.info.props,
            other => return Err(wrong_state(other, "read its properties")),
        };
        *len = props.len();
        if props.is_empty() {
            return Ok(());
        }
        if cap < props.len() {
            return Err(Failure::new(
                tern_status::TERN_BUFFER_TOO_SMALL,
                format!(
                    "the properties are {} bytes; the buffer holds {cap}",
                    props.len()
                ),
            ));
        }
        // SAFETY: buf has cap >= props.len() writable bytes.
        unsafe { std::ptr::copy_nonoverlapping(props.as_ptr(), buf, props.len()) };
        Ok(())
    })
}

/// Reads up to `len` bytes at `offset` of an image opened for reading and sets
/// *nread. *nread is less than len only at the end of the image, and 0 at or
/// past the end (TERN_OK: end of image is not an error). A zero len reads nothing.
/// Every byte is verified against its chunk's hash before it is returned.
/// Errors: TERN_NULL_POINTER, TERN_WRONG_STATE (an image being written), TERN_CLOSED,
/// TERN_CONNECT, TERN_CORRUPT.
///
/// # Safety
/// `image` is NULL or a live handle used by no other thread at the time; `buf` is NULL or valid for `len` writable bytes; `nread` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tern_image_read(
    image: *mut tern_image,
    offset: u64,
    buf: *mut u8,
    len: usize,
    nread: *mut usize,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let img = unsafe { borrow(image)? };
        // SAFETY: tern.h: an out-pointer is NULL (refused by `out`) or points to writable storage of its type.
        let nread = unsafe { out(nread, "nread")? };
        if len == 0 {
            *nread = 0;
            return Ok(());
        }
        if buf.is_null() {
            return Err(Failure::new(tern_status::TERN_NULL_POINTER, "buf is NULL"));
        }
        // SAFETY: buf has `len` writable bytes.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf, len) };
        let mut state = img.lock();
        let ImageState::Reading(reader) = &mut *state else {
            return Err(wrong_state(&state, "read"));
        };
        let mut total = 0;
        while total < len {
            let n = reader.read_at(offset + total as u64, &mut dst[total..])?;
            if n == 0 {
                break;
            }
            total += n;
        }
        *nread = total;
        drop(state);
        let read = img.progress.read.fetch_add(total as u64, Ordering::Relaxed) + total as u64;
        let now = tern_progress {
            read_bytes: read,
            ..Default::default()
        };
        img.progress.report(now, false);
        Ok(())
    })
}

/// Frees an image. An image still being written is aborted first. NULL is
/// ignored. tern_last_error() keeps the message of the call before.
///
/// # Safety
/// `image` is NULL or a handle not yet freed, and no other thread uses it during or after this call.
#[no_mangle]
pub unsafe extern "C" fn tern_image_free(image: *mut tern_image) {
    // SAFETY: a handle argument, freed once by the caller's contract (tern.h).
    unsafe { free(image) }
}
