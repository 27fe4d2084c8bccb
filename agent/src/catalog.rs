//! Containers and the images in them, through a client: create, list,
//! lock and remove containers; list, relabel and delete images.

use tern_core::wire::{
    ContainerInfo, ContainerSettings, ImageInfo, IncompleteImage, Listing, Msg, RetentionLock,
};
use tern_core::{ContainerName, ImageName};

use crate::client::{check_props, unexpected};
use crate::{Client, ClientError};

impl Client {
    /// Creates a container.
    pub fn container_create(
        &self,
        name: &str,
        settings: ContainerSettings,
    ) -> Result<(), ClientError> {
        let name = ContainerName::new(name)?;
        self.expect_ok(Msg::ContainerCreate { name, settings })
    }

    /// The containers the user may see.
    pub fn container_list(&self) -> Result<Vec<ContainerInfo>, ClientError> {
        self.pages(
            Msg::ContainerList,
            |_| Listing::Containers,
            crate::paging::each_page!(Msg::Containers),
        )
    }

    /// Removes an empty container.
    pub fn container_remove(&self, name: &str) -> Result<(), ClientError> {
        let name = ContainerName::new(name)?;
        self.expect_ok(Msg::ContainerRemove { name })
    }

    /// Lists a container's images whose names start with `prefix`.
    pub fn image_list(&self, container: &str, prefix: &str) -> Result<Vec<ImageInfo>, ClientError> {
        Ok(self.image_list_all(container, prefix)?.0)
    }

    /// Lists a container's committed images and its incomplete ones (being
    /// written, or left by a writer that went away) whose names start with `prefix`.
    pub fn image_list_all(
        &self,
        container: &str,
        prefix: &str,
    ) -> Result<(Vec<ImageInfo>, Vec<IncompleteImage>), ClientError> {
        let container = ContainerName::new(container)?;
        let first = Msg::ImageList {
            container: container.clone(),
            prefix: prefix.to_string(),
        };
        let listing = |_| Listing::Images {
            container: container.clone(),
            prefix: prefix.to_string(),
        };
        // Committed images come first, then incomplete ones; one list here.
        let all = self.pages(first, listing, |msg, out| match msg {
            Msg::Images {
                list,
                incomplete,
                next,
            } => {
                out.extend(list.into_iter().map(Ok));
                out.extend(incomplete.into_iter().map(Err));
                Ok(next)
            }
            other => Err(unexpected(other)),
        })?;
        let (mut list, mut incomplete) = (Vec::new(), Vec::new());
        for item in all {
            match item {
                Ok(i) => list.push(i),
                Err(i) => incomplete.push(i),
            }
        }
        Ok((list, incomplete))
    }

    /// Replaces a committed image's properties (at most `MAX_PROPS_LEN`
    /// bytes, refused before sending).
    pub fn image_set_props(
        &self,
        container: &str,
        name: &str,
        props: &[u8],
    ) -> Result<(), ClientError> {
        let container = ContainerName::new(container)?;
        let name = ImageName::new(name)?;
        check_props(props)?;
        self.expect_ok(Msg::ImagePropsSet {
            container,
            name,
            props: props.to_vec(),
        })
    }

    /// Deletes an image; its space returns at the server's next GC. Its
    /// cloud tier copy goes too.
    pub fn image_remove(&self, container: &str, name: &str) -> Result<(), ClientError> {
        self.remove_image(container, name, false, false)
    }

    /// Deletes an image and keeps its cloud tier copy (protocol 9; a
    /// delete otherwise takes the copy too). With `bypass_lock`, as
    /// [`Client::image_remove_bypassing_lock`].
    pub fn image_remove_keeping_cloud(
        &self,
        container: &str,
        name: &str,
        bypass_lock: bool,
    ) -> Result<(), ClientError> {
        self.remove_image(container, name, bypass_lock, true)
    }

    /// Deletes an image that its container's governance retention lock
    /// still holds (admins; protocol 6); the audit log records it. A
    /// compliance lock refuses it like any delete.
    pub fn image_remove_bypassing_lock(
        &self,
        container: &str,
        name: &str,
    ) -> Result<(), ClientError> {
        self.remove_image(container, name, true, false)
    }

    fn remove_image(
        &self,
        container: &str,
        name: &str,
        bypass_lock: bool,
        keep_cloud: bool,
    ) -> Result<(), ClientError> {
        self.expect_ok(Msg::ImageRemove {
            container: ContainerName::new(container)?,
            name: ImageName::new(name)?,
            bypass_lock,
            keep_cloud,
        })
    }

    /// Sets, lengthens or (governance only) removes a container's retention
    /// lock (admins; protocol 6).
    pub fn container_lock(
        &self,
        container: &str,
        lock: Option<RetentionLock>,
    ) -> Result<(), ClientError> {
        self.expect_ok(Msg::ContainerLock {
            name: ContainerName::new(container)?,
            lock,
        })
    }
}
