//! The catalog objects of a cloud group: what lets a new machine rebuild the
//! group from its bucket alone (docs/store-format.md, "Catalog objects").
//!
//! - a **recipe object** per committed image (sealed, random name, never
//!   changed): its recipe rows;
//! - a **manifest** (`catalog/<seq>-<random>`, sealed): the group's containers,
//!   its images with their records and recipe objects, and its live pack
//!   objects; the one with the highest `seq` that opens is the catalog;
//! - the **lease** (`tern-lease`, plain text): which server writes to the
//!   prefix.
//!
//! The group's local record of what it saved is `catalog-saved` (beside
//! `objects`): the lease holder, the last manifest and the recipe objects
//! it owns.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tern_core::wire::RecipeEntry;
use tern_core::ChunkId;

use crate::store::records::{ContainerRecord, ImageRecord};

/// The lease object's name under the group's prefix.
pub const LEASE_OBJECT: &str = "tern-lease";
/// Manifests are `catalog/<seq, 16 hex>-<32 random hex>`: a LIST of this
/// directory finds them without listing the packs.
pub const MANIFEST_DIR: &str = "catalog";
const RECIPE_MAGIC: &[u8; 8] = b"TERNRCP1";
const RECIPE_ROW: usize = 8 + 32 + 4;
const MANIFEST_FORMAT: u32 = 1;
const SAVED_FILE: &str = "catalog-saved";
const LEASE_MAGIC: &str = "tern storage group lease 1";

/// One container of the group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedContainer {
    pub name: String,
    pub record: ContainerRecord,
}

/// One committed image, and the object holding its recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedImage {
    pub container: String,
    pub name: String,
    pub record: ImageRecord,
    #[serde(with = "serde_bytes")]
    pub recipe: [u8; 16],
}

/// One live pack object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPack {
    #[serde(with = "serde_bytes")]
    pub name: [u8; 16],
    pub plain_len: u64,
}

/// The group's catalog as of `written`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub seq: u64,
    pub written: u64,
    pub containers: Vec<SavedContainer>,
    pub images: Vec<SavedImage>,
    pub packs: Vec<SavedPack>,
}

impl Manifest {
    pub fn new(seq: u64, written: u64) -> Self {
        Self {
            format: MANIFEST_FORMAT,
            seq,
            written,
            containers: Vec::new(),
            images: Vec::new(),
            packs: Vec::new(),
        }
    }

    pub fn encode(&self) -> io::Result<Vec<u8>> {
        rmp_serde::to_vec_named(self).map_err(io::Error::other)
    }

    /// Decodes an opened manifest (authenticated already; its length is
    /// bounded by the sealed object's).
    pub fn decode(plain: &[u8]) -> io::Result<Self> {
        let m: Self = rmp_serde::from_slice(plain)
            .map_err(|e| invalid(format!("undecodable manifest: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(invalid(format!("manifest format {} is unknown", m.format)));
        }
        Ok(m)
    }
}

/// The object name of manifest `seq`, made unique by `salt` (two servers
/// that both wrote a `seq` never seal two plaintexts under one key).
pub fn manifest_name(seq: u64, salt: &[u8; 16]) -> String {
    format!("{MANIFEST_DIR}/{seq:016x}-{}", crate::store::hex(salt))
}

/// The sequence number and salt of a manifest, from its name in
/// `catalog/`; `None` for anything else.
pub fn parse_manifest_name(file: &str) -> Option<(u64, [u8; 16])> {
    let (seq, salt) = file.split_once('-')?;
    if seq.len() != 16 || salt.len() != 32 {
        return None;
    }
    Some((u64::from_str_radix(seq, 16).ok()?, parse_hex16(salt)?))
}

/// 16 bytes from 32 hex digits.
fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A recipe object's plaintext: magic | u64 LE count | rows of offset u64
/// LE, chunk id [32], length u32 LE.
pub fn encode_recipe(rows: &[RecipeEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + rows.len() * RECIPE_ROW);
    out.extend_from_slice(RECIPE_MAGIC);
    out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for r in rows {
        out.extend_from_slice(&r.offset.to_le_bytes());
        out.extend_from_slice(&r.id.0);
        out.extend_from_slice(&r.len.to_le_bytes());
    }
    out
}

/// Decodes a recipe object's plaintext: the count must match the length
/// exactly, and the rows must follow each other without a gap.
pub fn decode_recipe(plain: &[u8]) -> io::Result<Vec<RecipeEntry>> {
    if plain.len() < 16 || &plain[..8] != RECIPE_MAGIC {
        return Err(invalid("not a recipe object"));
    }
    let count = u64::from_le_bytes(plain[8..16].try_into().unwrap_or_default());
    let body = &plain[16..];
    if count.checked_mul(RECIPE_ROW as u64) != Some(body.len() as u64) {
        return Err(invalid("a recipe object's length does not match its count"));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut next = 0u64;
    for row in body.chunks_exact(RECIPE_ROW) {
        let offset = u64::from_le_bytes(row[..8].try_into().unwrap_or_default());
        let mut id = [0u8; 32];
        id.copy_from_slice(&row[8..40]);
        let len = u32::from_le_bytes(row[40..44].try_into().unwrap_or_default());
        if offset != next || len == 0 {
            return Err(invalid(format!("a recipe object has a gap at {next}")));
        }
        next = offset + u64::from(len);
        out.push(RecipeEntry {
            offset,
            id: ChunkId(id),
            len,
        });
    }
    Ok(out)
}

/// The lease: who writes to the prefix, since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub holder: [u8; 16],
    pub since: u64,
}

impl Lease {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{LEASE_MAGIC}\nholder {}\nsince {}\n",
            crate::store::hex(&self.holder),
            self.since
        )
        .into_bytes()
    }

    pub fn decode(b: &[u8]) -> io::Result<Self> {
        let bad = || invalid("the lease object is not tern's");
        let text =
            std::str::from_utf8(b.get(..b.len().min(256)).unwrap_or(b)).map_err(|_| bad())?;
        let mut lines = text.lines();
        if lines.next() != Some(LEASE_MAGIC) {
            return Err(bad());
        }
        let holder = lines
            .next()
            .and_then(|l| l.strip_prefix("holder "))
            .and_then(parse_hex16)
            .ok_or_else(bad)?;
        let since = lines
            .next()
            .and_then(|l| l.strip_prefix("since "))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        Ok(Self { holder, since })
    }
}

/// What this server saved of the group's catalog, kept locally.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedState {
    /// This server's lease holder id for the group.
    #[serde(with = "serde_bytes")]
    pub holder: [u8; 16],
    /// The last manifest written (0: none yet).
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub manifest_salt: [u8; 16],
    /// When it was written, and how many images it lists.
    pub saved_at: u64,
    pub images: u64,
    /// The encoded manifest's blake3 less its seq and time: unchanged
    /// catalogs are not written again.
    #[serde(with = "serde_bytes")]
    pub digest: [u8; 32],
    /// The recipe objects this server wrote, by image id.
    pub recipes: BTreeMap<u64, SavedRecipe>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SavedRecipe {
    #[serde(with = "serde_bytes")]
    pub name: [u8; 16],
}

impl SavedState {
    /// The state in group directory `dir`, `None` if there is none yet.
    pub fn load(dir: &Path) -> io::Result<Option<Self>> {
        let path = dir.join(SAVED_FILE);
        match std::fs::read(&path) {
            Ok(b) => rmp_serde::from_slice(&b)
                .map(Some)
                .map_err(|e| invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }

    /// Replaces the state in `dir` durably (a temporary file, synced,
    /// renamed, the directory synced).
    pub fn store(&self, dir: &Path) -> io::Result<()> {
        let bytes = rmp_serde::to_vec_named(self).map_err(io::Error::other)?;
        let tmp = dir.join(format!("{SAVED_FILE}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(SAVED_FILE))?;
        crate::store::pack::sync_dir(dir)
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_manifest_names_and_leases_round_trip_and_damage_is_refused() {
        let rows = vec![
            RecipeEntry {
                offset: 0,
                id: ChunkId([1; 32]),
                len: 10,
            },
            RecipeEntry {
                offset: 10,
                id: ChunkId([2; 32]),
                len: 5,
            },
        ];
        let enc = encode_recipe(&rows);
        assert_eq!(decode_recipe(&enc).unwrap(), rows);
        assert!(decode_recipe(&enc[..enc.len() - 1]).is_err());
        let mut gap = enc.clone();
        gap[16 + RECIPE_ROW] = 11;
        assert!(decode_recipe(&gap).is_err());
        let mut huge = enc.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_recipe(&huge).is_err());

        let name = manifest_name(42, &[0xab; 16]);
        let file = name.strip_prefix("catalog/").unwrap();
        assert_eq!(parse_manifest_name(file), Some((42, [0xab; 16])));
        for bad in ["2a-abab", "000000000000002a", "000000000000002a-zz"] {
            assert_eq!(parse_manifest_name(bad), None, "{bad}");
        }

        let lease = Lease {
            holder: [3; 16],
            since: 1_700_000_000,
        };
        assert_eq!(Lease::decode(&lease.encode()).unwrap(), lease);
        assert!(Lease::decode(b"something else").is_err());
    }
}
