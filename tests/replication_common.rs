//! Shared by the replication tests: two real ternd processes paired as
//! source and target, and helpers to back up, restore and wait for copies.
#![allow(dead_code)]

use std::io::Write;
use std::time::{Duration, Instant};

use tern_agent::{Client, ContainerSettings, CopyId, CopyInfo, CopyTarget};
use tern_test_support::*;

pub const PARTNER_PASSWORD: &str = "partner-secret-1";

/// A source and a target: on the target a partner user allowed to
/// replicate into `default`, an import replica container `dr`; on the
/// source a container `c` and the target paired as `site-b`.
pub struct Pair {
    pub source: TestServer,
    pub target: TestServer,
}

impl Pair {
    pub fn new() -> Self {
        Self::with_target_args(&[])
    }

    pub fn with_target_args(args: &[&str]) -> Self {
        Self::of(TestServer::start(), args)
    }

    /// A pair around `source` (started with a config of its own, say).
    pub fn of(source: TestServer, target_args: &[&str]) -> Self {
        let target = TestServer::start_with(tempfile::tempdir().unwrap(), target_args);
        Self::around(source, target)
    }

    /// A pair of two servers started by the caller (with configs of their own, say).
    pub fn around(source: TestServer, target: TestServer) -> Self {
        let t = target.client();
        t.user_add("partner", PARTNER_PASSWORD, false).unwrap();
        t.user_set_replicate_into("partner", &["default"]).unwrap();
        let replica = ContainerSettings {
            replica: true,
            import: true,
            ..Default::default()
        };
        t.container_create("dr", replica).unwrap();
        source
            .client()
            .container_create("c", ContainerSettings::default())
            .unwrap();
        Pair { source, target }
    }

    pub fn pair(&self) -> Result<(), tern_agent::ClientError> {
        self.pair_at(&self.target.address())
    }

    /// Pairs with the target reached at `address` (a fault proxy, say).
    pub fn pair_at(&self, address: &str) -> Result<(), tern_agent::ClientError> {
        self.source.client().partner_add(
            "site-b",
            &[address],
            &self.target.fingerprint().to_string(),
            "partner",
            PARTNER_PASSWORD,
        )
    }
}

pub fn backup(client: &Client, container: &str, name: &str, props: &[u8], data: &[u8]) {
    let mut w = client.create_image(container, name, props).unwrap();
    w.write_all(data).unwrap();
    w.commit().unwrap();
}

pub fn restore(client: &Client, container: &str, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    client
        .open_image(container, name)
        .unwrap()
        .copy_to(&mut out)
        .unwrap();
    out
}

pub fn to_dr() -> CopyTarget<'static> {
    CopyTarget {
        partner: "site-b",
        container: "dr",
        name: None,
    }
}

/// Polls a copy until `done` says so; panics after `limit`.
pub fn wait_for(
    client: &Client,
    id: CopyId,
    limit: Duration,
    done: impl Fn(&CopyInfo) -> bool,
) -> CopyInfo {
    let start = Instant::now();
    loop {
        let info = client.copy_status(id).unwrap();
        if done(&info) {
            return info;
        }
        assert!(
            start.elapsed() < limit,
            "copy still {:?} after {limit:?}: {info:?}",
            info.state
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn wait_final(client: &Client, id: CopyId) -> CopyInfo {
    wait_for(client, id, Duration::from_secs(120), |i| i.state.is_final())
}

/// `len` incompressible bytes (xorshift64): every chunk is new and stored
/// raw, so bytes on the wire measure chunks sent.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asks for `n` copies of image `a` to the partner, named `PREFIX-N`.
pub fn queue_copies(src: &Client, prefix: &str, n: usize) -> Vec<CopyId> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}-{i:05}");
            let to = CopyTarget {
                partner: "site-b",
                container: "dr",
                name: Some(&name),
            };
            src.copy_start("c", "a", &to).unwrap()
        })
        .collect()
}
