#![doc = include_str!("../README.md")]

mod discard;
mod postgres;
mod sqlite;

pub use discard::DiscardStore;
pub use postgres::{PgOpenError, PgStore, PgStoreConfig};
pub use sqlite::{SqliteStore, SqliteStoreConfig};
