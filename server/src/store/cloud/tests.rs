//! Cloud groups against a real Garage: the engine's side (the CLI and
//! ternd's side are in server/tests/cloud_groups.rs).

use tern_core::{codec, ChunkId};
use tern_test_support::garage::{Garage, KEY_ID, SECRET};

use super::bucket::{BucketSpec, Credentials};
use super::GroupPassphrase;
use crate::store::tests::{admin, big_chunks, names};
use crate::store::tests_groups::{group, read, settings, write};
use crate::store::{Owner, ReadableImage, Store, StoreError};

const PASSPHRASE: &str = "a long enough passphrase";

fn credentials() -> Credentials {
    Credentials {
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
    }
}

fn spec(g: &Garage, prefix: &str) -> BucketSpec {
    BucketSpec::parse(&g.url(), "", prefix).unwrap()
}

/// A store with group `cloud` in `g`'s bucket under `prefix`, and container `cloud/c`.
fn cloud_store(g: &Garage, prefix: &str) -> (tempfile::TempDir, Store) {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let pass = GroupPassphrase(PASSPHRASE.into());
    let info = store
        .group_add_cloud(&group("cloud"), spec(g, prefix), credentials(), &pass)
        .unwrap();
    assert_eq!(info.kind, "cloud");
    store
        .container_create(&group("cloud"), &names("c", "x").0, &settings())
        .unwrap();
    (data, store)
}

fn flat(chunks: &[Vec<u8>]) -> Vec<u8> {
    chunks.concat()
}

#[test]
fn a_cloud_group_serves_its_images_from_sealed_objects_after_a_restart() {
    let Some(g) = Garage::start() else { return };
    let (data, store) = cloud_store(&g, "site-a");
    // 200 chunks of 64 KiB: one full pack, and the rest sealed by the commit.
    let a = big_chunks(200, 1);
    write(&store, "cloud/c", "a", &a);
    let b = big_chunks(3, 2);
    store
        .container_create(&group("cloud"), &names("payroll", "x").0, &settings())
        .unwrap();
    write(&store, "cloud/payroll", "ledger-q3", &b);
    assert_eq!(read(&store, "cloud/c", "a"), flat(&a));
    let staged = data.path().join("groups/cloud/staging");
    assert_eq!(
        std::fs::read_dir(&staged).unwrap().count(),
        0,
        "every pack an image uses is in the bucket once it commits"
    );
    let usage = store.packs.cloud_usage(2).unwrap();
    assert_eq!(usage.objects, 3, "{usage:?}");
    drop(store);

    let store = Store::open(data.path()).unwrap();
    assert_eq!(read(&store, "cloud/c", "a"), flat(&a));
    assert_eq!(read(&store, "cloud/payroll", "ledger-q3"), flat(&b));
    let report = store.fsck(Some(&group("cloud"))).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.packs, 3);

    // Nothing of the data, nor any name, is in what Garage stored.
    let files = g.stored_files();
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        for chunk in a.iter().chain(&b).step_by(7) {
            assert!(
                !bytes.windows(48).any(|w| w == &chunk[1000..1048]),
                "plaintext in {}",
                path.display()
            );
        }
        for name in [&b"payroll"[..], b"ledger-q3"] {
            assert!(
                !bytes.windows(name.len()).any(|w| w == name),
                "a name in {}",
                path.display()
            );
        }
    }
}

#[test]
fn a_changed_object_fails_the_read_and_fsck_names_it() {
    let Some(g) = Garage::start() else { return };
    let (_data, store) = cloud_store(&g, "");
    let a = big_chunks(20, 3);
    write(&store, "cloud/c", "a", &a);
    // Someone with write access to the bucket flips a byte of the object.
    let cloud = store.packs.store(2).unwrap();
    let number = cloud.list().unwrap()[0];
    let described = cloud.describe(number);
    let name = described.split_whitespace().nth(1).unwrap().to_string();
    let bucket = super::bucket::Bucket::new(spec(&g, ""), &credentials()).unwrap();
    let mut object = bucket.get(&name).unwrap();
    object[4000] ^= 0x20;
    bucket.put(&name, object).unwrap();
    drop(store);

    let store = Store::open(_data.path()).unwrap();
    let (c, n) = names("cloud/c", "a");
    let img = store.image_open(&admin(), &c, &n).unwrap();
    let e = store.recipe_from(img.image_id, 0, 1).unwrap()[0];
    let err = store.read_chunk(&img, e.offset).unwrap_err().to_string();
    assert!(err.contains(&name), "{err}");
    assert!(err.contains("does not authenticate"), "{err}");
    let report = store.fsck(Some(&group("cloud"))).unwrap();
    assert!(!report.is_clean());
    assert!(
        report.damage.iter().any(|d| d.contains(&name)),
        "{report:?}"
    );
}

#[test]
fn a_prefix_holding_a_group_is_refused_and_says_whether_the_passphrase_fits() {
    let Some(g) = Garage::start() else { return };
    let (_data, store) = cloud_store(&g, "p");
    let other = tempfile::tempdir().unwrap();
    let second = Store::open(other.path()).unwrap();
    let add = |pass: &str| {
        second.group_add_cloud(
            &group("again"),
            spec(&g, "p"),
            credentials(),
            &GroupPassphrase(pass.into()),
        )
    };
    let wrong = add("not the passphrase at all").unwrap_err();
    assert!(
        matches!(&wrong, StoreError::Invalid(m) if m.contains("does not open")),
        "{wrong}"
    );
    let right = add(PASSPHRASE).unwrap_err();
    assert!(matches!(right, StoreError::AlreadyExists(_)), "{right}");
    assert!(matches!(add("short"), Err(StoreError::Invalid(_))));
    // Bad credentials are caught by the probe, before anything is written.
    let bad = second
        .group_add_cloud(
            &group("bad"),
            spec(&g, "q"),
            Credentials {
                access_key_id: KEY_ID.into(),
                secret_access_key: "0".repeat(64),
            },
            &GroupPassphrase(PASSPHRASE.into()),
        )
        .unwrap_err();
    assert!(bad.to_string().contains("cannot write"), "{bad}");
    assert!(!other.path().join("groups/bad").exists());
    drop(store);
}

#[test]
fn removing_an_empty_cloud_group_deletes_its_objects_and_key() {
    let Some(g) = Garage::start() else { return };
    let (data, store) = cloud_store(&g, "gone");
    write(&store, "cloud/c", "a", &big_chunks(5, 4));
    let (c, n) = names("cloud/c", "a");
    store
        .image_remove(&admin(), Owner::Any, &c, &n, false)
        .unwrap();
    store.container_remove(&admin(), &c).unwrap();
    store.gc(Some(&group("cloud"))).unwrap();
    store.group_remove(&group("cloud")).unwrap();
    assert!(!data.path().join("groups/cloud").exists());
    let bucket = super::bucket::Bucket::new(spec(&g, "gone"), &credentials()).unwrap();
    assert_eq!(bucket.size(super::setup::KEY_OBJECT).unwrap(), None);
}

/// An object no record names (a stray PUT, what an upload whose journal
/// record a crash lost leaves behind) is an orphan: fsck notes it without
/// calling it damage, GC deletes it only once the bucket's time for it is
/// past the grace period, never a live object, an object of another form
/// or one whose upload is in flight; the image restores as before.
#[test]
fn orphans_are_noted_by_fsck_and_deleted_by_gc_past_the_grace_period_only() {
    let Some(g) = Garage::start() else { return };
    let (_data, store) = cloud_store(&g, "orphans");
    let a = big_chunks(200, 3);
    write(&store, "cloud/c", "a", &a);
    let live = store.packs.cloud_usage(2).unwrap().objects;
    let bucket = super::bucket::Bucket::new(spec(&g, "orphans"), &credentials()).unwrap();
    let orphan = "0123456789abcdef0123456789abcdef";
    bucket.put(orphan, vec![7; 5000]).unwrap();
    bucket.put("notes-of-the-admin", vec![1; 10]).unwrap();
    // An upload between its PUT and its journal record.
    let uploading = [0xab; 16];
    let pack_store = store.packs.store(2).unwrap();
    let cloud = pack_store.cloud().unwrap();
    cloud.inner.in_flight.lock().unwrap().insert(uploading);
    bucket
        .put(&crate::store::hex(&uploading), vec![9; 100])
        .unwrap();

    let report = store.fsck(Some(&group("cloud"))).unwrap();
    assert!(report.is_clean(), "an orphan is not damage: {report:?}");
    assert_eq!(report.orphan_objects, 1, "{report:?}");
    assert_eq!(report.orphan_bytes, 5000);
    assert!(
        report.notes.iter().any(|n| n.contains("no record")),
        "{report:?}"
    );

    // Young: the default grace period (an hour) keeps it.
    let gc = store.gc(Some(&group("cloud"))).unwrap();
    assert_eq!(gc.orphans_deleted, 0, "{gc:?}");
    assert!(bucket.size(orphan).unwrap().is_some());

    store.packs.set_cloud_grace(std::time::Duration::ZERO);
    let gc = store.gc(Some(&group("cloud"))).unwrap();
    assert_eq!(gc.orphans_deleted, 1, "{gc:?}");
    assert!(
        bucket.size(orphan).unwrap().is_none(),
        "the orphan is still there"
    );
    assert!(bucket.size("notes-of-the-admin").unwrap().is_some());
    assert!(
        bucket
            .size(&crate::store::hex(&uploading))
            .unwrap()
            .is_some(),
        "an upload in flight was taken for an orphan"
    );
    assert_eq!(store.packs.cloud_usage(2).unwrap().objects, live);
    let recipes = cloud.inner.saved.lock().unwrap().recipes.clone();
    assert!(!recipes.is_empty(), "GC saved the catalog");
    for r in recipes.values() {
        let name = crate::store::hex(&r.name);
        assert!(
            bucket.size(&name).unwrap().is_some(),
            "recipe object {name} deleted"
        );
    }
    assert_eq!(read(&store, "cloud/c", "a"), flat(&a));
    cloud.inner.in_flight.lock().unwrap().remove(&uploading);
    let report = store.fsck_with(Some(&group("cloud")), true).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        report.orphan_objects, 1,
        "the upload no longer in flight: {report:?}"
    );
}

/// A store with image `local/a` (`chunks`), opened for reading, and its
/// copy `cloud/c/a` (what the tier's copy would be: the same image in the
/// cloud group).
fn with_cloud_copy(g: &Garage, chunks: &[Vec<u8>]) -> (tempfile::TempDir, Store, ReadableImage) {
    let (data, store) = cloud_store(g, "held");
    let (local, name) = names("local", "a");
    store
        .container_create(&group("default"), &local, &settings())
        .unwrap();
    write(&store, "local", "a", chunks);
    write(&store, "cloud/c", "a", chunks);
    let img = store.image_open(&admin(), &local, &name).unwrap();
    (data, store, img)
}

/// Holds `local/a` in `cloud/c/a`, then collects the local group.
fn hold_and_collect(store: &Store, image_id: u64) {
    let (local, name) = names("local", "a");
    let c = store.container(&admin(), &local).unwrap();
    let cloud = names("cloud/c", "a");
    store
        .image_hold(&c, &name, image_id, &cloud.0, &cloud.1)
        .unwrap();
    assert!(store.recipe_from(image_id, 0, 1).unwrap().is_empty());
    store.gc(Some(&group("default"))).unwrap();
}

#[test]
fn a_read_open_when_its_image_is_held_goes_on_from_the_cloud_copy() {
    let Some(g) = Garage::start() else { return };
    let a = big_chunks(40, 4);
    let (_data, store, img) = with_cloud_copy(&g, &a);
    let mut out = Vec::new();
    let mut read_all = |from: u64, max: usize| -> u64 {
        let mut end = from;
        for e in store.open_recipe(&img, from, max).unwrap() {
            let (entry, loc, bytes) = store.read_chunk(&img, e.offset).unwrap();
            out.extend(codec::decode(&entry.id, loc.codec, loc.raw_len, &bytes).unwrap());
            end = e.offset + u64::from(e.len);
        }
        end
    };
    let half = read_all(0, 20);

    // Held while the read is open: its rows go, and GC takes its chunks.
    hold_and_collect(&store, img.image_id);

    assert_eq!(read_all(half, usize::MAX), 40 * (64 << 10));
    assert_eq!(out, flat(&a), "the read went on from the copy, whole");
    // Chunks already listed read from the copy too.
    let (entry, _, _) = store.read_chunk(&img, 0).unwrap();
    assert_eq!(entry.id, ChunkId::of(&a[0]));
}

#[test]
fn a_seed_export_of_a_held_image_carries_its_chunks_from_the_cloud_copy() {
    let Some(g) = Garage::start() else { return };
    let a = big_chunks(12, 5);
    let (_data, store, img) = with_cloud_copy(&g, &a);
    hold_and_collect(&store, img.image_id);

    let sources = store
        .seed_sources(std::slice::from_ref(&img.info.container))
        .unwrap();
    let list = store.seed_chunk_list(&sources).unwrap();
    let mut listed: Vec<ChunkId> = list.iter().map(|(_, id, _)| *id).collect();
    let mut want: Vec<ChunkId> = a.iter().map(|c| ChunkId::of(c)).collect();
    listed.sort_unstable_by_key(|id| id.0);
    want.sort_unstable_by_key(|id| id.0);
    assert_eq!(listed, want, "every chunk of the held image is in the seed");
    let cloud = store.catalog.group_id(&group("cloud")).unwrap().unwrap();
    for (in_group, id, len) in list {
        assert_eq!(in_group, cloud, "read from the cloud group");
        let record = store.seed_read_chunk(in_group, &id).unwrap();
        assert_eq!(record.bytes.len(), len as usize);
    }
}
