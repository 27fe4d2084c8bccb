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
//! Public: [`Client`] and its options, [`ImageWriter`], [`ImageReader`],
//! [`config`] (the client configuration file, `client.toml`), [`identity`]
//! (the client's own certificate, which sessions are bound to). The `tern`
//! command is the `tern-cli` crate, so that neither this library nor
//! `libtern` carries a command line's dependencies. Inside: `session` (a session over one or more TLS
//! connections with pinning, request/answer matching), `writer` (the dedup
//! and passthrough write pipelines), `reader` (random-access reads with
//! read-ahead), `trust` (remembered server fingerprints).

#![warn(missing_docs)]

mod catalog;
mod client;
pub mod config;
mod error;
mod groups;
pub mod identity;
mod options;
mod paging;
mod reader;
mod replication;
mod session;
mod shaping;
mod stop;
mod tier;
mod trust;
mod users;
mod writer;

pub use client::Client;
pub use error::ClientError;
pub use options::{ClientOptions, MAX_CONNECTIONS};
pub use reader::ImageReader;
pub use replication::{CopyTarget, PendingNeed, ReplicaSpec, ReplicaStart, ReplicaWriter};
pub use stop::Stop;
pub use tern_core::wire::{
    ContainerInfo, ContainerSettings, CopyId, CopyInfo, CopyState, ImageInfo, ImportEvent,
    PartnerInfo, StoreStats, TrailEntry, TrailResult, TrailSide, WriteMode, WriteStats,
};
pub use writer::{dedup_ratio, Committed, ExtentWritten, ImageWriter, WRITE_BATCH_BYTES};
