//! ternd: the tern backup target.
//!
//! - [`store`]: packs, chunk index and catalog; GC and fsck.
//! - [`net`]: listeners and the per-connection protocol handler.
//! - [`control`]: the local control socket used by `ternd gc|fsck` on a running server.
//! - [`config`], [`certs`], [`auth`]: configuration, TLS identity, passwords.

pub mod auth;
pub mod certs;
pub mod config;
pub mod control;
pub mod net;
pub mod store;
