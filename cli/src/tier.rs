//! `tern container tier` and `tern tier`: linking a container to the cloud
//! tier, and what the tier mover has done.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use tern_agent::{Client, WriteMode};
use tern_core::time::rfc3339;
use tern_core::wire::{TierMode, TierPolicy};
use tern_core::ContainerName;

use super::{connect, human_bytes, report, Cli};

/// `tern container tier C --to GROUP/CONTAINER ...` or `--off`.
#[derive(Args)]
pub struct TierArgs {
    /// The local container.
    name: String,
    /// The container in a cloud storage group its images go to
    /// (GROUP/CONTAINER; created on first use).
    #[arg(long, required_unless_present = "off")]
    to: Option<String>,
    /// What to do with a selected image: copy (a copy in the cloud
    /// container), hold (after --local-days, a copy, and the local image
    /// held there: its chunks here are freed, reads go to the copy) or
    /// copy+hold (a copy once settled, held after --local-days).
    #[arg(long, default_value = "copy", value_parser = parse_mode)]
    mode: TierMode,
    /// (hold, copy+hold) Days after its commit an image stays local.
    #[arg(long, default_value_t = 0)]
    local_days: u32,
    /// Only images committed (and their properties unchanged) this many
    /// hours ago or more.
    #[arg(long, default_value_t = 0)]
    idle_hours: u64,
    /// Only image names matching one of these glob patterns (`*`, `?`).
    #[arg(long = "match", value_name = "GLOB")]
    matches: Vec<String>,
    /// No image name matching one of these glob patterns.
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
    /// Only image names starting with one of these.
    #[arg(long = "prefix", value_name = "P")]
    prefixes: Vec<String>,
    /// The shaping group the copies draw from.
    #[arg(long)]
    shaping: Option<String>,
    /// Unlink the container (copies already made stay).
    #[arg(long, conflicts_with_all = ["to", "matches", "excludes", "prefixes", "shaping"])]
    off: bool,
}

fn parse_mode(s: &str) -> Result<TierMode, String> {
    s.parse()
}

/// `tern tier ...`.
#[derive(Subcommand)]
pub enum TierCmd {
    /// Per tiered container: its policy, and its images pending, copying,
    /// copied and failed.
    Status,
    /// The tier copies' attempts, newest first (the replication trail's
    /// tier entries).
    History {
        /// Most trail entries to look through.
        #[arg(long, default_value_t = 1000)]
        max: u32,
    },
}

/// `tern image ...`.
#[derive(Subcommand)]
pub enum ImageCmd {
    /// Bring an image held in the cloud tier back to local storage (for a
    /// large restore ahead): its chunks the group lacks are read from its
    /// cloud copy and stored here; the copy stays.
    Recall {
        #[arg(long)]
        container: String,
        #[arg(long)]
        name: String,
    },
}

pub fn image(cli: &Cli, cmd: &ImageCmd) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    let ImageCmd::Recall { container, name } = cmd;
    let stored = client
        .image_recall(container, name)
        .with_context(|| format!("recalling {container}/{name}"))?;
    report(
        cli,
        json!({"recalled": name, "stored_bytes": stored}),
        &format!(
            "{container}/{name} is local again ({} of chunks stored)",
            human_bytes(stored)
        ),
    );
    Ok(())
}

pub fn container_tier(cli: &Cli, client: &Client, args: &TierArgs) -> Result<()> {
    let policy = match &args.to {
        Some(to) if !args.off => Some(TierPolicy {
            to: ContainerName::new(to.as_str()).with_context(|| format!("--to {to}"))?,
            mode: args.mode,
            idle_secs: args.idle_hours.saturating_mul(3600),
            matches: args.matches.clone(),
            excludes: args.excludes.clone(),
            prefixes: args.prefixes.clone(),
            shaping: args.shaping.clone(),
            local_days: args.local_days,
        }),
        _ => None,
    };
    let name = &args.name;
    client
        .container_tier(name, policy.clone())
        .with_context(|| format!("setting the cloud tier of container {name}"))?;
    let text = match &policy {
        Some(p) => format!("container {name}: {p}"),
        None => format!("container {name} is no longer tiered (its copies stay)"),
    };
    report(
        cli,
        json!({"container": name, "tier": policy.as_ref().map(policy_json)}),
        &text,
    );
    Ok(())
}

fn policy_json(p: &TierPolicy) -> serde_json::Value {
    json!({"to": p.to.as_str(), "mode": p.mode.as_str(), "idle_secs": p.idle_secs,
        "match": p.matches, "exclude": p.excludes, "prefix": p.prefixes, "shaping": p.shaping,
        "local_days": p.local_days})
}

pub fn tier(cli: &Cli, cmd: &TierCmd) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    match cmd {
        TierCmd::Status => {
            let list = client.tier_status().context("asking the tier's status")?;
            if cli.json {
                let v: Vec<_> = list
                    .iter()
                    .map(|s| {
                        json!({"container": s.container.as_str(), "policy": policy_json(&s.policy),
                        "pending": s.pending, "copying": s.copying, "copied": s.copied, "held": s.held,
                        "failed": s.failed, "copied_bytes": s.copied_bytes,
                        "sent_bytes": s.sent_bytes, "next_run": s.next_run})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
                return Ok(());
            }
            if list.is_empty() {
                println!("no container is tiered (tern container tier NAME --to GROUP/CONTAINER)");
            }
            for s in &list {
                println!("{}: {}", s.container, s.policy);
                println!(
                    "  pending {}  copying {}  copied {} ({}; {} sent)  held {}  failed {}  next run {}",
                    s.pending,
                    s.copying,
                    s.copied,
                    human_bytes(s.copied_bytes),
                    human_bytes(s.sent_bytes),
                    s.held,
                    s.failed,
                    rfc3339(s.next_run)
                );
            }
        }
        TierCmd::History { max } => {
            let mut list = client.replication_history(*max)?;
            list.retain(|t| t.tier);
            super::replication::print_trail(cli, &list);
        }
    }
    Ok(())
}
