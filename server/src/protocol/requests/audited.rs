//! Which requests the audit log records, and with which fields: the
//! security-relevant acts, named by what they act on. Fields are picked one
//! by one, so a password (`Login`, `UserAdd`, `UserPasswd`, `PartnerAdd`)
//! never reaches the log.

use serde_json::{json, Value};
use tern_core::wire::Msg;

/// The act a request is and its fields, if the audit log records it.
pub fn act_of(msg: &Msg) -> Option<(&'static str, Value)> {
    let names = |list: &Option<Vec<tern_core::names::GroupName>>| {
        list.as_ref()
            .map(|l| l.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    Some(match msg {
        Msg::Login { user, .. } => ("login", json!({ "user": user.to_string() })),
        Msg::UserAdd { name, admin, .. } => (
            "user_add",
            json!({ "user": name.to_string(), "admin": admin }),
        ),
        Msg::UserPasswd { name, .. } => ("user_passwd", json!({ "user": name.to_string() })),
        Msg::UserSet {
            name,
            groups,
            admin,
            replicate_into,
            shaping,
        } => (
            "user_set",
            json!({
                "user": name.to_string(),
                "groups": names(groups),
                "admin": admin,
                "replicate_into": names(replicate_into),
                "shaping": shaping,
            }),
        ),
        Msg::ContainerRemove { name } => {
            ("container_remove", json!({ "container": name.to_string() }))
        }
        Msg::ImageRemove {
            container,
            name,
            bypass_lock,
            keep_cloud,
        } => (
            "image_remove",
            json!({ "container": container.to_string(), "image": name.to_string(),
                "bypass_lock": bypass_lock, "keep_cloud": keep_cloud }),
        ),
        Msg::ContainerLock { name, lock } => (
            "container_lock",
            json!({ "container": name.to_string(), "lock": lock }),
        ),
        Msg::ContainerTier { name, policy } => (
            "container_tier",
            json!({ "container": name.to_string(), "policy": policy }),
        ),
        Msg::ContainerPromote { name } => (
            "container_promote",
            json!({ "container": name.to_string() }),
        ),
        Msg::ContainerReplicate { name, to } => (
            "container_replicate",
            json!({
                "container": name.to_string(),
                "to": to.as_ref().map(|(partner, c)| format!("{partner}/{c}")),
            }),
        ),
        Msg::PartnerAdd {
            name,
            addresses,
            fingerprint,
            user,
            settings,
            ..
        } => (
            "partner_add",
            json!({
                "partner": name,
                "addresses": addresses,
                "fingerprint": fingerprint,
                "user": user.to_string(),
                "connections": settings.connections,
                "shaping": settings.shaping,
            }),
        ),
        Msg::PartnerSet {
            name,
            addresses,
            connections,
            shaping,
        } => (
            "partner_set",
            json!({
                "partner": name,
                "addresses": addresses,
                "connections": connections,
                "shaping": shaping,
            }),
        ),
        Msg::PartnerRemove { name } => ("partner_remove", json!({ "partner": name })),
        Msg::ShapingSet { name, settings } => (
            "shaping_set",
            json!({ "group": name, "settings": settings }),
        ),
        Msg::ShapingRemove { name } => ("shaping_remove", json!({ "group": name })),
        Msg::GroupAdd { name, settings } => (
            "group_add",
            json!({
                "group": name,
                "path": settings.path,
                // Where, never the keys or the passphrase.
                "s3": settings.s3.as_ref().map(|s| format!("{} {}", s.url, s.prefix)),
            }),
        ),
        Msg::GroupRemove { name } => ("group_remove", json!({ "group": name })),
        _ => return None,
    })
}
