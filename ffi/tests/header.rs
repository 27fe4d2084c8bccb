//! include/tern.h must be exactly what cbindgen makes of this crate.
//! Regenerate with `TERN_BLESS=1 cargo test -p tern-ffi --test header`.

use std::path::Path;

#[test]
fn header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut generated);
    let path = crate_dir.join("../include/tern.h");
    if std::env::var_os("TERN_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/tern.h is stale: run TERN_BLESS=1 cargo test -p tern-ffi --test header and commit it"
    );
}
