//! Containers, image names, users and statistics.

use tern_core::wire::{ErrorKind, Msg};

use super::{blocking, msg_name, refuse, Answer};
use crate::protocol::handler::SessionHandler;
use crate::service::access::Action;
use crate::service::users::Users;
use crate::store::{container_home, default_group};

pub fn handle(h: &mut SessionHandler, msg: Msg) -> Answer {
    let user = h.user()?.clone();
    let store = &h.store;
    let reply = match msg {
        Msg::ContainerCreate { name, settings } => {
            let (group, bare) = container_home(&name, &settings)?;
            user.may(Action::UseGroup(&group))?;
            if !blocking(|| store.group_exists(&group))? {
                user.may(Action::CreateGroup(&group))?;
            }
            blocking(|| store.container_create(&group, &bare, &settings))?;
            Msg::Ok
        }
        Msg::ContainerList => Msg::Containers {
            list: blocking(|| store.container_list(&user.scope()))?,
        },
        Msg::ContainerRemove { name } => {
            blocking(|| store.container_remove(&user.scope(), &name))?;
            Msg::Ok
        }
        Msg::ImageList { container, prefix } => {
            let scope = user.scope();
            Msg::Images {
                list: blocking(|| store.image_list(&scope, &container, &prefix))?,
                incomplete: blocking(|| store.incomplete_images(&scope, &container, &prefix))?,
            }
        }
        Msg::ImageRemove { container, name } => {
            blocking(|| store.image_remove(&user.scope(), user.owner(), &container, &name))?;
            Msg::Ok
        }
        Msg::ImagePropsSet {
            container,
            name,
            props,
        } => {
            blocking(|| store.image_set_props(&user.scope(), &container, &name, props))?;
            Msg::Ok
        }
        Msg::UserAdd {
            name,
            password,
            admin,
        } => {
            user.may(Action::AddUser)?;
            let groups = vec![default_group()];
            blocking(|| Users::new(store).add(&name, password.expose(), admin, groups))?;
            Msg::Ok
        }
        Msg::UserPasswd { name, password } => {
            user.may(Action::SetPassword(&name))?;
            blocking(|| Users::new(store).passwd(&name, password.expose()))?;
            Msg::Ok
        }
        Msg::UserSet {
            name,
            groups,
            admin,
            replicate_into,
            shaping,
        } => {
            user.may(Action::ChangeUserRights)?;
            blocking(|| {
                Users::new(store).update_rights(&name, groups, admin, replicate_into, shaping)
            })?;
            Msg::Ok
        }
        Msg::StatsGet => {
            let mut stats = blocking(|| store.stats(&user.scope()))?;
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
