//! Frames from the network: any bytes must decode or fail, never panic or over-allocate.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((_, used)) = tern_core::wire::Frame::decode(rest) {
        rest = &rest[used..];
    }
});
