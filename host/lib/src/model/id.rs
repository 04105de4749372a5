//! Identifiers that become NATS subject tokens.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest id accepted. Subjects hold several ids plus the prefix, and the
/// server's subject limit is generous, but a bound keeps headers and
/// listings predictable.
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not a valid [`Id`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The empty string would produce `a..b`, an invalid subject.
    #[error("id is empty")]
    Empty,
    /// Longer than [`MAX_ID_LEN`] bytes.
    #[error("id is {len} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong {
        /// Length in bytes.
        len: usize,
    },
    /// A character outside `[A-Za-z0-9_-]`: `.` would split the subject,
    /// `*` and `>` would widen it into a wildcard, whitespace breaks the
    /// protocol line.
    #[error("id {id:?} contains {ch:?} at byte {at}; only A-Z, a-z, 0-9, '_' and '-' are allowed")]
    BadChar {
        /// The offending id (truncated to 64 chars).
        id: String,
        /// The first bad character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

/// A validated identifier: 1-128 characters of `[A-Za-z0-9_-]`.
///
/// Workflow, place, transition, token and plugin ids are all `Id`s because
/// each may be spliced into a NATS subject; validating at the type boundary
/// means no code path can build a subject that splits (`.`) or widens (`*`,
/// `>`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Id(String);

/// In the OpenAPI document: a string of the characters and length [`Id::new`]
/// accepts.
#[cfg(feature = "http")]
impl utoipa::PartialSchema for Id {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Za-z0-9_-]+$"))
            .min_length(Some(1))
            .max_length(Some(MAX_ID_LEN))
            .description(Some(
                "1-128 characters of A-Z, a-z, 0-9, '_' and '-' (ids become NATS subject tokens)",
            ))
            .into()
    }
}

#[cfg(feature = "http")]
impl utoipa::ToSchema for Id {}

impl Id {
    /// Validates `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong { len: s.len() });
        }
        if let Some((at, ch)) = s
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            let id: String = s.chars().take(64).collect();
            return Err(IdError::BadChar { id, ch, at });
        }
        Ok(Id(s))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fresh random token id (26 chars, time-ordered prefix), for callers
    /// that do not choose their own.
    pub fn generate() -> Self {
        use rand::Rng;
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut out = String::with_capacity(26);
        // 10 base-36 chars of milliseconds keep ids roughly sortable by age.
        let mut t = millis;
        let mut head = [b'0'; 10];
        for slot in head.iter_mut().rev() {
            *slot = ALPHABET[(t % 36) as usize];
            t /= 36;
        }
        out.push_str(std::str::from_utf8(&head).expect("ascii"));
        let mut rng = rand::rng();
        for _ in 0..16 {
            out.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
        }
        Id(out)
    }
}

impl TryFrom<String> for Id {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Id::new(s)
    }
}

impl TryFrom<&str> for Id {
    type Error = IdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Id::new(s)
    }
}

impl From<Id> for String {
    fn from(id: Id) -> String {
        id.0
    }
}

impl std::str::FromStr for Id {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Id::new(s)
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_subject_safe_ids() {
        for ok in ["a", "draft", "expense-approval", "T_1", &"x".repeat(128)] {
            assert!(Id::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_ids_that_split_or_widen_subjects() {
        assert_eq!(Id::new(""), Err(IdError::Empty));
        assert_eq!(Id::new("x".repeat(129)), Err(IdError::TooLong { len: 129 }));
        for (bad, ch) in [
            ("a.b", '.'),
            ("*", '*'),
            (">", '>'),
            ("a b", ' '),
            ("tab\t", '\t'),
            ("new\nline", '\n'),
            ("ünï", 'ü'),
            ("a/b", '/'),
        ] {
            match Id::new(bad) {
                Err(IdError::BadChar { ch: c, .. }) => assert_eq!(c, ch, "{bad:?}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn deserializing_validates() {
        let e = serde_json::from_str::<Id>("\"a.b\"").unwrap_err();
        assert!(e.to_string().contains("'.'"), "{e}");
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = Id::generate();
        let b = Id::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 26);
        assert!(Id::new(a.as_str()).is_ok());
    }
}
