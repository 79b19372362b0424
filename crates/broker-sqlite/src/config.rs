use std::path::PathBuf;
use std::time::Duration;

/// How to open the embedded broker.
#[derive(Clone, Debug)]
pub struct SqliteBrokerConfig {
    /// The database file (created if missing, with its directory).
    pub path: PathBuf,
    /// How often an idle consumer looks for work pushed by another process (pushes in this
    /// process wake it at once).
    pub poll_interval: Duration,
    /// Most jobs written in one group commit.
    pub max_enqueue_batch: usize,
}

impl SqliteBrokerConfig {
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            poll_interval: Duration::from_millis(50),
            max_enqueue_batch: 5_000,
        }
    }
}
