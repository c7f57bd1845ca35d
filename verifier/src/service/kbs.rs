//! The KBS 0.4.0 routes: `/kbs/v0/auth`, `/kbs/v0/attest`,
//! `GET /kbs/v0/resource/{repo}/{type}/{tag}`.
//!
//! Decisions:
//! - a runtime-data nonce that is not the session's answers **401**
//!   `NonceMismatch`: the attestation is not part of this session, and
//!   the client's remedy is a new session (`/kbs/v0/auth`), as for any
//!   other authentication failure; evidence that does not verify answers
//!   403 `AttestationError`;
//! - evidence that verifies is appraised by the attestation policy
//!   ([`super::policy`]); the answer is 200 with a token whose EAR status is
//!   `affirming` or `contraindicated` (as Trustee does), the latter carrying
//!   the policy's reasons (`tellus.reasons`), which are also logged;
//! - a resource request (attested session cookie, or a valid token of this
//!   verifier) is decided by the resource policy over the token's result,
//!   its claims and the resource's required host labels; a denial answers
//!   403 `PolicyDeny` whose detail lists every failing rule, claim and
//!   expected value.

use super::error::{ApiError, ErrorKind};
use super::sessions::Wanted;
use super::verifier::VerifyError;
use super::{audit, audit_maker, jwe, now_ms, queued, run_sync, token, AppState};
use crate::audit::AuditEvent;
use crate::storage::{AttestationRecord, Attested, AuditMaker, ResourcePath, Session};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use kbs_types::{Attestation, Challenge, Request, TeePubKey};
use ring::rand::SecureRandom;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;

/// The protocol version this verifier speaks.
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kbs-session-id";

/// The session id in a `Cookie` header, if well-formed (32 lowercase hex).
pub fn session_id_from_cookie(header: &str) -> Option<&str> {
    if header.len() > 8192 {
        return None;
    }
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == SESSION_COOKIE
            && v.len() == 32
            && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then_some(v)
    })
}

/// The request body, or 413/400 with the error body.
pub(crate) fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorKind::PayloadTooLarge,
                "the request body exceeds max_body_bytes of the verifier's configuration; send less",
            )
        } else {
            ApiError::bad_request(ErrorKind::InvalidRequest, format!("cannot read the body: {r}"))
        }
    })
}

/// Parses a JSON body into a `Value` (serde_json limits nesting to 128).
pub(crate) fn parse_json(body: &[u8], what: &str) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            ErrorKind::InvalidRequest,
            format!("the body is not valid JSON ({e}); send a {what} as JSON"),
        )
    })
}

/// The answer to a successful `POST /kbs/v0/attest` (serialised from the
/// borrowed token, which is ~6 KB).
#[derive(serde::Serialize)]
struct TokenAnswer<'a> {
    token: &'a str,
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(b) => (status, [(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => ApiError::internal("serialising the answer", e).into_response(),
    }
}

fn session_cookie(id: &str, expires_at_ms: i64) -> Result<HeaderValue, ApiError> {
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(expires_at_ms).unwrap_or(0));
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; Expires={}",
        httpdate::fmt_http_date(at)
    ))
    .map_err(|e| ApiError::internal("making the session cookie", e))
}

/// `POST /kbs/v0/auth`.
pub async fn auth(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body)?;
    let value = parse_json(&body, "KBS Request {\"version\", \"tee\", \"extra-params\"}")?;
    match value.get("version") {
        Some(Value::String(v)) if v == PROTOCOL_VERSION => {}
        other => {
            let got = match other {
                Some(Value::String(v)) => format!("{:?}", v.chars().take(32).collect::<String>()),
                Some(_) => "a non-string".into(),
                None => "nothing".into(),
            };
            return Err(ApiError::bad_request(
                ErrorKind::ProtocolVersion,
                format!("this verifier speaks KBS protocol {PROTOCOL_VERSION}; the request's `version` is {got}; upgrade the client"),
            ));
        }
    }
    let unsupported = |tee: &str| {
        let mut known: Vec<&str> = state.verifiers.keys().map(String::as_str).collect();
        known.sort_unstable();
        ApiError::bad_request(
            ErrorKind::UnsupportedTee,
            format!(
                "tee {:?} is not supported here; supported: {}",
                tee.chars().take(32).collect::<String>(),
                known.join(", ")
            ),
        )
    };
    let request: Request = match Request::deserialize(&value) {
        Ok(r) => r,
        Err(e) => {
            return Err(match value.get("tee") {
                Some(Value::String(t)) if t.parse::<kbs_types::Tee>().is_err() => unsupported(t),
                _ => ApiError::bad_request(
                    ErrorKind::InvalidRequest,
                    format!("not a KBS Request ({e}); send {{\"version\":\"0.4.0\",\"tee\":\"tpm\",\"extra-params\":{{}}}}"),
                ),
            });
        }
    };
    let tee = request.tee.to_string();
    if !state.verifiers.contains_key(&tee) {
        return Err(unsupported(&tee));
    }

    let mut nonce = [0u8; 32];
    state
        .rng
        .fill(&mut nonce)
        .map_err(|_| ApiError::internal("making a nonce", "SystemRandom failed"))?;
    let session = Session {
        id: uuid::Uuid::new_v4().simple().to_string(),
        nonce: B64.encode(nonce),
        tee,
        expires_at_ms: now_ms().saturating_add(state.settings.session_lifetime.as_millis() as i64),
        attested: None,
    };
    let cookie = session_cookie(&session.id, session.expires_at_ms)?;
    let challenge =
        Challenge { nonce: session.nonce.clone(), extra_params: Value::String(String::new()) };
    let kept = session.clone();
    queued("creating the session", |done| state.store.queue_create_session(session, done)).await?;
    state.sessions.created(kept);
    state.metrics.auth.fetch_add(1, Ordering::Relaxed);
    let mut resp = json_response(StatusCode::OK, &challenge);
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// The live session named by the request's cookie: from the sessions
/// this process committed when it is there in a state `wanted` allows,
/// else from the store.
fn session_from_headers(
    state: &AppState,
    headers: &HeaderMap,
    wanted: Wanted,
) -> Result<Option<Session>, ApiError> {
    let Some(id) = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session_id_from_cookie)
        .map(str::to_owned)
    else {
        return Ok(None);
    };
    let now = now_ms();
    if let Some(s) = state.sessions.get(&id, now, wanted) {
        return Ok(Some(s));
    }
    let session =
        state.store.get_session(&id).map_err(|e| ApiError::internal("reading the session", e))?;
    Ok(session.filter(|s| s.expires_at_ms > now))
}

fn attest_failed(state: &AppState, e: ApiError) -> ApiError {
    state.metrics.attest_failed.fetch_add(1, Ordering::Relaxed);
    e
}

/// `POST /kbs/v0/attest`. Judging the evidence runs in one piece
/// (`super::run_sync`): the session lookup, the evidence verification,
/// the policy and the token signature. Recording the attestation (session,
/// TPM clock and audit entry in one write) is then queued for the store's
/// group commit, and the token is sent once it is committed.
pub async fn attest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let session = run_sync(&state, "reading the session", |st| {
        session_from_headers(st, &headers, Wanted::Any)
    })
        .await?
        .ok_or_else(|| {
            attest_failed(
                &state,
                ApiError::unauthenticated(
                    "no live KBS session: send the kbs-session-id cookie from POST /kbs/v0/auth (sessions expire; start a new one)",
                ),
            )
        })?;
    let prefix = session.id[..8].to_owned();
    let tee = session.tee.clone();
    let judged = run_sync(&state, "attesting", move |st| attest_session(st, session, body)).await;
    // The rest is a task of its own, so that a client that goes away while
    // the store commits cannot leave a refusal unaudited.
    let task = tokio::spawn(async move {
        let result = match judged {
            Ok(Judged::Answer(resp)) => Ok(resp),
            Ok(Judged::Record(r)) => record_attestation(&state, *r).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(resp) => Ok(resp),
            Err(err) => {
                let detail = json!({
                    "session": prefix, "tee": tee, "kind": err.kind.as_str(), "error": err.detail,
                });
                audit(&state, AuditEvent::AttestationRefused, format!("session:{prefix}"), detail)
                    .await?;
                Err(err)
            }
        }
    });
    task.await.map_err(|e| ApiError::internal("attesting", e))?
}

/// What is left once the evidence is judged.
enum Judged {
    /// Answer at once (a repeated attest: the session's token).
    Answer(Response),
    /// Record the attestation, then send its token.
    Record(Box<Accepted>),
}

/// An attestation to record ([`crate::storage::Store::mark_attested`]) and
/// the answer that follows.
struct Accepted {
    record: AttestationRecord,
    nonce: String,
    tee: String,
    status: &'static str,
    audit: AuditMaker,
}

/// Records an accepted attestation (group commit) and answers with its
/// token: no token leaves before its session, clock and audit entry are
/// stored.
async fn record_attestation(state: &AppState, a: Accepted) -> Result<Response, ApiError> {
    let Accepted { record, nonce, tee, status, audit } = a;
    let attested = record.attested.clone();
    let (session_id, expires_at_ms) = (record.session_id.clone(), record.expires_at_ms);
    let found = queued("recording the attestation", |done| {
        state.store.queue_mark_attested(record, audit, done)
    })
    .await?;
    if !found {
        return attested_elsewhere(state, &session_id).await;
    }
    let mut resp = json_response(StatusCode::OK, &TokenAnswer { token: &attested.token });
    state.sessions.attested(&session_id, &nonce, &tee, attested, expires_at_ms);
    state.metrics.attest_ok.fetch_add(1, Ordering::Relaxed);
    tracing::info!(session = &session_id[..8], tee = %tee, status, "attested");
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&session_id, expires_at_ms)?);
    Ok(resp)
}

/// The answer to an attestation the store did not record: the session was
/// attested meanwhile (by a concurrent request, or by another replica
/// while this one still knew it unattested), and a repeated attest returns
/// that token, as it does for a session known attested; or it is gone.
async fn attested_elsewhere(state: &AppState, id: &str) -> Result<Response, ApiError> {
    let owned = id.to_owned();
    let stored = super::db(state, "reading the session", move |s| s.get_session(&owned)).await?;
    match stored {
        Some(Session { attested: Some(a), expires_at_ms, nonce, tee, .. })
            if expires_at_ms > now_ms() =>
        {
            let mut resp = json_response(StatusCode::OK, &TokenAnswer { token: &a.token });
            resp.headers_mut().insert(header::SET_COOKIE, session_cookie(id, expires_at_ms)?);
            state.sessions.attested(id, &nonce, &tee, a, expires_at_ms);
            Ok(resp)
        }
        _ => Err(ApiError::unauthenticated(
            "the session ended during attestation; start again with POST /kbs/v0/auth",
        )),
    }
}

/// `POST /kbs/v0/attest` once the session is known; every refusal it
/// returns is audited by [`attest`].
fn attest_session(
    state: &AppState,
    session: Session,
    body: Result<Bytes, BytesRejection>,
) -> Result<Judged, ApiError> {
    let body = body_or_error(body)?;
    let value = parse_json(&body, "KBS Attestation")?;
    let attestation: Attestation = Attestation::deserialize(&value).map_err(|e| {
        attest_failed(
            state,
            ApiError::bad_request(
                ErrorKind::InvalidRequest,
                format!("not a KBS Attestation ({e}); send {{\"runtime-data\": {{\"nonce\", \"tee-pubkey\"}}, \"tee-evidence\": {{\"primary_evidence\", \"additional_evidence\"}}}}"),
            ),
        )
    })?;

    // A repeated attest in an attested session returns the cached token.
    if let Some(a) = &session.attested {
        let cookie = session_cookie(&session.id, session.expires_at_ms)?;
        let mut resp = json_response(StatusCode::OK, &TokenAnswer { token: &a.token });
        resp.headers_mut().insert(header::SET_COOKIE, cookie);
        return Ok(Judged::Answer(resp));
    }

    if !super::verifier::constant_time_eq(
        attestation.runtime_data.nonce.as_bytes(),
        session.nonce.as_bytes(),
    ) {
        return Err(attest_failed(
            state,
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorKind::NonceMismatch,
                "runtime-data.nonce is not this session's nonce; use the nonce POST /kbs/v0/auth returned with this cookie",
            ),
        ));
    }
    jwe::check_tee_pubkey(&attestation.runtime_data.tee_pubkey).map_err(|e| {
        attest_failed(state, ApiError::bad_request(ErrorKind::UnsupportedTeeKey, e.to_string()))
    })?;
    // The binding covers the JWK exactly as sent, not as re-serialised.
    let raw_pubkey = value
        .pointer("/runtime-data/tee-pubkey")
        .cloned()
        .ok_or_else(|| ApiError::internal("reading tee-pubkey", "parsed but absent"))?;
    let binding = crate::tpm::binding::runtime_data_binding(
        &raw_pubkey,
        &attestation.runtime_data.nonce,
        &attestation.tee_evidence.additional_evidence,
    )
    .map_err(|e| {
        attest_failed(state, ApiError::bad_request(ErrorKind::InvalidRequest, e.to_string()))
    })?;

    let verifier = state.verifiers.get(&session.tee).ok_or_else(|| {
        attest_failed(
            state,
            ApiError::bad_request(
                ErrorKind::UnsupportedTee,
                format!("tee {} is no longer enabled; start a new session", session.tee),
            ),
        )
    })?;
    let evidence = attestation.tee_evidence.primary_evidence;
    let claims = verifier.verify(&session.tee, &evidence, &binding).map_err(|e| {
        let err = match &e {
            VerifyError::NotWired { .. } => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, ErrorKind::NotImplemented, e.to_string())
            }
            VerifyError::UnknownTee(_) => {
                ApiError::bad_request(ErrorKind::UnsupportedTee, e.to_string())
            }
            VerifyError::Store { .. } => ApiError::internal("reading the host enrollment", &e),
            _ => ApiError::new(StatusCode::FORBIDDEN, ErrorKind::AttestationError, e.to_string()),
        };
        tracing::warn!(session = &session.id[..8], tee = %session.tee, error = %e, "attestation refused");
        attest_failed(state, err)
    })?;
    let input = super::policy::policy_input(&session.tee, &claims.annotated_evidence);
    let appraisal = state.policies.appraise(&input, &claims.trust_vector).map_err(|e| {
        attest_failed(state, ApiError::internal("evaluating the attestation policy", e))
    })?;
    if !appraisal.reasons.is_empty() {
        for r in &appraisal.reasons {
            tracing::warn!(
                session = &session.id[..8],
                tee = %session.tee,
                policy = %appraisal.policy_id,
                rule = %r.rule,
                claim = %r.claim,
                expected = %r.expected,
                "attestation contraindicated: {}",
                r.message
            );
        }
    }

    let now = now_ms();
    // Judging takes time: a session that has expired meanwhile is not
    // attested (its attestation would give it a new lifetime).
    if session.expires_at_ms <= now {
        return Err(attest_failed(
            state,
            ApiError::unauthenticated(
                "the session expired during attestation; start again with POST /kbs/v0/auth",
            ),
        ));
    }
    let nonce_bytes = B64.decode(&session.nonce).unwrap_or_default();
    let token_lifetime = state.settings.token_lifetime.as_secs() as i64;
    let ear = token::ear_claims(
        now / 1000,
        token_lifetime,
        &nonce_bytes,
        &session.tee,
        &claims,
        &appraisal,
        &raw_pubkey,
    )
    .map_err(|e| ApiError::internal("building the attestation result", e))?;
    let token = state.signer.sign(&ear).map_err(|e| ApiError::internal("signing the token", e))?;
    let tee_pubkey = serde_json::to_string(&raw_pubkey)
        .map_err(|e| ApiError::internal("storing tee-pubkey", e))?;
    let expires_at_ms = now.saturating_add(state.settings.session_lifetime.as_millis() as i64);
    // The session is marked attested, the TPM's clock state recorded as its
    // host's newest (tee `tpm`; a max-update, see `tpm_verifier`) and the
    // entry logged in one store transaction: no token is usable without its
    // entry, and no accepted quote goes unrecorded for the rollback check.
    let prefix = &session.id[..8];
    let detail = json!({
        "session": prefix,
        "tee": session.tee,
        "status": appraisal.status,
        "policy_id": appraisal.policy_id,
        "reasons": appraisal.reasons.iter().take(token::MAX_TOKEN_REASONS).collect::<Vec<_>>(),
        "token_sha256": token_digest(&token),
    });
    let audit =
        audit_maker(state, AuditEvent::AttestationVerified, format!("session:{prefix}"), detail);
    Ok(Judged::Record(Box::new(Accepted {
        record: AttestationRecord {
            session_id: session.id,
            attested: Attested { token, tee_pubkey },
            expires_at_ms,
            host_clock: claims.tpm_clock,
        },
        nonce: session.nonce,
        tee: session.tee,
        status: appraisal.status,
        audit,
    })))
}

/// The bearer token of an `Authorization` header, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<Result<&str, ()>> {
    let v = headers.get(header::AUTHORIZATION)?;
    let v = match v.to_str() {
        Ok(v) => v,
        Err(_) => return Some(Err(())),
    };
    let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Some(Err(()));
    }
    Some(Ok(token.trim()))
}

fn parse_tee_pubkey(v: &Value) -> Result<TeePubKey, ApiError> {
    let key: TeePubKey = TeePubKey::deserialize(v).map_err(|e| {
        ApiError::unauthenticated(format!(
            "the token's tee-pubkey is not a JWK ({e}); attest again"
        ))
    })?;
    jwe::check_tee_pubkey(&key)
        .map_err(|e| ApiError::bad_request(ErrorKind::UnsupportedTeeKey, e.to_string()))?;
    Ok(key)
}

/// The resource policy's input: the resource, the token's EAR result
/// (status, tee, trust vector, reasons) and the claims it carries.
fn resource_policy_input(
    ear: &Map<String, Value>,
    path: &ResourcePath,
    required_labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Value {
    let sub = token::submod(ear);
    let field = |k: &str| sub.and_then(|s| s.get(k)).cloned().unwrap_or(Value::Null);
    let tee = field("tellus.tee");
    let claims = match (tee.as_str(), sub.and_then(|s| s.get("ear.veraison.annotated-evidence"))) {
        (Some(t), Some(a)) => super::policy::policy_input(t, a),
        _ => json!({}),
    };
    json!({
        "resource": {
            "path": path.to_string(),
            "repo": path.repo,
            "type": path.kind,
            "tag": path.tag,
            "required_labels": required_labels.cloned().unwrap_or_default(),
        },
        "ear": {
            "status": field("ear.status"),
            "tee": tee,
            "trust_vector": field("ear.trustworthiness-vector"),
            "policy_id": field("ear.appraisal-policy-id"),
            "reasons": field("tellus.reasons"),
        },
        "claims": claims,
    })
}

/// A short, non-secret name for a token in the audit log: the first 16
/// hex digits of its SHA-256.
fn token_digest(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    hex::encode(&d.as_ref()[..8])
}

/// `GET /kbs/v0/resource/{repo}/{type}/{tag}`. Requests that carry a valid
/// token or attested session are audited: `resource.released`, or
/// `resource.denied` with the reason. The resource leaves only once its
/// `resource.released` entry is committed (queued for the store's group
/// commit).
pub async fn get_resource(
    State(state): State<AppState>,
    Path((repo, kind, tag)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let subject = format!("{repo}/{kind}/{tag}");
    let (requester, released) = run_sync(&state, "releasing a resource", move |state| {
        let (ear, requester) = requester(state, &headers)?;
        let released = release(state, ear, &requester, &repo, &kind, &tag);
        Ok((requester, released))
    })
    .await?;
    // A task of its own, so that a client that goes away while the store
    // commits cannot leave a denial unaudited.
    let task = tokio::spawn(async move {
        let result = match released {
            Ok(r) => audit(&state, AuditEvent::ResourceReleased, r.path.clone(), r.detail)
                .await
                .map(|()| {
                    state.metrics.resources_released.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(resource = %r.path, "released");
                    r.response
                }),
            Err(e) => Err(e),
        };
        match result {
            Ok(resp) => Ok(resp),
            Err(err) => {
                let mut detail = requester;
                detail["kind"] = json!(err.kind.as_str());
                detail["error"] = json!(err.detail);
                audit(&state, AuditEvent::ResourceDenied, subject, detail).await?;
                Err(err)
            }
        }
    });
    task.await.map_err(|e| ApiError::internal("releasing a resource", e))?
}

/// A release decided: the answer (the JWE) and its audit entry's subject
/// and detail.
struct Released {
    response: Response,
    path: String,
    detail: Value,
}

/// The EAR claims a resource request presents and who presented them
/// (`{"token_sha256"}` or `{"session"}` prefix), for the audit log.
fn requester(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Map<String, Value>, Value), ApiError> {
    match bearer(headers) {
        Some(Ok(t)) => {
            let ear = state
                .signer
                .verify(t, now_ms() / 1000)
                .map_err(|e| ApiError::unauthenticated(e.to_string()))?;
            Ok((ear, json!({"token_sha256": token_digest(t)})))
        }
        Some(Err(())) => {
            Err(ApiError::unauthenticated("the Authorization header must be `Bearer <token from /kbs/v0/attest>`"))
        }
        None => match session_from_headers(state, headers, Wanted::Attested)? {
            // The token was signed by this verifier and kept by it (in
            // this process's memory or its store).
            Some(Session { id, attested: Some(a), .. }) => {
                let ear = token::payload_unchecked(&a.token).ok_or_else(|| {
                    ApiError::internal("reading the session's token", "undecodable")
                })?;
                Ok((ear, json!({"session": &id[..8]})))
            }
            Some(_) => {
                Err(ApiError::unauthenticated(
                    "this session has not attested; POST /kbs/v0/attest first",
                ))
            }
            None => {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorKind::TokenNotFound,
                    "no attestation token and no live attested session: send `Authorization: Bearer <token>` or the kbs-session-id cookie after /kbs/v0/attest",
                ))
            }
        },
    }
}

/// The release itself, once the requester is known (its audit entry is
/// left to the caller).
fn release(
    state: &AppState,
    ear: Map<String, Value>,
    requester: &Value,
    repo: &str,
    kind: &str,
    tag: &str,
) -> Result<Released, ApiError> {
    let v = token::tee_pubkey_of(&ear).ok_or_else(|| {
        ApiError::unauthenticated(
            "the token carries no tee-pubkey; send a token from POST /kbs/v0/attest",
        )
    })?;
    let tee_pubkey: TeePubKey = parse_tee_pubkey(v)?;
    let path = ResourcePath::new(repo, kind, tag)
        .map_err(|e| ApiError::bad_request(ErrorKind::InvalidRequest, e.to_string()))?;
    let stored = state
        .store
        .get_resource(&path)
        .map_err(|e| ApiError::internal("reading the resource", e))?;
    let input = resource_policy_input(&ear, &path, stored.as_ref().map(|r| &r.required_labels));
    let decision = state
        .policies
        .decide_resource(&input)
        .map_err(|e| ApiError::internal("evaluating the resource policy", e))?;
    if !decision.allow {
        for r in &decision.reasons {
            tracing::warn!(resource = %path, rule = %r.rule, claim = %r.claim, expected = %r.expected, "resource denied: {}", r.message);
        }
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorKind::PolicyDeny,
            super::policy::denial_detail(&path.to_string(), &decision),
        ));
    }
    let sealed = stored
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorKind::ResourceNotFound,
                format!("no resource {path}; an administrator must upload it first"),
            )
        })?
        .sealed;
    let plaintext = state
        .resource_key
        .open(&path, &sealed)
        .map_err(|e| ApiError::internal("decrypting the stored resource", e))?;
    let jwe = jwe::encrypt(&tee_pubkey, &plaintext, &state.rng).map_err(|e| match e {
        jwe::JweError::Random | jwe::JweError::Crypto => {
            ApiError::internal("encrypting the resource", e)
        }
        other => ApiError::bad_request(ErrorKind::UnsupportedTeeKey, other.to_string()),
    })?;
    let mut detail = requester.clone();
    detail["bytes"] = json!(plaintext.len());
    detail["status"] = ear_status(&ear);
    Ok(Released { response: json_response(StatusCode::OK, &jwe), path: path.to_string(), detail })
}

/// The EAR status a token carries, for the audit log.
fn ear_status(ear: &Map<String, Value>) -> Value {
    token::submod(ear).and_then(|s| s.get("ear.status")).cloned().unwrap_or(Value::Null)
}
