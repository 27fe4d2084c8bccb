//! The service layer: what a backup target does with its engine, and who
//! may ask for it. It knows users and partners; the engine (`store`) knows
//! neither, and the protocol layer (`protocol`) only carries requests here.
//!
//! - [`access`]: who may do what, decided in one place.
//! - [`audit`]: the audit log of security-relevant acts.
//! - [`users`]: user records and logins.
//! - [`replication`]: partners and copies (this server as a source); the
//!   target's side of a copy is the engine's replicas and import events.
//! - [`seed`]: seeds on portable media, written and loaded.
//! - [`shaping`]: bandwidth groups for copies, backups and restores.
//! - [`tier`]: the cloud tier's policies and the mover that copies images.

pub mod access;
pub mod audit;
pub mod replication;
pub mod seed;
pub mod shaping;
pub mod tier;
pub mod users;
