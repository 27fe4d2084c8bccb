//! Containers, image names, users and statistics.

use tern_core::names::GroupName;
use tern_core::wire::{ErrorKind, Msg};

use super::{blocking, msg_name, refuse, Answer};
use crate::handler::SessionHandler;
use crate::store::DEFAULT_GROUP;

pub fn handle(h: &mut SessionHandler, msg: Msg) -> Answer {
    let user = h.user()?.clone();
    let store = &h.store;
    let reply = match msg {
        Msg::ContainerCreate { name, settings } => {
            blocking(|| store.container_create(&user, &name, &settings))?;
            Msg::Ok
        }
        Msg::ContainerList => Msg::Containers {
            list: blocking(|| store.container_list(&user))?,
        },
        Msg::ContainerRemove { name } => {
            blocking(|| store.container_remove(&user, &name))?;
            Msg::Ok
        }
        Msg::ImageList { container, prefix } => Msg::Images {
            list: blocking(|| store.image_list(&user, &container, &prefix))?,
            incomplete: blocking(|| store.incomplete_images(&user, &container, &prefix))?,
        },
        Msg::ImageRemove { container, name } => {
            blocking(|| store.image_remove(&user, &container, &name))?;
            Msg::Ok
        }
        Msg::ImagePropsSet {
            container,
            name,
            props,
        } => {
            blocking(|| store.image_set_props(&user, &container, &name, props))?;
            Msg::Ok
        }
        Msg::UserAdd {
            name,
            password,
            admin,
        } => {
            if !user.admin {
                return refuse(ErrorKind::Denied, "only an admin may add users");
            }
            let groups =
                vec![GroupName::new(DEFAULT_GROUP).expect("the default group's name is valid")];
            blocking(|| store.user_add(&name, password.expose(), admin, groups))?;
            Msg::Ok
        }
        Msg::UserPasswd { name, password } => {
            if !user.admin && user.name != name {
                return refuse(
                    ErrorKind::Denied,
                    "only an admin may set another user's password",
                );
            }
            blocking(|| store.user_passwd(&name, password.expose()))?;
            Msg::Ok
        }
        Msg::UserSet {
            name,
            groups,
            admin,
            replicate_into,
            shaping,
        } => {
            if !user.admin {
                return refuse(
                    ErrorKind::Denied,
                    "only an admin may change a user's rights",
                );
            }
            if shaping.is_some() && h.version < tern_core::wire::WAN_MIN {
                return refuse(
                    ErrorKind::Incompatible,
                    "shaping groups need protocol version 4",
                );
            }
            blocking(|| store.user_update(&name, groups, admin, replicate_into, shaping))?;
            Msg::Ok
        }
        Msg::StatsGet => {
            let mut stats = blocking(|| store.stats(&user))?;
            if user.admin {
                stats.sessions = h.sessions.count() as u64;
            }
            if let Some(budget) = &h.sessions.cache.budget {
                let (total, by_user) = budget.usage();
                stats.spill_bytes = if user.admin {
                    total
                } else {
                    let mine = by_user.iter().find(|(u, _)| *u == user.name.as_str());
                    mine.map_or(0, |(_, n)| *n)
                };
            }
            Msg::Stats { stats }
        }
        other => {
            return refuse(
                ErrorKind::Protocol,
                format!("not a catalog request: {}", msg_name(&other)),
            )
        }
    };
    Ok(Some(reply))
}
