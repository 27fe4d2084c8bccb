//! The dedup pipeline of an image writer.
//!
//! Stages on their own threads, so that reading, chunking, hashing and
//! compression overlap with each other and with the network:
//! - with [`Pipeline::copy_from`], a reader thread reads the source straight
//!   into batch buffers;
//! - the caller's thread cuts the stream into chunks inside batch buffers of
//!   about [`BATCH_BYTES`], one `ImageAppend` each;
//! - the announcer hashes each batch, announces it (`ImageAppend`) and keeps up
//!   to [`WINDOW`] batches awaiting their answer (`ImageNeed`), so the answers
//!   arrive while later batches are cut;
//! - compression workers encode the chunks the server lacks and send them.
//!   Only those chunks cross the network, compressed.
//!
//! Batch buffers come from a pool of [`POOL`] and go back to it once every
//! chunk of the batch is sent: the writer's memory stays bounded whatever the
//! speed of the source, the network or the server.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tern_core::codec::Compressor;
use tern_core::wire::{ChunkRef, Handle, Msg};
use tern_core::{ChunkBatch, ChunkBatcher, ChunkId, ChunkParams};

use super::SentLog;
use crate::client::unexpected;
use crate::session::{Answers, Sender};
use crate::stop::Stop;
use crate::{Client, ClientError};

/// Chunk bytes in one `ImageAppend`.
pub(crate) const BATCH_BYTES: usize = crate::WRITE_BATCH_BYTES;
/// Most chunks in one `ImageAppend` (the server takes up to 4096).
const BATCH_CHUNKS: usize = 256;
/// Announced batches awaiting their answer before the announcer waits.
const WINDOW: usize = 6;
/// A source that gives no batch for this long has paused: the announced
/// batches are settled without waiting for the window to fill.
const SETTLE_WHEN_IDLE: std::time::Duration = std::time::Duration::from_millis(100);
/// Batch buffers in all: one being cut, one handed over, the window, the
/// batch being settled, two whose last chunks are being compressed and the
/// ones the reader thread of [`Pipeline::copy_from`] fills ahead.
const POOL: usize = WINDOW + 4 + READ_AHEAD;
/// Most bytes taken from the source or the caller at a time.
const READ_SIZE: usize = 1 << 20;
/// Buffers the reader thread of [`Pipeline::copy_from`] may fill ahead.
const READ_AHEAD: usize = 2;

/// The batch buffers: at most [`POOL`] are ever made.
struct Pool {
    home: std_mpsc::SyncSender<Vec<u8>>,
    free: std_mpsc::Receiver<Vec<u8>>,
    made: usize,
}

impl Pool {
    fn new() -> Self {
        let (home, free) = std_mpsc::sync_channel(POOL);
        Self {
            home,
            free,
            made: 0,
        }
    }

    fn put(&self, buf: Vec<u8>) {
        let _ = self.home.try_send(buf);
    }

    /// A free buffer; waits for one while all are in use downstream.
    fn get(&mut self) -> Option<Vec<u8>> {
        if let Ok(b) = self.free.try_recv() {
            return Some(b);
        }
        if self.made < POOL {
            self.made += 1;
            return Some(Vec::with_capacity(BATCH_BYTES + 2 * READ_SIZE));
        }
        self.free.recv().ok()
    }
}

/// A batch whose buffer returns to the pool when the last user drops it.
struct Pooled {
    batch: ChunkBatch,
    home: std_mpsc::SyncSender<Vec<u8>>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let _ = self.home.try_send(std::mem::take(&mut self.batch.data));
    }
}

/// A batch and its chunk ids, shared by the compression jobs.
struct Announced {
    pooled: Pooled,
    ids: Vec<ChunkId>,
}

struct Job {
    handle: Handle,
    batch: Arc<Announced>,
    index: usize,
}

/// The threads of a dedup write.
pub(super) struct Pipeline {
    batcher: ChunkBatcher,
    pool: Pool,
    batches: Option<std_mpsc::SyncSender<Pooled>>,
    announcer: Option<JoinHandle<Result<(), ClientError>>>,
    workers: Vec<JoinHandle<()>>,
    /// Set when the image is abandoned: the threads stop sending.
    abandoned: Arc<AtomicBool>,
}

impl Pipeline {
    /// Starts the announcer and one compression worker per core for the
    /// image under `handle`.
    pub(super) fn start(
        client: &Client,
        handle: Handle,
        chunking: ChunkParams,
        level: i32,
        sent: &SentLog,
        sender: &Sender,
        stop: &Arc<Stop>,
    ) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let abandoned = Arc::new(AtomicBool::new(false));
        let (jobs, job_rx) = std_mpsc::sync_channel::<Job>(threads * 8);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|_| {
                let job_rx = job_rx.clone();
                let sent = sent.clone();
                let abandoned = abandoned.clone();
                let queue = sender.clone();
                std::thread::spawn(move || compress_worker(level, job_rx, queue, sent, abandoned))
            })
            .collect();
        let (batches, batch_rx) = std_mpsc::sync_channel::<Pooled>(1);
        let announcer = {
            let client = client.clone();
            let abandoned = abandoned.clone();
            let stop = stop.clone();
            std::thread::spawn(move || announce(client, handle, batch_rx, jobs, abandoned, stop))
        };
        let mut pool = Pool::new();
        let first = pool.get().unwrap_or_default();
        Pipeline {
            batcher: ChunkBatcher::new(chunking, first),
            pool,
            batches: Some(batches),
            announcer: Some(announcer),
            workers,
            abandoned,
        }
    }

    /// Adds image bytes; full batches go to the announcer.
    pub(super) fn write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        for piece in data.chunks(READ_SIZE) {
            self.batcher.push(piece);
            self.ship_full_batches(BATCH_BYTES)?;
        }
        Ok(())
    }

    /// Writes everything `source` yields, reading it on a thread of its own
    /// straight into the batch buffers: reading overlaps with chunking and no
    /// byte is copied on the way.
    pub(super) fn copy_from(
        &mut self,
        mut source: impl Read + Send,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, ClientError> {
        // Room for the partial chunk carried over from the previous buffer.
        let room = self.batcher.params().max as usize;
        std::thread::scope(|s| {
            let (give, empty) = std_mpsc::sync_channel::<Vec<u8>>(READ_AHEAD);
            let (done, filled) = std_mpsc::sync_channel::<io::Result<Vec<u8>>>(READ_AHEAD);
            let reader = s.spawn(move || {
                read_ahead(&mut source, room, &empty, done);
                empty
            });
            let copied = self.adopt_all(&give, &filled, room, &mut progress);
            drop((give, filled));
            // Buffers the reader did not get to go back to the pool.
            if let Ok(empty) = reader.join() {
                for b in empty.try_iter() {
                    self.pool.put(b);
                }
            }
            copied
        })
    }

    /// Takes buffers the reader thread filled, keeps it supplied with empty
    /// ones, and ships each buffer's chunks as one batch.
    fn adopt_all(
        &mut self,
        give: &std_mpsc::SyncSender<Vec<u8>>,
        filled: &std_mpsc::Receiver<io::Result<Vec<u8>>>,
        room: usize,
        progress: &mut impl FnMut(u64),
    ) -> Result<u64, ClientError> {
        for _ in 0..READ_AHEAD {
            let _ = give.send(self.pool.get().unwrap_or_default());
        }
        let mut total = 0;
        loop {
            let buf = match filled.recv() {
                Ok(r) => r?,
                Err(_) => return Err(ClientError::Protocol("the reader thread stopped".into())),
            };
            let n = buf.len() - room;
            if n == 0 {
                self.pool.put(buf);
                return Ok(total);
            }
            let batch = self.batcher.adopt(buf, room);
            self.ship_batch(batch)?;
            // The rest of this buffer goes out with the next one, unless it
            // holds more chunks than one announcement takes.
            self.ship_full_batches(usize::MAX)?;
            progress(n as u64);
            total += n as u64;
            let _ = give.send(self.pool.get().unwrap_or_default());
        }
    }

    /// Hands the announcer every batch of [`BATCH_CHUNKS`] chunks or
    /// `max_bytes` bytes.
    fn ship_full_batches(&mut self, max_bytes: usize) -> Result<(), ClientError> {
        loop {
            self.batcher.cut(BATCH_CHUNKS);
            if self.batcher.chunked_len() < max_bytes && self.batcher.chunk_count() < BATCH_CHUNKS {
                return Ok(());
            }
            self.ship()?;
        }
    }

    fn ship(&mut self) -> Result<(), ClientError> {
        let fresh = self.pool.get().unwrap_or_default();
        let batch = self.batcher.take_batch(fresh);
        self.ship_batch(batch)
    }

    fn ship_batch(&mut self, batch: ChunkBatch) -> Result<(), ClientError> {
        let batch = Pooled {
            batch,
            home: self.pool.home.clone(),
        };
        if batch.batch.is_empty() {
            return Ok(());
        }
        let delivered = self.batches.as_ref().is_some_and(|b| b.send(batch).is_ok());
        if delivered {
            return Ok(());
        }
        // The announcer stopped: its error says why.
        Err(self
            .join_announcer()
            .err()
            .unwrap_or_else(|| ClientError::Protocol("the chunk announcer stopped".into())))
    }

    fn join_announcer(&mut self) -> Result<(), ClientError> {
        self.batches = None;
        match self.announcer.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(ClientError::Protocol("the chunk announcer panicked".into())),
        }
    }

    /// Ships the rest of the stream and waits until every needed chunk is sent.
    pub(super) fn finish(&mut self) -> Result<(), ClientError> {
        self.batcher.finish();
        self.drain()
    }

    /// Ships every chunk whose end is known and waits until every needed
    /// chunk is sent; the bytes after the last cut point (less than a
    /// chunk's maximum) are not sent: an image suspended here is resumed
    /// from a content-defined boundary, as if never stopped.
    pub(super) fn suspend(&mut self) -> Result<(), ClientError> {
        self.drain()
    }

    fn drain(&mut self) -> Result<(), ClientError> {
        loop {
            self.batcher.cut(BATCH_CHUNKS);
            if self.batcher.chunk_count() == 0 {
                break;
            }
            self.ship()?;
        }
        let announced = self.join_announcer();
        // The announcer owned the job queue: the workers end once it is empty.
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        announced
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::SeqCst);
        let _ = self.join_announcer();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Fills each empty buffer with up to [`BATCH_BYTES`] from `source` after
/// `room` bytes left for the chunker; a buffer with nothing after `room`
/// marks the end.
fn read_ahead(
    source: &mut impl Read,
    room: usize,
    empty: &std_mpsc::Receiver<Vec<u8>>,
    filled: std_mpsc::SyncSender<io::Result<Vec<u8>>>,
) {
    for mut buf in empty.iter() {
        // Whatever is in the room is overwritten; only its length matters.
        buf.resize(room, 0);
        let read = source
            .take(BATCH_BYTES as u64)
            .read_to_end(&mut buf)
            .map(|_| buf);
        let last = !matches!(&read, Ok(b) if b.len() > room);
        if filled.send(read).is_err() || last {
            return;
        }
    }
}

/// The announcer: hashes each batch, announces it and hands the chunks the
/// server asks for to the compression workers.
fn announce(
    client: Client,
    handle: Handle,
    batches: std_mpsc::Receiver<Pooled>,
    jobs: std_mpsc::SyncSender<Job>,
    abandoned: Arc<AtomicBool>,
    stop: Arc<Stop>,
) -> Result<(), ClientError> {
    let conn = client.conn();
    let mut inflight: VecDeque<(Arc<Announced>, Answers)> = VecDeque::new();
    loop {
        let pooled = match batches.recv_timeout(SETTLE_WHEN_IDLE) {
            Ok(p) => p,
            // The source paused: what is announced goes now, so that the
            // server holds it (and can checkpoint it) while the source waits.
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                while !inflight.is_empty() && !abandoned.load(Ordering::SeqCst) {
                    settle(handle, inflight.pop_front(), &jobs)?;
                }
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if abandoned.load(Ordering::SeqCst) {
            return Ok(());
        }
        let ids: Vec<ChunkId> = pooled.batch.chunks().map(ChunkId::of).collect();
        let entries = pooled
            .batch
            .chunks()
            .zip(&ids)
            .map(|(c, id)| ChunkRef {
                id: *id,
                len: c.len() as u32,
            })
            .collect();
        let answers = conn.request(Msg::ImageAppend { handle, entries }, Vec::new(), &stop)?;
        inflight.push_back((Arc::new(Announced { pooled, ids }), answers));
        while inflight.len() > WINDOW {
            settle(handle, inflight.pop_front(), &jobs)?;
        }
    }
    while !inflight.is_empty() && !abandoned.load(Ordering::SeqCst) {
        settle(handle, inflight.pop_front(), &jobs)?;
    }
    Ok(())
}

/// Waits for a batch's answer and queues the chunks the server lacks.
fn settle(
    handle: Handle,
    announced: Option<(Arc<Announced>, Answers)>,
    jobs: &std_mpsc::SyncSender<Job>,
) -> Result<(), ClientError> {
    let Some((batch, mut answers)) = announced else {
        return Ok(());
    };
    let missing = match answers.recv()?.env.msg {
        Msg::ImageNeed { missing, .. } => missing,
        other => return Err(unexpected(other)),
    };
    let mut asked = vec![false; batch.ids.len()];
    for i in missing {
        let i = i as usize;
        if asked.get(i) != Some(&false) {
            return Err(ClientError::Protocol(format!(
                "server asked for chunk {i} of a batch of {}, or twice",
                batch.ids.len()
            )));
        }
        asked[i] = true;
        let job = Job {
            handle,
            batch: batch.clone(),
            index: i,
        };
        jobs.send(job)
            .map_err(|_| ClientError::Protocol("compression workers stopped".into()))?;
    }
    Ok(())
}

fn compress_worker(
    level: i32,
    jobs: Arc<Mutex<std_mpsc::Receiver<Job>>>,
    queue: crate::session::Sender,
    sent: SentLog,
    abandoned: Arc<AtomicBool>,
) {
    let mut compressor = match Compressor::new(level) {
        Ok(c) => c,
        Err(e) => {
            let e = ClientError::Invalid(format!("zstd level {level}: {e}"));
            sent.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(e);
            return;
        }
    };
    loop {
        let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let Some(data) = job.batch.pooled.batch.chunk(job.index) else {
            continue;
        };
        if abandoned.load(Ordering::SeqCst) {
            continue;
        }
        let enc = compressor.encode(data);
        let len = enc.bytes.len() as u64;
        let msg = Msg::ChunkData {
            handle: job.handle,
            id: job.batch.ids[job.index],
            codec: enc.codec,
            raw_len: enc.raw_len,
            offset: 0,
        };
        sent.lock().unwrap_or_else(|e| e.into_inner()).0 += len;
        if let Err(e) = queue.send(msg, enc.bytes) {
            sent.lock()
                .unwrap_or_else(|e| e.into_inner())
                .1
                .get_or_insert(e);
        }
    }
}
