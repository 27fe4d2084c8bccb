//! `tern`: back up to and restore from a tern server.

use std::io::{self, Read};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use tern_agent::config::ClientConfig;
use tern_agent::{Client, ContainerSettings, WriteMode};
use tern_core::tls::Fingerprint;
use tern_core::ChunkParams;

mod replication;
mod transfer;

use replication::{CopyArgs, EventsArgs, PartnerCmd, ReplicationCmd};
use transfer::{backup, bench, restore};

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Back up to and restore from a tern server"
)]
struct Cli {
    /// The client configuration file [default: client.toml in the config
    /// directory, $TERN_CONFIG_DIR or ~/.config/tern]. Flags override it.
    #[arg(long, env = "TERN_CLIENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Server address, HOST[:PORT] (default port 9443) [default: localhost].
    #[arg(long, env = "TERN_SERVER", global = true)]
    server: Option<String>,
    /// [default: admin]
    #[arg(long, env = "TERN_USER", global = true)]
    user: Option<String>,
    /// The server certificate's SHA-256 fingerprint (see `ternd fingerprint`).
    /// Without it, the first one seen is trusted and remembered.
    #[arg(long, env = "TERN_FINGERPRINT", global = true)]
    fingerprint: Option<String>,
    /// Use the server's loopback plaintext listener.
    #[arg(long, global = true)]
    plain: bool,
    /// MultiConnect: connections per session (default 4 over TLS, 1 with --plain).
    #[arg(long, env = "TERN_CONNECTIONS", global = true)]
    connections: Option<usize>,
    /// Secure Connect: seconds to keep reconnecting through an outage [default: 600].
    #[arg(long, env = "TERN_GRACE_PERIOD", global = true)]
    grace_period: Option<u64>,
    /// Fail on a lost connection instead of reconnecting.
    #[arg(long, global = true)]
    no_secure_connect: bool,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage containers.
    Container {
        #[command(subcommand)]
        cmd: ContainerCmd,
    },
    /// Manage users (admin only).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Back up a file or stdin ("-") into a new image.
    Backup {
        #[arg(long)]
        container: String,
        #[arg(long)]
        name: String,
        /// Send raw data and let the server chunk it (for weak clients).
        #[arg(long, value_enum, default_value = "dedup")]
        mode: Mode,
        #[arg(default_value = "-")]
        input: PathBuf,
    },
    /// Restore an image to a file or stdout ("-").
    Restore {
        #[arg(long)]
        container: String,
        #[arg(long)]
        name: String,
        #[arg(default_value = "-")]
        output: PathBuf,
    },
    /// List the images of a container.
    Ls {
        #[arg(long)]
        container: String,
        /// Only names starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Delete an image (its space returns with the next `ternd gc`).
    Rm {
        #[arg(long)]
        container: String,
        #[arg(long)]
        name: String,
    },
    /// Show what the store holds and how well it dedups.
    Stats,
    /// Replication partners of the server (admin only).
    Partner {
        #[command(subcommand)]
        cmd: PartnerCmd,
    },
    /// Copy an image to a partner (prints the copy id), or see and cancel copies.
    Copy(CopyArgs),
    /// Import events of an import container: replicas that arrived.
    Events(EventsArgs),
    /// The replication trail.
    Replication {
        #[command(subcommand)]
        cmd: ReplicationCmd,
    },
    /// Measure this machine's speed at each stage of the data path, and the
    /// link to the server (unless --local).
    Bench {
        /// Only the local stages: no server needed.
        #[arg(long)]
        local: bool,
        /// zstd level to measure (a container's level; default 1).
        #[arg(long, default_value_t = 1)]
        zstd_level: i32,
        /// Measure on this file's first 256 MiB instead of generated data.
        #[arg(long)]
        input: Option<PathBuf>,
        /// MiB to upload for the link measurement.
        #[arg(long, default_value_t = 256)]
        upload_mib: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Dedup,
    Passthrough,
}

#[derive(Subcommand)]
enum ContainerCmd {
    Create {
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
    },
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
    Rm {
        name: String,
    },
}

#[derive(Subcommand)]
enum UserCmd {
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
    Set {
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
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("tern: error: {e:#}");
        std::process::exit(1);
    }
}

fn password() -> Result<String> {
    match std::env::var("TERN_PASSWORD") {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => bail!("no password: set TERN_PASSWORD"),
    }
}

fn connect(cli: &Cli, mode: WriteMode) -> Result<Client> {
    connect_as(cli, mode, cli.user.clone(), cli.fingerprint.clone())
}

/// Connects as `user`, pinning `fingerprint` (each else from the config).
fn connect_as(
    cli: &Cli,
    mode: WriteMode,
    user: Option<String>,
    fingerprint: Option<String>,
) -> Result<Client> {
    let file = ClientConfig::load(cli.config.as_deref())?;
    let server = cli.server.clone().or(file.server.clone());
    let server = server.as_deref().unwrap_or("localhost");
    let user = user.or(file.user.clone());
    let user = user.as_deref().unwrap_or("admin");
    let mut opts = file.options(server, user, &password()?);
    opts.plain |= cli.plain;
    opts.mode = mode;
    if let Some(n) = cli.connections {
        opts.connections = n;
    }
    if let Some(secs) = cli.grace_period {
        opts.grace_period = std::time::Duration::from_secs(secs);
    }
    opts.secure_connect &= !cli.no_secure_connect;
    if let Some(fp) = &fingerprint {
        opts.fingerprint = Some(
            Fingerprint::parse(fp)
                .with_context(|| format!("--fingerprint {fp:?} is not a SHA-256 fingerprint"))?,
        );
    }
    Client::connect(&opts).with_context(|| format!("connecting to {server} as {user}"))
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Container { cmd } => container(&cli, cmd),
        Cmd::User { cmd } => user(&cli, cmd),
        Cmd::Backup {
            container,
            name,
            mode,
            input,
        } => {
            let mode = match mode {
                Mode::Dedup => WriteMode::Dedup,
                Mode::Passthrough => WriteMode::Passthrough,
            };
            backup(&cli, container, name, mode, input)
        }
        Cmd::Restore {
            container,
            name,
            output,
        } => restore(&cli, container, name, output),
        Cmd::Ls { container, prefix } => ls(&cli, container, prefix),
        Cmd::Rm { container, name } => {
            let client = connect(&cli, WriteMode::Dedup)?;
            client
                .image_remove(container, name)
                .with_context(|| format!("deleting {container}/{name}"))?;
            report(
                &cli,
                json!({"deleted": name}),
                &format!("deleted {container}/{name}"),
            );
            Ok(())
        }
        Cmd::Bench {
            local,
            zstd_level,
            input,
            upload_mib,
        } => bench(&cli, *local, *zstd_level, input.as_deref(), *upload_mib),
        Cmd::Stats => stats(&cli),
        Cmd::Partner { cmd } => replication::partner(&cli, cmd),
        Cmd::Copy(args) => replication::copy(&cli, args),
        Cmd::Events(args) => replication::events(&cli, args),
        Cmd::Replication { cmd } => replication::replication(&cli, cmd),
    }
}

/// `tern user ...`: new passwords come from TERN_NEW_PASSWORD or stdin.
fn user(cli: &Cli, cmd: &UserCmd) -> Result<()> {
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
        UserCmd::Set {
            name,
            groups,
            admin,
            no_admin,
            replicate_into,
        } => {
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
                anyhow::bail!(
                    "nothing to change: give --group, --admin, --no-admin or --replicate-into"
                );
            }
            client
                .user_set(name, groups, admin)
                .with_context(|| format!("changing user {name}"))?;
            report(
                cli,
                json!({"user": name, "groups": groups, "admin": admin}),
                &format!("user {name} changed"),
            );
        }
    }
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

/// `tern ls`: a table for people, exact numbers with --json.
fn ls(cli: &Cli, container: &str, prefix: &str) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    let list = client
        .image_list(container, prefix)
        .with_context(|| format!("listing {container}"))?;
    if cli.json {
        let v: Vec<_> = list
            .iter()
            .map(|i| json!({"name": i.name.as_str(), "size": i.size, "chunks": i.chunks, "created": i.created, "props_len": i.props.len()}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    println!(
        "{:<40} {:>10} {:>9}  CREATED (UTC)",
        "NAME", "SIZE", "CHUNKS"
    );
    for i in &list {
        println!(
            "{:<40} {:>10} {:>9}  {}",
            i.name,
            human_bytes(i.size),
            i.chunks,
            rfc3339(i.created)
        );
    }
    Ok(())
}

/// `tern stats`: dedup (logical bytes per unique byte) and compression
/// (unique bytes per stored byte) by their names; their product is the
/// whole reduction.
fn stats(cli: &Cli) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    let s = client.stats()?;
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
    Ok(())
}

/// Bytes for people: "1.5 GiB"; exact figures stay in `--json`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Seconds since the epoch as an RFC 3339 UTC time, e.g. 2026-11-23T12:15:21Z.
fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn report(cli: &Cli, v: serde_json::Value, text: &str) {
    if cli.json {
        println!("{v}");
    } else {
        println!("{text}");
    }
}

fn container(cli: &Cli, cmd: &ContainerCmd) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    match cmd {
        ContainerCmd::Create {
            name,
            group,
            zstd_level,
            chunking,
            stream_limit,
            replica,
            import,
        } => {
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
        }
        ContainerCmd::Ls => {
            let list = client.container_list()?;
            if cli.json {
                let v: Vec<_> = list
                    .iter()
                    .map(|c| json!({"name": c.name.as_str(), "group": c.group.as_str(), "images": c.images,
                        "logical_bytes": c.logical_bytes, "zstd_level": c.zstd_level,
                        "chunking": [c.chunking.min, c.chunking.avg, c.chunking.max], "stream_limit": c.stream_limit,
                        "replica": c.replica, "import": c.import,
                        "replicate_to": c.replicate_to.as_ref().map(|(p, c)| json!({"partner": p, "container": c.as_str()}))}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for c in &list {
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
                    println!(
                        "{:<30} group {:<12} {:>6} images {:>16} bytes{kind}{policy}",
                        c.name, c.group, c.images, c.logical_bytes
                    );
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_sizes_are_human() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_436_121), "2026-11-23T12:15:21Z");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
