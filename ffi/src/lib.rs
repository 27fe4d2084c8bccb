//! libtern: the C ABI over the tern client library.
//!
//! The header `include/tern.h` is generated from this crate by cbindgen; the
//! `header_is_current` test fails when it is stale. The rules every function
//! here follows are at the top of that header.

#![allow(non_camel_case_types)] // C names: tern_client, tern_status
#![warn(clippy::undocumented_unsafe_blocks)]

mod capacity;
mod catalog;
mod client;
mod error;
mod handle;
mod image;
mod plugin;
mod progress;
mod replication;
mod synth;

pub use capacity::*;
pub use catalog::*;
pub use client::*;
pub use error::{tern_last_error, tern_status, tern_status_name};
pub use image::*;
pub use plugin::*;
pub use progress::*;
pub use replication::*;
pub use synth::*;

/// The ABI version this library implements; pass it to tern_plugin_entry().
pub const TERN_ABI_VERSION: u32 = 1;

/// The largest image properties tern_image_create() takes, in bytes.
pub const TERN_MAX_PROPS_LEN: usize = 65536;

// The header needs a literal; it must be the library's limit.
const _: () = assert!(TERN_MAX_PROPS_LEN == tern_core::wire::MAX_PROPS_LEN);

/// The library's version, e.g. "0.1.0". The string is static.
#[no_mangle]
pub extern "C" fn tern_version() -> *const std::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
