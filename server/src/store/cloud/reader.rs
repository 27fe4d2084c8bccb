//! Reading packs out of the bucket: a read fetches the sealed segments it
//! covers in one ranged GET, opens them and keeps them in a bounded cache.
//! A read that goes on in order (the segment before it is cached: this
//! reader or another one just read it) also fetches the segments after it
//! ([`READ_AHEAD`]) and keeps up to [`AHEAD_WINDOWS`] such requests' worth
//! ahead of the readers in flight on threads of their own, into the group's
//! next objects when they near the end of this one, so a restore, which
//! reads packs front to back in the order they were written (over several
//! connections at once), makes one request per few MiB and rarely waits for
//! one. A segment being fetched is fetched once: other readers of it wait
//! for that request.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::bucket::Bucket;
use super::journal::ObjectEntry;
use super::sealed::{open_segment, DataKey, ObjectHeader, SEGMENT};
use super::{hex, lock, sealed_in_bucket};
use crate::store::pack_store::PackObject;

/// Segments fetched in one request when a pack is read in order.
const READ_AHEAD: u64 = 4;
/// Requests' worth of segments kept fetched or in flight ahead of a reader
/// that reads in order: 16 MiB, so that a restore reading 150 MB/s of
/// stored bytes has 100 ms of reading ahead of it (an S3 request's first
/// byte takes tens of ms), and two requests are served at once (a store
/// serves one request's blocks one after another).
const AHEAD_WINDOWS: u64 = 4;
/// Background fetches in flight at most, over every reader of a cache: a
/// restore of many streams must not open a request per stream and segment.
const MAX_PREFETCHES: usize = 8;

type SegmentKey = ([u8; 16], u64);

/// An opened segment: its plaintext in the buffer of the request that
/// fetched it (opened in place, shared by the segments of that request).
#[derive(Clone)]
pub struct Segment {
    buf: Arc<Vec<u8>>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for Segment {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// The last segment of a read-ahead request from `first` in an object whose
/// last segment is `end`: [`READ_AHEAD`] segments, or to the end when fewer
/// than that would be left, so that an object's short last segment is never
/// a request of its own (a small response waits out the server's Nagle
/// and the client's delayed ACK: 40 ms, twice what a 4 MiB request takes).
fn window_end(first: u64, end: u64) -> u64 {
    let last = first + READ_AHEAD - 1;
    if last + READ_AHEAD > end {
        end
    } else {
        last
    }
}

/// Opened segments, first in first out, up to a byte bound; and the
/// segments requests are fetching now.
pub struct SegmentCache {
    limit: usize,
    inner: Mutex<CacheInner>,
    /// Signalled when a fetch ends (its segments cached, or it failed).
    fetched: Condvar,
    prefetches: AtomicUsize,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<SegmentKey, Segment>,
    order: VecDeque<SegmentKey>,
    bytes: usize,
    fetching: HashSet<SegmentKey>,
}

impl CacheInner {
    fn put(&mut self, limit: usize, key: SegmentKey, seg: Segment) {
        if self.map.contains_key(&key) {
            return;
        }
        self.bytes += seg.len();
        self.map.insert(key, seg);
        self.order.push_back(key);
        while self.bytes > limit {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(s) = self.map.remove(&old) {
                self.bytes -= s.len();
            }
        }
    }

    fn known(&self, key: &SegmentKey) -> bool {
        self.map.contains_key(key) || self.fetching.contains(key)
    }

    /// True if segment `i` of object `name` is read in order: the one
    /// before it is cached or being fetched. Whichever reader read it, so
    /// that the sessions of one restore, reading neighbouring chunks at
    /// once, count as one reader; and a chunk of an object read long ago
    /// (a duplicate), whose segments the cache has let go, does not.
    fn follows(&self, name: [u8; 16], i: u64) -> bool {
        i > 0 && self.known(&(name, i - 1))
    }

    /// Marks `first..=last` as being fetched, up to the first of them that
    /// is cached or being fetched already; returns the last one marked.
    fn claim(&mut self, name: [u8; 16], first: u64, last: u64) -> u64 {
        let mut end = first;
        self.fetching.insert((name, first));
        for j in first + 1..=last {
            if self.known(&(name, j)) {
                break;
            }
            self.fetching.insert((name, j));
            end = j;
        }
        end
    }
}

/// What a reader finds for a segment it needs.
enum Found {
    Cached(Segment),
    /// Not cached and nobody fetching it: the reader fetches `first..=last`.
    Claimed(u64),
}

impl SegmentCache {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            inner: Mutex::new(CacheInner::default()),
            fetched: Condvar::new(),
            prefetches: AtomicUsize::new(0),
        }
    }

    /// Segment `first` of object `name` if cached, after waiting for a fetch
    /// of it in flight; else claims it and up to `last` for the caller.
    fn find_or_claim(&self, name: [u8; 16], first: u64, last: u64) -> Found {
        let mut c = lock(&self.inner);
        loop {
            if let Some(s) = c.map.get(&(name, first)) {
                return Found::Cached(s.clone());
            }
            if !c.fetching.contains(&(name, first)) {
                return Found::Claimed(c.claim(name, first, last));
            }
            c = self.fetched.wait(c).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Ends a fetch of `first..=last`: caches what it opened (all of them,
    /// or nothing if it failed) and wakes the readers waiting for them.
    fn fetch_ended(&self, name: [u8; 16], first: u64, last: u64, segs: Option<&[Segment]>) {
        let mut c = lock(&self.inner);
        for j in first..=last {
            c.fetching.remove(&(name, j));
        }
        for (j, seg) in (first..).zip(segs.unwrap_or_default()) {
            c.put(self.limit, (name, j), seg.clone());
        }
        drop(c);
        self.fetched.notify_all();
    }

    pub fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }
}

/// Where one pack object's segments come from: what a fetch needs, owned,
/// so that a background thread can fetch ahead of the reader.
#[derive(Clone)]
struct ObjectSource {
    bucket: Arc<Bucket>,
    key: DataKey,
    cache: Arc<SegmentCache>,
    name: [u8; 16],
    header: ObjectHeader,
}

impl ObjectSource {
    fn damaged(&self, why: impl std::fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "object {} in {}: {why}",
                hex(&self.name),
                self.bucket.spec().location()
            ),
        )
    }

    /// Fetches and opens segments `first..=last`, which the caller claimed,
    /// and caches them; a failed fetch caches nothing.
    fn fetch(&self, first: u64, last: u64) -> io::Result<Segment> {
        let segs = self.get_and_open(first, last);
        self.cache
            .fetch_ended(self.name, first, last, segs.as_deref().ok());
        segs?
            .into_iter()
            .next()
            .ok_or_else(|| self.damaged("no segment"))
    }

    /// Opens the segments in place in the response's buffer: no copy.
    fn get_and_open(&self, first: u64, last: u64) -> io::Result<Vec<Segment>> {
        let (start, _) = self.header.sealed_range(first);
        let (last_start, last_len) = self.header.sealed_range(last);
        let len = last_start + last_len - start;
        let mut bytes = self.bucket.get_range(&hex(&self.name), start, len)?;
        if bytes.len() as u64 != len {
            return Err(self.damaged(format!(
                "{} bytes where {len} were expected: the object is shorter than its pack",
                bytes.len()
            )));
        }
        let mut opened = Vec::new();
        let mut at = 0usize;
        for i in first..=last {
            let n = self.header.sealed_range(i).1 as usize;
            let plain = open_segment(
                &self.key,
                &self.name,
                &self.header,
                i,
                &mut bytes[at..at + n],
            )
            .map_err(|e| self.damaged(e))?;
            opened.push((at, plain));
            at += n;
        }
        let buf = Arc::new(bytes);
        Ok(opened
            .into_iter()
            .map(|(start, len)| Segment {
                buf: buf.clone(),
                start,
                len,
            })
            .collect())
    }

    /// Segment `i`, from the cache, a fetch in flight, or a fetch of
    /// `i..=last` (fewer if some of them are cached or being fetched).
    fn segment(&self, i: u64, last: u64) -> io::Result<Segment> {
        match self.cache.find_or_claim(self.name, i, last) {
            Found::Cached(s) => Ok(s),
            Found::Claimed(last) => self.fetch(i, last),
        }
    }

    /// Starts a background fetch of the first segments in `from..=horizon`
    /// that are neither cached nor being fetched, if there are any and fewer
    /// than [`MAX_PREFETCHES`] run. Its failure is only logged: a reader that
    /// needs the segment fetches it again and reports what goes wrong.
    fn prefetch(&self, from: u64, horizon: u64) {
        let end = self.header.segments().saturating_sub(1);
        let (first, last) = {
            let mut c = lock(&self.cache.inner);
            let Some(first) = (from..=horizon.min(end)).find(|j| !c.known(&(self.name, *j))) else {
                return;
            };
            let prefetches = &self.cache.prefetches;
            if prefetches.fetch_add(1, Ordering::AcqRel) >= MAX_PREFETCHES {
                prefetches.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            let last = c.claim(self.name, first, window_end(first, end));
            (first, last)
        };
        let source = self.clone();
        let spawned = std::thread::Builder::new()
            .name("tern-prefetch".into())
            .spawn(move || {
                if let Err(e) = source.fetch(first, last) {
                    tracing::debug!("read-ahead of object {}: {e}", hex(&source.name));
                }
                source.cache.prefetches.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.cache.fetch_ended(self.name, first, last, None);
            self.cache.prefetches.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One pack object, read by range.
pub struct ObjectReader {
    source: ObjectSource,
    /// The group's next objects, in order, read ahead into when a reader
    /// nears the end: objects are 8 MiB, shorter than the read-ahead.
    successors: Vec<ObjectSource>,
}

impl ObjectReader {
    pub fn new(
        bucket: Arc<Bucket>,
        key: DataKey,
        cache: Arc<SegmentCache>,
        entry: ObjectEntry,
        successors: Vec<ObjectEntry>,
    ) -> Self {
        let source = |entry: ObjectEntry| ObjectSource {
            bucket: bucket.clone(),
            key: key.clone(),
            cache: cache.clone(),
            name: entry.name,
            header: ObjectHeader {
                segment: SEGMENT,
                plain_len: entry.plain_len,
            },
        };
        Self {
            source: source(entry),
            successors: successors.into_iter().map(source).collect(),
        }
    }

    /// Segment `i`: with the segments after it when it is the first or
    /// follows in order, and reading ahead in the background only once the
    /// reads have gone on in order (a pack's table is read at its start and
    /// then its end: that reads no further).
    fn segment(&self, i: u64) -> io::Result<Segment> {
        let follows = lock(&self.source.cache.inner).follows(self.source.name, i);
        if !follows && i != 0 {
            return self.source.segment(i, i);
        }
        let end = self.source.header.segments().saturating_sub(1);
        let seg = self.source.segment(i, window_end(i, end))?;
        if !follows {
            return Ok(seg);
        }
        let horizon = i + AHEAD_WINDOWS * READ_AHEAD;
        self.source.prefetch(i + 1, horizon);
        // What of the horizon lies past this object, in the next ones.
        let mut beyond = horizon.saturating_sub(end);
        for next in &self.successors {
            if beyond == 0 {
                break;
            }
            next.prefetch(0, beyond - 1);
            beyond = beyond.saturating_sub(next.header.segments());
        }
        Ok(seg)
    }
}

impl PackObject for ObjectReader {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.source.header.plain_len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read past the end of object {} ({} bytes)",
                        hex(&self.source.name),
                        self.source.header.plain_len
                    ),
                )
            })?;
        let seg = SEGMENT as u64;
        let mut at = offset;
        while at < end {
            let i = at / seg;
            let s = self.segment(i)?;
            let from = (at - i * seg) as usize;
            let n = ((end - at) as usize).min(s.len() - from);
            let dst = (at - offset) as usize;
            buf[dst..dst + n].copy_from_slice(&s[from..from + n]);
            at += n as u64;
        }
        Ok(())
    }

    fn write_all_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(sealed_in_bucket(0))
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.source.header.plain_len)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(sealed_in_bucket(0))
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
