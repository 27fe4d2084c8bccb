//! Status codes, the per-thread last error, and the panic boundary.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tern_agent::ClientError;
use tern_core::wire::ErrorKind;

/// The result of every fallible call. TERN_OK is 0; every other value is an error
/// whose message tern_last_error() returns.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tern_status {
    /// Success.
    TERN_OK = 0,
    /// An argument is out of range, not UTF-8, or a name is not allowed.
    TERN_INVALID_ARGUMENT = 1,
    /// A required pointer was NULL.
    TERN_NULL_POINTER = 2,
    /// The handle was closed, committed or aborted before this call.
    TERN_CLOSED = 3,
    /// The server could not be reached, or the connection broke.
    TERN_CONNECT = 4,
    /// The server's certificate does not match the pinned fingerprint.
    TERN_UNTRUSTED = 5,
    /// Wrong user name or password.
    TERN_AUTH = 6,
    /// Logged in, but not allowed to do this.
    TERN_DENIED = 7,
    /// No such container or image.
    TERN_NOT_FOUND = 8,
    /// A container or image of that name exists already.
    TERN_ALREADY_EXISTS = 9,
    /// The server's store is full.
    TERN_NO_SPACE = 10,
    /// A limit (such as the container's stream limit) is reached; retry later.
    TERN_BUSY = 11,
    /// The server broke the protocol or speaks an incompatible version.
    TERN_PROTOCOL = 12,
    /// Data failed verification.
    TERN_CORRUPT = 13,
    /// A local I/O error.
    TERN_IO = 14,
    /// The struct_size of an options struct, or an ABI version, is not supported.
    TERN_UNSUPPORTED_VERSION = 15,
    /// The caller's buffer is too small; the needed size was reported.
    TERN_BUFFER_TOO_SMALL = 16,
    /// The operation is not valid for this handle (e.g. reading an image being written).
    TERN_WRONG_STATE = 17,
    /// An internal error in libtern or the server.
    TERN_INTERNAL = 18,
    /// libtern panicked; the handle involved should be freed.
    TERN_PANIC = 19,
    /// The call was cancelled: tern_client_cancel(), or tern_image_abort()
    /// from another thread.
    TERN_CANCELLED = 20,
    /// The call took longer than the client's call_timeout_ms.
    TERN_TIMEOUT = 21,
    /// A retention lock of the image's container forbids it (deleting or
    /// changing a locked image, weakening a compliance lock). Servers
    /// older than protocol 6 say TERN_DENIED.
    TERN_LOCKED = 22,
}

/// An error on its way to the C caller.
pub(crate) struct Failure(pub tern_status, pub String);

pub(crate) type FfiResult<T = ()> = Result<T, Failure>;

impl Failure {
    pub fn new(status: tern_status, msg: impl Into<String>) -> Self {
        Failure(status, msg.into())
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let status = match &e {
            ClientError::Connect { .. } => tern_status::TERN_CONNECT,
            ClientError::Untrusted(_) => tern_status::TERN_UNTRUSTED,
            ClientError::Protocol(_) => tern_status::TERN_PROTOCOL,
            ClientError::Invalid(_) => tern_status::TERN_INVALID_ARGUMENT,
            ClientError::Corrupt(_) => tern_status::TERN_CORRUPT,
            ClientError::Io(_) => tern_status::TERN_IO,
            ClientError::Cancelled => tern_status::TERN_CANCELLED,
            ClientError::TimedOut(_) => tern_status::TERN_TIMEOUT,
            ClientError::ServerTooOld(_) => tern_status::TERN_PROTOCOL,
            ClientError::Server { kind, .. } => match kind {
                ErrorKind::Auth => tern_status::TERN_AUTH,
                ErrorKind::Denied => tern_status::TERN_DENIED,
                ErrorKind::NotFound => tern_status::TERN_NOT_FOUND,
                ErrorKind::AlreadyExists => tern_status::TERN_ALREADY_EXISTS,
                ErrorKind::Invalid => tern_status::TERN_INVALID_ARGUMENT,
                ErrorKind::NoSpace => tern_status::TERN_NO_SPACE,
                ErrorKind::Busy => tern_status::TERN_BUSY,
                ErrorKind::Incompatible | ErrorKind::Protocol => tern_status::TERN_PROTOCOL,
                ErrorKind::Corrupt => tern_status::TERN_CORRUPT,
                ErrorKind::Locked => tern_status::TERN_LOCKED,
                _ => tern_status::TERN_INTERNAL,
            },
            _ => tern_status::TERN_INTERNAL,
        };
        Failure(status, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The message of the last failed call on this thread ("" if none). The string
/// stays valid until the next libtern call on the same thread; copy it to keep it.
#[no_mangle]
pub extern "C" fn tern_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The name of a status code, e.g. "TERN_NOT_FOUND"; "TERN_UNKNOWN_STATUS" for
/// a value this library does not define (a host built against a newer header
/// may pass one). Takes any int. The string is static.
#[no_mangle]
pub extern "C" fn tern_status_name(status: c_int) -> *const c_char {
    status_name(status).as_ptr()
}

fn status_name(status: c_int) -> &'static CStr {
    let known = [
        tern_status::TERN_OK,
        tern_status::TERN_INVALID_ARGUMENT,
        tern_status::TERN_NULL_POINTER,
        tern_status::TERN_CLOSED,
        tern_status::TERN_CONNECT,
        tern_status::TERN_UNTRUSTED,
        tern_status::TERN_AUTH,
        tern_status::TERN_DENIED,
        tern_status::TERN_NOT_FOUND,
        tern_status::TERN_ALREADY_EXISTS,
        tern_status::TERN_NO_SPACE,
        tern_status::TERN_BUSY,
        tern_status::TERN_PROTOCOL,
        tern_status::TERN_CORRUPT,
        tern_status::TERN_IO,
        tern_status::TERN_UNSUPPORTED_VERSION,
        tern_status::TERN_BUFFER_TOO_SMALL,
        tern_status::TERN_WRONG_STATE,
        tern_status::TERN_INTERNAL,
        tern_status::TERN_PANIC,
        tern_status::TERN_CANCELLED,
        tern_status::TERN_TIMEOUT,
        tern_status::TERN_LOCKED,
    ];
    // Compared as integers: turning an unknown int into the enum would be
    // undefined behaviour.
    match known.into_iter().find(|k| *k as c_int == status) {
        Some(k) => known_name(k),
        None => c"TERN_UNKNOWN_STATUS",
    }
}

fn known_name(status: tern_status) -> &'static CStr {
    match status {
        tern_status::TERN_OK => c"TERN_OK",
        tern_status::TERN_INVALID_ARGUMENT => c"TERN_INVALID_ARGUMENT",
        tern_status::TERN_NULL_POINTER => c"TERN_NULL_POINTER",
        tern_status::TERN_CLOSED => c"TERN_CLOSED",
        tern_status::TERN_CONNECT => c"TERN_CONNECT",
        tern_status::TERN_UNTRUSTED => c"TERN_UNTRUSTED",
        tern_status::TERN_AUTH => c"TERN_AUTH",
        tern_status::TERN_DENIED => c"TERN_DENIED",
        tern_status::TERN_NOT_FOUND => c"TERN_NOT_FOUND",
        tern_status::TERN_ALREADY_EXISTS => c"TERN_ALREADY_EXISTS",
        tern_status::TERN_NO_SPACE => c"TERN_NO_SPACE",
        tern_status::TERN_BUSY => c"TERN_BUSY",
        tern_status::TERN_PROTOCOL => c"TERN_PROTOCOL",
        tern_status::TERN_CORRUPT => c"TERN_CORRUPT",
        tern_status::TERN_IO => c"TERN_IO",
        tern_status::TERN_UNSUPPORTED_VERSION => c"TERN_UNSUPPORTED_VERSION",
        tern_status::TERN_BUFFER_TOO_SMALL => c"TERN_BUFFER_TOO_SMALL",
        tern_status::TERN_WRONG_STATE => c"TERN_WRONG_STATE",
        tern_status::TERN_INTERNAL => c"TERN_INTERNAL",
        tern_status::TERN_PANIC => c"TERN_PANIC",
        tern_status::TERN_CANCELLED => c"TERN_CANCELLED",
        tern_status::TERN_TIMEOUT => c"TERN_TIMEOUT",
        tern_status::TERN_LOCKED => c"TERN_LOCKED",
    }
}

/// Runs the body of an exported function: errors become a status and the
/// last-error message, and a panic stops here instead of unwinding into C.
pub(crate) fn guard(f: impl FnOnce() -> FfiResult) -> tern_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error("");
            tern_status::TERN_OK
        }
        Ok(Err(Failure(status, msg))) => {
            set_last_error(&msg);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error in libtern (panic): {what}"));
            tern_status::TERN_PANIC
        }
    }
}

/// Borrows a C string as UTF-8; `what` names the argument in errors.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(Failure::new(
            tern_status::TERN_NULL_POINTER,
            format!("{what} is NULL"),
        ));
    }
    // SAFETY: the caller promises a NUL-terminated string that outlives the call.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| {
        Failure::new(
            tern_status::TERN_INVALID_ARGUMENT,
            format!("{what} is not valid UTF-8"),
        )
    })
}

/// Like [`c_str`], but NULL means "not given".
pub(crate) unsafe fn opt_c_str<'a>(p: *const c_char, what: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        unsafe { c_str(p, what) }.map(Some)
    }
}

/// Checks an out-pointer and returns it as a reference.
pub(crate) unsafe fn out<'a, T>(p: *mut T, what: &str) -> FfiResult<&'a mut T> {
    // SAFETY: non-NULL pointers from the caller point to writable storage for a T.
    unsafe { p.as_mut() }
        .ok_or_else(|| Failure::new(tern_status::TERN_NULL_POINTER, format!("{what} is NULL")))
}

/// Checks the struct_size of a caller's struct against ours: smaller is an older
/// layout this version cannot read; larger is accepted if the unknown tail is zero.
pub(crate) unsafe fn check_struct_size(
    p: *const u8,
    given: usize,
    min: usize,
    ours: usize,
    what: &str,
) -> FfiResult {
    if given < min {
        return Err(Failure::new(
            tern_status::TERN_UNSUPPORTED_VERSION,
            format!(
                "{what}.struct_size is {given}, smaller than the {min} bytes of its first version"
            ),
        ));
    }
    if given > ours {
        // SAFETY: the caller declares `given` readable bytes at `p`.
        let tail = unsafe { std::slice::from_raw_parts(p.add(ours), given - ours) };
        if tail.iter().any(|b| *b != 0) {
            return Err(Failure::new(
                tern_status::TERN_UNSUPPORTED_VERSION,
                format!("{what} sets fields this libtern ({ours} bytes) does not know"),
            ));
        }
    }
    Ok(())
}

/// A struct of the caller's: `T`'s defaults, overwritten by the first
/// `given` bytes at `p` (a caller built against an older header passes a
/// prefix; the fields it does not know keep their defaults).
///
/// # Safety
/// `p` has `given` readable bytes, which [`check_struct_size`] accepted, and
/// `T` is a `repr(C)` struct whose fields are valid for any bytes a C caller
/// can put there (integers and pointers).
pub(crate) unsafe fn read_prefix<T>(p: *const T, given: usize, defaults: T) -> T {
    let mut out = std::mem::MaybeUninit::new(defaults);
    let n = given.min(std::mem::size_of::<T>());
    // SAFETY: both regions have at least `n` bytes and do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), out.as_mut_ptr().cast::<u8>(), n) };
    // SAFETY: initialized from `defaults`, then partly overwritten by field bytes.
    unsafe { out.assume_init() }
}

/// The struct_size a caller set at the start of its output struct `p`, read
/// alone (an older caller's struct may be shorter than ours); NULL and sizes
/// too small to hold struct_size itself are refused.
///
/// # Safety
/// `p` is NULL or points to a caller's struct that begins with a `usize` struct_size.
pub(crate) unsafe fn out_struct_size<T>(p: *mut T, what: &str) -> FfiResult<usize> {
    if p.is_null() {
        return Err(Failure::new(
            tern_status::TERN_NULL_POINTER,
            format!("{what} is NULL"),
        ));
    }
    // SAFETY: by contract `p` points to at least a struct_size.
    let size = unsafe { p.cast::<usize>().read_unaligned() };
    if size < std::mem::size_of::<usize>() {
        return Err(Failure::new(
            tern_status::TERN_UNSUPPORTED_VERSION,
            format!("{what}.struct_size is too small"),
        ));
    }
    Ok(size)
}
