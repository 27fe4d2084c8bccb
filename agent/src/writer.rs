//! Writing an image: the dedup pipeline.
//!
//! The caller's thread chunks and hashes; every batch of chunk ids goes to the
//! server at once (`ImageAppend`) and several batches are in flight, so the
//! answers (`ImageNeed`) arrive while the next batches are hashed. The chunks
//! the server lacks go to compression workers, which send them directly. Only
//! those chunks cross the network, compressed.

use std::collections::VecDeque;
use std::io;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tern_core::codec::Compressor;
use tern_core::wire::{ChunkRef, Handle, ImageInfo, Msg, WriteMode, WriteStats};
use tern_core::{ChunkId, ContainerName, ImageName, StreamChunker};

use crate::client::unexpected;
use crate::conn::{Answers, Conn};
use crate::{Client, ClientError};

/// Chunks announced in one `ImageAppend`.
const BATCH_CHUNKS: usize = 256;
/// `ImageAppend` requests awaiting an answer before the writer waits.
const WINDOW: usize = 4;
/// Largest raw write in passthrough mode.
const RAW_FRAME: usize = 1 << 20;

/// What a committed image cost.
#[derive(Debug, Clone)]
pub struct Committed {
    pub info: ImageInfo,
    /// The server's account: logical bytes, chunks, new chunks and stored bytes.
    pub stats: WriteStats,
    /// Chunk payload bytes this writer sent (compressed).
    pub sent_bytes: u64,
}

impl Committed {
    /// Logical bytes per byte the store grew by.
    pub fn dedup_ratio(&self) -> f64 {
        self.stats.logical_bytes as f64 / self.stats.new_stored_bytes.max(1) as f64
    }
}

struct Batch {
    chunks: Vec<(ChunkId, Vec<u8>)>,
}

struct InFlight {
    batch: Batch,
    answers: Answers,
}

/// Counts jobs handed to the workers that are not done yet.
#[derive(Default)]
struct Outstanding {
    count: Mutex<usize>,
    done: Condvar,
}

struct Job {
    handle: Handle,
    id: ChunkId,
    data: Vec<u8>,
}

/// An image being written. Write bytes, then [`commit`](Self::commit); dropping
/// it without committing aborts the image.
pub struct ImageWriter {
    client: Client,
    handle: Handle,
    mode: WriteMode,
    chunker: StreamChunker,
    batch: Batch,
    inflight: VecDeque<InFlight>,
    jobs: Option<std_mpsc::SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    outstanding: Arc<Outstanding>,
    sent: Arc<Mutex<(u64, Option<String>)>>,
    raw: Vec<u8>,
    finished: bool,
}

impl ImageWriter {
    pub(crate) fn create(
        client: Client,
        container: ContainerName,
        name: ImageName,
        props: Vec<u8>,
        mode: WriteMode,
    ) -> Result<Self, ClientError> {
        let answer = client.conn().call(
            Msg::ImageCreate {
                container,
                name,
                props,
                mode,
            },
            Vec::new(),
        )?;
        let (handle, chunking, level) = match answer.env.msg {
            Msg::ImageCreated {
                handle,
                chunking,
                zstd_level,
            } => (handle, chunking, zstd_level),
            other => return Err(unexpected(other)),
        };
        chunking
            .validate()
            .map_err(|e| ClientError::Protocol(format!("server sent bad chunk parameters: {e}")))?;
        let outstanding = Arc::new(Outstanding::default());
        let sent = Arc::new(Mutex::new((0, None)));
        let (jobs, workers) = if mode == WriteMode::Dedup {
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2);
            let (tx, rx) = std_mpsc::sync_channel::<Job>(threads * 8);
            let rx = Arc::new(Mutex::new(rx));
            let workers = (0..threads)
                .map(|_| {
                    let rx = rx.clone();
                    let outstanding = outstanding.clone();
                    let sent = sent.clone();
                    // Conn is shared by reference across scoped lifetimes; the
                    // workers only need the send queue, cloned below.
                    let queue = client.conn().sender();
                    std::thread::spawn(move || compress_worker(level, rx, queue, outstanding, sent))
                })
                .collect();
            (Some(tx), workers)
        } else {
            (None, Vec::new())
        };
        Ok(Self {
            client,
            handle,
            mode,
            chunker: StreamChunker::new(chunking),
            batch: Batch {
                chunks: Vec::with_capacity(BATCH_CHUNKS),
            },
            inflight: VecDeque::new(),
            jobs,
            workers,
            outstanding,
            sent,
            raw: Vec::new(),
            finished: false,
        })
    }

    fn conn(&self) -> &Conn {
        self.client.conn()
    }

    /// Adds image bytes.
    pub fn write_bytes(&mut self, data: &[u8]) -> Result<(), ClientError> {
        if self.mode == WriteMode::Passthrough {
            self.raw.extend_from_slice(data);
            while self.raw.len() >= RAW_FRAME {
                let rest = self.raw.split_off(RAW_FRAME);
                let frame = std::mem::replace(&mut self.raw, rest);
                self.send_raw(frame)?;
            }
            return Ok(());
        }
        self.chunker.push(data);
        self.drain_chunks()
    }

    fn send_raw(&mut self, frame: Vec<u8>) -> Result<(), ClientError> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).0 += frame.len() as u64;
        self.conn().send(
            Msg::ImageWriteRaw {
                handle: self.handle,
            },
            frame,
        )
    }

    fn drain_chunks(&mut self) -> Result<(), ClientError> {
        while let Some(chunk) = self.chunker.next_chunk() {
            let id = ChunkId::of(chunk);
            self.batch.chunks.push((id, chunk.to_vec()));
            if self.batch.chunks.len() >= BATCH_CHUNKS {
                self.flush_batch()?;
            }
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), ClientError> {
        if self.batch.chunks.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(
            &mut self.batch,
            Batch {
                chunks: Vec::with_capacity(BATCH_CHUNKS),
            },
        );
        let entries = batch
            .chunks
            .iter()
            .map(|(id, data)| ChunkRef {
                id: *id,
                len: data.len() as u32,
            })
            .collect();
        let answers = self.conn().request(
            Msg::ImageAppend {
                handle: self.handle,
                entries,
            },
            Vec::new(),
        )?;
        self.inflight.push_back(InFlight { batch, answers });
        while self.inflight.len() > WINDOW {
            self.settle_oldest()?;
        }
        Ok(())
    }

    /// Waits for the oldest batch's answer and hands the missing chunks to the workers.
    fn settle_oldest(&mut self) -> Result<(), ClientError> {
        let Some(mut f) = self.inflight.pop_front() else {
            return Ok(());
        };
        let missing = match f.answers.recv()?.env.msg {
            Msg::ImageNeed { missing, .. } => missing,
            other => return Err(unexpected(other)),
        };
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("no workers".into()))?;
        let mut chunks: Vec<Option<(ChunkId, Vec<u8>)>> =
            f.batch.chunks.into_iter().map(Some).collect();
        for i in missing {
            let Some((id, data)) = chunks.get_mut(i as usize).and_then(Option::take) else {
                return Err(ClientError::Protocol(format!(
                    "server asked for chunk {i} of a batch it was not sent"
                )));
            };
            *self
                .outstanding
                .count
                .lock()
                .unwrap_or_else(|e| e.into_inner()) += 1;
            jobs.send(Job {
                handle: self.handle,
                id,
                data,
            })
            .map_err(|_| ClientError::Protocol("compression workers stopped".into()))?;
        }
        Ok(())
    }

    /// Finishes the image and waits until the server has committed it.
    pub fn commit(mut self) -> Result<Committed, ClientError> {
        self.finished = true;
        if self.mode == WriteMode::Passthrough {
            let rest = std::mem::take(&mut self.raw);
            if !rest.is_empty() {
                self.send_raw(rest)?;
            }
        } else {
            self.chunker.finish();
            self.drain_chunks()?;
            self.flush_batch()?;
            while !self.inflight.is_empty() {
                self.settle_oldest()?;
            }
            let mut n = self
                .outstanding
                .count
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            while *n > 0 {
                n = self
                    .outstanding
                    .done
                    .wait(n)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        let (sent_bytes, worker_error) =
            self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(e) = worker_error {
            return Err(ClientError::Connect {
                server: self.conn().server().to_string(),
                reason: e,
            });
        }
        let answer = self.conn().call(
            Msg::ImageClose {
                handle: self.handle,
            },
            Vec::new(),
        );
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                // The server's reason for failing a chunk is more useful than "no such handle".
                if let Some(first) = self.conn().take_unsolicited().into_iter().next() {
                    return Err(ClientError::Server {
                        kind: e.kind().unwrap_or(tern_core::wire::ErrorKind::Internal),
                        message: first,
                    });
                }
                return Err(e);
            }
        };
        match answer.env.msg {
            Msg::ImageCommitted { info, stats } => Ok(Committed {
                info,
                stats,
                sent_bytes,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Abandons the image: nothing of it becomes visible.
    pub fn abort(mut self) -> Result<(), ClientError> {
        self.finished = true;
        self.inflight.clear();
        match self
            .conn()
            .call(
                Msg::ImageAbort {
                    handle: self.handle,
                },
                Vec::new(),
            )?
            .env
            .msg
        {
            Msg::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if !self.finished {
            self.inflight.clear();
            let _ = self.conn().send(
                Msg::ImageAbort {
                    handle: self.handle,
                },
                Vec::new(),
            );
        }
    }
}

impl io::Write for ImageWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn compress_worker(
    level: i32,
    rx: Arc<Mutex<std_mpsc::Receiver<Job>>>,
    queue: crate::conn::Sender,
    outstanding: Arc<Outstanding>,
    sent: Arc<Mutex<(u64, Option<String>)>>,
) {
    let mut compressor = match Compressor::new(level) {
        Ok(c) => Some(c),
        Err(e) => {
            sent.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(format!("zstd: {e}"));
            None
        }
    };
    loop {
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        if let Some(c) = compressor.as_mut() {
            let enc = c.encode(&job.data);
            let len = enc.bytes.len() as u64;
            let msg = Msg::ChunkData {
                handle: job.handle,
                id: job.id,
                codec: enc.codec,
                raw_len: enc.raw_len,
                offset: 0,
            };
            let mut s = sent.lock().unwrap_or_else(|e| e.into_inner());
            s.0 += len;
            drop(s);
            if let Err(e) = queue.send(msg, enc.bytes) {
                sent.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .1
                    .get_or_insert(e.to_string());
            }
        }
        let mut n = outstanding.count.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            outstanding.done.notify_all();
        }
    }
}
