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

#[test]
fn fsck_names_a_recipe_row_labelled_with_another_length_than_its_chunk() {
    let server = stopped_store_with_an_image();
    // Two rows of different lengths trade chunk ids: the offsets still add
    // up, but each row now counts a length its chunk does not have (as an
    // announce that labelled a 64 KiB chunk 200,000 bytes long would).
    let db = redb::Database::open(server.data().join("catalog.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(RECIPES).unwrap();
        let rows: Vec<_> = t
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value(), v.value().to_vec())
            })
            .collect();
        let len = |v: &[u8]| u32::from_le_bytes(v[32..36].try_into().unwrap());
        let (a, b) = rows
            .iter()
            .zip(rows.iter().skip(1))
            .find(|(a, b)| len(&a.1) != len(&b.1))
            .expect("two rows of different lengths");
        let (mut va, mut vb) = (a.1.clone(), b.1.clone());
        va[..32].copy_from_slice(&b.1[..32]);
        vb[..32].copy_from_slice(&a.1[..32]);
        t.insert(a.0, va.as_slice()).unwrap();
        t.insert(b.0, vb.as_slice()).unwrap();
    }
    tx.commit().unwrap();
    drop(db);
    assert_fsck_finds(&server, "but the recipe counts");
}

/// Every file of the data directory (path -> contents), to prove nothing changed.
fn snapshot(server: &TestServer) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &std::path::Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.is_file() {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = Default::default();
    walk(server.data(), &mut out);
    out
}

/// Breaks the header of the entry in the middle of the pack a kill -9 left
/// open (an invalid codec): the entries after it hold committed chunks.
fn break_a_middle_entry_header(pack: &std::path::Path) {
    let bytes = std::fs::read(pack).unwrap();
    let mut starts = Vec::new();
    let mut pos = 16usize;
    while pos + 44 <= bytes.len() {
        starts.push(pos);
        let stored = u32::from_le_bytes(bytes[pos + 40..pos + 44].try_into().unwrap());
        pos += 44 + stored as usize;
    }
    assert!(
        starts.len() > 10,
        "expected many entries, got {}",
        starts.len()
    );
    let f = std::fs::OpenOptions::new().write(true).open(pack).unwrap();
    f.write_all_at(&[0x7f], (starts[starts.len() / 2] + 32) as u64)
        .unwrap();
}

#[test]
fn fsck_changes_nothing_even_in_a_damaged_store_left_by_a_crash() {
    let server = stopped_store_with_an_image();
    let pack = packs(&server).last().unwrap().clone();
    break_a_middle_entry_header(&pack);
    let before = snapshot(&server);
    assert_fsck_finds(&server, "points to no intact pack entry");
    assert_unchanged(&before, &snapshot(&server), "fsck", |_| true);
}

/// Asserts that every file `which` accepts is as it was, naming the first that is not.
fn assert_unchanged(
    before: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
    after: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
    who: &str,
    which: impl Fn(&std::path::Path) -> bool,
) {
    for path in before.keys().chain(after.keys()).filter(|p| which(p)) {
        assert!(
            before.get(path) == after.get(path),
            "{who} changed, added or removed {}",
            path.display()
        );
    }
}

#[test]
fn start_up_refuses_to_cut_committed_data_and_repair_keeps_every_intact_chunk() {
    let mut server = stopped_store_with_an_image();
    let pack = packs(&server).last().unwrap().clone();
    break_a_middle_entry_header(&pack);
    let before = snapshot(&server);

    // Recovery would cut half the pack: start-up stops and says what to do.
    let mut serve = std::process::Command::new(ternd_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(server.data())
        .env("TERN_PASSWORD", "unused")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A ternd that starts serving has failed this test: stop it, do not hang.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while serve.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            serve.kill().unwrap();
            panic!("ternd started on a pack it must not cut");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = serve.wait_with_output().unwrap();
    let shown = text(&out);
    assert!(!out.status.success(), "ternd started: {shown}");
    assert!(shown.contains("fsck --repair"), "{shown}");
    assert!(shown.contains(&pack.display().to_string()), "{shown}");
    // (redb may rebuild its allocator state in the catalog; the packs must stay.)
    let is_pack = |p: &std::path::Path| p.extension().is_some_and(|e| e == "pack");
    assert_unchanged(&before, &snapshot(&server), "a refused start", is_pack);

    let out = server.ternd(&["fsck", "--repair", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Exactly the chunk whose header broke is lost; everything after it stays.
    assert_eq!(report["repair"]["chunks_lost"], 1, "{report}");
    assert_eq!(report["repair"]["packs_rewritten"], 1, "{report}");
    let still = report["after"]["damage"].to_string();
    assert!(still.contains("image c/img"), "{still}");
    assert_eq!(report["after"]["damage"].as_array().unwrap().len(), 1);

    // The server starts; the same data backed up again stores the lost chunk
    // again, which heals the damaged image.
    server.spawn();
    let client = server.client();
    let data = test_data(4 << 20, 7);
    let mut w = client.create_image("c", "again", b"").unwrap();
    w.write_all(&data).unwrap();
    w.commit().unwrap();
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut client.open_image("c", "img").unwrap(), &mut back).unwrap();
    assert!(back == data, "the healed image reads back different data");
    drop(client);
    server.kill();
    let clean = server.ternd(&["fsck"]);
    assert!(clean.status.success(), "{}", text(&clean));
}
