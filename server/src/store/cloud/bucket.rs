//! A cloud group's bucket: the S3 requests it makes (through `object_store`),
//! run on a small runtime of their own so that any engine thread, blocking
//! or async, can wait for them, and counted by kind for `tern group ls`.
//!
//! Transient failures (connection refused, 5xx, timeouts) are retried by
//! `object_store` with exponential backoff for up to [`RETRY_FOR`]; only
//! then does a request fail, and with it the write or read that needed it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::store::hex;

/// How long a request is retried before the operation that needed it fails.
pub const RETRY_FOR: Duration = Duration::from_secs(120);

/// An object a LIST found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    /// Unix seconds, as the store reports them.
    pub modified: u64,
}

/// Where a cloud group's objects are: no secret in here (it is in the catalog).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSpec {
    /// The S3 endpoint, e.g. `http://127.0.0.1:3900`.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Prepended to every object name; empty or ending in `/`.
    pub prefix: String,
}

impl BucketSpec {
    /// Parses `http(s)://host[:port]/bucket`.
    pub fn parse(url: &str, region: &str, prefix: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not a URL like http://host:3900/bucket"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("{url:?}: only http and https endpoints are known"));
        }
        let (host, bucket) = rest
            .split_once('/')
            .ok_or_else(|| format!("{url:?} names no bucket (http://host:3900/bucket)"))?;
        let bucket = bucket.trim_end_matches('/');
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if host.is_empty() || !bucket_ok {
            return Err(format!(
                "{url:?}: the bucket must be 3 to 63 lowercase letters, digits, dots or dashes"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.len() > 200 || prefix.contains("//") || prefix.contains('\\') {
            return Err(format!("prefix {prefix:?} is not a plain path"));
        }
        Ok(Self {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_string(),
            region: if region.is_empty() {
                "garage".into()
            } else {
                region.to_string()
            },
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// For messages: `endpoint/bucket/prefix`.
    pub fn location(&self) -> String {
        format!("{}/{}/{}", self.endpoint, self.bucket, self.prefix)
    }
}

/// The S3 credentials of a cloud group.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ..)", self.access_key_id)
    }
}

/// Requests made and failed, by kind.
#[derive(Debug, Default)]
pub struct Counters {
    pub put: AtomicU64,
    pub get: AtomicU64,
    pub delete: AtomicU64,
    pub head: AtomicU64,
    pub list: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// Why a request failed (after its retries).
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("{what} {name} at {location}: not found")]
    NotFound {
        what: &'static str,
        name: String,
        location: String,
    },
    #[error("{what} {name} at {location}: {source}")]
    Request {
        what: &'static str,
        name: String,
        location: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("the S3 client for {location}: {source}")]
    Client {
        location: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("the S3 runtime is gone")]
    Runtime,
}

impl From<BucketError> for std::io::Error {
    fn from(e: BucketError) -> Self {
        let kind = match &e {
            BucketError::NotFound { .. } => std::io::ErrorKind::NotFound,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// One bucket prefix, and what was asked of it.
pub struct Bucket {
    spec: BucketSpec,
    s3: AmazonS3,
    pub counters: Counters,
}

fn runtime() -> Result<&'static tokio::runtime::Runtime, BucketError> {
    static RT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3")
            .enable_all()
            .build()
            .ok()
    })
    .as_ref()
    .ok_or(BucketError::Runtime)
}

/// Runs `fut` on the S3 runtime and waits for it, from any thread.
fn run<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Result<T, BucketError> {
    let (tx, rx) = mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| BucketError::Runtime)
}

impl Bucket {
    pub fn new(spec: BucketSpec, creds: &Credentials) -> Result<Self, BucketError> {
        // reqwest's TLS (https endpoints) uses the process's rustls provider:
        // ring, as ternd's own TLS. An error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let retry = RetryConfig {
            // The time bound governs, not the count: refused connections
            // fail fast, and 30 of them took 17 s.
            max_retries: 10_000,
            retry_timeout: RETRY_FOR,
            ..RetryConfig::default()
        };
        let plain = spec.endpoint.starts_with("http://");
        // A plain-http endpoint is a store on the same network (Garage or
        // MinIO beside ternd): there each request gets a connection of its
        // own, which costs one local round trip. A kept-alive connection
        // to a server that leaves Nagle on (Garage 2.5 does) meets our
        // delayed ACKs: a response's last small segment waits 40 ms, and
        // a third of the reads of a restore did. Over https a new
        // connection would cost a TLS handshake: those stay pooled.
        let mut options = ClientOptions::new();
        if plain {
            options = options.with_pool_max_idle_per_host(0);
        }
        let s3 = AmazonS3Builder::new()
            .with_client_options(options)
            .with_endpoint(&spec.endpoint)
            .with_allow_http(plain)
            .with_bucket_name(&spec.bucket)
            .with_region(&spec.region)
            .with_access_key_id(&creds.access_key_id)
            .with_secret_access_key(&creds.secret_access_key)
            .with_virtual_hosted_style_request(false)
            // No SHA-256 of each body in the request's signature (its
            // headers stay signed): every object is sealed, so a body
            // changed on the way fails to open and fsck names it, and the
            // hash cost ternd and the store about 0.5 CPU-s per GiB each.
            .with_unsigned_payload(true)
            .with_retry(retry)
            .build()
            .map_err(|source| BucketError::Client {
                location: spec.location(),
                source: Box::new(source),
            })?;
        Ok(Self {
            spec,
            s3,
            counters: Counters::default(),
        })
    }

    pub fn spec(&self) -> &BucketSpec {
        &self.spec
    }

    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{name}", self.spec.prefix))
    }

    fn fail(&self, what: &'static str, name: &str, e: object_store::Error) -> BucketError {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let location = self.spec.location();
        let name = name.to_string();
        match e {
            object_store::Error::NotFound { .. } => BucketError::NotFound {
                what,
                name,
                location,
            },
            source => BucketError::Request {
                what,
                name,
                location,
                source: Box::new(source),
            },
        }
    }

    /// Stores `bytes` as object `name` (a new, unique name: never relies on
    /// the store refusing an overwrite).
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), BucketError> {
        self.counters.put.fetch_add(1, Ordering::Relaxed);
        let len = bytes.len() as u64;
        let (s3, path) = (self.s3.clone(), self.path(name));
        run(async move { s3.put(&path, PutPayload::from(bytes)).await })?
            .map_err(|e| self.fail("writing object", name, e))?;
        self.counters.bytes_up.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Object `name` whole.
    pub fn get(&self, name: &str) -> Result<Vec<u8>, BucketError> {
        self.fetch(name)?
            .map_err(|e| self.fail("reading object", name, e))
    }

    /// Object `name` whole, or `None` if there is none: an answer, not a
    /// failed request (the lease before a group's first start).
    pub fn get_if_present(&self, name: &str) -> Result<Option<Vec<u8>>, BucketError> {
        match self.fetch(name)? {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("reading object", name, e)),
        }
    }

    /// One GET of object `name`, counted; the store's own error, uncounted.
    fn fetch(&self, name: &str) -> Result<Result<Vec<u8>, object_store::Error>, BucketError> {
        self.counters.get.fetch_add(1, Ordering::Relaxed);
        let (s3, path) = (self.s3.clone(), self.path(name));
        let got = run(async move {
            match s3.get(&path).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
        })?;
        Ok(got.map(|bytes| {
            self.counters
                .bytes_down
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            bytes.to_vec()
        }))
    }

    /// Bytes `start..start + len` of object `name`; fewer only if it is shorter.
    pub fn get_range(&self, name: &str, start: u64, len: u64) -> Result<Vec<u8>, BucketError> {
        self.counters.get.fetch_add(1, Ordering::Relaxed);
        let (s3, path) = (self.s3.clone(), self.path(name));
        let bytes = run(async move { s3.get_range(&path, start..start + len).await })?
            .map_err(|e| self.fail("reading object", name, e))?;
        self.counters
            .bytes_down
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        // No copy: a body of several parts arrives collected in a buffer
        // of its own, which the conversion takes over.
        Ok(Vec::from(bytes))
    }

    /// Object `name`'s size, or `None` if there is none.
    pub fn size(&self, name: &str) -> Result<Option<u64>, BucketError> {
        self.counters.head.fetch_add(1, Ordering::Relaxed);
        let (s3, path) = (self.s3.clone(), self.path(name));
        match run(async move { s3.head(&path).await })? {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("looking up object", name, e)),
        }
    }

    /// Deletes object `name` (deleting one that is gone is not an error).
    pub fn delete(&self, name: &str) -> Result<(), BucketError> {
        self.counters.delete.fetch_add(1, Ordering::Relaxed);
        let (s3, path) = (self.s3.clone(), self.path(name));
        match run(async move { s3.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("deleting object", name, e)),
        }
    }

    /// The names of the objects in `dir/` under the prefix: one LIST (paged
    /// by the store), made only when a group is recovered.
    pub fn list(&self, dir: &str) -> Result<Vec<String>, BucketError> {
        Ok(self.list_meta(dir)?.into_iter().map(|o| o.name).collect())
    }

    /// The objects directly in `dir/` under the prefix ("" for the prefix
    /// itself), with their sizes and times: one LIST (paged by the store).
    pub fn list_meta(&self, dir: &str) -> Result<Vec<Listed>, BucketError> {
        self.counters.list.fetch_add(1, Ordering::Relaxed);
        let (s3, path) = (self.s3.clone(), self.path(dir));
        let listed = run(async move { s3.list_with_delimiter(Some(&path)).await })?
            .map_err(|e| self.fail("listing", dir, e))?;
        Ok(listed
            .objects
            .iter()
            .filter_map(|o| {
                Some(Listed {
                    name: o.location.filename()?.to_string(),
                    size: o.size,
                    modified: u64::try_from(o.last_modified.timestamp()).unwrap_or(0),
                })
            })
            .collect())
    }

    /// Writes, reads back and deletes a probe object: proves the endpoint,
    /// the bucket and the credentials before a group is accepted.
    pub fn probe(&self) -> Result<(), String> {
        let name = format!(
            "probe-{}",
            hex(&super::sealed::random::<8>().map_err(|e| e.to_string())?)
        );
        let body = super::sealed::random::<32>()
            .map_err(|e| e.to_string())?
            .to_vec();
        let at = self.spec.location();
        self.put(&name, body.clone())
            .map_err(|e| format!("cannot write to {at}: {e}"))?;
        let back = self
            .get(&name)
            .map_err(|e| format!("cannot read back from {at}: {e}"))?;
        self.delete(&name)
            .map_err(|e| format!("cannot delete in {at}: {e}"))?;
        if back != body {
            return Err(format!("{at} gave back other bytes than were written"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls_are_parsed_or_refused_with_the_reason() {
        let s = BucketSpec::parse("http://127.0.0.1:3900/tern", "", "site/a/").unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:3900");
        assert_eq!(s.bucket, "tern");
        assert_eq!(s.region, "garage");
        assert_eq!(s.prefix, "site/a/");
        assert_eq!(
            BucketSpec::parse("https://s3.example/b-1/", "eu", "")
                .unwrap()
                .prefix,
            ""
        );
        for bad in [
            "127.0.0.1:3900/tern",
            "ftp://h/tern",
            "http://h",
            "http://h/Tern",
            "http:///tern",
            "http://h/a",
        ] {
            assert!(BucketSpec::parse(bad, "", "").is_err(), "{bad}");
        }
        assert!(BucketSpec::parse("http://h/tern", "", "a//b").is_err());
    }
}
