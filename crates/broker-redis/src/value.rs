//! Decoding script replies.

use ferry_core::broker::{BrokerError, BrokerResult};
use redis::Value;

fn bad(what: &str, v: &Value) -> BrokerError {
    BrokerError::Unavailable(format!("redis: unexpected reply for {what}: {v:?}"))
}

pub(crate) fn array(v: Value, what: &str) -> BrokerResult<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(bad(what, &other)),
    }
}

pub(crate) fn int(v: &Value, what: &str) -> BrokerResult<i64> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(what, v)),
        other => Err(bad(what, other)),
    }
}

pub(crate) fn bytes(v: Value, what: &str) -> BrokerResult<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        other => Err(bad(what, &other)),
    }
}

pub(crate) fn unsigned(v: &Value, what: &str) -> BrokerResult<u64> {
    u64::try_from(int(v, what)?).map_err(|_| bad(what, v))
}
