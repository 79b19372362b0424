//! `GET /v1/jobs`: the query string parsed once into a [`JobQuery`], every bad parameter a
//! 400 that names it, and keyset pagination with a `next` link.

use ferry_core::store::JobQuery;
use ferry_core::{JobId, JobKind, JobState, QueueName, Tag, Tenant, UnixMillis};

use crate::error::ApiError;

/// Page size when `limit` is not given, and the largest allowed.
pub(crate) const DEFAULT_LIMIT: usize = 50;
pub(crate) const MAX_LIMIT: usize = 500;

const STATES: &str = "queued, scheduled, running, retrying, succeeded, dead, cancelled";
const FILTERS: &str =
    "queue, state, kind, tenant, tag, created_after, created_before, payload.<path>, limit, cursor";

fn bad(name: &str, detail: impl Into<String>) -> ApiError {
    ApiError::BadParameter {
        name: name.to_owned(),
        detail: detail.into(),
    }
}

/// A payload path segment: letters, digits, `_` and `-`.
fn path_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// Parses the query string's pairs. Repeated `payload.*` pairs all apply; any other repeated
/// or unknown parameter is refused.
pub(crate) fn parse(pairs: &[(String, String)]) -> Result<JobQuery, ApiError> {
    let mut q = JobQuery {
        limit: DEFAULT_LIMIT,
        ..JobQuery::default()
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        if let Some(path) = name.strip_prefix("payload.") {
            let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
            if !keys.iter().all(|k| path_key(k)) {
                return Err(bad(
                    name,
                    "path segments may only hold letters, digits, '_' and '-'",
                ));
            }
            // JSON when it parses (42, true, "x"), else the text itself.
            let v = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.clone()));
            q.payload.push((keys, v));
            continue;
        }
        if seen.contains(&name.as_str()) {
            return Err(bad(name, "is given more than once"));
        }
        seen.push(name);
        match name.as_str() {
            "queue" => {
                q.queue = Some(QueueName::parse(value).map_err(|e| bad(name, e.to_string()))?);
            }
            "kind" => q.kind = Some(JobKind::parse(value).map_err(|e| bad(name, e.to_string()))?),
            "tenant" => {
                q.tenant = Some(Tenant::parse(value).map_err(|e| bad(name, e.to_string()))?);
            }
            "tag" => q.tag = Some(Tag::parse(value).map_err(|e| bad(name, e.to_string()))?),
            "state" => {
                q.state =
                    Some(JobState::parse(value).ok_or_else(|| {
                        bad(name, format!("{value:?} is not a state ({STATES})"))
                    })?);
            }
            "created_after" => {
                q.created_from = Some(UnixMillis::parse(value).map_err(|e| bad(name, e))?);
            }
            "created_before" => {
                q.created_to = Some(UnixMillis::parse(value).map_err(|e| bad(name, e))?);
            }
            "cursor" => {
                q.before = Some(JobId::parse(value).map_err(|_| {
                    bad(
                        name,
                        format!("{value:?} is not a cursor from a previous page"),
                    )
                })?);
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(
                            name,
                            format!("{value:?} is not a number from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            _ => {
                return Err(bad(name, format!("is not a filter ({FILTERS})")));
            }
        }
    }
    Ok(q)
}

/// The link to the page after the one ending at `last`: the same filters, a new cursor.
pub(crate) fn next_link(pairs: &[(String, String)], last: JobId) -> String {
    let mut kept: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "cursor")
        .cloned()
        .collect();
    kept.push(("cursor".into(), last.to_string()));
    format!(
        "/v1/jobs?{}",
        serde_urlencoded::to_string(&kept).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        serde_urlencoded::from_str(s).unwrap()
    }

    #[test]
    fn parses_every_filter() {
        let q = parse(&pairs(
            "queue=emails&state=dead&kind=email.send&tenant=acme&tag=tenant:7&created_after=2026-11-23T12:00:00Z&created_before=1795400000000&payload.user_id=42&payload.to.domain=x.org&limit=10",
        ))
        .unwrap();
        assert_eq!(q.queue.unwrap().as_str(), "emails");
        assert_eq!(q.state, Some(JobState::Dead));
        assert_eq!(q.tenant.unwrap().as_str(), "acme");
        assert_eq!(q.limit, 10);
        assert_eq!(q.created_to, Some(UnixMillis(1_795_400_000_000)));
        assert_eq!(
            q.payload,
            vec![
                (vec!["user_id".to_owned()], serde_json::json!(42)),
                (
                    vec!["to".to_owned(), "domain".to_owned()],
                    serde_json::json!("x.org")
                ),
            ]
        );
    }

    #[test]
    fn the_next_link_keeps_the_filters() {
        let id = JobId::new();
        let link = next_link(&pairs("queue=q&cursor=old&payload.a=1"), id);
        assert_eq!(link, format!("/v1/jobs?queue=q&payload.a=1&cursor={id}"));
    }
}
