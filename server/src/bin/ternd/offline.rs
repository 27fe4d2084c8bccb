//! The commands that work on a data directory: gc, fsck (and --repair), user;
//! through the running server where one is up, else on the stopped store.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{bail, Result};
use tern_core::names::{GroupName, UserName};
use tern_server::protocol::control;
use tern_server::service::audit::{Actor, AuditLog};
use tern_server::service::users::Users;
use tern_server::store::{Store, StoreError, DEFAULT_GROUP};

use super::UserCmd;

/// A `--group` argument, checked.
pub(crate) fn group_arg(group: Option<String>) -> Result<Option<GroupName>> {
    Ok(group.map(GroupName::new).transpose()?)
}

/// `ternd gc`: through the running server if there is one.
pub(crate) fn gc(data: &Path, json: bool, group: Option<GroupName>) -> Result<()> {
    let req = control::Request::Gc { group };
    let report = match control::request(data, &req)? {
        Some(v) => v,
        None => control::run(
            req,
            data,
            &open_store(data)?,
            "",
            &|_, _| true,
            &AuditLog::new(data),
        )?,
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
        if report["objects_deleted"].as_u64().unwrap_or(0) > 0 {
            println!(
                "deleted {} objects of cloud groups whose grace period was over",
                report["objects_deleted"]
            );
        }
        if report["orphans_deleted"].as_u64().unwrap_or(0) > 0 {
            println!(
                "deleted {} objects of cloud groups that no record named (orphans of \
                 interrupted uploads)",
                report["orphans_deleted"]
            );
        }
        if let Some(why) = report["stopped"].as_str() {
            println!("gc stopped early: {why}");
        }
    }
    Ok(())
}

/// `ternd fsck`: exits 1 when anything is damaged. A stopped store is opened
/// read-only: not a byte of it changes.
pub(crate) fn fsck(data: &Path, json: bool, group: Option<GroupName>, full: bool) -> Result<()> {
    let req = control::Request::Fsck {
        group: group.clone(),
        full,
    };
    let report = match control::request(data, &req)? {
        Some(v) => v,
        None => {
            require_data_dir(data)?;
            let store = Store::open_read_only(data, "opened by fsck").map_err(in_use)?;
            serde_json::to_value(store.fsck_with(group.as_ref(), full)?)?
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
pub(crate) fn fsck_repair(data: &Path, json: bool) -> Result<()> {
    require_data_dir(data)?;
    let store = Store::open_for_repair(data).map_err(in_use)?;
    let before = serde_json::to_value(store.fsck(None)?)?;
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
        let repaired = store.repair();
        let why = repaired.as_ref().err().map(|e| format!("{e:#}"));
        let details = match &repaired {
            Ok(r) => serde_json::json!({ "report": r }),
            Err(_) => serde_json::json!({}),
        };
        AuditLog::new(data).record(
            Actor::Local("ternd fsck --repair"),
            "fsck_repair",
            why.as_deref().map_or(Ok(()), Err),
            details,
        );
        let report = repaired?;
        if !json {
            for c in &report.changes {
                println!("repaired: {c}");
            }
        }
        serde_json::to_value(report)?
    };
    let after = serde_json::to_value(store.fsck(None)?)?;
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
    let table_only = report["packs_table_only"].as_u64().unwrap_or(0);
    if table_only > 0 || report["bucket_requests"].as_u64().unwrap_or(0) > 0 {
        println!(
            "cloud groups: {table_only} packs checked by their table only (--full reads them \
             whole); {} requests to buckets",
            report["bucket_requests"]
        );
    }
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
pub(crate) fn user(cmd: UserCmd) -> Result<()> {
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
            let groups = group_names(groups)?;
            let details = serde_json::json!({"user": name.to_string(), "admin": admin,
                "groups": groups.iter().map(ToString::to_string).collect::<Vec<_>>()});
            let added = Users::new(&open_store(&data.data)?).add(&name, &password, admin, groups);
            audit_local(&data.data, "user_add", &added, details);
            added?;
            println!("user {name} added");
        }
        UserCmd::Passwd { data, name } => {
            let name = UserName::new(name)?;
            let password = read_password()?;
            let set = Users::new(&open_store(&data.data)?).passwd(&name, &password);
            let details = serde_json::json!({ "user": name.to_string() });
            audit_local(&data.data, "user_passwd", &set, details);
            set?;
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
            let details = serde_json::json!({"user": name.to_string(), "admin": admin,
                "groups": groups.as_ref().map(|g| g.iter().map(ToString::to_string).collect::<Vec<_>>())});
            let set = Users::new(&open_store(&data.data)?)
                .update_rights(&name, groups, admin, None, None);
            audit_local(&data.data, "user_set", &set, details);
            set?;
            println!("user {name} changed");
        }
    }
    Ok(())
}

/// Records a `ternd user` act in the audit log, done or failed.
fn audit_local<T>(
    data: &Path,
    act: &str,
    outcome: &Result<T, StoreError>,
    details: serde_json::Value,
) {
    let why = outcome.as_ref().err().map(ToString::to_string);
    let command = format!("ternd {}", act.replace('_', " "));
    AuditLog::new(data).record(
        Actor::Local(&command),
        act,
        why.as_deref().map_or(Ok(()), Err),
        details,
    );
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

pub(crate) fn open_store(data: &Path) -> Result<Store> {
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
