//! A password on the wire.

use serde::{Deserialize, Serialize};

/// A password on the wire: the same bytes as a string, but its `Debug`
/// shows `<hidden>`, so a logged message never shows one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password itself, for checking or hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::UserName;
    use crate::wire::Msg;

    #[test]
    fn debug_output_never_shows_a_password() {
        let msgs = [
            Msg::Login {
                user: UserName::new("u").unwrap(),
                password: Password::new("s3cret-pw"),
            },
            Msg::UserAdd {
                name: UserName::new("u").unwrap(),
                password: Password::new("s3cret-pw"),
                admin: false,
            },
            Msg::UserPasswd {
                name: UserName::new("u").unwrap(),
                password: Password::new("s3cret-pw"),
            },
        ];
        for m in msgs {
            let shown = format!("{m:?}");
            assert!(
                !shown.contains("s3cret") && shown.contains("<hidden>"),
                "{shown}"
            );
            // The wire form is the plain string, as before.
            let bytes = rmp_serde::to_vec_named(&m).unwrap();
            assert!(bytes.windows(9).any(|w| w == b"s3cret-pw"));
            assert_eq!(rmp_serde::from_slice::<Msg>(&bytes).unwrap(), m);
        }
    }
}
