//! `tern group` (storage groups: on a volume of their own, what each holds
//! and has left) and `tern stats` (what the store holds, and per group).

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use tern_agent::{ClientError, WriteMode};
use tern_core::names::GroupName;
use tern_core::wire::{GroupInfo, GroupSettings};

use super::{connect, human_bytes, report, Cli};

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create a storage group whose packs live in a directory of another
    /// volume (admin only): an absolute path on the server, empty, not
    /// world-writable. ternd marks it with a volume file and, at every
    /// start, refuses to run if the file is gone (the volume not mounted).
    Add {
        name: String,
        /// The directory on the server.
        #[arg(long)]
        path: String,
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
        GroupCmd::Add { name, path } => {
            let group = GroupName::new(name.as_str())?;
            client
                .group_add(&group, GroupSettings::at_path(path))
                .with_context(|| format!("adding storage group {name} in {path}"))?;
            report(
                cli,
                json!({"group": name, "path": path, "added": true}),
                &format!("storage group {name} added in {path}"),
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
        "free_bytes": g.free_bytes})
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
