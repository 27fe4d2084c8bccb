//! Shaping groups in the store: their settings, checked and kept in the
//! catalog. The server's shaper (`crate::shaping`) applies them.

use tern_core::wire::{ShapingSettings, MAX_SHAPING_WINDOWS};

use super::{Result, Store, StoreError};

impl Store {
    /// A group's settings; `NotFound` names the groups there are.
    pub fn shaping_group(&self, name: &str) -> Result<ShapingSettings> {
        if let Some(s) = self.catalog.shaping_group(name)? {
            return Ok(s);
        }
        let names: Vec<String> = self
            .catalog
            .shaping_groups()?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        Err(StoreError::NotFound(format!(
            "no shaping group {name} (there are: {}); create it with tern shaping set",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        )))
    }

    pub fn shaping_groups(&self) -> Result<Vec<(String, ShapingSettings)>> {
        self.catalog.shaping_groups()
    }

    /// Creates or replaces a group, after checking its name, windows and
    /// time zone (`valid_zone` says whether the server knows it).
    pub fn shaping_set(
        &self,
        name: &str,
        settings: &ShapingSettings,
        valid_zone: impl Fn(&str) -> std::result::Result<(), String>,
    ) -> Result<()> {
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
        valid_zone(&settings.timezone).map_err(StoreError::Invalid)?;
        self.catalog.put_shaping_group(name, settings)
    }

    pub fn shaping_remove(&self, name: &str) -> Result<()> {
        if !self.catalog.remove_shaping_group(name)? {
            return Err(StoreError::NotFound(format!("no shaping group {name}")));
        }
        Ok(())
    }

    /// The partners and users that draw from group `name`.
    pub fn shaping_assigned(&self, name: &str) -> Result<(Vec<String>, Vec<String>)> {
        self.catalog.shaping_assigned(name)
    }
}
