//! Job identifiers: UUIDv7, so ids sort by creation time and index well.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A job's id: a UUIDv7, time-ordered, printed in the hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct JobId(Uuid);

impl JobId {
    /// A fresh id for a job created now.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    #[must_use]
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    #[must_use]
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Parses the text form; anything but a UUID is refused.
    ///
    /// # Errors
    /// When `s` is not a UUID.
    pub fn parse(s: &str) -> Result<Self, ParseJobIdError> {
        Uuid::parse_str(s).map(Self).map_err(|_| ParseJobIdError)
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

/// The text was not a job id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a job id (expected a UUID)")]
pub struct ParseJobIdError;

impl FromStr for JobId {
    type Err = ParseJobIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.hyphenated())
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_and_round_trip() {
        let a = JobId::new();
        let b = JobId::new();
        assert!(a < b, "v7 ids created later sort later");
        assert_eq!(JobId::parse(&a.to_string()), Ok(a));
        assert_eq!(JobId::parse("nope"), Err(ParseJobIdError));
    }
}
