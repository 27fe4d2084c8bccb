//! The session layer under every message: sequence numbers and cumulative
//! acknowledgements.
//!
//! Each direction numbers its frames from 1. A receiver delivers a frame only if
//! its sequence number is the next one expected, and drops anything it has
//! already seen, so a frame resent after a reconnect is never delivered twice.
//! Every outgoing frame carries the highest sequence number received in order,
//! which lets the peer release its copies of those frames.

use crate::wire::{Envelope, Msg};

/// Sequence state of one side of a session.
#[derive(Debug, Default, Clone)]
pub struct SeqState {
    /// Sequence number of the last frame sent.
    sent: u64,
    /// Highest sequence number received in order.
    received: u64,
    /// Highest sequence number the peer has acknowledged.
    peer_acked: u64,
}

/// What to do with a received frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Receipt {
    /// The next frame in order: deliver it.
    Deliver,
    /// Already delivered once: drop it.
    Duplicate,
    /// A gap before it: a frame was lost, which an ordered connection cannot do.
    Gap { expected: u64, got: u64 },
}

impl SeqState {
    /// Wraps a message in an envelope with the next sequence number.
    pub fn stamp(&mut self, req: u64, msg: Msg) -> Envelope {
        self.sent += 1;
        Envelope {
            seq: self.sent,
            ack: self.received,
            req,
            msg,
        }
    }

    /// Records a received envelope and says whether to deliver it.
    pub fn receive(&mut self, env: &Envelope) -> Receipt {
        self.peer_acked = self.peer_acked.max(env.ack.min(self.sent));
        if env.seq <= self.received {
            return Receipt::Duplicate;
        }
        if env.seq != self.received + 1 {
            return Receipt::Gap {
                expected: self.received + 1,
                got: env.seq,
            };
        }
        self.received = env.seq;
        Receipt::Deliver
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Frames sent that the peer has not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.sent - self.peer_acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped_and_gaps_reported() {
        let mut a = SeqState::default();
        let mut b = SeqState::default();
        let e1 = a.stamp(1, Msg::Ping);
        let e2 = a.stamp(2, Msg::Ping);
        let e3 = a.stamp(3, Msg::Ping);
        assert_eq!(b.receive(&e1), Receipt::Deliver);
        assert_eq!(b.receive(&e1), Receipt::Duplicate);
        assert_eq!(
            b.receive(&e3),
            Receipt::Gap {
                expected: 2,
                got: 3
            }
        );
        assert_eq!(b.receive(&e2), Receipt::Deliver);
        assert_eq!(b.receive(&e3), Receipt::Deliver);
        let reply = b.stamp(1, Msg::Pong);
        assert_eq!(reply.ack, 3);
        assert_eq!(a.unacked(), 3);
        a.receive(&reply);
        assert_eq!(a.unacked(), 0);
    }
}
