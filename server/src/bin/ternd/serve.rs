//! `ternd serve`: the process around a [`Server`] (the data directory,
//! the configuration file, the log, malloc and file-descriptor limits) and
//! its runtime.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tern_server::config::{Config, DEFAULT_CONFIG};
use tern_server::server::{Server, ServerOptions};

use super::notify::notify;
use super::{cert_paths, DataArg};
use tokio::signal::unix::{signal, SignalKind};

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    data: DataArg,
    /// TLS listen address (default from the config: 0.0.0.0:9443).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Plaintext listen address; loopback only.
    #[arg(long)]
    plain_listen: Option<SocketAddr>,
    /// Metrics endpoint for Prometheus (overrides metrics_listen).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Configuration file (default: DATA/ternd.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Secure Connect grace period in seconds (overrides the config).
    #[arg(long)]
    grace_period: Option<u64>,
    /// Offer clients no protocol version newer than this (to test how
    /// partners meet an older server).
    #[arg(long, hide = true, default_value_t = tern_core::wire::PROTOCOL_MAX)]
    protocol_max: u16,
    /// Read shaping windows on a clock that starts at this Unix time
    /// (to test a window's boundary without waiting for it).
    #[arg(long, hide = true)]
    shaping_clock: Option<i64>,
}

pub(crate) fn serve(args: ServeArgs) -> Result<()> {
    let data = args.data.data.as_path();
    tune_malloc();
    private_data_dir(data)?;
    let mut cfg = load_config(data, args.config)?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if args.plain_listen.is_some() {
        cfg.plain_listen = args.plain_listen;
    }
    if args.metrics_listen.is_some() {
        cfg.metrics_listen = args.metrics_listen;
    }
    if let Some(g) = args.grace_period {
        cfg.grace_period_secs = g;
    }
    cfg.validate()?;
    let filter = std::env::var("TERN_LOG").unwrap_or_else(|_| cfg.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).context("log filter")?)
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    cfg.max_connections = cfg.max_connections.min(usable_descriptors());
    let opts = ServerOptions {
        data: data.to_path_buf(),
        certs: cert_paths(data, &cfg),
        config: cfg,
        protocol_max: args.protocol_max,
        shaping_clock: args.shaping_clock,
        admin_password: std::env::var("TERN_PASSWORD").ok(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ternd")
        .build()?;
    rt.block_on(async move {
        // Before READY=1: a SIGTERM right after it must stop ternd cleanly,
        // not kill it by the signal's default action.
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let server = Server::start(opts).await?;
        match &server.admin_created {
            Some(p) if p.is_empty() => {
                println!("created user admin with the password from TERN_PASSWORD")
            }
            Some(p) => println!("created user admin with password: {p}"),
            None => {}
        }
        println!("fingerprint: {}", server.fingerprint);
        // Printed once bound, so a script (or a test asking for port 0)
        // learns where the server is from these lines alone.
        println!("listening for TLS on {}", server.tls_addr);
        if let Some(addr) = server.plain_addr {
            println!("listening for plaintext on {addr}");
        }
        if let Some(addr) = server.metrics_addr {
            println!("serving metrics on http://{addr}/metrics");
        }
        notify(&format!(
            "READY=1\nSTATUS=listening for TLS on {}",
            server.tls_addr
        ));
        let served = server
            .serve_until(async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => tracing::info!("stopping on interrupt"),
                    _ = term.recv() => tracing::info!("stopping on SIGTERM"),
                }
                notify("STOPPING=1");
            })
            .await;
        // What is in flight is durable as far as a crash leaves it; the
        // sessions' images are resumable from their last checkpoints.
        println!("stopped");
        served
    })
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
///
/// And few malloc arenas: by default glibc gives threads up to 8 per core,
/// and tokio's blocking pool runs a hundred threads and more under load;
/// chunk buffers freed into those arenas stayed with the process, whose RSS
/// then grew with the data written (370 MiB after a 1 GiB image of 2 KiB
/// chunks; 100 MiB, and faster, with 2 arenas).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 8 << 20;
        const ARENAS: libc::c_int = 2;
        // SAFETY: mallopt only sets malloc tuning parameters; it is called
        // before the server starts its threads.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
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
