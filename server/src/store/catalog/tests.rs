//! Tests of the catalog module.

use super::*;

/// A format-1 catalog: one container namespace.
fn format_1_catalog(path: &Path) {
    let db = Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        tx.open_table(META).unwrap().insert("format", 1).unwrap();
        // The record as format 1 wrote it: none of the later fields.
        #[derive(serde::Serialize)]
        struct ContainerRecordV1 {
            id: u64,
            group: GroupName,
            chunking: tern_core::ChunkParams,
            zstd_level: i32,
            stream_limit: u32,
            created: u64,
        }
        let rec = ContainerRecordV1 {
            id: 7,
            group: GroupName::new("acme").unwrap(),
            chunking: Default::default(),
            zstd_level: 1,
            stream_limit: 0,
            created: 1,
        };
        tx.open_table(CONTAINERS_V1)
            .unwrap()
            .insert("nightly", encode(&rec).unwrap().as_slice())
            .unwrap();
        let group = encode(&GroupRecord {
            id: 2,
            volume: None,
            cloud: None,
        })
        .unwrap();
        tx.open_table(GROUPS)
            .unwrap()
            .insert("acme", group.as_slice())
            .unwrap();
        let users: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
        tx.open_table(users).unwrap();
        tx.open_table(IMAGES).unwrap();
        tx.open_table(RECIPES).unwrap();
        tx.open_table(CHUNKS).unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn format_1_containers_move_under_their_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.redb");
    format_1_catalog(&path);
    let nightly = ContainerName::new("nightly").unwrap();
    let acme = GroupName::new("acme").unwrap();

    // Read-only: migrated in memory, the file untouched.
    let before = std::fs::read(&path).unwrap();
    let ro = Catalog::open_read_only(&path, "test").unwrap();
    assert_eq!(ro.container(&acme, &nightly).unwrap().unwrap().id, 7);
    drop(ro);
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a read-only open wrote"
    );

    let c = Catalog::open(&path).unwrap();
    assert_eq!(c.format().unwrap(), Some(FORMAT_VERSION));
    assert_eq!(c.container(&acme, &nightly).unwrap().unwrap().id, 7);
    assert_eq!(c.containers_named(&nightly).unwrap().len(), 1);
    let other = GroupName::new("globex").unwrap();
    assert!(c.container(&other, &nightly).unwrap().is_none());
}
