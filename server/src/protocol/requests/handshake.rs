//! Hello (version and features) and Login. Before login nothing else but Ping
//! is answered; the session's deadline (`HANDSHAKE_TIMEOUT`) runs meanwhile.

use tern_core::names::UserName;
use tern_core::wire::{self, ErrorKind, Msg, Password, TrailSide};

use super::{refuse, Answer, Refusal};
use crate::protocol::handler::{Phase, SessionHandler};
use crate::service::replication::trail::refusal;
use crate::service::users::Users;
use crate::store::records::now_unix;
use crate::store::StoreError;

pub async fn handle(h: &mut SessionHandler, msg: Msg) -> Answer {
    match (h.phase(), msg) {
        (
            Phase::AwaitHello,
            Msg::Hello {
                min_version,
                max_version,
                features,
                ..
            },
        ) => hello(h, min_version, max_version, &features),
        (Phase::AwaitHello, _) => refuse(ErrorKind::Protocol, "the first frame must be Hello"),
        (_, Msg::Login { user, password }) => login(h, user, password).await,
        (_, Msg::Ping) => Ok(Some(Msg::Pong)),
        _ => refuse(ErrorKind::Protocol, "log in first"),
    }
}

/// Checks a password: after the delay the peer's address has earned, with a
/// bounded number of verifications at once; every failure is logged (user
/// and address, never the password).
async fn login(h: &mut SessionHandler, user: UserName, password: Password) -> Answer {
    let guard = h.logins().clone();
    let ip = h.peer().ip();
    let delay = guard.delay(ip);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let store = h.store().clone();
    let name = user.clone();
    let checked = guard.verify(move || Users::new(&store).authenticate(&name, password.expose()));
    let Some(outcome) = checked.await else {
        return Err(Refusal(
            ErrorKind::Internal,
            "no password-checking thread is running".into(),
        ));
    };
    match outcome {
        Ok(u) => {
            guard.succeeded(ip);
            h.logged_in_as(u.clone());
            Ok(Some(Msg::LoggedIn { admin: u.admin }))
        }
        Err(StoreError::Denied(_)) => {
            guard.failed(ip);
            let failures = h.login_failed();
            tracing::warn!(user = %user, peer = %h.peer(), failures, "failed login");
            tokio::task::block_in_place(|| record_partner_refusal(h, &user));
            Err(Refusal(
                ErrorKind::Auth,
                format!("wrong password or unknown user {user}"),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// A failed login as a user who may replicate here is a replication
/// partner refused: it goes into this (target) side's trail too, for
/// admins (it names no group), at the rate one address may fill it.
fn record_partner_refusal(h: &SessionHandler, user: &UserName) {
    let partner = matches!(Users::new(h.store()).replicates_here(user), Ok(true));
    if !partner {
        return;
    }
    let reason = format!("replication login as {user} refused: wrong password");
    let mut entry = refusal(&h.peer().to_string(), now_unix(), &reason);
    entry.side = TrailSide::Target;
    h.replicator()
        .record_refusal(&h.peer().ip().to_string(), entry);
}

fn hello(
    h: &mut SessionHandler,
    min_version: u16,
    max_version: u16,
    features: &[String],
) -> Answer {
    let ours = h.sessions().protocol_max;
    let Some(version) = wire::negotiate_version(min_version, max_version.min(ours)) else {
        return refuse(
            ErrorKind::Incompatible,
            format!(
                "incompatible protocol: client speaks {min_version}..={max_version}, this server {}..={ours}",
                wire::PROTOCOL_MIN,
            ),
        );
    };
    h.hello_done(version);
    let features = wire::FEATURES
        .iter()
        .filter(|f| features.iter().any(|g| g == *f))
        .map(|f| f.to_string())
        .collect();
    Ok(Some(Msg::Welcome {
        version,
        features,
        server: format!("ternd {}", env!("CARGO_PKG_VERSION")),
        session: h.token().to_vec(),
        grace_secs: h.grace().as_secs(),
    }))
}
