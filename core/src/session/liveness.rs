//! Whether the peer is there: what a server asks before it takes an image
//! from a session whose client may have vanished with its connections open.

use std::sync::atomic::Ordering;

use super::{lock, Session};

/// A moment of a session, for [`Session::answered_since`].
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    at_ms: u64,
    sent: u64,
    unacked: bool,
}

/// The clock of [`Session::answered_since`]: milliseconds since the first use.
pub(super) fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    epoch.elapsed().as_millis() as u64
}

impl Session {
    /// Where the peer stood now, to ask later with
    /// [`answered_since`](Self::answered_since).
    pub fn mark(&self) -> Mark {
        let st = lock(&self.state);
        let sent = st.next_seq.saturating_sub(1);
        Mark {
            at_ms: clock_ms(),
            sent,
            unacked: st.peer_acked < sent,
        }
    }

    /// True if the peer has shown since `mark` that it is there: it
    /// acknowledged every frame sent before the mark, or, if it had them
    /// all then, something arrived from it (each connection brings at least
    /// a heartbeat every [`HEARTBEAT`](super::HEARTBEAT)). Bytes a dead peer left in the
    /// network still arrive, but they do not acknowledge what it never saw.
    pub fn answered_since(&self, mark: &Mark) -> bool {
        if mark.unacked {
            lock(&self.state).peer_acked >= mark.sent
        } else {
            self.heard.load(Ordering::Relaxed) >= mark.at_ms
        }
    }

    /// True while a connection holds a frame the application has not taken
    /// yet: the peer is not silent, this side is behind (and reads nothing
    /// meanwhile, so [`answered_since`](Self::answered_since) cannot tell).
    pub fn is_delivering(&self) -> bool {
        self.delivering.load(Ordering::SeqCst) > 0
    }
}
