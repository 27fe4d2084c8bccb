//! `tern partner`, `tern copy`, `tern events`, `tern replication`: DMA-managed
//! replication from the command line.

use std::io::{IsTerminal, Read};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use tern_agent::{CopyId, CopyInfo, CopyState, CopyTarget, PartnerInfo, WriteMode};

use super::{connect, connect_as, human_bytes, report, rfc3339, Cli};

#[derive(Subcommand)]
pub enum PartnerCmd {
    /// Pair with a target server (admin only): the server connects to it,
    /// checks its certificate, logs in and compares protocol versions. The
    /// partner user's password comes from TERN_PARTNER_PASSWORD or stdin.
    /// --user and --fingerprint here are the partner's; this server is
    /// reached as TERN_USER, pinned by TERN_FINGERPRINT (or the config).
    Add {
        name: String,
        /// HOST:PORT, several separated by commas (tried in order).
        #[arg(long, value_delimiter = ',', required = true)]
        address: Vec<String>,
        /// The target's certificate fingerprint (`ternd fingerprint` there).
        #[arg(long)]
        fingerprint: String,
        /// The user on the target (allowed to replicate into its replica
        /// containers: `tern user set USER --replicate-into GROUP` there).
        #[arg(long)]
        user: String,
        /// The shaping group its copies draw bandwidth from.
        #[arg(long)]
        shaping: Option<String>,
        // `--connections N` (the global option) also sets the partner's
        // connections per copy here (default 4).
    },
    /// Change a partner (admin only): its addresses (tried in order; a copy
    /// goes on over the next when the one in use stops answering), its
    /// shaping group, its connections per copy. The next attempt of each
    /// copy takes them.
    Set {
        name: String,
        /// HOST:PORT, several separated by commas (tried in order).
        #[arg(long, value_delimiter = ',')]
        address: Vec<String>,
        /// The shaping group its copies draw bandwidth from.
        #[arg(long, conflicts_with = "no_shaping")]
        shaping: Option<String>,
        /// Take it out of its shaping group.
        #[arg(long)]
        no_shaping: bool,
        // `--connections N` (the global option) sets its connections per
        // copy here (MultiConnect; 0: the default, 4).
    },
    /// List the partners.
    Ls,
    /// Forget a partner.
    Rm { name: String },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CopyArgs {
    #[command(subcommand)]
    cmd: Option<CopyCmd>,
    #[command(flatten)]
    start: CopyStart,
}

#[derive(Args)]
struct CopyStart {
    /// The container holding the image.
    #[arg(long)]
    container: Option<String>,
    /// The image to copy.
    #[arg(long)]
    name: Option<String>,
    /// The partner to copy to.
    #[arg(long)]
    to: Option<String>,
    /// The replica container on the partner.
    #[arg(long)]
    to_container: Option<String>,
    /// The replica's name there [default: the image's].
    #[arg(long)]
    to_name: Option<String>,
    /// Wait until the target has committed the image (progress on a terminal).
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand)]
enum CopyCmd {
    /// One copy's state and counters.
    Status { id: String },
    /// Every copy, newest first.
    Ls,
    /// Cancel a copy that has not ended.
    Cancel { id: String },
    /// End a copy and drop what it left on both sides: on its source, a
    /// copy not yet done is cancelled and its target drops its partial
    /// replica; on its target (admins), the partial replica is dropped.
    Abort { id: String },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EventsArgs {
    #[command(subcommand)]
    cmd: Option<EventsCmd>,
    /// The import container.
    #[arg(long)]
    container: Option<String>,
}

#[derive(Subcommand)]
enum EventsCmd {
    /// Acknowledge events: they are never listed again.
    Ack {
        #[arg(long)]
        container: String,
        #[arg(required = true)]
        ids: Vec<u64>,
    },
}

#[derive(Subcommand)]
pub enum ReplicationCmd {
    /// Every copy attempt (sent or received), newest first.
    History {
        /// Most entries shown.
        #[arg(long, default_value_t = 100)]
        max: u32,
    },
}

pub fn partner(cli: &Cli, cmd: &PartnerCmd) -> Result<()> {
    // `partner add` takes --user and --fingerprint for the partner: the
    // server itself is reached as TERN_USER, pinned by TERN_FINGERPRINT.
    let client = match cmd {
        PartnerCmd::Add { .. } => connect_as(
            cli,
            WriteMode::Dedup,
            env_var("TERN_USER"),
            env_var("TERN_FINGERPRINT"),
        )?,
        _ => connect(cli, WriteMode::Dedup)?,
    };
    match cmd {
        PartnerCmd::Add {
            name,
            address,
            fingerprint,
            user,
            shaping,
        } => {
            let password = partner_password()?;
            let addresses: Vec<&str> = address.iter().map(String::as_str).collect();
            let settings = tern_core::wire::PartnerSettings {
                connections: copy_connections(cli)?.unwrap_or(0),
                shaping: shaping.clone(),
            };
            client
                .partner_add_with(name, &addresses, fingerprint, user, &password, settings)
                .with_context(|| format!("adding partner {name}"))?;
            report(
                cli,
                json!({"partner": name, "added": true}),
                &format!("partner {name} added"),
            );
        }
        PartnerCmd::Set {
            name,
            address,
            shaping,
            no_shaping,
        } => {
            let addresses: Vec<&str> = address.iter().map(String::as_str).collect();
            let shaping = if *no_shaping {
                Some("")
            } else {
                shaping.as_deref()
            };
            client
                .partner_set(
                    name,
                    (!addresses.is_empty()).then_some(addresses.as_slice()),
                    copy_connections(cli)?,
                    shaping,
                )
                .with_context(|| format!("changing partner {name}"))?;
            report(
                cli,
                json!({"partner": name, "changed": true}),
                &format!("partner {name} changed"),
            );
        }
        PartnerCmd::Ls => print_partners(cli, &client.partner_list()?),
        PartnerCmd::Rm { name } => {
            client
                .partner_remove(name)
                .with_context(|| format!("removing partner {name}"))?;
            report(
                cli,
                json!({"partner": name, "removed": true}),
                &format!("partner {name} removed"),
            );
        }
    }
    Ok(())
}

fn print_partners(cli: &Cli, list: &[PartnerInfo]) {
    if cli.json {
        let v: Vec<_> = list
            .iter()
            .map(|p| {
                json!({"name": p.name, "addresses": p.addresses, "fingerprint": p.fingerprint,
                "user": p.user.as_str(), "version": p.version, "added": p.added,
                "connections": p.settings.connections, "shaping": p.settings.shaping})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        for p in list {
            let connections = match p.settings.connections {
                0 => "4".to_string(),
                n => n.to_string(),
            };
            println!(
                "{:<20} {:<30} user {:<12} protocol {}  connections {}  shaping {}  {}",
                p.name,
                p.addresses.join(","),
                p.user,
                p.version,
                connections,
                p.settings.shaping.as_deref().unwrap_or("-"),
                p.fingerprint
            );
        }
    }
}

/// `--connections N` on `partner add` and `partner set`: the partner's
/// connections per copy (the option also sets this command's own session's).
fn copy_connections(cli: &Cli) -> Result<Option<u32>> {
    cli.connections
        .map(|n| u32::try_from(n).context("--connections is too large"))
        .transpose()
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn partner_password() -> Result<String> {
    if let Ok(p) = std::env::var("TERN_PARTNER_PASSWORD") {
        if !p.is_empty() {
            return Ok(p);
        }
    }
    let mut s = String::new();
    std::io::stdin().take(4096).read_to_string(&mut s)?;
    match s.lines().next() {
        Some(p) if !p.is_empty() => Ok(p.to_string()),
        _ => bail!("no partner password: set TERN_PARTNER_PASSWORD or give it on stdin"),
    }
}

fn parse_id(s: &str) -> Result<CopyId> {
    s.parse::<CopyId>().map_err(anyhow::Error::msg)
}

pub fn copy(cli: &Cli, args: &CopyArgs) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    match &args.cmd {
        Some(CopyCmd::Status { id }) => {
            let info = client.copy_status(parse_id(id)?)?;
            print_copies(cli, &[info]);
        }
        Some(CopyCmd::Ls) => print_copies(cli, &client.copy_list()?),
        Some(CopyCmd::Cancel { id }) => {
            let id = parse_id(id)?;
            client.copy_cancel(id)?;
            report(
                cli,
                json!({"copy": id.to_string(), "cancelled": true}),
                &format!("copy {id} cancelled"),
            );
        }
        Some(CopyCmd::Abort { id }) => {
            let id = parse_id(id)?;
            client.copy_abort(id)?;
            report(
                cli,
                json!({"copy": id.to_string(), "aborted": true}),
                &format!("copy {id} aborted; what it left was dropped"),
            );
        }
        None => {
            let s = &args.start;
            let (Some(container), Some(name), Some(to), Some(to_container)) = (
                s.container.as_deref(),
                s.name.as_deref(),
                s.to.as_deref(),
                s.to_container.as_deref(),
            ) else {
                bail!("tern copy needs --container, --name, --to and --to-container (or a subcommand: status, ls, cancel, abort)");
            };
            let target = CopyTarget {
                partner: to,
                container: to_container,
                name: s.to_name.as_deref(),
            };
            let id = client
                .copy_start(container, name, &target)
                .with_context(|| format!("copying {container}/{name} to {to}"))?;
            if !s.wait {
                report(cli, json!({"copy": id.to_string()}), &id.to_string());
                return Ok(());
            }
            let info = wait(&client, id)?;
            if cli.json {
                println!("{}", copy_json(&info));
            } else {
                println!("{id}");
                println!(
                    "{}: {} sent in {} chunks for {}",
                    info.state.as_str(),
                    human_bytes(info.sent_bytes),
                    info.sent_chunks,
                    human_bytes(info.logical_bytes)
                );
            }
            if !matches!(info.state, CopyState::Done | CopyState::Imported) {
                bail!("copy {id} {}: {}", info.state.as_str(), info.reason);
            }
        }
    }
    Ok(())
}

/// Polls a copy until it ends, drawing progress on a terminal.
fn wait(client: &tern_agent::Client, id: CopyId) -> Result<CopyInfo> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    loop {
        let info = client.copy_status(id)?;
        if let Some(b) = &bar {
            b.set_length(info.logical_bytes);
            b.set_position(info.done_bytes);
            b.set_message(info.state.as_str());
        }
        if info.state.is_final() {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok(info);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn copy_json(c: &CopyInfo) -> serde_json::Value {
    json!({
        "id": c.id.to_string(), "state": c.state.as_str(), "reason": c.reason,
        "container": c.container.as_str(), "image": c.image.as_str(), "partner": c.partner,
        "to_container": c.to_container.as_str(), "to_name": c.to_name.as_str(),
        "logical_bytes": c.logical_bytes, "done_bytes": c.done_bytes, "sent_bytes": c.sent_bytes,
        "sent_chunks": c.sent_chunks, "attempts": c.attempts, "created": c.created, "updated": c.updated,
        "paused": c.paused, "rate": c.rate, "path": c.path, "tier": c.tier,
    })
}

fn print_copies(cli: &Cli, list: &[CopyInfo]) {
    if cli.json {
        let v: Vec<_> = list.iter().map(copy_json).collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    for c in list {
        let state = if c.paused {
            "paused (schedule)"
        } else {
            c.state.as_str()
        };
        let mut running = String::new();
        if c.rate > 0 {
            running += &format!("  rate {}", tern_core::wire::show_rate(c.rate));
        }
        if !c.path.is_empty() {
            running += &format!("  via {}", c.path);
        }
        println!(
            "{}  {:<9} {}/{} -> {}:{}/{}  {}/{} sent {}  attempts {}{running}{}",
            c.id,
            state,
            c.container,
            c.image,
            if c.tier { "tier" } else { &c.partner },
            c.to_container,
            c.to_name,
            human_bytes(c.done_bytes),
            human_bytes(c.logical_bytes),
            human_bytes(c.sent_bytes),
            c.attempts,
            if c.reason.is_empty() {
                String::new()
            } else {
                format!("  ({})", c.reason)
            }
        );
    }
}

pub fn events(cli: &Cli, args: &EventsArgs) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    if let Some(EventsCmd::Ack { container, ids }) = &args.cmd {
        client
            .events_ack(container, ids)
            .with_context(|| format!("acknowledging events of {container}"))?;
        report(
            cli,
            json!({"container": container, "acknowledged": ids}),
            &format!("{} events acknowledged", ids.len()),
        );
        return Ok(());
    }
    let Some(container) = &args.container else {
        bail!("tern events needs --container (or: tern events ack --container C ID...)");
    };
    let list = client
        .events(container, tern_core::wire::MAX_EVENTS_PER_POLL)
        .with_context(|| format!("reading the import events of {container}"))?;
    if cli.json {
        use base64_props::encode;
        let v: Vec<_> = list
            .iter()
            .map(|e| {
                json!({"id": e.id, "time": e.time, "container": e.container.as_str(),
                "image": e.image.as_str(), "size": e.size, "props": encode(&e.props),
                "source_server": e.origin.server, "source_container": e.origin.container.as_str(),
                "source_image": e.origin.image.as_str(), "copy_id": e.origin.copy.to_string()})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    for e in &list {
        println!(
            "{:>8}  {}  {}/{}  {}  from {}/{} (copy {})",
            e.id,
            rfc3339(e.time),
            e.container,
            e.image,
            human_bytes(e.size),
            e.origin.container,
            e.origin.image,
            e.origin.copy
        );
    }
    Ok(())
}

pub fn replication(cli: &Cli, cmd: &ReplicationCmd) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    let ReplicationCmd::History { max } = cmd;
    print_trail(cli, &client.replication_history(*max)?);
    Ok(())
}

/// Trail entries: a line each, or a JSON array with --json.
pub fn print_trail(cli: &Cli, list: &[tern_core::wire::TrailEntry]) {
    if cli.json {
        let v: Vec<_> = list
            .iter()
            .map(|t| {
                json!({"copy_id": t.copy.to_string(), "side": t.side, "peer": t.peer,
                "image": t.image, "started": t.started, "ended": t.ended,
                "logical_bytes": t.logical_bytes, "sent_bytes": t.sent_bytes,
                "sent_chunks": t.sent_chunks, "result": t.result, "reason": t.reason,
                "group": t.group.as_ref().map(|g| g.as_str()), "repeats": t.repeats,
                "tier": t.tier})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    for t in list {
        // Refusals held back by the trail's rate limit, counted into this one.
        let repeats = match t.repeats {
            0 => String::new(),
            n => format!(" (after {n} more like it, not listed one by one)"),
        };
        let (side, image) = match t.tier {
            true => ("tier".to_string(), format!("{} -> {}", t.image, t.peer)),
            false => (t.side.to_string(), t.image.clone()),
        };
        println!(
            "{}  {:<6} {:<9} {} {:<30} {} sent  {}{repeats}",
            rfc3339(t.ended),
            side,
            t.result,
            t.copy,
            image,
            human_bytes(t.sent_bytes),
            t.reason
        );
    }
}

/// Standard base64 (RFC 4648, with padding) for `props` in `--json`.
mod base64_props {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for group in bytes.chunks(3) {
            let b = [
                group[0],
                group.get(1).copied().unwrap_or(0),
                group.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= group.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn encodes_like_rfc_4648() {
            assert_eq!(super::encode(b""), "");
            assert_eq!(super::encode(b"f"), "Zg==");
            assert_eq!(super::encode(b"fo"), "Zm8=");
            assert_eq!(super::encode(b"foo"), "Zm9v");
            assert_eq!(super::encode(b"foobar"), "Zm9vYmFy");
        }
    }
}
