//! tern-core: the pieces every tern program shares.
//!
//! - [`id`]: chunk identity (blake3 of the plaintext).
//! - [`chunker`]: streaming FastCDC with a container's parameters.
//! - [`codec`]: the stored form of a chunk (zstd or raw), verified on every decode.
//! - [`names`]: validated container and image names.
//! - [`wire`]: frames and messages of the tern protocol.
//! - [`tls`]: identities, certificate fingerprints, pinning, rustls configurations.
//! - [`defaults`]: the port, grace period and cache sizes both ends share.
//! - [`session`]: sequence numbers, acknowledgements and a framed connection.

#![warn(missing_docs)]

pub mod chunker;
pub mod codec;
pub mod defaults;
pub mod id;
pub mod names;
pub mod session;
pub mod time;
pub mod tls;
pub mod units;
pub mod wire;

pub use chunker::{ChunkBatch, ChunkBatcher, ChunkParams, StreamChunker};
pub use codec::{Codec, EncodedChunk};
pub use id::ChunkId;
pub use names::{ContainerName, ImageName, NameError};
