//! Names that reach the store: validated once, at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} name is empty")]
    Empty {
        /// What was named ("container", "image", ...).
        kind: &'static str,
    },
    /// Longer than [`MAX_NAME_LEN`] bytes.
    #[error("{kind} name is {len} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong {
        /// What was named.
        kind: &'static str,
        /// The name's length in bytes.
        len: usize,
    },
    /// Contains a character that is not allowed.
    #[error("{kind} name {name:?} contains {what}, which is not allowed")]
    BadCharacter {
        /// What was named.
        kind: &'static str,
        /// The refused name.
        name: String,
        /// The character, described.
        what: &'static str,
    },
    /// `.` or `..`.
    #[error("{kind} name {name:?} is reserved")]
    Reserved {
        /// What was named.
        kind: &'static str,
        /// The refused name.
        name: String,
    },
}

/// The longest name in bytes.
pub const MAX_NAME_LEN: usize = 255;

fn check(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            len: name.len(),
        });
    }
    let bad = |what| NameError::BadCharacter {
        kind,
        name: name.to_string(),
        what,
    };
    if name.contains('/') {
        return Err(bad("'/'"));
    }
    if name.contains('\\') {
        return Err(bad("'\\'"));
    }
    if name.contains('\0') {
        return Err(bad("a NUL byte"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("a control character"));
    }
    if name == "." || name == ".." || name.contains("..") {
        return Err(NameError::Reserved {
            kind,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// A container name may name its storage group first: `GROUP/NAME`.
fn check_container(kind: &'static str, name: &str) -> Result<(), NameError> {
    match name.split_once('/') {
        Some((group, bare)) => {
            check("storage group", group)?;
            check(kind, bare)
        }
        None => check(kind, name),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        name_type!($(#[$doc])* $ty, $kind, check);
    };
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $check:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// The name, if it is allowed.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                $check($kind, &name)?;
                Ok(Self(name))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // pad, not write_str: a table row may ask for a width.
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

name_type!(
    /// A container name: 1..=255 bytes, no `/`, `\`, `..`, NUL or control
    /// characters. Names are per storage group; `GROUP/NAME` says which
    /// group's container is meant, for a user who sees several.
    ContainerName,
    "container",
    check_container
);

impl ContainerName {
    /// The storage group named before a `/`, if any, and the container's own name.
    pub fn split(&self) -> (Option<GroupName>, ContainerName) {
        match self.0.split_once('/') {
            Some((group, bare)) => (
                Some(GroupName(group.to_string())),
                ContainerName(bare.to_string()),
            ),
            None => (None, self.clone()),
        }
    }
}
name_type!(
    /// An image name: the same rules as [`ContainerName`].
    ImageName,
    "image"
);
name_type!(
    /// A storage group name: the same rules as [`ContainerName`].
    GroupName,
    "storage group"
);
name_type!(
    /// A user name: the same rules as [`ContainerName`].
    UserName,
    "user"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_image_names_are_refused() {
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            "nul\0",
            &"x".repeat(256),
            "tab\there",
        ] {
            assert!(ImageName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ImageName::new("nightly-2026.11.22").is_ok());
        assert!(ImageName::new("x".repeat(255)).is_ok());
    }

    #[test]
    fn names_honour_a_width() {
        assert_eq!(format!("{:<6}|", ImageName::new("ab").unwrap()), "ab    |");
    }

    #[test]
    fn a_container_name_may_name_its_group() {
        let n = ContainerName::new("acme/nightly").unwrap();
        let (group, bare) = n.split();
        assert_eq!(group.unwrap().as_str(), "acme");
        assert_eq!(bare.as_str(), "nightly");
        assert_eq!(ContainerName::new("nightly").unwrap().split().0, None);
        for bad in ["a/b/c", "/x", "x/", "../x", "a/.."] {
            assert!(ContainerName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_decode_through_validation() {
        let bytes = rmp_serde::to_vec(&"../etc").unwrap();
        assert!(rmp_serde::from_slice::<ImageName>(&bytes).is_err());
    }
}
