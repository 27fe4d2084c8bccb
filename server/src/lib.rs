//! ternd: the tern backup target, in three layers whose imports point down
//! only:
//!
//! - [`protocol`]: listeners, sessions and requests; it speaks the wire.
//! - [`service`]: who may do what ([`service::access`]), users,
//!   replication, seeding and shaping.
//! - [`store`]: the engine: packs, chunk index and catalog, image write and
//!   read, GC and fsck. It knows no users, partners or wire sessions.
//!
//! [`server::Server`] wires them; `ternd serve` is a thin binary around it.
//! Beside them: [`upkeep`] (checkpoints of idle images, expiry of
//! incomplete ones), [`config`] and [`certs`] (configuration, TLS identity).

pub mod certs;
pub mod config;
pub mod protocol;
pub mod server;
pub mod service;
pub mod store;
pub mod upkeep;
