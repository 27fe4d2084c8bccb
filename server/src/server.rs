//! [`Server`]: the three layers wired together. `ternd serve` is this plus
//! the process around it (the configuration file, the log, malloc tuning,
//! file-descriptor limits); a test can run one in-process where a process
//! is not the point.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tern_core::names::{GroupName, UserName};
use tern_core::session::{CacheLimits, SpillBudget};
use tern_core::tls::Fingerprint;

use crate::certs::{self, CertPaths};
use crate::config::Config;
use crate::protocol::listen::{ConnectionLimits, Listeners};
use crate::protocol::sessions::Sessions;
use crate::protocol::{control, metrics};
use crate::service::audit::AuditLog;
use crate::service::replication::{LocalIdentity, Replicator};
use crate::service::shaping::{schedule::Clock, Shaper};
use crate::service::tier::Tierer;
use crate::service::users::{generate_password, Users};
use crate::store::{Store, StoreError, DEFAULT_GROUP};
use crate::upkeep;

/// Why a store opened on a full disk is read-only.
const READ_ONLY_FULL: &str = "the disk was full when ternd started; free space on the \
     filesystem (outside ternd) and restart ternd to write and delete again";

/// What a server needs to start.
pub struct ServerOptions {
    /// The data directory (made private and initialized by `ternd serve`).
    pub data: PathBuf,
    pub config: Config,
    /// Where its certificate and key are.
    pub certs: CertPaths,
    /// The newest protocol version to offer (lower only to test how
    /// partners handle an old server).
    pub protocol_max: u16,
    /// A fixed start for the shaping groups' clock (Unix seconds), for tests
    /// of time windows.
    pub shaping_clock: Option<i64>,
    /// The password of the user `admin` made on first start; `None`
    /// generates one (reported in [`Started::admin_created`]).
    pub admin_password: Option<String>,
}

/// The server's engine, services and listeners, wired.
pub struct Server;

/// A started server: listening, not yet serving.
pub struct Started {
    /// Where the TLS listener and the loopback plaintext one (if enabled) are.
    pub tls_addr: SocketAddr,
    pub plain_addr: Option<SocketAddr>,
    /// Where the metrics endpoint listens, if `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The server certificate's fingerprint, which clients pin.
    pub fingerprint: Fingerprint,
    /// On first start: the user admin was made, with this password if it
    /// was generated (`Some("")` when it came from the options).
    pub admin_created: Option<String>,
    listeners: Listeners,
    sessions: Arc<Sessions>,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnectionLimits,
    control: control::ControlContext,
    control_socket: tokio::net::UnixListener,
    metrics_listener: Option<tokio::net::TcpListener>,
}

impl Server {
    /// Starts a server on the current tokio runtime: the store (read-only
    /// if the disk is too full to open it for writing), the admin on first
    /// start, the replication scheduler, the upkeep thread, the listeners.
    pub async fn start(opts: ServerOptions) -> Result<Started> {
        let ServerOptions {
            data,
            config: cfg,
            certs: paths,
            protocol_max,
            shaping_clock,
            admin_password,
        } = opts;
        let Engine {
            store,
            replicator,
            tier,
            fingerprint,
            admin_created,
        } = {
            let (data, cfg, paths) = (data.clone(), cfg.clone(), paths.clone());
            tokio::task::spawn_blocking(move || {
                engine_and_services(&data, &cfg, &paths, shaping_clock, admin_password)
            })
            .await
            .context("starting the server's engine")??
        };
        let tls = certs::server_config(&paths, cfg.allow_tls12)?;
        let listeners = Listeners::bind(cfg.listen, cfg.plain_listen).await?;
        let control_socket = control::bind(&data)?;
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => Some(
                metrics::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics_listen {addr}"))?,
            ),
            None => None,
        };
        let cache = CacheLimits {
            memory: cfg.session_cache_bytes,
            disk: cfg.session_spill_bytes,
            spill_dir: data.join(&cfg.session_spill_dir),
            budget: Some(SpillBudget::new(
                cfg.spill_bytes_total,
                cfg.spill_bytes_per_user,
            )),
        };
        let grace = Duration::from_secs(cfg.grace_period_secs);
        let audit = Arc::new(AuditLog::new(&data));
        let sessions = Sessions::new(
            store.clone(),
            grace,
            cache,
            (replicator, tier),
            protocol_max,
            audit.clone(),
        );
        let metrics_addr = metrics_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        let metrics = sessions.metrics.clone();
        Ok(Started {
            tls_addr: listeners.tls_addr()?,
            plain_addr: listeners.plain_addr()?,
            metrics_addr,
            fingerprint,
            admin_created,
            listeners,
            sessions,
            tls,
            limits: ConnectionLimits {
                total: cfg.max_connections,
                per_address: cfg.max_connections_per_address,
            },
            control: control::ControlContext {
                data,
                store,
                server_id: fingerprint.to_string(),
                audit,
                metrics,
            },
            control_socket,
            metrics_listener,
        })
    }
}

impl Started {
    /// Serves clients and the control socket until `stop` completes (or a
    /// listener fails).
    pub async fn serve_until(self, stop: impl Future<Output = ()>) -> Result<()> {
        let (control, socket) = (self.control, self.control_socket);
        let control = tokio::spawn(async move {
            if let Err(e) = control::serve(socket, control).await {
                tracing::error!("control socket: {e:#}");
            }
        });
        let metrics = self
            .metrics_listener
            .map(|l| tokio::spawn(metrics::serve(l, self.sessions.clone())));
        let served = tokio::select! {
            r = self.listeners.serve(self.sessions, self.tls, self.limits) => r,
            () = stop => Ok(()),
        };
        control.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        served
    }
}

/// What the blocking part of a start made.
struct Engine {
    store: Arc<Store>,
    replicator: Arc<Replicator>,
    tier: Arc<Tierer>,
    fingerprint: Fingerprint,
    admin_created: Option<String>,
}

/// The store, the admin, replication and upkeep: the blocking part of a start.
fn engine_and_services(
    data: &Path,
    cfg: &Config,
    paths: &CertPaths,
    shaping_clock: Option<i64>,
    admin_password: Option<String>,
) -> Result<Engine> {
    if certs::ensure_server_cert(paths)? {
        tracing::info!(
            "created a self-signed certificate in {}",
            paths.cert.display()
        );
    }
    let store = Arc::new(open_store(data, cfg)?);
    let admin_created = ensure_admin(&store, admin_password)?;
    let fingerprint = certs::fingerprint(paths)?;
    let me = LocalIdentity {
        cert: paths.cert.clone(),
        key: paths.key.clone(),
        server_id: fingerprint.to_string(),
    };
    let clock = shaping_clock.map_or_else(Clock::default, Clock::starting_at);
    let shaper = Arc::new(Shaper::new(store.clone(), clock));
    let replicator = Replicator::start(store.clone(), me, cfg.max_copies_per_partner, shaper)
        .context("starting the replication scheduler")?;
    let every = Duration::from_secs(cfg.tier_interval_secs);
    let tier = Tierer::start(store.clone(), replicator.clone(), every)
        .context("starting the cloud tier mover")?;
    let retention = upkeep::Retention {
        images: Duration::from_secs(cfg.incomplete_retention_secs),
        replicas: Duration::from_secs(cfg.replica_retention_secs),
    };
    upkeep::start(store.clone(), retention).context("starting the upkeep thread")?;
    let every = Duration::from_secs(cfg.cloud_catalog_secs.max(1));
    upkeep::start_catalog_saver(store.clone(), every)
        .context("starting the cloud catalog thread")?;
    Ok(Engine {
        store,
        replicator,
        tier,
        fingerprint,
        admin_created,
    })
}

/// Creates the user admin on first start; returns its password if it was
/// generated, `""` if it was given.
fn ensure_admin(store: &Store, password: Option<String>) -> Result<Option<String>> {
    let admin = UserName::new("admin").context("the name admin")?;
    let users = Users::new(store);
    if users.exists(&admin)? {
        return Ok(None);
    }
    let (password, shown) = match password.filter(|p| !p.is_empty()) {
        Some(p) => (p, String::new()),
        None => {
            let p = generate_password()?;
            (p.clone(), p)
        }
    };
    users.add(
        &admin,
        &password,
        true,
        vec![GroupName::new(DEFAULT_GROUP)?],
    )?;
    Ok(Some(shown))
}

/// The store to serve. On a disk too full to open it for writing (finishing
/// a pack, redb's repair after a crash), it is served read-only, so that
/// images can still be read and the operator sees why.
fn open_store(data: &Path, cfg: &Config) -> Result<Store> {
    match Store::open(data) {
        Ok(store) => {
            store.set_reserved_space(cfg.reserved_space_bytes)?;
            store.set_cloud_grace(Duration::from_secs(cfg.cloud_grace_secs));
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
