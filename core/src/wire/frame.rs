//! Frames: the unit that crosses a connection.
//!
//! ```text
//! u32 BE header length | u32 BE payload length | header (rmp-serde Envelope) | payload (raw bytes)
//! ```
//! Both lengths are checked against fixed bounds before anything is allocated.

use std::io;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::msg::Msg;

/// The largest header a peer may send.
pub const MAX_HEADER_LEN: u32 = 1 << 20;
/// The largest payload a peer may send: a maximal chunk plus slack.
pub const MAX_PAYLOAD_LEN: u32 = (4 << 20) + 4096;

/// The header of every frame: sequencing (Secure Connect resends and
/// acknowledges by `seq` and `ack`), the request it belongs to, the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's sequence number for this frame (starting at 1).
    pub seq: u64,
    /// The highest sequence number the sender has received in order.
    pub ack: u64,
    /// The request this frame belongs to (0 for none).
    pub req: u64,
    /// The message.
    pub msg: Msg,
}

/// How large a frame a reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// The largest header.
    pub header: u32,
    /// The largest payload.
    pub payload: u32,
}

impl FrameLimits {
    /// What any peer may send once it is trusted.
    pub const FULL: Self = Self {
        header: MAX_HEADER_LEN,
        payload: MAX_PAYLOAD_LEN,
    };
    /// What an unauthenticated peer may send: Hello, Login, Join and Ping
    /// fit easily, and a header that decodes to much more than it weighs
    /// (a million empty strings) cannot be built in 4 KiB.
    pub const BEFORE_LOGIN: Self = Self {
        header: 4 << 10,
        payload: 4 << 10,
    };
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The header: sequence, acknowledgement, request and message.
    pub env: Envelope,
    /// Bulk bytes beside the header (chunk data), never re-encoded.
    pub payload: Vec<u8>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// A length field exceeds its bound.
    #[error("frame {what} length {len} exceeds the limit of {limit}")]
    TooLarge {
        /// "header" or "payload".
        what: &'static str,
        /// The length the frame claims.
        len: u32,
        /// The largest allowed.
        limit: u32,
    },
    /// The header is not a valid message.
    #[error("undecodable frame header: {0}")]
    Header(String),
}

impl FrameError {
    /// True when the peer simply went away rather than misbehaved.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, FrameError::Io(e) if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ))
    }
}

impl Frame {
    /// A frame of a header and a payload.
    pub fn new(env: Envelope, payload: Vec<u8>) -> Self {
        Self { env, payload }
    }

    /// Encodes the header and length prefix; the payload is written beside it.
    pub fn encode_head(&self) -> Result<Vec<u8>, FrameError> {
        self.encode_head_with_payload_len(self.payload.len())
    }

    /// Like [`encode_head`](Self::encode_head), for a payload kept elsewhere.
    pub fn encode_head_with_payload_len(&self, payload_len: usize) -> Result<Vec<u8>, FrameError> {
        if payload_len as u64 > MAX_PAYLOAD_LEN as u64 {
            return Err(FrameError::TooLarge {
                what: "payload",
                len: payload_len as u32,
                limit: MAX_PAYLOAD_LEN,
            });
        }
        let header =
            rmp_serde::to_vec_named(&self.env).map_err(|e| FrameError::Header(e.to_string()))?;
        if header.len() as u64 > MAX_HEADER_LEN as u64 {
            return Err(FrameError::TooLarge {
                what: "header",
                len: header.len() as u32,
                limit: MAX_HEADER_LEN,
            });
        }
        let mut head = Vec::with_capacity(8 + header.len());
        head.extend_from_slice(&(header.len() as u32).to_be_bytes());
        head.extend_from_slice(&(payload_len as u32).to_be_bytes());
        head.extend_from_slice(&header);
        Ok(head)
    }

    /// Decodes a frame from a complete buffer (for fuzzing and tests).
    pub fn decode(buf: &[u8]) -> Result<(Frame, usize), FrameError> {
        let short = || FrameError::Io(io::ErrorKind::UnexpectedEof.into());
        let prefix: [u8; 8] = buf
            .get(..8)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?;
        let (hlen, plen) = check_lengths(prefix, FrameLimits::FULL)?;
        let total = 8 + hlen as usize + plen as usize;
        let body = buf.get(8..total).ok_or_else(short)?;
        let env = decode_header(&body[..hlen as usize])?;
        Ok((Frame::new(env, body[hlen as usize..].to_vec()), total))
    }

    /// Reads one frame.
    pub async fn read_from<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, FrameError> {
        Self::read_limited(r, FrameLimits::FULL).await
    }

    /// Reads one frame no larger than `limits`; lengths are checked before
    /// anything is allocated for them.
    pub async fn read_limited<R: AsyncRead + Unpin>(
        r: &mut R,
        limits: FrameLimits,
    ) -> Result<Frame, FrameError> {
        Self::read_checked(r, || limits).await
    }

    /// Reads one frame, checking its lengths against the limits that
    /// `limits` gives once the frame has begun to arrive (a connection may
    /// wait for its next frame while the peer logs in on another).
    pub async fn read_checked<R: AsyncRead + Unpin>(
        r: &mut R,
        limits: impl FnOnce() -> FrameLimits,
    ) -> Result<Frame, FrameError> {
        let mut prefix = [0u8; 8];
        r.read_exact(&mut prefix).await?;
        let (hlen, plen) = check_lengths(prefix, limits())?;
        let mut header = vec![0u8; hlen as usize];
        r.read_exact(&mut header).await?;
        let env = decode_header(&header)?;
        Ok(Frame::new(env, read_payload(r, plen as usize).await?))
    }

    /// Writes one frame (not flushed); returns the bytes written.
    pub async fn write_to<W: AsyncWrite + Unpin>(&self, w: &mut W) -> Result<usize, FrameError> {
        if self.payload.len() as u64 > MAX_PAYLOAD_LEN as u64 {
            return Err(FrameError::TooLarge {
                what: "payload",
                len: self.payload.len() as u32,
                limit: MAX_PAYLOAD_LEN,
            });
        }
        let head = self.encode_head()?;
        w.write_all(&head).await?;
        if !self.payload.is_empty() {
            w.write_all(&self.payload).await?;
        }
        Ok(head.len() + self.payload.len())
    }
}

/// Reads exactly `len` bytes into a buffer of that capacity. Unlike
/// `read_exact` into `vec![0; len]`, the bytes are not zeroed first: for
/// chunk payloads that memset was a measurable share of the server's time.
async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> io::Result<Vec<u8>> {
    let mut payload = Vec::with_capacity(len);
    while payload.len() < len {
        let left = (len - payload.len()) as u64;
        // `take` keeps the read inside this frame; the Vec never grows past `len`.
        if (&mut *r).take(left).read_buf(&mut payload).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(payload)
}

fn check_lengths(prefix: [u8; 8], limits: FrameLimits) -> Result<(u32, u32), FrameError> {
    let hlen = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let plen = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if hlen == 0 || hlen > limits.header {
        return Err(FrameError::TooLarge {
            what: "header",
            len: hlen,
            limit: limits.header,
        });
    }
    if plen > limits.payload {
        return Err(FrameError::TooLarge {
            what: "payload",
            len: plen,
            limit: limits.payload,
        });
    }
    Ok((hlen, plen))
}

fn decode_header(bytes: &[u8]) -> Result<Envelope, FrameError> {
    rmp_serde::from_slice(bytes).map_err(|e| FrameError::Header(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::msg::Msg;

    fn sample() -> Frame {
        Frame::new(
            Envelope {
                seq: 7,
                ack: 3,
                req: 9,
                msg: Msg::Ping,
            },
            b"payload".to_vec(),
        )
    }

    #[test]
    fn frames_round_trip() {
        let f = sample();
        let mut buf = f.encode_head().unwrap();
        buf.extend_from_slice(&f.payload);
        let (g, used) = Frame::decode(&buf).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(f, g);
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocation() {
        let mut buf = vec![0xff; 8];
        buf.extend_from_slice(&[0; 16]);
        assert!(matches!(
            Frame::decode(&buf),
            Err(FrameError::TooLarge { .. })
        ));
        let mut buf = 10u32.to_be_bytes().to_vec();
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Frame::decode(&buf),
            Err(FrameError::TooLarge {
                what: "payload",
                ..
            })
        ));
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let f = sample();
        let mut good = f.encode_head().unwrap();
        good.extend_from_slice(&f.payload);
        let mut x = 0x2545f4914f6cdd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let mut buf = if round % 2 == 0 {
                good.clone()
            } else {
                (0..(next() % 64) as usize).map(|_| next() as u8).collect()
            };
            for _ in 0..(next() % 4) {
                if !buf.is_empty() {
                    let i = (next() as usize) % buf.len();
                    buf[i] = next() as u8;
                }
            }
            let _ = Frame::decode(&buf);
        }
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        let f = sample();
        let mut buf = f.encode_head().unwrap();
        buf.extend_from_slice(&f.payload);
        for cut in 0..buf.len() {
            assert!(Frame::decode(&buf[..cut]).is_err());
        }
        let mut garbage = 4u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&0u32.to_be_bytes());
        garbage.extend_from_slice(b"\xc1\xc1\xc1\xc1");
        assert!(matches!(
            Frame::decode(&garbage),
            Err(FrameError::Header(_))
        ));
    }

    #[tokio::test]
    async fn read_from_takes_exactly_one_frame_at_a_time() {
        let f = sample();
        let big = Frame::new(f.env.clone(), (0..200_000u32).map(|i| i as u8).collect());
        let mut stream = Vec::new();
        for frame in [&big, &f, &big] {
            stream.extend_from_slice(&frame.encode_head().unwrap());
            stream.extend_from_slice(&frame.payload);
        }
        // A small pipe, so every payload arrives in many partial reads.
        let (mut w, mut r) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move { w.write_all(&stream).await });
        for want in [&big, &f, &big] {
            assert_eq!(&Frame::read_from(&mut r).await.unwrap(), want);
        }
        writer.await.unwrap().unwrap();
        assert!(Frame::read_from(&mut r).await.unwrap_err().is_disconnect());
    }

    #[tokio::test]
    async fn read_from_a_stream_cut_inside_the_payload_is_eof() {
        let big = Frame::new(sample().env, vec![7; 100_000]);
        let mut stream = big.encode_head().unwrap();
        stream.extend_from_slice(&big.payload[..60_000]);
        let err = Frame::read_from(&mut &stream[..]).await.unwrap_err();
        assert!(err.is_disconnect(), "{err}");
    }
}
