//! Replication: partners and copies (this server as the source), replicas
//! and import events (this server as the target).

use tern_core::wire::{ErrorKind, Msg};

use super::{blocking, msg_name, refuse, Answer, Refusal};
use crate::handler::SessionHandler;
use crate::replication::ReplicationError;
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
    let admin_only = |what: &str| {
        if user.admin {
            Ok(())
        } else {
            refuse(ErrorKind::Denied, format!("only an admin may {what}"))
        }
    };
    let reply = match msg {
        Msg::ContainerPromote { name } => {
            blocking(|| store.container_promote(&user, &name))?;
            Msg::Ok
        }
        Msg::ContainerReplicate { name, to } => {
            blocking(|| store.container_replicate(&user, &name, to))?;
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
            admin_only("add replication partners")?;
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
            admin_only("list replication partners")?;
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
            wan(h.version, "PartnerSet")?;
            admin_only("change replication partners")?;
            blocking(|| repl.partner_set(&name, addresses, connections, shaping))?;
            Msg::Ok
        }
        Msg::ShapingSet { name, settings } => {
            wan(h.version, "ShapingSet")?;
            admin_only("change shaping groups")?;
            blocking(|| repl.shaper.set(&name, settings))?;
            Msg::Ok
        }
        Msg::ShapingList => {
            wan(h.version, "ShapingList")?;
            admin_only("list shaping groups")?;
            Msg::ShapingGroups {
                list: blocking(|| repl.shaper.list())?,
            }
        }
        Msg::ShapingRemove { name } => {
            wan(h.version, "ShapingRemove")?;
            admin_only("remove shaping groups")?;
            blocking(|| repl.shaper.remove(&name))?;
            Msg::Ok
        }
        Msg::PartnerRemove { name } => {
            admin_only("remove replication partners")?;
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
                repl.copy_start(&user, &container, &name, &partner, to_container, to_name)
            })?,
        },
        Msg::CopyStatusGet { id } => Msg::Copies {
            list: vec![blocking(|| repl.status(&user, id))?],
        },
        Msg::CopyList => Msg::Copies {
            list: blocking(|| repl.list(&user))?,
        },
        Msg::CopyCancel { id } => {
            blocking(|| repl.cancel(&user, id))?;
            Msg::Ok
        }
        Msg::CopyAbort { id } => {
            wan(h.version, "CopyAbort")?;
            // It may connect to the partner: off the async workers.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = tx.send(repl.abort(&user, id));
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
            let resume = h.version >= tern_core::wire::WAN_MIN;
            let start = blocking(|| store.replica_begin(&user, replica, resume))?;
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
            if !user.admin && user.replicate_into.is_empty() {
                return refuse(
                    ErrorKind::Denied,
                    format!("user {} replicates into no storage group", user.name),
                );
            }
            blocking(|| store.replica_abort(copy, "the source ended the copy"))?;
            Msg::Ok
        }
        Msg::ImportStatesGet { copies } => Msg::ImportStates {
            states: blocking(|| store.import_states(&user, &copies))?,
        },
        Msg::EventsGet { container, max } => Msg::Events {
            list: blocking(|| store.events(&user, &container, max))?,
        },
        Msg::EventsAck { container, ids } => {
            blocking(|| store.events_ack(&user, &container, &ids))?;
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

/// Refuses a protocol-4 request in an older session.
fn wan(version: u16, what: &str) -> Result<(), Refusal> {
    if version < tern_core::wire::WAN_MIN {
        return Err(Refusal(
            ErrorKind::Incompatible,
            format!(
                "{what} needs protocol version {}; this session speaks {version}",
                tern_core::wire::WAN_MIN
            ),
        ));
    }
    Ok(())
}
