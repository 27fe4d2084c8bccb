//! `tern audit`: the server's audit log, for admins.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;
use tern_agent::WriteMode;
use tern_core::time::parse_rfc3339;

use crate::{connect, Cli};

#[derive(Args)]
pub struct AuditArgs {
    /// Only acts at or after this time: RFC 3339 (2026-12-05T07:00:00Z), a
    /// date (2026-12-05), unix seconds, or an age (30m, 24h, 7d).
    #[arg(long)]
    since: Option<String>,
}

pub fn audit(cli: &Cli, args: &AuditArgs) -> Result<()> {
    let since = match &args.since {
        Some(s) => parse_since(s, now())?,
        None => 0,
    };
    let client = connect(cli, WriteMode::Dedup)?;
    let lines = client.audit(since).context("reading the audit log")?;
    if cli.json {
        let acts: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.clone())))
            .collect();
        println!("{}", Value::Array(acts));
        return Ok(());
    }
    for line in &lines {
        println!("{}", human(line));
    }
    Ok(())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `--since`: a time, a date, unix seconds, or an age before `now`.
fn parse_since(s: &str, now: u64) -> Result<u64> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    let age = [('m', 60), ('h', 3600), ('d', 86_400)]
        .iter()
        .find_map(|&(suffix, unit)| Some((s.strip_suffix(suffix)?.parse::<u64>().ok()?, unit)));
    match age {
        Some((n, unit)) => Ok(now.saturating_sub(n.saturating_mul(unit))),
        None => bail!(
            "--since {s:?}: give a time (2026-12-05T07:00:00Z), a date (2026-12-05), \
             unix seconds, or an age (30m, 24h, 7d)"
        ),
    }
}

/// One act as a line: time, who (and from where), the act, its outcome,
/// then its other fields as key=value.
fn human(line: &str) -> String {
    let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let mut take = |k: &str| o.remove(k).unwrap_or(Value::Null);
    let text = |v: Value| match v {
        Value::String(s) => s,
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let time = text(take("time"));
    let by = text(take("by"));
    let address = take("address");
    let act = text(take("act"));
    let ok = take("ok") == Value::Bool(true);
    let error = take("error");
    take("unix");
    let who = match address {
        Value::String(a) => format!("{by}@{a}"),
        _ => by,
    };
    let mut out = format!(
        "{time}  {who:<28} {act:<20} {}",
        if ok { "ok" } else { "REFUSED" }
    );
    if let Value::String(why) = error {
        out.push_str(&format!(" ({why})"));
    }
    for (k, v) in o {
        if !v.is_null() {
            out.push_str(&format!("  {k}={}", text(v)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_dates_seconds_and_ages() {
        let now = 1_800_000_000;
        assert_eq!(parse_since("1700000000", now).unwrap(), 1_700_000_000);
        assert_eq!(
            parse_since("2026-11-23T12:15:21Z", now).unwrap(),
            1_795_436_121
        );
        assert_eq!(parse_since("2026-11-23", now).unwrap(), 1_795_392_000);
        assert_eq!(parse_since("30m", now).unwrap(), now - 1800);
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400);
        for bad in ["", "yesterday", "5w", "h", "é"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_act_reads_as_one_line() {
        let line = r#"{"time":"2026-12-05T07:00:00Z","unix":1,"act":"user_add","by":"admin","address":"127.0.0.1:5000","ok":false,"error":"exists","user":"bob","admin":false}"#;
        assert_eq!(
            human(line),
            "2026-12-05T07:00:00Z  admin@127.0.0.1:5000         user_add             REFUSED (exists)  \
             admin=false  user=bob"
        );
    }
}
