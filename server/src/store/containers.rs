//! Containers and the names in them: create, list, remove; list and delete images.

use tern_core::names::GroupName;
use tern_core::wire::{ContainerInfo, ContainerSettings, ImageInfo};
use tern_core::{ContainerName, ImageName};

use super::records::{now_unix, ContainerRecord, ImageRecord};
use super::{lock, Result, Store, StoreError, User, DEFAULT_GROUP, DEFAULT_ZSTD_LEVEL};

impl Store {
    pub fn container_create(
        &self,
        user: &User,
        name: &ContainerName,
        s: &ContainerSettings,
    ) -> Result<ContainerInfo> {
        let group = s.group.clone().unwrap_or_else(default_group);
        if !user.may_use(&group) {
            return Err(StoreError::Denied(format!(
                "user {} may not use storage group {group}",
                user.name
            )));
        }
        if self.catalog.group_id(&group)?.is_none() && !user.admin {
            return Err(StoreError::Denied(format!(
                "storage group {group} does not exist, and only an admin may create it"
            )));
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
        let rec = self.catalog.insert_container(name, |id| ContainerRecord {
            id,
            group,
            chunking,
            zstd_level,
            stream_limit: s.stream_limit.unwrap_or(0),
            created: now_unix(),
        })?;
        Ok(container_info(name.clone(), &rec, 0, 0))
    }

    /// The container `name`, if `user` may see it.
    pub(super) fn container(&self, user: &User, name: &ContainerName) -> Result<ContainerRecord> {
        match self.catalog.container(name)? {
            Some(rec) if user.may_use(&rec.group) => Ok(rec),
            // Indistinguishable from absence: names of other tenants' containers stay private.
            _ => Err(StoreError::NotFound(format!(
                "container {name} does not exist"
            ))),
        }
    }

    /// The id of a container's storage group.
    pub(super) fn group_of(&self, rec: &ContainerRecord) -> Result<u32> {
        self.catalog
            .group_id(&rec.group)?
            .ok_or_else(|| StoreError::Corrupt(format!("storage group {} is missing", rec.group)))
    }

    pub fn container_list(&self, user: &User) -> Result<Vec<ContainerInfo>> {
        Ok(self
            .catalog
            .containers()?
            .into_iter()
            .filter(|(_, rec, _, _)| user.may_use(&rec.group))
            .map(|(name, rec, images, bytes)| container_info(name, &rec, images, bytes))
            .collect())
    }

    /// Removes an empty container.
    pub fn container_remove(&self, user: &User, name: &ContainerName) -> Result<()> {
        let rec = self.container(user, name)?;
        if lock(&self.open).values().any(|o| o.container_id == rec.id) {
            return Err(StoreError::Busy(format!(
                "container {name} has images being written"
            )));
        }
        self.catalog.remove_empty_container(name, rec.id)
    }

    pub fn image_list(
        &self,
        user: &User,
        container: &ContainerName,
        prefix: &str,
    ) -> Result<Vec<ImageInfo>> {
        let c = self.container(user, container)?;
        Ok(self
            .catalog
            .images(c.id, prefix)?
            .into_iter()
            .map(|(name, rec)| image_info(container.clone(), name, rec))
            .collect())
    }

    /// Deletes an image; its chunks are reclaimed by the next GC.
    pub fn image_remove(
        &self,
        user: &User,
        container: &ContainerName,
        name: &ImageName,
    ) -> Result<()> {
        let c = self.container(user, container)?;
        if !self.catalog.remove_image(c.id, name)? {
            return Err(StoreError::NotFound(format!(
                "image {name} does not exist in container {container}"
            )));
        }
        Ok(())
    }
}

pub(super) fn default_group() -> GroupName {
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
    }
}

pub(super) fn image_info(container: ContainerName, name: ImageName, rec: ImageRecord) -> ImageInfo {
    ImageInfo {
        container,
        name,
        size: rec.size,
        chunks: rec.chunks,
        props: rec.props,
        created: rec.created,
    }
}
