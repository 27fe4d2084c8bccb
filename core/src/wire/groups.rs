//! Storage groups on the wire (protocol 8): where a group keeps its packs,
//! and what each holds and has left.

use serde::{Deserialize, Serialize};

/// Where a new storage group keeps its packs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GroupSettings {
    /// An absolute directory on the server, on a volume of its own (a
    /// performance tier); `None`: under the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An S3 bucket (a cloud group); `None` for a group on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<CloudSettings>,
}

/// Where a cloud group's objects go, and the secrets ternd keeps for it
/// (sent over the admin's TLS session only).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CloudSettings {
    /// `http(s)://host:port/bucket`.
    pub url: String,
    /// The bucket's region (Garage's default: `garage`).
    #[serde(default)]
    pub region: String,
    /// A path inside the bucket that all the group's objects go under.
    #[serde(default)]
    pub prefix: String,
    /// The S3 access key id ternd uses for this bucket.
    pub access_key_id: String,
    /// Its secret key.
    pub secret_access_key: String,
    /// Wraps the group's data key (argon2id); at least 12 characters.
    pub passphrase: String,
}

impl std::fmt::Debug for CloudSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudSettings")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl CloudSettings {
    /// Objects in the bucket at `url` (`http(s)://host:port/bucket`).
    pub fn new(
        url: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        passphrase: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            passphrase: passphrase.into(),
            ..Self::default()
        }
    }

    /// In region `region`.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Every object under `prefix`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

impl GroupSettings {
    /// Packs in `path` on the server.
    pub fn at_path(path: impl Into<String>) -> Self {
        Self {
            path: Some(path.into()),
            s3: None,
        }
    }

    /// Packs in an S3 bucket.
    pub fn in_bucket(settings: CloudSettings) -> Self {
        Self {
            path: None,
            s3: Some(settings),
        }
    }
}

/// One storage group, as `GroupList` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// `data` (under the data directory), `volume` (a directory of its
    /// own) or `cloud` (an S3 bucket).
    pub kind: String,
    /// The directory its packs are in, or `endpoint/bucket/prefix` (empty
    /// for users who are not admins).
    #[serde(default)]
    pub location: String,
    /// Containers in it.
    pub containers: u64,
    /// Committed images in them.
    pub images: u64,
    /// Sum of the sizes of its images.
    pub logical_bytes: u64,
    /// Chunks stored once each in it.
    pub chunks: u64,
    /// Sum of the plaintext sizes of those chunks.
    pub unique_bytes: u64,
    /// Compressed bytes of those chunks.
    pub stored_bytes: u64,
    /// Bytes of its pack files, including space GC has yet to reclaim.
    pub pack_bytes: u64,
    /// Size of the filesystem its packs are on.
    pub fs_total_bytes: u64,
    /// Bytes used on that filesystem, by anything.
    pub fs_used_bytes: u64,
    /// Bytes new data may still take there: free space less the reserve
    /// kept for deletes and GC. Groups on one filesystem share it.
    pub free_bytes: u64,
    /// A cloud group's objects in its bucket (zero for other groups).
    #[serde(default)]
    pub objects: u64,
    /// Bytes of its live objects in the bucket.
    #[serde(default)]
    pub object_bytes: u64,
    /// Objects GC dropped that wait out the grace period before deletion.
    #[serde(default)]
    pub doomed_objects: u64,
    /// Bytes of packs built locally and not yet uploaded.
    #[serde(default)]
    pub staged_bytes: u64,
    /// Bytes of the local read cache in use.
    #[serde(default)]
    pub cache_bytes: u64,
    /// PUT requests made to the bucket since ternd started.
    #[serde(default)]
    pub puts: u64,
    /// GET requests (whole or ranged).
    #[serde(default)]
    pub gets: u64,
    /// DELETE requests.
    #[serde(default)]
    pub deletes: u64,
    /// HEAD requests.
    #[serde(default)]
    pub heads: u64,
    /// Requests that failed after their retries.
    #[serde(default)]
    pub request_errors: u64,
    /// Bytes sent to the bucket since ternd started.
    #[serde(default)]
    pub bytes_up: u64,
    /// Bytes read from it.
    #[serde(default)]
    pub bytes_down: u64,
    /// When the group's catalog was last saved to its bucket (Unix
    /// seconds; 0: not yet): what `ternd group recover` would rebuild.
    #[serde(default)]
    pub catalog_saved: u64,
    /// The images that saved catalog lists.
    #[serde(default)]
    pub catalog_images: u64,
}
