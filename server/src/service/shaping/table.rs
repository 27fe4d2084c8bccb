//! The shaping table (format 5): bandwidth groups by name, checked and
//! kept in the catalog beside the engine's tables (see `store::tables`),
//! and which partners and users draw from them. `docs/store-format.md`
//! describes it; the [`super::Shaper`] applies the groups.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use tern_core::wire::{ShapingSettings, MAX_SHAPING_GROUPS, MAX_SHAPING_WINDOWS};

use crate::service::replication::tables::{PartnerRecord, PARTNERS};
use crate::service::users::{UserRecord, USERS};
use crate::store::tables::{self, decode, encode, Tables};
use crate::store::{Result, StoreError};

/// Group name -> [`ShapingSettings`] (MessagePack, named fields).
pub const SHAPING: TableDefinition<&str, &[u8]> = TableDefinition::new("shaping");

/// The shaping groups, through the catalog's transactions.
pub struct ShapingTable<'s>(pub Tables<'s>);

impl ShapingTable<'_> {
    /// A group's settings; `NotFound` names the groups there are.
    pub fn group(&self, name: &str) -> Result<ShapingSettings> {
        let found = {
            let tx = self.0.read()?;
            match tables::open(&tx, SHAPING)? {
                Some(t) => t
                    .get(name)?
                    .map(|v| decode("shaping group", v.value()))
                    .transpose()?,
                None => None,
            }
        };
        if let Some(s) = found {
            return Ok(s);
        }
        let names: Vec<String> = self.groups()?.into_iter().map(|(n, _)| n).collect();
        Err(StoreError::NotFound(format!(
            "no shaping group {name} (there are: {}); create it with tern shaping set",
            show(&names)
        )))
    }

    pub fn groups(&self) -> Result<Vec<(String, ShapingSettings)>> {
        let tx = self.0.read()?;
        let Some(t) = tables::open(&tx, SHAPING)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), decode("shaping group", v.value())?));
        }
        Ok(out)
    }

    /// Creates or replaces a group, after checking its name, windows and
    /// time zone (`valid_zone` says whether the server knows it); a new one
    /// beyond [`MAX_SHAPING_GROUPS`] is refused.
    pub fn set(
        &self,
        name: &str,
        settings: &ShapingSettings,
        valid_zone: impl Fn(&str) -> std::result::Result<(), String>,
    ) -> Result<()> {
        check(name, settings)?;
        valid_zone(&settings.timezone).map_err(StoreError::Invalid)?;
        self.0.write(|tx| {
            let mut t = tx.open_table(SHAPING)?;
            if t.get(name)?.is_none() && t.len()? as usize >= MAX_SHAPING_GROUPS {
                return Err(StoreError::Invalid(format!(
                    "a server has at most {MAX_SHAPING_GROUPS} shaping groups; change or \
                     remove one (tern shaping ls)"
                )));
            }
            t.insert(name, encode(settings)?.as_slice())?;
            Ok(())
        })
    }

    /// Removes a group that no partner or user draws from.
    pub fn remove(&self, name: &str) -> Result<()> {
        let found = self.0.write(|tx| {
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
            Ok(tx.open_table(SHAPING)?.remove(name)?.is_some())
        })?;
        if !found {
            return Err(StoreError::NotFound(format!("no shaping group {name}")));
        }
        Ok(())
    }

    /// The partners and users that draw from group `name`.
    pub fn assigned(&self, name: &str) -> Result<(Vec<String>, Vec<String>)> {
        let tx = self.0.read()?;
        let (Some(partners), Some(users)) =
            (tables::open(&tx, PARTNERS)?, tables::open(&tx, USERS)?)
        else {
            // A table never written has no one in it; the other may.
            let mut out = (Vec::new(), Vec::new());
            if let Some(p) = tables::open(&tx, PARTNERS)? {
                out.0 = by_partner(&p, name)?;
            }
            if let Some(u) = tables::open(&tx, USERS)? {
                out.1 = by_user(&u, name)?;
            }
            return Ok(out);
        };
        assigned(&partners, &users, name)
    }
}

/// A group's name and windows, as a group may have them.
fn check(name: &str, settings: &ShapingSettings) -> Result<()> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(StoreError::Invalid(format!(
            "shaping group name {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    if settings.windows.len() > MAX_SHAPING_WINDOWS {
        return Err(StoreError::Invalid(format!(
            "{} windows; a group has at most {MAX_SHAPING_WINDOWS}",
            settings.windows.len()
        )));
    }
    for w in &settings.windows {
        if w.days & 0x7f == 0
            || w.days & 0x80 != 0
            || w.start >= 1440
            || w.end > 1440
            || w.start == w.end
        {
            return Err(StoreError::Invalid(format!(
                "window {w} is not a valid window"
            )));
        }
    }
    Ok(())
}

fn assigned<P, U>(partners: &P, users: &U, name: &str) -> Result<(Vec<String>, Vec<String>)>
where
    P: ReadableTable<&'static str, &'static [u8]>,
    U: ReadableTable<&'static str, &'static [u8]>,
{
    Ok((by_partner(partners, name)?, by_user(users, name)?))
}

fn by_partner(
    partners: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for row in partners.iter()? {
        let (k, v) = row?;
        let p: PartnerRecord = decode("partner", v.value())?;
        if p.settings.shaping.as_deref() == Some(name) {
            out.push(k.value().to_string());
        }
    }
    Ok(out)
}

fn by_user(
    users: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for row in users.iter()? {
        let (k, v) = row?;
        let u: UserRecord = decode("user", v.value())?;
        if u.shaping.as_deref() == Some(name) {
            out.push(k.value().to_string());
        }
    }
    Ok(out)
}

fn show(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
