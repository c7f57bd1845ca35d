//! Admin routes, all behind `Authorization: Bearer <admin token>`:
//!
//! | route | body | stored as |
//! |---|---|---|
//! | `POST /kbs/v0/resource/{repo}/{type}/{tag}` | raw bytes | sealed resource |
//! | `POST /kbs/v0/attestation-policy` | `{"type":"rego","policy_id","policy":"<b64url>"}` | policy text under `policy_id` |
//! | `POST /kbs/v0/resource-policy` | `{"policy":"<b64url>"}` | policy text under `default` |
//! | `GET /kbs/v0/resource-policy` | — | answers `{"policy":"<b64url>"}` |
//! | `POST /kbs/v0/reference-value` | `{"version","type","payload":"<base64>"}` | payload `{name: [values]}`, one list per name |
//!
//! Policies are stored, not yet evaluated (the policy engine comes later).

use super::error::{ApiError, ErrorKind};
use super::kbs::{bearer, body_or_error, parse_json};
use super::{db, AppState};
use crate::storage::{PolicyKind, ResourcePath};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest policy id or reference-value name.
const MAX_NAME_LEN: usize = 128;

/// Checks the admin bearer token in constant time (against every
/// configured token, without stopping at the first match).
pub(crate) fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = match bearer(headers) {
        Some(Ok(t)) => t,
        _ => {
            return Err(ApiError::unauthenticated(
                "admin routes need `Authorization: Bearer <admin token>` (see admin_tokens in the configuration, or the admin-token file in the state directory)",
            ))
        }
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut ok = false;
    for known in state.admin_token_digests.iter() {
        ok |= super::verifier::constant_time_eq(digest.as_ref(), known);
    }
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthenticated("the admin token is wrong; check admin_tokens in the configuration, or the admin-token file in the state directory"))
    }
}

fn ok() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response()
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorKind::InvalidRequest, detail)
}

/// Every JSON admin route starts the same way: check the admin token, read
/// the body within the size limit, decode it as `T`; `example` tells the
/// caller what to send instead.
fn admin_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    what: &str,
    example: &str,
) -> Result<T, ApiError> {
    require_admin(state, headers)?;
    let body = body_or_error(body)?;
    serde_json::from_value(parse_json(&body, what)?)
        .map_err(|e| invalid(format!("the body is not a {what} ({e}); send {example}")))
}

fn check_name(what: &str, s: &str) -> Result<(), ApiError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN || s.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{what} must be 1 to {MAX_NAME_LEN} characters without control characters"
        )));
    }
    Ok(())
}

/// Decodes a base64url policy (padding tolerated) into UTF-8 text.
fn decode_policy(b64: &str) -> Result<String, ApiError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .map_err(|_| invalid("`policy` must be base64url (RFC 4648 §5) of the policy text"))?;
    String::from_utf8(bytes).map_err(|_| invalid("the decoded `policy` must be UTF-8 text"))
}

/// `POST /kbs/v0/resource/{repo}/{type}/{tag}`.
pub async fn put_resource(
    State(state): State<AppState>,
    Path((repo, kind, tag)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let body = body_or_error(body)?;
    let path = ResourcePath::new(&repo, &kind, &tag).map_err(|e| invalid(e.to_string()))?;
    let sealed = state
        .resource_key
        .seal(&state.rng, &path, &body)
        .map_err(|e| ApiError::internal("encrypting the resource", e))?;
    let p = path.clone();
    db(&state, "storing the resource", move |s| s.put_resource(&p, &sealed)).await?;
    tracing::info!(resource = %path, bytes = body.len(), "resource stored");
    Ok(ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestationPolicyBody {
    #[serde(rename = "type")]
    kind: String,
    policy_id: String,
    policy: String,
}

/// `POST /kbs/v0/attestation-policy`.
pub async fn set_attestation_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: AttestationPolicyBody = admin_json(
        &state,
        &headers,
        body,
        "attestation policy",
        r#"{"type":"rego","policy_id":"…","policy":"<base64url>"}"#,
    )?;
    if b.kind != "rego" {
        return Err(invalid("attestation policy `type` must be \"rego\""));
    }
    check_name("policy_id", &b.policy_id)?;
    let text = decode_policy(&b.policy)?;
    let id = b.policy_id.clone();
    db(&state, "storing the policy", move |s| s.put_policy(PolicyKind::Attestation, &id, &text))
        .await?;
    tracing::info!(policy_id = %b.policy_id, "attestation policy stored");
    Ok(ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcePolicyBody {
    policy: String,
}

/// `POST /kbs/v0/resource-policy`.
pub async fn set_resource_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: ResourcePolicyBody =
        admin_json(&state, &headers, body, "resource policy", r#"{"policy":"<base64url>"}"#)?;
    let text = decode_policy(&b.policy)?;
    db(&state, "storing the policy", move |s| s.put_policy(PolicyKind::Resource, "default", &text))
        .await?;
    tracing::info!("resource policy stored");
    Ok(ok())
}

/// `GET /kbs/v0/resource-policy`.
pub async fn get_resource_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let text = db(&state, "reading the policy", |s| s.get_policy(PolicyKind::Resource, "default"))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorKind::PolicyNotFound,
                "no resource policy has been set; POST one to /kbs/v0/resource-policy",
            )
        })?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let body = serde_json::to_vec(&json!({"policy": b64}))
        .map_err(|e| ApiError::internal("serialising", e))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize)]
struct ReferenceValueBody {
    version: String,
    #[serde(rename = "type")]
    kind: String,
    payload: String,
}

/// `POST /kbs/v0/reference-value`.
pub async fn set_reference_values(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: ReferenceValueBody = admin_json(
        &state,
        &headers,
        body,
        "reference value message",
        r#"{"version":"0.1.0","type":"sample","payload":"<base64>"}"#,
    )?;
    if b.version != "0.1.0" {
        return Err(invalid("reference value message `version` must be \"0.1.0\""));
    }
    if b.kind != "sample" {
        return Err(invalid(
            "reference value `type` must be \"sample\" (a JSON map of name to values)",
        ));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(b.payload.trim())
        .map_err(|_| invalid("`payload` must be standard base64"))?;
    let map = match serde_json::from_slice::<Value>(&payload) {
        Ok(Value::Object(m)) if !m.is_empty() => m,
        _ => {
            return Err(invalid(
                "the decoded `payload` must be a non-empty JSON object {\"<name>\": [values…]}",
            ))
        }
    };
    let mut entries = Vec::with_capacity(map.len());
    for (name, v) in map {
        check_name("reference value name", &name)?;
        let values = match v {
            Value::Array(a) => a,
            other => vec![other],
        };
        entries.push((name, values));
    }
    let n = entries.len();
    db(&state, "storing reference values", move |s| {
        entries.iter().try_for_each(|(name, values)| s.put_reference_values(name, values))
    })
    .await?;
    tracing::info!(names = n, "reference values stored");
    Ok(ok())
}
