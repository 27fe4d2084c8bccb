//! The shaping table (format 5): bandwidth groups by name, and which
//! partners and users draw from them. `docs/store-format.md` describes it.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tern_core::wire::{ShapingSettings, MAX_SHAPING_GROUPS};

use super::replication::PARTNERS;
use super::{decode, encode, Catalog, USERS};
use crate::store::records::{PartnerRecord, UserRecord};
use crate::store::{Result, StoreError};

/// Group name -> [`ShapingSettings`] (MessagePack, named fields).
pub const SHAPING: TableDefinition<&str, &[u8]> = TableDefinition::new("shaping");

impl Catalog {
    pub fn shaping_group(&self, name: &str) -> Result<Option<ShapingSettings>> {
        let t = self.db.begin_read()?.open_table(SHAPING)?;
        let found = t.get(name)?;
        found
            .map(|v| decode("shaping group", v.value()))
            .transpose()
    }

    pub fn shaping_groups(&self) -> Result<Vec<(String, ShapingSettings)>> {
        let t = self.db.begin_read()?.open_table(SHAPING)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), decode("shaping group", v.value())?));
        }
        Ok(out)
    }

    /// Creates or replaces a group; a new one beyond [`MAX_SHAPING_GROUPS`] is refused.
    pub fn put_shaping_group(&self, name: &str, settings: &ShapingSettings) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut t = tx.open_table(SHAPING)?;
            if t.get(name)?.is_none() && t.len()? as usize >= MAX_SHAPING_GROUPS {
                return Err(StoreError::Invalid(format!(
                    "a server has at most {MAX_SHAPING_GROUPS} shaping groups; change or \
                     remove one (tern shaping ls)"
                )));
            }
            t.insert(name, encode(settings)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes a group that no partner or user draws from; false if there
    /// was none of that name.
    pub fn remove_shaping_group(&self, name: &str) -> Result<bool> {
        let tx = self.begin_write()?;
        let found = {
            let (partners, users) =
                assigned(&tx.open_table(PARTNERS)?, &tx.open_table(USERS)?, name)?;
            if !partners.is_empty() || !users.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "shaping group {name} is in use (partners: {}; users: {}); assign them \
                     another group or none first",
                    show(&partners),
                    show(&users)
                )));
            }
            tx.open_table(SHAPING)?.remove(name)?.is_some()
        };
        tx.commit()?;
        Ok(found)
    }

    /// The partners and users that draw from group `name`.
    pub fn shaping_assigned(&self, name: &str) -> Result<(Vec<String>, Vec<String>)> {
        let tx = self.db.begin_read()?;
        assigned(&tx.open_table(PARTNERS)?, &tx.open_table(USERS)?, name)
    }
}

fn assigned<P, U>(partners: &P, users: &U, name: &str) -> Result<(Vec<String>, Vec<String>)>
where
    P: ReadableTable<&'static str, &'static [u8]>,
    U: ReadableTable<&'static str, &'static [u8]>,
{
    let mut by_partner = Vec::new();
    for row in partners.iter()? {
        let (k, v) = row?;
        let p: PartnerRecord = decode("partner", v.value())?;
        if p.settings.shaping.as_deref() == Some(name) {
            by_partner.push(k.value().to_string());
        }
    }
    let mut by_user = Vec::new();
    for row in users.iter()? {
        let (k, v) = row?;
        let u: UserRecord = decode("user", v.value())?;
        if u.shaping.as_deref() == Some(name) {
            by_user.push(k.value().to_string());
        }
    }
    Ok((by_partner, by_user))
}

fn show(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
