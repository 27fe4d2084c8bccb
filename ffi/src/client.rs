//! tern_client: connecting, containers, listing and deleting images, statistics.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use tern_agent::{Client, ClientOptions, WriteMode};
use tern_core::tls::Fingerprint;

use crate::error::{
    c_str, check_struct_size, guard, opt_c_str, out, out_struct_size, read_prefix, tern_status,
    Failure, FfiResult,
};
use crate::handle::{borrow, free, into_raw, Handle};

/// How an image's data is sent.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tern_write_mode {
    /// The client chunks, hashes and sends only the chunks the server lacks (default).
    TERN_WRITE_DEDUP = 0,
    /// The client sends raw data; the server chunks and dedups (for weak clients).
    TERN_WRITE_PASSTHROUGH = 1,
}

/// Options for tern_client_open(). Initialize with tern_client_options_init().
#[repr(C)]
pub struct tern_client_options {
    /// sizeof(tern_client_options), set by tern_client_options_init().
    pub struct_size: usize,
    /// "host" or "host:port" (default port 9443). Required.
    pub server: *const c_char,
    /// User name. Required.
    pub user: *const c_char,
    /// Password. Required.
    pub password: *const c_char,
    /// The server certificate's fingerprint ("sha256:..." as `ternd fingerprint`
    /// prints it). NULL trusts the certificate seen first and, if
    /// remember_server is set, remembers it in the user's tern config directory.
    pub fingerprint: *const c_char,
    /// TERN_WRITE_DEDUP (default) or TERN_WRITE_PASSTHROUGH.
    pub write_mode: u32,
    /// Nonzero: use the server's plaintext loopback listener instead of TLS.
    pub plain: u32,
    /// Nonzero (default): remember a fingerprint trusted on first use.
    pub remember_server: u32,
    /// MultiConnect: connections carrying the session, 1..=64. 0 means the
    /// default: 4 over TLS, 1 over plaintext.
    pub connections: u32,
    /// Secure Connect (sessions that ride out connection loss): 0 or 1 on (the
    /// default), 2 off (a lost connection fails the calls in progress).
    pub secure_connect: u32,
    /// Seconds to keep reconnecting when every connection is lost, before
    /// calls fail with TERN_CONNECT; 0 means the default (600). The server's
    /// own grace period caps it.
    pub grace_period_secs: u32,
    /// Nonzero: also accept servers that speak only TLS 1.2 (TLS 1.3 otherwise).
    pub allow_tls12: u32,
    /// Bytes of sent, unacknowledged data kept in memory for resending after
    /// a reconnect; 0 means the default (64 MiB). It bounds the session's
    /// resend cache, shared by every image of the client, not how far one
    /// writer runs ahead: each image being written also holds up to 12 batch
    /// buffers of 4 to 6 MiB (72 MiB at most) in its pipeline (chunking,
    /// hashing, compression).
    pub cache_memory_bytes: u64,
    /// Bytes more kept in a spill file once memory is full; 0 means the
    /// default (1 GiB), TERN_CACHE_DISK_OFF turns spilling off.
    pub cache_disk_bytes: u64,
    /// Directory for the spill file; NULL means the system's temporary
    /// directory. The file is unlinked at once and leaves nothing behind.
    pub spill_dir: *const c_char,
    /// The client's certificate and key (PEM files), presented to the server,
    /// which binds sessions to it. Both NULL: client.crt and client.key in the
    /// user's tern config directory, created on first use.
    pub client_cert: *const c_char,
    pub client_key: *const c_char,
    /// The longest any one call may block, in milliseconds; 0 (the default)
    /// sets no limit of its own (a call then waits at most as long as the
    /// session lives through an outage: the grace period). Past it the call
    /// returns TERN_TIMEOUT: a call on an image loses the image (abort and
    /// free it), a call on the client leaves the client usable. Added in
    /// libtern 0.2; an older struct_size leaves it 0.
    pub call_timeout_ms: u64,
    /// The longest each step of opening a connection may take, in
    /// milliseconds, enforced by the client whatever the server does: the
    /// TLS handshake, Hello until Welcome, and Login until its answer. 0
    /// means the default (30 s). Past it tern_client_open returns
    /// TERN_CONNECT (or TERN_TIMEOUT) naming the step. Added in libtern
    /// 0.3; an older struct_size leaves it 0.
    pub handshake_timeout_ms: u64,
}

/// The size of the first tern_client_options (libtern 0.1): shorter ones are refused.
const OPTIONS_V1_SIZE: usize = std::mem::offset_of!(tern_client_options, call_timeout_ms);

fn default_options() -> tern_client_options {
    tern_client_options {
        struct_size: std::mem::size_of::<tern_client_options>(),
        server: std::ptr::null(),
        user: std::ptr::null(),
        password: std::ptr::null(),
        fingerprint: std::ptr::null(),
        write_mode: tern_write_mode::TERN_WRITE_DEDUP as u32,
        plain: 0,
        remember_server: 1,
        connections: 0,
        secure_connect: 0,
        grace_period_secs: 0,
        allow_tls12: 0,
        cache_memory_bytes: 0,
        cache_disk_bytes: 0,
        spill_dir: std::ptr::null(),
        client_cert: std::ptr::null(),
        client_key: std::ptr::null(),
        call_timeout_ms: 0,
        handshake_timeout_ms: 0,
    }
}

/// tern_client_options.cache_disk_bytes: keep unacknowledged data in memory only.
pub const TERN_CACHE_DISK_OFF: u64 = u64::MAX;

/// Statistics of one client since it was opened.
#[repr(C)]
#[derive(Default)]
pub struct tern_client_statistics {
    /// sizeof(tern_client_statistics), set by the caller.
    pub struct_size: usize,
    /// Images committed through this client.
    pub images_committed: u64,
    /// Bytes of those images.
    pub logical_bytes: u64,
    /// Chunk bytes sent for those images (as tern_image_statistics.sent_bytes:
    /// compressed chunks in dedup mode, raw bytes in passthrough mode).
    pub sent_bytes: u64,
    /// Bytes the server's store grew by for those images.
    pub new_bytes: u64,
    /// All bytes written to the network, including protocol overhead.
    pub wire_bytes: u64,
    /// logical_bytes / new_bytes; 0 when the store grew by nothing (nothing
    /// new, or nothing written): the same convention as an image's.
    pub dedup_ratio: f64,
}

/// A connection to a tern server. Thread-safe: share it between threads.
pub struct tern_client {
    client: RwLock<Option<Client>>,
    pub(crate) counters: std::sync::Arc<Counters>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub images: AtomicU64,
    pub logical: AtomicU64,
    pub sent: AtomicU64,
    pub new: AtomicU64,
}

impl tern_client {
    /// The live client, or TERN_CLOSED.
    pub(crate) fn get(&self) -> FfiResult<Client> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Failure::new(tern_status::TERN_CLOSED, "the client was closed"))
    }
}

impl Handle for tern_client {
    const NAME: &'static str = "client";
}

/// Fills the first version of tern_client_options (libtern 0.1) with the
/// defaults and sets struct_size to that version's size; the fields added
/// later keep their defaults in tern_client_open(). Does nothing if `opts`
/// is NULL. Programs built against this header do not call it: the macro
/// tern_client_options_init(opts) below calls tern_client_options_init_sized()
/// with sizeof(*opts). This symbol stays for programs built against an older
/// header, whose struct may be the first version's size: it never writes
/// past that.
///
/// # Safety
/// `opts` is NULL or points to at least the first version of a writable
/// tern_client_options.
#[no_mangle]
pub unsafe extern "C" fn tern_client_options_init(opts: *mut tern_client_options) {
    // SAFETY: by this function's contract `opts` has room for the first version.
    unsafe { tern_client_options_init_sized(opts, OPTIONS_V1_SIZE) }
}

/// Fills `opts`, a struct of `size` bytes, with the defaults and sets its
/// struct_size: the first min(size, sizeof(tern_client_options)) bytes are
/// written, never more. Does nothing if `opts` is NULL or `size` is smaller
/// than the first version of the struct (libtern 0.1), which
/// tern_client_open() would refuse anyway. Call it through the macro
/// tern_client_options_init(opts).
///
/// # Safety
/// `opts` is NULL or points to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn tern_client_options_init_sized(
    opts: *mut tern_client_options,
    size: usize,
) {
    if opts.is_null() || size < OPTIONS_V1_SIZE {
        return;
    }
    let n = size.min(std::mem::size_of::<tern_client_options>());
    let defaults = tern_client_options {
        struct_size: n,
        ..default_options()
    };
    // SAFETY: `opts` has `size` >= `n` writable bytes (this function's
    // contract), `defaults` has `n` readable ones, and they do not overlap.
    unsafe { copy_prefix(&defaults, opts, n) };
}

/// Connects to a server, verifies its certificate and logs in.
///
/// On success *out is a new client; free it with tern_client_free().
/// Errors: TERN_NULL_POINTER, TERN_UNSUPPORTED_VERSION (struct_size),
/// TERN_INVALID_ARGUMENT, TERN_CONNECT, TERN_UNTRUSTED, TERN_AUTH, TERN_PROTOCOL.
///
/// # Safety
/// `opts` is NULL or points to options of at least the `struct_size` they declare, whose strings are NULL or NUL-terminated; `out_client` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tern_client_open(
    opts: *const tern_client_options,
    out_client: *mut *mut tern_client,
) -> tern_status {
    guard(|| {
        // SAFETY: tern.h: an out-pointer is NULL (refused by `out`) or points to writable storage of its type.
        let out_client = unsafe { out(out_client, "out")? };
        // SAFETY: tern.h: an options pointer is NULL (handled) or points to the caller's options struct.
        let o = unsafe { opts.as_ref() }
            .ok_or_else(|| Failure::new(tern_status::TERN_NULL_POINTER, "options is NULL"))?;
        // SAFETY: tern.h: `opts` points to a struct of at least the struct_size it declares.
        unsafe {
            check_struct_size(
                opts.cast(),
                o.struct_size,
                OPTIONS_V1_SIZE,
                std::mem::size_of::<tern_client_options>(),
                "tern_client_options",
            )?
        };
        // SAFETY: the struct_size was just checked; the fields are integers and pointers.
        let o = unsafe { read_prefix(opts, o.struct_size, default_options()) };
        // SAFETY: `o` was read from the caller's struct: its strings are NULL or NUL-terminated and alive for the call (tern.h).
        let options = unsafe { client_options(&o)? };
        let client = Client::connect(&options)?;
        *out_client = into_raw(tern_client {
            client: RwLock::new(Some(client)),
            counters: Default::default(),
        });
        Ok(())
    })
}

/// The client options a C caller's struct asks for.
///
/// # Safety
/// The struct's strings are NULL or NUL-terminated and alive for the call.
unsafe fn client_options(o: &tern_client_options) -> Result<ClientOptions, Failure> {
    // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
    let server = unsafe { c_str(o.server, "options.server")? };
    // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
    let user = unsafe { c_str(o.user, "options.user")? };
    // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
    let password = unsafe { c_str(o.password, "options.password")? };
    let mut options = ClientOptions::new(server, user, password);
    apply_numbers(o, &mut options)?;
    // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
    if let Some(fp) = unsafe { opt_c_str(o.fingerprint, "options.fingerprint")? } {
        options.fingerprint = Some(Fingerprint::parse(fp).ok_or_else(|| {
            Failure::new(
                tern_status::TERN_INVALID_ARGUMENT,
                format!("options.fingerprint {fp:?} is not a SHA-256 fingerprint"),
            )
        })?);
    }
    // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
    if let Some(dir) = unsafe { opt_c_str(o.spill_dir, "options.spill_dir")? } {
        options.spill_dir = Some(dir.into());
    }
    // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
    let cert = unsafe { opt_c_str(o.client_cert, "options.client_cert")? };
    // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
    let key = unsafe { opt_c_str(o.client_key, "options.client_key")? };
    options.identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c.into(), k.into())),
        (None, None) => None,
        _ => {
            return Err(Failure::new(
                tern_status::TERN_INVALID_ARGUMENT,
                "options.client_cert and options.client_key go together: set both or neither",
            ))
        }
    };
    if o.call_timeout_ms > 0 {
        options.call_timeout = Some(std::time::Duration::from_millis(o.call_timeout_ms));
    }
    if o.handshake_timeout_ms > 0 {
        options.handshake_timeout = std::time::Duration::from_millis(o.handshake_timeout_ms);
    }
    Ok(options)
}

/// The options' numbers and flags, checked.
fn apply_numbers(o: &tern_client_options, options: &mut ClientOptions) -> Result<(), Failure> {
    options.mode = match o.write_mode {
        0 => WriteMode::Dedup,
        1 => WriteMode::Passthrough,
        m => {
            return Err(Failure::new(
                tern_status::TERN_INVALID_ARGUMENT,
                format!("options.write_mode {m} is not a tern_write_mode"),
            ))
        }
    };
    options.plain = o.plain != 0;
    options.remember_servers = o.remember_server != 0;
    if o.connections > 64 {
        return Err(Failure::new(
            tern_status::TERN_INVALID_ARGUMENT,
            format!("options.connections {} is more than 64", o.connections),
        ));
    }
    options.connections = o.connections as usize;
    options.secure_connect = match o.secure_connect {
        0 | 1 => true,
        2 => false,
        v => {
            return Err(Failure::new(
                tern_status::TERN_INVALID_ARGUMENT,
                format!("options.secure_connect {v} is not 0, 1 or 2"),
            ))
        }
    };
    if o.grace_period_secs > 0 {
        options.grace_period = std::time::Duration::from_secs(o.grace_period_secs.into());
    }
    options.allow_tls12 = o.allow_tls12 != 0;
    if o.cache_memory_bytes > 0 {
        options.cache_memory = usize::try_from(o.cache_memory_bytes).unwrap_or(usize::MAX);
    }
    options.cache_disk = match o.cache_disk_bytes {
        0 => options.cache_disk,
        TERN_CACHE_DISK_OFF => 0,
        n => n,
    };
    Ok(())
}

/// Disconnects. Later calls with this client fail with TERN_CLOSED; images
/// still open keep their connection until they are freed. The client must
/// still be freed with tern_client_free(). Closing twice is TERN_CLOSED.
///
/// # Safety
/// `client` is NULL or a handle from tern_client_open not yet freed.
#[no_mangle]
pub unsafe extern "C" fn tern_client_close(client: *mut tern_client) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        match c.client.write().unwrap_or_else(|e| e.into_inner()).take() {
            Some(_) => Ok(()),
            None => Err(Failure::new(
                tern_status::TERN_CLOSED,
                "the client was already closed",
            )),
        }
    })
}

/// Cancels: every call in progress on the client and its images, on any
/// thread, returns TERN_CANCELLED within a second, outage or not, and so does
/// every later call but the _free functions. Images being written are lost.
/// Meant for stopping a job: free the images and the client afterwards.
/// Errors: TERN_NULL_POINTER, TERN_CLOSED.
///
/// # Safety
/// `client` is NULL or a live handle; other threads may be in calls on it.
#[no_mangle]
pub unsafe extern "C" fn tern_client_cancel(client: *const tern_client) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        c.get()?.cancel();
        Ok(())
    })
}

/// Closes (if needed) and frees a client. NULL is ignored. The pointer is
/// invalid afterwards. tern_last_error() keeps the message of the call before.
///
/// # Safety
/// `client` is NULL or a handle from tern_client_open not yet freed, and no other thread uses it during or after this call.
#[no_mangle]
pub unsafe extern "C" fn tern_client_free(client: *mut tern_client) {
    // SAFETY: a handle argument, freed once by the caller's contract (tern.h).
    unsafe { free(client) }
}

/// Fills *stats with this client's statistics. Set stats->struct_size first;
/// fields past it are not written.
///
/// # Safety
/// `client` is NULL or a live handle; `stats` is NULL or points to at least `stats->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn tern_client_stats(
    client: *const tern_client,
    stats: *mut tern_client_statistics,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: `stats` is NULL or points to the caller's struct.
        let size = unsafe { out_struct_size(stats, "stats")? };
        let wire = c.get()?.bytes_sent();
        let k = &c.counters;
        let logical = k.logical.load(Ordering::Relaxed);
        let new = k.new.load(Ordering::Relaxed);
        let full = tern_client_statistics {
            struct_size: size.min(std::mem::size_of::<tern_client_statistics>()),
            images_committed: k.images.load(Ordering::Relaxed),
            logical_bytes: logical,
            sent_bytes: k.sent.load(Ordering::Relaxed),
            new_bytes: new,
            wire_bytes: wire,
            dedup_ratio: tern_agent::dedup_ratio(logical, new),
        };
        // SAFETY: the caller's struct_size (checked above) says how many bytes `stats` has room for.
        unsafe { copy_prefix(&full, stats, size) };
        Ok(())
    })
}

/// Copies the first `size` bytes of `src` (at most the whole struct) to `dst`.
pub(crate) unsafe fn copy_prefix<T>(src: &T, dst: *mut T, size: usize) {
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: dst has at least `size` writable bytes (the caller's struct_size).
    unsafe { std::ptr::copy_nonoverlapping((src as *const T).cast::<u8>(), dst.cast::<u8>(), n) };
}

/// One container, as passed to a tern_container_cb. Valid only during the callback.
#[repr(C)]
/// Fields may be added at the end in later versions (the library allocates
/// it; a caller reads the fields its header knows).
pub struct tern_container_info {
    pub name: *const c_char,
    /// The storage group it belongs to.
    pub group: *const c_char,
    pub images: u64,
    /// Sum of the sizes of its images.
    pub logical_bytes: u64,
    /// Its FastCDC chunk sizes: smallest, average aimed at, largest (bytes).
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    /// Its zstd level.
    pub zstd_level: i32,
    /// Images that may be written at once (0: no limit).
    pub stream_limit: u32,
    /// TERN_CONTAINER_REPLICA and TERN_CONTAINER_IMPORT, or 0.
    pub flags: u32,
}

/// tern_container_info.flags: a replica container (only replication writes
/// images into it; clients read, list and delete them).
pub const TERN_CONTAINER_REPLICA: u32 = 1;
/// tern_container_info.flags: replicas arriving raise import events.
pub const TERN_CONTAINER_IMPORT: u32 = 2;

/// Called once per container; return 0 to go on, nonzero to stop.
pub type tern_container_cb =
    Option<unsafe extern "C" fn(ctx: *mut c_void, info: *const tern_container_info) -> c_int>;

/// Calls `cb` for each container the user may use.
/// Errors: TERN_NULL_POINTER, TERN_CLOSED, TERN_CONNECT.
///
/// # Safety
/// `client` is NULL or a live handle; `cb` is NULL (refused) or a valid function; `ctx` is passed to it untouched.
#[no_mangle]
pub unsafe extern "C" fn tern_container_list(
    client: *const tern_client,
    cb: tern_container_cb,
    ctx: *mut c_void,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        let cb =
            cb.ok_or_else(|| Failure::new(tern_status::TERN_NULL_POINTER, "callback is NULL"))?;
        for info in c.get()?.container_list()? {
            let name = cstring(info.name.as_str());
            let group = cstring(info.group.as_str());
            let ci = tern_container_info {
                name: name.as_ptr(),
                group: group.as_ptr(),
                images: info.images,
                logical_bytes: info.logical_bytes,
                chunk_min: info.chunking.min,
                chunk_avg: info.chunking.avg,
                chunk_max: info.chunking.max,
                zstd_level: info.zstd_level,
                stream_limit: info.stream_limit,
                flags: if info.replica {
                    TERN_CONTAINER_REPLICA
                } else {
                    0
                } | if info.import {
                    TERN_CONTAINER_IMPORT
                } else {
                    0
                },
            };
            // SAFETY: tern.h: a non-NULL callback is a valid function; `ctx` is passed through untouched and the item lives for the call.
            if unsafe { cb(ctx, &ci) } != 0 {
                break;
            }
        }
        Ok(())
    })
}

/// Deletes a container that holds no image (delete its images first).
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT (a bad name, or images
/// left in it), TERN_NOT_FOUND, TERN_BUSY (images being written), TERN_CLOSED,
/// TERN_CONNECT, TERN_CANCELLED, TERN_TIMEOUT.
///
/// # Safety
/// `client` is NULL or a live handle; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tern_container_remove(
    client: *const tern_client,
    name: *const c_char,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let name = unsafe { c_str(name, "name")? };
        c.get()?.container_remove(name)?;
        Ok(())
    })
}

/// Creates a container with the server's default settings, in the default
/// storage group, or in GROUP when `name` is `GROUP/NAME`. Container names are
/// per storage group; wherever a function takes a container, `GROUP/NAME`
/// names the one in GROUP, and a bare name the only one the user can see
/// (TERN_INVALID_ARGUMENT when the user sees several).
/// Errors: TERN_NULL_POINTER, TERN_INVALID_ARGUMENT, TERN_ALREADY_EXISTS, TERN_DENIED, TERN_CLOSED, TERN_CONNECT.
///
/// # Safety
/// `client` is NULL or a live handle; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tern_container_create(
    client: *const tern_client,
    name: *const c_char,
) -> tern_status {
    guard(|| {
        // SAFETY: a handle argument (tern.h; see handle.rs).
        let c = unsafe { borrow(client)? };
        // SAFETY: tern.h: a string argument is NULL (refused or "not given") or NUL-terminated and alive for the call.
        let name = unsafe { c_str(name, "name")? };
        c.get()?.container_create(name, Default::default())?;
        Ok(())
    })
}

/// Names never hold NUL (the server refuses them), so this cannot lose data.
pub(crate) fn cstring(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}
