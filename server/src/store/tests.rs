//! The store over a temporary directory, without a ternd process or a network.

use tern_core::chunker::MAX_CHUNK_LIMIT;
use tern_core::codec::{self, Compressor};
use tern_core::names::UserName;
use tern_core::wire::{ChunkRef, ContainerSettings, ErrorKind};
use tern_core::{ChunkId, Codec, ContainerName, ImageName};

use super::*;

/// What an admin's requests see: every group.
pub(super) fn admin() -> Scope {
    Scope::Every
}

pub(super) fn admin_name() -> UserName {
    UserName::new("admin").unwrap()
}

pub(super) fn names(container: &str, image: &str) -> (ContainerName, ImageName) {
    (
        ContainerName::new(container).unwrap(),
        ImageName::new(image).unwrap(),
    )
}

/// Distinct chunks of 4 KiB.
pub(super) fn chunks(n: u8, salt: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            (0..4096u32)
                .map(|j| (j as u8) ^ i ^ salt.wrapping_mul(31))
                .collect()
        })
        .collect()
}

/// How a client announces `data`'s chunks.
pub(super) fn refs(data: &[Vec<u8>]) -> Vec<ChunkRef> {
    data.iter()
        .map(|d| ChunkRef {
            id: ChunkId::of(d),
            len: d.len() as u32,
        })
        .collect()
}

/// Writes `data` as one dedup image: announce, send what is missing, commit.
pub(super) fn write_image(
    store: &Store,
    image: &str,
    data: &[Vec<u8>],
) -> Result<tern_core::wire::WriteStats> {
    let (c, n) = names("c", image);
    let (w, _) = store.image_begin(&admin(), &admin_name(), &c, &n, b"props".to_vec(), false)?;
    let refs = refs(data);
    let missing = store.image_append(w, &refs)?;
    let mut z = Compressor::new(1)?;
    for i in missing {
        let d = &data[i as usize];
        let enc = z.encode(d);
        store.image_put_chunk(w, &ChunkId::of(d), enc.codec, enc.raw_len, &enc.bytes)?;
    }
    store.image_commit(w).map(|(_, stats)| stats)
}

pub(super) fn read_image(store: &Store, image: &str) -> Vec<u8> {
    let (c, n) = names("c", image);
    let img = store.image_open(&admin(), &c, &n).unwrap();
    let mut out = Vec::new();
    for e in store.recipe_from(img.image_id, 0, usize::MAX).unwrap() {
        let (entry, loc, bytes) = store.read_chunk(&img, e.offset).unwrap();
        out.extend(codec::decode(&entry.id, loc.codec, loc.raw_len, &bytes).unwrap());
    }
    out
}

pub(super) fn store_with_container() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // The tests' chunks are 4 KiB: the minimum must allow them mid-image.
    let settings = ContainerSettings {
        chunking: Some(tern_core::ChunkParams {
            min: 1024,
            ..Default::default()
        }),
        ..Default::default()
    };
    store
        .container_create(&default_group(), &names("c", "x").0, &settings)
        .unwrap();
    (dir, store)
}

#[test]
fn a_committed_image_reads_back_and_a_second_one_stores_only_new_chunks() {
    let (dir, store) = store_with_container();
    let first = chunks(10, 1);
    let stats = write_image(&store, "one", &first).unwrap();
    assert_eq!((stats.chunks, stats.new_chunks), (10, 10));
    let mut second = first.clone();
    second.extend(chunks(2, 2));
    let stats = write_image(&store, "two", &second).unwrap();
    assert_eq!((stats.chunks, stats.new_chunks), (12, 2));
    assert_eq!(read_image(&store, "one"), first.concat());
    // Durable: a reopened store holds the same.
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(read_image(&store, "two"), second.concat());
    assert!(store.fsck(None).unwrap().is_clean());
}

#[test]
fn an_image_closed_with_chunks_never_sent_is_not_committed() {
    let (_dir, store) = store_with_container();
    let (c, n) = names("c", "half");
    let (w, _) = store
        .image_begin(&admin(), &admin_name(), &c, &n, Vec::new(), false)
        .unwrap();
    let data = chunks(3, 3);
    let refs = refs(&data);
    assert_eq!(store.image_append(w, &refs).unwrap(), [0, 1, 2]);
    let err = store.image_commit(w).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(store.image_list(&admin(), &c, "").unwrap().is_empty());
}

#[test]
fn a_chunk_sent_under_another_id_is_refused() {
    let (_dir, store) = store_with_container();
    let (c, n) = names("c", "liar");
    let (w, _) = store
        .image_begin(&admin(), &admin_name(), &c, &n, Vec::new(), false)
        .unwrap();
    let data = chunks(2, 4);
    let id = ChunkId::of(&data[0]);
    store
        .image_append(w, &[ChunkRef { id, len: 4096 }])
        .unwrap();
    let err = store
        .image_put_chunk(w, &id, Codec::Raw, 4096, &data[1])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

#[test]
fn gc_frees_deleted_images_and_keeps_open_ones() {
    let (_dir, store) = store_with_container();
    write_image(&store, "gone", &chunks(20, 5)).unwrap();
    let kept = chunks(5, 6);
    write_image(&store, "kept", &kept).unwrap();
    // An image being written refers to chunks of "gone" too.
    let (c, n) = names("c", "open");
    let (w, _) = store
        .image_begin(&admin(), &admin_name(), &c, &n, Vec::new(), false)
        .unwrap();
    let shared = &chunks(20, 5)[0];
    let refs = [ChunkRef {
        id: ChunkId::of(shared),
        len: 4096,
    }];
    assert!(store.image_append(w, &refs).unwrap().is_empty());
    store
        .image_remove(
            &admin(),
            Owner::Any,
            &c,
            &ImageName::new("gone").unwrap(),
            false,
        )
        .unwrap();
    let report = store.gc(None).unwrap();
    assert_eq!(report.chunks_removed, 19);
    assert_eq!(report.live_chunks, 6);
    store.image_commit(w).unwrap();
    assert_eq!(read_image(&store, "open"), shared.clone());
    assert_eq!(read_image(&store, "kept"), kept.concat());
    assert!(store.fsck(None).unwrap().is_clean());
}

#[test]
fn the_stream_limit_refuses_one_writer_too_many() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let settings = ContainerSettings {
        stream_limit: Some(1),
        ..Default::default()
    };
    let (c, a) = names("c", "a");
    store
        .container_create(&default_group(), &c, &settings)
        .unwrap();
    let (w, _) = store
        .image_begin(&admin(), &admin_name(), &c, &a, Vec::new(), false)
        .unwrap();
    let b = ImageName::new("b").unwrap();
    let err = store
        .image_begin(&admin(), &admin_name(), &c, &b, Vec::new(), false)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    store.image_abort(w);
    store
        .image_begin(&admin(), &admin_name(), &c, &b, Vec::new(), false)
        .unwrap();
}

#[test]
fn passthrough_writers_of_different_images_do_not_wait_for_each_other() {
    let (_dir, store) = store_with_container();
    let (c, a) = names("c", "a");
    let (wa, _) = store
        .image_begin(&admin(), &admin_name(), &c, &a, Vec::new(), true)
        .unwrap();
    let (wb, _) = store
        .image_begin(
            &admin(),
            &admin_name(),
            &c,
            &ImageName::new("b").unwrap(),
            Vec::new(),
            true,
        )
        .unwrap();
    // Hold image a's lock as its chunking would; image b must still take data.
    let a_entry = lock(&store.open).get(&wa).unwrap().image.clone();
    let _held = lock(&a_entry);
    let data = chunks(64, 7).concat();
    std::thread::scope(|s| {
        let t = s.spawn(|| store.image_write_raw(wb, &data));
        let start = std::time::Instant::now();
        while !t.is_finished() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "image b waited for image a's lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        t.join().unwrap().unwrap();
    });
    drop(_held);
    store.image_commit(wb).unwrap();
    assert_eq!(read_image(&store, "b"), data);
}

/// Incompressible chunks of 64 KiB, distinct per salt.
pub(super) fn big_chunks(n: u32, salt: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut h = blake3::Hasher::new();
            h.update(&salt.to_le_bytes());
            h.update(&i.to_le_bytes());
            let mut out = vec![0u8; 64 << 10];
            h.finalize_xof().fill(&mut out);
            out
        })
        .collect()
}

#[test]
fn gc_writes_packs_of_the_documented_size() {
    let (dir, store) = store_with_container();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        write_image(&store, name, &big_chunks(200, i as u32)).unwrap();
    }
    for name in ["a", "c"] {
        let (c, n) = names("c", name);
        store
            .image_remove(&admin(), Owner::Any, &c, &n, false)
            .unwrap();
    }
    let report = store.gc(None).unwrap();
    assert!(report.packs_rewritten > 0, "{report:?}");
    store.packs.wait_finished().unwrap();
    let limit = packs::PACK_TARGET + (MAX_CHUNK_LIMIT as u64) * 2;
    for p in store.packs.packs().unwrap() {
        let len = store.packs.size(&p).unwrap();
        assert!(
            len <= limit,
            "{} holds {len} bytes",
            store.packs.describe(&p)
        );
    }
    for name in ["b", "d"] {
        assert_eq!(read_image(&store, name).len(), 200 << 16);
    }
    drop(dir);
}

#[test]
fn entries_must_be_chunk_sized_and_labelled_as_the_store_holds_them() {
    let (_dir, store) = store_with_container();
    let data = chunks(3, 9);
    write_image(&store, "first", &data).unwrap();
    let (c, n) = names("c", "liar");
    let (w, _) = store
        .image_begin(&admin(), &admin_name(), &c, &n, Vec::new(), false)
        .unwrap();
    // A stored 4 KiB chunk announced longer: refused, and nothing kept.
    let mislabelled = ChunkRef {
        id: ChunkId::of(&data[0]),
        len: 8192,
    };
    let err = store.image_append(w, &[mislabelled]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("4096 bytes long"), "{err}");
    // The same id twice in one batch with two lengths: refused too.
    let new = chunks(1, 10);
    let twice = [
        refs(&new)[0],
        ChunkRef {
            len: 2048,
            ..refs(&new)[0]
        },
    ];
    assert!(store.image_append(w, &twice).is_err());
    // A short chunk may only be the last.
    let short = ChunkRef {
        id: ChunkId::of(&[1u8; 100]),
        len: 100,
    };
    let err = store.image_append(w, &[short, refs(&data)[1]]).unwrap_err();
    assert!(
        err.to_string().contains("only an image's last chunk"),
        "{err}"
    );
    // Refused batches left the image empty: a good one goes on from 0.
    assert_eq!(
        store.image_append(w, &refs(&data)).unwrap(),
        Vec::<u32>::new()
    );
    store.image_append(w, &[short]).unwrap();
    assert!(
        store.image_append(w, &refs(&data)).is_err(),
        "short mid-image"
    );
}
