//! Hello (version and features) and Login. Before login nothing else but Ping
//! is answered; the session's deadline (`HANDSHAKE_TIMEOUT`) runs meanwhile.

use tern_core::wire::{self, ErrorKind, Msg};

use super::{refuse, Answer, Refusal};
use crate::handler::{Phase, SessionHandler};

pub fn handle(h: &mut SessionHandler, msg: Msg) -> Answer {
    match (&h.phase, msg) {
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
        (_, Msg::Login { user, password }) => {
            let u = tokio::task::block_in_place(|| h.store.authenticate(&user, &password))
                .map_err(|_| {
                    Refusal(
                        ErrorKind::Auth,
                        format!("wrong password or unknown user {user}"),
                    )
                })?;
            let admin = u.admin;
            h.phase = Phase::Ready(u);
            Ok(Some(Msg::LoggedIn { admin }))
        }
        (_, Msg::Ping) => Ok(Some(Msg::Pong)),
        _ => refuse(ErrorKind::Protocol, "log in first"),
    }
}

fn hello(
    h: &mut SessionHandler,
    min_version: u16,
    max_version: u16,
    features: &[String],
) -> Answer {
    let Some(version) = wire::negotiate_version(min_version, max_version) else {
        return refuse(
            ErrorKind::Incompatible,
            format!(
                "incompatible protocol: client speaks {min_version}..={max_version}, this server {}..={}",
                wire::PROTOCOL_MIN,
                wire::PROTOCOL_MAX
            ),
        );
    };
    h.phase = Phase::AwaitLogin;
    let features = wire::FEATURES
        .iter()
        .filter(|f| features.iter().any(|g| g == *f))
        .map(|f| f.to_string())
        .collect();
    Ok(Some(Msg::Welcome {
        version,
        features,
        server: format!("ternd {}", env!("CARGO_PKG_VERSION")),
        session: h.token.clone(),
        grace_secs: h.grace.as_secs(),
    }))
}
