//! Metrics for Prometheus: `metrics_listen` in ternd.toml serves them at
//! `GET /metrics`, as OpenMetrics text to a scraper that asks for it
//! (Prometheus does; prometheus-client encodes it), else in Prometheus'
//! classic text format (what `promtool check metrics` reads).
//!
//! Counters are counted where things happen (requests in `dispatch`, chunk
//! bytes, commits, GC through the control socket); what the server holds
//! (sessions, open images, the store's bytes and space, copies and tier
//! moves by state) is
//! read when Prometheus scrapes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::sessions::Sessions;
use crate::store::Scope;

type Labels = [(&'static str, String); 1];
/// A storage group and a kind.
type GroupLabels = [(&'static str, String); 2];

fn label(key: &'static str, value: impl Into<String>) -> Labels {
    [(key, value.into())]
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Histogram, fn() -> Histogram>,
    errors: Family<Labels, Counter>,
    logins: Family<Labels, Counter>,
    bytes_received: Counter,
    bytes_sent: Counter,
    bytes_stored: Counter,
    chunks: Family<Labels, Counter>,
    images_committed: Counter,
    gc_runs: Counter,
    gc_bytes_freed: Counter,
    // Read at each scrape.
    sessions: Gauge,
    connections: Gauge,
    open_images: Gauge,
    store_bytes: Family<Labels, Gauge>,
    group_bytes: Family<GroupLabels, Gauge>,
    group_requests: Family<GroupLabels, Gauge>,
    copies: Family<Labels, Gauge>,
    tier_moves: Family<Labels, Gauge>,
    /// One scrape at a time sets the gauges it reads back.
    rendering: std::sync::Mutex<()>,
}

fn latency() -> Histogram {
    // 100 µs to ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("tern"),
            requests: Family::new_with_constructor(latency),
            errors: Family::default(),
            logins: Family::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            bytes_stored: Counter::default(),
            chunks: Family::default(),
            images_committed: Counter::default(),
            gc_runs: Counter::default(),
            gc_bytes_freed: Counter::default(),
            sessions: Gauge::default(),
            connections: Gauge::default(),
            open_images: Gauge::default(),
            store_bytes: Family::default(),
            group_bytes: Family::default(),
            group_requests: Family::default(),
            copies: Family::default(),
            tier_moves: Family::default(),
            rendering: std::sync::Mutex::new(()),
        };
        let r = &mut m.registry;
        r.register(
            "request_duration_seconds",
            "Time to answer a request, by request kind",
            m.requests.clone(),
        );
        r.register(
            "request_errors",
            "Requests refused or failed, by error kind",
            m.errors.clone(),
        );
        r.register("logins", "Logins by result (ok, failed)", m.logins.clone());
        r.register(
            "received_bytes",
            "Chunk and raw image bytes received from writers",
            m.bytes_received.clone(),
        );
        r.register(
            "sent_bytes",
            "Chunk bytes sent to readers",
            m.bytes_sent.clone(),
        );
        r.register(
            "stored_bytes",
            "Bytes the store grew by with committed images",
            m.bytes_stored.clone(),
        );
        r.register(
            "chunks",
            "Chunks of committed images, new or deduplicated",
            m.chunks.clone(),
        );
        r.register(
            "images_committed",
            "Images committed",
            m.images_committed.clone(),
        );
        r.register("gc_runs", "GC runs", m.gc_runs.clone());
        r.register(
            "gc_freed_bytes",
            "Pack bytes GC gave back",
            m.gc_bytes_freed.clone(),
        );
        r.register("sessions", "Client sessions alive", m.sessions.clone());
        r.register(
            "connections",
            "Connections of the sessions alive",
            m.connections.clone(),
        );
        r.register("open_images", "Images being written", m.open_images.clone());
        r.register(
            "store_bytes",
            "The store's bytes: logical, unique, stored (compressed), packs, \
             filesystem capacity and free space",
            m.store_bytes.clone(),
        );
        r.register(
            "group_bytes",
            "Per storage group: its packs, and the size, use and free space of the \
             filesystem they are on (a cloud group: its objects, staged and cached bytes too)",
            m.group_bytes.clone(),
        );
        r.register(
            "group_bucket_requests",
            "Per cloud group: requests made to its bucket since ternd started, by kind \
             (put, get, delete, head; failed: those that failed after their retries)",
            m.group_requests.clone(),
        );
        r.register("copies", "Copy jobs to partners by state", m.copies.clone());
        r.register(
            "tier_moves",
            "Cloud tier copies by state",
            m.tier_moves.clone(),
        );
        m
    }

    /// A request of `kind` answered after `took`, refused with `error`.
    pub fn request(&self, kind: &str, took: Duration, error: Option<&str>) {
        self.requests
            .get_or_create(&label("kind", kind))
            .observe(took.as_secs_f64());
        if let Some(e) = error {
            self.errors.get_or_create(&label("kind", e)).inc();
        }
    }

    pub fn login(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.logins.get_or_create(&label("result", result)).inc();
    }

    pub fn received(&self, bytes: usize) {
        self.bytes_received.inc_by(bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        self.bytes_sent.inc_by(bytes as u64);
    }

    /// An image committed: its chunks, how many were new, the bytes stored.
    pub fn committed(&self, chunks: u64, new_chunks: u64, stored: u64) {
        self.images_committed.inc();
        self.bytes_stored.inc_by(stored);
        self.chunks
            .get_or_create(&label("how", "new"))
            .inc_by(new_chunks);
        let dedup = chunks.saturating_sub(new_chunks);
        self.chunks
            .get_or_create(&label("how", "deduplicated"))
            .inc_by(dedup);
    }

    /// A GC run and what its report says it freed.
    pub fn gc(&self, report: &serde_json::Value) {
        self.gc_runs.inc();
        let before = report["bytes_before"].as_u64().unwrap_or(0);
        let after = report["bytes_after"].as_u64().unwrap_or(before);
        self.gc_bytes_freed.inc_by(before.saturating_sub(after));
    }

    /// The text Prometheus scrapes, with what the server holds read now.
    pub fn render(&self, sessions: &Sessions) -> String {
        let _one = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        self.sessions.set(sessions.count() as i64);
        self.connections.set(sessions.connection_count() as i64);
        self.open_images.set(sessions.store.open_images() as i64);
        match sessions.store.stats(&Scope::Every) {
            Ok(s) => {
                for (kind, v) in [
                    ("logical", s.logical_bytes),
                    ("unique", s.unique_bytes),
                    ("stored", s.stored_bytes),
                    ("packs", s.pack_bytes),
                    ("capacity", s.capacity_bytes),
                    ("free", s.free_bytes),
                ] {
                    self.store_bytes
                        .get_or_create(&label("kind", kind))
                        .set(v as i64);
                }
            }
            Err(e) => tracing::warn!("metrics: reading the store's totals: {e}"),
        }
        self.group_bytes.clear();
        self.group_requests.clear();
        match sessions.store.group_list(&Scope::Every, false) {
            Ok(groups) => {
                for g in groups {
                    let of = |kind: &str| [("group", g.name.clone()), ("kind", kind.to_string())];
                    let mut bytes = vec![
                        ("packs", g.pack_bytes),
                        ("fs_total", g.fs_total_bytes),
                        ("fs_used", g.fs_used_bytes),
                        ("free", g.free_bytes),
                    ];
                    if g.kind == "cloud" {
                        bytes.extend([
                            ("objects", g.object_bytes),
                            ("staged", g.staged_bytes),
                            ("cached", g.cache_bytes),
                        ]);
                        for (kind, v) in [
                            ("put", g.puts),
                            ("get", g.gets),
                            ("delete", g.deletes),
                            ("head", g.heads),
                            ("failed", g.request_errors),
                        ] {
                            self.group_requests.get_or_create(&of(kind)).set(v as i64);
                        }
                    }
                    for (kind, v) in bytes {
                        self.group_bytes.get_or_create(&of(kind)).set(v as i64);
                    }
                }
            }
            Err(e) => tracing::warn!("metrics: listing storage groups: {e}"),
        }
        self.copies.clear();
        self.tier_moves.clear();
        match sessions.replicator.list(&Scope::Every) {
            Ok(list) => {
                for c in list {
                    let state = format!("{:?}", c.state).to_lowercase();
                    let family = if c.tier {
                        &self.tier_moves
                    } else {
                        &self.copies
                    };
                    family.get_or_create(&label("state", state)).inc();
                }
            }
            Err(e) => tracing::warn!("metrics: listing copies: {e}"),
        }
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!("metrics: encoding: {e}");
        }
        out
    }
}

/// The most bytes of a request's head read before it is answered.
const MAX_HEAD: usize = 8 << 10;
/// How long a scraper may take to send its request.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` for the metrics endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, sessions: Arc<Sessions>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let sessions = sessions.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &sessions).await {
                tracing::debug!("metrics request: {e}");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, sessions: &Arc<Sessions>) -> std::io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let openmetrics = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("accept:") && l.contains("application/openmetrics-text")
    });
    let (status, body, kind) = match (method, path.split('?').next()) {
        ("GET", Some("/metrics")) => {
            let sessions = sessions.clone();
            let body = tokio::task::spawn_blocking(move || sessions.metrics.render(&sessions))
                .await
                .unwrap_or_default();
            if openmetrics {
                (
                    "200 OK",
                    body,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                (
                    "200 OK",
                    classic_text(&body),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            }
        }
        ("GET", _) => ("404 Not Found", "see /metrics\n".into(), "text/plain"),
        _ => ("405 Method Not Allowed", "GET only\n".into(), "text/plain"),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// OpenMetrics text in Prometheus' classic format: a counter family is
/// named with its `_total` suffix there, and there is no `# EOF`.
fn classic_text(open: &str) -> String {
    let counters: Vec<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The request's head, up to the blank line (at most [`MAX_HEAD`] bytes).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a request head over 8 KiB",
            ));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_counters_with_total_and_has_no_eof() {
        let open = "# HELP tern_logins Logins.\n# TYPE tern_logins counter\n\
                    tern_logins_total{result=\"ok\"} 1\n# HELP tern_sessions Sessions.\n\
                    # TYPE tern_sessions gauge\ntern_sessions 2\n# EOF\n";
        assert_eq!(
            classic_text(open),
            "# HELP tern_logins_total Logins.\n# TYPE tern_logins_total counter\n\
             tern_logins_total{result=\"ok\"} 1\n# HELP tern_sessions Sessions.\n\
             # TYPE tern_sessions gauge\ntern_sessions 2\n"
        );
    }
}
