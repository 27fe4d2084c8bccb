//! `ternd`: run and administer a tern server.

use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tern_core::names::{GroupName, UserName};
use tern_core::session::CacheLimits;
use tern_server::certs::{self, CertPaths};
use tern_server::config::{Config, DEFAULT_CONFIG};
use tern_server::store::{self, Store, StoreError, DEFAULT_GROUP};
use tern_server::{control, handler, listen};

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
    Serve {
        #[command(flatten)]
        data: DataArg,
        /// TLS listen address (default from the config: 0.0.0.0:9443).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Plaintext listen address; loopback only.
        #[arg(long)]
        plain_listen: Option<SocketAddr>,
        /// Configuration file (default: DATA/ternd.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Secure Connect grace period in seconds (overrides the config).
        #[arg(long)]
        grace_period: Option<u64>,
    },
    /// Print the server certificate's fingerprint.
    Fingerprint {
        #[command(flatten)]
        data: DataArg,
    },
    /// Reclaim space of deleted images (through the running server if there is one).
    Gc {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        json: bool,
    },
    /// Verify every pack, index entry and recipe, changing nothing; exits 1 on damage.
    Fsck {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        json: bool,
        /// Repair a stopped store: keep every intact chunk, drop damaged ones,
        /// and list each change.
        #[arg(long)]
        repair: bool,
    },
    /// Manage users (on a stopped server).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
}

#[derive(Subcommand)]
enum UserCmd {
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
struct DataArg {
    /// Data directory.
    #[arg(long, env = "TERND_DATA", default_value = "ternd-data")]
    data: PathBuf,
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
        Cmd::Serve {
            data,
            listen,
            plain_listen,
            config,
            grace_period,
        } => serve(&data.data, listen, plain_listen, config, grace_period),
        Cmd::Fingerprint { data } => {
            let cfg = Config::load(&data.data.join("ternd.toml"))?;
            println!("{}", certs::fingerprint(&cert_paths(&data.data, &cfg))?);
            Ok(())
        }
        Cmd::Gc { data, json } => gc(&data.data, json),
        Cmd::Fsck {
            data,
            json,
            repair: false,
        } => fsck(&data.data, json),
        Cmd::Fsck {
            data,
            json,
            repair: true,
        } => fsck_repair(&data.data, json),
        Cmd::User { cmd } => user(cmd),
    }
}

/// `ternd gc`: through the running server if there is one.
fn gc(data: &Path, json: bool) -> Result<()> {
    let report = match control::request(data, "gc")? {
        Some(v) => v,
        None => serde_json::to_value(open_store(data)?.gc()?)?,
    };
    if json {
        println!("{report}");
    } else {
        println!(
            "removed {} chunks; {} packs deleted, {} rewritten; packs {} -> {} bytes",
            report["chunks_removed"],
            report["packs_deleted"],
            report["packs_rewritten"],
            report["bytes_before"],
            report["bytes_after"]
        );
        if let Some(why) = report["stopped"].as_str() {
            println!("gc stopped early: {why}");
        }
    }
    Ok(())
}

/// `ternd fsck`: exits 1 when anything is damaged. A stopped store is opened
/// read-only: not a byte of it changes.
fn fsck(data: &Path, json: bool) -> Result<()> {
    let report = match control::request(data, "fsck")? {
        Some(v) => v,
        None => {
            require_data_dir(data)?;
            let store = Store::open_read_only(data, "opened by fsck").map_err(in_use)?;
            serde_json::to_value(store.fsck()?)?
        }
    };
    if json {
        println!("{report}");
    } else {
        print_fsck(&report, "damaged");
    }
    if !strings(&report["damage"]).is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// `ternd fsck --repair` on a stopped server: checks, says what it will do,
/// repairs, checks again; exits 1 if damage remains (images that lost chunks).
fn fsck_repair(data: &Path, json: bool) -> Result<()> {
    require_data_dir(data)?;
    let store = Store::open_for_repair(data).map_err(in_use)?;
    let before = serde_json::to_value(store.fsck()?)?;
    if !json {
        print_fsck(&before, "damaged");
    }
    let repair = if strings(&before["damage"]).is_empty() {
        serde_json::Value::Null
    } else {
        if !json {
            println!(
                "repairing: every pack with damage is rewritten to list only its intact \
                 entries (found by scanning past the damage), then the index is pointed at \
                 intact copies, and chunks with none are removed from it; images are kept"
            );
        }
        let report = store.repair()?;
        if !json {
            for c in &report.changes {
                println!("repaired: {c}");
            }
        }
        serde_json::to_value(report)?
    };
    let after = serde_json::to_value(store.fsck()?)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"before": before, "repair": repair, "after": after})
        );
    } else if !repair.is_null() {
        print_fsck(&after, "still damaged");
    }
    if !strings(&after["damage"]).is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

fn print_fsck(report: &serde_json::Value, label: &str) {
    for n in strings(&report["notes"]) {
        println!("note: {n}");
    }
    let damage = strings(&report["damage"]);
    for d in &damage {
        println!("{label}: {d}");
    }
    println!(
        "checked {} packs, {} chunks, {} images: {}",
        report["packs"],
        report["chunks_checked"],
        report["images_checked"],
        if damage.is_empty() {
            "clean".to_string()
        } else {
            format!("{} problems", damage.len())
        }
    );
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `ternd user ...` on a stopped server.
fn user(cmd: UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Add {
            data,
            name,
            admin,
            groups,
        } => {
            let name = UserName::new(name)?;
            let groups = if groups.is_empty() {
                vec![DEFAULT_GROUP.to_string()]
            } else {
                groups
            };
            let password = read_password()?;
            open_store(&data.data)?.user_add(&name, &password, admin, group_names(groups)?)?;
            println!("user {name} added");
        }
        UserCmd::Passwd { data, name } => {
            let name = UserName::new(name)?;
            let password = read_password()?;
            open_store(&data.data)?.user_passwd(&name, &password)?;
            println!("password of {name} set");
        }
        UserCmd::Set {
            data,
            name,
            groups,
            admin,
            no_admin,
        } => {
            let name = UserName::new(name)?;
            let groups = (!groups.is_empty())
                .then(|| group_names(groups))
                .transpose()?;
            let admin = match (admin, no_admin) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            if groups.is_none() && admin.is_none() {
                bail!("nothing to change: give --group, --admin or --no-admin");
            }
            open_store(&data.data)?.user_update(&name, groups, admin)?;
            println!("user {name} changed");
        }
    }
    Ok(())
}

fn group_names(groups: Vec<String>) -> Result<Vec<GroupName>> {
    Ok(groups
        .into_iter()
        .map(GroupName::new)
        .collect::<Result<Vec<_>, _>>()?)
}

fn require_data_dir(data: &Path) -> Result<()> {
    if !data.join("catalog.redb").exists() {
        bail!(
            "{} is not a ternd data directory (no catalog.redb)",
            data.display()
        );
    }
    Ok(())
}

fn in_use(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::InUse => {
            anyhow::anyhow!("the data directory is in use by a running ternd; stop it first")
        }
        e => anyhow::Error::from(e),
    }
}

fn open_store(data: &Path) -> Result<Store> {
    require_data_dir(data)?;
    Store::open(data).map_err(in_use)
}

fn read_password() -> Result<String> {
    if let Ok(p) = std::env::var("TERN_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        eprint!("password: ");
    }
    let mut s = String::new();
    std::io::stdin().take(4096).read_to_string(&mut s)?;
    let p = s.lines().next().unwrap_or_default().to_string();
    if p.is_empty() {
        bail!("no password given: set TERN_PASSWORD or write it to stdin");
    }
    Ok(p)
}

fn cert_paths(data: &Path, cfg: &Config) -> CertPaths {
    CertPaths {
        cert: data.join(&cfg.cert),
        key: data.join(&cfg.key),
    }
}

fn serve(
    data: &Path,
    listen: Option<SocketAddr>,
    plain: Option<SocketAddr>,
    config: Option<PathBuf>,
    grace_period: Option<u64>,
) -> Result<()> {
    tune_malloc();
    private_data_dir(data)?;
    let mut cfg = load_config(data, config)?;
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if plain.is_some() {
        cfg.plain_listen = plain;
    }
    if let Some(g) = grace_period {
        cfg.grace_period_secs = g;
    }
    cfg.validate()?;
    let filter = std::env::var("TERN_LOG").unwrap_or_else(|_| cfg.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).context("log filter")?)
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let paths = cert_paths(data, &cfg);
    if certs::ensure_server_cert(&paths)? {
        tracing::info!(
            "created a self-signed certificate in {}",
            paths.cert.display()
        );
    }
    let tls = certs::server_config(&paths, cfg.allow_tls12)?;
    let store = Arc::new(open_store_for_serve(data, cfg.reserved_space_bytes)?);
    ensure_admin(&store)?;
    println!("fingerprint: {}", certs::fingerprint(&paths)?);
    run_server(data, &cfg, store, tls)
}

/// stderr for the log, where a failed write is dropped: tracing's own
/// fallback (eprintln) panics when stderr is a file on a full disk, and a full
/// disk is exactly when ternd must keep running.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Large allocations (argon2's ~19 MiB per password check) get their own
/// mappings and go back to the system when freed. glibc's default raises its
/// mmap threshold after the first such free, and every thread that checked a
/// password then kept ~19 MiB: 16 logins at once left ternd 270 MiB larger.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 8 << 20;
        // SAFETY: mallopt only sets a malloc tuning parameter; it is called
        // before the server starts its threads.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
    }
}

/// File descriptors kept for everything but client connections: the control
/// socket, packs, the catalog, spill files, the log.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft file-descriptor limit to the hard one and returns how many
/// connections fit under it beside the reserve.
fn usable_descriptors() -> usize {
    #[cfg(target_os = "linux")]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write only `lim`.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                if lim.rlim_cur < lim.rlim_max {
                    let raised = libc::rlimit {
                        rlim_cur: lim.rlim_max,
                        rlim_max: lim.rlim_max,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                        lim = raised;
                    }
                }
                let usable = lim.rlim_cur.saturating_sub(RESERVED_DESCRIPTORS);
                return usize::try_from(usable).unwrap_or(usize::MAX).max(1);
            }
        }
    }
    usize::MAX
}

/// Creates the data directory 0700, or makes an existing one 0700 after
/// checking that nobody else could have written to it.
fn private_data_dir(data: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(data) {
        Ok(meta) => {
            let mode = meta.permissions().mode();
            if mode & 0o022 != 0 {
                bail!(
                    "{} is writable by other users (mode {:o}); check what is in it, then `chmod 700 {}`",
                    data.display(),
                    mode & 0o777,
                    data.display()
                );
            }
            std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private", data.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data)
                .with_context(|| format!("creating {}", data.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", data.display())),
    }
    Ok(())
}

/// The config file, written with every default on first start.
fn load_config(data: &Path, config: Option<PathBuf>) -> Result<Config> {
    let config_path = config.unwrap_or_else(|| data.join("ternd.toml"));
    if !config_path.exists() {
        std::fs::write(&config_path, DEFAULT_CONFIG)
            .with_context(|| format!("writing {}", config_path.display()))?;
    }
    Config::load(&config_path)
}

/// Creates the user admin on first start, with the password from
/// TERN_PASSWORD or a generated one, printed once.
fn ensure_admin(store: &Store) -> Result<()> {
    let admin = UserName::new("admin").expect("valid name");
    if store.user_exists(&admin)? {
        return Ok(());
    }
    let (password, generated) = match std::env::var("TERN_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (store::generate_password()?, true),
    };
    store.user_add(
        &admin,
        &password,
        true,
        vec![GroupName::new(DEFAULT_GROUP)?],
    )?;
    if generated {
        println!("created user admin with password: {password}");
    } else {
        println!("created user admin with the password from TERN_PASSWORD");
    }
    Ok(())
}

/// Binds the listeners and the control socket, and serves until interrupted.
fn run_server(
    data: &Path,
    cfg: &Config,
    store: Arc<Store>,
    tls: Arc<rustls::ServerConfig>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ternd")
        .build()?;
    let cache = CacheLimits {
        memory: cfg.session_cache_bytes,
        disk: cfg.session_spill_bytes,
        spill_dir: data.join(&cfg.session_spill_dir),
        budget: Some(tern_core::session::SpillBudget::new(
            cfg.spill_bytes_total,
            cfg.spill_bytes_per_user,
        )),
    };
    let grace = std::time::Duration::from_secs(cfg.grace_period_secs);
    let limits = listen::ConnectionLimits {
        total: cfg.max_connections.min(usable_descriptors()),
        per_address: cfg.max_connections_per_address,
    };
    rt.block_on(async move {
        let listeners = listen::Listeners::bind(cfg.listen, cfg.plain_listen).await?;
        // Printed once bound, so a script (or a test asking for port 0)
        // learns where the server is from these lines alone.
        println!("listening for TLS on {}", listeners.tls_addr()?);
        if let Some(addr) = listeners.plain_addr()? {
            println!("listening for plaintext on {addr}");
        }
        let control_store = store.clone();
        let data = data.to_path_buf();
        tokio::spawn(async move {
            if let Err(e) = control::serve(&data, control_store).await {
                tracing::error!("control socket: {e:#}");
            }
        });
        tokio::select! {
            r = listeners.serve(handler::Sessions::new(store, grace, cache), tls, limits) => r,
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("stopping on interrupt");
                Ok(())
            }
        }
    })
}

/// The store to serve. On a disk too full to open it for writing (finishing
/// a pack, redb's repair after a crash), it is served read-only, so that
/// images can still be read and the operator sees why.
fn open_store_for_serve(data: &Path, reserve: u64) -> Result<Store> {
    match Store::open(data) {
        Ok(store) => {
            store.set_reserved_space(reserve)?;
            Ok(store)
        }
        Err(StoreError::InUse) => bail!("{} is in use by another ternd", data.display()),
        Err(e) if e.is_no_space() => {
            tracing::error!(
                "the disk is full ({e}): serving read-only, so images can be read; free space \
                 on the filesystem (outside ternd) and restart ternd to write and delete again"
            );
            Ok(Store::open_read_only(data, READ_ONLY_FULL)?)
        }
        Err(e) => Err(e.into()),
    }
}

const READ_ONLY_FULL: &str = "the disk was full when ternd started; free space on the \
                              filesystem and restart ternd";
