use tern_test_support::garage::{Garage, KEY_ID, SECRET};

use super::*;
use crate::store::cloud::bucket::{BucketSpec, Credentials};
use crate::store::cloud::sealed::{seal_object, TAG_LEN};

const SEGMENTS: usize = 24;

/// A sealed object of [`SEGMENTS`] full segments in `g`'s bucket, and a
/// second one of the same bytes (its successor): their entries, the
/// bucket, the key and the plaintext.
fn object(g: &Garage) -> (ObjectEntry, ObjectEntry, Arc<Bucket>, DataKey, Vec<u8>) {
    let spec = BucketSpec::parse(&g.url(), "", "reader").unwrap();
    let creds = Credentials {
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
    };
    let bucket = Arc::new(Bucket::new(spec, &creds).unwrap());
    let key = DataKey([7; 32]);
    let name = [9u8; 16];
    let plain: Vec<u8> = (0..SEGMENTS * SEGMENT as usize)
        .map(|i| (i / 4093) as u8 ^ i as u8)
        .collect();
    let entries = [name, [10u8; 16]].map(|name| {
        bucket
            .put(&hex(&name), seal_object(&key, &name, &plain))
            .unwrap();
        ObjectEntry {
            name,
            plain_len: plain.len() as u64,
        }
    });
    (entries[0], entries[1], bucket, key, plain)
}

/// Reads the whole object front to back, 64 KiB at a time, and checks it.
fn read_in_order(reader: &ObjectReader, plain: &[u8]) {
    let mut buf = vec![0u8; 64 << 10];
    for at in (0..plain.len()).step_by(buf.len()) {
        reader.read_exact_at(&mut buf, at as u64).unwrap();
        assert!(buf[..] == plain[at..at + buf.len()], "bytes at {at} differ");
    }
}

#[test]
fn an_object_read_in_order_is_fetched_once_in_few_requests_and_its_successor_read_ahead() {
    let Some(g) = Garage::start() else { return };
    let (entry, successor, bucket, key, plain) = object(&g);
    let sealed_len = ObjectHeader {
        segment: SEGMENT,
        plain_len: entry.plain_len,
    }
    .object_len();
    let counted = |bucket: &Bucket| {
        (
            bucket.counters.get.load(Ordering::Relaxed),
            bucket.counters.bytes_down.load(Ordering::Relaxed),
        )
    };

    // One reader: a request per READ_AHEAD segments (a few more where a
    // read-ahead and the reader met), and no segment twice.
    let cache = Arc::new(SegmentCache::new(64 << 20));
    let reader = ObjectReader::new(
        bucket.clone(),
        key.clone(),
        cache.clone(),
        entry,
        vec![successor],
    );
    let before = counted(&bucket);
    read_in_order(&reader, &plain);
    let (gets, down) = counted(&bucket);
    let (gets, down) = (gets - before.0, down - before.1);
    // Besides the object, at most the first segments of its successor.
    let ahead = AHEAD_WINDOWS * READ_AHEAD * (SEGMENT as u64 + TAG_LEN);
    assert!(
        down <= sealed_len + ahead,
        "{down} bytes fetched of a {sealed_len}-byte object"
    );
    let fewest = SEGMENTS as u64 / READ_AHEAD;
    assert!(
        (fewest..=2 * fewest + AHEAD_WINDOWS).contains(&gets),
        "{gets} requests for {SEGMENTS} segments"
    );
    // A restore that goes on into the successor finds its start fetched.
    // (Its own read-aheads go on meanwhile: waited for below.)
    wait_for_read_aheads(&cache);
    let next = ObjectReader::new(
        bucket.clone(),
        key.clone(),
        cache.clone(),
        successor,
        vec![],
    );
    let before = counted(&bucket);
    let mut buf = vec![0u8; 64 << 10];
    next.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..] == plain[..buf.len()]);
    assert_eq!(
        counted(&bucket).0,
        before.0,
        "the successor's start was not read ahead"
    );
    // (That read reads ahead in the successor in turn.)
    wait_for_read_aheads(&cache);

    // Four readers of it at once, each with a reader of its own over one
    // cache: each segment still crosses once.
    let cache = Arc::new(SegmentCache::new(64 << 20));
    let before = counted(&bucket);
    std::thread::scope(|s| {
        for _ in 0..4 {
            let reader =
                ObjectReader::new(bucket.clone(), key.clone(), cache.clone(), entry, vec![]);
            let plain = &plain;
            s.spawn(move || read_in_order(&reader, plain));
        }
    });
    let down = counted(&bucket).1 - before.1;
    assert!(
        down <= sealed_len,
        "four readers fetched {down} bytes of a {sealed_len}-byte object"
    );
    wait_for_read_aheads(&cache);
    assert!(lock(&cache.inner).fetching.is_empty());
}

#[test]
fn a_read_in_order_reads_ahead_through_several_short_objects_after_its_own() {
    let Some(g) = Garage::start() else { return };
    let (_, _, bucket, key, plain) = object(&g);
    // Objects of four segments (as GC's rewrites or small commits leave
    // them): the read-ahead's 16 segments reach three objects past A.
    let plain = &plain[..4 * SEGMENT as usize];
    let [a, b, c, d] = [30u8, 31, 32, 33].map(|n| {
        let name = [n; 16];
        bucket
            .put(&hex(&name), seal_object(&key, &name, plain))
            .unwrap();
        ObjectEntry {
            name,
            plain_len: plain.len() as u64,
        }
    });
    let cache = Arc::new(SegmentCache::new(64 << 20));
    let reader = ObjectReader::new(bucket.clone(), key.clone(), cache.clone(), a, vec![b, c, d]);
    read_in_order(&reader, plain);
    wait_for_read_aheads(&cache);
    // The reads of B, C and D find their segments fetched.
    let before = bucket.counters.get.load(Ordering::Relaxed);
    for entry in [b, c, d] {
        let next = ObjectReader::new(bucket.clone(), key.clone(), cache.clone(), entry, vec![]);
        let mut buf = vec![0u8; 64 << 10];
        next.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..] == plain[..buf.len()]);
    }
    assert_eq!(
        bucket.counters.get.load(Ordering::Relaxed),
        before,
        "the objects after the next one were not read ahead"
    );
}

#[test]
fn reading_a_packs_header_and_then_its_end_reads_no_further() {
    let Some(g) = Garage::start() else { return };
    let (entry, successor, bucket, key, _) = object(&g);
    let cache = Arc::new(SegmentCache::new(64 << 20));
    let reader = ObjectReader::new(bucket.clone(), key, cache.clone(), entry, vec![successor]);
    let mut head = [0u8; 16];
    reader.read_exact_at(&mut head, 0).unwrap();
    reader
        .read_exact_at(&mut head, entry.plain_len - 16)
        .unwrap();
    wait_for_read_aheads(&cache);
    // The first segments (as for a restore starting there) and the last.
    let got = bucket.counters.bytes_down.load(Ordering::Relaxed);
    let most = (READ_AHEAD + 1) * (SEGMENT as u64 + TAG_LEN);
    assert!(got <= most, "{got} bytes fetched for a header and a footer");
    assert_eq!(bucket.counters.get.load(Ordering::Relaxed), 2);
}

#[test]
fn an_objects_short_last_segment_is_fetched_with_the_segments_before_it() {
    let Some(g) = Garage::start() else { return };
    let (_, _, bucket, key, plain) = object(&g);
    // Eight full segments and half of one: requests of 0..=3 and then
    // 4..=8, never the short one alone.
    let plain = &plain[..8 * SEGMENT as usize + SEGMENT as usize / 2];
    let name = [11u8; 16];
    bucket
        .put(&hex(&name), seal_object(&key, &name, plain))
        .unwrap();
    let entry = ObjectEntry {
        name,
        plain_len: plain.len() as u64,
    };
    let cache = Arc::new(SegmentCache::new(64 << 20));
    let reader = ObjectReader::new(bucket.clone(), key, cache.clone(), entry, vec![]);
    let before = bucket.counters.get.load(Ordering::Relaxed);
    let mut buf = vec![0u8; 32 << 10];
    for at in (0..plain.len()).step_by(buf.len()) {
        let n = buf.len().min(plain.len() - at);
        reader.read_exact_at(&mut buf[..n], at as u64).unwrap();
        assert!(buf[..n] == plain[at..at + n], "bytes at {at} differ");
    }
    wait_for_read_aheads(&cache);
    assert_eq!(bucket.counters.get.load(Ordering::Relaxed) - before, 2);
}

/// Waits for every read-ahead to end (its thread counts itself out
/// just after the segments it fetched are cached).
fn wait_for_read_aheads(cache: &SegmentCache) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cache.prefetches.load(Ordering::Acquire) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a read-ahead never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
