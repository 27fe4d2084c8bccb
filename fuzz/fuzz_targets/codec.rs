//! Chunk payloads from clients and from disk: decoding must verify or fail.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern_core::{codec, ChunkId, Codec};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let raw_len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let codec = if data[4] & 1 == 0 { Codec::Raw } else { Codec::Zstd };
    let body = &data[5..];
    let id = ChunkId::of(body);
    let _ = codec::decode(&id, codec, raw_len, body);
});
