//! Which request each frame from the server answers, and how much more that
//! request may receive.
//!
//! A server may only answer what the client asked: every request is opened
//! here with what it is due (so many answer frames of at most so many
//! payload bytes, or any number of refusals of its data frames). A frame
//! for a request that is not waiting, past what its request is due, or
//! bigger than it can use breaks the protocol and ends the session, so a
//! hostile or broken server cannot make the client hold more than its
//! requests allow.

use std::collections::{BTreeMap, HashMap};

use tern_core::wire::{Frame, Msg, MAX_PAYLOAD_LEN};
use tokio::sync::mpsc;

use super::msg_name;

/// Requests given up by their caller whose answers are still counted; past
/// this many the oldest is forgotten (its late answers then end the session,
/// but the server answers in order, long before).
const MAX_RETIRED: usize = 4096;

/// What a request may still receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Up to `frames` answers, each with at most `payload` bytes; an
    /// `Error` ends the request.
    Answers { frames: usize, payload: usize },
    /// The server's refusals of an image's answerless data frames: any
    /// number of `Error`s without payload; the first is kept.
    Refusals,
}

impl Due {
    /// What the answers to `msg` may be: one frame without payload, except
    /// for the chunks a `ChunkGet` asks for.
    pub fn of(msg: &Msg) -> Self {
        match msg {
            Msg::ChunkGet { offsets, .. } => Due::Answers {
                frames: offsets.len(),
                payload: MAX_PAYLOAD_LEN as usize,
            },
            _ => Due::ONE,
        }
    }

    /// A single answer without payload.
    pub const ONE: Self = Due::Answers {
        frames: 1,
        payload: 0,
    };

    /// Counts `frame` against what is due; the error says how it breaks
    /// the protocol.
    fn take(&mut self, frame: &Frame) -> Result<(), String> {
        let is_error = matches!(frame.env.msg, Msg::Error { .. });
        match self {
            Due::Answers { frames, payload } => {
                if *frames == 0 {
                    return Err(format!(
                        "{} for request {}, which has had all its answers",
                        msg_name(&frame.env.msg),
                        frame.env.req
                    ));
                }
                if frame.payload.len() > *payload {
                    return Err(format!(
                        "a {}-byte payload with {} where at most {} can be used",
                        frame.payload.len(),
                        msg_name(&frame.env.msg),
                        payload
                    ));
                }
                *frames = if is_error { 0 } else { *frames - 1 };
                Ok(())
            }
            Due::Refusals if is_error && frame.payload.is_empty() => Ok(()),
            Due::Refusals => Err(format!(
                "{} answering an image's data frame",
                msg_name(&frame.env.msg)
            )),
        }
    }

    fn done(&self) -> bool {
        matches!(self, Due::Answers { frames: 0, .. })
    }

    /// Frames a caller may have to hold at once.
    fn capacity(&self) -> usize {
        match self {
            Due::Answers { frames, .. } => (*frames).max(1),
            Due::Refusals => 1,
        }
    }
}

struct Route {
    tx: mpsc::Sender<Frame>,
    due: Due,
}

/// The requests of a session that may still be answered.
#[derive(Default)]
pub struct Router {
    live: HashMap<u64, Route>,
    /// Requests whose caller went away (a cancel, a time limit, a seek, an
    /// answerless send): what they are still due, counted and dropped.
    retired: BTreeMap<u64, Due>,
}

impl Router {
    /// A request `req` that is due `due`; its answers arrive on the receiver.
    pub fn open(&mut self, req: u64, due: Due) -> mpsc::Receiver<Frame> {
        let (tx, rx) = mpsc::channel(due.capacity());
        self.live.insert(req, Route { tx, due });
        rx
    }

    /// A request nobody waits on (an abort, a release): its answer is
    /// counted and dropped.
    pub fn unheard(&mut self, req: u64, due: Due) {
        self.retire(req, due);
    }

    /// The caller of `req` is gone: what it is still due is dropped on arrival.
    pub fn close(&mut self, req: u64) {
        if let Some(route) = self.live.remove(&req) {
            self.retire(req, route.due);
        }
    }

    fn retire(&mut self, req: u64, due: Due) {
        if due.done() {
            return;
        }
        self.retired.insert(req, due);
        while self.retired.len() > MAX_RETIRED {
            self.retired.pop_first();
        }
    }

    /// Hands `frame` to its request's caller, or drops it if the caller is
    /// gone; the error says how the frame breaks the protocol.
    pub fn route(&mut self, frame: Frame) -> Result<(), String> {
        let req = frame.env.req;
        if let Some(route) = self.live.get_mut(&req) {
            route.due.take(&frame)?;
            // Never full for answers (room for all that is due); for
            // refusals the first is kept and the rest are dropped.
            let _ = route.tx.try_send(frame);
            return Ok(());
        }
        if let Some(due) = self.retired.get_mut(&req) {
            due.take(&frame)?;
            if due.done() {
                self.retired.remove(&req);
            }
            return Ok(());
        }
        Err(format!(
            "{} for request {req}, which the client is not waiting on",
            msg_name(&frame.env.msg)
        ))
    }

    /// The session ended: every waiting caller wakes (its channel closes).
    pub fn clear(&mut self) {
        self.live.clear();
        self.retired.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::wire::{Envelope, ErrorKind};

    fn frame(req: u64, msg: Msg, payload: usize) -> Frame {
        Frame {
            env: Envelope {
                seq: 1,
                ack: 0,
                req,
                msg,
            },
            payload: vec![0; payload],
        }
    }

    fn error() -> Msg {
        Msg::Error {
            kind: ErrorKind::Internal,
            message: "no".into(),
        }
    }

    #[test]
    fn a_request_gets_what_it_is_due_and_nothing_more() {
        let mut r = Router::default();
        let mut rx = r.open(1, Due::ONE);
        r.route(frame(1, Msg::Ok, 0)).unwrap();
        assert!(rx.try_recv().is_ok());
        assert!(r.route(frame(1, Msg::Ok, 0)).is_err());
        assert!(r.route(frame(7, error(), 0)).is_err(), "never asked");
        let _rx = r.open(2, Due::ONE);
        assert!(r.route(frame(2, Msg::Ok, 1)).is_err(), "payload unusable");
    }

    #[test]
    fn an_error_ends_a_request_and_a_gone_caller_is_counted_not_kept() {
        let mut r = Router::default();
        let due = Due::Answers {
            frames: 3,
            payload: 10,
        };
        let rx = r.open(1, due);
        r.route(frame(1, Msg::Pong, 10)).unwrap();
        drop(rx);
        r.close(1);
        r.route(frame(1, Msg::Pong, 10)).unwrap();
        r.route(frame(1, error(), 0)).unwrap();
        assert!(r.route(frame(1, Msg::Pong, 0)).is_err());
        r.unheard(2, Due::ONE);
        r.route(frame(2, Msg::Ok, 0)).unwrap();
        assert!(r.route(frame(2, Msg::Ok, 0)).is_err());
    }

    #[test]
    fn refusals_keep_the_first_and_allow_nothing_else() {
        let mut r = Router::default();
        let mut rx = r.open(1, Due::Refusals);
        for _ in 0..100 {
            r.route(frame(1, error(), 0)).unwrap();
        }
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "only the first is held");
        assert!(r.route(frame(1, Msg::Ok, 0)).is_err());
    }
}
