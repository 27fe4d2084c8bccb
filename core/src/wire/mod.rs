//! The tern wire protocol: frames (see [`frame`]) carrying messages (see [`msg`]).
//!
//! `docs/protocol.md` describes both; keep it true when this changes.

pub mod catalog;
pub mod feature;
pub mod frame;
pub mod groups;
pub mod msg;
pub mod paging;
pub mod password;
pub mod replication;
pub mod shaping;
pub mod tier;
pub mod trail;

pub use catalog::*;
pub use feature::{Feature, Missing};
pub use frame::{Envelope, Frame, FrameError, FrameLimits, MAX_HEADER_LEN, MAX_PAYLOAD_LEN};
pub use groups::{CloudSettings, GroupInfo, GroupSettings};
pub use msg::*;
pub use paging::{Listing, MAX_CURSOR_LEN, PAGE_BYTES};
pub use password::Password;
pub use replication::*;
pub use shaping::*;
pub use tier::{glob_match, TierMode, TierPolicy, TierStatus};
pub use trail::{TrailEntry, TrailResult, TrailSide};

/// The oldest protocol version this build speaks.
pub const PROTOCOL_MIN: u16 = 1;
/// The newest protocol version this build speaks. What each version added
/// is a [`Feature`].
pub const PROTOCOL_MAX: u16 = 9;

/// The largest DMA properties an image may carry, in bytes. They travel in
/// a frame header (at most [`MAX_HEADER_LEN`]) and are kept in the catalog;
/// clients refuse larger ones before sending, and servers refuse them too.
pub const MAX_PROPS_LEN: usize = 64 << 10;

/// Features this build offers; the session uses the intersection of both sides'.
pub const FEATURES: &[&str] = &["dedup", "passthrough"];

/// Picks the highest version both sides speak.
pub fn negotiate_version(peer_min: u16, peer_max: u16) -> Option<u16> {
    let hi = PROTOCOL_MAX.min(peer_max);
    let lo = PROTOCOL_MIN.max(peer_min);
    (lo <= hi).then_some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_negotiate_to_the_highest_common() {
        assert_eq!(negotiate_version(1, PROTOCOL_MAX), Some(PROTOCOL_MAX));
        assert_eq!(negotiate_version(1, 5), Some(5));
        assert_eq!(negotiate_version(PROTOCOL_MAX + 1, PROTOCOL_MAX + 3), None);
    }
}
