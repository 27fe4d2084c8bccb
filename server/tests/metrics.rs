//! Metrics, through real programs: `promtool check metrics` lints what
//! ternd serves, and a real Prometheus scrapes it during a backup and
//! answers queries about it through its HTTP API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_test_support::*;

struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    api: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Prometheus scraping `target` (HOST:PORT) every second. Its own port
    /// is picked here (it does not tell which one it chose for port 0).
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ternd\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("db").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            _dir: dir,
            api: format!("http://127.0.0.1:{port}/api/v1"),
        }
    }

    /// The value of instant query `q`, if Prometheus has one.
    fn query(&self, q: &str) -> Option<f64> {
        let rest = self.api.strip_prefix("http://").unwrap();
        let (host, _) = rest.split_once('/').unwrap();
        let mut s = TcpStream::connect(host).ok()?;
        let path = format!("/api/v1/query?query={q}");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let body = reply.split_once("\r\n\r\n")?.1;
        // A chunked reply: the JSON is the part between the sizes.
        let json = body.lines().find(|l| l.starts_with('{'))?;
        let v: Value = serde_json::from_str(json).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `q` is at least `want`; fails after 90 s.
    fn wait_for(&self, q: &str, want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(v) = self.query(q).filter(|v| *v >= want) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never saw {q} >= {want} (last: {:?})",
                self.query(q)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn promtool_passes_the_metrics_and_prometheus_reads_a_backup_back() {
    for tool in ["prometheus", "promtool"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return cannot_run(&format!("{tool} is not installed (Debian: prometheus)"));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir, &["--metrics-listen", "127.0.0.1:0"]);
    let url = server.metrics_url.clone().unwrap();
    let client = server.client();
    client.container_create("c", Default::default()).unwrap();

    let (status, text) = http_get(&url);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let linted = lint.wait_with_output().unwrap();
    assert!(
        linted.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
    assert!(
        metric_sample(&text, "tern_logins_total{result=\"ok\"}").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    // The client's session and its connection, while it is logged in.
    assert!(
        metric_sample(&text, "tern_connections").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    let (status, _) = http_get(&url.replace("/metrics", "/other"));
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    let target = url
        .strip_prefix("http://")
        .unwrap()
        .strip_suffix("/metrics")
        .unwrap();
    let prometheus = Prometheus::start(target);
    prometheus.wait_for("up", 1.0);
    let before = prometheus.wait_for("tern_received_bytes_total", 0.0);
    // A backup while Prometheus scrapes: what the client sent is what the
    // server counts as received (chunk payloads, as sent).
    let data = test_data(32 << 20, 5);
    let mut w = client.create_image("c", "img", b"").unwrap();
    for piece in data.chunks(1 << 20) {
        w.write_all(piece).unwrap();
    }
    let done = w.commit().unwrap();
    let sent = done.sent_bytes as f64;
    assert!(sent > (16 << 20) as f64, "{sent}");
    let after = prometheus.wait_for("tern_received_bytes_total", before + sent);
    assert_eq!(after - before, sent);
    prometheus.wait_for("tern_images_committed_total", 1.0);
    let new = done.stats.new_chunks as f64;
    prometheus.wait_for("tern_chunks_total{how=\"new\"}", new);
    let stored = done.stats.new_stored_bytes as f64;
    prometheus.wait_for("tern_store_bytes{kind=\"stored\"}", stored);
    prometheus.wait_for("tern_group_bytes{group=\"default\",kind=\"packs\"}", stored);
    prometheus.wait_for("tern_group_bytes{group=\"default\",kind=\"free\"}", 1.0);
    let latency = "tern_request_duration_seconds_count{kind=\"ImageClose\"}";
    prometheus.wait_for(latency, 1.0);
}
