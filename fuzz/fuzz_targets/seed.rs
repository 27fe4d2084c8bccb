//! Seed media (volumes and manifests carried between sites): a damaged or
//! hostile seed file must be refused, never crash or exhaust the importer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern_server::service::seed::format::{Record, SegmentReader};
use tern_server::service::seed::seal::Sealer;

fuzz_target!(|data: &[u8]| {
    let _ = Record::decode_all(data);
    let dir = tempfile::tempdir().unwrap();
    // As a manifest: without a password an encrypted one stops before the
    // key derivation (whose cost its parameters set, within bounds).
    std::fs::write(dir.path().join("manifest.tern"), data).unwrap();
    let _ = tern_server::service::seed::read_manifest(dir.path(), None);
    // As an unencrypted volume, segment by segment.
    let path = dir.path().join("vol-000001.tern");
    std::fs::write(&path, data).unwrap();
    let plain = Sealer::Plain;
    if let Ok(mut r) = SegmentReader::open(&path, &plain, u64::MAX) {
        while let Ok(Some(segment)) = r.next_segment() {
            let _ = Record::decode_all(&segment);
        }
    }
});
