#![doc = include_str!("../README.md")]

use std::path::Path;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// An opened file: its single writer, and the options to open readers with once the schema
/// is in place.
#[derive(Debug)]
pub struct Opened {
    pub writer: SqlitePool,
    options: SqliteConnectOptions,
}

/// Creates `path`'s directory and opens the one writer connection, with `pragmas` on top of
/// Ferry's defaults.
///
/// # Errors
/// A one-line message naming the directory or file (`what` says which file it is).
pub async fn open_writer(
    path: &Path,
    what: &str,
    pragmas: &[(&'static str, &'static str)],
) -> Result<Opened, String> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    for (k, v) in pragmas {
        options = options.pragma(*k, *v);
    }
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .connect_with(options.clone())
        .await
        .map_err(|e| format!("cannot open sqlite {what} at {}: {e}", path.display()))?;
    Ok(Opened { writer, options })
}

impl Opened {
    /// A pool of `n` read-only connections to the same file.
    ///
    /// # Errors
    /// When the file cannot be opened for reading.
    pub async fn readers(&self, n: u32) -> Result<SqlitePool, sqlx::Error> {
        SqlitePoolOptions::new()
            .max_connections(n)
            .connect_with(self.options.clone().read_only(true))
            .await
    }
}
