//! `tern shaping`: bandwidth groups with weekly windows, which partners'
//! copies and users' backups and restores draw from (admin only).

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use tern_agent::WriteMode;
use tern_core::wire::{parse_rate, show_rate, ShapingInfo, ShapingSettings, ShapingWindow};

use super::{connect, report, Cli};

#[derive(Subcommand)]
pub enum ShapingCmd {
    /// Create or change a group (at most 8 on a server); running jobs follow
    /// within 2 s.
    Set {
        name: String,
        /// The rate outside every window, like 20MB/s, 500KB/s, or 0 (paused).
        #[arg(long)]
        rate: String,
        /// 'DAYS HH:MM-HH:MM=RATE', like 'mon-fri 07:00-19:00=5MB/s'
        /// (repeat it; the first that contains the time wins; DAYS like
        /// mon-fri, sat,sun or daily; an end before the start runs over midnight).
        #[arg(long = "window")]
        windows: Vec<String>,
        /// The time zone of the windows: an IANA name like Europe/Berlin,
        /// or UTC (default: the server's).
        #[arg(long, default_value = "")]
        timezone: String,
    },
    /// Each group: its rate now, the window in force, its throughput over
    /// the last 10 s, who draws from it.
    Ls,
    /// Remove a group no partner or user draws from.
    Rm { name: String },
}

pub fn shaping(cli: &Cli, cmd: &ShapingCmd) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    match cmd {
        ShapingCmd::Set {
            name,
            rate,
            windows,
            timezone,
        } => {
            let settings = ShapingSettings {
                rate: parse_rate(rate).map_err(anyhow::Error::msg)?,
                windows: windows
                    .iter()
                    .map(|w| w.parse::<ShapingWindow>())
                    .collect::<Result<_, _>>()
                    .map_err(anyhow::Error::msg)?,
                timezone: timezone.clone(),
            };
            client
                .shaping_set(name, settings)
                .with_context(|| format!("setting shaping group {name}"))?;
            report(
                cli,
                json!({"shaping": name, "set": true}),
                &format!("shaping group {name} set"),
            );
        }
        ShapingCmd::Ls => print_groups(cli, &client.shaping_list()?),
        ShapingCmd::Rm { name } => {
            client
                .shaping_remove(name)
                .with_context(|| format!("removing shaping group {name}"))?;
            report(
                cli,
                json!({"shaping": name, "removed": true}),
                &format!("shaping group {name} removed"),
            );
        }
    }
    Ok(())
}

fn print_groups(cli: &Cli, list: &[ShapingInfo]) {
    if cli.json {
        let v: Vec<_> = list
            .iter()
            .map(|g| {
                json!({"name": g.name, "rate": g.settings.rate,
                    "windows": g.settings.windows.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
                    "timezone": g.settings.timezone, "rate_now": g.rate_now,
                    "window_now": g.window_now, "throughput": g.throughput, "jobs": g.jobs,
                    "partners": g.partners, "users": g.users})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        for g in list {
            let now = if g.rate_now == 0 {
                "0 (paused)".to_string()
            } else {
                show_rate(g.rate_now)
            };
            let window = if g.window_now.is_empty() {
                "base rate".to_string()
            } else {
                format!("window {}", g.window_now)
            };
            println!(
                "{:<16} now {:<12} ({window}; zone {})  last 10 s {}  jobs {}",
                g.name,
                now,
                if g.settings.timezone.is_empty() {
                    "server's"
                } else {
                    &g.settings.timezone
                },
                show_rate(g.throughput),
                g.jobs
            );
            println!("{:<16} base {}", "", show_rate(g.settings.rate));
            for w in &g.settings.windows {
                println!("{:<16} window {w}", "");
            }
            if !g.partners.is_empty() || !g.users.is_empty() {
                println!(
                    "{:<16} partners: {}  users: {}",
                    "",
                    g.partners.join(", "),
                    g.users.join(", ")
                );
            }
        }
    }
}
