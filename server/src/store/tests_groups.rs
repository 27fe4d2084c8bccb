//! Storage groups on volumes of their own, and GC and fsck by group.

use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;
use std::time::Duration;

use tern_core::codec::Compressor;
use tern_core::names::GroupName;
use tern_core::wire::ContainerSettings;
use tern_core::{ChunkId, ImageName};

use super::tests::{admin, admin_name, chunks, names, refs};
use super::*;

pub(super) fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

pub(super) fn settings() -> ContainerSettings {
    ContainerSettings {
        chunking: Some(tern_core::ChunkParams {
            min: 1024,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A store with container `c` in the default group and `fast/c` in group
/// `fast`, whose packs live in `vol`.
fn two_groups() -> (tempfile::TempDir, tempfile::TempDir, Store) {
    let data = tempfile::tempdir().unwrap();
    let vol = tempfile::tempdir().unwrap();
    std::fs::set_permissions(vol.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let store = Store::open(data.path()).unwrap();
    store.group_add_volume(&group("fast"), vol.path()).unwrap();
    for (g, c) in [("default", "c"), ("fast", "c")] {
        store
            .container_create(&group(g), &names(c, "x").0, &settings())
            .unwrap();
    }
    (data, vol, store)
}

pub(super) fn write(store: &Store, container: &str, image: &str, data: &[Vec<u8>]) {
    let (c, n) = names(container, image);
    let (w, _) = store
        .image_begin(&admin(), &admin_name(), &c, &n, Vec::new(), false)
        .unwrap();
    let mut z = Compressor::new(1).unwrap();
    for i in store.image_append(w, &refs(data)).unwrap() {
        let d = &data[i as usize];
        let enc = z.encode(d);
        store
            .image_put_chunk(w, &ChunkId::of(d), enc.codec, enc.raw_len, &enc.bytes)
            .unwrap();
    }
    store.image_commit(w).unwrap();
}

pub(super) fn read(store: &Store, container: &str, image: &str) -> Vec<u8> {
    let (c, n) = names(container, image);
    let img = store.image_open(&admin(), &c, &n).unwrap();
    let mut out = Vec::new();
    for e in store.recipe_from(img.image_id, 0, usize::MAX).unwrap() {
        let (entry, loc, bytes) = store.read_chunk(&img, e.offset).unwrap();
        out.extend(tern_core::codec::decode(&entry.id, loc.codec, loc.raw_len, &bytes).unwrap());
    }
    out
}

#[test]
fn gc_and_fsck_of_one_group_touch_only_that_group() {
    let (data, vol, store) = two_groups();
    // The same chunks in both groups: each group dedups on its own.
    let shared = chunks(12, 1);
    write(&store, "default/c", "a", &shared);
    write(&store, "fast/c", "a", &shared);
    write(&store, "fast/c", "b", &chunks(4, 2));
    assert!(std::fs::read_dir(vol.path().join("packs")).unwrap().count() > 0);
    assert!(!data.path().join("groups/fast").exists());
    let (c, _) = names("fast/c", "x");
    let a = ImageName::new("a").unwrap();
    store
        .image_remove(&admin(), Owner::Any, &c, &a, false)
        .unwrap();
    let default_before = store.group_list(&admin(), true).unwrap();
    let gc = store.gc(Some(&group("fast"))).unwrap();
    assert_eq!(gc.chunks_removed, 12, "{gc:?}");
    assert_eq!(gc.live_chunks, 4, "{gc:?}");
    let after = store.group_list(&admin(), true).unwrap();
    assert_eq!(after[0].name, "default");
    let held = |g: &tern_core::wire::GroupInfo| (g.chunks, g.stored_bytes, g.pack_bytes, g.images);
    assert_eq!(
        held(&after[0]),
        held(&default_before[0]),
        "gc of fast changed default"
    );
    assert_eq!(after[1].chunks, 4);
    assert!(std::path::Path::new(&after[0].location).is_absolute());
    let fsck = store.fsck(Some(&group("fast"))).unwrap();
    assert!(fsck.is_clean(), "{fsck:?}");
    assert_eq!(fsck.chunks_checked, 4);
    assert_eq!(fsck.images_checked, 1);
    assert!(store.fsck(None).unwrap().is_clean());
    // Reopened, both groups read back.
    drop(store);
    let store = Store::open(data.path()).unwrap();
    assert_eq!(read(&store, "default/c", "a"), shared.concat());
    assert_eq!(read(&store, "fast/c", "b"), chunks(4, 2).concat());
    assert!(store.gc(Some(&group("nope"))).is_err());
}

#[test]
fn a_gc_in_one_group_does_not_pause_reads_in_another() {
    let (_data, _vol, store) = two_groups();
    write(&store, "default/c", "a", &chunks(3, 1));
    write(&store, "fast/c", "a", &chunks(3, 2));
    let fast = store.catalog.group_id(&group("fast")).unwrap().unwrap();
    std::thread::scope(|s| {
        // What GC of `fast` holds while it runs.
        let gate = store.gates.exclusive(fast);
        let (done, finished) = mpsc::channel();
        for container in ["default/c", "fast/c"] {
            let (store, done) = (&store, done.clone());
            s.spawn(move || {
                read(store, container, "a");
                done.send(container).unwrap();
            });
        }
        let first = finished.recv_timeout(Duration::from_secs(30));
        assert_eq!(
            first,
            Ok("default/c"),
            "a read of the default group waited for fast's gc"
        );
        assert!(
            finished.recv_timeout(Duration::from_millis(300)).is_err(),
            "a read of fast went on during its gc"
        );
        drop(gate);
        assert_eq!(finished.recv_timeout(Duration::from_secs(30)), Ok("fast/c"));
    });
}

#[test]
fn a_store_whose_group_volume_is_missing_does_not_open_until_it_is_back() {
    let (data, vol, store) = two_groups();
    write(&store, "fast/c", "a", &chunks(3, 1));
    drop(store);
    let file = vol.path().join(volume::VOLUME_FILE);
    let kept = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let e = Store::open(data.path())
        .err()
        .expect("opened without its volume");
    assert!(e.to_string().contains("mounted"), "{e}");
    assert!(Store::open_read_only(data.path(), "test").is_err());
    std::fs::write(&file, kept).unwrap();
    let store = Store::open(data.path()).unwrap();
    assert_eq!(read(&store, "fast/c", "a"), chunks(3, 1).concat());
}

#[test]
fn a_group_is_removed_only_when_empty_and_then_leaves_nothing_behind() {
    let (_data, vol, store) = two_groups();
    write(&store, "fast/c", "a", &chunks(3, 1));
    let fast = group("fast");
    let e = store.group_remove(&fast).unwrap_err();
    assert!(e.to_string().contains("containers"), "{e}");
    let (c, a) = names("fast/c", "a");
    store
        .image_remove(&admin(), Owner::Any, &c, &a, false)
        .unwrap();
    store.container_remove(&admin(), &c).unwrap();
    let e = store.group_remove(&fast).unwrap_err();
    assert!(e.to_string().contains("gc"), "{e}");
    store.gc(Some(&fast)).unwrap();
    store.group_remove(&fast).unwrap();
    assert_eq!(std::fs::read_dir(vol.path()).unwrap().count(), 0);
    assert!(!store.group_exists(&fast).unwrap());
    let e = store.group_remove(&group("default")).unwrap_err();
    assert!(e.to_string().contains("default"), "{e}");
    // The directory may hold a new group.
    store.group_add_volume(&group("fast2"), vol.path()).unwrap();
}

#[test]
fn a_gc_with_nothing_to_do_reports_the_packs_as_they_were() {
    let (_data, _vol, store) = two_groups();
    // Incompressible 64 KiB chunks: one open pack, nothing dead.
    write(&store, "fast/c", "a", &super::tests::big_chunks(24, 5));
    let gc = store.gc(Some(&group("fast"))).unwrap();
    assert_eq!((gc.chunks_removed, gc.packs_rewritten), (0, 0), "{gc:?}");
    // The open pack's table is counted before as after.
    assert_eq!(gc.bytes_before, gc.bytes_after, "{gc:?}");
}

#[test]
fn gc_leaves_a_pack_of_a_few_small_live_chunks_as_it_is() {
    let (_data, _vol, store) = two_groups();
    // Four 4 KiB chunks that compress to a few dozen bytes: the pack's
    // header, table and footer are most of it, and none of it is dead.
    write(&store, "fast/c", "a", &chunks(4, 9));
    for run in 0..2 {
        let gc = store.gc(Some(&group("fast"))).unwrap();
        assert_eq!(gc.packs_rewritten, 0, "run {run}: {gc:?}");
        assert_eq!(gc.bytes_before, gc.bytes_after, "run {run}: {gc:?}");
    }
    assert_eq!(read(&store, "fast/c", "a"), chunks(4, 9).concat());
}
