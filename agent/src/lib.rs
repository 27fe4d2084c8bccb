//! tern-agent: the client library behind the `tern` CLI and `libtern`.
//!
//! ```no_run
//! use std::io::Write;
//! use tern_agent::{Client, ClientOptions};
//! let client = Client::connect(&ClientOptions::new("backup.example:9443", "admin", "secret"))?;
//! let mut w = client.create_image("nightly", "2026-11-22", b"dma props")?;
//! w.write_all(b"image bytes")?;
//! let committed = w.commit()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`conn`]: one connection: TLS with pinning, request/answer matching.
//! - [`writer`]: the dedup write pipeline (chunk, hash, ask, compress, send).
//! - [`reader`]: random-access reads with read-ahead.
//! - [`trust`]: remembered server fingerprints (trust on first use).
//! - [`config`]: the client configuration file, `client.toml`.
//! - [`identity`]: the client's own certificate, which sessions are bound to.

pub mod bench;
mod client;
pub mod config;
pub mod conn;
mod error;
pub mod identity;
pub mod reader;
pub mod trust;
pub mod writer;

pub use client::{Client, ClientOptions};
pub use error::ClientError;
pub use reader::ImageReader;
pub use tern_core::wire::{
    ContainerInfo, ContainerSettings, ImageInfo, StoreStats, WriteMode, WriteStats,
};
pub use writer::{Committed, ImageWriter};
