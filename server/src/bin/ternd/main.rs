//! `ternd`: run and administer a tern server.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tern_server::certs::{self, CertPaths};
use tern_server::config::Config;

mod group;
mod notify;
mod offline;
mod seed;
mod serve;

use offline::{fsck, fsck_repair, gc, group_arg, user};
use serve::serve;

#[derive(Parser)]
#[command(
    name = "ternd",
    version,
    about = "The tern deduplicating backup target"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (initializing the data directory on first start).
    Serve(serve::ServeArgs),
    /// Print the server certificate's fingerprint.
    Fingerprint {
        #[command(flatten)]
        data: DataArg,
    },
    /// Reclaim space of deleted images (through the running server if there
    /// is one), one storage group at a time: a group's reads and writes
    /// pause during its turn only.
    Gc {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        json: bool,
        /// Only this storage group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Verify every pack, index entry and recipe, changing nothing; exits 1 on damage.
    Fsck {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        json: bool,
        /// Only this storage group (its packs, index entries and images).
        #[arg(long, conflicts_with = "repair")]
        group: Option<String>,
        /// Read every object of cloud groups whole (by default: their tables,
        /// and a sample of about one in 16 whole).
        #[arg(long)]
        full: bool,
        /// Repair a stopped store: keep every intact chunk, drop damaged ones,
        /// and list each change.
        #[arg(long)]
        repair: bool,
    },
    /// Fill a stopped store with ENTRIES made-up index entries (every
    /// LIVE_EVERY-th named by a recipe), without data: for measuring GC and
    /// stats at scale (bench/gc-scale).
    #[command(hide = true)]
    SyntheticFill {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        entries: u64,
        #[arg(long, default_value_t = 2)]
        live_every: u64,
    },
    /// Storage groups on a stopped server: recover a cloud group from its bucket.
    Group {
        #[command(subcommand)]
        cmd: group::GroupCmd,
    },
    /// Seed a new replica from portable media: export, import, status, cleanup.
    Seed {
        #[command(subcommand)]
        cmd: seed::SeedCmd,
    },
    /// Manage users (on a stopped server).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Write the man pages (ternd.1 and one per subcommand) into DIR; the
    /// package build runs it.
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
}

#[derive(Subcommand)]
pub(crate) enum UserCmd {
    /// Add a user (an existing one is an error); the password comes from
    /// TERN_PASSWORD or stdin.
    Add {
        #[command(flatten)]
        data: DataArg,
        name: String,
        #[arg(long)]
        admin: bool,
        /// Storage groups the user may use (default: "default").
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Set a user's password, from TERN_PASSWORD or stdin; groups and rights stay.
    Passwd {
        #[command(flatten)]
        data: DataArg,
        name: String,
    },
    /// Change a user's storage groups and admin right.
    Set {
        #[command(flatten)]
        data: DataArg,
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
    },
}

#[derive(clap::Args)]
pub(crate) struct DataArg {
    /// Data directory.
    #[arg(long, env = "TERND_DATA", default_value = "ternd-data")]
    pub(crate) data: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // Not eprintln: on a full disk stderr may be a file that cannot grow.
        let _ = writeln!(std::io::stderr(), "ternd: error: {e:#}");
        std::process::exit(2);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Serve(args) => serve(args),
        Cmd::GenerateMan { dir } => {
            use clap::CommandFactory;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))
        }
        Cmd::Fingerprint { data } => {
            let cfg = Config::load(&data.data.join("ternd.toml"))?;
            println!("{}", certs::fingerprint(&cert_paths(&data.data, &cfg))?);
            Ok(())
        }
        Cmd::Gc { data, json, group } => gc(&data.data, json, group_arg(group)?),
        Cmd::Fsck {
            data,
            json,
            group,
            full,
            repair: false,
        } => fsck(&data.data, json, group_arg(group)?, full),
        Cmd::Fsck {
            data,
            json,
            repair: true,
            ..
        } => fsck_repair(&data.data, json),
        Cmd::SyntheticFill {
            data,
            entries,
            live_every,
        } => offline::open_store(&data.data)?
            .synthetic_fill(entries, live_every)
            .context("filling the store"),
        Cmd::Group { cmd } => group::group(cmd),
        Cmd::Seed { cmd } => seed::seed(cmd),
        Cmd::User { cmd } => user(cmd),
    }
}

pub(crate) fn cert_paths(data: &Path, cfg: &Config) -> CertPaths {
    CertPaths {
        cert: data.join(&cfg.cert),
        key: data.join(&cfg.key),
    }
}
