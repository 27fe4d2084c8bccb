//! Listings in pages (protocol 5): no answer outgrows a frame, whatever the
//! data. The first page answers the listing's own request; each answer
//! carries `next`, a cursor, while more remain, and `ListMore` with that
//! cursor asks for the following page, answered like the first.
//!
//! A cursor is the key of the last item sent, in an order where keys
//! ascend as the listing goes; items added or removed between pages are
//! neither sent twice nor skipped unless they moved across the cursor.

use serde::{Deserialize, Serialize};

use crate::names::ContainerName;

/// The most encoded bytes of items in one page: half a header, so that the
/// rest of the answer always fits.
pub const PAGE_BYTES: usize = 512 << 10;
/// The longest cursor a peer may send or receive.
pub const MAX_CURSOR_LEN: usize = 1024;

/// Which listing a `ListMore` continues, with what its first request said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Listing {
    /// `ContainerList`.
    Containers,
    /// `ImageList`: committed images, then incomplete ones.
    Images {
        /// The container.
        container: ContainerName,
        /// Only names that start with this.
        prefix: String,
    },
    /// `PartnerList`.
    Partners,
    /// `CopyList`, newest first.
    Copies,
    /// `TrailGet`, newest first; `max` counts what is still wanted.
    Trail {
        /// Entries still wanted.
        max: u32,
    },
    /// `EventsGet`, oldest first; `max` counts what is still wanted.
    Events {
        /// The import container.
        container: ContainerName,
        /// Events still wanted.
        max: u32,
    },
    /// `AuditGet`, oldest first (protocol 6).
    Audit {
        /// Only acts at or after this time (unix seconds).
        since: u64,
    },
}

/// Picks, from `items` (key and item, in any order), those whose key
/// comes after `after`, in key order, up to `budget` encoded bytes (at
/// least one); returns them and the cursor of the next page if more
/// remain. `budget` None: everything (a peer of an older protocol).
pub fn page<T: Serialize>(
    items: Vec<(String, T)>,
    after: Option<&str>,
    budget: Option<usize>,
) -> (Vec<T>, Option<String>) {
    let mut items: Vec<(String, T)> = items
        .into_iter()
        .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let Some(budget) = budget else {
        return (items.into_iter().map(|(_, t)| t).collect(), None);
    };
    let mut used = 0usize;
    let mut out = Vec::new();
    let mut last = None;
    let mut rest = items.into_iter().peekable();
    while let Some((key, item)) = rest.next_if(|(_, item)| {
        let len = rmp_serde::to_vec_named(item).map_or(budget, |b| b.len());
        let fits = used == 0 || used + len <= budget;
        if fits {
            used += len;
        }
        fits
    }) {
        out.push(item);
        last = Some(key);
    }
    let next = rest.peek().is_some().then_some(last).flatten();
    (out, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(n: usize, len: usize) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("{i:04}"), vec![1u8; len]))
            .collect()
    }

    #[test]
    fn pages_cover_every_item_once_within_the_budget() {
        let items = keyed(100, 1000);
        let mut after: Option<String> = None;
        let mut seen = 0;
        loop {
            let (got, next) = page(items.clone(), after.as_deref(), Some(10_000));
            assert!(!got.is_empty());
            let bytes: usize = got
                .iter()
                .map(|v| rmp_serde::to_vec(v).unwrap().len())
                .sum();
            assert!(bytes <= 10_000, "{bytes}");
            seen += got.len();
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, 100);
    }

    #[test]
    fn an_item_bigger_than_the_budget_still_goes_alone() {
        let (got, next) = page(keyed(3, 5000), None, Some(1000));
        assert_eq!(got.len(), 1);
        assert_eq!(next.as_deref(), Some("0000"));
        let (all, next) = page(keyed(3, 5000), None, None);
        assert_eq!((all.len(), next), (3, None));
    }
}
