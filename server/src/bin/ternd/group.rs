//! `ternd group recover`: a cloud group rebuilt on this machine from its
//! bucket alone (the data directory stopped, or new).

use std::os::unix::fs::DirBuilderExt;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use tern_core::names::GroupName;
use tern_server::service::audit::{Actor, AuditLog};
use tern_server::store::cloud::bucket::{BucketSpec, Credentials};
use tern_server::store::cloud::GroupPassphrase;
use tern_server::store::{recover_cloud_group, RecoverFrom, StoreError};

use super::DataArg;

#[derive(Subcommand)]
pub(crate) enum GroupCmd {
    /// Rebuild cloud storage group NAME into the data directory (a new one,
    /// or a stopped one without that group) from its bucket: containers,
    /// images and the chunk index, as of the last catalog the group's server
    /// saved there (every `cloud_catalog_secs`). Credentials from
    /// TERN_S3_ACCESS_KEY_ID and TERN_S3_SECRET_ACCESS_KEY, the passphrase
    /// from TERN_GROUP_PASSPHRASE. Users are not in the bucket: add them
    /// with `ternd user add --group NAME`.
    Recover {
        #[command(flatten)]
        data: DataArg,
        name: String,
        /// The bucket: http(s)://host:port/bucket.
        #[arg(long)]
        s3: String,
        /// The bucket's region (default: garage).
        #[arg(long, default_value = "")]
        region: String,
        /// The path in the bucket the group's objects are under.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Take the group's lease from the server that holds it (the lost
        /// machine); without this a held lease refuses the recovery.
        #[arg(long)]
        take_over: bool,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn group(cmd: GroupCmd) -> Result<()> {
    let GroupCmd::Recover {
        data,
        name,
        s3,
        region,
        prefix,
        take_over,
        json,
    } = cmd;
    let data = data.data;
    let group = GroupName::new(name.as_str())?;
    let spec = BucketSpec::parse(&s3, &region, &prefix).map_err(anyhow::Error::msg)?;
    let env = |var: &str| {
        std::env::var(var).with_context(|| format!("recovering a cloud group needs {var}"))
    };
    let from = RecoverFrom {
        spec: spec.clone(),
        credentials: Credentials {
            access_key_id: env("TERN_S3_ACCESS_KEY_ID")?,
            secret_access_key: env("TERN_S3_SECRET_ACCESS_KEY")?,
        },
        passphrase: GroupPassphrase(env("TERN_GROUP_PASSPHRASE")?),
        take_over,
    };
    if !data.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&data)
            .with_context(|| format!("creating {}", data.display()))?;
    }
    let outcome = recover_cloud_group(&data, &group, from);
    let why = outcome.as_ref().err().map(ToString::to_string);
    AuditLog::new(&data).record(
        Actor::Local("ternd group recover"),
        "group_recover",
        why.as_deref().map_or(Ok(()), Err),
        json!({"group": name, "location": spec.location(), "take_over": take_over}),
    );
    let report = outcome.map_err(|e| match e {
        StoreError::InUse => {
            anyhow::anyhow!("the data directory is in use by a running ternd; stop it first")
        }
        e => anyhow::Error::from(e),
    })?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "storage group {name} recovered into {} from {}: {} containers, {} images, \
             {} packs ({} chunks), as of its catalog saved at {} (Unix time); {} requests",
            data.display(),
            spec.location(),
            report.containers,
            report.images,
            report.packs,
            report.chunks,
            report.manifest_written,
            report.requests
        );
        if report.manifests_skipped > 0 {
            println!(
                "skipped {} newer catalog manifests that did not open (damaged)",
                report.manifests_skipped
            );
        }
        println!(
            "`ternd serve --data {}` serves them; add users with `ternd user add --group {name}`",
            data.display()
        );
    }
    Ok(())
}
