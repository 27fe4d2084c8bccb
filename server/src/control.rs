//! The control socket: `ternd gc` and `ternd fsck` reach a running server
//! through `DATA/ternd.sock`, a Unix socket only the data directory's owner can
//! open. One request line (`gc` or `fsck`), one JSON answer line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::store::Store;

pub fn socket_path(data: &Path) -> PathBuf {
    data.join("ternd.sock")
}

/// Serves control requests until the process ends.
pub async fn serve(data: &Path, store: Arc<Store>) -> Result<()> {
    let path = socket_path(data);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, store).await {
                tracing::warn!("control request failed: {e:#}");
            }
        });
    }
}

async fn answer(stream: UnixStream, store: Arc<Store>) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    BufReader::new(rd.take(64)).read_line(&mut line).await?;
    let reply = match line.trim() {
        "gc" => {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.gc().map(|r| serde_json::to_string(&r))).await?
        }
        "fsck" => {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.fsck().map(|r| serde_json::to_string(&r))).await?
        }
        other => bail!("unknown control request {other:?}"),
    };
    let text = match reply {
        Ok(Ok(json)) => format!("{{\"ok\":{json}}}\n"),
        Ok(Err(e)) => format!("{{\"error\":{}}}\n", serde_json::to_string(&e.to_string())?),
        Err(e) => format!("{{\"error\":{}}}\n", serde_json::to_string(&e.to_string())?),
    };
    wr.write_all(text.as_bytes()).await?;
    Ok(())
}

/// Asks a running server; `None` if no server answers on the socket.
pub fn request(data: &Path, what: &str) -> Result<Option<serde_json::Value>> {
    use std::io::{BufRead, Write};
    let path = socket_path(data);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    stream.write_all(format!("{what}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).context("undecodable answer from the control socket")?;
    if let Some(e) = v.get("error") {
        bail!("{}", e.as_str().unwrap_or("unknown error"));
    }
    Ok(v.get("ok").cloned())
}
