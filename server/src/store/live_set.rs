//! The set of chunks GC keeps, as a Bloom filter: memory bounded by the
//! size of the index, not by a set of every id.
//!
//! 10 bits and 7 probes per index entry: 1.19 MiB per million entries, with
//! about 1% false positives. A false positive keeps a dead chunk until a
//! later run (each run draws a new seed, so it is a different 1% each
//! time); a live chunk is never reported dead.

use std::hash::{BuildHasher, Hasher};

use super::records::ChunkKey;

const BITS_PER_ENTRY: u64 = 10;
const PROBES: u64 = 7;

pub struct LiveSet {
    bits: Vec<u64>,
    nbits: u64,
    seed: u64,
}

/// splitmix64's finalizer: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

impl LiveSet {
    /// A set sized for `entries` members (at least a few thousand bits).
    pub fn with_capacity(entries: u64) -> Self {
        let nbits = (entries.saturating_mul(BITS_PER_ENTRY)).max(1 << 12);
        let words = nbits.div_ceil(64);
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            bits: vec![0; words as usize],
            nbits: words * 64,
            seed,
        }
    }

    /// Bytes of memory the set holds.
    pub fn bytes(&self) -> u64 {
        self.bits.len() as u64 * 8
    }

    /// Two independent hashes of a key (the chunk id is already a uniform
    /// hash; the group and the seed are mixed in); probe i is h1 + i*h2.
    fn hashes(&self, key: &ChunkKey) -> (u64, u64) {
        let group = u64::from(u32::from_be_bytes([key[0], key[1], key[2], key[3]]));
        let h1 = mix(word(&key[4..12]) ^ self.seed ^ group.rotate_left(32));
        let h2 = mix(word(&key[12..20]) ^ self.seed.rotate_left(17) ^ group) | 1;
        (h1, h2)
    }

    fn probes(&self, key: &ChunkKey) -> impl Iterator<Item = u64> + '_ {
        let (h1, h2) = self.hashes(key);
        (0..PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % self.nbits)
    }

    pub fn insert(&mut self, key: &ChunkKey) {
        let probes: Vec<u64> = self.probes(key).collect();
        for bit in probes {
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// True for every inserted key; for about 1% of the others too.
    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.probes(key)
            .all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64, group: u32) -> ChunkKey {
        let mut k = [0u8; 36];
        k[..4].copy_from_slice(&group.to_be_bytes());
        k[4..].copy_from_slice(tern_core::ChunkId::of(&i.to_le_bytes()).as_bytes());
        k
    }

    #[test]
    fn keeps_every_member_and_few_others() {
        let n = 200_000;
        let mut set = LiveSet::with_capacity(n);
        for i in 0..n {
            set.insert(&key(i, 1));
        }
        assert!(
            (0..n).all(|i| set.contains(&key(i, 1))),
            "a member was lost"
        );
        let false_pos = (n..2 * n).filter(|&i| set.contains(&key(i, 1))).count();
        let rate = false_pos as f64 / n as f64;
        assert!(rate < 0.02, "false positive rate {rate}");
        // The same chunk id in another group is another key.
        let other = (0..n).filter(|&i| set.contains(&key(i, 2))).count();
        assert!((other as f64 / n as f64) < 0.02, "groups collide: {other}");
        assert_eq!(set.bytes(), (n * 10).div_ceil(64) * 8);
    }
}
