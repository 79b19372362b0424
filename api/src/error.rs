//! The API's one error type: every failure leaves as RFC 9457 `application/problem+json`.
//! Server-side faults say little; their cause goes to the log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug)]
#[non_exhaustive]
pub enum ApiError {
    /// The body is not JSON at all (syntax error, truncated).
    MalformedJson(String),
    /// Well-formed, but a field is wrong: bad queue name, kind, value out of range.
    Invalid(String),
    NotFound(String),
    /// A query parameter is malformed; names it.
    BadParameter {
        name: String,
        detail: String,
    },
    TooLarge(usize),
    UnsupportedMediaType(String),
    /// The broker or store cannot be reached; the request may be retried.
    Unavailable(String),
    /// The request conflicts with the resource's state (cancelling a finished job).
    Conflict(String),
    /// This deployment's broker cannot do what was asked (e.g. pool-wide limits on the
    /// embedded broker).
    Unsupported(String),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
        match self {
            Self::MalformedJson(d) => (
                StatusCode::BAD_REQUEST,
                "urn:ferry:problem:malformed-json",
                "Malformed JSON",
                d.clone(),
            ),
            Self::Invalid(d) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:ferry:problem:invalid-request",
                "Invalid request",
                d.clone(),
            ),
            Self::BadParameter { name, detail } => (
                StatusCode::BAD_REQUEST,
                "urn:ferry:problem:invalid-parameter",
                "Invalid query parameter",
                format!("query parameter {name:?}: {detail}"),
            ),
            Self::NotFound(d) => (
                StatusCode::NOT_FOUND,
                "urn:ferry:problem:not-found",
                "Not found",
                d.clone(),
            ),
            Self::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "urn:ferry:problem:body-too-large",
                "Request body too large",
                format!("the request body is larger than the limit of {limit} bytes"),
            ),
            Self::UnsupportedMediaType(got) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "urn:ferry:problem:unsupported-media-type",
                "Unsupported media type",
                format!("expected content-type application/json, got {got}"),
            ),
            Self::Conflict(d) => (
                StatusCode::CONFLICT,
                "urn:ferry:problem:conflict",
                "Conflict",
                d.clone(),
            ),
            Self::Unsupported(d) => (
                StatusCode::NOT_IMPLEMENTED,
                "urn:ferry:problem:unsupported",
                "Not supported by this broker",
                d.clone(),
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "urn:ferry:problem:unavailable",
                "Service unavailable",
                "a backing service is unavailable; nothing was accepted; retry later".to_owned(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Unavailable(cause) = &self {
            tracing::error!(%cause, "request failed on a backing service");
        }
        let (status, kind, title, detail) = self.parts();
        let body = serde_json::to_vec(&Problem {
            kind,
            title,
            status: status.as_u16(),
            detail,
        })
        .unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}
