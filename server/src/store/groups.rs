//! Storage groups by name: add one on a volume of its own, list what each
//! holds and has left, remove an empty one.

use std::path::Path;

use tern_core::names::GroupName;
use tern_core::wire::GroupInfo;

use super::catalog::groups::Place;
use super::cloud::bucket::{BucketSpec, Credentials};
use super::cloud::{self, GroupPassphrase};
use super::records::GroupRecord;
use super::{lock, volume, Result, Scope, Store, StoreError, DEFAULT_GROUP};

impl Store {
    /// Creates group `name` with its packs in `dir`, a directory of another
    /// volume (see `volume.rs` for what is checked).
    pub fn group_add_volume(&self, name: &GroupName, dir: &Path) -> Result<GroupInfo> {
        if let Some(why) = self.read_only {
            return Err(StoreError::ReadOnly(why));
        }
        if self.catalog.group(name)?.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "storage group {name} exists"
            )));
        }
        let vol = volume::claim(dir, name, self.packs.data_dir())?;
        let place = Place {
            volume: Some(vol.clone()),
            cloud: None,
        };
        let added = self
            .catalog
            .insert_placed_group(name, place)
            .and_then(|id| {
                let rec = GroupRecord {
                    id,
                    volume: Some(vol.clone()),
                    cloud: None,
                };
                self.packs.add_group(name.as_str(), &rec)
            });
        if let Err(e) = added {
            // Not recorded: the directory is free again.
            let _ = volume::release(&vol);
            return Err(e);
        }
        tracing::info!("storage group {name} added in {}", vol.path.display());
        self.group_info(name)
    }

    /// Creates group `name` with its packs in the bucket `spec` names: the
    /// bucket is probed and given the group's key (see `cloud/setup.rs`).
    pub fn group_add_cloud(
        &self,
        name: &GroupName,
        spec: BucketSpec,
        credentials: Credentials,
        passphrase: &GroupPassphrase,
    ) -> Result<GroupInfo> {
        if let Some(why) = self.read_only {
            return Err(StoreError::ReadOnly(why));
        }
        if self.catalog.group(name)?.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "storage group {name} exists"
            )));
        }
        let dir = self.packs.data_dir().join("groups").join(name.as_str());
        if dir.exists() {
            return Err(StoreError::AlreadyExists(format!(
                "{} exists though no storage group {name} does: move it away first",
                dir.display()
            )));
        }
        let created = cloud::create_group(&dir, &spec, credentials, passphrase).and_then(|()| {
            let place = Place {
                volume: None,
                cloud: Some(spec.clone()),
            };
            let id = self.catalog.insert_placed_group(name, place)?;
            let rec = GroupRecord {
                id,
                volume: None,
                cloud: Some(spec.clone()),
            };
            self.packs.add_group(name.as_str(), &rec)
        });
        if let Err(e) = created {
            // Nothing recorded: the name and the directory are free again.
            if self.catalog.group(name)?.is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(e);
        }
        tracing::info!("storage group {name} added in {}", spec.location());
        self.group_info(name)
    }

    fn group_info(&self, name: &GroupName) -> Result<GroupInfo> {
        self.group_list(&Scope::Every, true)?
            .into_iter()
            .find(|g| g.name == name.as_str())
            .ok_or_else(|| StoreError::Corrupt(format!("storage group {name} vanished")))
    }

    /// Removes group `name`: only one with no container and no chunk left
    /// (GC takes the chunks of deleted images), and never the default group.
    pub fn group_remove(&self, name: &GroupName) -> Result<()> {
        if let Some(why) = self.read_only {
            return Err(StoreError::ReadOnly(why));
        }
        if name.as_str() == DEFAULT_GROUP {
            return Err(StoreError::Invalid(
                "the default storage group cannot be removed".into(),
            ));
        }
        let rec = self
            .catalog
            .group(name)?
            .ok_or_else(|| StoreError::NotFound(format!("no storage group {name}")))?;
        let prefix = rec.id.to_be_bytes();
        if lock(&self.pending).keys().any(|k| k[..4] == prefix) {
            return Err(StoreError::Busy(format!(
                "storage group {name} holds chunks of an image still being written or \
                 aborted: run `ternd gc` and try again"
            )));
        }
        let rec = self.catalog.remove_group(name)?;
        self.packs.remove_group(rec.id)?;
        match &rec.volume {
            Some(vol) => {
                let packs = volume::packs_dir(vol);
                if packs.exists() {
                    std::fs::remove_dir(&packs)?;
                }
                volume::release(vol)?;
            }
            None => {
                let dir = self.packs.data_dir().join("groups").join(name.as_str());
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)?;
                }
            }
        }
        tracing::info!("storage group {name} removed");
        Ok(())
    }

    /// The groups `scope` sees, with what each holds and the space of the
    /// filesystem its packs are on; `locations` says where they are.
    pub fn group_list(&self, scope: &Scope, locations: bool) -> Result<Vec<GroupInfo>> {
        let totals = self.catalog.group_totals()?;
        let containers = self.container_list(&Scope::Every)?;
        let packs = self.packs.packs()?;
        let mut out = Vec::new();
        for (name, rec) in self.catalog.groups()? {
            let group = GroupName::new(name.as_str())
                .map_err(|e| StoreError::Corrupt(format!("storage group name {name:?}: {e}")))?;
            if !scope.sees(&group) {
                continue;
            }
            let t = totals.get(&rec.id).cloned().unwrap_or_default();
            let theirs: Vec<_> = packs
                .iter()
                .filter(|p| p.group == rec.id)
                .copied()
                .collect();
            let space = self.packs.space_of(rec.id);
            let (free, total) = space.filesystem()?;
            let (kind, location) = match (&rec.volume, &rec.cloud) {
                (_, Some(spec)) => ("cloud", spec.location()),
                (Some(v), None) => ("volume", v.path.display().to_string()),
                (None, None) => {
                    let dir = self.packs.data_dir().join("groups").join(&name);
                    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
                    ("data", dir.display().to_string())
                }
            };
            let cloud = self.packs.cloud_usage(rec.id).unwrap_or_default();
            let mine = containers.iter().filter(|c| c.group == group);
            out.push(GroupInfo {
                name,
                kind: kind.into(),
                location: if locations { location } else { String::new() },
                containers: mine.clone().count() as u64,
                images: mine.clone().map(|c| c.images).sum(),
                logical_bytes: mine.map(|c| c.logical_bytes).sum(),
                chunks: t.chunks,
                unique_bytes: t.raw_bytes,
                stored_bytes: t.stored_bytes,
                pack_bytes: self.packs.bytes(&theirs),
                fs_total_bytes: total,
                fs_used_bytes: space.used()?,
                free_bytes: free.saturating_sub(space.reserve()),
                objects: cloud.objects,
                object_bytes: cloud.object_bytes,
                doomed_objects: cloud.doomed,
                staged_bytes: cloud.staged_bytes,
                cache_bytes: cloud.cache_bytes,
                puts: cloud.puts,
                gets: cloud.gets,
                deletes: cloud.deletes,
                heads: cloud.heads,
                request_errors: cloud.errors,
                bytes_up: cloud.bytes_up,
                bytes_down: cloud.bytes_down,
                catalog_saved: cloud.catalog_saved,
                catalog_images: cloud.catalog_images,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
