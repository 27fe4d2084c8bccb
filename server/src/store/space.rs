//! The space reserve: new data may not take the last `reserved_space` bytes
//! of the filesystem, so that deleting images (a catalog transaction) and GC
//! (which copies live chunks before it deletes a pack) still work when
//! backups have filled the disk. ZFS keeps its "slop space" for the same reason.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{lock, Result, StoreError};

/// Bytes appended between two measurements of the free space.
const MEASURE_EVERY: u64 = 4 << 20;

/// The default reserve: enough for catalog transactions and for GC to
/// rewrite a pack, never more than a twentieth of the filesystem.
pub const DEFAULT_RESERVE: u64 = 256 << 20;

/// Free space on the data directory's filesystem, against the reserve.
pub struct FreeSpace {
    root: PathBuf,
    reserve: AtomicU64,
    /// Bytes that may still be appended before the next measurement.
    budget: Mutex<u64>,
}

impl FreeSpace {
    /// The default reserve, capped like [`FreeSpace::set_reserve`].
    pub fn new(root: &Path) -> Self {
        let cap = statvfs(root).map_or(0, |(_, total)| total / 20);
        Self {
            root: root.to_path_buf(),
            reserve: AtomicU64::new(DEFAULT_RESERVE.min(cap)),
            budget: Mutex::new(0),
        }
    }

    /// Sets the reserve, capped at a twentieth of the filesystem's size so
    /// that a small filesystem stays usable.
    pub fn set_reserve(&self, bytes: u64) -> Result<()> {
        let (_, total) = statvfs(&self.root)?;
        self.reserve.store(bytes.min(total / 20), Ordering::Relaxed);
        *lock(&self.budget) = 0;
        Ok(())
    }

    pub fn reserve(&self) -> u64 {
        self.reserve.load(Ordering::Relaxed)
    }

    /// Bytes free for ternd now.
    pub fn free(&self) -> Result<u64> {
        Ok(statvfs(&self.root)?.0)
    }

    /// (bytes free, total bytes) of the filesystem.
    pub fn filesystem(&self) -> Result<(u64, u64)> {
        Ok(statvfs(&self.root)?)
    }

    /// Bytes in use on the filesystem, by anything.
    pub fn used(&self) -> Result<u64> {
        let st = raw_statvfs(&self.root)?;
        let unit = st.f_frsize as u64;
        Ok((st.f_blocks as u64)
            .saturating_sub(st.f_bfree as u64)
            .saturating_mul(unit))
    }

    /// Refuses `bytes` of new data when they would take reserved space.
    pub fn check(&self, bytes: u64) -> Result<()> {
        let mut budget = lock(&self.budget);
        if *budget >= bytes {
            *budget -= bytes;
            return Ok(());
        }
        let free = self.free()?;
        let reserve = self.reserve();
        let room = free.saturating_sub(reserve);
        if room < bytes {
            *budget = 0;
            return Err(StoreError::Full { free, reserve });
        }
        *budget = (room - bytes).min(MEASURE_EVERY);
        Ok(())
    }
}

/// (bytes available to an unprivileged writer, total bytes) of the
/// filesystem holding `path`.
pub fn statvfs(path: &Path) -> io::Result<(u64, u64)> {
    let st = raw_statvfs(path)?;
    let unit = st.f_frsize as u64;
    Ok((
        (st.f_bavail as u64).saturating_mul(unit),
        (st.f_blocks as u64).saturating_mul(unit),
    ))
}

fn raw_statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call, and `st`
    // is a properly sized, writable statvfs that the call fills in.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st
    };
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_data_may_not_take_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let space = FreeSpace::new(dir.path());
        space.set_reserve(0).unwrap();
        space.check(1 << 20).unwrap();
        let free = space.free().unwrap();
        // A reserve of everything that is free (if the cap allows it).
        space.set_reserve(u64::MAX).unwrap();
        let reserve = space.reserve();
        assert!(reserve > 0);
        let over = (free.saturating_sub(reserve)) + (64 << 20);
        assert!(matches!(space.check(over), Err(StoreError::Full { .. })));
    }
}
