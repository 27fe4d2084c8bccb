//! `tern`: back up to and restore from a tern server.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use tern_agent::config::ClientConfig;
use tern_agent::{Client, WriteMode};
use tern_core::time::rfc3339;
use tern_core::tls::Fingerprint;

mod admin;
mod audit;
mod bench;
mod groups;
mod replication;
mod shaping;
mod synth;
mod tier;
mod transfer;
mod write_behind;

use admin::{container, user, ContainerCmd, UserCmd};
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
    /// MultiConnect: connections per session (default 4 over TLS, 1 with
    /// --plain); with `partner add` and `partner set`, also the partner's
    /// connections per copy.
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
        /// Continue the incomplete image of this name from its last
        /// checkpoint (the input is read from that offset on); without one,
        /// start a new image and say so.
        #[arg(long)]
        resume: bool,
        #[arg(default_value = "-")]
        input: PathBuf,
    },
    /// Build a synthetic full on the server: a new image from extents of
    /// committed images (no data crosses the network for them) and bytes
    /// from files, in the order given.
    Synth {
        #[arg(long)]
        container: String,
        #[arg(long)]
        name: String,
        /// A piece of the image: IMAGE:OFFSET:LEN (an extent of a committed
        /// image of --container), CONTAINER/IMAGE:OFFSET:LEN (of another
        /// container of its storage group) or @FILE (a file's bytes).
        #[arg(long = "from", value_name = "SPEC", value_parser = synth::parse_piece, required = true)]
        pieces: Vec<synth::Piece>,
    },
    /// Restore an image to a file or stdout ("-").
    Restore {
        #[arg(long)]
        container: String,
        #[arg(long)]
        name: String,
        /// Do not sync the restored file before renaming it into place
        /// (faster; a power loss may then lose a restore reported as done).
        #[arg(long)]
        no_sync: bool,
        #[arg(default_value = "-")]
        output: PathBuf,
    },
    /// List the images of a container, and apart its incomplete ones.
    Ls {
        #[arg(long)]
        container: String,
        /// Only names starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// List only the incomplete images (being written, or resumable
        /// with `backup --resume`), with their resume offsets.
        #[arg(long)]
        incomplete: bool,
    },
    /// Delete an image (its space returns with the next `ternd gc`).
    Rm {
        #[arg(long)]
        container: String,
        #[arg(long)]
        name: String,
        /// Delete it even though its container's governance retention lock
        /// holds it (admin only; the audit log records it).
        #[arg(long)]
        bypass_lock: bool,
        /// Keep the image's cloud tier copy (deleted with it otherwise).
        #[arg(long)]
        keep_cloud: bool,
    },
    /// Show what the store holds and how well it dedups.
    Stats,
    /// Storage groups: add one on a volume of its own, see what each holds
    /// and has left, remove an empty one.
    Group {
        #[command(subcommand)]
        cmd: groups::GroupCmd,
    },
    /// Replication partners of the server (admin only).
    Partner {
        #[command(subcommand)]
        cmd: PartnerCmd,
    },
    /// Bandwidth groups with weekly windows for copies, backups and restores (admin only).
    Shaping {
        #[command(subcommand)]
        cmd: shaping::ShapingCmd,
    },
    /// Copy an image to a partner (prints the copy id), or see and cancel copies.
    Copy(CopyArgs),
    /// Images held in the cloud tier: recall one.
    Image {
        #[command(subcommand)]
        cmd: tier::ImageCmd,
    },
    /// The cloud tier: what its mover has done with each tiered container.
    Tier {
        #[command(subcommand)]
        cmd: tier::TierCmd,
    },
    /// Import events of an import container: replicas that arrived.
    Events(EventsArgs),
    /// The replication trail.
    Replication {
        #[command(subcommand)]
        cmd: ReplicationCmd,
    },
    /// The server's audit log: logins, user, container, image, partner and
    /// shaping changes, GC, repairs, seed jobs (admin only).
    Audit(audit::AuditArgs),
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
    /// Write the man pages (tern.1 and one per subcommand) into DIR; the
    /// package build runs it.
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Dedup,
    Passthrough,
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
            resume,
            input,
        } => {
            let mode = match mode {
                Mode::Dedup => WriteMode::Dedup,
                Mode::Passthrough => WriteMode::Passthrough,
            };
            backup(&cli, container, name, mode, *resume, input)
        }
        Cmd::Synth {
            container,
            name,
            pieces,
        } => synth::synth(&cli, container, name, pieces),
        Cmd::Restore {
            container,
            name,
            no_sync,
            output,
        } => restore(&cli, container, name, !*no_sync, output),
        Cmd::Ls {
            container,
            prefix,
            incomplete,
        } => ls(&cli, container, prefix, *incomplete),
        Cmd::Rm {
            container,
            name,
            bypass_lock,
            keep_cloud,
        } => {
            let client = connect(&cli, WriteMode::Dedup)?;
            let removed = if *keep_cloud {
                client.image_remove_keeping_cloud(container, name, *bypass_lock)
            } else if *bypass_lock {
                client.image_remove_bypassing_lock(container, name)
            } else {
                client.image_remove(container, name)
            };
            removed.with_context(|| format!("deleting {container}/{name}"))?;
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
        Cmd::Stats => groups::stats(&cli),
        Cmd::Group { cmd } => groups::group(&cli, cmd),
        Cmd::GenerateMan { dir } => {
            use clap::CommandFactory;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))
        }
        Cmd::Partner { cmd } => replication::partner(&cli, cmd),
        Cmd::Shaping { cmd } => shaping::shaping(&cli, cmd),
        Cmd::Copy(args) => replication::copy(&cli, args),
        Cmd::Events(args) => replication::events(&cli, args),
        Cmd::Tier { cmd } => tier::tier(&cli, cmd),
        Cmd::Image { cmd } => tier::image(&cli, cmd),
        Cmd::Replication { cmd } => replication::replication(&cli, cmd),
        Cmd::Audit(args) => audit::audit(&cli, args),
    }
}

/// `tern ls`: a table for people, exact numbers with --json.
fn ls(cli: &Cli, container: &str, prefix: &str, only_incomplete: bool) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    let (list, incomplete) = client
        .image_list_all(container, prefix)
        .with_context(|| format!("listing {container}"))?;
    if cli.json {
        let v: Vec<_> = if only_incomplete {
            incomplete
                .iter()
                .map(|i| json!({"name": i.name.as_str(), "resume_offset": i.resume_offset, "started": i.started,
                    "checkpointed": i.checkpointed, "writing": i.writing, "props_len": i.props.len()}))
                .collect()
        } else {
            list.iter()
                .map(|i| json!({"name": i.name.as_str(), "size": i.size, "chunks": i.chunks, "created": i.created, "props_len": i.props.len(),
                    "lock_until": (i.lock_until > 0).then_some(i.lock_until), "location": i.location.as_str()}))
                .collect()
        };
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if !only_incomplete {
        println!(
            "{:<40} {:>10} {:>9}  {:<20}  {:<11}  LOCKED UNTIL (UTC)",
            "NAME", "SIZE", "CHUNKS", "CREATED (UTC)", "LOCATION"
        );
        for i in &list {
            let locked = match i.lock_until {
                0 => "-".to_string(),
                t => rfc3339(t),
            };
            println!(
                "{:<40} {:>10} {:>9}  {:<20}  {:<11}  {locked}",
                i.name,
                human_bytes(i.size),
                i.chunks,
                rfc3339(i.created),
                i.location.as_str()
            );
        }
    }
    if !incomplete.is_empty() || only_incomplete {
        if !only_incomplete {
            println!();
        }
        println!(
            "{:<40} {:>10} {:>8}  LAST CHECKPOINT (UTC)",
            "INCOMPLETE", "RESUME AT", "STATE"
        );
        for i in &incomplete {
            println!(
                "{:<40} {:>10} {:>8}  {}",
                i.name,
                human_bytes(i.resume_offset),
                if i.writing { "writing" } else { "stopped" },
                rfc3339(i.checkpointed)
            );
        }
    }
    Ok(())
}

/// Bytes for people: "1.5 GiB"; exact figures stay in `--json`.
pub(crate) fn human_bytes(n: u64) -> String {
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

fn report(cli: &Cli, v: serde_json::Value, text: &str) {
    if cli.json {
        println!("{v}");
    } else {
        println!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
