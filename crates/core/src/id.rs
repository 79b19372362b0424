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

    /// The millisecond a v7 id was made in (what its first 48 bits say); 0 for other UUIDs.
    #[must_use]
    pub fn created_at(&self) -> crate::UnixMillis {
        let b = self.0.as_bytes();
        let ms = b[..6]
            .iter()
            .fold(0i64, |acc, x| (acc << 8) | i64::from(*x));
        crate::UnixMillis(if self.0.get_version_num() == 7 { ms } else { 0 })
    }

    /// The smallest id of millisecond `at`: every job created at or after `at` has an id at or
    /// above it, every earlier one below. Range filters on creation time use it.
    #[must_use]
    pub fn first_at(at: crate::UnixMillis) -> Self {
        let ms = u64::try_from(at.0).unwrap_or(0) & 0xffff_ffff_ffff;
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        Self(Uuid::from_bytes(bytes))
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

    #[test]
    fn creation_time_bounds() {
        let a = JobId::new();
        let at = a.created_at();
        assert!((crate::UnixMillis::now().0 - at.0).abs() < 10_000);
        assert!(JobId::first_at(at) <= a);
        assert!(JobId::first_at(crate::UnixMillis(at.0 + 1)) > a);
        assert_eq!(JobId::first_at(at).as_uuid().as_bytes()[6..], [0; 10]);
    }
}
