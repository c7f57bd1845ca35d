//! The error body every KBS route answers with:
//! `{"type": "https://github.com/confidential-containers/kbs/errors/<Kind>", "detail": "…"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Prefix of the `type` URI in error bodies.
pub const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";

/// The `<Kind>` part of an error body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The auth request's `version` is not `0.4.0`.
    ProtocolVersion,
    /// The tee is unknown, or known but not enabled here.
    UnsupportedTee,
    /// The body is not the JSON the route expects.
    InvalidRequest,
    /// No valid session or admin credential.
    UnAuthenticated,
    /// A resource request carried neither a session cookie nor a token.
    TokenNotFound,
    /// The attestation's runtime-data nonce is not the session's nonce.
    NonceMismatch,
    /// The evidence did not verify.
    AttestationError,
    /// The tee's verifier exists in the protocol but not yet in tellus.
    NotImplemented,
    /// The resource does not exist.
    ResourceNotFound,
    /// The requested policy has never been set.
    PolicyNotFound,
    /// The resource policy denied the request (the detail says why).
    PolicyDeny,
    /// The tee public key's type or curve is not supported.
    UnsupportedTeeKey,
    /// The body exceeds `max_body_bytes`.
    PayloadTooLarge,
    /// Host enrollment refused (EK certificate, AK, request consistency).
    EnrollmentRefused,
    /// The enrollment id is unknown or was already used.
    EnrollmentNotFound,
    /// The enrollment challenge is older than `enrollment_ttl_secs`.
    EnrollmentExpired,
    /// The activation proof's secret does not match the credential.
    ActivationFailed,
    /// No such enrolled host.
    HostNotFound,
    /// Anything on the verifier's side.
    InternalError,
}

impl ErrorKind {
    /// The kind's name in the `type` URI.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ProtocolVersion => "ProtocolVersion",
            ErrorKind::UnsupportedTee => "UnsupportedTee",
            ErrorKind::InvalidRequest => "InvalidRequest",
            ErrorKind::UnAuthenticated => "UnAuthenticated",
            ErrorKind::TokenNotFound => "TokenNotFound",
            ErrorKind::NonceMismatch => "NonceMismatch",
            ErrorKind::AttestationError => "AttestationError",
            ErrorKind::NotImplemented => "NotImplemented",
            ErrorKind::ResourceNotFound => "ResourceNotFound",
            ErrorKind::PolicyNotFound => "PolicyNotFound",
            ErrorKind::PolicyDeny => "PolicyDeny",
            ErrorKind::UnsupportedTeeKey => "UnsupportedTeeKey",
            ErrorKind::PayloadTooLarge => "PayloadTooLarge",
            ErrorKind::EnrollmentRefused => "EnrollmentRefused",
            ErrorKind::EnrollmentNotFound => "EnrollmentNotFound",
            ErrorKind::EnrollmentExpired => "EnrollmentExpired",
            ErrorKind::ActivationFailed => "ActivationFailed",
            ErrorKind::HostNotFound => "HostNotFound",
            ErrorKind::InternalError => "InternalError",
        }
    }
}

/// An HTTP error answer: status, kind and a detail that says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{status} {}: {detail}", kind.as_str())]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: ErrorKind, detail: impl Into<String>) -> ApiError {
        ApiError { status, kind, detail: detail.into() }
    }

    pub fn bad_request(kind: ErrorKind, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, kind, detail)
    }

    pub fn unauthenticated(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorKind::UnAuthenticated, detail)
    }

    /// A verifier-side failure; the cause goes to the log, not the client.
    pub fn internal(what: &str, cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "{what}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::InternalError,
            format!("{what} failed on the verifier; retry later, and see the verifier's log if it persists"),
        )
    }

    /// The body as JSON.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "type": format!("{ERROR_TYPE_PREFIX}{}", self.kind.as_str()),
            "detail": self.detail,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut r = (self.status, body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r.extensions_mut().insert(self.kind);
        r
    }
}
