//! Test support: real `ternd` processes on loopback with temporary data directories.

pub mod garage;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tern_agent::{Client, ClientOptions};
use tern_core::tls::Fingerprint;

pub const PASSWORD: &str = "test-password";

/// For a test that cannot run here: in CI (where `CI` is set) it fails, since
/// CI installs what every test needs; elsewhere it says why it passes without
/// checking anything.
pub fn cannot_run(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("this test cannot run, and CI must run it: {why}");
    }
    eprintln!("SKIPPED (not a pass): {why}");
}

/// The directory cargo puts this build's binaries in (target/<profile>).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test binary>
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Runs `cargo build` for a target of another package of this workspace, once
/// per test process: cargo builds only the package under test, and a file
/// left by an earlier build may be stale.
pub fn cargo_build(args: &[&str]) {
    static DONE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let key = args.join(" ");
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done.contains(&key) {
        return;
    }
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build").args(args);
    if target_dir().ends_with("release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "cargo build {key}");
    done.push(key);
}

/// A binary of this workspace from the same build.
pub fn workspace_bin(package: &str, name: &str) -> PathBuf {
    cargo_build(&["-p", package, "--bin", name]);
    target_dir().join(name)
}

/// The directory holding a fresh libtern.so and libtern.a.
pub fn libtern_dir() -> PathBuf {
    cargo_build(&["-p", "tern-ffi", "--lib"]);
    target_dir()
}

pub fn libtern_so() -> PathBuf {
    libtern_dir().join("libtern.so")
}

pub fn ternd_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_ternd") {
        Some(p) => PathBuf::from(p),
        None => workspace_bin("tern-server", "ternd"),
    }
}

pub fn tern_bin() -> PathBuf {
    workspace_bin("tern-cli", "tern")
}

/// A running ternd; killed when dropped.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    /// The TLS port. 0 before the first start lets ternd choose a free one
    /// (a port picked here and bound later could be taken in between by a
    /// parallel test); restarts keep the port, as clients expect.
    pub port: u16,
    /// The plaintext loopback port, chosen the same way.
    pub plain_port: u16,
    pub child: Option<Child>,
    /// Extra arguments for `ternd serve`.
    pub args: Vec<String>,
    /// The metrics endpoint's URL, when `--metrics-listen` is among them.
    pub metrics_url: Option<String>,
    /// Extra environment for `ternd serve` (such as a skewed clock).
    pub env: Vec<(String, String)>,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), &[])
    }

    pub fn start_with(dir: tempfile::TempDir, args: &[&str]) -> Self {
        let mut s = TestServer {
            dir,
            port: 0,
            plain_port: 0,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            metrics_url: None,
            env: Vec::new(),
        };
        s.spawn();
        s
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    // The log and the client identity sit beside the data directory: ternd
    // owns everything inside it. The TempDir removes only the directory, so
    // Drop removes these two.
    fn log_path(&self) -> PathBuf {
        self.data().with_extension("log")
    }

    fn client_id_dir(&self) -> PathBuf {
        self.data().with_extension("client-id")
    }

    /// Starts ternd on the ports it had before (any, the first time). A
    /// restart may find its old port taken for a moment by another test's
    /// connection (the port was free while the server was down): it tries
    /// again for up to 10 s before it fails.
    pub fn spawn(&mut self) {
        let (cert, key) = self.client_identity();
        if !cert.exists() {
            tern_agent::identity::create(&cert, &key).unwrap();
        }
        let mut tries = 0;
        while let Err(log) = self.try_spawn() {
            tries += 1;
            if self.port == 0 || tries >= 20 || !log.contains("Address already in use") {
                panic!("ternd did not start; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Starts ternd on the ports it had before; its log if it did not start.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(ternd_bin())
            .args(["serve", "--data"])
            .arg(self.data())
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--plain-listen", &format!("127.0.0.1:{}", self.plain_port)])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("TERN_PASSWORD", PASSWORD)
            // TERN_TEST_LOG=info shows more of a failing test's server.
            .env(
                "TERN_LOG",
                std::env::var("TERN_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.log_path())
                    .unwrap(),
            ))
            .spawn()
            .unwrap();
        // ternd prints the addresses once it has bound them; it is ready then.
        let stdout = BufReader::new(child.stdout.take().unwrap());
        self.child = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut tls, mut plain) = (None, None);
        let metrics = self.args.iter().any(|a| a == "--metrics-listen");
        self.metrics_url = None;
        while tls.is_none() || plain.is_none() || (metrics && self.metrics_url.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening for TLS on ") {
                        tls = Some(port_of(a));
                    } else if let Some(a) = line.strip_prefix("listening for plaintext on ") {
                        plain = Some(port_of(a));
                    } else if let Some(url) = line.strip_prefix("serving metrics on ") {
                        self.metrics_url = Some(url.to_string());
                    }
                }
                Err(e) => {
                    if let Some(mut c) = self.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                    return Err(format!("({e})\n{log}"));
                }
            }
        }
        (self.port, self.plain_port) = (tls.unwrap(), plain.unwrap());
        Ok(())
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn fingerprint(&self) -> Fingerprint {
        let out = Command::new(ternd_bin())
            .args(["fingerprint", "--data"])
            .arg(self.data())
            .output()
            .unwrap();
        Fingerprint::parse(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
    }

    pub fn options(&self) -> ClientOptions {
        let mut o = ClientOptions::new(&self.address(), "admin", PASSWORD);
        o.fingerprint = Some(self.fingerprint());
        o.remember_servers = false;
        o.identity = Some(self.client_identity());
        o
    }

    /// The certificate and key in-process clients of this test present.
    pub fn client_identity(&self) -> (PathBuf, PathBuf) {
        let dir = self.client_id_dir();
        (dir.join("client.crt"), dir.join("client.key"))
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.options()).unwrap()
    }

    pub fn ternd(&self, args: &[&str]) -> Output {
        Command::new(ternd_bin())
            .args(args)
            .arg("--data")
            .arg(self.data())
            .output()
            .unwrap()
    }

    /// Runs the `tern` CLI against this server.
    pub fn tern(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        run_with_stdin(self.tern_command(args), stdin)
    }

    /// Restores `container`/`name` with `tern restore` to a file beside
    /// `original` and asserts that it equals it, byte for byte.
    pub fn assert_restores_as(&self, container: &str, name: &str, original: &Path) {
        let restored = original.with_extension("restored");
        let to = restored.to_str().unwrap();
        let args = ["restore", "--container", container, "--name", name, to];
        ok("restore", &self.tern(&args, None));
        assert!(
            std::fs::read(&restored).unwrap() == std::fs::read(original).unwrap(),
            "{container}/{name} restores differently from {}",
            original.display()
        );
    }

    /// `tern` against this server, to run as the caller likes (with more
    /// environment, or in the background).
    pub fn tern_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(tern_bin());
        cmd.args(["--server", &self.address()])
            .args(["--fingerprint", &self.fingerprint().to_string()])
            .args(args)
            .env("TERN_PASSWORD", PASSWORD)
            .env("TERN_CONFIG_DIR", self.data().join("client-config"));
        cmd
    }

    pub fn pack_bytes(&self) -> u64 {
        walk(&self.data().join("groups"))
    }
}

fn port_of(addr: &str) -> u16 {
    let addr: std::net::SocketAddr = addr.trim().parse().unwrap();
    addr.port()
}

/// Runs a command with `stdin` fed from a thread (so a large input cannot
/// deadlock against a full stdout pipe), capturing its output.
pub fn run_with_stdin(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.map(<[u8]>::to_vec);
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        if let Some(b) = input {
            let _ = pipe.write_all(&b);
        }
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// Bytes of the files under `p`.
pub fn walk(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            n += if m.is_dir() { walk(&e.path()) } else { m.len() };
        }
    }
    n
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the server said.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|l| !l.contains("the client said goodbye"))
                .take(60)
                .collect();
            eprintln!("--- last lines of the ternd log (but clean goodbyes) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_file(self.log_path());
        let _ = std::fs::remove_dir_all(self.client_id_dir());
    }
}

/// A frame as a raw peer sends it: sequence and request `seq`, nothing
/// acknowledged, no payload.
pub fn frame(seq: u64, msg: tern_core::wire::Msg) -> tern_core::wire::Frame {
    let env = tern_core::wire::Envelope {
        seq,
        ack: 0,
        req: seq,
        msg,
    };
    tern_core::wire::Frame::new(env, Vec::new())
}

/// The standard output of a command that must have succeeded (`what` names
/// it in the failure, with its standard error).
pub fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A command's `--json` output, parsed.
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap()
}

/// Writes [`test_data`] to `dir/name`.
pub fn data_file(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, test_data(len, seed)).unwrap();
    path
}

/// Deterministic data that compresses about 2:1 and dedups only where repeated.
pub fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Half random bytes, half a small alphabet: zstd finds something to do.
        let b = x.to_le_bytes();
        out.extend_from_slice(&b[..4]);
        out.extend(b[4..].iter().map(|v| b'a' + v % 4));
    }
    out.truncate(len);
    out
}

/// `GET url` (plain HTTP/1.1, as a metrics endpoint serves it): the status
/// line and the body.
pub fn http_get(url: &str) -> (String, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// A sample's value in Prometheus exposition text.
pub fn metric_sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
