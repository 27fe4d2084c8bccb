//! Building the C and C++ examples with the system compiler and running
//! them against a test server, as a DMA would run them.

use std::path::{Path, PathBuf};
use std::process::Command;

use tern_test_support::*;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Compiles one example the plainest way: cc -Iinclude file.c -L<libdir> -ltern.
pub fn cc(example: &str, out_dir: &Path) -> PathBuf {
    cc_source(&root().join("examples").join(example), out_dir)
}

pub fn cc_source(source: &Path, out_dir: &Path) -> PathBuf {
    let example = source.file_name().unwrap().to_str().unwrap();
    let out = out_dir.join(example.trim_end_matches(".c"));
    let lib = libtern_dir();
    let status = Command::new("cc")
        .arg(format!("-I{}", root().join("include").display()))
        .arg(source)
        .args(["-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-ltern")
        .status()
        .expect("running cc");
    assert!(status.success(), "cc {example} failed");
    out
}

pub fn run(
    server: &TestServer,
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    run_wrapped(server, None, program, args, stdin)
}

pub fn run_wrapped(
    server: &TestServer,
    wrapper: Option<&[&str]>,
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    run_at(server, &server.address(), wrapper, program, args, stdin)
}

/// Runs an example against `address` (the server, or a proxy in front of it).
pub fn run_at(
    server: &TestServer,
    address: &str,
    wrapper: Option<&[&str]>,
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    let mut cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.arg(address)
        .args(args)
        .env("TERN_PASSWORD", PASSWORD)
        .env("TERN_FINGERPRINT", server.fingerprint().to_string())
        .env("TERN_CONFIG_DIR", server.data().join("client-config"));
    run_with_stdin(cmd, stdin)
}

pub fn assert_ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}
