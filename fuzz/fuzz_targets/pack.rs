//! Pack files from disk, and what a cloud group reads back from its bucket
//! and its journal: damage must be reported, never crash the server.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern_server::store::cloud::{journal, sealed};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0000000000000001.pack");
    std::fs::write(&path, data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let _ = tern_server::store::pack::read_contents(&file, 1);
    let _ = tern_server::store::pack::Location::decode(data);
    let _ = journal::replay(data);
    // An object as the bucket gave it: its header, then its first segment.
    if let Ok(h) = sealed::ObjectHeader::decode(data) {
        let key = sealed::DataKey([1; 32]);
        let rest = data.get(sealed::HEADER_LEN as usize..).unwrap_or_default();
        let _ = sealed::open_segment(&key, &[2; 16], &h, 0, &mut rest.to_vec());
    }
});
