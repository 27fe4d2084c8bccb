//! Containers, image names, users and statistics.

use crate::store::cloud::bucket::{BucketSpec, Credentials};
use crate::store::cloud::GroupPassphrase;
use tern_core::wire::{ContainerSettings, ErrorKind, Msg, StoreStats};
use tern_core::ContainerName;

use super::{blocking, msg_name, refuse, Answer, Refusal};
use crate::protocol::handler::SessionHandler;
use crate::service::access::{Action, User};
use crate::service::tier::RemoveHow;
use crate::service::users::Users;
use crate::store::{container_home, default_group, Store};

pub fn handle(h: &mut SessionHandler, msg: Msg) -> Answer {
    let user = h.user()?.clone();
    let store = h.store();
    let reply = match msg {
        Msg::ContainerCreate { name, settings } => {
            container_create(store, &user, &name, &settings)?;
            Msg::Ok
        }
        Msg::ContainerRemove { name } => {
            blocking(|| store.container_remove(&user.scope(), &name))?;
            Msg::Ok
        }
        Msg::ImageRemove {
            container,
            name,
            bypass_lock,
            keep_cloud,
        } => {
            if bypass_lock {
                user.may(Action::BypassLock)?;
            }
            let (scope, owner) = (user.scope(), user.owner());
            let tier = h.tier().clone();
            let how = RemoveHow {
                bypass_lock,
                keep_cloud,
            };
            blocking(|| tier.image_remove(&scope, owner, &container, &name, how))?;
            Msg::Ok
        }
        Msg::ContainerLock { name, lock } => {
            user.may(Action::LockContainer)?;
            blocking(|| store.container_lock(&user.scope(), &name, lock))?;
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
        Msg::StatsGet => Msg::Stats {
            stats: stats(h, &user)?,
        },
        Msg::GroupAdd { name, settings } => {
            user.may(Action::ManageGroups("add"))?;
            match (settings.path, settings.s3) {
                (Some(path), None) => {
                    blocking(|| store.group_add_volume(&name, std::path::Path::new(&path)))?;
                }
                (None, Some(s3)) => {
                    let spec = match BucketSpec::parse(&s3.url, &s3.region, &s3.prefix) {
                        Ok(spec) => spec,
                        Err(why) => return refuse(ErrorKind::Invalid, why),
                    };
                    let credentials = Credentials {
                        access_key_id: s3.access_key_id,
                        secret_access_key: s3.secret_access_key,
                    };
                    let passphrase = GroupPassphrase(s3.passphrase);
                    blocking(|| store.group_add_cloud(&name, spec, credentials, &passphrase))?;
                }
                (Some(_), Some(_)) => {
                    return refuse(
                        ErrorKind::Invalid,
                        "a group lives either in a directory (--path) or in a bucket (--s3), \
                         not both"
                            .to_string(),
                    )
                }
                (None, None) => {
                    return refuse(
                        ErrorKind::Invalid,
                        "say where the group's packs live (--path DIR or --s3 URL); a group \
                         under the data directory is made by creating a container in it"
                            .to_string(),
                    )
                }
            }
            Msg::Ok
        }
        Msg::GroupList => Msg::Groups {
            list: blocking(|| store.group_list(&user.scope(), user.admin))?,
        },
        Msg::GroupRemove { name } => {
            user.may(Action::ManageGroups("remove"))?;
            let granted = blocking(|| Users::new(store).granted(&name))?;
            if !granted.is_empty() {
                return refuse(
                    ErrorKind::Invalid,
                    format!(
                        "storage group {name} is granted to {}: take it from them first \
                         (tern user set)",
                        granted.join(", ")
                    ),
                );
            }
            blocking(|| store.group_remove(&name))?;
            Msg::Ok
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

/// Creates a container where the user may: a storage group that does not
/// exist yet only for an admin.
fn container_create(
    store: &Store,
    user: &User,
    name: &ContainerName,
    settings: &ContainerSettings,
) -> Result<(), Refusal> {
    let (group, bare) = container_home(name, settings)?;
    user.may(Action::UseGroup(&group))?;
    if !blocking(|| store.group_exists(&group))? {
        user.may(Action::CreateGroup(&group))?;
    }
    blocking(|| store.container_create(&group, &bare, settings))?;
    Ok(())
}

/// The store's figures as the user may see them, with the server's
/// sessions (admins) and the spill space the user's sessions take.
fn stats(h: &SessionHandler, user: &User) -> Result<StoreStats, Refusal> {
    let mut stats = blocking(|| h.store().stats(&user.scope()))?;
    let sessions = h.sessions();
    if user.admin {
        stats.sessions = sessions.count() as u64;
    }
    if let Some(budget) = &sessions.cache.budget {
        let (total, by_user) = budget.usage();
        stats.spill_bytes = if user.admin {
            total
        } else {
            let mine = by_user.iter().find(|(u, _)| *u == user.name.as_str());
            mine.map_or(0, |(_, n)| *n)
        };
    }
    Ok(stats)
}
