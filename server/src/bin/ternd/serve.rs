//! `ternd serve`: the process around the server (config, log, limits,
//! the store opened as the disk allows) and its runtime.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tern_core::names::{GroupName, UserName};
use tern_core::session::CacheLimits;
use tern_server::certs::{self};
use tern_server::config::{Config, DEFAULT_CONFIG};
use tern_server::protocol::{control, handler, listen};
use tern_server::service::replication::{LocalIdentity, Replicator};
use tern_server::service::shaping::{schedule::Clock, Shaper};
use tern_server::service::users::{generate_password, Users};
use tern_server::store::{Store, StoreError, DEFAULT_GROUP};

use super::cert_paths;

pub(crate) fn serve(
    data: &Path,
    listen: Option<SocketAddr>,
    plain: Option<SocketAddr>,
    config: Option<PathBuf>,
    grace_period: Option<u64>,
    protocol_max: u16,
    shaping_clock: Option<i64>,
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
    let fingerprint = certs::fingerprint(&paths)?;
    println!("fingerprint: {fingerprint}");
    let me = LocalIdentity {
        cert: paths.cert.clone(),
        key: paths.key.clone(),
        server_id: fingerprint.to_string(),
    };
    let server_id = me.server_id.clone();
    let clock = shaping_clock.map_or_else(Clock::default, Clock::starting_at);
    let shaper = Arc::new(Shaper::new(store.clone(), clock));
    let replicator = Replicator::start(store.clone(), me, cfg.max_copies_per_partner, shaper)
        .context("starting the replication scheduler")?;
    let retention = tern_server::upkeep::Retention {
        images: std::time::Duration::from_secs(cfg.incomplete_retention_secs),
        replicas: std::time::Duration::from_secs(cfg.replica_retention_secs),
    };
    tern_server::upkeep::start(store.clone(), retention).context("starting the upkeep thread")?;
    run_server(
        data,
        &cfg,
        store,
        tls,
        (replicator, protocol_max, server_id),
    )
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

/// Creates the user admin on first start, with the password from
/// TERN_PASSWORD or a generated one, printed once.
fn ensure_admin(store: &Store) -> Result<()> {
    let admin = UserName::new("admin").expect("valid name");
    let users = Users::new(store);
    if users.exists(&admin)? {
        return Ok(());
    }
    let (password, generated) = match std::env::var("TERN_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (generate_password()?, true),
    };
    users.add(
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
    (replicator, protocol_max, server_id): (Arc<Replicator>, u16, String),
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
        let control = control::ControlContext {
            data: data.to_path_buf(),
            store: store.clone(),
            server_id,
        };
        tokio::spawn(async move {
            if let Err(e) = control::serve(control).await {
                tracing::error!("control socket: {e:#}");
            }
        });
        tokio::select! {
            r = listeners.serve(handler::Sessions::new(store, grace, cache, replicator, protocol_max), tls, limits) => r,
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
