//! `ternd fsck` finds damage: each test breaks a store on purpose (a flipped
//! byte, a cut pack, a lost index row, a lost recipe row) and asserts that
//! fsck exits non-zero and names what is damaged.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use redb::{ReadableTable, TableDefinition};
use tern_agent::ContainerSettings;
use tern_server::store::catalog::{CHUNKS, RECIPES};
use tern_test_support::*;

/// A stopped server holding one committed image of many chunks; fsck clean.
fn stopped_store_with_an_image() -> TestServer {
    let mut server = TestServer::start();
    let client = server.client();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let mut w = client.create_image("c", "img", b"").unwrap();
    w.write_all(&test_data(4 << 20, 7)).unwrap();
    w.commit().unwrap();
    drop(client);
    server.kill();
    let clean = server.ternd(&["fsck"]);
    assert!(clean.status.success(), "{}", text(&clean));
    server
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs fsck and asserts that it fails naming `what`.
fn assert_fsck_finds(server: &TestServer, what: &str) {
    let out = server.ternd(&["fsck"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "fsck passed damage: {shown}");
    assert!(shown.contains("damaged:"), "{shown}");
    assert!(shown.contains(what), "fsck did not name {what:?}: {shown}");
}

fn packs(server: &TestServer) -> Vec<PathBuf> {
    let dir = server.data().join("groups/default/packs");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "the image left no pack");
    out
}

/// Removes the first row of a catalog table.
fn remove_first_row<K: redb::Key + 'static>(
    server: &TestServer,
    table: TableDefinition<K, &[u8]>,
    pick: impl Fn(&redb::Table<K, &[u8]>) -> K::SelfType<'static>,
) {
    let db = redb::Database::open(server.data().join("catalog.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(table).unwrap();
        let key = pick(&t);
        assert!(t.remove(key).unwrap().is_some());
    }
    tx.commit().unwrap();
}

#[test]
fn fsck_names_a_flipped_byte_in_a_pack() {
    let server = stopped_store_with_an_image();
    let pack = packs(&server)[0].clone();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    // Inside the first entry's stored bytes: header 16, entry header 44.
    let at = 16 + 44 + 100;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    drop(f);
    assert_fsck_finds(&server, &format!("pack {}", pack.display()));
}

#[test]
fn fsck_names_a_truncated_pack() {
    let server = stopped_store_with_an_image();
    let pack = packs(&server)[0].clone();
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_fsck_finds(&server, "points to no intact pack entry");
}

#[test]
fn fsck_names_a_lost_index_row() {
    let server = stopped_store_with_an_image();
    remove_first_row(&server, CHUNKS, |t| {
        let (k, _) = t.first().unwrap().unwrap();
        let key: &'static [u8] = Box::leak(k.value().to_vec().into_boxed_slice());
        key
    });
    assert_fsck_finds(&server, "missing from the store");
}

#[test]
fn fsck_names_a_recipe_that_lost_a_chunk() {
    let server = stopped_store_with_an_image();
    // The second row: the recipe then has a gap where that chunk was.
    remove_first_row(&server, RECIPES, |t| {
        let mut rows = t.iter().unwrap();
        rows.next();
        rows.next().unwrap().unwrap().0.value()
    });
    assert_fsck_finds(&server, "recipe has a gap");
}

#[test]
fn fsck_names_a_recipe_that_lost_its_last_chunk() {
    let server = stopped_store_with_an_image();
    remove_first_row(&server, RECIPES, |t| t.last().unwrap().unwrap().0.value());
    assert_fsck_finds(&server, "recipe ends at offset");
}
