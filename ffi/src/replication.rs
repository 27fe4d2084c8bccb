//! Replication through libtern: start a copy on the server the client is
//! connected to (the source), follow and cancel it; on the target, poll
//! import events and acknowledge them; list partners.

use std::ffi::{c_char, c_int, c_void};

use tern_agent::{CopyId, CopyState, CopyTarget};

use crate::client::{copy_prefix, cstring, tern_client};
use crate::error::{c_str, guard, opt_c_str, out_struct_size, tern_status, Failure};
use crate::handle::borrow;

/// Characters of a copy id (hex), without the terminating NUL.
pub const TERN_COPY_ID_LEN: usize = 32;
/// Bytes of `tern_copy_status.reason`, with its NUL.
pub const TERN_REASON_LEN: usize = 256;

/// Where a copy stands.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tern_copy_state {
    /// Waiting for a slot (the server runs a few per partner at once) or
    /// for a retry after a fault.
    TERN_COPY_QUEUED = 0,
    TERN_COPY_RUNNING = 1,
    /// The target committed the replica.
    TERN_COPY_DONE = 2,
    /// Given up: `reason` says why.
    TERN_COPY_FAILED = 3,
    TERN_COPY_CANCELLED = 4,
    /// Done, and the target's backup application acknowledged the import event.
    TERN_COPY_IMPORTED = 5,
}

impl From<CopyState> for tern_copy_state {
    fn from(s: CopyState) -> Self {
        match s {
            CopyState::Queued => tern_copy_state::TERN_COPY_QUEUED,
            CopyState::Running => tern_copy_state::TERN_COPY_RUNNING,
            CopyState::Done => tern_copy_state::TERN_COPY_DONE,
            CopyState::Failed => tern_copy_state::TERN_COPY_FAILED,
            CopyState::Cancelled => tern_copy_state::TERN_COPY_CANCELLED,
            CopyState::Imported => tern_copy_state::TERN_COPY_IMPORTED,
        }
    }
}

/// A copy's status (at most a second old). Set struct_size before the call.
#[repr(C)]
pub struct tern_copy_status {
    /// sizeof(tern_copy_status), set by the caller.
    pub struct_size: usize,
    pub state: tern_copy_state,
    /// Attempts so far (faults are retried).
    pub attempts: u32,
    /// The image's size.
    pub logical_bytes: u64,
    /// Logical bytes the target has; never goes backwards.
    pub done_bytes: u64,
    /// Chunk bytes sent as stored (compressed); never goes backwards.
    pub sent_bytes: u64,
    /// Chunks sent.
    pub sent_chunks: u64,
    /// Why it failed, or the fault it is retrying after; NUL-terminated,
    /// cut to fit.
    pub reason: [c_char; TERN_REASON_LEN],
    /// 1 while the copy is parked because its shaping group's rate is 0
    /// now (`paused (schedule)`; it goes on by itself), else 0.
    pub paused: u32,
    /// Its shaping group's rate now, bytes per second (0: unshaped).
    pub rate: u64,
    /// The partner address the running attempt uses (empty when it is not
    /// running); NUL-terminated, cut to fit.
    pub path: [c_char; TERN_PATH_LEN],
}

/// Bytes of `tern_copy_status.path`, with its NUL.
pub const TERN_PATH_LEN: usize = 128;

/// `s` into `dst` as a NUL-terminated C string, cut at a character boundary
/// to fit, NULs inside replaced by spaces.
fn fill_c_string(dst: &mut [c_char], s: &str) {
    let s = s.replace('\0', " ");
    let mut n = s.len().min(dst.len().saturating_sub(1));
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as c_char;
    }
}

fn parse_id(id: &str) -> Result<CopyId, Failure> {
    id.parse::<CopyId>()
        .map_err(|e| Failure::new(tern_status::TERN_INVALID_ARGUMENT, e))
}

/// Asks the server the client is connected to (the source) to copy an image
/// to a replication partner, into `to_container` under `to_name` (NULL: the
/// image's name). Returns at once with the copy's id in `id_out` (33 bytes:
/// TERN_COPY_ID_LEN hex digits and a NUL); the server runs the copy, and it
/// outlives this client. Asking again for the same image and target while
/// the copy runs gives the same id.
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT, TERN_NOT_FOUND (partner,
/// container or image), TERN_DENIED, TERN_PROTOCOL (a server without
/// replication), TERN_CLOSED, TERN_CONNECT, TERN_CANCELLED, TERN_TIMEOUT.
///
/// # Safety
/// `client` is NULL or a live handle; the strings are NULL or NUL-terminated; `id_out` is NULL or has room for TERN_COPY_ID_LEN + 1 bytes.
#[no_mangle]
pub unsafe extern "C" fn tern_copy_start(
    client: *const tern_client,
    container: *const c_char,
    name: *const c_char,
    partner: *const c_char,
    to_container: *const c_char,
    to_name: *const c_char,
    id_out: *mut c_char,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let (container, name, partner, to_container) = unsafe {
            (
                c_str(container, "container")?,
                c_str(name, "name")?,
                c_str(partner, "partner")?,
                c_str(to_container, "to_container")?,
            )
        };
        // SAFETY: as above.
        let to_name = unsafe { opt_c_str(to_name, "to_name")? };
        if id_out.is_null() {
            return Err(Failure::new(
                tern_status::TERN_NULL_POINTER,
                "id_out is NULL",
            ));
        }
        let target = CopyTarget {
            partner,
            container: to_container,
            name: to_name,
        };
        let id = c.get()?.copy_start(container, name, &target)?;
        let text = cstring(&id.to_string());
        let bytes = text.as_bytes_with_nul();
        // SAFETY: tern.h: id_out has room for TERN_COPY_ID_LEN + 1 bytes, which is what a copy id takes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), id_out, bytes.len())
        };
        Ok(())
    })
}

/// Fills *status with the copy's state and counters. Set status->struct_size
/// first; fields past it are not written.
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT (not a copy id),
/// TERN_UNSUPPORTED_VERSION (struct_size), TERN_NOT_FOUND, TERN_CLOSED,
/// TERN_CONNECT, TERN_CANCELLED, TERN_TIMEOUT.
///
/// # Safety
/// `client` is NULL or a live handle; `id` is NULL or NUL-terminated; `status` is NULL or points to at least `status->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn tern_copy_get_status(
    client: *const tern_client,
    id: *const c_char,
    status: *mut tern_copy_status,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused) or NUL-terminated.
        let id = parse_id(unsafe { c_str(id, "id")? })?;
        // SAFETY: tern.h: `status` is NULL or points to the caller's struct.
        let size = unsafe { out_struct_size(status, "status")? };
        let info = c.get()?.copy_status(id)?;
        let mut full = tern_copy_status {
            struct_size: size.min(std::mem::size_of::<tern_copy_status>()),
            state: info.state.into(),
            attempts: info.attempts,
            logical_bytes: info.logical_bytes,
            done_bytes: info.done_bytes,
            sent_bytes: info.sent_bytes,
            sent_chunks: info.sent_chunks,
            reason: [0; TERN_REASON_LEN],
            paused: u32::from(info.paused),
            rate: info.rate,
            path: [0; TERN_PATH_LEN],
        };
        fill_c_string(&mut full.reason, &info.reason);
        fill_c_string(&mut full.path, &info.path);
        // SAFETY: the caller's struct_size (checked above) says how many bytes `status` has room for.
        unsafe { copy_prefix(&full, status, size) };
        Ok(())
    })
}

/// Cancels a copy that has not ended; its status shows
/// TERN_COPY_CANCELLED within two seconds and the target keeps nothing of it.
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT (not a copy id, or a
/// copy that has ended), TERN_NOT_FOUND, TERN_CLOSED, TERN_CONNECT,
/// TERN_CANCELLED, TERN_TIMEOUT.
///
/// # Safety
/// `client` is NULL or a live handle; `id` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tern_copy_cancel(
    client: *const tern_client,
    id: *const c_char,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused) or NUL-terminated.
        let id = parse_id(unsafe { c_str(id, "id")? })?;
        c.get()?.copy_cancel(id)?;
        Ok(())
    })
}

/// Ends a copy and drops what it left on both sides. Called on the copy's
/// source: a copy not yet done is cancelled (a running one stops first) and
/// the target drops the partial replica it kept to resume the copy; if the
/// target cannot be reached the copy stays cancelled and the call fails
/// (the target drops it after its retention period). Called on the target
/// as an admin: drops the partial replica the copy left there.
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT (not a copy id, or a
/// copy that is done), TERN_NOT_FOUND, TERN_PROTOCOL (a server older than
/// protocol 4), TERN_CLOSED, TERN_CONNECT, TERN_CANCELLED,
/// TERN_TIMEOUT, TERN_INTERNAL (the target could not be told).
///
/// # Safety
/// `client` is NULL or a live handle; `id` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tern_copy_abort(
    client: *const tern_client,
    id: *const c_char,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused) or NUL-terminated.
        let id = parse_id(unsafe { c_str(id, "id")? })?;
        c.get()?.copy_abort(id)?;
        Ok(())
    })
}

/// One import event, as passed to a tern_event_cb. Valid only during the
/// callback. Fields may be added at the end in later versions.
#[repr(C)]
pub struct tern_event_info {
    /// Increasing on the server, never reused: acknowledge it by this.
    pub id: u64,
    /// Seconds since the Unix epoch when the replica was committed.
    pub time: u64,
    pub container: *const c_char,
    /// The replica's name in `container`.
    pub image: *const c_char,
    pub size: u64,
    /// The image's properties, byte for byte as the source's DMA set them.
    pub props: *const u8,
    pub props_len: usize,
    /// The source server's id (its certificate's fingerprint).
    pub source_server: *const c_char,
    pub source_container: *const c_char,
    pub source_image: *const c_char,
    /// The copy that brought it (TERN_COPY_ID_LEN hex digits).
    pub copy_id: *const c_char,
}

/// Called once per event; return 0 to go on, nonzero to stop.
pub type tern_event_cb =
    Option<unsafe extern "C" fn(ctx: *mut c_void, event: *const tern_event_info) -> c_int>;

/// Calls `cb` for each unacknowledged import event of `container`, oldest
/// first, at most `max` of them (and at most 1000). Unacknowledged events
/// come back on every poll; acknowledge them with tern_events_ack().
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT (not an import
/// container), TERN_NOT_FOUND, TERN_PROTOCOL, TERN_CLOSED,
/// TERN_CONNECT, TERN_CANCELLED, TERN_TIMEOUT.
///
/// # Safety
/// `client` is NULL or a live handle; `container` is NULL or NUL-terminated; `cb` is NULL (refused) or a valid function; `ctx` is passed to it untouched.
#[no_mangle]
pub unsafe extern "C" fn tern_events_poll(
    client: *const tern_client,
    container: *const c_char,
    max: u32,
    cb: tern_event_cb,
    ctx: *mut c_void,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused) or NUL-terminated.
        let container = unsafe { c_str(container, "container")? };
        let cb =
            cb.ok_or_else(|| Failure::new(tern_status::TERN_NULL_POINTER, "callback is NULL"))?;
        for e in c.get()?.events(container, max)? {
            let strings = [
                cstring(e.container.as_str()),
                cstring(e.image.as_str()),
                cstring(&e.origin.server),
                cstring(e.origin.container.as_str()),
                cstring(e.origin.image.as_str()),
                cstring(&e.origin.copy.to_string()),
            ];
            let info = tern_event_info {
                id: e.id,
                time: e.time,
                container: strings[0].as_ptr(),
                image: strings[1].as_ptr(),
                size: e.size,
                props: e.props.as_ptr(),
                props_len: e.props.len(),
                source_server: strings[2].as_ptr(),
                source_container: strings[3].as_ptr(),
                source_image: strings[4].as_ptr(),
                copy_id: strings[5].as_ptr(),
            };
            // SAFETY: tern.h: a non-NULL callback is a valid function; `ctx` is passed through untouched and the item lives for the call.
            if unsafe { cb(ctx, &info) } != 0 {
                break;
            }
        }
        Ok(())
    })
}

/// Acknowledges import events of `container`: they are never returned
/// again, and the source shows the copy TERN_COPY_IMPORTED. Acknowledging
/// an event twice is fine; an unknown id is TERN_NOT_FOUND (and then none
/// of `ids` is acknowledged).
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT, TERN_NOT_FOUND,
/// TERN_PROTOCOL, TERN_CLOSED, TERN_CONNECT, TERN_CANCELLED, TERN_TIMEOUT.
///
/// # Safety
/// `client` is NULL or a live handle; `container` is NULL or NUL-terminated; `ids` is valid for `count` elements (NULL only with 0).
#[no_mangle]
pub unsafe extern "C" fn tern_events_ack(
    client: *const tern_client,
    container: *const c_char,
    ids: *const u64,
    count: usize,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused) or NUL-terminated.
        let container = unsafe { c_str(container, "container")? };
        let ids: &[u64] = match (ids.is_null(), count) {
            (_, 0) => &[],
            (true, _) => {
                return Err(Failure::new(
                    tern_status::TERN_NULL_POINTER,
                    "ids is NULL but count is not 0",
                ))
            }
            // SAFETY: tern.h: `ids` is valid for `count` elements.
            (false, n) => unsafe { std::slice::from_raw_parts(ids, n) },
        };
        c.get()?.events_ack(container, ids)?;
        Ok(())
    })
}

/// One replication partner, as passed to a tern_partner_cb. Valid only
/// during the callback. Fields may be added at the end in later versions.
#[repr(C)]
pub struct tern_partner_info {
    pub name: *const c_char,
    /// Its addresses, comma-separated, tried in order.
    pub addresses: *const c_char,
    /// The fingerprint its certificate must have.
    pub fingerprint: *const c_char,
    /// The user the server logs in as there.
    pub user: *const c_char,
    /// The protocol version it spoke when added.
    pub version: u32,
}

/// Called once per partner; return 0 to go on, nonzero to stop.
pub type tern_partner_cb =
    Option<unsafe extern "C" fn(ctx: *mut c_void, partner: *const tern_partner_info) -> c_int>;

/// Calls `cb` for each replication partner of the server (admins only).
/// Errors: TERN_NULL_POINTER, TERN_DENIED, TERN_PROTOCOL,
/// TERN_CLOSED, TERN_CONNECT, TERN_CANCELLED, TERN_TIMEOUT.
///
/// # Safety
/// `client` is NULL or a live handle; `cb` is NULL (refused) or a valid function; `ctx` is passed to it untouched.
#[no_mangle]
pub unsafe extern "C" fn tern_partner_list(
    client: *const tern_client,
    cb: tern_partner_cb,
    ctx: *mut c_void,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        let cb =
            cb.ok_or_else(|| Failure::new(tern_status::TERN_NULL_POINTER, "callback is NULL"))?;
        for p in c.get()?.partner_list()? {
            let strings = [
                cstring(&p.name),
                cstring(&p.addresses.join(",")),
                cstring(&p.fingerprint),
                cstring(p.user.as_str()),
            ];
            let info = tern_partner_info {
                name: strings[0].as_ptr(),
                addresses: strings[1].as_ptr(),
                fingerprint: strings[2].as_ptr(),
                user: strings[3].as_ptr(),
                version: u32::from(p.version),
            };
            // SAFETY: tern.h: a non-NULL callback is a valid function; `ctx` is passed through untouched and the item lives for the call.
            if unsafe { cb(ctx, &info) } != 0 {
                break;
            }
        }
        Ok(())
    })
}
