//! Reading packs out of the bucket: a read fetches the sealed segments it
//! covers in one ranged GET, opens them and keeps them in a bounded cache.
//! A read that continues where the last one on the same object ended also
//! fetches the segments after it ([`READ_AHEAD`]), so a restore, which reads
//! a pack front to back, makes one request per few MiB.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::bucket::Bucket;
use super::journal::ObjectEntry;
use super::sealed::{open_segment, DataKey, ObjectHeader, SEGMENT};
use super::{hex, lock, sealed_in_bucket};
use crate::store::pack_store::PackObject;

/// Segments fetched in one request when a pack is read in order.
const READ_AHEAD: u64 = 4;

type SegmentKey = ([u8; 16], u64);

/// Opened segments, first in first out, up to a byte bound.
pub struct SegmentCache {
    limit: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<SegmentKey, Arc<Vec<u8>>>,
    order: VecDeque<SegmentKey>,
    bytes: usize,
}

impl SegmentCache {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn get(&self, key: &SegmentKey) -> Option<Arc<Vec<u8>>> {
        lock(&self.inner).map.get(key).cloned()
    }

    fn put(&self, key: SegmentKey, seg: Arc<Vec<u8>>) {
        let mut c = lock(&self.inner);
        if c.map.contains_key(&key) {
            return;
        }
        c.bytes += seg.len();
        c.map.insert(key, seg);
        c.order.push_back(key);
        while c.bytes > self.limit {
            let Some(old) = c.order.pop_front() else {
                break;
            };
            if let Some(s) = c.map.remove(&old) {
                c.bytes -= s.len();
            }
        }
    }

    pub fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }
}

/// One pack object, read by range.
pub struct ObjectReader {
    bucket: Arc<Bucket>,
    key: DataKey,
    cache: Arc<SegmentCache>,
    name: [u8; 16],
    header: ObjectHeader,
    /// The segment after the last one read (for read-ahead).
    next: AtomicU64,
}

impl ObjectReader {
    pub fn new(
        bucket: Arc<Bucket>,
        key: DataKey,
        cache: Arc<SegmentCache>,
        entry: ObjectEntry,
    ) -> Self {
        Self {
            bucket,
            key,
            cache,
            name: entry.name,
            header: ObjectHeader {
                segment: SEGMENT,
                plain_len: entry.plain_len,
            },
            next: AtomicU64::new(u64::MAX),
        }
    }

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

    /// Fetches and opens segments `first..=last`, caching them.
    fn fetch(&self, first: u64, last: u64) -> io::Result<Vec<Arc<Vec<u8>>>> {
        let (start, _) = self.header.sealed_range(first);
        let (last_start, last_len) = self.header.sealed_range(last);
        let len = last_start + last_len - start;
        let bytes = self.bucket.get_range(&hex(&self.name), start, len)?;
        if bytes.len() as u64 != len {
            return Err(self.damaged(format!(
                "{} bytes where {len} were expected: the object is shorter than its pack",
                bytes.len()
            )));
        }
        let mut out = Vec::new();
        let mut at = 0usize;
        for i in first..=last {
            let n = self.header.sealed_range(i).1 as usize;
            let plain = open_segment(
                &self.key,
                &self.name,
                &self.header,
                i,
                bytes[at..at + n].to_vec(),
            )
            .map_err(|e| self.damaged(e))?;
            at += n;
            let seg = Arc::new(plain);
            self.cache.put((self.name, i), seg.clone());
            out.push(seg);
        }
        Ok(out)
    }

    /// Segment `i`, from the cache or the bucket (with read-ahead when the
    /// reads go in order).
    fn segment(&self, i: u64) -> io::Result<Arc<Vec<u8>>> {
        if let Some(s) = self.cache.get(&(self.name, i)) {
            return Ok(s);
        }
        let sequential = self.next.load(Ordering::Relaxed) == i;
        let mut last = i;
        if sequential || i == 0 {
            let end = self.header.segments().saturating_sub(1);
            last = (i + READ_AHEAD - 1).min(end);
            // Stop before what is already cached.
            for j in i + 1..=last {
                if self.cache.get(&(self.name, j)).is_some() {
                    last = j - 1;
                    break;
                }
            }
        }
        let segs = self.fetch(i, last)?;
        segs.into_iter()
            .next()
            .ok_or_else(|| self.damaged("no segment"))
    }
}

impl PackObject for ObjectReader {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.header.plain_len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read past the end of object {} ({} bytes)",
                        hex(&self.name),
                        self.header.plain_len
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
            self.next.store(i + 1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn write_all_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(sealed_in_bucket(0))
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.header.plain_len)
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
