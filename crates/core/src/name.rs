//! Names that arrive as strings and are parsed once at the edge: queue names, job kinds,
//! idempotency keys and tags. Past the edge, code holds these types and never re-validates.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name was refused. The message is meant for the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} may only contain {allowed}; found {found:?} at byte {at}")]
    BadChar {
        what: &'static str,
        allowed: &'static str,
        found: char,
        at: usize,
    },
    #[error("{what} must start with a letter or a digit")]
    BadStart { what: &'static str },
}

struct Rule {
    what: &'static str,
    max: usize,
    allowed: &'static str,
    ok: fn(char) -> bool,
    alnum_start: bool,
}

impl Rule {
    fn check(&self, s: &str) -> Result<(), NameError> {
        if s.is_empty() {
            return Err(NameError::Empty { what: self.what });
        }
        if s.len() > self.max {
            return Err(NameError::TooLong {
                what: self.what,
                len: s.len(),
                max: self.max,
            });
        }
        if let Some((at, found)) = s.char_indices().find(|&(_, c)| !(self.ok)(c)) {
            return Err(NameError::BadChar {
                what: self.what,
                allowed: self.allowed,
                found,
                at,
            });
        }
        if self.alnum_start && !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(NameError::BadStart { what: self.what });
        }
        Ok(())
    }
}

macro_rules! parsed_name {
    ($(#[$doc:meta])* $name:ident, $rule:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(Box<str>);

        impl $name {
            const RULE: Rule = $rule;

            /// Parses and validates; the error says what is wrong.
            ///
            /// # Errors
            /// When the text breaks the rule for this kind of name.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                Self::RULE.check(s)?;
                Ok(Self(s.into()))
            }

            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn queue_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
}

fn kind_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')
}

fn key_char(c: char) -> bool {
    c.is_ascii_graphic()
}

fn tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '=' | '/')
}

parsed_name!(
    /// A queue's name: lower-case ASCII letters, digits, `-`, `_`, `.`; at most 64 bytes;
    /// starts with a letter or digit. Kept small and plain because it becomes part of broker
    /// keys, topic names and metric labels.
    QueueName,
    Rule {
        what: "queue name",
        max: 64,
        allowed: "lower-case letters, digits, '-', '_' and '.'",
        ok: queue_char,
        alnum_start: true,
    }
);

parsed_name!(
    /// A job's kind, the name a handler is registered under (`email.send`, `billing:invoice`):
    /// ASCII letters, digits, `-`, `_`, `.`, `:`, `/`; at most 128 bytes.
    JobKind,
    Rule {
        what: "job kind",
        max: 128,
        allowed: "letters, digits, '-', '_', '.', ':' and '/'",
        ok: kind_char,
        alnum_start: true,
    }
);

parsed_name!(
    /// A producer-chosen key that makes a retried submission safe: printable ASCII, at most
    /// 255 bytes.
    IdempotencyKey,
    Rule {
        what: "idempotency key",
        max: 255,
        allowed: "printable ASCII without spaces",
        ok: key_char,
        alnum_start: false,
    }
);

parsed_name!(
    /// A free-form label on a job for searching (`tenant:7`), at most 64 bytes.
    Tag,
    Rule {
        what: "tag",
        max: 64,
        allowed: "letters, digits, '-', '_', '.', ':', '=' and '/'",
        ok: tag_char,
        alnum_start: false,
    }
);

parsed_name!(
    /// A job's `concurrency_key` or `rate_key` (a customer id, a target host): jobs with the
    /// same key in a queue share that queue's per-key limits. Printable ASCII without spaces,
    /// at most 128 bytes.
    FlowKey,
    Rule {
        what: "flow key",
        max: 128,
        allowed: "printable ASCII without spaces",
        ok: key_char,
        alnum_start: false,
    }
);

parsed_name!(
    /// Who a job belongs to (`acme`, `7`): ASCII letters, digits, `-`, `_`, `.`; at most 64
    /// bytes. Idempotency keys are unique per tenant, and history can be searched by it.
    Tenant,
    Rule {
        what: "tenant",
        max: 64,
        allowed: "letters, digits, '-', '_' and '.'",
        ok: tenant_char,
        alnum_start: true,
    }
);

impl QueueName {
    /// The queue jobs go to when nobody says otherwise.
    #[must_use]
    pub fn default_queue() -> Self {
        Self("default".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(QueueName::parse("emails").is_ok());
        assert!(QueueName::parse("a.b-c_1").is_ok());
        assert_eq!(
            QueueName::parse("").unwrap_err().to_string(),
            "queue name must not be empty"
        );
        assert_eq!(
            QueueName::parse("Emails").unwrap_err().to_string(),
            "queue name may only contain lower-case letters, digits, '-', '_' and '.'; found 'E' at byte 0"
        );
        assert!(matches!(
            QueueName::parse("-x"),
            Err(NameError::BadStart { .. })
        ));
        assert!(matches!(
            QueueName::parse(&"q".repeat(65)),
            Err(NameError::TooLong { len: 65, .. })
        ));
    }

    #[test]
    fn kinds_and_keys() {
        assert!(JobKind::parse("email.send").is_ok());
        assert!(JobKind::parse("billing:invoice/v2").is_ok());
        assert!(JobKind::parse("has space").is_err());
        assert!(IdempotencyKey::parse("order-42:v1").is_ok());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(Tag::parse("tenant:7").is_ok());
    }

    #[test]
    fn serde_validates() {
        let q: Result<QueueName, _> = serde_json::from_str("\"BAD\"");
        assert!(q.is_err());
        let k: JobKind = serde_json::from_str("\"noop\"").unwrap();
        assert_eq!(k.as_str(), "noop");
    }
}
