//! Objects in a cloud group's bucket that no record of the group names:
//! an upload whose record a crash lost (the staged pack goes up again under
//! a new name), a PUT that timed out on our side but landed, the uploads of
//! a lost machine after its last catalog save. Nothing reads them; only a
//! LIST finds them, so only `ternd fsck` (which counts them) and `ternd gc`
//! (which deletes those older than the grace period) look, never the steady
//! state.
//!
//! Packs and recipe objects share the form of their names (32 hex digits)
//! at the prefix's top. An object is an orphan only if, after the LIST,
//! neither the journal (live or doomed packs), nor the saved catalog state
//! (recipe objects), nor an upload in flight names it: an upload puts its
//! name in flight before its PUT and takes it out after the journal or the
//! saved state has it, so an object the LIST saw is named by one of them
//! whenever its upload is still ours.

use std::collections::HashSet;
use std::io;
use std::time::Duration;

use super::{lock, now_unix, Inner};
use crate::store::hex;

/// An object no record of the group names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub name: String,
    pub bytes: u64,
    /// Unix seconds, as the bucket reports them.
    pub modified: u64,
}

impl Inner {
    /// The orphans in the group's bucket: one LIST of the prefix. Only
    /// names of the group's own form (32 hex digits) are considered: the key
    /// object, the lease and the catalog objects are named otherwise.
    pub(super) fn orphans(&self) -> io::Result<Vec<Orphan>> {
        let listed = self.bucket.list_meta("")?;
        // After the LIST (see the module's text): in flight first, then the
        // journal, so an upload between the two is in one of them.
        let mut known: HashSet<String> = lock(&self.in_flight).iter().map(|n| hex(n)).collect();
        {
            let journal = lock(&self.journal);
            known.extend(journal.live().values().map(|e| hex(&e.name)));
            known.extend(journal.doomed().iter().map(|d| hex(&d.name)));
        }
        known.extend(lock(&self.saved).recipes.values().map(|r| hex(&r.name)));
        Ok(listed
            .into_iter()
            .filter(|o| is_object_name(&o.name) && !known.contains(&o.name))
            .map(|o| Orphan {
                name: o.name,
                bytes: o.size,
                modified: o.modified,
            })
            .collect())
    }

    /// Deletes the orphans last modified more than `grace` ago; how many.
    /// Younger ones wait for a later run: an upload of another process on
    /// this prefix (which the lease should have stopped) or a PUT still
    /// landing is not taken for garbage.
    pub(super) fn delete_orphans(&self, grace: Duration) -> io::Result<u64> {
        if let Some(why) = lock(&self.taken_over).clone() {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
        }
        let cutoff = now_unix().saturating_sub(grace.as_secs());
        let mut deleted = 0;
        for o in self.orphans()? {
            if o.modified <= cutoff {
                self.bucket.delete(&o.name)?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            tracing::info!(
                "deleted {deleted} orphan objects from {}",
                self.bucket.spec().location()
            );
        }
        Ok(deleted)
    }
}

/// A pack object's name: 32 lowercase hex digits.
fn is_object_name(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::is_object_name;

    #[test]
    fn only_names_of_the_groups_own_form_are_candidates() {
        assert!(is_object_name("0123456789abcdef0123456789abcdef"));
        assert!(!is_object_name("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_object_name("tern-lease"));
        assert!(!is_object_name("0123456789abcdef0123456789abcde"));
    }
}
