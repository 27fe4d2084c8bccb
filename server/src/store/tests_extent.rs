//! Extent writes (synthetic fulls) in the store: random plans against the
//! same plan applied to bytes, refusals that leave the image as it was, and
//! GC around sources that are deleted.

use tern_core::codec::Compressor;
use tern_core::wire::{ChunkRef, ContainerSettings, ErrorKind};
use tern_core::ChunkId;

use super::tests::{admin, admin_name, names, read_image, store_with_container};
use super::*;

/// splitmix64: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn begin(store: &Store, image: &str, passthrough: bool) -> WriterId {
    let (c, n) = names("c", image);
    store
        .image_begin(&admin(), &admin_name(), &c, &n, Vec::new(), passthrough)
        .unwrap()
        .0
}

/// Writes `data` as a client would: chunks of 1–8 KiB (the container's
/// minimum is 1 KiB; only the last may be shorter), announced, the
/// missing ones sent.
fn write_bytes(store: &Store, w: WriterId, data: &[u8], rng: &mut Rng) {
    if data.is_empty() {
        return;
    }
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = (1024 + rng.below(7 * 1024) as usize).min(data.len() - at);
        pieces.push(&data[at..at + len]);
        at += len;
    }
    let refs: Vec<ChunkRef> = pieces
        .iter()
        .map(|p| ChunkRef {
            id: ChunkId::of(p),
            len: p.len() as u32,
        })
        .collect();
    let missing = store.image_append(w, &refs).unwrap();
    let mut z = Compressor::new(1).unwrap();
    for i in missing {
        let p = pieces[i as usize];
        let enc = z.encode(p);
        store
            .image_put_chunk(w, &ChunkId::of(p), enc.codec, enc.raw_len, &enc.bytes)
            .unwrap();
    }
}

fn extent(store: &Store, w: WriterId, source: &str, offset: u64, len: u64) -> Result<ExtentStats> {
    let (c, n) = names("c", source);
    store.image_append_extent(&admin(), w, &c, &n, offset, len)
}

/// A committed image of `len` random bytes; returns them.
fn source(store: &Store, name: &str, len: usize, rng: &mut Rng) -> Vec<u8> {
    let data = rng.bytes(len);
    let w = begin(store, name, false);
    write_bytes(store, w, &data, rng);
    store.image_commit(w).unwrap();
    data
}

#[test]
fn random_extent_plans_make_the_image_the_same_plan_makes_of_the_bytes() {
    let (_dir, store) = store_with_container();
    let mut rng = Rng(7);
    let sources: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            let name = format!("s{i}");
            let data = source(&store, &name, 60_000 + 20_000 * i, &mut rng);
            (name, data)
        })
        .collect();
    for plan in 0..40 {
        let passthrough = plan % 4 == 3;
        let name = format!("synth{plan}");
        let w = begin(&store, &name, passthrough);
        let mut expected = Vec::new();
        let mut literal = Vec::new();
        for _ in 0..1 + rng.below(8) {
            if rng.below(3) == 0 {
                let n = rng.below(12_000) as usize + 1;
                let bytes = rng.bytes(n);
                if passthrough {
                    store.image_write_raw(w, &bytes).unwrap();
                } else {
                    // A client chunks a run of writes as one stream.
                    literal.extend_from_slice(&bytes);
                }
                expected.extend_from_slice(&bytes);
            } else {
                let (src, data) = &sources[rng.below(3) as usize];
                // Aligned on a chunk edge, or anywhere; of any length.
                let offset = match rng.below(3) {
                    0 => 0,
                    _ => rng.below(data.len() as u64),
                };
                let len = match rng.below(4) {
                    0 => data.len() as u64 - offset,
                    1 => rng.below(10).min(data.len() as u64 - offset),
                    _ => rng.below(data.len() as u64 - offset + 1),
                };
                write_bytes(&store, w, &std::mem::take(&mut literal), &mut rng);
                let stats = extent(&store, w, src, offset, len).unwrap();
                assert_eq!(
                    stats.referenced_bytes + stats.sliced_bytes,
                    len,
                    "plan {plan}"
                );
                expected.extend_from_slice(&data[offset as usize..(offset + len) as usize]);
            }
        }
        write_bytes(&store, w, &literal, &mut rng);
        let (info, _) = store.image_commit(w).unwrap();
        assert_eq!(info.size, expected.len() as u64, "plan {plan}");
        assert!(
            read_image(&store, &name) == expected,
            "plan {plan}: bytes differ"
        );
    }
    assert!(store.fsck(None).unwrap().is_clean());
}

#[test]
fn an_aligned_extent_moves_no_data_and_slices_only_its_edges() {
    let (_dir, store) = store_with_container();
    let mut rng = Rng(11);
    let data = source(&store, "full", 200_000, &mut rng);
    let before = store.stats(&admin()).unwrap();
    let w = begin(&store, "whole", false);
    let stats = extent(&store, w, "full", 0, data.len() as u64).unwrap();
    assert_eq!((stats.referenced_bytes, stats.sliced_bytes), (200_000, 0));
    let (_, written) = store.image_commit(w).unwrap();
    assert_eq!(written.new_chunks, 0, "nothing new stored");
    assert_eq!(
        store.stats(&admin()).unwrap().unique_chunks,
        before.unique_chunks
    );
    // Cut inside chunks at both ends: two slices, no more.
    let w = begin(&store, "cut", false);
    let stats = extent(&store, w, "full", 100, 150_000).unwrap();
    assert!(
        stats.sliced_bytes > 0 && stats.sliced_bytes < 2 * 8192,
        "{stats:?}"
    );
    store.image_commit(w).unwrap();
    assert!(read_image(&store, "cut") == data[100..150_100]);
}

#[test]
fn a_refused_extent_leaves_the_image_as_it_was() {
    let (_dir, store) = store_with_container();
    let mut rng = Rng(3);
    let data = source(&store, "src", 50_000, &mut rng);
    // A partial image of another name, and a container in another group.
    let open = begin(&store, "unfinished", false);
    write_bytes(&store, open, &data[..5000], &mut rng);
    store.image_detach(open);
    store
        .container_create(
            &tern_core::names::GroupName::new("other").unwrap(),
            &names("far", "x").0,
            &ContainerSettings::default(),
        )
        .unwrap();

    let w = begin(&store, "new", false);
    write_bytes(&store, w, &data[..3000], &mut rng);
    let refusals = [
        (
            extent(&store, w, "nope", 0, 1),
            ErrorKind::NotFound,
            "does not exist",
        ),
        (
            extent(&store, w, "unfinished", 0, 1),
            ErrorKind::NotFound,
            "not committed",
        ),
        (
            extent(&store, w, "src", 40_000, 10_001),
            ErrorKind::Invalid,
            "ends past it",
        ),
        (
            extent(&store, w, "src", u64::MAX, 2),
            ErrorKind::Invalid,
            "past 2^64",
        ),
        (
            store.image_append_extent(
                &admin(),
                w,
                &names("far", "x").0,
                &names("far", "x").1,
                0,
                1,
            ),
            ErrorKind::Invalid,
            "storage group",
        ),
    ];
    for (got, kind, says) in refusals {
        let err = got.unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains(says), "{err}");
    }
    // The image goes on as if nothing had been asked.
    extent(&store, w, "src", 3000, 47_000).unwrap();
    let (info, _) = store.image_commit(w).unwrap();
    assert_eq!(info.size, 50_000);
    assert!(read_image(&store, "new") == data);
}

#[test]
fn gc_after_the_source_is_deleted_keeps_every_chunk_the_new_image_names() {
    let (_dir, store) = store_with_container();
    let mut rng = Rng(5);
    let data = source(&store, "old", 120_000, &mut rng);
    let w = begin(&store, "synth", false);
    extent(&store, w, "old", 777, 100_000).unwrap();
    write_bytes(&store, w, b"tail bytes", &mut rng);
    let (c, n) = names("c", "old");
    store
        .image_remove(&admin(), Owner::Any, &c, &n, false)
        .unwrap();
    // The rows are in memory only: GC's mark must find them there.
    store.gc(None).unwrap();
    store.image_commit(w).unwrap();
    store.gc(None).unwrap();
    let mut expected = data[777..100_777].to_vec();
    expected.extend_from_slice(b"tail bytes");
    assert!(read_image(&store, "synth") == expected);
    assert!(store.fsck(None).unwrap().is_clean());
}

#[test]
fn an_image_goes_on_after_a_short_chunk_before_an_extent_and_after_a_resume() {
    let (_dir, store) = store_with_container();
    let mut rng = Rng(9);
    let data = source(&store, "src", 30_000, &mut rng);
    let w = begin(&store, "mixed", false);
    write_bytes(&store, w, &data[..100], &mut rng); // one short chunk
    extent(&store, w, "src", 100, 10_000).unwrap();
    write_bytes(&store, w, &data[10_100..10_200], &mut rng);
    store.image_detach(w);
    let (c, n) = names("c", "mixed");
    let r = store
        .image_resume(&Scope::Every, Owner::Any, &c, &n, false, None)
        .unwrap();
    assert_eq!(r.offset, 10_200);
    write_bytes(&store, r.writer, &data[10_200..], &mut rng);
    store.image_commit(r.writer).unwrap();
    assert!(read_image(&store, "mixed") == data);
}
