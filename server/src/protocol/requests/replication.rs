//! Replication on the source: container policies, partners, shaping groups,
//! copies and the trail. The target's side is `replica.rs`.

use tern_core::names::UserName;
use tern_core::wire::{CopyId, ErrorKind, Msg, PartnerSettings, Password};

use super::{blocking, msg_name, refuse, Answer, Refusal};
use crate::protocol::handler::SessionHandler;
use crate::service::access::{Action, User};
use crate::service::replication::{CopyAsk, ReplicationError, Replicator};
use std::sync::Arc;

impl From<ReplicationError> for Refusal {
    fn from(e: ReplicationError) -> Self {
        Refusal(e.kind(), e.to_string())
    }
}

/// The cloud tier's policies and status.
pub fn handle_tier(h: &mut SessionHandler, msg: Msg) -> Answer {
    let user = h.user()?.clone();
    let tier = h.tier().clone();
    let reply = match msg {
        Msg::ContainerTier { name, policy } => {
            user.may(Action::SetTierPolicy)?;
            blocking(|| tier.set_policy(&user.scope(), &name, policy))?;
            Msg::Ok
        }
        Msg::TierStatusGet => Msg::TierStatuses {
            list: blocking(|| tier.status(&user.scope()))?,
        },
        Msg::ImageRecall { container, name } => Msg::ImageRecalled {
            stored_bytes: blocking(|| tier.recall(&user.scope(), &container, &name))?,
        },
        other => return refuse(ErrorKind::Protocol, msg_name(&other)),
    };
    Ok(Some(reply))
}

pub async fn handle(h: &mut SessionHandler, msg: Msg) -> Answer {
    let user = h.user()?.clone();
    let repl = h.replicator().clone();
    let reply = match msg {
        Msg::ContainerPromote { name } => {
            user.may(Action::PromoteContainer)?;
            blocking(|| h.store().container_promote(&user.scope(), &name))?;
            tracing::warn!(container = %name, by = %user.name, "replica container promoted: clients may now write into it");
            Msg::Ok
        }
        Msg::ContainerReplicate { name, to } => {
            user.may(Action::SetReplicationPolicy)?;
            blocking(|| repl.set_policy(&user.scope(), &name, to))?;
            Msg::Ok
        }
        Msg::PartnerAdd {
            name,
            addresses,
            fingerprint,
            user: login,
            password,
            settings,
        } => {
            user.may(Action::ChangePartners("add"))?;
            let partner = NewPartner {
                name,
                addresses,
                fingerprint,
                login,
                password,
                settings,
            };
            partner_add(repl, partner).await?;
            Msg::Ok
        }
        Msg::PartnerSet {
            name,
            addresses,
            connections,
            shaping,
        } => {
            user.may(Action::ChangePartners("change"))?;
            blocking(|| repl.partner_set(&name, addresses, connections, shaping))?;
            Msg::Ok
        }
        Msg::PartnerRemove { name } => {
            user.may(Action::ChangePartners("remove"))?;
            blocking(|| repl.partner_remove(&name))?;
            Msg::Ok
        }
        m @ (Msg::ShapingSet { .. } | Msg::ShapingList | Msg::ShapingRemove { .. }) => {
            shaping(&user, &repl, m)?
        }
        m => copies(&user, repl, m).await?,
    };
    Ok(Some(reply))
}

/// A partner as `PartnerAdd` names it.
struct NewPartner {
    name: String,
    addresses: Vec<String>,
    fingerprint: String,
    login: UserName,
    password: Password,
    settings: PartnerSettings,
}

/// Adds a partner after connecting to it: the check connects out through
/// a client with its own runtime, on a thread of its own, never on this
/// session's workers.
async fn partner_add(repl: Arc<Replicator>, p: NewPartner) -> Result<(), Refusal> {
    off_workers(move || {
        repl.partner_add(
            &p.name,
            p.addresses,
            p.fingerprint,
            p.login,
            p.password.expose().to_string(),
            p.settings,
        )
    })
    .await
}

fn shaping(user: &User, repl: &Replicator, msg: Msg) -> Result<Msg, Refusal> {
    Ok(match msg {
        Msg::ShapingSet { name, settings } => {
            user.may(Action::Shaping("change"))?;
            blocking(|| repl.shaper.set(&name, settings))?;
            Msg::Ok
        }
        Msg::ShapingList => {
            user.may(Action::Shaping("list"))?;
            Msg::ShapingGroups {
                list: blocking(|| repl.shaper.list())?,
            }
        }
        Msg::ShapingRemove { name } => {
            user.may(Action::Shaping("remove"))?;
            blocking(|| repl.shaper.remove(&name))?;
            Msg::Ok
        }
        other => return Err(not_ours(&other)),
    })
}

/// Copies of images in the user's storage groups, and the trail.
async fn copies(user: &User, repl: Arc<Replicator>, msg: Msg) -> Result<Msg, Refusal> {
    let scope = user.scope();
    Ok(match msg {
        Msg::CopyStart {
            container,
            name,
            partner,
            to_container,
            to_name,
        } => {
            let ask = CopyAsk {
                container,
                image: name,
                partner,
                to_container,
                to_name,
            };
            Msg::CopyStarted {
                id: blocking(|| repl.copy_start(&scope, &user.name, ask))?,
            }
        }
        Msg::CopyStatusGet { id } => Msg::Copies {
            list: vec![blocking(|| repl.status(&scope, id))?],
            next: None,
        },
        Msg::CopyCancel { id } => {
            blocking(|| repl.cancel(&scope, id))?;
            Msg::Ok
        }
        Msg::CopyAbort { id } => {
            copy_abort(user, repl, id).await?;
            Msg::Ok
        }
        other => return Err(not_ours(&other)),
    })
}

/// Aborts a copy; it may connect to the partner, so off the async workers.
async fn copy_abort(user: &User, repl: Arc<Replicator>, id: CopyId) -> Result<(), Refusal> {
    let drop_replicas = user.may(Action::DropPartialReplicas).is_ok();
    let scope = user.scope();
    off_workers(move || repl.abort(&scope, drop_replicas, id)).await
}

/// Runs `f` on a thread of its own and waits for it without holding a
/// worker of the session runtime.
async fn off_workers<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReplicationError> + Send + 'static,
) -> Result<T, Refusal> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.await {
        Ok(outcome) => Ok(outcome?),
        Err(_) => refuse(ErrorKind::Internal, "the request's thread stopped"),
    }
}

fn not_ours(msg: &Msg) -> Refusal {
    Refusal(
        ErrorKind::Protocol,
        format!("not a replication request: {}", msg_name(msg)),
    )
}
