//! Reading an image at any offset, with read-ahead.
//!
//! The reader asks for recipe entries from the current position, then for the
//! chunks themselves in groups, keeping a few groups in flight so the network
//! and the server's disk work while the caller decompresses and verifies.
//!
//! The read-ahead grows with the reading: after a seek the reader asks for
//! the chunks the read wants and no more (a random 4 KiB read fetches one
//! chunk, not megabytes it will throw away), and as reads go on in order it
//! asks ahead as far as it has read since the seek, up to [`MAX_AHEAD`]. A
//! read a little ahead of the one before, inside what is already asked for,
//! skips to it without starting over.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{mpsc, Mutex};

use tern_core::codec::{self, Decoder};
use tern_core::wire::{Handle, ImageInfo, Msg, RecipeEntry};
use tern_core::{ContainerName, ImageName};

use crate::client::unexpected;
use std::sync::Arc;

use crate::session::{Answers, Due};
use crate::stop::Stop;
use crate::{Client, ClientError};

/// Recipe entries fetched at once.
const RECIPE_BATCH: u32 = 2048;
/// Chunks asked for in one `ChunkGet`.
const GET_BATCH: usize = 32;
/// `ChunkGet` requests in flight.
const READ_AHEAD: usize = 8;
/// The farthest the reader asks ahead of the position, in image bytes.
const MAX_AHEAD: u64 = 16 << 20;
/// Recipe entries fetched after a seek: a few MiB of image; more once the
/// read-ahead calls for them.
const SEEK_RECIPE_BATCH: u32 = 64;

/// A committed image opened for reading; implements `Read` and `Seek`.
pub struct ImageReader {
    client: Client,
    handle: Handle,
    info: ImageInfo,
    pos: u64,
    /// Recipe entries not yet asked for, in image order.
    plan: VecDeque<RecipeEntry>,
    /// Where the plan continues once it runs dry.
    plan_next: u64,
    requests: VecDeque<(VecDeque<RecipeEntry>, Answers)>,
    /// Where the chunks asked for end.
    asked_end: u64,
    /// Where the current run of in-order reads began (the last seek).
    run_start: u64,
    /// The end of what the run's reads asked for.
    wanted_end: u64,
    /// The length of the read in progress.
    want_len: u64,
    /// The chunk holding the most recent read position.
    current: Option<(u64, Vec<u8>)>,
    decoder: Decoder,
    /// Ends the reader's waits (cancel, abort, a call's time limit); once
    /// fired, the reader is done.
    stop: Arc<Stop>,
}

impl ImageReader {
    pub(crate) fn open(
        client: Client,
        container: ContainerName,
        name: ImageName,
    ) -> Result<Self, ClientError> {
        let stop = client.stop();
        let answer = {
            let _limit = client.limit(&stop);
            let open = Msg::ImageOpen { container, name };
            client.conn().call(open, Vec::new(), &stop)?
        };
        let (handle, info) = match answer.env.msg {
            Msg::ImageOpened { handle, info } => (handle, info),
            other => return Err(unexpected(other)),
        };
        Ok(Self {
            client,
            handle,
            info,
            pos: 0,
            plan: VecDeque::new(),
            plan_next: 0,
            requests: VecDeque::new(),
            asked_end: 0,
            run_start: 0,
            wanted_end: 0,
            want_len: 0,
            current: None,
            decoder: Decoder::new(),
            stop,
        })
    }

    /// Cancels the reader's calls from any thread: the call in progress and
    /// every later one fail with [`ClientError::Cancelled`].
    pub fn canceller(&self) -> Arc<Stop> {
        self.stop.clone()
    }

    /// The image.
    pub fn info(&self) -> &ImageInfo {
        &self.info
    }

    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Reads at `offset` without moving the stream position's read-ahead elsewhere.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, ClientError> {
        self.pos = offset;
        self.read_some(buf)
    }

    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ClientError> {
        self.stop.check()?;
        if buf.is_empty() || self.pos >= self.info.size {
            return Ok(0);
        }
        let _limit = self.client.limit(&self.stop);
        self.want_len = buf.len() as u64;
        loop {
            if let Some((start, data)) = &self.current {
                let end = start + data.len() as u64;
                if (*start..end).contains(&self.pos) {
                    let from = (self.pos - start) as usize;
                    let n = buf.len().min(data.len() - from);
                    buf[..n].copy_from_slice(&data[from..from + n]);
                    self.pos += n as u64;
                    return Ok(n);
                }
            }
            self.current = Some(self.next_chunk()?);
        }
    }

    /// The chunk that holds `pos`, from the read-ahead pipeline.
    fn next_chunk(&mut self) -> Result<(u64, Vec<u8>), ClientError> {
        let chunk = self.next_encoded()?;
        if let Some((_, spent)) = self.current.take() {
            self.decoder.recycle(spent);
        }
        let offset = chunk.offset;
        Ok((offset, chunk.decode(&mut self.decoder)?))
    }

    /// The next chunk at or after the read position, as the server sent it.
    fn next_encoded(&mut self) -> Result<Encoded, ClientError> {
        self.follow_position();
        loop {
            self.fill()?;
            let Some((entries, answers)) = self.requests.front_mut() else {
                return Err(ClientError::Protocol(format!(
                    "no recipe entry covers offset {}",
                    self.pos
                )));
            };
            let Some(entry) = entries.pop_front() else {
                self.requests.pop_front();
                continue;
            };
            let frame = answers.recv()?;
            if entries.is_empty() {
                self.requests.pop_front();
            }
            let Msg::ChunkData {
                id,
                codec,
                raw_len,
                offset,
                ..
            } = frame.env.msg
            else {
                return Err(unexpected(frame.env.msg));
            };
            if id != entry.id || offset != entry.offset || raw_len != entry.len {
                return Err(ClientError::Protocol(format!(
                    "asked for the chunk at offset {}, got one at {offset}",
                    entry.offset
                )));
            }
            if entry.offset + entry.len as u64 <= self.pos {
                continue;
            }
            return Ok(Encoded {
                id,
                codec,
                raw_len,
                offset,
                bytes: frame.payload,
            });
        }
    }

    /// Moves the pipeline to the read position: on in the same run if it
    /// lies between the first chunk in flight and the end of those asked
    /// for (the ones before it are skipped as they arrive), else a seek:
    /// the chunks in flight are dropped, and the recipe already fetched is
    /// kept if it covers the position.
    fn follow_position(&mut self) {
        let pos = self.pos;
        let in_flight_from = self
            .requests
            .front()
            .and_then(|(entries, _)| entries.front())
            .map_or(self.asked_end, |e| e.offset);
        if in_flight_from <= pos && pos <= self.asked_end {
            self.wanted_end = self.wanted_end.max(pos + self.want_len);
            return;
        }
        self.requests.clear();
        self.run_start = pos;
        self.wanted_end = pos + self.want_len;
        while self
            .plan
            .front()
            .is_some_and(|e| e.offset + u64::from(e.len) <= pos)
        {
            self.plan.pop_front();
        }
        match self.plan.front() {
            Some(e) if e.offset <= pos => self.asked_end = e.offset,
            _ => {
                self.plan.clear();
                self.plan_next = pos;
                self.asked_end = pos;
            }
        }
    }

    /// Where the chunks asked for should reach: what the run's reads want,
    /// and as far ahead again as the run has read, up to [`MAX_AHEAD`].
    fn ahead_target(&self) -> u64 {
        let read = (self.pos - self.run_start.min(self.pos)).min(MAX_AHEAD);
        self.wanted_end.max(self.pos + read)
    }

    /// Keeps the recipe plan and the chunk requests topped up to
    /// [`Self::ahead_target`].
    fn fill(&mut self) -> Result<(), ClientError> {
        let target = self.ahead_target();
        while self.requests.len() < READ_AHEAD && self.asked_end < target {
            if self.plan.is_empty() && self.plan_next < self.info.size {
                // About one entry per 16 KiB wanted: a seek's few, a stream's many.
                let wanted = ((target - self.pos) >> 14).min(u64::from(RECIPE_BATCH)) as u32;
                let get = Msg::RecipeGet {
                    handle: self.handle,
                    from_offset: self.plan_next,
                    max: wanted.max(SEEK_RECIPE_BATCH),
                };
                let answer = self.client.conn().call(get, Vec::new(), &self.stop)?;
                let Msg::Recipe { entries } = answer.env.msg else {
                    return Err(unexpected(answer.env.msg));
                };
                let Some(last) = entries.last() else {
                    return Err(ClientError::Protocol(format!(
                        "empty recipe at offset {}",
                        self.plan_next
                    )));
                };
                let next = last.offset + last.len as u64;
                if next <= self.plan_next {
                    return Err(ClientError::Protocol("the recipe does not advance".into()));
                }
                self.plan_next = next;
                self.plan.extend(entries);
            }
            if self.plan.is_empty() {
                break;
            }
            let n = self
                .plan
                .iter()
                .take(GET_BATCH)
                .take_while(|e| e.offset < target)
                .count()
                .max(1);
            let entries: VecDeque<RecipeEntry> = self.plan.drain(..n).collect();
            if let Some(last) = entries.back() {
                self.asked_end = last.offset + u64::from(last.len);
            }
            let offsets = entries.iter().map(|e| e.offset).collect();
            let get = Msg::ChunkGet {
                handle: self.handle,
                offsets,
            };
            // No answer may carry more than its chunk could take stored.
            let longest = entries.iter().map(|e| e.len as usize).max().unwrap_or(0);
            let due = Due::Answers {
                frames: n,
                payload: stored_bound(longest),
            };
            let conn = self.client.conn();
            let answers = conn.request_due(get, Vec::new(), &self.stop, due)?;
            self.requests.push_back((entries, answers));
        }
        Ok(())
    }

    /// Writes the whole image to `out`; returns the bytes written. Chunks are
    /// decompressed and verified on every core while this thread fetches the
    /// next ones and writes the finished ones in order.
    pub fn copy_to(&mut self, out: &mut dyn io::Write) -> Result<u64, ClientError> {
        self.stop.check()?;
        let _limit = self.client.limit(&self.stop);
        // The whole image is wanted: read ahead as far as allowed from the start.
        self.want_len = self.info.size;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let limit = threads * DECODE_AHEAD;
        let (jobs, job_queue) = mpsc::sync_channel::<(u64, Encoded)>(limit);
        let job_queue = Mutex::new(job_queue);
        let (done, finished) = mpsc::channel::<(u64, Decoded)>();
        let (spend, spent) = mpsc::channel::<Vec<u8>>();
        let spent = Mutex::new(spent);
        std::thread::scope(|s| {
            for _ in 0..threads {
                let done = done.clone();
                let (job_queue, spent) = (&job_queue, &spent);
                s.spawn(move || decode_worker(job_queue, spent, done));
            }
            drop(done);
            // `jobs` moves in: when this returns, early or not, the workers end.
            self.fetch_and_write(jobs, limit, &finished, &spend, out)
        })
    }

    fn fetch_and_write(
        &mut self,
        jobs: mpsc::SyncSender<(u64, Encoded)>,
        limit: usize,
        finished: &mpsc::Receiver<(u64, Decoded)>,
        spend: &mpsc::Sender<Vec<u8>>,
        out: &mut dyn io::Write,
    ) -> Result<u64, ClientError> {
        let stopped = || ClientError::Protocol("a decoder thread stopped".into());
        let mut next = 0;
        let (mut sent, mut written, mut total) = (0u64, 0u64, 0u64);
        let mut ready = BTreeMap::new();
        loop {
            while sent - written < limit as u64 && next < self.info.size {
                self.pos = next;
                let chunk = self.next_encoded()?;
                next = chunk.offset + u64::from(chunk.raw_len);
                jobs.send((sent, chunk)).map_err(|_| stopped())?;
                sent += 1;
            }
            if sent == written {
                break;
            }
            let (seq, decoded) = finished.recv().map_err(|_| stopped())?;
            ready.insert(seq, decoded?);
            while let Some((offset, data)) = ready.remove(&written) {
                if offset != total {
                    return Err(ClientError::Protocol(format!(
                        "expected the chunk at offset {total}, got one at {offset}"
                    )));
                }
                out.write_all(&data)?;
                total += data.len() as u64;
                written += 1;
                let _ = spend.send(data);
            }
        }
        self.pos = next;
        if total != self.info.size {
            return Err(ClientError::Corrupt(format!(
                "image is {} bytes but {total} were read",
                self.info.size
            )));
        }
        Ok(total)
    }
}

/// Chunks each decode thread may have queued or finished ahead of the writer.
const DECODE_AHEAD: usize = 16;

/// A chunk's image offset and plaintext, or why it could not be decoded.
type Decoded = Result<(u64, Vec<u8>), ClientError>;

fn decode_worker(
    jobs: &Mutex<mpsc::Receiver<(u64, Encoded)>>,
    spent: &Mutex<mpsc::Receiver<Vec<u8>>>,
    done: mpsc::Sender<(u64, Decoded)>,
) {
    let mut decoder = Decoder::new();
    loop {
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((seq, chunk)) = job else { return };
        if let Ok(buf) = spent.lock().unwrap_or_else(|e| e.into_inner()).try_recv() {
            decoder.recycle(buf);
        }
        let offset = chunk.offset;
        let decoded = chunk.decode(&mut decoder).map(|data| (offset, data));
        if done.send((seq, decoded)).is_err() {
            return;
        }
    }
}

/// A chunk as it came from the server: compressed, not yet verified.
struct Encoded {
    id: tern_core::ChunkId,
    codec: codec::Codec,
    raw_len: u32,
    offset: u64,
    bytes: Vec<u8>,
}

impl Encoded {
    /// Decompresses and checks the chunk against its id.
    fn decode(self, decoder: &mut Decoder) -> Result<Vec<u8>, ClientError> {
        decoder
            .decode(&self.id, self.codec, self.raw_len, self.bytes)
            .map_err(|e| ClientError::Corrupt(format!("chunk at offset {}: {e}", self.offset)))
    }
}

impl Drop for ImageReader {
    fn drop(&mut self) {
        self.requests.clear();
        self.client.conn().send_later(Msg::ImageRelease {
            handle: self.handle,
        });
    }
}

impl Read for ImageReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.read_some(buf)?)
    }
}

impl Seek for ImageReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.info.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = target;
        Ok(target)
    }
}

/// The most bytes a chunk of `len` bytes may take as stored: raw, or zstd's
/// worst case (its `ZSTD_compressBound`: `len + len/256` and a little).
fn stored_bound(len: usize) -> usize {
    len + len / 256 + 512
}
