//! Containers and the names in them: create, list, remove; list and delete images.

use tern_core::names::GroupName;
use tern_core::wire::{
    ContainerInfo, ContainerSettings, ImageInfo, ImageLocation, ImageLock, LockMode,
};
use tern_core::{ContainerName, ImageName};

use super::records::{now_unix, ContainerRecord, ImageRecord};
use super::{
    lock, Owner, ReadableImage, Result, Scope, Store, StoreError, DEFAULT_GROUP, DEFAULT_ZSTD_LEVEL,
};

/// The storage group a new container goes into, and its name there: the
/// group it is named in (`GROUP/NAME`), else the one its settings give,
/// else the default group.
pub fn container_home(
    name: &ContainerName,
    s: &ContainerSettings,
) -> Result<(GroupName, ContainerName)> {
    let (named_group, bare) = name.split();
    let group = match (named_group.as_ref(), s.group.as_ref()) {
        (Some(a), Some(b)) if a != b => {
            return Err(StoreError::Invalid(format!(
                "the container is named in storage group {a} but created in {b}"
            )))
        }
        (Some(g), _) | (None, Some(g)) => g.clone(),
        (None, None) => default_group(),
    };
    Ok((group, bare))
}

impl Store {
    /// True if storage group `group` exists.
    pub fn group_exists(&self, group: &GroupName) -> Result<bool> {
        Ok(self.catalog.group_id(group)?.is_some())
    }

    /// Creates container `name` in `group` (made if it does not exist).
    pub fn container_create(
        &self,
        group: &GroupName,
        name: &ContainerName,
        s: &ContainerSettings,
    ) -> Result<ContainerInfo> {
        let (group, name) = (group.clone(), name.clone());
        if s.import && !s.replica {
            return Err(StoreError::Invalid(
                "--import needs --replica: import events come from replicas".into(),
            ));
        }
        let chunking = s.chunking.unwrap_or_default();
        chunking.validate().map_err(StoreError::Invalid)?;
        let zstd_level = s.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL);
        if !(1..=19).contains(&zstd_level) {
            return Err(StoreError::Invalid(format!(
                "zstd level {zstd_level} is outside 1..=19"
            )));
        }
        self.ensure_group(&group)?;
        let rec = self
            .catalog
            .insert_container(&group, &name, |id| ContainerRecord {
                id,
                group: group.clone(),
                chunking,
                zstd_level,
                stream_limit: s.stream_limit.unwrap_or(0),
                created: now_unix(),
                replica: s.replica,
                import: s.import,
                // Chunking given by the creator stays; else the first copy sets it.
                inherited: s.chunking.is_some(),
                replicate_to: None,
                lock: None,
                tier: None,
            })?;
        Ok(container_info(name, &rec, 0, 0))
    }

    /// The container `name` (`GROUP/NAME`, or a name that only one group of
    /// the scope has), if `scope` sees it.
    pub(super) fn container(&self, scope: &Scope, name: &ContainerName) -> Result<ContainerRecord> {
        self.container_where(name, |g| scope.sees(g))
    }

    /// The storage group of container `name`, as `scope` sees it.
    pub fn container_group(&self, scope: &Scope, name: &ContainerName) -> Result<GroupName> {
        Ok(self.container(scope, name)?.group)
    }

    /// [`Store::container`] among the groups for which `visible` is true.
    pub(super) fn container_where(
        &self,
        name: &ContainerName,
        visible: impl Fn(&GroupName) -> bool,
    ) -> Result<ContainerRecord> {
        let missing = || StoreError::NotFound(format!("container {name} does not exist"));
        let (group, bare) = name.split();
        if let Some(group) = group {
            return match self.catalog.container(&group, &bare)? {
                Some(rec) if visible(&rec.group) => Ok(rec),
                _ => Err(missing()),
            };
        }
        let mut visible: Vec<ContainerRecord> = self
            .catalog
            .containers_named(&bare)?
            .into_iter()
            .filter(|rec| visible(&rec.group))
            .collect();
        match visible.len() {
            0 => Err(missing()),
            1 => Ok(visible.remove(0)),
            _ => {
                let groups: Vec<String> = visible.iter().map(|r| r.group.to_string()).collect();
                Err(StoreError::Invalid(format!(
                    "container {bare} exists in storage groups {}: say which, as GROUP/{bare}",
                    groups.join(", ")
                )))
            }
        }
    }

    /// Turns a replica container into an ordinary one, for failover:
    /// clients may then write into it.
    pub fn container_promote(&self, scope: &Scope, name: &ContainerName) -> Result<()> {
        let rec = self.container(scope, name)?;
        self.catalog
            .update_container(&rec, &name.split().1, |c, _| {
                if !c.replica {
                    return Err(StoreError::Invalid(format!(
                        "container {name} is not a replica container"
                    )));
                }
                c.replica = false;
                c.import = false;
                Ok(())
            })?;
        Ok(())
    }

    /// Sets or ends a container's replication policy: after each commit,
    /// its images are copied to `to` (a partner's name and a container
    /// there), which the engine keeps without reading.
    pub fn container_replicate(
        &self,
        scope: &Scope,
        name: &ContainerName,
        to: Option<(String, ContainerName)>,
    ) -> Result<()> {
        let rec = self.container(scope, name)?;
        self.catalog
            .update_container(&rec, &name.split().1, |c, _| {
                c.replicate_to = to;
                Ok(())
            })?;
        Ok(())
    }

    /// Sets or ends a container's cloud tier policy, which the engine
    /// keeps without reading (the service checks it).
    pub fn container_set_tier(
        &self,
        scope: &Scope,
        name: &ContainerName,
        policy: Option<tern_core::wire::TierPolicy>,
    ) -> Result<ContainerRecord> {
        let rec = self.container(scope, name)?;
        self.catalog
            .update_container(&rec, &name.split().1, |c, _| {
                c.tier = policy;
                Ok(())
            })
    }

    /// Every container with a tier policy: its name (`GROUP/NAME`) and record.
    pub fn tiered_containers(&self) -> Result<Vec<(ContainerName, ContainerRecord)>> {
        let mut out = Vec::new();
        for (name, rec, _, _) in self.catalog.containers()? {
            if rec.tier.is_some() {
                let qualified = ContainerName::new(format!("{}/{name}", rec.group))
                    .map_err(|e| StoreError::Corrupt(format!("container {name}: {e}")))?;
                out.push((qualified, rec));
            }
        }
        Ok(out)
    }

    /// The committed images of a container as the catalog keeps them
    /// (with their ids and times), by name.
    pub fn image_records(
        &self,
        container: &ContainerRecord,
    ) -> Result<Vec<(ImageName, ImageRecord)>> {
        self.catalog.images(container.id, "")
    }

    /// The committed image `name` of `container`, if it has one.
    pub fn image_of(
        &self,
        container: &ContainerRecord,
        name: &ImageName,
    ) -> Result<Option<ImageRecord>> {
        self.catalog.image(container.id, name)
    }

    /// The committed image `name` of `container` as `scope` sees it, with
    /// its container's record; None if the container has no such image.
    pub fn image_record(
        &self,
        scope: &Scope,
        container: &ContainerName,
        name: &ImageName,
    ) -> Result<Option<(ContainerRecord, ImageRecord)>> {
        let c = self.container(scope, container)?;
        Ok(self.catalog.image(c.id, name)?.map(|img| (c, img)))
    }

    /// True if group `name` keeps its packs in object storage.
    pub fn group_is_cloud(&self, name: &GroupName) -> Result<bool> {
        match self.catalog.group(name)? {
            Some(g) => Ok(g.cloud.is_some()),
            None => Err(StoreError::NotFound(format!("no storage group {name}"))),
        }
    }

    /// The id of a container's storage group.
    pub(super) fn group_of(&self, rec: &ContainerRecord) -> Result<u32> {
        self.catalog
            .group_id(&rec.group)?
            .ok_or_else(|| StoreError::Corrupt(format!("storage group {} is missing", rec.group)))
    }

    pub fn container_list(&self, scope: &Scope) -> Result<Vec<ContainerInfo>> {
        Ok(self
            .catalog
            .containers()?
            .into_iter()
            .filter(|(_, rec, _, _)| scope.sees(&rec.group))
            .map(|(name, rec, images, bytes)| container_info(name, &rec, images, bytes))
            .collect())
    }

    /// Removes an empty container; never one under a compliance lock.
    pub fn container_remove(&self, scope: &Scope, name: &ContainerName) -> Result<()> {
        let rec = self.container(scope, name)?;
        if let Some(l) = rec.lock.filter(|l| l.mode == LockMode::Compliance) {
            return Err(StoreError::Locked(format!(
                "container {name} has a compliance retention lock of {} days: nobody can remove it",
                l.days
            )));
        }
        if lock(&self.open).values().any(|o| o.container_id == rec.id) {
            return Err(StoreError::Busy(format!(
                "container {name} has images being written"
            )));
        }
        self.catalog
            .remove_empty_container(&rec.group, &name.split().1, rec.id)
    }

    pub fn image_list(
        &self,
        scope: &Scope,
        container: &ContainerName,
        prefix: &str,
    ) -> Result<Vec<ImageInfo>> {
        let c = self.container(scope, container)?;
        Ok(self
            .catalog
            .images(c.id, prefix)?
            .into_iter()
            .map(|(name, rec)| self.image_info(&c, container.clone(), name, rec))
            .collect())
    }

    /// Replaces a committed image's properties.
    pub fn image_set_props(
        &self,
        scope: &Scope,
        container: &ContainerName,
        name: &ImageName,
        props: Vec<u8>,
    ) -> Result<()> {
        if props.len() > tern_core::wire::MAX_PROPS_LEN {
            return Err(StoreError::Invalid(format!(
                "image properties of {} bytes; the limit is {}",
                props.len(),
                tern_core::wire::MAX_PROPS_LEN
            )));
        }
        let c = self.container(scope, container)?;
        let allowed = |rec: &ImageRecord| self.check_unlocked(&c, name, rec, "changed", false);
        if !self
            .catalog
            .set_image_props(c.id, name, props, self.now(), allowed)?
        {
            return Err(StoreError::NotFound(format!(
                "image {name} does not exist in container {container}"
            )));
        }
        Ok(())
    }

    /// Deletes an image, or an incomplete one of `owner`'s; its chunks are
    /// reclaimed by the next GC. An image under its container's retention
    /// lock stays, unless `bypass_lock` and the lock is governance (the
    /// caller checked that an admin asked).
    pub fn image_remove(
        &self,
        scope: &Scope,
        owner: Owner<'_>,
        container: &ContainerName,
        name: &ImageName,
        bypass_lock: bool,
    ) -> Result<()> {
        let c = self.container(scope, container)?;
        let allowed =
            |rec: &ImageRecord| self.check_unlocked(&c, name, rec, "deleted", bypass_lock);
        if !self.catalog.remove_image(c.id, name, allowed)?
            && !self.remove_incomplete(owner, c.id, container, name)?
        {
            return Err(StoreError::NotFound(format!(
                "image {name} does not exist in container {container}"
            )));
        }
        Ok(())
    }
}

impl Store {
    /// A store of `entries` index entries without their data, for measuring
    /// GC and stats at scale: see [`Catalog::synthetic_fill`]. Into container
    /// `synthetic` of the default group, made if needed.
    ///
    /// [`Catalog::synthetic_fill`]: super::catalog::Catalog::synthetic_fill
    pub fn synthetic_fill(&self, entries: u64, live_every: u64) -> Result<()> {
        let group = default_group();
        let name =
            ContainerName::new("synthetic").map_err(|e| StoreError::Invalid(e.to_string()))?;
        let rec = match self.catalog.container(&group, &name)? {
            Some(rec) => rec,
            None => self
                .catalog
                .insert_container(&group, &name, |id| ContainerRecord {
                    id,
                    group: group.clone(),
                    chunking: tern_core::ChunkParams::default(),
                    zstd_level: super::DEFAULT_ZSTD_LEVEL,
                    stream_limit: 0,
                    created: super::records::now_unix(),
                    replica: false,
                    import: false,
                    inherited: false,
                    replicate_to: None,
                    lock: None,
                    tier: None,
                })?,
        };
        let gid = self.group_of(&rec)?;
        self.catalog
            .synthetic_fill(rec.id, gid, entries, live_every)
    }
}

pub fn default_group() -> GroupName {
    GroupName::new(DEFAULT_GROUP).expect("the default group's name is valid")
}

fn container_info(
    name: ContainerName,
    rec: &ContainerRecord,
    images: u64,
    logical_bytes: u64,
) -> ContainerInfo {
    ContainerInfo {
        name,
        group: rec.group.clone(),
        chunking: rec.chunking,
        zstd_level: rec.zstd_level,
        stream_limit: rec.stream_limit,
        images,
        logical_bytes,
        replica: rec.replica,
        import: rec.import,
        replicate_to: rec.replicate_to.clone(),
        lock: rec.lock,
    }
}

impl Store {
    /// What a client is told of image `rec` of container `c`.
    pub(super) fn image_info(
        &self,
        c: &ContainerRecord,
        container: ContainerName,
        name: ImageName,
        rec: ImageRecord,
    ) -> ImageInfo {
        let lock = self.image_lock(c, &rec);
        info_of(container, name, rec, lock)
    }

    /// Image `rec` of container `c` opened for reading, with the lock
    /// holding it (a copy carries it).
    pub(super) fn readable(
        &self,
        c: &ContainerRecord,
        container: ContainerName,
        name: ImageName,
        rec: ImageRecord,
    ) -> Result<ReadableImage> {
        let lock = self.image_lock(c, &rec);
        let (group, image_id) = match &rec.held {
            Some(h) => self.held_source(h)?,
            None => (self.group_of(c)?, rec.id),
        };
        Ok(ReadableImage {
            image_id,
            group,
            lock,
            info: info_of(container, name, rec, lock),
            moved: Default::default(),
        })
    }
}

fn info_of(
    container: ContainerName,
    name: ImageName,
    rec: ImageRecord,
    lock: Option<ImageLock>,
) -> ImageInfo {
    ImageInfo {
        lock_until: lock.map_or(0, |l| l.until),
        location: match rec.held {
            Some(_) => ImageLocation::Cloud,
            None => ImageLocation::Local,
        },
        container,
        name,
        size: rec.size,
        chunks: rec.chunks,
        props: rec.props,
        created: rec.created,
    }
}
