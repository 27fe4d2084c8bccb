//! Cloud groups against a real Garage: the engine's side (the CLI and
//! ternd's side are in server/tests/cloud_groups.rs).

use tern_test_support::garage::{Garage, KEY_ID, SECRET};

use super::bucket::{BucketSpec, Credentials};
use super::GroupPassphrase;
use crate::store::tests::{admin, big_chunks, names};
use crate::store::tests_groups::{group, read, settings, write};
use crate::store::{Owner, Store, StoreError};

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
