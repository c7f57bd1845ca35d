//! Admin routes, all behind `Authorization: Bearer <admin token>`:
//!
//! | route | body | stored as |
//! |---|---|---|
//! | `POST /kbs/v0/resource/{repo}/{type}/{tag}[?required-labels=k=v,k2=v2]` | raw bytes | sealed resource + the host labels a requester must carry |
//! | `POST /kbs/v0/attestation-policy` | `{"type":"rego","policy_id","policy":"<b64url>"}` | new version of the policy under `policy_id` (`default` is evaluated) |
//! | `POST /kbs/v0/resource-policy` | `{"policy":"<b64url>"}` | new version of the resource policy |
//! | `GET /kbs/v0/resource-policy` | — | answers `{"policy":"<b64url>"}`, the policy in force (the built-in one until one is uploaded) |
//! | `POST /kbs/v0/reference-value` | `{"version":"0.1.0","type","payload":"<base64>","expires"?,"provenance"?}` | merged into the reference values |
//!
//! Policies are compiled with regorus before they are stored: a syntax
//! error (the message names `line:col`), a package other than `policy`, or
//! no `allow` rule answers 400, and the policy in force stays in force.
//! Reference-value `type`: `tellus` (payload: the output of `tellus measure
//! predict --output json`) or `sample` (payload: `{"<name>": ["alg:hex" |
//! {"digest","expires","provenance"}, …]}`); either is read by
//! `tellus_policies::ReferenceSet::from_json`.

use super::error::{ApiError, ErrorKind};
use super::kbs::{bearer, body_or_error, parse_json};
use super::policy::RESOURCE_POLICY_ID;
use super::{audit, db, AppState};
use crate::audit::AuditEvent;
use crate::storage::{PolicyKind, ResourcePath};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tellus_policies::ReferenceSet;

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

/// Longest `required-labels` query value.
const MAX_LABEL_QUERY: usize = 4096;

/// Parses `required-labels=k=v,k2=v2` out of a query string (no percent
/// decoding: label names and values here are `[A-Za-z0-9._:/-]`).
fn required_labels(query: Option<&str>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    let Some(q) = query else { return Ok(out) };
    if q.len() > MAX_LABEL_QUERY {
        return Err(invalid(format!("the query string is longer than {MAX_LABEL_QUERY} bytes")));
    }
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let Some(list) = part.strip_prefix("required-labels=") else {
            return Err(invalid(format!(
                "unknown query parameter {:?}; the only one is required-labels=k=v,k2=v2",
                part.chars().take(64).collect::<String>()
            )));
        };
        for pair in list.split(',').filter(|p| !p.is_empty()) {
            let ok = |t: &str| {
                !t.is_empty()
                    && t.len() <= super::hosts::MAX_LABEL_NAME_LEN
                    && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
            };
            match pair.split_once('=') {
                Some((k, v)) if ok(k) && ok(v) => {
                    out.insert(k.to_owned(), v.to_owned());
                }
                _ => {
                    return Err(invalid(
                        "required-labels must be k=v pairs separated by commas, each of A-Z a-z 0-9 . _ : / -",
                    ))
                }
            }
        }
    }
    if out.len() > super::hosts::MAX_LABELS {
        return Err(invalid(format!("at most {} required labels", super::hosts::MAX_LABELS)));
    }
    Ok(out)
}

/// `POST /kbs/v0/resource/{repo}/{type}/{tag}[?required-labels=k=v,…]`.
pub async fn put_resource(
    State(state): State<AppState>,
    Path((repo, kind, tag)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let body = body_or_error(body)?;
    let path = ResourcePath::new(&repo, &kind, &tag).map_err(|e| invalid(e.to_string()))?;
    let labels = required_labels(uri.query())?;
    let sealed = state
        .resource_key
        .seal(&state.rng, &path, &body)
        .map_err(|e| ApiError::internal("encrypting the resource", e))?;
    let p = path.clone();
    let n = labels.len();
    // Logged before the change is made; never the resource's content or hash.
    let detail = json!({"bytes": body.len(), "required_labels": labels});
    audit(&state, AuditEvent::ResourceUploaded, path.to_string(), detail).await?;
    db(&state, "storing the resource", move |s| s.put_resource(&p, &sealed, &labels)).await?;
    tracing::info!(resource = %path, bytes = body.len(), required_labels = n, "resource stored");
    Ok(ok())
}

/// What the audit log keeps of a policy change: its size and SHA-256 (the
/// text itself is in the policy history).
fn policy_detail(text: &str) -> Value {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    json!({"bytes": text.len(), "sha256": hex::encode(d)})
}

/// What the audit log keeps of a reference-value change: the names (at
/// most 64) and how many digests.
pub(crate) fn reference_detail(set: &ReferenceSet) -> Value {
    let names: Vec<&String> = set.values.keys().take(64).collect();
    json!({"names": names, "name_count": set.values.len(), "digests": set.len()})
}

/// Compiles an uploaded policy; 400 with regorus' message otherwise.
fn compile_upload(file: &str, text: &str) -> Result<(), ApiError> {
    super::policy::check_upload(file, text)
        .map(|_| ())
        .map_err(|e| invalid(format!("the policy is refused and the policy in force stays: {e}")))
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
    compile_upload(&format!("{}.rego", b.policy_id), &text)?;
    let id = b.policy_id.clone();
    audit(&state, AuditEvent::PolicyChanged, format!("attestation:{id}"), policy_detail(&text))
        .await?;
    let version = db(&state, "storing the policy", move |s| {
        s.put_policy(PolicyKind::Attestation, &id, &text)
    })
    .await?;
    tracing::info!(policy_id = %b.policy_id, version, "attestation policy stored");
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
    compile_upload("resource-policy.rego", &text)?;
    let subject = format!("resource:{RESOURCE_POLICY_ID}");
    audit(&state, AuditEvent::PolicyChanged, subject, policy_detail(&text)).await?;
    let version = db(&state, "storing the policy", move |s| {
        s.put_policy(PolicyKind::Resource, RESOURCE_POLICY_ID, &text)
    })
    .await?;
    tracing::info!(version, "resource policy stored");
    Ok(ok())
}

/// `GET /kbs/v0/resource-policy`.
pub async fn get_resource_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let text = db(&state, "reading the policy", |s| {
        s.get_policy(PolicyKind::Resource, RESOURCE_POLICY_ID)
    })
    .await?
    .unwrap_or_else(|| tellus_policies::engine::RESOURCE_DEFAULT_REGO.to_owned());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let body = serde_json::to_vec(&json!({"policy": b64}))
        .map_err(|e| ApiError::internal("serialising", e))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceValueBody {
    version: String,
    #[serde(rename = "type")]
    kind: String,
    payload: String,
    /// RFC 3339 expiry for every value without its own.
    #[serde(default)]
    expires: Option<String>,
    /// Provenance for every value without its own.
    #[serde(default)]
    provenance: Option<String>,
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
        r#"{"version":"0.1.0","type":"tellus","payload":"<base64 of `tellus measure predict --output json`>","expires":"2027-01-01T00:00:00Z","provenance":"…"}"#,
    )?;
    if b.version != "0.1.0" {
        return Err(invalid("reference value message `version` must be \"0.1.0\""));
    }
    if b.kind != "sample" && b.kind != "tellus" {
        return Err(invalid(
            "reference value `type` must be \"tellus\" (the output of `tellus measure predict --output json`) or \"sample\" (a JSON map of name to digests)",
        ));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(b.payload.trim())
        .map_err(|_| invalid("`payload` must be standard base64"))?;
    let doc: Value = serde_json::from_slice(&payload)
        .map_err(|e| invalid(format!("the decoded `payload` is not JSON ({e})")))?;
    if b.kind == "tellus" && doc.get("records").is_none() {
        return Err(invalid("a `tellus` payload is the output of `tellus measure predict --output json` (it has `records`)"));
    }
    let set = ReferenceSet::from_json(&doc, b.expires.as_deref(), b.provenance.as_deref())
        .map_err(|e| invalid(e.to_string()))?;
    let (names, digests) = (set.values.len(), set.len());
    audit(&state, AuditEvent::ReferenceValuesChanged, "reference-values", reference_detail(&set))
        .await?;
    db(&state, "storing reference values", move |s| s.merge_reference_values(&set)).await?;
    tracing::info!(names, digests, "reference values merged");
    Ok(ok())
}
