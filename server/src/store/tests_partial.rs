//! Partial images in the store: checkpoints, incomplete images after a
//! session ends or a crash, resume, expiry, and GC around them.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tern_core::codec::Compressor;
use tern_core::names::UserName;
use tern_core::wire::ErrorKind;
use tern_core::ChunkId;

use super::records::chunk_key;
use super::tests::{
    admin, admin_name, big_chunks, chunks, names, read_image, refs, store_with_container,
};
use super::tests_groups::{group, settings};
use super::*;

/// Announces `data` to writer `w` and sends what the store lacks.
fn send(store: &Store, w: WriterId, data: &[Vec<u8>]) {
    let missing = store.image_append(w, &refs(data)).unwrap();
    let mut z = Compressor::new(1).unwrap();
    for i in missing {
        let d = &data[i as usize];
        let enc = z.encode(d);
        store
            .image_put_chunk(w, &ChunkId::of(d), enc.codec, enc.raw_len, &enc.bytes)
            .unwrap();
    }
}

fn begin(store: &Store, image: &str) -> WriterId {
    begin_in(store, "c", image)
}

fn begin_in(store: &Store, container: &str, image: &str) -> WriterId {
    let (c, n) = names(container, image);
    store
        .image_begin(&admin(), &admin_name(), &c, &n, b"props".to_vec(), false)
        .unwrap()
        .0
}

fn resume(store: &Store, owner: Owner<'_>, image: &str) -> Result<Resumed> {
    let (c, n) = names("c", image);
    store.image_resume(&Scope::Every, owner, &c, &n, false, None)
}

fn resume_in(store: &Store, container: &str, image: &str) -> Result<Resumed> {
    let (c, n) = names(container, image);
    store.image_resume(&Scope::Every, Owner::Any, &c, &n, false, None)
}

fn incomplete(store: &Store) -> Vec<tern_core::wire::IncompleteImage> {
    store
        .incomplete_images(&admin(), &names("c", "x").0, "")
        .unwrap()
}

fn other_user() -> UserName {
    UserName::new("bob").unwrap()
}

#[test]
fn an_image_whose_session_ended_resumes_after_a_restart_and_commits_whole() {
    let (dir, store) = store_with_container();
    let data = chunks(40, 3);
    let w = begin(&store, "big");
    send(&store, w, &data[..25]);
    store.image_detach(w);
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let list = incomplete(&store);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].resume_offset, 25 * 4096);
    assert!(!list[0].writing);
    let r = resume(&store, Owner::Any, "big").unwrap();
    assert_eq!(r.offset, 25 * 4096);
    send(&store, r.writer, &data[25..]);
    let (info, stats) = store.image_commit(r.writer).unwrap();
    assert_eq!((info.size, info.chunks), (40 * 4096, 40));
    assert_eq!(stats.new_chunks, 40, "each chunk stored once");
    assert_eq!(read_image(&store, "big"), data.concat());
    assert!(incomplete(&store).is_empty());
    let listed = store.image_list(&admin(), &names("c", "x").0, "").unwrap();
    assert_eq!(listed.len(), 1, "listed once");
    assert!(store.fsck(None).unwrap().is_clean());
}

#[test]
fn a_crash_keeps_what_the_last_checkpoint_made_durable_and_gc_drops_the_rest() {
    let (dir, store) = store_with_container();
    let data = chunks(30, 4);
    let w = begin(&store, "crashy");
    send(&store, w, &data[..10]);
    store.checkpoint_now(w).unwrap();
    send(&store, w, &data[10..20]);
    // A crash: no detach, no commit; the second batch was never checkpointed.
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    assert!(store.fsck(None).unwrap().is_clean());
    let r = resume(&store, Owner::Any, "crashy").unwrap();
    assert_eq!(r.offset, 10 * 4096, "resumes from the last checkpoint");
    send(&store, r.writer, &data[10..]);
    store.image_commit(r.writer).unwrap();
    assert_eq!(read_image(&store, "crashy"), data.concat());
    let gc = store.gc(None).unwrap();
    assert_eq!(gc.live_chunks, 30);
    assert!(store.fsck(None).unwrap().is_clean());
}

/// The pack file numbered `number`, wherever its group keeps it under `dir`.
fn find_pack(dir: &std::path::Path, number: u64) -> std::path::PathBuf {
    let name = format!("{number:016x}.pack");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == name.as_str()) {
                return path;
            }
        }
    }
    panic!("no pack {name} under {}", dir.display());
}

#[test]
fn a_crash_of_the_process_keeps_the_intact_chunks_written_after_the_last_checkpoint() {
    let (dir, store) = store_with_container();
    // 64 KiB each: the 210 after the checkpoint fill a pack the finisher
    // completes (8 MiB) and part of the next, left open.
    let data = big_chunks(300, 5);
    let w = begin(&store, "killed");
    send(&store, w, &data[..10]);
    store.checkpoint_now(w).unwrap();
    send(&store, w, &data[10..220]);
    store.packs.wait_finished().unwrap();
    let group = lock(&store.open)
        .values()
        .next()
        .map(|e| lock(&e.image).group)
        .unwrap();
    let at = |i: usize| lock(&store.pending)[&chunk_key(group, &ChunkId::of(&data[i]))];
    assert_ne!(at(15).pack, at(219).pack, "the chunks span a finished pack");
    // Damaged on disk before the restart, one in each pack: they must not come back.
    let damaged = [at(15), at(219)];
    // A `kill -9`: what was written stays in the files, nothing more is done.
    drop(store);
    for loc in damaged {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(find_pack(dir.path(), loc.pack))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"XXXX", loc.offset + 8).unwrap();
    }

    let store = Store::open(dir.path()).unwrap();
    let r = resume(&store, Owner::Any, "killed").unwrap();
    assert_eq!(
        r.offset,
        10 << 16,
        "the recipe resumes from the last checkpoint"
    );
    let missing = store.image_append(r.writer, &refs(&data[10..])).unwrap();
    let expected: Vec<u32> = [5, 209].into_iter().chain(210..290).collect();
    assert_eq!(
        missing, expected,
        "only the damaged chunks and those never written are asked for again"
    );
    let mut z = Compressor::new(1).unwrap();
    for i in missing {
        let d = &data[10 + i as usize];
        let enc = z.encode(d);
        store
            .image_put_chunk(
                r.writer,
                &ChunkId::of(d),
                enc.codec,
                enc.raw_len,
                &enc.bytes,
            )
            .unwrap();
    }
    store.image_commit(r.writer).unwrap();
    assert_eq!(read_image(&store, "killed"), data.concat());
    store.gc(None).unwrap();
    // The damaged entries stay in their packs, unused, and fsck names them.
    let report = store.fsck(None).unwrap();
    assert_eq!(report.damage.len(), 2, "{report:?}");
    assert!(report
        .damage
        .iter()
        .all(|d| d.contains("does not match its id")));
}

/// A crash just after a pack filled, before the next chunk opened another:
/// no pack is left open, and the finished packs since the last checkpoint
/// are indexed again all the same (the kill -9 of copy_resume's test at a
/// pack boundary resent them).
#[test]
fn a_crash_that_leaves_no_pack_open_still_keeps_the_chunks_written_after_the_checkpoint() {
    let (dir, store) = store_with_container();
    let data = big_chunks(300, 6);
    let w = begin(&store, "killed");
    send(&store, w, &data[..10]);
    store.checkpoint_now(w).unwrap();
    // One chunk at a time until a pack fills and none is open.
    let mut sent = 10;
    loop {
        send(&store, w, &data[sent..sent + 1]);
        sent += 1;
        if store.packs.appender().open_packs().next().is_none() {
            break;
        }
    }
    assert!(sent > 100 && sent < 290, "{sent} chunks fill a pack");
    store.packs.wait_finished().unwrap();
    // A `kill -9`: what was written stays in the files, nothing more is done.
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let r = resume(&store, Owner::Any, "killed").unwrap();
    assert_eq!(r.offset, 10 << 16, "resumed from the last checkpoint");
    let missing = store.image_append(r.writer, &refs(&data[10..])).unwrap();
    let expected: Vec<u32> = (sent as u32 - 10..290).collect();
    assert_eq!(
        missing, expected,
        "only the chunks never written are asked for"
    );
}

/// Pack numbers are shared by the groups: a pack of one group finished
/// after the last checkpoint can be numbered below another group's pack
/// that the checkpoint indexed and the crash left open. Its chunks are
/// indexed again all the same.
#[test]
fn a_crash_keeps_the_chunks_of_a_pack_finished_after_the_checkpoint_below_another_groups_open_pack()
{
    let (dir, store) = store_with_container();
    let vol = tempfile::tempdir().unwrap();
    std::fs::set_permissions(vol.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    store.group_add_volume(&group("fast"), vol.path()).unwrap();
    // Container `c` of group `fast`, named `fast/c` from outside.
    store
        .container_create(&group("fast"), &names("c", "x").0, &settings())
        .unwrap();
    let data = big_chunks(300, 7);
    let a = begin_in(&store, "fast/c", "killed");
    send(&store, a, &data[..10]);
    let first_fast_pack = store.packs.appender().open_packs().next().unwrap();
    // A pack of the default group, opened after fast's and left open.
    let b = begin_in(&store, "default/c", "other");
    send(&store, b, &chunks(3, 9));
    store.checkpoint_now(a).unwrap();
    store.checkpoint_now(b).unwrap();
    let mut sent = 10;
    while store
        .packs
        .appender()
        .open_packs()
        .any(|n| n == first_fast_pack)
    {
        send(&store, a, &data[sent..sent + 1]);
        sent += 1;
    }
    assert!(sent > 100 && sent < 290, "{sent} chunks fill a pack");
    store.packs.wait_finished().unwrap();
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let r = resume_in(&store, "fast/c", "killed").unwrap();
    assert_eq!(r.offset, 10 << 16, "resumed from the last checkpoint");
    let missing = store.image_append(r.writer, &refs(&data[10..])).unwrap();
    let expected: Vec<u32> = (sent as u32 - 10..290).collect();
    assert_eq!(
        missing, expected,
        "only the chunks never written are asked for"
    );
}

#[test]
fn gc_keeps_an_incomplete_images_chunks_until_it_expires() {
    let (_dir, store) = store_with_container();
    let data = chunks(12, 5);
    let w = begin(&store, "kept");
    send(&store, w, &data);
    store.image_detach(w);
    let gc = store.gc(None).unwrap();
    assert_eq!((gc.live_chunks, gc.chunks_removed), (12, 0));
    // Not yet expired: a long retention keeps it.
    assert_eq!(
        store
            .expire_incomplete(Duration::from_secs(3600), Duration::from_secs(3600))
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .expire_incomplete(Duration::ZERO, Duration::ZERO)
            .unwrap(),
        1
    );
    assert!(incomplete(&store).is_empty());
    let gc = store.gc(None).unwrap();
    assert_eq!((gc.live_chunks, gc.chunks_removed), (0, 12));
    assert!(store.fsck(None).unwrap().is_clean());
}

#[test]
fn rm_removes_an_incomplete_image_and_a_new_create_replaces_one() {
    let (_dir, store) = store_with_container();
    let w = begin(&store, "gone");
    send(&store, w, &chunks(3, 6));
    store.image_detach(w);
    let (c, n) = names("c", "gone");
    store
        .image_remove(&admin(), Owner::Any, &c, &n, false)
        .unwrap();
    assert!(incomplete(&store).is_empty());

    let w = begin(&store, "again");
    send(&store, w, &chunks(3, 7));
    store.image_detach(w);
    let w = begin(&store, "again");
    send(&store, w, &chunks(2, 8));
    let (info, _) = store.image_commit(w).unwrap();
    assert_eq!(info.size, 2 * 4096, "the new image, not the old one");
    assert!(incomplete(&store).is_empty());
    assert!(store.fsck(None).unwrap().is_clean());
}

#[test]
fn resume_refuses_what_it_cannot_resume() {
    let (_dir, store) = store_with_container();
    let kind = |r: Result<Resumed>| r.err().map(|e| e.kind());
    assert_eq!(
        kind(resume(&store, Owner::Any, "never")),
        Some(ErrorKind::NotFound)
    );
    super::tests::write_image(&store, "done", &chunks(2, 9)).unwrap();
    let err = resume(&store, Owner::Any, "done").err().unwrap();
    assert!(err.to_string().contains("already committed"), "{err}");
    let w = begin(&store, "admins");
    store.image_detach(w);
    assert_eq!(
        kind(resume(&store, Owner::Only(&other_user()), "admins")),
        Some(ErrorKind::Denied)
    );
}

/// A session that answers while its flag is set.
struct Flag(Arc<std::sync::atomic::AtomicBool>);

impl super::write::Liveness for Flag {
    fn connected(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn answers(&self) -> bool {
        self.connected()
    }
}

#[test]
fn resume_takes_an_image_from_a_disconnected_session_only() {
    let (_dir, store) = store_with_container();
    let data = chunks(8, 10);
    let w = begin(&store, "held");
    let connected = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probe = connected.clone();
    store.set_session_probe(w, Arc::new(Flag(probe)));
    send(&store, w, &data[..5]);
    assert_eq!(
        resume(&store, Owner::Any, "held").err().map(|e| e.kind()),
        Some(ErrorKind::Busy)
    );
    connected.store(false, std::sync::atomic::Ordering::SeqCst);
    let r = resume(&store, Owner::Any, "held").unwrap();
    assert!(r.taken_over);
    assert_eq!(r.offset, 5 * 4096, "the take-over checkpoints what arrived");
    // The old session's writes to it end.
    let old = store.image_append(w, &refs(&data[5..]));
    assert_eq!(old.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    store.image_detach(w);
    send(&store, r.writer, &data[5..]);
    store.image_commit(r.writer).unwrap();
    assert_eq!(read_image(&store, "held"), data.concat());
}

#[test]
fn the_index_totals_follow_commits_and_gc() {
    let (_dir, store) = store_with_container();
    super::tests::write_image(&store, "a", &chunks(7, 11)).unwrap();
    super::tests::write_image(&store, "b", &chunks(5, 12)).unwrap();
    let kept = store.catalog.group_totals().unwrap();
    assert_eq!(kept, store.catalog.counted_totals().unwrap());
    assert_eq!(kept.values().map(|t| t.chunks).sum::<u64>(), 12);
    let (c, n) = names("c", "a");
    store
        .image_remove(&admin(), Owner::Any, &c, &n, false)
        .unwrap();
    store.gc(None).unwrap();
    let kept = store.catalog.group_totals().unwrap();
    assert_eq!(kept, store.catalog.counted_totals().unwrap());
    assert_eq!(kept.values().map(|t| t.chunks).sum::<u64>(), 5);
    assert_eq!(store.stats(&admin()).unwrap().unique_chunks, 5);
}

#[test]
fn a_resumed_image_that_ended_in_a_short_chunk_goes_on_after_it() {
    // A resume starts the client's chunker afresh, as an extent does: the
    // short chunk at the durable end stays where it is, mid-image.
    let (_dir, store) = store_with_container();
    let mut data = chunks(2, 5);
    data[1].truncate(100);
    let w = begin(&store, "short");
    send(&store, w, &data);
    store.image_detach(w);
    let r = resume(&store, Owner::Any, "short").unwrap();
    assert_eq!(r.offset, 4096 + 100);
    let more = chunks(1, 6);
    send(&store, r.writer, &more);
    store.image_commit(r.writer).unwrap();
    assert_eq!(
        read_image(&store, "short"),
        [data.concat(), more.concat()].concat()
    );
}

#[test]
fn chunks_received_past_the_first_missing_one_survive_gc_until_the_resume() {
    let (_dir, store) = store_with_container();
    let data = chunks(20, 9);
    let w = begin(&store, "ooo");
    // All twenty announced; every chunk but the fifth arrives (one of
    // several connections stalled), and then the session ends.
    let missing = store.image_append(w, &refs(&data)).unwrap();
    assert_eq!(missing.len(), 20);
    let mut z = Compressor::new(1).unwrap();
    for (i, d) in data.iter().enumerate().filter(|(i, _)| *i != 4) {
        let enc = z.encode(d);
        let id = ChunkId::of(d);
        store
            .image_put_chunk(w, &id, enc.codec, enc.raw_len, &enc.bytes)
            .unwrap_or_else(|e| panic!("chunk {i}: {e}"));
    }
    store.image_detach(w);
    assert_eq!(incomplete(&store)[0].resume_offset, 4 * 4096);

    // GC while the writer is away frees none of what arrived.
    let gc = store.gc(None).unwrap();
    assert_eq!(gc.chunks_removed, 0, "{gc:?}");
    let r = resume(&store, Owner::Any, "ooo").unwrap();
    assert_eq!(r.offset, 4 * 4096);
    let again = store.image_append(r.writer, &refs(&data[4..])).unwrap();
    assert_eq!(
        again,
        vec![0],
        "only the chunk that never arrived is asked for"
    );
    let enc = z.encode(&data[4]);
    store
        .image_put_chunk(
            r.writer,
            &ChunkId::of(&data[4]),
            enc.codec,
            enc.raw_len,
            &enc.bytes,
        )
        .unwrap();
    store.image_commit(r.writer).unwrap();
    assert_eq!(read_image(&store, "ooo"), data.concat());
    assert!(store.fsck(None).unwrap().is_clean());
}

#[test]
fn a_pack_a_crash_left_without_a_header_is_a_note_to_fsck_and_removed_at_start_unless_used() {
    let (dir, store) = store_with_container();
    let data = chunks(20, 6);
    let w = begin(&store, "kept");
    send(&store, w, &data);
    store.image_commit(w).unwrap();
    drop(store);
    // A `kill -9` between creating pack 99 and writing its header.
    let used = find_pack(dir.path(), 1);
    let headless = used.with_file_name(format!("{:016x}.pack", 99));
    std::fs::write(&headless, b"TERN").unwrap();

    let stopped = Store::open_read_only(dir.path(), "test").unwrap();
    let report = stopped.fsck(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.damage);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("without a whole header")),
        "{:?}",
        report.notes
    );
    drop(stopped);

    let store = Store::open(dir.path()).unwrap();
    assert!(!headless.exists(), "the start removes it");
    assert!(store.fsck(None).unwrap().is_clean());
    assert_eq!(read_image(&store, "kept"), data.concat());
    drop(store);

    // The same damage to a pack committed images use is damage.
    std::fs::write(&used, b"TERN").unwrap();
    let stopped = Store::open_read_only(dir.path(), "test").unwrap();
    let report = stopped.fsck(None).unwrap();
    assert!(
        report
            .damage
            .iter()
            .any(|d| d.contains("points to no intact pack entry")),
        "{:?}",
        report.damage
    );
}
