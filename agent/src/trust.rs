//! Trust on first use: the fingerprints of servers this user has accepted.
//!
//! Stored in `known_servers` in the user's config directory
//! (`$TERN_CONFIG_DIR`, else `$XDG_CONFIG_HOME/tern`, else `~/.config/tern`), one
//! `host:port sha256:...` per line.

use std::path::PathBuf;

use tern_core::tls::Fingerprint;

pub fn config_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TERN_CONFIG_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(d).join("tern"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config").join("tern"))
}

fn known_servers_path() -> Option<PathBuf> {
    config_dir().map(|d| d.join("known_servers"))
}

/// The fingerprint remembered for `server`, if any.
pub fn remembered(server: &str) -> Option<Fingerprint> {
    let text = std::fs::read_to_string(known_servers_path()?).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next()? == server).then(|| Fingerprint::parse(parts.next()?))?
    })
}

/// Remembers `server`'s fingerprint.
pub fn remember(server: &str, fp: Fingerprint) -> std::io::Result<()> {
    let Some(path) = known_servers_path() else {
        return Ok(());
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(&format!("{server} {fp}\n"));
    std::fs::write(&path, text)
}
