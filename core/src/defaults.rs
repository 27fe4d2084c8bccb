//! Defaults that ternd and its clients share, stated once.

use std::time::Duration;

/// The TLS port ternd listens on and clients dial.
pub const PORT: u16 = 9443;
/// How long a session survives without any connection (Secure Connect).
pub const GRACE_PERIOD: Duration = Duration::from_secs(600);
/// Bytes of sent, unacknowledged frames a session keeps in memory.
pub const SESSION_CACHE_MEMORY: usize = 64 << 20;
/// Bytes more of them a session keeps in a spill file once memory is full.
pub const SESSION_CACHE_DISK: u64 = 1 << 30;
/// How long a peer has for its handshake (TLS, Hello and Welcome, Login):
/// the server holds an unauthenticated connection no longer, and a client
/// waits no longer for a server that does not answer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes a connection's socket is read and written in at once, each way.
/// TLS reads its records a few KiB at a time and writes each record (at
/// most 16 KiB) with a system call of its own; on TCP each of those also
/// costs the sending and processing of segments and acknowledgements.
pub const SOCKET_BUFFER: usize = 64 << 10;
