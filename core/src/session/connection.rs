//! One connection of a session: the read side (frames in, acknowledgements)
//! and the write side (new, resent and control frames out), until the
//! connection fails or the session closes.

use super::*;

impl Session {
    /// Carries the session over one connection until it fails or the session
    /// closes. `initial` is a frame already read from it; `peer_received`, when
    /// the peer said how far it got (a rejoin), makes the frames after that be
    /// sent again. Returns how the connection ended.
    pub async fn run_connection<S>(
        self: &Arc<Self>,
        stream: S,
        initial: Option<Frame>,
        peer_received: Option<u64>,
    ) -> ConnectionEnd
    where
        S: AsyncRead + AsyncWrite + Send,
    {
        self.live.fetch_add(1, Ordering::SeqCst);
        self.connections_changed.notify_waiters();
        if let Some(r) = peer_received {
            self.on_ack(r);
            self.resend_after(r);
        }
        let (rd, mut wr) = tokio::io::split(stream);
        let mut rd = Counted {
            inner: rd,
            count: &self.bytes_received,
            heard: &self.heard,
        };
        let mut inflight: VecDeque<Arc<Outgoing>> = VecDeque::new();
        let why = {
            let reader = async {
                if let Some(f) = initial {
                    self.on_frame(f).await?;
                }
                loop {
                    let next = Frame::read_checked(&mut rd, || self.frame_limits());
                    let f = tokio::time::timeout(DEAD_AFTER, next)
                        .await
                        .map_err(|_| SessionError::Silent)?
                        .map_err(frame_error)?;
                    let _delivering = Delivering::start(&self.delivering);
                    self.on_frame(f).await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), SessionError>(())
            };
            let writer = self.write_loop(&mut wr, &mut inflight);
            let failed = tokio::select! {
                r = reader => r.err(),
                r = writer => r.err(),
            };
            // A broken protocol (an oversized or undecodable frame) is not an
            // outage: another connection would fail the same way, so the
            // session ends now instead of retrying for the grace period.
            if let Some(SessionError::Protocol(why)) = &failed {
                self.close(&format!("protocol error: {why}"));
            }
            ConnectionEnd {
                silent: matches!(failed, Some(SessionError::Silent)),
                why: failed.map(|e| e.to_string()).unwrap_or_default(),
            }
        };
        // Bounded: on a black-holed path the close would wait forever for
        // room in a send buffer nobody drains.
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, wr.shutdown()).await;
        // What this connection carried and nobody acknowledged goes out again elsewhere.
        self.requeue(inflight.into());
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.connections_changed.notify_waiters();
        why
    }

    async fn on_frame(&self, f: Frame) -> Result<(), SessionError> {
        self.on_ack(f.env.ack);
        if f.env.seq == 0 {
            return match f.env.msg {
                Msg::Ack => Ok(()),
                other => Err(SessionError::Protocol(format!(
                    "unexpected control frame {other:?}"
                ))),
            };
        }
        self.receive(f).await
    }

    async fn write_loop<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        inflight: &mut VecDeque<Arc<Outgoing>>,
    ) -> Result<(), SessionError> {
        let mut tick = tokio::time::interval(ACK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ack_sent = 0;
        let mut last_write = tokio::time::Instant::now();
        loop {
            tokio::select! {
                f = self.next_outgoing() => {
                    let Some(f) = f else {
                        return Err(SessionError::Closed(self.closed().unwrap_or_default()));
                    };
                    let (acked, received) = {
                        let st = lock(&self.state);
                        (st.peer_acked, st.received)
                    };
                    if f.seq <= acked {
                        continue;
                    }
                    f.written.store(true, Ordering::SeqCst);
                    forget_acked(inflight, acked);
                    inflight.push_back(f.clone());
                    let env = Envelope { seq: f.seq, ack: received, req: f.req, msg: f.msg.clone() };
                    let n = match &f.payload {
                        Payload::Memory(p) => write_frame(wr, env, p).await?,
                        Payload::Spilled { offset, len } => {
                            let p = match self.read_spilled(*offset, *len) {
                                Ok(p) => p,
                                // Acknowledged meanwhile, and the file started over.
                                Err(_) if f.seq <= lock(&self.state).peer_acked => continue,
                                Err(e) => {
                                    let why = format!("reading the session spill file: {e}");
                                    self.close(&why);
                                    return Err(SessionError::Closed(why));
                                }
                            };
                            write_frame(wr, env, &p).await?
                        }
                    };
                    self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    self.flushed_to.fetch_max(f.seq, Ordering::SeqCst);
                    ack_sent = received;
                    last_write = tokio::time::Instant::now();
                }
                _ = tick.tick() => {
                    forget_acked(inflight, lock(&self.state).peer_acked);
                    let received = self.received();
                    if received > ack_sent || last_write.elapsed() >= HEARTBEAT {
                        last_write = tokio::time::Instant::now();
                        let env = Envelope { seq: 0, ack: received, req: 0, msg: Msg::Ack };
                        let n = write_frame(wr, env, &[]).await?;
                        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                        ack_sent = received;
                    }
                }
            }
        }
    }
}

/// Drops the acknowledged front of a connection's in-flight frames: the list
/// only needs what may still be unacknowledged, and holding acked frames would
/// keep payloads the cache has already let go of. (A resent frame may sit
/// behind a newer one; acks are cumulative, so it goes when that one does.)
fn forget_acked(inflight: &mut VecDeque<Arc<Outgoing>>, acked: u64) {
    while inflight.front().is_some_and(|o| o.seq <= acked) {
        inflight.pop_front();
    }
}

/// Counts a reader waiting to hand a frame on, until dropped (the reader
/// may be dropped mid-wait when its connection ends).
struct Delivering<'a>(&'a AtomicUsize);

impl<'a> Delivering<'a> {
    fn start(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A reader that adds what it reads to a counter and notes when bytes came.
struct Counted<'a, R> {
    inner: R,
    count: &'a AtomicU64,
    heard: &'a AtomicU64,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.count.fetch_add(n as u64, Ordering::Relaxed);
            self.heard.store(clock_ms(), Ordering::Relaxed);
        }
        r
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(
    wr: &mut W,
    env: Envelope,
    payload: &[u8],
) -> Result<usize, SessionError> {
    let frame = Frame::new(env, Vec::new());
    let head = frame
        .encode_head_with_payload_len(payload.len())
        .map_err(frame_error)?;
    wr.write_all(&head)
        .await
        .map_err(|e| SessionError::Closed(e.to_string()))?;
    if !payload.is_empty() {
        wr.write_all(payload)
            .await
            .map_err(|e| SessionError::Closed(e.to_string()))?;
    }
    wr.flush()
        .await
        .map_err(|e| SessionError::Closed(e.to_string()))?;
    Ok(head.len() + payload.len())
}

fn frame_error(e: FrameError) -> SessionError {
    if e.is_disconnect() {
        SessionError::Closed("the peer closed the connection".into())
    } else {
        match e {
            FrameError::Io(io) => SessionError::Closed(io.to_string()),
            other => SessionError::Protocol(other.to_string()),
        }
    }
}

/// Writes a control frame (sequence 0) directly to a connection, before it joins a session.
pub async fn write_control<W: AsyncWrite + Unpin>(
    wr: &mut W,
    msg: Msg,
) -> Result<(), SessionError> {
    write_frame(
        wr,
        Envelope {
            seq: 0,
            ack: 0,
            req: 0,
            msg,
        },
        &[],
    )
    .await
    .map(|_| ())
}
