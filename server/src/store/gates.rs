//! The gates that keep GC and data operations apart, one per storage group
//! (striped: group `g` has gate `g % STRIPES`, and group ids count up from
//! 1, so the first 64 groups never share one). A data operation holds its
//! group's gate shared; GC of a group holds that gate alone exclusively, so
//! a GC in one group does not pause reads and writes in another.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

const STRIPES: usize = 64;

pub(super) struct Gates {
    stripes: [RwLock<()>; STRIPES],
}

impl Gates {
    pub(super) fn new() -> Self {
        Self {
            stripes: std::array::from_fn(|_| RwLock::new(())),
        }
    }

    fn of(&self, group: u32) -> &RwLock<()> {
        &self.stripes[group as usize % STRIPES]
    }

    /// Held by every data operation on `group`.
    pub(super) fn shared(&self, group: u32) -> RwLockReadGuard<'_, ()> {
        self.of(group).read().unwrap_or_else(|e| e.into_inner())
    }

    /// Held by GC of `group`: no data operation on it runs meanwhile.
    pub(super) fn exclusive(&self, group: u32) -> RwLockWriteGuard<'_, ()> {
        self.of(group).write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every gate shared (fsck of the whole store), taken in stripe order.
    pub(super) fn all_shared(&self) -> Vec<RwLockReadGuard<'_, ()>> {
        self.stripes
            .iter()
            .map(|g| g.read().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }

    /// Every gate exclusive (repair), taken in stripe order.
    pub(super) fn all_exclusive(&self) -> Vec<RwLockWriteGuard<'_, ()>> {
        self.stripes
            .iter()
            .map(|g| g.write().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }
}
