//! tern_client_group_capacity: one storage group's figures, a group on a
//! volume of its own with its own filesystem's, as `tern group ls` shows.

mod common;

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;

use common::*;
use tern::*;
use tern_test_support::*;

fn tern_ok(server: &TestServer, args: &[&str]) -> String {
    let out = server.tern(args, None);
    assert!(
        out.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn group_capacity(c: *mut tern_client, group: &str) -> (tern_status, tern_capacity) {
    let name = CString::new(group).unwrap();
    let mut cap: tern_capacity = unsafe { std::mem::zeroed() };
    cap.struct_size = std::mem::size_of::<tern_capacity>();
    let status = unsafe { tern_client_group_capacity(c, name.as_ptr(), &mut cap) };
    (status, cap)
}

#[test]
fn group_capacity_gives_each_groups_own_figures() {
    let server = TestServer::start();
    let vol = tempfile::tempdir().unwrap();
    std::fs::set_permissions(vol.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = vol.path().to_str().unwrap();
    tern_ok(&server, &["group", "add", "fast", "--path", path]);
    tern_ok(&server, &["container", "create", "fast/c"]);
    tern_ok(&server, &["container", "create", "d"]);
    let files = tempfile::tempdir().unwrap();
    for (container, len, seed) in [("fast/c", 5 << 20, 1), ("d", 2 << 20, 2)] {
        let file = files.path().join(container.replace('/', "-"));
        std::fs::write(&file, test_data(len, seed)).unwrap();
        let file = file.to_str().unwrap();
        tern_ok(
            &server,
            &["backup", "--container", container, "--name", "i", file],
        );
    }
    let c = open(&server);
    let listed: serde_json::Value =
        serde_json::from_str(&tern_ok(&server, &["--json", "group", "ls"])).unwrap();
    for g in listed.as_array().unwrap() {
        let name = g["name"].as_str().unwrap();
        let (status, cap) = group_capacity(c, name);
        assert_eq!(status, tern_status::TERN_OK, "{name}: {}", last_error());
        assert_eq!(cap.total_bytes, g["fs_total_bytes"].as_u64().unwrap());
        assert_eq!(cap.used_bytes, g["pack_bytes"].as_u64().unwrap());
        assert_eq!(cap.logical_bytes, g["logical_bytes"].as_u64().unwrap());
        let dedup = g["logical_bytes"].as_f64().unwrap() / g["unique_bytes"].as_f64().unwrap();
        assert!((cap.dedup_ratio - dedup).abs() < 1e-9, "{name}");
        assert!(cap.free_bytes > 0 && cap.free_bytes < cap.total_bytes);
    }
    let (_, fast) = group_capacity(c, "fast");
    assert_eq!(fast.logical_bytes, 5 << 20);
    let (_, default) = group_capacity(c, "default");
    assert_eq!(default.logical_bytes, 2 << 20);
    let (status, _) = group_capacity(c, "nope");
    assert_eq!(status, tern_status::TERN_NOT_FOUND);
    assert!(last_error().contains("nope"), "{}", last_error());
    assert_eq!(
        unsafe { tern_client_group_capacity(c, std::ptr::null(), std::ptr::null_mut()) },
        tern_status::TERN_NULL_POINTER
    );
    assert_eq!(unsafe { tern_client_close(c) }, tern_status::TERN_OK);
    unsafe { tern_client_free(c) };
}
