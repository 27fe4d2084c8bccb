//! The protocol layer: listeners, sessions and the requests they carry.
//! A request is checked (`service::access`), decided by the service layer
//! and stored by the engine; this layer only speaks the wire.
//!
//! - [`listen`]: the TLS and plaintext accept loops.
//! - [`sessions`]: the registry of live sessions, starting and joining them.
//! - [`handler`]: one session's handler: its user and open images.
//! - `intake`: the threads a session checks and stores its chunks on.
//! - `requests`: what each request does, one module per family.
//! - [`control`]: the local control socket of `ternd gc|fsck|seed`.
//! - [`metrics`]: counters and gauges for Prometheus, and their endpoint.
//! - `logins`: the slow-down of failed logins.

pub mod control;
pub mod handler;
mod intake;
pub mod listen;
mod logins;
pub mod metrics;
mod requests;
pub mod sessions;
