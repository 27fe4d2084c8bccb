//! The audit log: every security-relevant act (logins, user and permission
//! changes, deletes, partner and shaping changes, GC, repairs, seed imports)
//! as one JSON line in `DATA/audit.log`, mode 0600, appended and synced
//! before the act is answered. Past [`ROTATE_BYTES`] the file becomes
//! `audit.log.N` (N one more than the last such file) and a new one begins;
//! rotated files are kept. No secret is ever written: callers pass the
//! fields of an act, never a request (see `protocol/requests/audited.rs`).
//!
//! Lines are read back oldest first, in pages: a line's place is the file's
//! number (the current file's is one more than the last rotated one's, the
//! number it gets when rotated) and its line number, so a cursor stays
//! valid across a rotation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::store::records::now_unix;

/// The current file, in the data directory.
pub const AUDIT_FILE: &str = "audit.log";
/// The size past which the current file is rotated.
pub const ROTATE_BYTES: u64 = 16 << 20;

/// Who acted.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// A session's user (none before a login succeeds), from an address.
    Session {
        user: Option<&'a str>,
        address: SocketAddr,
    },
    /// A command on the server's machine: `ternd gc`, `ternd user`, the
    /// control socket.
    Local(&'a str),
}

/// An act's result: done, or refused or failed saying why.
pub type Outcome<'a> = Result<(), &'a str>;

/// The audit log of one data directory.
pub struct AuditLog {
    dir: PathBuf,
    rotate_bytes: u64,
    /// The current file, opened at the first record.
    file: Mutex<Option<File>>,
}

impl AuditLog {
    pub fn new(dir: &Path) -> Self {
        Self::rotating_at(dir, ROTATE_BYTES)
    }

    /// A log rotated past `bytes` (tests rotate small).
    pub fn rotating_at(dir: &Path, bytes: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            rotate_bytes: bytes,
            file: Mutex::new(None),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(AUDIT_FILE)
    }

    /// Appends the act and syncs it. A log that cannot be written does not
    /// stop the act (a full disk must not lock every admin out): it is an
    /// error in ternd's log, naming the act.
    pub fn record(&self, actor: Actor<'_>, act: &str, outcome: Outcome<'_>, details: Value) {
        let line = entry(now_unix(), actor, act, outcome, details);
        if let Err(e) = self.append(&line) {
            tracing::error!(
                "audit log {}: {e}; not recorded: {line}",
                self.path().display()
            );
        }
    }

    fn append(&self, line: &str) -> io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let len = match file.as_ref() {
            Some(f) => f.metadata()?.len(),
            None => fs::metadata(self.path()).map_or(0, |m| m.len()),
        };
        if len > 0 && len + line.len() as u64 > self.rotate_bytes {
            *file = None;
            let next = rotated(&self.dir)?.last().map_or(1, |(n, _)| n + 1);
            fs::rename(self.path(), self.dir.join(format!("{AUDIT_FILE}.{next}")))?;
            File::open(&self.dir)?.sync_all()?;
        }
        if file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(self.path())?;
            // A file made by hand or restored from elsewhere is made private too.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            *file = Some(f);
        }
        let Some(f) = file.as_mut() else {
            unreachable!("opened just above");
        };
        f.write_all(line.as_bytes())?;
        f.sync_data()
    }

    /// Lines whose time is at or after `since` (unix seconds), oldest
    /// first, after the line `after` names (a cursor this returned), up to
    /// `budget` bytes (at least one line); and the cursor of the next page
    /// if more remain.
    pub fn read(
        &self,
        since: u64,
        after: Option<&str>,
        budget: usize,
    ) -> io::Result<(Vec<String>, Option<String>)> {
        let after = after.map(parse_cursor).transpose()?;
        let mut files = rotated(&self.dir)?;
        let current = files.last().map_or(1, |(n, _)| n + 1);
        files.push((current, self.path()));
        let (mut lines, mut used, mut last) = (Vec::new(), 0usize, None);
        for (number, path) in files {
            if after.is_some_and(|(f, _)| number < f) {
                continue;
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for (i, line) in BufReader::new(file).lines().enumerate() {
                let line = line?;
                let here = (number, i as u64);
                if after.is_some_and(|a| here <= a) || !at_or_after(&line, since) {
                    continue;
                }
                if !lines.is_empty() && used + line.len() > budget {
                    return Ok((lines, last.map(cursor)));
                }
                used += line.len();
                lines.push(line);
                last = Some(here);
            }
        }
        Ok((lines, None))
    }
}

/// One line: time, act, who, the outcome, then the act's own fields.
fn entry(unix: u64, actor: Actor<'_>, act: &str, outcome: Outcome<'_>, details: Value) -> String {
    let mut o = Map::new();
    o.insert("time".into(), tern_core::time::rfc3339(unix).into());
    o.insert("unix".into(), unix.into());
    o.insert("act".into(), act.into());
    match actor {
        Actor::Session { user, address } => {
            o.insert("by".into(), user.map_or(Value::Null, Value::from));
            o.insert("address".into(), address.to_string().into());
        }
        Actor::Local(command) => {
            o.insert("by".into(), format!("local: {command}").into());
        }
    }
    o.insert("ok".into(), outcome.is_ok().into());
    if let Err(why) = outcome {
        o.insert("error".into(), why.into());
    }
    if let Value::Object(fields) = details {
        for (k, v) in fields {
            o.entry(k).or_insert(v);
        }
    }
    let mut line = Value::Object(o).to_string();
    line.push('\n');
    line
}

/// True if the line's time is at or after `since`; a line without one
/// (damaged by hand) is shown rather than hidden.
fn at_or_after(line: &str, since: u64) -> bool {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("unix").and_then(Value::as_u64))
        .is_none_or(|t| t >= since)
}

/// The rotated files, `audit.log.N`, by N.
fn rotated(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let prefix = format!("{AUDIT_FILE}.");
    let mut files = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = number {
            files.push((n, e.path()));
        }
    }
    files.sort();
    Ok(files)
}

fn cursor((file, line): (u64, u64)) -> String {
    format!("{file:x}:{line:x}")
}

fn parse_cursor(s: &str) -> io::Result<(u64, u64)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "an audit cursor not sent here");
    let (f, l) = s.split_once(':').ok_or_else(bad)?;
    let f = u64::from_str_radix(f, 16).map_err(|_| bad())?;
    let l = u64::from_str_radix(l, 16).map_err(|_| bad())?;
    Ok((f, l))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn acts(log: &AuditLog, since: u64, budget: usize) -> Vec<String> {
        let (mut all, mut after) = (Vec::new(), None);
        loop {
            let (lines, next) = log.read(since, after.as_deref(), budget).unwrap();
            assert!(!lines.is_empty() || next.is_none());
            all.extend(lines.iter().map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["act"].as_str().unwrap().to_string()
            }));
            match next {
                Some(n) => after = Some(n),
                None => return all,
            }
        }
    }

    #[test]
    fn lines_are_private_rotated_kept_and_read_back_in_order_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::rotating_at(dir.path(), 600);
        let who = Actor::Session {
            user: Some("admin"),
            address: "192.0.2.7:4000".parse().unwrap(),
        };
        for i in 0..20 {
            log.record(who, &format!("act{i}"), Ok(()), json!({"name": "x"}));
        }
        log.record(Actor::Local("ternd gc"), "gc", Err("stopped"), json!({}));
        let mode = fs::metadata(dir.path().join(AUDIT_FILE))
            .unwrap()
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
        assert!(
            rotated(dir.path()).unwrap().len() >= 3,
            "rotated past 600 bytes"
        );
        let want: Vec<String> = (0..20)
            .map(|i| format!("act{i}"))
            .chain(["gc".into()])
            .collect();
        assert_eq!(acts(&log, 0, 1 << 20), want);
        assert_eq!(acts(&log, 0, 1), want, "one line a page");
        assert!(acts(&log, u64::MAX, 1 << 20).is_empty());

        let (lines, _) = log.read(0, None, 1 << 20).unwrap();
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["by"], "admin");
        assert_eq!(first["address"], "192.0.2.7:4000");
        assert_eq!(first["ok"], true);
        let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(
            (last["by"].as_str(), last["error"].as_str()),
            (Some("local: ternd gc"), Some("stopped"))
        );
        assert!(log.read(0, Some("not a cursor"), 10).is_err());
    }

    #[test]
    fn a_cursor_stays_valid_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::rotating_at(dir.path(), 400);
        let who = Actor::Local("test");
        for i in 0..3 {
            log.record(who, &format!("a{i}"), Ok(()), json!({}));
        }
        let (first, next) = log.read(0, None, 1).unwrap();
        assert_eq!(first.len(), 1);
        // More acts rotate the file the cursor points into.
        for i in 3..10 {
            log.record(who, &format!("a{i}"), Ok(()), json!({}));
        }
        let (rest, _) = log.read(0, next.as_deref(), 1 << 20).unwrap();
        let names: Vec<String> = rest
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["act"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names, (1..10).map(|i| format!("a{i}")).collect::<Vec<_>>());
    }
}
