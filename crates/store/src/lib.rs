#![doc = include_str!("../README.md")]

mod discard;
mod postgres;
mod retrying;
mod sqlite;

pub use discard::DiscardStore;
pub use postgres::{PgOpenError, PgStore, PgStoreConfig};
pub use retrying::RetryingStore;
pub use sqlite::{SqliteStore, SqliteStoreConfig};
