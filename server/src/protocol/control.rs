//! The control socket: `ternd gc`, `ternd fsck` and `ternd seed` reach a
//! running server through `DATA/ternd.sock`, a Unix socket only the data
//! directory's owner can open. One syntax, serde on both ends: one request
//! line, a JSON [`Request`] (`"gc"`, `"fsck"`, `{"seed_export":{...}}`, ...),
//! then [`Answer`] lines: any number of `{"progress":[done,total]}` and one
//! `{"ok":...}` or `{"error":"..."}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tern_core::names::GroupName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::metrics::Metrics;
use crate::service::audit::{Actor, AuditLog};
use crate::service::seed;
use crate::store::Store;

pub fn socket_path(data: &Path) -> PathBuf {
    data.join("ternd.sock")
}

/// A request to the running server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// GC of every storage group, or of `group` only.
    Gc {
        #[serde(default)]
        group: Option<GroupName>,
    },
    /// fsck of every storage group, or of `group` only; a cloud group's
    /// objects read whole only for a sample unless `full`.
    Fsck {
        #[serde(default)]
        group: Option<GroupName>,
        #[serde(default)]
        full: bool,
    },
    SeedExport(seed::export::ExportRequest),
    SeedImport(seed::import::ImportRequest),
    SeedStatus,
    SeedCleanup {
        seed: Option<String>,
        force: bool,
    },
}

/// One line of the server's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Work done of the total, so far.
    Progress([u64; 2]),
    /// The request's report.
    Ok(serde_json::Value),
    /// Why it failed.
    Error(String),
}

/// A request line's limit: a JSON request with a password and paths.
const MAX_REQUEST: u64 = 64 << 10;

/// What the server needs to answer requests.
#[derive(Clone)]
pub struct ControlContext {
    pub data: PathBuf,
    pub store: Arc<Store>,
    /// This server's id (its certificate's fingerprint), for seeds.
    pub server_id: String,
    /// Where GC, seed imports and seed cleanups are recorded.
    pub audit: Arc<AuditLog>,
    /// GC runs count there.
    pub metrics: Arc<Metrics>,
}

/// Binds the control socket of data directory `data` (owner only). Done
/// at start, before the server says where it listens: a command run right
/// after that must find the socket, not fall back to the (locked) store.
pub fn bind(data: &Path) -> Result<UnixListener> {
    let path = socket_path(data);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves control requests on `listener` until the process ends.
pub async fn serve(listener: UnixListener, ctx: ControlContext) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, ctx).await {
                tracing::warn!("control request failed: {e:#}");
            }
        });
    }
}

/// Runs a [`Request`] on `store`, reporting progress; GC and the seed
/// jobs that change or copy out the store are recorded in `audit`.
pub fn run(
    req: Request,
    data: &Path,
    store: &Store,
    server_id: &str,
    progress: seed::Progress<'_>,
    audit: &AuditLog,
) -> Result<serde_json::Value> {
    let act = audited(&req);
    let done = run_request(req, data, store, server_id, progress);
    if let Some((act, mut details)) = act {
        let why = done.as_ref().err().map(|e| format!("{e:#}"));
        if let Ok(report) = &done {
            details["report"] = report.clone();
        }
        let command = format!("ternd {}", act.replace('_', " "));
        audit.record(
            Actor::Local(&command),
            act,
            why.as_deref().map_or(Ok(()), Err),
            details,
        );
    }
    done
}

/// The act a request is, for the audit log, with its fields (never the
/// seed password).
fn audited(req: &Request) -> Option<(&'static str, serde_json::Value)> {
    Some(match req {
        Request::Gc { group } => ("gc", serde_json::json!({ "group": group })),
        Request::SeedExport(r) => (
            "seed_export",
            serde_json::json!({"containers": r.containers, "to": r.to, "resume": r.resume,
                "encrypted": r.password.is_some()}),
        ),
        Request::SeedImport(r) => (
            "seed_import",
            serde_json::json!({"from": r.from, "group": r.group, "pin_days": r.pin_days,
                "encrypted": r.password.is_some()}),
        ),
        Request::SeedCleanup { seed, force } => (
            "seed_cleanup",
            serde_json::json!({"seed": seed, "force": force}),
        ),
        Request::Fsck { .. } | Request::SeedStatus => return None,
    })
}

fn run_request(
    req: Request,
    data: &Path,
    store: &Store,
    server_id: &str,
    progress: seed::Progress<'_>,
) -> Result<serde_json::Value> {
    Ok(match req {
        Request::Gc { group } => serde_json::to_value(store.gc(group.as_ref())?)?,
        Request::Fsck { group, full } => {
            serde_json::to_value(store.fsck_with(group.as_ref(), full)?)?
        }
        Request::SeedExport(r) => {
            serde_json::to_value(seed::export::export(store, data, server_id, &r, progress)?)?
        }
        Request::SeedImport(r) => serde_json::to_value(seed::import::import(store, &r, progress)?)?,
        Request::SeedStatus => serde_json::to_value(seed::status(store)?)?,
        Request::SeedCleanup { seed, force } => {
            serde_json::to_value(seed::cleanup(store, seed.as_deref(), force)?)?
        }
    })
}

async fn answer(stream: UnixStream, ctx: ControlContext) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::new(rd);
    let mut line = String::new();
    (&mut reader).take(MAX_REQUEST).read_line(&mut line).await?;
    // The asker sends nothing more: the end of its stream means it is gone
    // (Ctrl-C), and a seed job stops at its next step.
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = gone.clone();
    tokio::spawn(async move {
        let mut b = [0u8; 1];
        let _ = reader.read(&mut b).await;
        watch.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let work = {
        let line = line.trim().to_string();
        tokio::task::spawn_blocking(move || -> Result<serde_json::Value> {
            let req: Request =
                serde_json::from_str(&line).context("undecodable control request")?;
            let gc = matches!(req, Request::Gc { .. });
            // Progress at most every 1% or so: a line per chunk would flood.
            let last = std::cell::Cell::new(0u64);
            let progress = |done: u64, total: u64| {
                if done.saturating_sub(last.get()) >= (total / 100).max(1) || done == total {
                    last.set(done);
                    let _ = tx.send((done, total));
                }
                !gone.load(std::sync::atomic::Ordering::Relaxed)
            };
            let (data, store, id) = (&ctx.data, &ctx.store, &ctx.server_id);
            let report = run(req, data, store, id, &progress, &ctx.audit)?;
            if gc {
                ctx.metrics.gc(&report);
            }
            Ok(report)
        })
    };
    tokio::pin!(work);
    let reply = loop {
        tokio::select! {
            r = &mut work => break r,
            Some((done, total)) = rx.recv() => {
                write_line(&mut wr, &Answer::Progress([done, total])).await?;
            }
        }
    };
    let last = match reply {
        Ok(Ok(json)) => Answer::Ok(json),
        Ok(Err(e)) => Answer::Error(format!("{e:#}")),
        Err(e) => Answer::Error(e.to_string()),
    };
    write_line(&mut wr, &last).await
}

async fn write_line(wr: &mut (impl AsyncWriteExt + Unpin), answer: &Answer) -> Result<()> {
    let mut line = serde_json::to_vec(answer)?;
    line.push(b'\n');
    wr.write_all(&line).await?;
    Ok(())
}

/// Asks a running server; `None` if no server answers on the socket.
pub fn request(data: &Path, req: &Request) -> Result<Option<serde_json::Value>> {
    request_with_progress(data, req, &|_, _| true)
}

/// [`request`], passing the server's progress reports to `progress`.
pub fn request_with_progress(
    data: &Path,
    req: &Request,
    progress: seed::Progress<'_>,
) -> Result<Option<serde_json::Value>> {
    use std::io::{BufRead, Write};
    let path = socket_path(data);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut lines = std::io::BufReader::new(stream).lines();
    loop {
        let Some(line) = lines.next().transpose()? else {
            bail!("the server closed the control socket without an answer");
        };
        let answer: Answer =
            serde_json::from_str(&line).context("undecodable answer from the control socket")?;
        match answer {
            Answer::Progress([done, total]) => {
                let _ = progress(done, total);
            }
            Answer::Ok(report) => return Ok(Some(report)),
            Answer::Error(why) => bail!("{why}"),
        }
    }
}
