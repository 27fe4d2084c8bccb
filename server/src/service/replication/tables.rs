//! The replication source's tables: partners and copy jobs (format 3),
//! kept in the catalog beside the engine's tables (see `store::tables`).
//! `docs/store-format.md` describes them.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tern_core::names::{ContainerName, GroupName, ImageName, UserName};
use tern_core::wire::{CopyId, CopyState, PartnerSettings, TrailEntry};

use crate::store::tables::{self, decode, encode, Tables};
use crate::store::{Result, StoreError};

/// Partner name -> [`PartnerRecord`].
pub const PARTNERS: TableDefinition<&str, &[u8]> = TableDefinition::new("partners");
/// Copy id (u128 of its bytes, big-endian) -> [`CopyRecord`].
pub const COPIES: TableDefinition<u128, &[u8]> = TableDefinition::new("copies");
/// What a live copy copies (see [`copy_key`]) -> its id: asking again finds it.
pub const LIVE_COPIES: TableDefinition<&str, u128> = TableDefinition::new("live_copies");
/// A source image's id -> its cloud tier copy (the latest): an image is
/// copied to the tier once.
pub const TIER_IMAGES: TableDefinition<u64, u128> = TableDefinition::new("tier_images");

/// A replication partner: where it is and how this server logs in there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartnerRecord {
    pub addresses: Vec<String>,
    /// `sha256:...` of its certificate.
    pub fingerprint: String,
    pub user: UserName,
    /// Kept as given: this server must present it at every copy. The
    /// catalog file is 0600.
    pub password: String,
    /// The protocol version it spoke when added.
    pub version: u16,
    pub added: u64,
    /// Connections per copy and the shaping group.
    #[serde(default)]
    pub settings: PartnerSettings,
}

impl PartnerRecord {
    /// Connections per copy (MultiConnect).
    pub fn connections(&self) -> usize {
        match self.settings.connections {
            0 => DEFAULT_COPY_CONNECTIONS,
            n => n as usize,
        }
    }
}

/// Connections per copy unless the partner says otherwise.
pub const DEFAULT_COPY_CONNECTIONS: usize = 4;

/// A copy job on the source server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyRecord {
    pub state: CopyState,
    pub reason: String,
    /// The source container's group and name, and the image.
    pub group: GroupName,
    pub container: ContainerName,
    pub image: ImageName,
    pub partner: String,
    pub to_container: ContainerName,
    pub to_name: ImageName,
    pub logical_bytes: u64,
    pub done_bytes: u64,
    pub sent_bytes: u64,
    pub sent_chunks: u64,
    pub attempts: u32,
    pub created: u64,
    pub updated: u64,
    /// Done, and the target may still report the import acknowledged.
    #[serde(default)]
    pub awaiting_import: bool,
    /// A cloud tier copy, run on this server: `partner` is empty and
    /// `to_container` is the cloud container (`GROUP/NAME`).
    #[serde(default)]
    pub tier: bool,
}

fn key(id: CopyId) -> u128 {
    u128::from_be_bytes(id.0)
}

/// The key of [`LIVE_COPIES`]: the source image and where it goes.
pub fn copy_key(rec: &CopyRecord) -> String {
    format!(
        "{}/{}/{}\n{}\n{}\n{}",
        rec.group, rec.container, rec.image, rec.partner, rec.to_container, rec.to_name
    )
}

/// The partner and copy tables, through the catalog's transactions.
pub struct ReplicationTables<'s>(pub Tables<'s>);

impl ReplicationTables<'_> {
    // ---- partners ------------------------------------------------------------

    pub fn partner(&self, name: &str) -> Result<Option<PartnerRecord>> {
        let tx = self.0.read()?;
        let Some(t) = tables::open(&tx, PARTNERS)? else {
            return Ok(None);
        };
        let found = t.get(name)?;
        found.map(|v| decode("partner", v.value())).transpose()
    }

    pub fn partners(&self) -> Result<Vec<(String, PartnerRecord)>> {
        let tx = self.0.read()?;
        let Some(t) = tables::open(&tx, PARTNERS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), decode("partner", v.value())?));
        }
        Ok(out)
    }

    /// Records a partner; `AlreadyExists` if the name is taken.
    pub fn insert_partner(&self, name: &str, rec: &PartnerRecord) -> Result<()> {
        self.0.write(|tx| {
            let mut t = tx.open_table(PARTNERS)?;
            if t.get(name)?.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "partner {name} already exists"
                )));
            }
            t.insert(name, encode(rec)?.as_slice())?;
            Ok(())
        })
    }

    /// Replaces an existing partner's record.
    pub fn update_partner(&self, name: &str, rec: &PartnerRecord) -> Result<()> {
        self.0.write(|tx| {
            let mut t = tx.open_table(PARTNERS)?;
            if t.get(name)?.is_none() {
                return Err(StoreError::NotFound(format!("no partner {name}")));
            }
            t.insert(name, encode(rec)?.as_slice())?;
            Ok(())
        })
    }

    /// Removes a partner; false if there was none.
    pub fn remove_partner(&self, name: &str) -> Result<bool> {
        self.0
            .write(|tx| Ok(tx.open_table(PARTNERS)?.remove(name)?.is_some()))
    }

    // ---- copies --------------------------------------------------------------

    /// The live copy of the same image to the same place, or a new one
    /// recorded under `fresh`; true if it is new.
    pub fn find_or_insert_copy(&self, rec: CopyRecord, fresh: CopyId) -> Result<(CopyId, bool)> {
        let found = self.0.write(|tx| {
            let mut live = tx.open_table(LIVE_COPIES)?;
            let k = copy_key(&rec);
            let existing = live.get(k.as_str())?.map(|v| v.value());
            Ok(match existing {
                Some(id) => Some(CopyId(id.to_be_bytes())),
                None => {
                    live.insert(k.as_str(), key(fresh))?;
                    tx.open_table(COPIES)?
                        .insert(key(fresh), encode(&rec)?.as_slice())?;
                    None
                }
            })
        })?;
        Ok(match found {
            Some(id) => (id, false),
            None => (fresh, true),
        })
    }

    /// Records the tier copy `rec` of image `image_id` under `fresh`,
    /// unless the image has a tier copy other than `again`; false then.
    pub fn insert_tier_copy(
        &self,
        image_id: u64,
        rec: CopyRecord,
        fresh: CopyId,
        again: Option<CopyId>,
    ) -> Result<bool> {
        self.0.write(|tx| {
            let mut images = tx.open_table(TIER_IMAGES)?;
            let existing = images
                .get(image_id)?
                .map(|v| CopyId(v.value().to_be_bytes()));
            if existing.is_some() && existing != again {
                return Ok(false);
            }
            images.insert(image_id, key(fresh))?;
            tx.open_table(LIVE_COPIES)?
                .insert(copy_key(&rec).as_str(), key(fresh))?;
            tx.open_table(COPIES)?
                .insert(key(fresh), encode(&rec)?.as_slice())?;
            Ok(true)
        })
    }

    /// The tier copy of source image `image_id`, if it has one.
    pub fn tier_image(&self, image_id: u64) -> Result<Option<CopyId>> {
        let tx = self.0.read()?;
        let Some(t) = tables::open(&tx, TIER_IMAGES)? else {
            return Ok(None);
        };
        let found = t.get(image_id)?;
        Ok(found.map(|v| CopyId(v.value().to_be_bytes())))
    }

    /// True if some image has a tier copy.
    pub fn any_tier_image(&self) -> Result<bool> {
        let tx = self.0.read()?;
        let Some(t) = tables::open(&tx, TIER_IMAGES)? else {
            return Ok(false);
        };
        let first = t.iter()?.next().is_some();
        Ok(first)
    }

    /// Every image with a tier copy: its id, the copy's and the copy's
    /// record (one read of both tables).
    pub fn tier_image_copies(&self) -> Result<Vec<(u64, CopyId, CopyRecord)>> {
        let tx = self.0.read()?;
        let (Some(images), Some(copies)) =
            (tables::open(&tx, TIER_IMAGES)?, tables::open(&tx, COPIES)?)
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in images.iter()? {
            let (k, v) = row?;
            let id = CopyId(v.value().to_be_bytes());
            if let Some(rec) = copies.get(key(id))? {
                out.push((k.value(), id, decode("copy", rec.value())?));
            }
        }
        Ok(out)
    }

    /// Forgets the tier copies of images that no longer exist.
    pub fn forget_tier_images(&self, gone: &[u64]) -> Result<()> {
        if gone.is_empty() {
            return Ok(());
        }
        self.0.write(|tx| {
            let mut images = tx.open_table(TIER_IMAGES)?;
            for id in gone {
                images.remove(*id)?;
            }
            Ok(())
        })
    }

    pub fn copy(&self, id: CopyId) -> Result<Option<CopyRecord>> {
        let tx = self.0.read()?;
        let Some(t) = tables::open(&tx, COPIES)? else {
            return Ok(None);
        };
        let found = t.get(key(id))?;
        found.map(|v| decode("copy", v.value())).transpose()
    }

    pub fn copies(&self) -> Result<Vec<(CopyId, CopyRecord)>> {
        let tx = self.0.read()?;
        let Some(t) = tables::open(&tx, COPIES)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((CopyId(k.value().to_be_bytes()), decode("copy", v.value())?));
        }
        Ok(out)
    }

    /// Changes a copy's record; a final state frees its key (a later request
    /// for the same copy makes a new job), and `trail` is appended in the
    /// same transaction. Returns the record as changed.
    pub fn update_copy(
        &self,
        id: CopyId,
        change: impl FnOnce(&mut CopyRecord),
        trail: Option<&TrailEntry>,
    ) -> Result<CopyRecord> {
        self.0.write(|tx| {
            let mut t = tx.open_table(COPIES)?;
            let mut rec: CopyRecord = match t.get(key(id))? {
                Some(v) => decode("copy", v.value())?,
                None => return Err(StoreError::NotFound(format!("no copy {id}"))),
            };
            change(&mut rec);
            t.insert(key(id), encode(&rec)?.as_slice())?;
            if rec.state.is_final() {
                let mut live = tx.open_table(LIVE_COPIES)?;
                let k = copy_key(&rec);
                if live.get(k.as_str())?.map(|v| v.value()) == Some(key(id)) {
                    live.remove(k.as_str())?;
                }
            }
            if let Some(entry) = trail {
                tables::push_trail(tx, entry)?;
            }
            Ok(rec)
        })
    }
}
