//! The types of the cloud tier's messages (protocol version 9): a
//! container's tier policy and what the tier mover has done with it.
//! `docs/protocol.md` describes them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::ContainerName;

/// Patterns and prefixes a policy may name, each kind.
pub const MAX_TIER_PATTERNS: usize = 64;
/// The longest pattern or prefix, in bytes.
pub const MAX_TIER_PATTERN_LEN: usize = 256;

/// What a tier policy does with the images it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TierMode {
    /// A copy of each selected image in the cloud container.
    Copy,
    /// Once an image is `local_days` old (and selected), a copy of it,
    /// then the local image is held there: it stays listed, its reads go
    /// to the copy, and its chunks here are left to GC.
    Hold,
    /// A copy of each selected image, and the image held there once it is
    /// `local_days` old.
    CopyHold,
}

impl TierMode {
    /// The word for it on a terminal.
    pub fn as_str(self) -> &'static str {
        match self {
            TierMode::Copy => "copy",
            TierMode::Hold => "hold",
            TierMode::CopyHold => "copy+hold",
        }
    }

    /// True if images are held in the cloud after `local_days`.
    pub fn holds(self) -> bool {
        matches!(self, TierMode::Hold | TierMode::CopyHold)
    }
}

impl FromStr for TierMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "copy" => Ok(TierMode::Copy),
            "hold" => Ok(TierMode::Hold),
            "copy+hold" => Ok(TierMode::CopyHold),
            _ => Err(format!("tier mode {s:?}: copy, hold or copy+hold")),
        }
    }
}

/// A container's link to a container in a cloud storage group, and which
/// of its images go there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierPolicy {
    /// The cloud container (`GROUP/NAME`; made on first use, as a replica
    /// container, in the cloud storage group).
    pub to: ContainerName,
    /// What happens to a selected image.
    pub mode: TierMode,
    /// Seconds an image must have been committed (and its properties
    /// unchanged) before it is selected.
    pub idle_secs: u64,
    /// Glob patterns (`*`, `?`) an image's name must match, one of them;
    /// none: every name.
    pub matches: Vec<String>,
    /// Glob patterns no selected image's name matches.
    pub excludes: Vec<String>,
    /// Name prefixes, one of which a selected image's name starts with;
    /// none: every name.
    pub prefixes: Vec<String>,
    /// The shaping group its copies draw from, if any.
    #[serde(default)]
    pub shaping: Option<String>,
    /// (`Hold`, `CopyHold`) Days after its commit an image stays local.
    #[serde(default)]
    pub local_days: u32,
}

impl TierPolicy {
    /// Checks the patterns' counts and lengths (what a server keeps).
    pub fn validate(&self) -> Result<(), String> {
        if self.local_days > 36_500 {
            return Err(format!("--local-days {}: at most 36500", self.local_days));
        }
        if self.local_days > 0 && !self.mode.holds() {
            return Err("--local-days is for --mode hold or copy+hold".into());
        }
        for (what, list) in [
            ("--match", &self.matches),
            ("--exclude", &self.excludes),
            ("--prefix", &self.prefixes),
        ] {
            if list.len() > MAX_TIER_PATTERNS {
                return Err(format!(
                    "{} {what} patterns; at most {MAX_TIER_PATTERNS}",
                    list.len()
                ));
            }
            if let Some(p) = list
                .iter()
                .find(|p| p.is_empty() || p.len() > MAX_TIER_PATTERN_LEN)
            {
                return Err(format!("{what} {p:?}: 1 to {MAX_TIER_PATTERN_LEN} bytes"));
            }
        }
        Ok(())
    }

    /// True if an image of this name is selected by the policy's name
    /// criteria (the idle time aside).
    pub fn selects(&self, name: &str) -> bool {
        (self.matches.is_empty() || self.matches.iter().any(|p| glob_match(p, name)))
            && !self.excludes.iter().any(|p| glob_match(p, name))
            && (self.prefixes.is_empty() || self.prefixes.iter().any(|p| name.starts_with(p)))
    }
}

/// Shell-style matching of a whole name: `*` any run of characters
/// (`/` included), `?` one character, everything else itself. Linear in
/// the name for each star (the usual backtrack to the last star).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// One tiered container as `TierStatusGet` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierStatus {
    /// The container.
    pub container: ContainerName,
    /// Its policy.
    pub policy: TierPolicy,
    /// Images its policy selects that have no copy yet (waiting for their
    /// idle time or the next run).
    pub pending: u64,
    /// Images whose copy is queued or running.
    pub copying: u64,
    /// Images with a committed copy in the cloud container (held ones too).
    pub copied: u64,
    /// Images held in the cloud tier (read from their copy).
    #[serde(default)]
    pub held: u64,
    /// Images whose copy failed for good or was cancelled (tried again at
    /// the next run only if it failed).
    pub failed: u64,
    /// Sum of the sizes of the copied images.
    pub copied_bytes: u64,
    /// Chunk bytes the copies sent to the cloud group (what it lacked).
    pub sent_bytes: u64,
    /// Seconds since the Unix epoch of the tier mover's next run.
    pub next_run: u64,
}

impl fmt::Display for TierPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to {}", self.mode.as_str(), self.to)?;
        if self.idle_secs > 0 {
            write!(f, " after {} s idle", self.idle_secs)?;
        }
        for p in &self.matches {
            write!(f, " match {p}")?;
        }
        for p in &self.excludes {
            write!(f, " exclude {p}")?;
        }
        for p in &self.prefixes {
            write!(f, " prefix {p}")?;
        }
        if let Some(s) = &self.shaping {
            write!(f, " shaping {s}")?;
        }
        if self.mode.holds() {
            write!(f, ", held there after {} days", self.local_days)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("*.full", "db/mon.full"));
        assert!(!glob_match("*.full", "db/mon.full.1"));
        assert!(glob_match("db-??", "db-01"));
        assert!(!glob_match("db-??", "db-1"));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
        assert!(!glob_match("*a*b", "xxbxxa"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn a_policy_selects_by_match_exclude_and_prefix() {
        let p = TierPolicy {
            to: ContainerName::new("cloud/c").unwrap(),
            mode: TierMode::Copy,
            idle_secs: 0,
            matches: vec!["*.full".into()],
            excludes: vec!["*tmp*".into()],
            prefixes: vec!["db/".into(), "fs/".into()],
            shaping: None,
            local_days: 0,
        };
        assert!(p.selects("db/mon.full"));
        assert!(!p.selects("db/mon.incr"));
        assert!(!p.selects("db/tmp.full"));
        assert!(!p.selects("vm/mon.full"));
        assert!(p.validate().is_ok());
        let mut long = p.clone();
        long.prefixes = vec![String::new()];
        assert!(long.validate().is_err());
    }
}
