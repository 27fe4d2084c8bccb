//! Replication on the target: replicas a source server writes, and the
//! import events its DMA polls and acknowledges.

use tern_core::wire::{ErrorKind, Feature, Msg};
use tern_core::ChunkParams;

use super::{blocking, msg_name, refuse, Answer};
use crate::protocol::handler::SessionHandler;
use crate::service::access::Action;
use crate::store::{NewReplica, ReplicaStart};

pub fn handle(h: &mut SessionHandler, msg: Msg) -> Answer {
    let user = h.user()?.clone();
    let store = h.store().clone();
    let reply = match msg {
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
            return replica_create(h, replica);
        }
        Msg::ReplicaAbort { copy } => {
            user.may(Action::ActAsSource)?;
            let scope = user.replicate_scope();
            blocking(|| store.replica_abort(&scope, copy, "the source ended the copy"))?;
            Msg::Ok
        }
        Msg::ImportStatesGet { copies } => {
            user.may(Action::ActAsSource)?;
            let scope = user.replicate_scope();
            Msg::ImportStates {
                states: blocking(|| store.import_states(&scope, &copies))?,
            }
        }
        Msg::EventsAck { container, ids } => {
            blocking(|| store.events_ack(&user.scope(), &container, &ids))?;
            Msg::Ok
        }
        other => {
            return refuse(
                ErrorKind::Protocol,
                format!("not a replica request: {}", msg_name(&other)),
            )
        }
    };
    Ok(Some(reply))
}

/// Begins (or continues, or finds committed) the replica a source writes,
/// in a replica container of a group its user may replicate into.
fn replica_create(h: &mut SessionHandler, replica: NewReplica) -> Answer {
    let user = h.user()?.clone();
    let store = h.store().clone();
    let (chunking, zstd_level): (ChunkParams, i32) = (replica.chunking, replica.zstd_level);
    let resume = Feature::WanControls.in_version(h.version());
    let scope = user.replica_scope();
    let group = blocking(|| store.container_group(&scope, &replica.container))?;
    user.may(Action::ReplicateInto(&group))?;
    let start = blocking(|| store.replica_begin(&scope, &user.name, replica, resume))?;
    Ok(Some(match start {
        ReplicaStart::Committed(info) => Msg::ImageCommitted {
            info,
            stats: Default::default(),
        },
        // The replica container's chunking is the source's (checked).
        ReplicaStart::Write(w) => Msg::ImageCreated {
            handle: h.add_writer(w),
            chunking,
            zstd_level,
        },
        ReplicaStart::Resume { writer, offset } => {
            store.set_session_probe(writer, h.session_probe());
            Msg::ImageResumed {
                handle: h.add_writer(writer),
                chunking,
                zstd_level,
                offset,
                props: Vec::new(),
            }
        }
    }))
}
