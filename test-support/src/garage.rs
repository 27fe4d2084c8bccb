//! A real Garage (the S3 object store, crates.io `garage` 2.5) on loopback
//! for the tests of cloud storage groups: one node, or three with
//! replication factor 3. Its blocks are stored uncompressed, so a test can
//! search its data directory for plaintext the bucket must not hold.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{cannot_run, ok, run_with_stdin, TestServer};

/// The access key every test Garage has (`garage key import`).
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const BUCKET: &str = "tern";
const RPC_SECRET: &str = "6a1c0b0e2d5f4c8b9a7e3d2c1b0a9f8e7d6c5b4a392817161514131211100f0e";

/// The garage binary: `TERN_GARAGE`, else `garage` on the PATH or in
/// cargo's bin directory (where `cargo install garage` puts it).
pub fn garage_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TERN_GARAGE") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
}

/// A free port below the kernel's ephemeral range. A node restarted by a
/// test binds its ports again; a port from the ephemeral range can by then
/// be the local end of some outgoing connection (ternd retrying the stopped
/// S3 port, say), and the restart fails with "address in use".
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u64, u64::from(ephemeral_low.max(12_000)));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = u64::from(std::process::id()) << 32 ^ u64::from(nanos);
    for _ in 0..1000 {
        // splitmix64 step: spreads the tests' picks over the range.
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15 ^ SEQ.fetch_add(1, Ordering::Relaxed));
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let port = (low + z % (high - low)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// One Garage node.
pub struct GarageNode {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub rpc_port: u16,
    pub s3_port: u16,
    child: Option<Child>,
}

impl GarageNode {
    fn new(root: &Path, i: usize, replication: usize) -> Self {
        let dir = root.join(format!("node{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (rpc_port, s3_port) = (free_port(), free_port());
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"lmdb\"\n\
                 replication_factor = {replication}\ncompression_level = \"none\"\n\
                 metadata_fsync = false\ndata_fsync = false\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{RPC_SECRET}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                 root_domain = \".s3.garage.localhost\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        Self {
            dir,
            config,
            rpc_port,
            s3_port,
            child: None,
        }
    }

    /// Starts the node's server process.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("garage.log"))
            .unwrap();
        let child = Command::new(garage_bin().unwrap())
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `garage -c CONFIG args...` against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(garage_bin().unwrap())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The node's id, once its RPC answers (`node id` alone reads it from
    /// the metadata directory, server or not; `status` asks the server).
    fn node_id(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cli(&["status"]);
            let id = self.cli(&["node", "id", "-q"]);
            let text = String::from_utf8_lossy(&id.stdout).trim().to_string();
            if out.status.success() && id.status.success() && !text.is_empty() {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "garage did not start: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A Garage cluster with a bucket and a key.
pub struct Garage {
    _root: tempfile::TempDir,
    pub nodes: Vec<GarageNode>,
}

impl Garage {
    /// One node; `None` (and a SKIPPED line, or a failure in CI) when no
    /// garage binary is installed.
    pub fn start() -> Option<Self> {
        Self::start_nodes(1)
    }

    /// `n` nodes, each object on every node (replication factor `n`).
    pub fn start_nodes(n: usize) -> Option<Self> {
        if garage_bin().is_none() {
            cannot_run(
                "garage is not installed (cargo install garage --version 2.5.0 --locked, \
                 or TERN_GARAGE=/path/to/garage)",
            );
            return None;
        }
        let root = tempfile::tempdir().unwrap();
        let mut nodes: Vec<GarageNode> =
            (0..n).map(|i| GarageNode::new(root.path(), i, n)).collect();
        for node in &mut nodes {
            node.start();
        }
        let ids: Vec<String> = nodes.iter().map(|n| n.node_id()).collect();
        let first = &nodes[0];
        for id in &ids[1..] {
            first.cli_ok(&["node", "connect", id]);
        }
        for id in &ids {
            let short = id.split('@').next().unwrap_or(id);
            first.cli_ok(&["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        first.cli_ok(&["layout", "apply", "--version", "1"]);
        first.cli_ok(&["key", "import", "--yes", "-n", "tern", KEY_ID, SECRET]);
        first.cli_ok(&["bucket", "create", BUCKET]);
        first.cli_ok(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "tern",
        ]);
        let g = Garage { _root: root, nodes };
        g.wait_ready();
        Some(g)
    }

    /// Waits until the S3 API answers (a new layout takes a moment).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in &self.nodes {
            while std::net::TcpStream::connect(("127.0.0.1", node.s3_port)).is_err() {
                assert!(Instant::now() < deadline, "garage's S3 port did not open");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The bucket's URL, as `tern group add --s3` takes it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/{BUCKET}", self.nodes[0].s3_port)
    }

    /// Environment for `tern group add --s3`.
    pub fn env(passphrase: &str) -> Vec<(&'static str, String)> {
        vec![
            ("TERN_S3_ACCESS_KEY_ID", KEY_ID.to_string()),
            ("TERN_S3_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("TERN_GROUP_PASSPHRASE", passphrase.to_string()),
        ]
    }

    /// A ternd with metrics on, its `ternd.toml` changed by `edits` (each
    /// (old, new) must apply), and storage group `cloud` in this bucket
    /// under `prefix`, its passphrase `passphrase`.
    pub fn ternd_with_group(
        &self,
        edits: &[(&str, &str)],
        prefix: &str,
        passphrase: &str,
    ) -> TestServer {
        let mut server = TestServer::start();
        let config = server.data().join("ternd.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        for (old, new) in edits {
            assert!(text.contains(old), "no {old:?} in ternd.toml:\n{text}");
            text = text.replace(old, new);
        }
        std::fs::write(&config, text).unwrap();
        server
            .args
            .extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
        server.kill();
        server.spawn();
        let url = self.url();
        let args = ["group", "add", "cloud", "--s3", &url, "--prefix", prefix];
        let mut cmd = server.tern_command(&args);
        cmd.envs(Self::env(passphrase));
        ok("group add", &run_with_stdin(cmd, None));
        server
    }

    /// Stops every node (SIGKILL).
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// Starts every stopped node again, on the same ports.
    pub fn restart(&mut self) {
        for n in &mut self.nodes {
            if n.child.is_none() {
                n.start();
            }
        }
        for n in &self.nodes {
            n.node_id();
        }
        self.wait_ready();
    }

    /// Every file under the nodes' data and metadata directories, with its bytes.
    pub fn stored_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            collect(&n.dir.join("data"), &mut out);
            collect(&n.dir.join("meta"), &mut out);
        }
        out
    }
}

fn collect(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}
