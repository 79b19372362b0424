#![doc = include_str!("../README.md")]

mod discard;
mod sqlite;

pub use discard::DiscardStore;
pub use sqlite::{SqliteStore, SqliteStoreConfig};
