//! `tern group` (storage groups: on a volume of their own, what each holds
//! and has left) and `tern stats` (what the store holds, and per group).

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use tern_agent::{ClientError, WriteMode};
use tern_core::names::GroupName;
use tern_core::wire::{CloudSettings, GroupInfo, GroupSettings};

use super::{connect, human_bytes, report, Cli};

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create a storage group (admin only) whose packs live in a directory
    /// of another volume (--path: an absolute path on the server, empty,
    /// not world-writable; ternd marks it with a volume file and, at every
    /// start, refuses to run if the file is gone: the volume not mounted),
    /// or in an S3 bucket (--s3: a cloud group, every object encrypted;
    /// credentials from TERN_S3_ACCESS_KEY_ID and TERN_S3_SECRET_ACCESS_KEY,
    /// the passphrase that wraps the group's key from TERN_GROUP_PASSPHRASE).
    Add {
        name: String,
        /// The directory on the server.
        #[arg(long, conflicts_with = "s3", required_unless_present = "s3")]
        path: Option<String>,
        /// The bucket: http(s)://host:port/bucket.
        #[arg(long)]
        s3: Option<String>,
        /// The bucket's region (default: garage).
        #[arg(long, requires = "s3", default_value = "")]
        region: String,
        /// A path in the bucket that every object of the group goes under.
        #[arg(long, requires = "s3", default_value = "")]
        prefix: String,
    },
    /// Each group you may use: kind, location, what it holds, and the size,
    /// use and free space of the filesystem it is on.
    Ls,
    /// Remove a storage group with no container and no chunk left (run
    /// `ternd gc` after removing its containers), granted to no user (admin only).
    Rm { name: String },
}

pub fn group(cli: &Cli, cmd: &GroupCmd) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    match cmd {
        GroupCmd::Add {
            name,
            path,
            s3,
            region,
            prefix,
        } => {
            let group = GroupName::new(name.as_str())?;
            let (settings, at) = match (path, s3) {
                (Some(path), _) => (GroupSettings::at_path(path), path.clone()),
                (None, Some(url)) => {
                    let env = |var: &str| {
                        std::env::var(var).with_context(|| {
                            format!("a cloud group needs {var} in the environment")
                        })
                    };
                    let settings = CloudSettings::new(
                        url,
                        env("TERN_S3_ACCESS_KEY_ID")?,
                        env("TERN_S3_SECRET_ACCESS_KEY")?,
                        env("TERN_GROUP_PASSPHRASE")?,
                    )
                    .with_region(region)
                    .with_prefix(prefix);
                    (
                        GroupSettings::in_bucket(settings),
                        format!("{url} {prefix}"),
                    )
                }
                (None, None) => anyhow::bail!("say where: --path DIR or --s3 URL"),
            };
            client
                .group_add(&group, settings)
                .with_context(|| format!("adding storage group {name} in {at}"))?;
            report(
                cli,
                json!({"group": name, "path": path, "s3": s3, "prefix": prefix, "added": true}),
                &format!("storage group {name} added in {}", at.trim_end()),
            );
        }
        GroupCmd::Ls => {
            let list = client.group_list().context("listing storage groups")?;
            if cli.json {
                let v: Vec<_> = list.iter().map(group_json).collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                print_groups(&list);
            }
        }
        GroupCmd::Rm { name } => {
            let group = GroupName::new(name.as_str())?;
            client
                .group_remove(&group)
                .with_context(|| format!("removing storage group {name}"))?;
            report(
                cli,
                json!({"group": name, "removed": true}),
                &format!("storage group {name} removed"),
            );
        }
    }
    Ok(())
}

fn group_json(g: &GroupInfo) -> serde_json::Value {
    json!({"name": g.name, "kind": g.kind, "location": g.location,
        "containers": g.containers, "images": g.images, "logical_bytes": g.logical_bytes,
        "chunks": g.chunks, "unique_bytes": g.unique_bytes,
        "stored_bytes": g.stored_bytes, "pack_bytes": g.pack_bytes,
        "fs_total_bytes": g.fs_total_bytes, "fs_used_bytes": g.fs_used_bytes,
        "free_bytes": g.free_bytes, "objects": g.objects, "object_bytes": g.object_bytes,
        "doomed_objects": g.doomed_objects, "staged_bytes": g.staged_bytes,
        "cache_bytes": g.cache_bytes,
        "requests": {"put": g.puts, "get": g.gets, "delete": g.deletes, "head": g.heads,
            "errors": g.request_errors},
        "bytes_up": g.bytes_up, "bytes_down": g.bytes_down,
        "catalog_saved": g.catalog_saved, "catalog_images": g.catalog_images})
}

fn print_groups(list: &[GroupInfo]) {
    println!(
        "{:<16} {:<7} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10}  LOCATION",
        "NAME", "KIND", "CONTAINERS", "IMAGES", "PACKS", "FS SIZE", "FS USED", "FREE"
    );
    for g in list {
        println!(
            "{:<16} {:<7} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10}  {}",
            g.name,
            g.kind,
            g.containers,
            g.images,
            human_bytes(g.pack_bytes),
            human_bytes(g.fs_total_bytes),
            human_bytes(g.fs_used_bytes),
            human_bytes(g.free_bytes),
            g.location
        );
    }
    for g in list.iter().filter(|g| g.kind == "cloud") {
        println!(
            "{}: {} objects ({}, {} doomed), staged {}, cache {}; requests since start: \
             {} put, {} get, {} delete, {} head, {} failed; sent {}, read {}",
            g.name,
            g.objects,
            human_bytes(g.object_bytes),
            g.doomed_objects,
            human_bytes(g.staged_bytes),
            human_bytes(g.cache_bytes),
            g.puts,
            g.gets,
            g.deletes,
            g.heads,
            g.request_errors,
            human_bytes(g.bytes_up),
            human_bytes(g.bytes_down)
        );
        match g.catalog_saved {
            0 => println!("{}: catalog not saved to the bucket yet", g.name),
            t => println!(
                "{}: catalog saved to the bucket {} s ago ({} images)",
                g.name,
                now_unix().saturating_sub(t),
                g.catalog_images
            ),
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `tern stats`: dedup (logical bytes per unique byte) and compression
/// (unique bytes per stored byte) by their names; their product is the
/// whole reduction.
/// Servers that speak protocol 8 add each group's filesystem figures.
pub fn stats(cli: &Cli) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    let s = client.stats()?;
    let groups = match client.group_list() {
        Ok(list) => Some(list),
        Err(ClientError::ServerTooOld(_)) => None,
        Err(e) => return Err(e).context("listing storage groups"),
    };
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let dedup = ratio(s.logical_bytes, s.unique_bytes);
    let compression = ratio(s.unique_bytes, s.stored_bytes);
    let reduction = ratio(s.logical_bytes, s.stored_bytes);
    report(
        cli,
        json!({
            "containers": s.containers, "images": s.images, "logical_bytes": s.logical_bytes,
            "unique_chunks": s.unique_chunks, "unique_bytes": s.unique_bytes,
            "stored_bytes": s.stored_bytes, "pack_bytes": s.pack_bytes,
            "spill_bytes": s.spill_bytes, "sessions": s.sessions,
            "capacity_bytes": s.capacity_bytes, "free_bytes": s.free_bytes,
            "dedup_ratio": dedup, "compression_ratio": compression, "reduction_ratio": reduction,
            "groups": groups.as_ref().map(|l| l.iter().map(group_json).collect::<Vec<_>>()),
        }),
        &format!(
            "containers          {}\nimages              {}\nlogical             {}\n\
             unique chunks       {}\nunique (deduped)    {}\nstored (compressed) {}\n\
             pack files          {}\ndedup ratio         {dedup:.2}\n\
             compression ratio   {compression:.2}\ntotal reduction     {reduction:.2}\n\
             session spill files {}\nsessions            {}\n\
             filesystem          {}\nfree for new data   {}",
            s.containers,
            s.images,
            human_bytes(s.logical_bytes),
            s.unique_chunks,
            human_bytes(s.unique_bytes),
            human_bytes(s.stored_bytes),
            human_bytes(s.pack_bytes),
            human_bytes(s.spill_bytes),
            s.sessions,
            human_bytes(s.capacity_bytes),
            human_bytes(s.free_bytes)
        ),
    );
    if let (Some(list), false) = (groups, cli.json) {
        println!();
        print_groups(&list);
    }
    Ok(())
}
