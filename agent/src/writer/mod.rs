//! Writing an image: [`ImageWriter`] over one of two sinks, the dedup
//! pipeline (`dedup`: chunk, hash, ask, compress, send) or passthrough
//! (`passthrough`: raw bytes, chunked by the server).

mod dedup;
mod passthrough;

/// Bytes the dedup writer chunks and announces at once (one `ImageAppend`);
/// each image being written holds up to 12 such buffers in its pipeline.
pub const WRITE_BATCH_BYTES: usize = 4 << 20;

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use tern_core::wire::{Feature, Handle, ImageInfo, Msg, WriteMode, WriteStats};
use tern_core::{ChunkParams, ContainerName, ImageName};

use crate::client::unexpected;
use crate::session::{ClientSession, DataErrors};
use crate::stop::Stop;
use crate::{Client, ClientError};
use dedup::Pipeline;
use passthrough::Passthrough;

/// What the senders report: chunk payload bytes sent, the first failure.
/// Chunk bytes sent, and the first error of a thread that sends them.
type SentLog = Arc<Mutex<(u64, Option<ClientError>)>>;

/// What a committed image cost.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The committed image.
    pub info: ImageInfo,
    /// The server's account: logical bytes, chunks, new chunks and stored bytes.
    pub stats: WriteStats,
    /// Chunk payload bytes this writer sent (compressed).
    pub sent_bytes: u64,
}

impl Committed {
    /// See [`dedup_ratio`].
    pub fn dedup_ratio(&self) -> f64 {
        dedup_ratio(self.stats.logical_bytes, self.stats.new_stored_bytes)
    }
}

/// Logical bytes per byte the store grew by; 0 when the store grew by
/// nothing (everything was there already, or nothing was written): one
/// convention for images and clients, in Rust and C.
pub fn dedup_ratio(logical_bytes: u64, new_bytes: u64) -> f64 {
    if new_bytes == 0 {
        0.0
    } else {
        logical_bytes as f64 / new_bytes as f64
    }
}

/// An image being written. Write bytes, then [`commit`](Self::commit); dropping
/// it without committing aborts the image. An image whose writer dies
/// instead stays incomplete on the server, resumable with
/// [`Client::resume_image`].
pub struct ImageWriter {
    client: Client,
    handle: Handle,
    /// Ends every wait of the image's calls and threads (cancel, abort, a
    /// call's time limit); once fired, the image is lost.
    stop: Arc<Stop>,
    /// Where written bytes go; `None` once committed or aborted.
    sink: Option<Sink>,
    sent: SentLog,
    /// The server's refusals of this image's data frames.
    errors: DataErrors,
    finished: bool,
    /// The DMA's properties of the image.
    props: Vec<u8>,
    /// The container's chunking and zstd level: a dedup sink starts
    /// afresh with them after an extent.
    chunking: ChunkParams,
    zstd_level: i32,
    /// Nothing was written since the last extent: the next extent need
    /// not end the sink's stream (consecutive extents cost one round trip
    /// each, no thread restarts).
    ended: bool,
}

/// What an extent write ([`ImageWriter::write_from`]) cost the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtentWritten {
    /// Bytes taken as whole chunks of the source: no data moved.
    pub referenced_bytes: u64,
    /// Bytes of the source's chunks the extent cuts, sliced on the server
    /// (no byte of them crossed the network either).
    pub sliced_bytes: u64,
}

/// The two ways bytes reach the server.
enum Sink {
    /// Chunked, hashed and compressed here; only missing chunks are sent.
    Dedup(Pipeline),
    /// Sent raw; the server chunks them.
    Passthrough(Passthrough),
}

impl ImageWriter {
    pub(crate) fn create(
        client: Client,
        container: ContainerName,
        name: ImageName,
        props: Vec<u8>,
        mode: WriteMode,
    ) -> Result<Self, ClientError> {
        let create = Msg::ImageCreate {
            container,
            name,
            props,
            mode,
        };
        Ok(Self::open(client, create, mode)?.0)
    }

    /// Reopens an incomplete image; returns it and the offset to continue from.
    pub(crate) fn resume(
        client: Client,
        container: ContainerName,
        name: ImageName,
        mode: WriteMode,
    ) -> Result<(Self, u64), ClientError> {
        let resume = Msg::ImageResume {
            container,
            name,
            mode,
        };
        Self::open(client, resume, mode)
    }

    /// Sends `request` (a create or a resume) and sets up the sink for the
    /// image it opens.
    fn open(client: Client, request: Msg, mode: WriteMode) -> Result<(Self, u64), ClientError> {
        let given_props = match &request {
            Msg::ImageCreate { props, .. } => props.clone(),
            _ => Vec::new(),
        };
        let stop = client.stop();
        let answer = {
            let _limit = client.limit(&stop);
            client.conn().call(request, Vec::new(), &stop)?
        };
        let (handle, chunking, level, offset, props) = match answer.env.msg {
            Msg::ImageCreated {
                handle,
                chunking,
                zstd_level,
            } => (handle, chunking, zstd_level, 0, given_props),
            Msg::ImageResumed {
                handle,
                chunking,
                zstd_level,
                offset,
                props,
            } => (handle, chunking, zstd_level, offset, props),
            other => return Err(unexpected(other)),
        };
        chunking
            .validate()
            .map_err(|e| ClientError::Protocol(format!("server sent bad chunk parameters: {e}")))?;
        let sent: SentLog = Arc::new(Mutex::new((0, None)));
        let errors = client.conn().data_errors();
        let sender = client.conn().sender(&errors, &stop);
        let sink = match mode {
            WriteMode::Dedup => Sink::Dedup(Pipeline::start(
                &client, handle, chunking, level, &sent, &sender, &stop,
            )),
            WriteMode::Passthrough => {
                Sink::Passthrough(Passthrough::new(sender, handle, sent.clone()))
            }
        };
        let writer = Self {
            client,
            handle,
            stop,
            sink: Some(sink),
            sent,
            errors,
            finished: false,
            props,
            chunking,
            zstd_level: level,
            ended: false,
        };
        Ok((writer, offset))
    }

    /// The DMA's properties of the image (for a resumed one, as given
    /// when it was begun).
    pub fn props(&self) -> &[u8] {
        &self.props
    }

    fn conn(&self) -> &ClientSession {
        self.client.conn()
    }

    fn sink(&mut self) -> Result<&mut Sink, ClientError> {
        self.sink
            .as_mut()
            .ok_or_else(|| ClientError::Invalid("the image is already committed or aborted".into()))
    }

    /// Cancels the image's calls from any thread: the call in progress and
    /// every later one fail with [`ClientError::Cancelled`]; the image is lost.
    pub fn canceller(&self) -> Arc<Stop> {
        self.stop.clone()
    }

    /// Chunk bytes sent so far (compressed in dedup mode, raw in passthrough).
    pub fn sent_bytes(&self) -> u64 {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Adds image bytes.
    pub fn write_bytes(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.stop.check()?;
        let _limit = self.client.limit(&self.stop);
        self.ended = false;
        let written = match self.sink()? {
            Sink::Dedup(p) => p.write(data),
            Sink::Passthrough(r) => r.write(data),
        };
        written.map_err(|e| self.explained(e))
    }

    /// `e`, or the server's refusal of one of this image's chunks that
    /// caused it (a full store refuses a chunk; the next request on the
    /// image then finds no such image: the refusal is the error to report).
    fn explained(&mut self, e: ClientError) -> ClientError {
        self.errors.take().unwrap_or(e)
    }

    /// Writes everything `source` yields, reading it on a thread of its own
    /// straight into the writer's batch buffers: reading overlaps with
    /// chunking and no byte is copied on the way. Calls `progress` with the
    /// bytes of each piece read; returns the total. A failed read is
    /// [`ClientError::Io`].
    pub fn copy_from(
        &mut self,
        source: impl Read + Send,
        progress: impl FnMut(u64),
    ) -> Result<u64, ClientError> {
        self.stop.check()?;
        let _limit = self.client.limit(&self.stop);
        self.ended = false;
        let copied = match self.sink()? {
            Sink::Dedup(p) => p.copy_from(source, progress),
            Sink::Passthrough(r) => r.copy_from(source, progress),
        };
        copied.map_err(|e| self.explained(e))
    }

    /// Appends `len` bytes of committed image `image` of `container` (in
    /// this image's storage group), from its byte `offset`: the server
    /// takes the source's chunks as they are, so no data crosses the
    /// network (a synthetic full). Interleaves freely with
    /// [`write_bytes`](Self::write_bytes). A refusal (no such committed
    /// image, another storage group, a source shorter than
    /// `offset + len`) leaves the image as it was. Needs protocol version 7
    /// ([`ClientError::ServerTooOld`] before anything is done otherwise).
    pub fn write_from(
        &mut self,
        container: &str,
        image: &str,
        offset: u64,
        len: u64,
    ) -> Result<ExtentWritten, ClientError> {
        let container = ContainerName::new(container)?;
        let image = ImageName::new(image)?;
        self.stop.check()?;
        self.check_feature(Feature::Extents, "write_from")?;
        let _limit = self.client.limit(&self.stop);
        if !self.ended {
            self.end_stream()?;
        }
        let extent = Msg::ImageAppendExtent {
            handle: self.handle,
            container,
            name: image,
            offset,
            len,
        };
        match self.ask(extent)? {
            Msg::ExtentAppended {
                referenced_bytes,
                sliced_bytes,
                ..
            } => Ok(ExtentWritten {
                referenced_bytes,
                sliced_bytes,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Ends the stream of bytes written so far, before an extent: each is
    /// announced and every chunk asked for sent, and the bytes after the
    /// extent start a stream (a dedup pipeline) of their own.
    fn end_stream(&mut self) -> Result<(), ClientError> {
        let ended = match self.sink()? {
            Sink::Dedup(p) => p.finish(),
            Sink::Passthrough(r) => r.finish(),
        };
        ended.map_err(|e| self.explained(e))?;
        let worker_error = self.sent.lock().unwrap_or_else(|e| e.into_inner()).1.take();
        if let Some(e) = worker_error {
            return Err(self.explained(e));
        }
        if let Some(Sink::Dedup(p)) = self.sink.as_mut() {
            let sender = self.client.conn().sender(&self.errors, &self.stop);
            *p = Pipeline::start(
                &self.client,
                self.handle,
                self.chunking,
                self.zstd_level,
                &self.sent,
                &sender,
                &self.stop,
            );
        }
        self.ended = true;
        Ok(())
    }

    /// Finishes the image and waits until the server has committed it.
    pub fn commit(mut self) -> Result<Committed, ClientError> {
        self.stop.check()?;
        let _limit = self.client.limit(&self.stop);
        let sent_bytes = self.drain(true)?;
        let close = Msg::ImageClose {
            handle: self.handle,
        };
        match self.ask(close)? {
            Msg::ImageCommitted { info, stats } => Ok(Committed {
                info,
                stats,
                sent_bytes,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// `Ok` if the server's protocol has `feature`, else why `what` cannot
    /// be done, before anything is done.
    pub fn check_feature(&self, feature: Feature, what: &str) -> Result<(), ClientError> {
        Ok(feature.check(self.conn().version(), what)?)
    }

    /// Stops writing without committing or dropping the image: the server
    /// makes what it received durable and keeps the image incomplete, to be
    /// continued by [`Client::resume_image`] (of this client or another of
    /// the same user) from the offset returned: at most the bytes written,
    /// a chunk boundary. Needs protocol version 6
    /// ([`ClientError::ServerTooOld`] before anything is done otherwise).
    pub fn suspend(mut self) -> Result<u64, ClientError> {
        self.stop.check()?;
        self.check_feature(Feature::Suspend, "ImageSuspend")?;
        let _limit = self.client.limit(&self.stop);
        self.drain(false)?;
        let suspend = Msg::ImageSuspend {
            handle: self.handle,
        };
        match self.ask(suspend)? {
            Msg::ImageSuspended { offset } => Ok(offset),
            other => Err(unexpected(other)),
        }
    }

    /// Ends the sink: sends the rest of the image (`whole`), or up to its
    /// last known chunk boundary (a dedup sink keeps its uncut tail), and
    /// waits until every chunk the server asked for is sent. Returns the
    /// chunk bytes sent. Either way the writer is done: no abort on drop.
    fn drain(&mut self, whole: bool) -> Result<u64, ClientError> {
        self.finished = true;
        let drained = match self.sink.take() {
            Some(Sink::Dedup(mut p)) if whole => p.finish(),
            Some(Sink::Dedup(mut p)) => p.suspend(),
            Some(Sink::Passthrough(mut r)) => r.finish(),
            None => Ok(()),
        };
        // A cancel or time limit says so, whatever it broke on the way.
        self.stop.check()?;
        drained.map_err(|e| self.explained(e))?;
        let (sent_bytes, worker_error) = {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            (sent.0, sent.1.take())
        };
        match worker_error {
            Some(e) => Err(self.explained(e)),
            None => Ok(sent_bytes),
        }
    }

    /// The server's answer to `msg` about this image; a failure explained
    /// by the refusal of one of its chunks if there was one.
    fn ask(&mut self, msg: Msg) -> Result<Msg, ClientError> {
        let answer = self.conn().call(msg, Vec::new(), &self.stop);
        Ok(answer.map_err(|e| self.explained(e))?.env.msg)
    }

    /// Abandons the image: nothing of it becomes visible, and nothing of it
    /// stays to resume. Returns at once, outage or not: the server drops
    /// the image when the notice reaches it (if the session ends first, the
    /// image stays incomplete until it expires or is removed).
    pub fn abort(self) {
        // Drop does it all.
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The pipeline's threads stop (their waits end) before the server
        // hears of the abort, which waits for nothing.
        self.stop.cancel();
        self.sink = None;
        self.conn().send_later(Msg::ImageAbort {
            handle: self.handle,
        });
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
