//! The seed's key and seals: a key from a password (argon2id), segments
//! sealed with ChaCha20-Poly1305 (docs/seed-format.md).
//!
//! Every segment is sealed with a nonce made of the file's number and the
//! segment's index, and its AAD binds the file's header and whether it is
//! the file's last segment: a flipped bit, a segment moved between files or
//! volumes, and a truncated file are all refused.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use super::format::HEADER_LEN;
use super::SeedError;

/// What a seal adds to a segment's plaintext.
pub const TAG_LEN: usize = 16;

/// Argon2id's parameters, kept in the manifest's clear part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
    pub salt: [u8; 16],
}

/// The most argon2id work a manifest may ask for: 256 MiB (four times
/// what an export uses), 12 passes, 8 lanes.
const MAX_KDF_KIB: u32 = 256 * 1024;
const MAX_KDF_PASSES: u32 = 12;
const MAX_KDF_LANES: u32 = 8;

/// Bytes of the key block after a manifest's header (encrypted seeds only):
/// the parameters, the salt and the key check.
pub const KEY_BLOCK_LEN: usize = 12 + 16 + 32;

impl KdfParams {
    /// 64 MiB and 3 passes: OWASP's argon2id recommendation, about 0.2 s.
    pub fn new(salt: [u8; 16]) -> Self {
        Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
            salt,
        }
    }

    pub fn derive(&self, password: &str) -> Result<Key, SeedError> {
        // A manifest is outside input: it may ask for what an operator
        // would choose (up to four times our own cost), no more.
        if self.m_kib > MAX_KDF_KIB
            || self.t > MAX_KDF_PASSES
            || self.p == 0
            || self.p > MAX_KDF_LANES
        {
            return Err(SeedError::Damaged {
                file: "manifest.tern".into(),
                why: format!(
                    "its key derivation asks for {} MiB, {} passes and {} lanes; at most \
                     {} MiB, {MAX_KDF_PASSES} passes and {MAX_KDF_LANES} lanes are accepted",
                    self.m_kib / 1024,
                    self.t,
                    self.p,
                    MAX_KDF_KIB / 1024
                ),
            });
        }
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| SeedError::Invalid(format!("argon2 parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = [0u8; 32];
        argon
            .hash_password_into(password.as_bytes(), &self.salt, &mut key)
            .map_err(|e| SeedError::Invalid(format!("deriving the key: {e}")))?;
        Ok(Key(key))
    }

    pub fn encode(&self, check: &[u8; 32]) -> [u8; KEY_BLOCK_LEN] {
        let mut b = [0u8; KEY_BLOCK_LEN];
        b[0..4].copy_from_slice(&self.m_kib.to_le_bytes());
        b[4..8].copy_from_slice(&self.t.to_le_bytes());
        b[8..12].copy_from_slice(&self.p.to_le_bytes());
        b[12..28].copy_from_slice(&self.salt);
        b[28..60].copy_from_slice(check);
        b
    }

    pub fn decode(b: &[u8; KEY_BLOCK_LEN]) -> (Self, [u8; 32]) {
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&b[12..28]);
        let mut check = [0u8; 32];
        check.copy_from_slice(&b[28..60]);
        (
            Self {
                m_kib: u(0),
                t: u(4),
                p: u(8),
                salt,
            },
            check,
        )
    }
}

/// A key derived from the password.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    /// Stored beside the parameters: tells a wrong password from a damaged
    /// manifest without trying to open anything.
    pub fn check(&self) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, b"tern seed key check v1").as_bytes()
    }
}

/// Seals and opens segments: ChaCha20-Poly1305 with the seed's key, or (an
/// unencrypted seed) a keyless blake3 tag that detects damage only.
pub enum Sealer {
    Aead(Box<LessSafeKey>),
    Plain,
}

impl Sealer {
    pub fn new(key: Option<&Key>) -> Self {
        match key {
            Some(k) => match UnboundKey::new(&CHACHA20_POLY1305, &k.0) {
                Ok(u) => Self::Aead(Box::new(LessSafeKey::new(u))),
                // A 32-byte key is always accepted.
                Err(_) => Self::Plain,
            },
            None => Self::Plain,
        }
    }

    fn nonce(number: u32, segment: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&number.to_be_bytes());
        n[4..].copy_from_slice(&segment.to_be_bytes());
        n
    }

    fn aad(header: &[u8; HEADER_LEN], last: bool) -> [u8; HEADER_LEN + 1] {
        let mut a = [0u8; HEADER_LEN + 1];
        a[..HEADER_LEN].copy_from_slice(header);
        a[HEADER_LEN] = u8::from(last);
        a
    }

    fn plain_tag(nonce: &[u8; 12], aad: &[u8], plain: &[u8]) -> [u8; TAG_LEN] {
        let mut h = blake3::Hasher::new();
        h.update(nonce).update(aad).update(plain);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
        t
    }

    pub fn seal(
        &self,
        header: &[u8; HEADER_LEN],
        number: u32,
        segment: u64,
        last: bool,
        plain: &[u8],
    ) -> Vec<u8> {
        let nonce = Self::nonce(number, segment);
        let aad = Self::aad(header, last);
        let mut out = plain.to_vec();
        match self {
            Self::Aead(key) => {
                // Fails only past ChaCha20's 256 GiB limit per seal, far
                // beyond a segment.
                let _ = key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad),
                    &mut out,
                );
            }
            Self::Plain => out.extend_from_slice(&Self::plain_tag(&nonce, &aad, plain)),
        }
        out
    }

    /// The plaintext of a sealed segment, or `None` if it was not sealed so.
    pub fn open(
        &self,
        header: &[u8; HEADER_LEN],
        number: u32,
        segment: u64,
        last: bool,
        mut sealed: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let nonce = Self::nonce(number, segment);
        let aad = Self::aad(header, last);
        match self {
            Self::Aead(key) => {
                let n = key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&aad),
                        &mut sealed,
                    )
                    .ok()?
                    .len();
                sealed.truncate(n);
                Some(sealed)
            }
            Self::Plain => {
                let body = sealed.len().checked_sub(TAG_LEN)?;
                let tag = Self::plain_tag(&nonce, &aad, &sealed[..body]);
                if tag[..] != sealed[body..] {
                    return None;
                }
                sealed.truncate(body);
                Some(sealed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::seed::format::{Header, KIND_VOLUME};

    fn key() -> Key {
        Key([7u8; 32])
    }

    #[test]
    fn a_sealed_segment_opens_only_with_its_key_nonce_and_flag() {
        let h = Header {
            kind: KIND_VOLUME,
            encrypted: true,
            seed: [1; 16],
            number: 3,
        }
        .encode();
        for sealer in [Sealer::new(Some(&key())), Sealer::new(None)] {
            let sealed = sealer.seal(&h, 3, 5, false, b"hello");
            assert_eq!(
                sealer.open(&h, 3, 5, false, sealed.clone()).unwrap(),
                b"hello"
            );
            assert!(sealer.open(&h, 3, 6, false, sealed.clone()).is_none());
            assert!(sealer.open(&h, 4, 5, false, sealed.clone()).is_none());
            assert!(sealer.open(&h, 3, 5, true, sealed.clone()).is_none());
            let mut flipped = sealed.clone();
            flipped[1] ^= 1;
            assert!(sealer.open(&h, 3, 5, false, flipped).is_none());
        }
        let encrypted = Sealer::new(Some(&key())).seal(&h, 3, 5, false, b"hello");
        assert!(!encrypted.windows(5).any(|w| w == b"hello"));
        let other = Sealer::new(Some(&Key([8u8; 32])));
        assert!(other.open(&h, 3, 5, false, encrypted).is_none());
    }
}
