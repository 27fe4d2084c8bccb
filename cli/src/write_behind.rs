//! A restored file written behind: writeback of each 32 MiB starts as soon
//! as it is written, and the 32 MiB before it is waited for, so the disk
//! works while the restore fetches and decodes the next bytes, dirty pages
//! stay bounded, and the sync that makes the file durable at the end finds
//! little left to write (without it, a restore waited for the whole image's
//! writeback at the end, as `cp` followed by `sync` does). Seed export has
//! its own hint (writeback of the whole file after each segment, never
//! waited for): through this writer it measured 9% slower, as its one
//! thread then waits for the disk.

use std::fs::File;
use std::io::{self, Write};
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;

/// Bytes written between two writeback requests.
const WINDOW: u64 = 32 << 20;

/// Start writeback of a range; start it and wait for all of it.
#[cfg(target_os = "linux")]
const START: libc::c_uint = libc::SYNC_FILE_RANGE_WRITE;
#[cfg(target_os = "linux")]
const FINISH: libc::c_uint = libc::SYNC_FILE_RANGE_WAIT_BEFORE
    | libc::SYNC_FILE_RANGE_WRITE
    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
#[cfg(not(target_os = "linux"))]
const START: libc::c_uint = 0;
#[cfg(not(target_os = "linux"))]
const FINISH: libc::c_uint = 0;

pub struct WriteBehind {
    file: File,
    window: u64,
    written: u64,
    /// Where the bytes not yet handed to writeback begin, and where the
    /// window handed over last began.
    started: u64,
    previous: u64,
}

impl WriteBehind {
    pub fn new(file: File) -> Self {
        Self::with_window(file, WINDOW)
    }

    fn with_window(file: File, window: u64) -> Self {
        Self {
            file,
            window,
            written: 0,
            started: 0,
            previous: 0,
        }
    }

    #[cfg(target_os = "linux")]
    fn sync_range(&self, from: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
        let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
            return Err(io::Error::other("a file offset past i64"));
        };
        // SAFETY: a plain system call on an open descriptor this owns; no
        // memory is passed.
        let rc = unsafe { libc::sync_file_range(self.file.as_raw_fd(), from, len, flags) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Elsewhere there is no such call: the final sync does all of it.
    #[cfg(not(target_os = "linux"))]
    fn sync_range(&self, _from: u64, _len: u64, _flags: libc::c_uint) -> io::Result<()> {
        Ok(())
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= self.window {
            // Errors count: a failed writeback must fail the restore, not
            // wait for the final sync (which may not see it again).
            self.sync_range(self.started, self.written - self.started, START)?;
            if self.started > self.previous {
                self.sync_range(self.previous, self.started - self.previous, FINISH)?;
            }
            self.previous = self.started;
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes of odd sizes across many windows: every window is handed to
    /// writeback and waited for, and the file holds exactly what was written.
    #[test]
    fn a_file_written_behind_holds_what_was_written() {
        let path = std::env::temp_dir().join(format!("tern-write-behind-{}", std::process::id()));
        let mut w = WriteBehind::with_window(File::create(&path).unwrap(), 4096);
        let data: Vec<u8> = (0..1_000_003u32)
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        for piece in data.chunks(3001) {
            w.write_all(piece).unwrap();
        }
        w.flush().unwrap();
        assert!(
            w.started > 990_000 && w.previous > 980_000,
            "{} {}",
            w.started,
            w.previous
        );
        drop(w);
        let back = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(back == data);
    }

    /// A descriptor that cannot be synced (not a file) fails the write
    /// rather than hiding the error.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_writeback_request_fails_the_write() {
        let (_, write_end) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(write_end));
        let mut w = WriteBehind::with_window(file, 16);
        assert!(w.write_all(&[1u8; 64]).is_err());
    }
}
