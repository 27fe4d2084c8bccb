//! ternd: the tern backup target.
//!
//! - [`store`]: packs, chunk index and catalog; GC and fsck.
//! - [`listen`]: the accept loop; [`handler`]: sessions and their handler;
//!   `requests`: what each request does.
//! - [`control`]: the local control socket used by `ternd gc|fsck` on a running server.
//! - [`replication`]: partners and copy jobs (the source side; the target
//!   side is the store's `replica` module).
//! - [`upkeep`]: checkpoints of idle images, expiry of incomplete ones.
//! - [`config`], [`certs`]: configuration, TLS identity.

pub mod certs;
pub mod config;
pub mod control;
pub mod handler;
pub mod listen;
mod logins;
pub mod replication;
mod requests;
pub mod seed;
pub mod shaping;
pub mod store;
pub mod upkeep;
