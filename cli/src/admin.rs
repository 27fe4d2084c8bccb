//! `tern container` and `tern user`: managing containers and users.

use std::io::{self, Read};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use tern_agent::{Client, ContainerInfo, ContainerSettings, WriteMode};
use tern_core::wire::{LockMode, RetentionLock};
use tern_core::ChunkParams;

use super::{connect, report, Cli};

#[derive(Subcommand)]
pub enum ContainerCmd {
    Create(CreateArgs),
    Ls,
    /// Turn a replica container into an ordinary one (for failover; admin only).
    Promote {
        name: String,
    },
    /// Copy every image committed to a container from now on (admin only).
    Replicate {
        name: String,
        /// The partner to copy to.
        #[arg(long, required_unless_present = "off", requires = "to_container")]
        to: Option<String>,
        /// The replica container on the partner.
        #[arg(long)]
        to_container: Option<String>,
        /// End the container's replication.
        #[arg(long, conflicts_with_all = ["to", "to_container"])]
        off: bool,
    },
    /// Link a container to a container in a cloud storage group: its
    /// images that match the policy are copied there once settled (admin
    /// only); `--off` unlinks it.
    Tier(super::tier::TierArgs),
    Rm {
        name: String,
    },
    /// Lock a container's images against deletion and change for DAYS
    /// after each one's commit (admin only). Compliance: nobody can shorten
    /// or remove it afterwards, or remove the container; governance: an
    /// admin may (and may delete a locked image with `rm --bypass-lock`).
    Lock {
        name: String,
        #[arg(long, required_unless_present = "off")]
        days: Option<u32>,
        #[arg(long, value_enum, required_unless_present = "off")]
        mode: Option<LockModeArg>,
        /// Remove a governance lock.
        #[arg(long, conflicts_with_all = ["days", "mode"])]
        off: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LockModeArg {
    Governance,
    Compliance,
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user (an existing one is an error); the password comes from
    /// TERN_NEW_PASSWORD or stdin.
    Add {
        name: String,
        #[arg(long)]
        admin: bool,
    },
    /// Set a user's password (yours, or anyone's as an admin); from
    /// TERN_NEW_PASSWORD or stdin.
    Passwd { name: String },
    /// Change a user's storage groups and admin right (admin only).
    Set(SetArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    name: String,
    /// Storage group (default: "default").
    #[arg(long)]
    group: Option<String>,
    /// zstd level, 1..=19.
    #[arg(long)]
    zstd_level: Option<i32>,
    /// Chunk sizes in bytes as MIN,AVG,MAX.
    #[arg(long)]
    chunking: Option<String>,
    /// Images that may be written at once (0: unlimited).
    #[arg(long)]
    stream_limit: Option<u32>,
    /// A replica container: only copies from replication partners
    /// write into it (its chunking comes from the first copy's source).
    #[arg(long)]
    replica: bool,
    /// Replicas arriving raise import events for this side's DMA (needs --replica).
    #[arg(long, requires = "replica")]
    import: bool,
}

#[derive(Args)]
pub struct SetArgs {
    name: String,
    /// The storage groups the user may use (replaces the list).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Make the user an admin.
    #[arg(long, conflicts_with = "no_admin")]
    admin: bool,
    /// Take the admin right away.
    #[arg(long)]
    no_admin: bool,
    /// Storage groups whose replica containers the user may replicate
    /// into (replaces the list): for the user a partner logs in as.
    #[arg(long = "replicate-into")]
    replicate_into: Vec<String>,
    /// The shaping group the user's backups and restores draw from
    /// (from their next login).
    #[arg(long, conflicts_with = "no_shaping")]
    shaping: Option<String>,
    /// Take the user out of their shaping group.
    #[arg(long)]
    no_shaping: bool,
}

/// `tern user ...`: new passwords come from TERN_NEW_PASSWORD or stdin.
pub fn user(cli: &Cli, cmd: &UserCmd) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    match cmd {
        UserCmd::Add { name, admin } => {
            client
                .user_add(name, &new_password()?, *admin)
                .with_context(|| format!("adding user {name}"))?;
            report(
                cli,
                json!({"user": name, "admin": admin}),
                &format!("user {name} added"),
            );
        }
        UserCmd::Passwd { name } => {
            client
                .user_passwd(name, &new_password()?)
                .with_context(|| format!("setting the password of {name}"))?;
            report(
                cli,
                json!({"user": name, "password": "set"}),
                &format!("password of {name} set"),
            );
        }
        UserCmd::Set(args) => set_user(cli, &client, args)?,
    }
    Ok(())
}

/// `tern user set`: the shaping group, the replica groups, then the
/// storage groups and admin right, each changed only when asked for.
fn set_user(cli: &Cli, client: &Client, args: &SetArgs) -> Result<()> {
    let SetArgs {
        name,
        groups,
        admin,
        no_admin,
        replicate_into,
        shaping,
        no_shaping,
    } = args;
    if shaping.is_some() || *no_shaping {
        let group = if *no_shaping {
            None
        } else {
            shaping.as_deref()
        };
        client
            .user_set_shaping(name, group)
            .with_context(|| format!("changing user {name}"))?;
        if replicate_into.is_empty() && groups.is_empty() && !admin && !no_admin {
            report(
                cli,
                json!({"user": name, "shaping": group}),
                &format!("user {name}: shaping group {}", group.unwrap_or("none")),
            );
            return Ok(());
        }
    }
    if !replicate_into.is_empty() {
        let into: Vec<&str> = replicate_into.iter().map(String::as_str).collect();
        client
            .user_set_replicate_into(name, &into)
            .with_context(|| format!("changing user {name}"))?;
        if groups.is_empty() && !admin && !no_admin {
            report(
                cli,
                json!({"user": name, "replicate_into": into}),
                &format!("user {name} may replicate into {}", into.join(", ")),
            );
            return Ok(());
        }
    }
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let groups = (!groups.is_empty()).then_some(groups.as_slice());
    let admin = match (admin, no_admin) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    if groups.is_none() && admin.is_none() {
        anyhow::bail!("nothing to change: give --group, --admin, --no-admin or --replicate-into");
    }
    client
        .user_set(name, groups, admin)
        .with_context(|| format!("changing user {name}"))?;
    report(
        cli,
        json!({"user": name, "groups": groups, "admin": admin}),
        &format!("user {name} changed"),
    );
    Ok(())
}

fn new_password() -> Result<String> {
    if let Ok(p) = std::env::var("TERN_NEW_PASSWORD") {
        return Ok(p);
    }
    let mut s = String::new();
    io::stdin().take(4096).read_to_string(&mut s)?;
    Ok(s.lines().next().unwrap_or_default().to_string())
}

pub fn container(cli: &Cli, cmd: &ContainerCmd) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    match cmd {
        ContainerCmd::Create(args) => create_container(cli, &client, args)?,
        ContainerCmd::Ls => print_containers(cli, &client.container_list()?),
        ContainerCmd::Promote { name } => {
            client
                .container_promote(name)
                .with_context(|| format!("promoting container {name}"))?;
            report(
                cli,
                json!({"promoted": name}),
                &format!("container {name} is no longer a replica: clients may write into it"),
            );
        }
        ContainerCmd::Replicate {
            name,
            to,
            to_container,
            off: _,
        } => {
            let to = to.as_deref().zip(to_container.as_deref());
            client
                .container_replicate(name, to)
                .with_context(|| format!("setting the replication of container {name}"))?;
            let text = match to {
                Some((p, c)) => format!("new images of {name} are copied to {p}:{c}"),
                None => format!("container {name} is no longer replicated"),
            };
            report(
                cli,
                json!({"container": name, "replicate_to": to.map(|(p, c)| json!({"partner": p, "container": c}))}),
                &text,
            );
        }
        ContainerCmd::Tier(args) => super::tier::container_tier(cli, &client, args)?,
        ContainerCmd::Lock {
            name,
            days,
            mode,
            off: _,
        } => lock_container(cli, &client, name, days.zip(*mode))?,
        ContainerCmd::Rm { name } => {
            client
                .container_remove(name)
                .with_context(|| format!("deleting container {name}"))?;
            report(
                cli,
                json!({"deleted": name}),
                &format!("container {name} deleted"),
            );
        }
    }
    Ok(())
}

fn lock_container(
    cli: &Cli,
    client: &Client,
    name: &str,
    lock: Option<(u32, LockModeArg)>,
) -> Result<()> {
    let lock = lock.map(|(days, mode)| RetentionLock {
        days,
        mode: match mode {
            LockModeArg::Governance => LockMode::Governance,
            LockModeArg::Compliance => LockMode::Compliance,
        },
    });
    client
        .container_lock(name, lock)
        .with_context(|| format!("setting the retention lock of container {name}"))?;
    let text = match lock {
        Some(l) => format!(
            "images of {name} are locked for {} days after their commit ({})",
            l.days,
            mode_name(l.mode)
        ),
        None => format!("container {name} has no retention lock"),
    };
    report(
        cli,
        json!({"container": name, "lock": lock_json(lock)}),
        &text,
    );
    Ok(())
}

fn mode_name(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Governance => "governance",
        LockMode::Compliance => "compliance",
    }
}

fn lock_json(lock: Option<RetentionLock>) -> serde_json::Value {
    lock.map_or(
        serde_json::Value::Null,
        |l| json!({"days": l.days, "mode": mode_name(l.mode)}),
    )
}

fn create_container(cli: &Cli, client: &Client, args: &CreateArgs) -> Result<()> {
    let CreateArgs {
        name,
        group,
        zstd_level,
        chunking,
        stream_limit,
        replica,
        import,
    } = args;
    let chunking = chunking.as_deref().map(parse_chunking).transpose()?;
    let settings = ContainerSettings {
        group: group
            .clone()
            .map(tern_core::names::GroupName::new)
            .transpose()?,
        chunking,
        zstd_level: *zstd_level,
        stream_limit: *stream_limit,
        replica: *replica,
        import: *import,
    };
    client
        .container_create(name, settings)
        .with_context(|| format!("creating container {name}"))?;
    report(
        cli,
        json!({"created": name}),
        &format!("container {name} created"),
    );
    Ok(())
}

fn print_containers(cli: &Cli, list: &[ContainerInfo]) {
    if cli.json {
        let v: Vec<_> = list
            .iter()
            .map(|c| json!({"name": c.name.as_str(), "group": c.group.as_str(), "images": c.images,
                "logical_bytes": c.logical_bytes, "zstd_level": c.zstd_level,
                "chunking": [c.chunking.min, c.chunking.avg, c.chunking.max], "stream_limit": c.stream_limit,
                "replica": c.replica, "import": c.import,
                "replicate_to": c.replicate_to.as_ref().map(|(p, c)| json!({"partner": p, "container": c.as_str()})),
                "lock": lock_json(c.lock)}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        for c in list {
            let kind = match (c.replica, c.import) {
                (true, true) => " replica, import",
                (true, false) => " replica",
                _ => "",
            };
            let policy = c
                .replicate_to
                .as_ref()
                .map(|(p, to)| format!(" -> {p}:{to}"))
                .unwrap_or_default();
            let lock = c
                .lock
                .map(|l| format!(", locked {} days ({})", l.days, mode_name(l.mode)))
                .unwrap_or_default();
            println!(
                "{:<30} group {:<12} {:>6} images {:>16} bytes{kind}{policy}{lock}",
                c.name, c.group, c.images, c.logical_bytes
            );
        }
    }
}

fn parse_chunking(s: &str) -> Result<ChunkParams> {
    let parts: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--chunking {s:?}: expected MIN,AVG,MAX in bytes"))?;
    let [min, avg, max] = parts[..] else {
        bail!("--chunking {s:?}: expected three sizes, MIN,AVG,MAX");
    };
    let p = ChunkParams { min, avg, max };
    p.validate().map_err(anyhow::Error::msg)?;
    Ok(p)
}
