//! tern_image_write_from: extents of committed images, for synthetic fulls.

use std::ffi::c_char;

use tern_agent::ClientError;
use tern_core::wire::ErrorKind;

use crate::error::{c_str, guard, tern_status, Failure};
use crate::handle::borrow;
use crate::image::{tern_image, wrong_state, ImageState};
use crate::progress::tern_progress;

/// Appends `len` bytes of the committed image `image` of `container`,
/// starting at its byte `offset`, to an image being written: a synthetic
/// full. The server takes the source's chunks as they are, so none of these
/// bytes cross the network. Interleaves freely with tern_image_write(). The
/// source lies in the same storage group as the image written (`container`
/// may be another container of that group).
/// A refusal leaves the image as it was, to be written on: TERN_NOT_FOUND (no
/// such committed image), TERN_INVALID_ARGUMENT (a bad name, another storage
/// group, or a source shorter than offset + len), TERN_DENIED, TERN_PROTOCOL
/// (a server older than protocol 7: nothing is done). Any other error loses
/// the image (abort or free it): TERN_NULL_POINTER, TERN_CLOSED,
/// TERN_WRONG_STATE (opened for reading), TERN_CONNECT, TERN_NO_SPACE.
///
/// # Safety
/// `img` is NULL or a live handle used by no other thread at the time;
/// `container` and `image` are NULL (refused) or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn tern_image_write_from(
    img: *mut tern_image,
    container: *const c_char,
    image: *const c_char,
    offset: u64,
    len: u64,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let handle = unsafe { borrow(img)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let container = unsafe { c_str(container, "container")? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let image = unsafe { c_str(image, "image")? };
        let mut state = handle.lock();
        let ImageState::Writing {
            writer, written, ..
        } = &mut *state
        else {
            return Err(wrong_state(&state, "write_from"));
        };
        match writer.write_from(container, image, offset, len) {
            Ok(_) => {
                *written += len;
                let now = tern_progress {
                    written_bytes: *written,
                    sent_bytes: writer.sent_bytes(),
                    ..Default::default()
                };
                drop(state);
                handle.progress.report(now, false);
                Ok(())
            }
            Err(e) if leaves_image(&e) => Err(Failure::from(e)),
            Err(e) => {
                let failure = Failure::from(e);
                *state = ImageState::Lost(failure.1.clone());
                Err(failure)
            }
        }
    })
}

/// A refusal of the extent itself, before anything of it was taken: the
/// image stays as it was.
fn leaves_image(e: &ClientError) -> bool {
    match e {
        ClientError::Invalid(_) | ClientError::ServerTooOld(_) => true,
        ClientError::Server { kind, .. } => matches!(
            kind,
            ErrorKind::NotFound | ErrorKind::Invalid | ErrorKind::Denied | ErrorKind::Incompatible
        ),
        _ => false,
    }
}
