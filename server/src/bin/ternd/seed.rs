//! `ternd seed export|import|status|cleanup`: through the running server's
//! control socket where one is up, else on the stopped store.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use tern_core::time::rfc3339;
use tern_server::config::Config;
use tern_server::protocol::control::{self, Request};
use tern_server::service::audit::AuditLog;
use tern_server::service::seed::export::ExportRequest;
use tern_server::service::seed::import::{ImportRequest, DEFAULT_PIN_DAYS};
use tern_server::store::DEFAULT_GROUP;

use super::DataArg;

#[derive(Subcommand)]
pub(crate) enum SeedCmd {
    /// Write every unique chunk of some containers to DEST as volumes and a
    /// manifest (encrypted unless --no-encrypt). Exits 3 when DEST is full:
    /// swap the device and run it again with --continue.
    Export {
        #[command(flatten)]
        data: DataArg,
        /// Containers to export (NAME or GROUP/NAME), comma-separated.
        #[arg(long, value_delimiter = ',')]
        containers: Vec<String>,
        /// Directory the volumes go to (a mounted device, a share).
        #[arg(long)]
        to: Option<PathBuf>,
        /// Largest volume, like 64GiB or 700MiB.
        #[arg(long, default_value = "64GiB")]
        volume_size: String,
        /// File whose first line is the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Write the seed in the clear (checksummed, not encrypted).
        #[arg(long, conflicts_with = "password_file")]
        no_encrypt: bool,
        /// Go on with the unfinished export (into --to if given, else where
        /// it wrote last).
        #[arg(long = "continue")]
        resume: bool,
        #[arg(long)]
        json: bool,
        /// A fixed seed id (32 hex digits), for tests of byte-identical resumption.
        #[arg(long, hide = true)]
        seed_id: Option<String>,
    },
    /// Verify the volumes in SRC and load their chunks, pinned against GC.
    /// Exits 1 when a volume was refused or is missing.
    Import {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Accept a seed written with --no-encrypt: its tags carry no key,
        /// so anyone who could write the media could have forged them.
        #[arg(long, conflicts_with = "password_file")]
        unencrypted: bool,
        /// Storage group the chunks go into.
        #[arg(long, default_value = DEFAULT_GROUP)]
        group: String,
        /// Days the seeded chunks are kept for the replicas to come.
        #[arg(long, default_value_t = DEFAULT_PIN_DAYS)]
        pin_days: u64,
        #[arg(long)]
        json: bool,
    },
    /// List the seeds loaded here.
    Status {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        json: bool,
    },
    /// Drop a seed's pins (every seed's without SEED); refused while images
    /// of its containers have not arrived by replication, unless --force.
    Cleanup {
        #[command(flatten)]
        data: DataArg,
        seed: Option<String>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn seed(cmd: SeedCmd) -> Result<()> {
    match cmd {
        SeedCmd::Export {
            data,
            containers,
            to,
            volume_size,
            password_file,
            no_encrypt,
            resume,
            json,
            seed_id,
        } => {
            if password_file.is_none() && !no_encrypt && !resume {
                bail!(
                    "a seed is encrypted: give --password-file FILE (or --no-encrypt to write \
                     it in the clear)"
                );
            }
            let volume_size = tern_core::units::parse_size(&volume_size)
                .map_err(|e| anyhow::anyhow!("--volume-size: {e}"))?;
            let req = ExportRequest {
                containers,
                to: to.map(absolute).transpose()?,
                volume_size,
                password: password_file.as_deref().map(read_password).transpose()?,
                resume,
                seed_id,
            };
            let report = send(&data.data, Request::SeedExport(req))?;
            print_export(&data.data, &report, json)
        }
        SeedCmd::Import {
            data,
            from,
            password_file,
            unencrypted,
            group,
            pin_days,
            json,
        } => {
            let req = ImportRequest {
                from: absolute(from)?,
                password: password_file.as_deref().map(read_password).transpose()?,
                group,
                pin_days,
                unencrypted,
            };
            let report = send(&data.data, Request::SeedImport(req))?;
            print_import(&report, json)
        }
        SeedCmd::Status { data, json } => {
            print_status(&send(&data.data, Request::SeedStatus)?, json);
            Ok(())
        }
        SeedCmd::Cleanup {
            data,
            seed,
            force,
            json,
        } => {
            let report = send(&data.data, Request::SeedCleanup { seed, force })?;
            print_cleanup(&report, json);
            Ok(())
        }
    }
}

fn print_status(report: &serde_json::Value, json: bool) {
    if json {
        println!("{report}");
        return;
    }
    let seeds = report.as_array().cloned().unwrap_or_default();
    if seeds.is_empty() {
        println!("no seeds");
    }
    for s in seeds {
        println!(
            "{}  from {}  group {}  {} chunks pinned, {} referenced, {} bytes loaded, \
             volumes {}/{}  pinned until {}  images awaited: {}",
            s["seed"].as_str().unwrap_or(""),
            s["source"].as_str().unwrap_or(""),
            s["group"].as_str().unwrap_or(""),
            s["chunks"],
            s["referenced"],
            s["bytes_loaded"],
            s["volumes_loaded"],
            s["volumes_total"]
                .as_u64()
                .map_or("?".into(), |n| n.to_string()),
            rfc3339(s["pinned_until"].as_u64().unwrap_or(0)),
            s["images_awaited"].as_array().map_or(0, |a| a.len()),
        );
    }
}

fn print_cleanup(report: &serde_json::Value, json: bool) {
    if json {
        println!("{report}");
        return;
    }
    let seeds = report["seeds"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!(
        "dropped {} pins of seed(s) {seeds}; the next gc frees what no image refers to",
        report["pins_dropped"],
    );
}

/// Through the running server, else on the stopped store.
fn send(data: &Path, req: Request) -> Result<serde_json::Value> {
    let bar = progress_bar();
    let show = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
        true
    };
    let answer = match control::request_with_progress(data, &req, &show)? {
        Some(v) => v,
        None => {
            let store = super::offline::open_store(data)?;
            let cfg = Config::load(&data.join("ternd.toml"))?;
            let id = tern_server::certs::fingerprint(&super::cert_paths(data, &cfg))
                .context("reading this server's certificate (its id goes into a seed)")?
                .to_string();
            control::run(req, data, &store, &id, &show, &AuditLog::new(data))?
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(answer)
}

fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

fn print_export(data: &Path, r: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{r}");
    } else {
        let volumes = r["volumes"].as_array().map_or(0, |a| a.len());
        println!(
            "seed {}: {} chunks, {} stored bytes; {} volume(s) written by this run, {} in all, in {}",
            r["seed"].as_str().unwrap_or(""),
            r["chunks"],
            r["stored_bytes"],
            r["written"].as_array().map_or(0, |a| a.len()),
            volumes,
            r["to"].as_str().unwrap_or("")
        );
    }
    if let Some(next) = r["next_volume"].as_u64() {
        eprintln!(
            "ternd: {} is full: volumes 1..{} are written; volume {next} is next. Swap the device \
             and run `ternd seed export --data {} --continue` (with the same --password-file), \
             or give another directory with --continue --to DIR",
            r["to"].as_str().unwrap_or(""),
            next - 1,
            data.display()
        );
        std::process::exit(3);
    }
    if !json {
        println!("export complete");
    }
    Ok(())
}

fn print_import(r: &serde_json::Value, json: bool) -> Result<()> {
    let list = |k: &str| {
        r[k].as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let refused = r["refused"].as_array().cloned().unwrap_or_default();
    let missing = r["missing"].as_array().map_or(0, |a| a.len());
    if json {
        println!("{r}");
    } else {
        println!(
            "seed {} from {}: loaded volumes [{}] ({} chunks stored, {} already here, {} bytes) \
             into group {}; earlier: [{}]; pinned until {}",
            r["seed"].as_str().unwrap_or(""),
            r["source"].as_str().unwrap_or(""),
            list("loaded"),
            r["chunks_loaded"],
            r["chunks_present"],
            r["bytes_loaded"],
            r["group"].as_str().unwrap_or(""),
            list("already"),
            rfc3339(r["pinned_until"].as_u64().unwrap_or(0))
        );
        for f in &refused {
            println!(
                "refused {}: {}",
                f["file"].as_str().unwrap_or(""),
                f["why"].as_str().unwrap_or("")
            );
        }
        if missing > 0 {
            println!(
                "missing volumes: [{}] (their chunks will travel by replication, or import them \
                 from another device)",
                list("missing")
            );
        }
        if r["manifest_complete"] == false {
            println!(
                "this device's manifest predates the end of the export: import the device with \
                 the last volume too"
            );
        }
    }
    if !refused.is_empty() || missing > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn read_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the password file {}", path.display()))?;
    let p = text.lines().next().unwrap_or_default().to_string();
    if p.is_empty() {
        bail!("the password file {} is empty", path.display());
    }
    Ok(p)
}

/// The server may run elsewhere than this command: it gets absolute paths.
fn absolute(p: PathBuf) -> Result<PathBuf> {
    Ok(std::path::absolute(&p)?)
}
