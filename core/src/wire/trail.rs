//! The replication trail: one entry per attempt, on either side.
//!
//! Side and result are enums here and short lowercase strings on the wire
//! and in the catalog (`"source"`, `"ok"`), as they were when they were
//! plain strings: old catalogs and old peers read the same bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::CopyId;
use crate::names::GroupName;

/// One attempt in the replication trail, on either side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailEntry {
    /// The copy (all zero for a refused partner check).
    pub copy: CopyId,
    /// Which side recorded it.
    pub side: TrailSide,
    /// The other server: the partner's name on a source, the source
    /// server's id on a target.
    pub peer: String,
    /// The image on this side (`container/name`; empty for a partner check).
    pub image: String,
    /// Seconds since the Unix epoch when the attempt began.
    pub started: u64,
    /// Seconds since the Unix epoch when it ended.
    pub ended: u64,
    /// The image's size.
    pub logical_bytes: u64,
    /// Chunk bytes sent (source) or received (target), as stored.
    pub sent_bytes: u64,
    /// Chunks sent or received.
    pub sent_chunks: u64,
    /// How the attempt ended.
    pub result: TrailResult,
    /// Why it failed (empty when it did not).
    pub reason: String,
    /// The storage group of the image on this side, which decides who sees
    /// the entry: users of that group and admins. Absent for partner checks
    /// and in entries older servers wrote: admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupName>,
    /// Refusals like this one from the same party since the previous one
    /// recorded, counted instead of written one by one (see docs).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeats: u64,
    /// (protocol 9) A cloud tier copy: `peer` is the cloud container
    /// (`GROUP/NAME`) on this server. Older clients see a source entry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tier: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Declares a closed set of trail words: an enum that is its lowercase
/// word on the wire, in the catalog and on a terminal.
macro_rules! trail_words {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(into = "&'static str", try_from = "String")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// The word that stands for it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word,)*
                }
            }
        }

        impl From<$name> for &'static str {
            fn from(v: $name) -> Self {
                v.as_str()
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                match s.as_str() {
                    $($word => Ok(Self::$variant),)*
                    _ => Err(format!("unknown {} {s:?}", stringify!($name))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

trail_words! {
    /// Which side of a copy recorded a trail entry.
    TrailSide {
        /// The server the image was copied from.
        Source = "source",
        /// The server that received the replica.
        Target = "target",
    }
}

trail_words! {
    /// How an attempt ended.
    TrailResult {
        /// The copy (or replica) is complete.
        Ok = "ok",
        /// It failed for good, or a partner was refused.
        Failed = "failed",
        /// It failed and will be tried again.
        Retrying = "retrying",
        /// It was cancelled before or while it ran.
        Cancelled = "cancelled",
        /// It was aborted and the target told to drop what it had.
        Aborted = "aborted",
        /// A partial replica outlived its retention on the target.
        Expired = "expired",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_the_strings_older_peers_and_catalogs_hold() {
        // An entry as older servers wrote it: side and result as strings.
        #[derive(Serialize)]
        struct Old<'a> {
            side: &'a str,
            result: &'a str,
        }
        #[derive(Deserialize, Serialize, PartialEq, Debug)]
        struct New {
            side: TrailSide,
            result: TrailResult,
        }
        let old = rmp_serde::to_vec_named(&Old {
            side: "target",
            result: "expired",
        })
        .unwrap();
        let new: New = rmp_serde::from_slice(&old).unwrap();
        assert_eq!(
            new,
            New {
                side: TrailSide::Target,
                result: TrailResult::Expired
            }
        );
        assert_eq!(rmp_serde::to_vec_named(&new).unwrap(), old);
        let bad = rmp_serde::to_vec_named(&Old {
            side: "sideways",
            result: "ok",
        })
        .unwrap();
        assert!(rmp_serde::from_slice::<New>(&bad).is_err());
    }
}
