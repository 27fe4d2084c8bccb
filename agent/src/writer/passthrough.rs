//! Passthrough: the image's raw bytes go to the server in frames of up to
//! [`RAW_FRAME`]; the server chunks, dedups and compresses them. For clients
//! with little CPU.

use std::io::Read;

use tern_core::wire::{Handle, Msg};

use super::SentLog;
use crate::session::Sender;
use crate::ClientError;

/// Largest raw write.
const RAW_FRAME: usize = 1 << 20;

pub(super) struct Passthrough {
    sender: Sender,
    handle: Handle,
    sent: SentLog,
    /// Bytes not yet sent: less than one frame.
    raw: Vec<u8>,
}

impl Passthrough {
    pub(super) fn new(sender: Sender, handle: Handle, sent: SentLog) -> Self {
        Self {
            sender,
            handle,
            sent,
            raw: Vec::new(),
        }
    }

    pub(super) fn write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.raw.extend_from_slice(data);
        self.send_full_frames()
    }

    /// Writes everything `source` yields, a frame at a time.
    pub(super) fn copy_from(
        &mut self,
        mut source: impl Read,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, ClientError> {
        let mut total = 0;
        loop {
            let n = (&mut source)
                .take(RAW_FRAME as u64)
                .read_to_end(&mut self.raw)?;
            if n == 0 {
                return Ok(total);
            }
            self.send_full_frames()?;
            progress(n as u64);
            total += n as u64;
        }
    }

    /// Sends what is left.
    pub(super) fn finish(&mut self) -> Result<(), ClientError> {
        let rest = std::mem::take(&mut self.raw);
        if rest.is_empty() {
            return Ok(());
        }
        self.send(rest)
    }

    fn send_full_frames(&mut self) -> Result<(), ClientError> {
        while self.raw.len() >= RAW_FRAME {
            let rest = self.raw.split_off(RAW_FRAME);
            let frame = std::mem::replace(&mut self.raw, rest);
            self.send(frame)?;
        }
        Ok(())
    }

    fn send(&mut self, frame: Vec<u8>) -> Result<(), ClientError> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).0 += frame.len() as u64;
        self.sender.send(
            Msg::ImageWriteRaw {
                handle: self.handle,
            },
            frame,
        )
    }
}
