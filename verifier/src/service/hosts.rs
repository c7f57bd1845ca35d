//! Host enrollment over HTTP (design.md, "Host enrollment"; messages in
//! [`tellus_protocol::enrollment`], checks in
//! [`crate::registrar::enrollment`]).
//!
//! | route | auth | what |
//! |---|---|---|
//! | `POST /tellus/v1/hosts/enroll` | — (the TPM proves itself) | `EnrollRequest` → `EnrollChallenge` |
//! | `POST /tellus/v1/hosts/activate` | — | `ActivationProof` → `EnrollResult` |
//! | `GET /tellus/v1/hosts/{host_id}` | admin | the host record |
//! | `PUT /tellus/v1/hosts/{host_id}/labels` | admin | replace the labels (JSON map) |
//!
//! A challenge is kept as a pending enrollment for `enrollment_ttl_secs`
//! and can be answered once: the proof consumes it whether it matches or
//! not, so a wrong guess never gets a second try. Re-enrolling a host
//! (same EK, so same host id) keeps the labels an admin set.

use super::admin::require_admin;
use super::error::{ApiError, ErrorKind};
use super::kbs::{body_or_error, parse_json};
use super::{audit, audit_blocking, db, run_sync, AppState};
use crate::audit::AuditEvent;
use crate::config::Config;
use crate::registrar::ek_cert::{TrustAnchors, ValidationTime};
use crate::registrar::enrollment::{self, EnrollError, EnrollOptions};
use crate::storage::HostRecord;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use tellus_protocol::enrollment::{ActivationProof, EnrollRequest, EnrollResult};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Most labels a host may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label name.
pub const MAX_LABEL_NAME_LEN: usize = 128;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 512;
/// Longest enrollment id accepted in a proof (real ones are 32 hex digits).
const MAX_ENROLLMENT_ID_LEN: usize = 64;

/// Host enrollment settings, loaded once at start.
#[derive(Debug)]
pub struct EnrollmentSettings {
    /// The EK CA trust anchors, or why there are none (the message refuses
    /// every enrollment that needs them).
    pub anchors: Result<TrustAnchors, String>,
    pub options: EnrollOptions,
    pub ttl_secs: u64,
}

impl EnrollmentSettings {
    /// Loads the EK CA certificates from the configured directory. A
    /// missing, empty or unreadable directory is not fatal: the service
    /// starts and refuses enrollments, saying why.
    pub fn load(config: &Config) -> EnrollmentSettings {
        let dir = config.ek_ca_dir();
        let anchors = match TrustAnchors::from_dir(&dir) {
            Ok(a) => {
                tracing::info!(dir = %dir.display(), certificates = a.len(), "EK CA trust anchors loaded");
                Ok(a)
            }
            Err(e) => {
                let msg = format!(
                    "this verifier has no usable EK CA certificates ({e}); the operator must put \
                     the TPM manufacturers' EK CA certificates (PEM or DER) in {} (ek_ca_dir) \
                     and restart the verifier",
                    dir.display()
                );
                tracing::warn!("{msg}");
                Err(msg)
            }
        };
        EnrollmentSettings {
            anchors,
            options: EnrollOptions { allow_uncertified_ek: config.allow_uncertified_ek },
            ttl_secs: config.enrollment_ttl_secs,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json_response(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(b) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => ApiError::internal("serialising the answer", e).into_response(),
    }
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorKind::InvalidRequest, detail)
}

fn refused(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorKind::EnrollmentRefused, detail)
}

/// Records a refused enrollment step in the audit log and returns the
/// refusal. The request is refused either way; a failed audit append is
/// returned instead (the client sees an internal error) so that it is
/// noticed.
async fn audit_refusal(state: &AppState, subject: &str, step: &str, err: ApiError) -> ApiError {
    let detail = json!({"step": step, "kind": err.kind.as_str(), "error": err.detail});
    match audit(state, AuditEvent::HostEnrollRefused, subject, detail).await {
        Ok(()) => err,
        Err(audit_err) => audit_err,
    }
}

/// `POST /tellus/v1/hosts/enroll`.
pub async fn enroll(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body)?;
    let req: EnrollRequest = serde_json::from_value(parse_json(&body, "host enrollment request")?)
        .map_err(|e| {
            invalid(format!(
                "not an enrollment request ({e}); send what `tellus host enroll-request` prints"
            ))
        })?;
    let settings = &state.enrollment;
    let empty = TrustAnchors::new();
    let anchors = match &settings.anchors {
        Ok(a) => a,
        // Without anchors only uncertified EKs can pass, and only if allowed.
        Err(_) if settings.options.allow_uncertified_ek && req.ek_cert.is_none() => &empty,
        Err(msg) => {
            state.metrics.enrollments_refused.fetch_add(1, Ordering::Relaxed);
            return Err(audit_refusal(&state, &req.host_id, "enroll", refused(msg.clone())).await);
        }
    };
    let begun = enrollment::begin_with_options(
        &req,
        anchors,
        ValidationTime::Now,
        settings.options,
        &state.rng,
    );
    let (challenge, pending) = match begun {
        Ok(v) => v,
        Err(e) => {
            state.metrics.enrollments_refused.fetch_add(1, Ordering::Relaxed);
            let err = match e {
                EnrollError::Random | EnrollError::MakeCredential(_) => {
                    return Err(ApiError::internal("making the enrollment challenge", e))
                }
                e => refused(e.to_string()),
            };
            return Err(audit_refusal(&state, &req.host_id, "enroll", err).await);
        }
    };
    let host_id = pending.host_id.clone();
    let detail = json!({
        "enrollment_id": challenge.enrollment_id,
        "ek_certified": req.ek_cert.is_some(),
    });
    db(&state, "storing the pending enrollment", move |s| s.put_pending(&pending)).await?;
    audit(&state, AuditEvent::HostEnrollRequested, &host_id, detail).await?;
    state.metrics.enrollments.fetch_add(1, Ordering::Relaxed);
    tracing::info!(host_id = %host_id, enrollment_id = %challenge.enrollment_id, "enrollment challenge issued");
    Ok(json_response(&challenge))
}

/// `POST /tellus/v1/hosts/activate`.
pub async fn activate(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body)?;
    let proof: ActivationProof = serde_json::from_value(parse_json(&body, "activation proof")?)
        .map_err(|e| {
            invalid(format!(
                "not an activation proof ({e}); send what `tellus host activate` prints"
            ))
        })?;
    let id = proof.enrollment_id.clone();
    if id.is_empty()
        || id.len() > MAX_ENROLLMENT_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(invalid("enrollment_id must be the hex id of the enrollment challenge"));
    }
    let taken = db(&state, "reading the pending enrollment", move |s| s.take_pending(&id)).await?;
    let fail = |e: ApiError| {
        state.metrics.activations_failed.fetch_add(1, Ordering::Relaxed);
        e
    };
    let Some(pending) = taken else {
        return Err(fail(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::EnrollmentNotFound,
            "no pending enrollment with this id: it was never issued, was already answered, or \
             expired and was swept; run `tellus host enroll` again",
        )));
    };
    if pending.is_expired(unix_now(), state.enrollment.ttl_secs) {
        return Err(fail(ApiError::new(
            StatusCode::GONE,
            ErrorKind::EnrollmentExpired,
            format!(
                "the enrollment challenge expired (it is valid for {} seconds); run `tellus host \
                 enroll` again",
                state.enrollment.ttl_secs
            ),
        )));
    }
    let host = match enrollment::finish(&pending, &proof) {
        Ok(h) => h,
        Err(e) => {
            let err = fail(match e {
                EnrollError::ActivationFailed => {
                    ApiError::new(StatusCode::FORBIDDEN, ErrorKind::ActivationFailed, e.to_string())
                }
                e => invalid(e.to_string()),
            });
            return Err(audit_refusal(&state, &pending.host_id, "activate", err).await);
        }
    };
    let decode = |what: &str, b64: &str| {
        B64.decode(b64).map_err(|e| ApiError::internal(&format!("decoding the stored {what}"), e))
    };
    let ek_public = decode("EK public", &host.ek_public)?;
    let ak_public = decode("AK public", &host.ak_public)?;
    let host_id = host.host_id.clone();
    // Logged before the host is stored: no host becomes usable without
    // its entry.
    let detail = json!({"enrollment_id": proof.enrollment_id, "ek_anchor": host.ek_anchor});
    audit(&state, AuditEvent::HostActivated, &host_id, detail).await?;
    let record = db(&state, "storing the host", move |s| {
        let labels = s.get_host(&host_id)?.map(|h| h.labels).unwrap_or_default();
        let record = HostRecord { host_id, ek_public, ak_public, labels, activated: true };
        s.put_host(&record)?;
        Ok(record)
    })
    .await?;
    state.metrics.activations.fetch_add(1, Ordering::Relaxed);
    tracing::info!(host_id = %record.host_id, ek_anchor = ?host.ek_anchor, "host enrolled and activated");
    Ok(json_response(&EnrollResult {
        host_id: record.host_id,
        activated: record.activated,
        labels: record.labels,
    }))
}

/// A host as the admin routes show it.
#[derive(serde::Serialize)]
struct HostView<'a> {
    host_id: &'a str,
    activated: bool,
    labels: &'a BTreeMap<String, String>,
    /// Base64 of the EK `TPM2B_PUBLIC`.
    ek_public: String,
    /// Base64 of the AK `TPM2B_PUBLIC`.
    ak_public: String,
}

fn host_view(h: &HostRecord) -> Response {
    json_response(&HostView {
        host_id: &h.host_id,
        activated: h.activated,
        labels: &h.labels,
        ek_public: B64.encode(&h.ek_public),
        ak_public: B64.encode(&h.ak_public),
    })
}

fn check_host_id(id: &str) -> Result<(), ApiError> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(invalid("the host id is 64 hex digits (SHA-256 of the EK public, `sha256sum ek.pub`)"))
    }
}

fn host_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorKind::HostNotFound,
        format!("no host {id} is enrolled; enroll it with `tellus host enroll` first"),
    )
}

/// The host id of an admin route, lowercase, once the caller is an admin
/// and the id is well-formed.
fn admin_host_id(state: &AppState, headers: &HeaderMap, host_id: &str) -> Result<String, ApiError> {
    require_admin(state, headers)?;
    check_host_id(host_id)?;
    Ok(host_id.to_ascii_lowercase())
}

/// `GET /tellus/v1/hosts/{host_id}` (admin).
pub async fn get_host(
    State(state): State<AppState>,
    Path(host_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = admin_host_id(&state, &headers, &host_id)?;
    match db(&state, "reading the host", move |s| s.get_host(&id)).await? {
        Some(h) => Ok(host_view(&h)),
        None => Err(host_not_found(&host_id)),
    }
}

/// `PUT /tellus/v1/hosts/{host_id}/labels` (admin): replaces the labels.
pub async fn put_labels(
    State(state): State<AppState>,
    Path(host_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = admin_host_id(&state, &headers, &host_id)?;
    let body = body_or_error(body)?;
    let labels: BTreeMap<String, String> = serde_json::from_value(parse_json(&body, "label map")?)
        .map_err(|e| {
            invalid(format!(
                "labels must be a JSON object of strings ({e}), e.g. {{\"site\": \"eu-1\"}}"
            ))
        })?;
    if labels.len() > MAX_LABELS {
        return Err(invalid(format!("at most {MAX_LABELS} labels per host")));
    }
    for (k, v) in &labels {
        if k.is_empty() || k.len() > MAX_LABEL_NAME_LEN || k.chars().any(char::is_control) {
            return Err(invalid(format!(
                "label names must be 1 to {MAX_LABEL_NAME_LEN} bytes without control characters"
            )));
        }
        if v.len() > MAX_LABEL_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(invalid(format!(
                "label values must be at most {MAX_LABEL_VALUE_LEN} bytes without control \
                 characters"
            )));
        }
    }
    let detail = json!({"labels": labels});
    let host = db(&state, "storing the host labels", move |s| {
        if !s.set_host_labels(&id, &labels)? {
            return Ok(None);
        }
        s.get_host(&id)
    })
    .await?;
    match host {
        Some(h) => {
            audit(&state, AuditEvent::HostChanged, &h.host_id, detail).await?;
            tracing::info!(host_id = %h.host_id, labels = h.labels.len(), "host labels set");
            Ok(host_view(&h))
        }
        None => Err(host_not_found(&host_id)),
    }
}

/// `DELETE /tellus/v1/hosts/{host_id}/tpm-clock` (admin): forgets the newest
/// TPM clock state recorded for the host (see [`super::tpm_verifier`]), so
/// its next quote is compared with nothing. For a hardware TPM after
/// TPM2_Clear, which keeps the EK but sets resetCount back to zero; never
/// for a host whose TPM state may have been restored. Audited before it
/// takes effect; answers what was forgotten (`null` when nothing was
/// recorded).
pub async fn forget_tpm_clock(
    State(state): State<AppState>,
    Path(host_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = admin_host_id(&state, &headers, &host_id)?;
    // Read, audit and delete in that order, in one piece: the entry names
    // what is deleted, and nothing is deleted unaudited.
    let key = id.clone();
    let was = run_sync(&state, "forgetting the TPM clock", move |st| {
        let store_err = |what| move |e| ApiError::internal(what, e);
        if st.store.get_host(&key).map_err(store_err("reading the host"))?.is_none() {
            return Err(host_not_found(&host_id));
        }
        let was = st.store.tpm_clock(&key).map_err(store_err("reading the TPM clock"))?;
        let detail = json!({"tpm_clock": "forgotten", "was": was});
        audit_blocking(st, AuditEvent::HostChanged, &key, detail)?;
        st.store.forget_tpm_clock(&key).map_err(store_err("forgetting the TPM clock"))?;
        Ok::<_, ApiError>(was)
    })
    .await?;
    tracing::warn!(host_id = %id, "TPM clock history forgotten by an administrator");
    Ok(json_response(&json!({"host_id": id, "forgotten": was})))
}
