//! Typed identifiers.
//!
//! Every id in fathom is a `u64` behind a newtype so that an episode id can
//! never be passed where a run id is expected. Ids are shown to people with a
//! short prefix (`r-12`, `e-123`) and parsed back from the same form, so what
//! `fathom log tail` prints can be pasted into `fathom replay --episode`.
//! The numbers themselves are allocated by the store (one counter per id kind
//! per data directory); core only gives them a type.

use std::fmt;
use std::str::FromStr;

/// Why an id could not be parsed from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a valid {what} id: expected {expected}")]
pub struct ParseIdError {
    /// The text the user gave.
    pub text: String,
    /// Which kind of id was expected, for the message.
    pub what: &'static str,
    /// The expected form, for the message (`r-<number>`).
    pub expected: String,
}

/// Declares a `u64` newtype id with a display prefix. One macro, so that all
/// ids share their parsing, formatting, serde and rkyv behaviour.
macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[rkyv(derive(Debug, PartialEq, Eq))]
        pub struct $name(pub u64);

        impl $name {
            /// The text shown before the number (`r` in `r-12`); empty for plain numbers.
            pub const PREFIX: &'static str = $prefix;

            /// The raw number.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if $prefix.is_empty() {
                    write!(f, "{}", self.0)
                } else {
                    write!(f, "{}-{}", $prefix, self.0)
                }
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                let trimmed = text.trim();
                let digits = if $prefix.is_empty() {
                    trimmed
                } else {
                    // Accept both `e-12` and a bare `12`: people paste either.
                    trimmed
                        .strip_prefix(concat!($prefix, "-"))
                        .unwrap_or(trimmed)
                };
                digits.parse::<u64>().map($name).map_err(|_| ParseIdError {
                    text: text.to_string(),
                    what: $what,
                    expected: if $prefix.is_empty() {
                        "a non-negative integer".to_string()
                    } else {
                        format!("{}-<number>, for example {}-12", $prefix, $prefix)
                    },
                })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if $prefix.is_empty() {
                    s.serialize_u64(self.0)
                } else {
                    s.collect_str(self)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(serde::Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Num(u64),
                    Text(String),
                }
                match Raw::deserialize(d)? {
                    Raw::Num(n) => Ok($name(n)),
                    Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}

define_id!(
    /// A log sequence number: assigned by the log at append, dense, starting at 1.
    Seq, "", "sequence number"
);
define_id!(
    /// One training, evaluation or replay run.
    RunId, "r", "run"
);
define_id!(
    /// One episode: a question answered by a policy, turn by turn.
    EpisodeId, "e", "episode"
);
define_id!(
    /// One request to the web (a search or a page fetch), unique in a data directory.
    RequestId, "w", "web request"
);
define_id!(
    /// One saved checkpoint.
    CheckpointId, "c", "checkpoint"
);
define_id!(
    /// One committed Parquet snapshot.
    SnapshotId, "s", "snapshot"
);

/// A question's id as the data set names it (`test_17`, `musique_2hop__…`).
/// Questions come from outside fathom, so this id is text, not a counter.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(transparent)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct QuestionId(pub String);

impl fmt::Display for QuestionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for QuestionId {
    fn from(s: &str) -> Self {
        QuestionId(s.to_string())
    }
}

/// The kinds of id the store allocates from its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// [`RunId`].
    Run,
    /// [`EpisodeId`].
    Episode,
    /// [`RequestId`].
    Request,
    /// [`CheckpointId`].
    Checkpoint,
    /// [`SnapshotId`].
    Snapshot,
}

impl IdKind {
    /// Every kind, for stores that keep one counter each.
    pub const ALL: [IdKind; 5] = [
        IdKind::Run,
        IdKind::Episode,
        IdKind::Request,
        IdKind::Checkpoint,
        IdKind::Snapshot,
    ];

    /// A stable one-byte tag, used as part of the store's counter key.
    pub const fn tag(self) -> u8 {
        match self {
            IdKind::Run => b'r',
            IdKind::Episode => b'e',
            IdKind::Request => b'w',
            IdKind::Checkpoint => b'c',
            IdKind::Snapshot => b's',
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_with_their_prefix() {
        assert_eq!(RunId(12).to_string(), "r-12");
        assert_eq!(EpisodeId(123).to_string(), "e-123");
        assert_eq!(Seq(7).to_string(), "7");
        assert_eq!("e-123".parse::<EpisodeId>().unwrap(), EpisodeId(123));
        assert_eq!("123".parse::<EpisodeId>().unwrap(), EpisodeId(123));
        assert_eq!("42".parse::<Seq>().unwrap(), Seq(42));
    }

    #[test]
    fn a_bad_id_says_what_was_expected() {
        let err = "r-x".parse::<RunId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "'r-x' is not a valid run id: expected r-<number>, for example r-12"
        );
        // An episode id is not a run id, even though both are numbers.
        assert!("e-5".parse::<RunId>().is_err());
    }

    #[test]
    fn ids_serialize_as_their_display_form() {
        assert_eq!(serde_json::to_string(&RunId(3)).unwrap(), "\"r-3\"");
        assert_eq!(serde_json::to_string(&Seq(3)).unwrap(), "3");
        let back: RunId = serde_json::from_str("\"r-3\"").unwrap();
        assert_eq!(back, RunId(3));
        let back: Seq = serde_json::from_str("9").unwrap();
        assert_eq!(back, Seq(9));
    }
}
