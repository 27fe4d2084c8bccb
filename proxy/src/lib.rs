//! A TCP proxy that misbehaves on request: it cuts connections (all, or one
//! of N, now or every T seconds), stalls the link, caps bandwidth per
//! connection and for the whole link, and adds latency. Tests put it between a
//! client and `ternd`; `tern-faultproxy` runs it from the command line.
//!
//! Plain threads: every connection has one pump per direction, each a reader
//! and a writer joined by a bounded queue, so a stalled or slow writer pushes
//! back on the sender through TCP as a real slow link does.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the proxy does to traffic; change it at any time through [`FaultProxy::set`].
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// One-way delay added to every piece of data.
    pub latency: Duration,
    /// Bytes per second per connection and direction (None: unlimited).
    pub per_connection_rate: Option<u64>,
    /// Bytes per second for all connections together, per direction (None: unlimited).
    pub link_rate: Option<u64>,
    /// Cut every connection this often (None: never).
    pub cut_every: Option<Duration>,
    /// Close new connections at once, as an unreachable server would.
    pub refuse_new: bool,
    /// Cut this many of the next connections the moment the server first
    /// answers, before any of the answer passes: a link lost in the middle of
    /// a handshake. Counts down as connections are cut.
    pub cut_at_first_answer: u32,
    /// When a client's side of a connection closes, leave the server's side
    /// open and silent (nothing more is read from or written to it), as a
    /// NAT that keeps the flow of a client that lost power does.
    pub keep_server_side: bool,
}

/// A running proxy. Dropping it stops accepting and cuts every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    target: SocketAddr,
    faults: Mutex<Faults>,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
    stalled: Mutex<bool>,
    unstalled: Condvar,
    link: Mutex<Bucket>,
    stopping: AtomicBool,
    cuts: AtomicU64,
    accepted: AtomicU64,
    /// Bytes delivered to the server, over every connection.
    upstream_bytes: AtomicU64,
    /// Server sides kept open after their client left (`keep_server_side`).
    kept: Mutex<Vec<TcpStream>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

const PIECE: usize = 16 * 1024;

impl FaultProxy {
    /// Listens on `listen` (port 0 picks one) and forwards to `target`.
    pub fn start(listen: &str, target: SocketAddr, faults: Faults) -> io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            faults: Mutex::new(faults),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stalled: Mutex::new(false),
            unstalled: Condvar::new(),
            link: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
            stopping: AtomicBool::new(false),
            cuts: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            upstream_bytes: AtomicU64::new(0),
            kept: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        thread::spawn(move || accept_loop(listener, s));
        let s = shared.clone();
        thread::spawn(move || cutter(s));
        Ok(Self { addr, shared })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Cuts every open connection now.
    pub fn cut_all(&self) {
        self.shared.cut_all();
    }

    /// Cuts one open connection (the oldest); false if there was none.
    pub fn cut_one(&self) -> bool {
        let conns = lock(&self.shared.conns);
        let Some((&id, stream)) = conns.iter().min_by_key(|(id, _)| **id) else {
            return false;
        };
        let _ = stream.shutdown(Shutdown::Both);
        drop(conns);
        lock(&self.shared.conns).remove(&id);
        self.shared.cuts.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Stops all traffic (connections stay open) until [`resume`](Self::resume).
    pub fn stall(&self) {
        *lock(&self.shared.stalled) = true;
    }

    pub fn resume(&self) {
        *lock(&self.shared.stalled) = false;
        self.shared.unstalled.notify_all();
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Bytes delivered to the server so far, over every connection (what a
    /// client sent, TLS and all).
    pub fn bytes_to_server(&self) -> u64 {
        self.shared.upstream_bytes.load(Ordering::Relaxed)
    }

    /// Server sides kept open after their client left (`keep_server_side`).
    pub fn kept_connections(&self) -> usize {
        lock(&self.shared.kept).len()
    }

    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.resume();
        self.shared.cut_all();
        for s in lock(&self.shared.kept).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so it sees `stopping`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn cut_all(&self) {
        let mut conns = lock(&self.conns);
        for (_, s) in conns.drain() {
            let _ = s.shutdown(Shutdown::Both);
            self.cuts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Keeps `server` (the server's side of a connection whose client
    /// left) open and untouched, if the faults say so; true if it did.
    fn keep(&self, server: &TcpStream) -> bool {
        if !lock(&self.faults).keep_server_side {
            return false;
        }
        if let Ok(s) = server.try_clone() {
            lock(&self.kept).push(s);
        }
        true
    }

    fn wait_while_stalled(&self) {
        let mut stalled = lock(&self.stalled);
        while *stalled && !self.stopping.load(Ordering::Relaxed) {
            stalled = self
                .unstalled
                .wait(stalled)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until the link may carry `n` more bytes.
    fn take_link(&self, n: usize) {
        let Some(rate) = lock(&self.faults).link_rate else {
            return;
        };
        take(&self.link, rate, n);
    }
}

/// Token bucket: waits until `n` bytes fit under `rate` bytes per second.
fn take(bucket: &Mutex<Bucket>, rate: u64, n: usize) {
    let wait = {
        let mut b = lock(bucket);
        let now = Instant::now();
        let burst = (rate as f64 / 20.0).max(PIECE as f64);
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate as f64).min(burst);
        b.last = now;
        b.tokens -= n as f64;
        if b.tokens < 0.0 {
            Duration::from_secs_f64(-b.tokens / rate as f64)
        } else {
            Duration::ZERO
        }
    };
    if !wait.is_zero() {
        thread::sleep(wait);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if lock(&shared.faults).refuse_new {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(shared.target) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if let Ok(c) = client.try_clone() {
            lock(&shared.conns).insert(id, c);
        }
        for (from, to, answers) in [(&client, &server, false), (&server, &client, true)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let s = shared.clone();
            let cut_first = answers && {
                let mut f = lock(&shared.faults);
                let cut = f.cut_at_first_answer > 0;
                f.cut_at_first_answer = f.cut_at_first_answer.saturating_sub(1);
                cut
            };
            thread::spawn(move || pump(from, to, s, id, cut_first, !answers));
        }
    }
}

/// Moves one direction of one connection, applying the faults; `cut_first`
/// cuts the connection instead of passing the first data read.
fn pump(
    mut from: TcpStream,
    to: TcpStream,
    shared: Arc<Shared>,
    id: u64,
    cut_first: bool,
    upstream: bool,
) {
    // The pieces in flight: 8, plus what the link holds over its latency
    // (rate x delay), so that a long fat pipe is not capped by the proxy.
    let in_flight = {
        let f = lock(&shared.faults);
        let rate = f.per_connection_rate.or(f.link_rate).unwrap_or(1 << 30);
        let bytes = rate as f64 * f.latency.as_secs_f64();
        8 + ((bytes / PIECE as f64).ceil() as usize).min(4096)
    };
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(in_flight);
    let s = shared.clone();
    let peer = to.try_clone().ok();
    let writer = thread::spawn(move || deliver(rx, to, s, upstream));
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut_first {
            if let Some(peer) = &peer {
                let _ = peer.shutdown(Shutdown::Both);
            }
            let _ = from.shutdown(Shutdown::Both);
            shared.cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let due = Instant::now() + lock(&shared.faults).latency;
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
    if upstream || !shared.keep(&from) {
        let _ = from.shutdown(Shutdown::Both);
    }
    lock(&shared.conns).remove(&id);
}

fn deliver(
    rx: Receiver<(Instant, Vec<u8>)>,
    mut to: TcpStream,
    shared: Arc<Shared>,
    upstream: bool,
) {
    let bucket = Mutex::new(Bucket {
        tokens: 0.0,
        last: Instant::now(),
    });
    loop {
        let (due, data) = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        for piece in data.chunks(4096) {
            shared.wait_while_stalled();
            if let Some(rate) = lock(&shared.faults).per_connection_rate {
                take(&bucket, rate, piece.len());
            }
            shared.take_link(piece.len());
            if to.write_all(piece).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            if upstream {
                shared
                    .upstream_bytes
                    .fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
        }
    }
    if !upstream || !shared.keep(&to) {
        let _ = to.shutdown(Shutdown::Write);
    }
}

/// Cuts everything every `cut_every`, while that is set.
fn cutter(shared: Arc<Shared>) {
    let mut last = Instant::now();
    while !shared.stopping.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(50));
        let every = lock(&shared.faults).cut_every;
        match every {
            Some(every) if last.elapsed() >= every => {
                shared.cut_all();
                last = Instant::now();
            }
            Some(_) => {}
            None => last = Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    #[test]
    fn forwards_and_rate_limits_and_cuts() {
        let proxy = FaultProxy::start("127.0.0.1:0", echo_server(), Faults::default()).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");

        proxy.set(Faults {
            per_connection_rate: Some(1_000_000),
            ..Faults::default()
        });
        let data = vec![7u8; 500_000];
        let start = Instant::now();
        let mut r = c.try_clone().unwrap();
        let reader = thread::spawn(move || {
            let mut got = vec![0u8; 500_000];
            r.read_exact(&mut got).unwrap();
        });
        c.write_all(&data).unwrap();
        reader.join().unwrap();
        // 500 kB at 1 MB/s each way: at least about 0.4 s.
        assert!(
            start.elapsed() >= Duration::from_millis(350),
            "{:?}",
            start.elapsed()
        );

        proxy.cut_all();
        assert_eq!(proxy.cuts(), 1);
        let mut buf = [0u8; 1];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // A cut is an end of stream or a reset, never a silence that runs
        // into the read timeout.
        match c.read(&mut buf) {
            Ok(0) => {}
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "the cut connection stayed open: {e}"
            ),
            Ok(n) => panic!("connection survived a cut: read {n} bytes"),
        }
    }

    #[test]
    fn a_stall_holds_data_until_resumed() {
        let proxy = FaultProxy::start("127.0.0.1:0", echo_server(), Faults::default()).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        proxy.stall();
        c.write_all(b"x").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert!(c.read(&mut buf).is_err(), "data passed a stalled link");
        proxy.resume();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
    }
}
