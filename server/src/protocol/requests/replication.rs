//! Replication: partners and copies (this server as the source), replicas
//! and import events (this server as the target).

use tern_core::wire::{ErrorKind, Feature, Msg};

use super::{blocking, msg_name, refuse, Answer, Refusal};
use crate::protocol::handler::SessionHandler;
use crate::service::access::Action;
use crate::service::replication::ReplicationError;
use crate::store::{NewReplica, ReplicaStart};

impl From<ReplicationError> for Refusal {
    fn from(e: ReplicationError) -> Self {
        Refusal(e.kind(), e.to_string())
    }
}

pub async fn handle(h: &mut SessionHandler, msg: Msg) -> Answer {
    let user = h.user()?.clone();
    let store = h.store.clone();
    let repl = h.sessions.replicator.clone();
    let reply = match msg {
        Msg::ContainerPromote { name } => {
            user.may(Action::PromoteContainer)?;
            blocking(|| store.container_promote(&user.scope(), &name))?;
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
            user: partner_user,
            password,
            settings,
        } => {
            user.may(Action::ChangePartners("add"))?;
            // The check connects out through a client with its own runtime:
            // on a thread of its own, never on this session's workers.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let outcome = repl.partner_add(
                    &name,
                    addresses,
                    fingerprint,
                    partner_user,
                    password.expose().to_string(),
                    settings,
                );
                let _ = tx.send(outcome);
            });
            match rx.await {
                Ok(outcome) => outcome?,
                Err(_) => return refuse(ErrorKind::Internal, "the partner check stopped"),
            }
            Msg::Ok
        }
        Msg::PartnerList => {
            user.may(Action::ListPartners)?;
            Msg::Partners {
                list: blocking(|| repl.partners())?,
            }
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
        Msg::PartnerRemove { name } => {
            user.may(Action::ChangePartners("remove"))?;
            blocking(|| repl.partner_remove(&name))?;
            Msg::Ok
        }
        Msg::CopyStart {
            container,
            name,
            partner,
            to_container,
            to_name,
        } => Msg::CopyStarted {
            id: blocking(|| {
                repl.copy_start(
                    &user.scope(),
                    &container,
                    &name,
                    &partner,
                    to_container,
                    to_name,
                )
            })?,
        },
        Msg::CopyStatusGet { id } => Msg::Copies {
            list: vec![blocking(|| repl.status(&user.scope(), id))?],
        },
        Msg::CopyList => Msg::Copies {
            list: blocking(|| repl.list(&user.scope()))?,
        },
        Msg::CopyCancel { id } => {
            blocking(|| repl.cancel(&user.scope(), id))?;
            Msg::Ok
        }
        Msg::CopyAbort { id } => {
            // It may connect to the partner: off the async workers.
            let drop_replicas = user.may(Action::DropPartialReplicas).is_ok();
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = tx.send(repl.abort(&user.scope(), drop_replicas, id));
            });
            match rx.await {
                Ok(outcome) => outcome?,
                Err(_) => return refuse(ErrorKind::Internal, "the abort stopped"),
            }
            Msg::Ok
        }
        Msg::TrailGet { max } => Msg::Trail {
            list: blocking(|| repl.history(max))?,
        },
        Msg::ReplicaCreate {
            container,
            name,
            props,
            origin,
            chunking,
            zstd_level,
        } => {
            let replica = NewReplica {
                container,
                name,
                props,
                origin,
                chunking,
                zstd_level,
            };
            let resume = Feature::WanControls.in_version(h.version);
            let scope = user.replica_scope();
            let group = blocking(|| store.container_group(&scope, &replica.container))?;
            user.may(Action::ReplicateInto(&group))?;
            let start = blocking(|| store.replica_begin(&scope, &user.name, replica, resume))?;
            match start {
                ReplicaStart::Committed(info) => Msg::ImageCommitted {
                    info,
                    stats: Default::default(),
                },
                ReplicaStart::Write(w) => {
                    // The replica container's chunking is the source's (checked).
                    let handle = h.new_handle();
                    h.writers.insert(handle, w);
                    Msg::ImageCreated {
                        handle,
                        chunking,
                        zstd_level,
                    }
                }
                ReplicaStart::Resume { writer, offset } => {
                    let handle = h.new_handle();
                    h.store.set_session_probe(writer, h.session_probe());
                    h.writers.insert(handle, writer);
                    Msg::ImageResumed {
                        handle,
                        chunking,
                        zstd_level,
                        offset,
                        props: Vec::new(),
                    }
                }
            }
        }
        Msg::ReplicaAbort { copy } => {
            user.may(Action::ActAsSource)?;
            blocking(|| store.replica_abort(copy, "the source ended the copy"))?;
            Msg::Ok
        }
        Msg::ImportStatesGet { copies } => {
            user.may(Action::ActAsSource)?;
            Msg::ImportStates {
                states: blocking(|| store.import_states(&copies))?,
            }
        }
        Msg::EventsGet { container, max } => Msg::Events {
            list: blocking(|| store.events(&user.scope(), &container, max))?,
        },
        Msg::EventsAck { container, ids } => {
            blocking(|| store.events_ack(&user.scope(), &container, &ids))?;
            Msg::Ok
        }
        other => {
            return refuse(
                ErrorKind::Protocol,
                format!("not a replication request: {}", msg_name(&other)),
            )
        }
    };
    Ok(Some(reply))
}
