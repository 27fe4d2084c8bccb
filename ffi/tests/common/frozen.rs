//! A frozen server and a writer that runs into it.

use tern::*;
use tern_test_support::*;

/// Freezes the server (SIGSTOP): connections stay open and nothing answers,
/// the outage a call cannot tell from a slow link. Thawed on drop.
pub struct Frozen(u32);

impl Frozen {
    pub fn server(server: &TestServer) -> Self {
        let pid = server.child.as_ref().expect("running").id();
        signal(pid, "-STOP");
        // kill(2) returns once the signal is sent; a thread running on
        // another core stops a moment later. Frozen means every thread is.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(std::time::Instant::now() < deadline, "ternd did not stop");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

/// True when every thread of `pid` is stopped (state `T` in /proc).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    })
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Writes until a call fails; returns that status.
pub fn write_until_refused(img: usize) -> tern_status {
    let data = vec![0x42u8; 1 << 20];
    for i in 0..4096u32 {
        // Unique data: every chunk has to cross.
        let mut piece = data.clone();
        piece[..4].copy_from_slice(&i.to_le_bytes());
        for (n, b) in piece.iter_mut().enumerate().skip(4) {
            *b = (n as u32).wrapping_mul(2654435761).wrapping_add(i) as u8;
        }
        let st = unsafe { tern_image_write(img as *mut tern_image, piece.as_ptr(), piece.len()) };
        if st != tern_status::TERN_OK {
            return st;
        }
    }
    tern_status::TERN_OK
}
