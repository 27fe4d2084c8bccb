//! nbdkit-tern-plugin, a libtern host nobody here wrote the other side of:
//! Debian's nbdkit loads it, and qemu-img, nbdcopy, nbdinfo and libnbd
//! clients back VM disks up into tern images and read them back.

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tern_test_support::*;

mod common;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The programs these tests drive; CI installs them (.ci/run).
fn tools_missing() -> Option<String> {
    let tools = [
        ("nbdkit", "--version"),
        ("qemu-img", "--version"),
        ("nbdcopy", "--version"),
        ("nbdinfo", "--version"),
        ("mkfs.ext4", "-V"),
    ];
    let missing: Vec<_> = tools
        .iter()
        .filter(|(t, arg)| Command::new(t).arg(arg).output().is_err())
        .map(|(t, _)| *t)
        .collect();
    (!missing.is_empty()).then(|| format!("not installed: {}", missing.join(", ")))
}

/// Builds the plugin with its own Makefile, warnings as errors.
fn plugin(build: &Path) -> PathBuf {
    let status = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(root().join("nbdkit"))
        .arg(format!("LIBDIR={}", libtern_dir().display()))
        .arg(format!("BUILD={}", build.display()))
        .arg("CFLAGS=-O2 -g -Wall -Wextra -Werror")
        .status()
        .expect("running make");
    assert!(status.success(), "building the plugin failed");
    build.join("nbdkit-tern-plugin.so")
}

/// A server with container `vm`, and the plugin built.
struct Setup {
    server: TestServer,
    build: tempfile::TempDir,
    plugin: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let server = TestServer::start();
        server
            .client()
            .container_create("vm", Default::default())
            .unwrap();
        let build = tempfile::tempdir().unwrap();
        let plugin = plugin(build.path());
        Setup {
            server,
            build,
            plugin,
        }
    }

    /// `nbdkit -U - tern ... --run SCRIPT` (the script sees the export as $uri).
    fn nbdkit(&self, wrapper: &[&str], args: &[&str], script: &str) -> Command {
        let (program, wrapped) = match wrapper.split_first() {
            Some((p, rest)) => (*p, rest),
            None => ("nbdkit", &[][..]),
        };
        let mut cmd = Command::new(program);
        cmd.args(wrapped);
        if !wrapper.is_empty() {
            cmd.arg("nbdkit");
        }
        cmd.args(["-U", "-", "--exit-with-parent"])
            .arg(&self.plugin)
            .arg(format!("server={}", self.server.address()))
            .arg("container=vm")
            .args(args)
            .args(["--run", script])
            .current_dir(self.build.path())
            .env("TERN_PASSWORD", PASSWORD)
            .env("TERN_FINGERPRINT", self.server.fingerprint().to_string())
            .env("TERN_CONFIG_DIR", self.server.data().join("client-config"));
        cmd
    }

    /// `nbdkit -f` on a socket of its own until killed, its log read as
    /// it comes: unlike `--run`, nbdkit stays up while `.close` works.
    fn serve(&self, args: &[&str]) -> Served {
        let socket = self.path("nbd.sock");
        let _ = std::fs::remove_file(&socket);
        let mut child = Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(&socket)
            .arg(&self.plugin)
            .arg(format!("server={}", self.server.address()))
            .arg("container=vm")
            .args(args)
            .current_dir(self.build.path())
            .env("TERN_PASSWORD", PASSWORD)
            .env("TERN_FINGERPRINT", self.server.fingerprint().to_string())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("nbdkit: {line}");
                let _ = tx.send(line);
            }
        });
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nbdkit made no socket"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let uri = format!("nbd+unix:///?socket={}", socket.display());
        Served { child, uri, log }
    }

    fn run(&self, args: &[&str], script: &str) -> Output {
        self.nbdkit(&[], args, script).output().unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.build.path().join(name)
    }
}

struct Served {
    child: Child,
    uri: String,
    log: mpsc::Receiver<String>,
}

impl Served {
    /// The first line of the log containing `what`; fails after 60 s.
    fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => {}
                Err(e) => panic!("nbdkit never logged {what:?} ({e})"),
            }
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `key` in `line`.
fn number_after(line: &str, key: &str) -> u64 {
    let at = line
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} in {line:?}"))
        + key.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number after {key:?} in {line:?}"))
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} exited {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh(what: &str, script: &str, dir: &Path) {
    let out = Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert_ok(what, &out);
}

/// A 64 MiB ext4 disk in qcow2 holding real files (this checkout's sources
/// and docs, and 4 MiB of random bytes), made by mkfs.ext4 -d and qemu-img.
fn make_disk(s: &Setup, name: &str, files: &Path) {
    sh(
        "making the disk",
        &format!(
            "mkfs.ext4 -q -F -d {files} {name}.raw 64M && \
             qemu-img convert -f raw -O qcow2 {name}.raw {name}.qcow2 && rm {name}.raw",
            files = files.display()
        ),
        s.build.path(),
    );
}

fn disk_files(s: &Setup) -> PathBuf {
    let files = s.path("files");
    std::fs::create_dir_all(&files).unwrap();
    for dir in ["docs", "server/src", "agent/src"] {
        sh(
            "copying files",
            &format!("cp -r {} {}/", root().join(dir).display(), files.display()),
            s.build.path(),
        );
    }
    std::fs::write(files.join("blob"), test_data(4 << 20, 77)).unwrap();
    files
}

fn backup_disk(s: &Setup, disk: &str, image: &str) -> Output {
    s.run(
        &[&format!("image={image}"), "mode=write", "size=64M"],
        &format!("qemu-img convert -f qcow2 -O raw {disk}.qcow2 \"$uri\""),
    )
}

#[test]
fn qemu_img_backs_a_vm_disk_up_and_reads_it_back_identical_and_a_second_backup_adds_little() {
    if let Some(why) = tools_missing() {
        return cannot_run(&why);
    }
    let s = Setup::new();
    let files = disk_files(&s);
    make_disk(&s, "disk1", &files);
    assert_ok("backup 1", &backup_disk(&s, "disk1", "monday"));
    let out = s.run(
        &["image=monday"],
        "qemu-img compare -f qcow2 -F raw disk1.qcow2 \"$uri\"",
    );
    assert_ok("compare 1", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Images are identical"),
        "{out:?}"
    );
    let stored = s.server.client().stats().unwrap().stored_bytes;

    // A few files change; the disk is made again from them.
    std::fs::write(files.join("docs/changed.txt"), test_data(64 << 10, 78)).unwrap();
    std::fs::remove_file(files.join("docs/README.md")).ok();
    make_disk(&s, "disk2", &files);
    assert_ok("backup 2", &backup_disk(&s, "disk2", "tuesday"));
    let out = s.run(
        &["image=tuesday"],
        "qemu-img compare -f qcow2 -F raw disk2.qcow2 \"$uri\"",
    );
    assert_ok("compare 2", &out);
    let grown = s.server.client().stats().unwrap().stored_bytes - stored;
    eprintln!("the first backup stored {stored} bytes, the second {grown} more");
    assert!(
        grown < 1 << 20,
        "the second backup of a 64 MiB disk with a 64 KiB file added stored {grown} bytes \
         (the first {stored})"
    );
    let images = s.server.client().image_list("vm", "").unwrap();
    let sizes: Vec<_> = images.iter().map(|i| (i.name.as_str(), i.size)).collect();
    assert_eq!(sizes, [("monday", 64 << 20), ("tuesday", 64 << 20)]);
}

#[test]
fn nbdcopy_of_an_image_equals_tern_restore_and_nbdinfo_shows_its_size() {
    if let Some(why) = tools_missing() {
        return cannot_run(&why);
    }
    let s = Setup::new();
    let data = test_data(24 << 20, 79);
    let client = s.server.client();
    let mut w = client.create_image("vm", "img", b"").unwrap();
    std::io::Write::write_all(&mut w, &data).unwrap();
    w.commit().unwrap();
    let out = s.run(
        &["image=img"],
        "nbdinfo --size \"$uri\" && nbdcopy \"$uri\" copied.raw",
    );
    assert_ok("nbdinfo and nbdcopy", &out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "25165824");
    let restored = s.path("restored.raw");
    let out = s.server.tern(
        &[
            "restore",
            "--container",
            "vm",
            "--name",
            "img",
            restored.to_str().unwrap(),
        ],
        None,
    );
    assert_ok("tern restore", &out);
    let copied = std::fs::read(s.path("copied.raw")).unwrap();
    assert!(copied == std::fs::read(restored).unwrap() && copied == data);

    // Reading a missing image fails at once, with tern's word in the log.
    let out = s.run(&["image=absent"], "nbdinfo --size \"$uri\"");
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("TERN_NOT_FOUND"), "{log}");
}

/// Random reads of 4 KiB to 1 MiB from 6 clients at once, through a
/// libnbd program, against `nbdkit --threads 8` (run under `wrapper`).
fn random_reads(s: &Setup, wrapper: &[&str], reads: &str) -> Output {
    let program = s.path("nbd_random_reads");
    let status = Command::new("cc")
        .arg(root().join("ffi/tests/c/nbd_random_reads.c"))
        .args(["-O2", "-Wall", "-Werror", "-pthread", "-o"])
        .arg(&program)
        .arg("-lnbd")
        .status()
        .unwrap();
    assert!(status.success(), "cc nbd_random_reads.c (libnbd-dev)");
    let script = format!("{} \"$uri\" source.raw 6 {reads} 7", program.display());
    s.nbdkit(wrapper, &["image=img", "--threads", "8"], &script)
        .output()
        .unwrap()
}

fn write_source(s: &Setup, len: usize) {
    let data = test_data(len, 80);
    std::fs::write(s.path("source.raw"), &data).unwrap();
    let client = s.server.client();
    let mut w = client.create_image("vm", "img", b"").unwrap();
    std::io::Write::write_all(&mut w, &data).unwrap();
    w.commit().unwrap();
}

#[test]
fn parallel_random_reads_from_several_clients_match_the_source() {
    if let Some(why) = tools_missing() {
        return cannot_run(&why);
    }
    let s = Setup::new();
    write_source(&s, 40 << 20);
    let out = random_reads(&s, &[], "200");
    assert_ok("random reads", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok 1200 reads"),
        "{out:?}"
    );
}

#[test]
fn random_reads_run_clean_under_valgrind() {
    if let Some(why) = tools_missing() {
        return cannot_run(&why);
    }
    let s = Setup::new();
    write_source(&s, 8 << 20);
    let valgrind = common::valgrind();
    let vg: Vec<&str> = valgrind.iter().map(String::as_str).collect();
    let out = random_reads(&s, &vg, "10");
    assert_ok("random reads under valgrind", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok 60 reads"),
        "{out:?}"
    );
}

#[test]
fn a_writer_killed_midway_commits_nothing_and_a_new_run_replaces_it() {
    if let Some(why) = tools_missing() {
        return cannot_run(&why);
    }
    let s = Setup::new();
    let data = test_data(48 << 20, 81);
    std::fs::write(s.path("disk.raw"), &data).unwrap();
    // nbdcopy from a pipe that stalls with half the disk sent: the writer
    // (nbdkit, which holds libtern) is killed there.
    let mut child = s
        .nbdkit(
            &[],
            &["image=killed", "mode=write", "size=48M"],
            "{ head -c 25165824 disk.raw; sleep 60; } | nbdcopy --flush - \"$uri\"",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The whole process group: nbdkit, the script, nbdcopy and sleep.
    let group = format!("-{}", child.id());
    let status = Command::new("kill").args(["-9", "--", &group]).status();
    assert!(status.is_ok_and(|s| s.success()));
    child.wait().unwrap();
    let client = s.server.client();
    assert!(
        client.image_list("vm", "").unwrap().is_empty(),
        "nothing is committed"
    );
    // A new run of the same backup replaces what the killed one left.
    let start = Instant::now();
    let out = loop {
        let out = s.run(
            &["image=killed", "mode=write", "size=48M"],
            "nbdcopy --flush disk.raw \"$uri\"",
        );
        let busy = String::from_utf8_lossy(&out.stderr).contains("being written");
        if out.status.success() || !busy || start.elapsed() > Duration::from_secs(30) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_ok("the new run", &out);
    let out = s.run(&["image=killed"], "nbdcopy \"$uri\" back.raw");
    assert_ok("reading it back", &out);
    assert!(std::fs::read(s.path("back.raw")).unwrap() == data);
}

#[test]
fn a_write_behind_the_end_or_a_short_disk_commits_nothing() {
    if let Some(why) = tools_missing() {
        return cannot_run(&why);
    }
    let s = Setup::new();
    // A write past the end (zeros fill the gap), then one behind it: refused,
    // naming the offset; the image is not committed.
    let out = s.run(
        &["image=w", "mode=write", "size=8M"],
        "qemu-io -f raw -c 'write -P 0x11 1M 64k' -c 'write -P 0x22 0 64k' -c flush \"$uri\"",
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("a write at offset 0 is behind the end already written (1114112)"),
        "{log}"
    );
    assert!(said.contains("write failed"), "{said}");
    // A disk declared larger than what the client writes is not committed.
    std::fs::write(s.path("disk.raw"), test_data(8 << 20, 82)).unwrap();
    let out = s.run(
        &["image=short", "mode=write", "size=16M"],
        "nbdcopy --flush disk.raw \"$uri\"",
    );
    // What `.close` logs may be lost: after --run, nbdkit can exit before
    // `.close` is done. What counts is that nothing is committed.
    assert!(out.status.success(), "{out:?}");
    assert!(s.server.client().image_list("vm", "").unwrap().is_empty());
    // A whole disk without the final flush (nbdcopy without --flush) is not
    // committed either: the plugin cannot tell it from a client cut off.
    let out = s.run(
        &["image=unflushed", "mode=write", "size=8M"],
        "nbdcopy disk.raw \"$uri\"",
    );
    assert!(out.status.success(), "{out:?}");
    let images = s.server.client().image_list("vm", "").unwrap();
    assert!(images.is_empty(), "{images:?}");
}

#[test]
fn a_client_that_leaves_early_leaves_the_image_resumable_and_resume_on_sends_only_the_rest() {
    if let Some(why) = tools_missing() {
        return cannot_run(&why);
    }
    let s = Setup::new();
    let data = test_data(48 << 20, 83);
    std::fs::write(s.path("disk.raw"), &data).unwrap();
    // nbdcopy from a pipe that ends with half the disk sent, no flush: the
    // client leaves, nbdkit stays up.
    let served = s.serve(&["image=vm1", "mode=write", "size=48M"]);
    sh(
        "the first half",
        &format!("head -c 25165824 disk.raw | nbdcopy - '{}'", served.uri),
        s.build.path(),
    );
    let line = served.wait_for("left incomplete at");
    drop(served);
    let kept = number_after(&line, "left incomplete at ");
    // All but the bytes after the last chunk boundary (at most a chunk's
    // maximum, 256 KiB) are kept.
    assert!(
        ((24 << 20) - (256 << 10)..=24 << 20).contains(&kept),
        "{line}"
    );
    let client = s.server.client();
    let (committed, incomplete) = client.image_list_all("vm", "").unwrap();
    assert!(committed.is_empty(), "nothing is committed: {committed:?}");
    let offsets: Vec<_> = incomplete
        .iter()
        .map(|i| (i.name.as_str(), i.resume_offset))
        .collect();
    assert_eq!(offsets, [("vm1", kept)]);

    // The same backup with resume=on: the bytes before `kept` are skipped,
    // only the rest is sent, and the image is the whole disk.
    let out = s.run(
        &["image=vm1", "mode=write", "size=48M", "resume=on", "-v"],
        "nbdcopy --flush disk.raw \"$uri\"",
    );
    assert_ok("the resumed run", &out);
    let log = String::from_utf8_lossy(&out.stderr);
    let done = log
        .lines()
        .find(|l| l.contains("committed vm/vm1"))
        .unwrap_or_else(|| panic!("no commit in the log: {log}"));
    assert_eq!(number_after(done, "resumed at "), kept, "{done}");
    let sent = number_after(done, "bytes, ");
    let rest = (48 << 20) - kept;
    assert!(
        sent <= rest + (256 << 10),
        "the resumed run sent {sent} bytes for the {rest} the server lacked: {done}"
    );
    let out = s.run(&["image=vm1"], "nbdcopy \"$uri\" back.raw");
    assert_ok("reading it back", &out);
    assert!(std::fs::read(s.path("back.raw")).unwrap() == data);

    // resume=on with nothing to resume starts a new image.
    std::fs::write(s.path("small.raw"), &data[..8 << 20]).unwrap();
    let out = s.run(
        &["image=vm2", "mode=write", "size=8M", "resume=on"],
        "nbdcopy --flush small.raw \"$uri\"",
    );
    assert_ok("resume=on of a new image", &out);
    let names: Vec<_> = client
        .image_list("vm", "")
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
