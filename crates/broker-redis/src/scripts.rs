//! The server-side scripts. Each is `lua/common.lua` (key layout and helpers) followed by its
//! own body; `redis::Script` sends `EVALSHA` and loads the script again after a restart.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/common.lua"),
                "\n",
                include_str!(concat!("lua/", $file))
            ))
        })
    };
}

pub(crate) static ENQUEUE: LazyLock<Script> = script!("enqueue.lua");
pub(crate) static LEASE: LazyLock<Script> = script!("lease.lua");
pub(crate) static EXTEND: LazyLock<Script> = script!("extend.lua");
pub(crate) static SETTLE: LazyLock<Script> = script!("settle.lua");
pub(crate) static STATS: LazyLock<Script> = script!("stats.lua");
pub(crate) static DEAD_JOBS: LazyLock<Script> = script!("dead_jobs.lua");
pub(crate) static RETRY_DEAD: LazyLock<Script> = script!("retry_dead.lua");
pub(crate) static PAUSE: LazyLock<Script> = script!("pause.lua");
pub(crate) static FLOW: LazyLock<Script> = script!("flow.lua");
pub(crate) static SET_LIMITS: LazyLock<Script> = script!("set_limits.lua");
pub(crate) static CANCEL: LazyLock<Script> = script!("cancel.lua");
