//! Shared by the seeding tests: reading `ternd seed` output, password
//! files and the volumes on a device.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn password_file(dir: &Path, password: &str) -> PathBuf {
    let p = dir.join(format!("pw-{password}"));
    std::fs::write(&p, format!("{password}\n")).unwrap();
    p
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn volumes(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("vol-"))
        .collect();
    v.sort();
    v
}
