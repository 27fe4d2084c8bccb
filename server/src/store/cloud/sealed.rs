//! What a cloud storage group puts in its bucket, sealed: pack objects cut
//! into segments, each sealed with ChaCha20-Poly1305, and the key object
//! that holds the group's data key wrapped by its passphrase
//! (docs/store-format.md, "Cloud storage groups").
//!
//! Each object has its own key, derived from the data key and the object's
//! random name, so the nonce is simply the segment's index. A segment's AAD
//! binds the object header and its index: a flipped bit, a segment moved
//! within or between objects, and a truncated object are all refused.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::rand::{SecureRandom, SystemRandom};

/// Plaintext bytes per sealed segment: a ranged read fetches whole
/// segments, so this is the smallest read from the bucket.
pub const SEGMENT: u32 = 1 << 20;
/// What a seal adds to a segment.
pub const TAG_LEN: u64 = 16;
/// Bytes of an object's header.
pub const HEADER_LEN: u64 = 24;
const MAGIC: &[u8; 8] = b"TERNOBJ1";
/// No pack comes near this (they are finished past 8 MiB): a header that
/// claims more is not ours.
const MAX_OBJECT: u64 = 1 << 30;
const KEY_MAGIC: &[u8; 8] = b"TERNKEY1";
/// Bytes of the key object.
pub const KEY_OBJECT_LEN: usize = 8 + 12 + 16 + 32 + 16;

/// Why a sealed object could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("not a tern object (bad header)")]
    Header,
    #[error("segment {0} does not authenticate: the object was changed or damaged")]
    Segment(u64),
    #[error("the passphrase does not open this group's key")]
    WrongPassphrase,
    #[error("the key object is damaged or not tern's")]
    KeyObject,
    #[error("argon2: {0}")]
    Kdf(String),
    #[error("no randomness from the system")]
    Random,
}

/// Random bytes from the system.
pub fn random<const N: usize>() -> Result<[u8; N], SealError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SealError::Random)?;
    Ok(b)
}

/// A group's data key: every object key derives from it.
#[derive(Clone)]
pub struct DataKey(pub [u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    fn object_key(&self, name: &[u8; 16]) -> LessSafeKey {
        let mut input = Vec::with_capacity(32);
        input.extend_from_slice(b"tern pack object");
        input.extend_from_slice(name);
        let k = blake3::keyed_hash(&self.0, &input);
        // A 32-byte key is always a valid ChaCha20-Poly1305 key.
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, k.as_bytes()).unwrap_or_else(|_| unreachable!()),
        )
    }
}

/// An object's header: its segment size and plaintext length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    pub segment: u32,
    pub plain_len: u64,
}

impl ObjectHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.segment.to_le_bytes());
        b[16..24].copy_from_slice(&self.plain_len.to_le_bytes());
        b
    }

    /// Reads a header from the bucket: bounded, never trusts a size it
    /// cannot check.
    pub fn decode(b: &[u8]) -> Result<Self, SealError> {
        if b.len() < HEADER_LEN as usize || &b[..8] != MAGIC || b[12..16] != [0; 4] {
            return Err(SealError::Header);
        }
        let segment = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[16..24]);
        if !(4096..=16 << 20).contains(&segment) || u64::from_le_bytes(len) > MAX_OBJECT {
            return Err(SealError::Header);
        }
        Ok(Self {
            segment,
            plain_len: u64::from_le_bytes(len),
        })
    }

    /// Segments in the object.
    pub fn segments(&self) -> u64 {
        self.plain_len.div_ceil(self.segment as u64)
    }

    /// The object's length in the bucket.
    pub fn object_len(&self) -> u64 {
        HEADER_LEN + self.plain_len + self.segments() * TAG_LEN
    }

    /// Where segment `i` starts in the object, and its sealed length.
    pub fn sealed_range(&self, i: u64) -> (u64, u64) {
        let seg = self.segment as u64;
        let start = HEADER_LEN + i * (seg + TAG_LEN);
        let plain = seg.min(self.plain_len - i * seg);
        (start, plain + TAG_LEN)
    }

    fn aad(&self, i: u64) -> [u8; HEADER_LEN as usize + 8] {
        let mut a = [0u8; HEADER_LEN as usize + 8];
        a[..HEADER_LEN as usize].copy_from_slice(&self.encode());
        a[HEADER_LEN as usize..].copy_from_slice(&i.to_le_bytes());
        a
    }
}

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals `plain` as the object named `name`.
pub fn seal_object(key: &DataKey, name: &[u8; 16], plain: &[u8]) -> Vec<u8> {
    let mut at = 0;
    seal_object_from(key, name, plain.len() as u64, |part| {
        part.copy_from_slice(&plain[at..at + part.len()]);
        at += part.len();
        Ok(())
    })
    .unwrap_or_else(|_: std::convert::Infallible| unreachable!())
}

/// Seals the `plain_len` bytes `fill` writes, segment by segment and in
/// order, into the slices it is given, as the object named `name`. Each
/// segment is written where it goes in the object and sealed there: the
/// plaintext is never copied (a pack is read from its file straight in).
pub fn seal_object_from<E>(
    key: &DataKey,
    name: &[u8; 16],
    plain_len: u64,
    mut fill: impl FnMut(&mut [u8]) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let header = ObjectHeader {
        segment: SEGMENT,
        plain_len,
    };
    let okey = key.object_key(name);
    let mut out = vec![0u8; header.object_len() as usize];
    out[..HEADER_LEN as usize].copy_from_slice(&header.encode());
    for i in 0..header.segments() {
        let (start, len) = header.sealed_range(i);
        let (body, tag_at) =
            out[start as usize..(start + len) as usize].split_at_mut((len - TAG_LEN) as usize);
        fill(body)?;
        let tag = okey
            .seal_in_place_separate_tag(nonce(i), Aad::from(header.aad(i)), body)
            // Sealing fails only past ChaCha20's 256 GiB per nonce.
            .unwrap_or_else(|_| unreachable!());
        tag_at.copy_from_slice(tag.as_ref());
    }
    Ok(out)
}

/// Opens segment `i` of object `name` in place: `sealed` holds its sealed
/// bytes, and then its plaintext followed by the (spent) tag; returns the
/// plaintext's length.
pub fn open_segment(
    key: &DataKey,
    name: &[u8; 16],
    header: &ObjectHeader,
    i: u64,
    sealed: &mut [u8],
) -> Result<usize, SealError> {
    if i >= header.segments() || sealed.len() as u64 != header.sealed_range(i).1 {
        return Err(SealError::Segment(i));
    }
    Ok(key
        .object_key(name)
        .open_in_place(nonce(i), Aad::from(header.aad(i)), sealed)
        .map_err(|_| SealError::Segment(i))?
        .len())
}

/// Opens a whole object `name` from its sealed bytes: every segment, and
/// nothing after the last.
pub fn open_object(key: &DataKey, name: &[u8; 16], object: &[u8]) -> Result<Vec<u8>, SealError> {
    let h = ObjectHeader::decode(object)?;
    if object.len() as u64 != h.object_len() {
        return Err(SealError::Segment(h.segments()));
    }
    let mut out = Vec::with_capacity(h.plain_len as usize);
    for i in 0..h.segments() {
        let (start, len) = h.sealed_range(i);
        let mut part = object
            .get(start as usize..(start + len) as usize)
            .ok_or(SealError::Segment(i))?
            .to_vec();
        let n = open_segment(key, name, &h, i, &mut part)?;
        out.extend_from_slice(&part[..n]);
    }
    Ok(out)
}

/// argon2id's cost for the passphrase: 64 MiB, 3 passes (OWASP's choice,
/// about 0.2 s here). Fixed, so the key object need not carry it.
fn passphrase_key(passphrase: &str, salt: &[u8; 16]) -> Result<LessSafeKey, SealError> {
    let params = argon2::Params::new(64 * 1024, 3, 1, Some(32))
        .map_err(|e| SealError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut k = [0u8; 32];
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut k)
        .map_err(|e| SealError::Kdf(e.to_string()))?;
    Ok(LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &k).unwrap_or_else(|_| unreachable!()),
    ))
}

/// The key object: the data key sealed under a key argon2id derives from
/// the passphrase. `KEY_MAGIC | nonce [12] | salt [16] | sealed key [32] | tag [16]`.
pub fn wrap_key(key: &DataKey, passphrase: &str) -> Result<Vec<u8>, SealError> {
    let salt: [u8; 16] = random()?;
    let nonce_bytes: [u8; 12] = random()?;
    let kek = passphrase_key(passphrase, &salt)?;
    let mut sealed = key.0.to_vec();
    kek.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::from(KEY_MAGIC),
        &mut sealed,
    )
    .map_err(|_| SealError::KeyObject)?;
    let mut out = Vec::with_capacity(KEY_OBJECT_LEN);
    out.extend_from_slice(KEY_MAGIC);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens the key object with `passphrase`.
pub fn unwrap_key(object: &[u8], passphrase: &str) -> Result<DataKey, SealError> {
    if object.len() != KEY_OBJECT_LEN || &object[..8] != KEY_MAGIC {
        return Err(SealError::KeyObject);
    }
    let mut nonce_bytes = [0u8; 12];
    nonce_bytes.copy_from_slice(&object[8..20]);
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&object[20..36]);
    let mut sealed = object[36..].to_vec();
    let kek = passphrase_key(passphrase, &salt)?;
    let plain = kek
        .open_in_place(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(KEY_MAGIC),
            &mut sealed,
        )
        .map_err(|_| SealError::WrongPassphrase)?;
    let mut k = [0u8; 32];
    k.copy_from_slice(plain);
    Ok(DataKey(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_object_opens_to_its_plaintext_and_shows_none_of_it() {
        let key = DataKey([7; 32]);
        let name = [1; 16];
        for len in [0usize, 1, SEGMENT as usize, SEGMENT as usize * 2 + 17] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let object = seal_object(&key, &name, &plain);
            assert_eq!(
                object.len() as u64,
                ObjectHeader::decode(&object).unwrap().object_len()
            );
            assert_eq!(open_object(&key, &name, &object).unwrap(), plain);
            if len >= 64 {
                assert!(!object.windows(32).any(|w| w == &plain[..32]));
            }
        }
    }

    #[test]
    fn a_flipped_bit_a_moved_segment_or_another_name_is_refused() {
        let key = DataKey([7; 32]);
        let name = [1; 16];
        let plain = vec![9u8; SEGMENT as usize * 2];
        let object = seal_object(&key, &name, &plain);
        let mut flipped = object.clone();
        flipped[HEADER_LEN as usize + 5] ^= 1;
        assert!(matches!(
            open_object(&key, &name, &flipped),
            Err(SealError::Segment(0))
        ));
        let h = ObjectHeader::decode(&object).unwrap();
        let (s1, l1) = h.sealed_range(1);
        let mut second = object[s1 as usize..(s1 + l1) as usize].to_vec();
        assert!(open_segment(&key, &name, &h, 0, &mut second).is_err());
        assert!(open_object(&key, &[2; 16], &object).is_err());
        assert!(open_object(&DataKey([8; 32]), &name, &object).is_err());
        let mut short = object.clone();
        short[16] = 1; // claims fewer bytes than are there
        assert!(open_object(&key, &name, &short).is_err());
    }

    #[test]
    fn the_key_object_opens_with_its_passphrase_only() {
        let key = DataKey([3; 32]);
        let object = wrap_key(&key, "correct horse").unwrap();
        assert_eq!(object.len(), KEY_OBJECT_LEN);
        assert_eq!(unwrap_key(&object, "correct horse").unwrap().0, key.0);
        assert!(matches!(
            unwrap_key(&object, "wrong"),
            Err(SealError::WrongPassphrase)
        ));
        assert!(matches!(
            unwrap_key(&object[1..], "correct horse"),
            Err(SealError::KeyObject)
        ));
    }
}
