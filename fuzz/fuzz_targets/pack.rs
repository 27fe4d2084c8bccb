//! Pack files from disk: a damaged pack must be reported, never crash the server.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0000000000000001.pack");
    std::fs::write(&path, data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let _ = tern_server::store::pack::read_contents(&file, 1);
    let _ = tern_server::store::pack::Location::decode(data);
});
