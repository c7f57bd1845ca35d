//! The attestation relay: on the guest's `AttestRequest` the launcher runs
//! the KBS 0.4.0 exchange (tee `tpm`) with the verifier on the guest's
//! behalf and hands back only the verifier's JWEs, which are encrypted to
//! the guest's key (`shared/kbs-protocol.md`):
//!
//! 1. `POST /kbs/v0/auth` `{"version":"0.4.0","tee":"tpm","extra-params":{}}`
//!    → the nonce and the `kbs-session-id` cookie;
//! 2. binding `H = SHA-384(JCS({"tee-pubkey": <the guest's JWK as sent>,
//!    "nonce": <nonce>, "additional-evidence": ""}))`;
//! 3. a TPM quote of the launch PCR (13) by the host's AK with
//!    `qualifyingData = H` and the host launch log ([`crate::tpm::quote`]),
//!    `launch_recnum` = the first record of this VM's launch;
//! 4. `POST /kbs/v0/attest` `{"runtime-data": {nonce, tee-pubkey},
//!    "tee-evidence": {"primary_evidence": <TpmEvidence>,
//!    "additional_evidence": ""}}` with the cookie → the EAR token (not
//!    used further: the session cookie authorises the resource reads);
//! 5. `GET /kbs/v0/resource/<repo>/<type>/<tag>` with the cookie, for each
//!    resource, → a flattened JWE.
//!
//! Every verifier answer is untrusted: bodies are read with a size limit,
//! the cookie and nonce are bounded and checked, a JWE is passed on only
//! if it is UTF-8 within [`MAX_JWE_LEN`]. A refusal keeps the verifier's
//! `detail`, which the launcher shows and relays to the guest.
//!
//! The steps are public so tests can drive the exchange (e.g. replay a
//! nonce into another session) with the same code the launcher uses.

use crate::enroll_client::{ClientError, VerifierClient};
use crate::tpm::quote::{self, PreparedAk, QuoteError};
use crate::tpm::TpmAddress;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tellus_protocol::{ReleasedResource, TeePubKey, TpmEvidence, MAX_JWE_LEN};

/// `POST` route of step 1.
pub const AUTH_PATH: &str = "/kbs/v0/auth";
/// `POST` route of step 4.
pub const ATTEST_PATH: &str = "/kbs/v0/attest";
/// Prefix of the resource routes.
pub const RESOURCE_PATH: &str = "/kbs/v0/resource/";
/// The KBS protocol version spoken.
pub const KBS_VERSION: &str = "0.4.0";
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kbs-session-id";
/// Largest auth/attest answer read (an EAR token is a few KiB).
const MAX_ANSWER_LEN: u64 = 256 << 10;
/// Longest nonce accepted (the verifier's is 44 characters of base64).
const MAX_NONCE_LEN: usize = 512;
/// Longest session id accepted.
const MAX_SESSION_ID_LEN: usize = 128;

/// Why the exchange did not release the resources. The `Display` text is
/// what the launcher prints and relays to the guest as the denial reason.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("{0}")]
    Verifier(#[from] ClientError),
    #[error("cannot produce TPM evidence: {0}")]
    Quote(#[from] QuoteError),
    #[error("the verifier's answer to {step} is not usable: {reason}")]
    BadAnswer { step: &'static str, reason: String },
    #[error("cannot compute the runtime-data binding: {0}")]
    Binding(String),
    #[error(
        "the guest asked for {resource}, which the launch configuration does not name; \
         add it to `resources` in the launch configuration"
    )]
    NotConfigured { resource: String },
    #[error("the guest asked for a second attestation in the same boot; one attestation per boot (reboot to attest again)")]
    AlreadyAttested,
    #[error("this VM was started without a verifier (`tellus run`); use `tellus launch` with a [verifier] to release secrets")]
    NoVerifier,
    #[error("the released resources ({0} bytes) do not fit one agent-channel frame; keep secrets under about 40 KiB in total")]
    TooLarge(usize),
    #[error("the guest produced no SEV-SNP evidence: {0}")]
    SnpUnavailable(String),
}

/// Where the relay gets evidence and whom it asks.
pub struct AttestConfig {
    pub client: VerifierClient,
    pub tpm: TpmAddress,
    pub state_dir: PathBuf,
    /// The launch PCR (quoted).
    pub pcr: u32,
    /// The resources the launch configuration allows the guest to ask for.
    pub resources: Vec<String>,
    /// The AK's saved context, once [`AttestConfig::prepare`] ran.
    pub prepared_ak: Mutex<Option<PreparedAk>>,
}

impl AttestConfig {
    /// A configuration; nothing is connected yet.
    pub fn new(
        client: VerifierClient,
        tpm: TpmAddress,
        state_dir: PathBuf,
        pcr: u32,
        resources: Vec<String>,
    ) -> AttestConfig {
        AttestConfig { client, tpm, state_dir, pcr, resources, prepared_ak: Mutex::new(None) }
    }

    /// Loads the AK once and keeps its saved context for the quote (see
    /// [`PreparedAk`]); run while the guest boots. A failure is not fatal:
    /// the quote then takes the full path and reports any real problem.
    pub fn prepare(&self) -> Result<(), QuoteError> {
        let p = quote::prepare_ak(&self.tpm, &self.state_dir)?;
        if let Ok(mut slot) = self.prepared_ak.lock() {
            *slot = Some(p);
        }
        Ok(())
    }
}

/// A KBS session: the cookie to send and the verifier's nonce.
#[derive(Debug, Clone)]
pub struct Session {
    /// `kbs-session-id=<id>`, ready for a `Cookie` header.
    pub cookie: String,
    pub nonce: String,
}

/// Milliseconds each step took.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepTimings {
    pub auth_ms: f64,
    pub quote_ms: f64,
    pub attest_ms: f64,
    pub resources_ms: f64,
}

/// A successful exchange.
#[derive(Debug, Clone)]
pub struct Released {
    pub resources: Vec<ReleasedResource>,
    pub timings: StepTimings,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The session id from `Set-Cookie` headers: `kbs-session-id=<1..=128 of
/// [A-Za-z0-9_-]>`.
fn session_cookie(headers: &[String]) -> Option<String> {
    headers.iter().find_map(|h| {
        let first = h.split(';').next()?.trim();
        let (name, value) = first.split_once('=')?;
        (name == SESSION_COOKIE
            && !value.is_empty()
            && value.len() <= MAX_SESSION_ID_LEN
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| format!("{SESSION_COOKIE}={value}"))
    })
}

/// The session cookie a verifier answer renews, if it names a usable one.
pub fn renewed_cookie(set_cookie: &[String]) -> Option<String> {
    session_cookie(set_cookie)
}

/// Step 1: a new session.
pub fn auth(client: &VerifierClient) -> Result<Session, AttestError> {
    auth_as(client, "tpm")
}

/// Step 1 for `tee` (`tpm`, or `snp` for SEV-SNP guests: `attest_snp`).
pub fn auth_as(client: &VerifierClient, tee: &str) -> Result<Session, AttestError> {
    let step = "the KBS auth request";
    let body = json!({"version": KBS_VERSION, "tee": tee, "extra-params": {}});
    let answer = client.exchange(
        step,
        AUTH_PATH,
        Some(body.to_string().as_bytes()),
        None,
        MAX_ANSWER_LEN,
    )?;
    let v: Value = answer.ok_json(step)?;
    let bad = |reason: &str| AttestError::BadAnswer { step, reason: reason.into() };
    let nonce = v["nonce"].as_str().ok_or_else(|| bad("no `nonce` string"))?;
    if nonce.is_empty()
        || nonce.len() > MAX_NONCE_LEN
        || !nonce.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad("the nonce is empty, too long or not printable ASCII"));
    }
    let cookie =
        session_cookie(&answer.set_cookie).ok_or_else(|| bad("no usable kbs-session-id cookie"))?;
    Ok(Session { cookie, nonce: nonce.into() })
}

/// Step 2: the runtime-data binding for `tee_pubkey` (as JSON) and `nonce`.
pub fn binding(tee_pubkey: &Value, nonce: &str) -> Result<[u8; 48], AttestError> {
    let triple = json!({"tee-pubkey": tee_pubkey, "nonce": nonce, "additional-evidence": ""});
    let canonical = serde_json_canonicalizer::to_vec(&triple)
        .map_err(|e| AttestError::Binding(e.to_string()))?;
    let d = ring::digest::digest(&ring::digest::SHA384, &canonical);
    let mut out = [0u8; 48];
    out.copy_from_slice(d.as_ref());
    Ok(out)
}

/// Step 3: TPM evidence bound to `binding` for the launch starting at
/// record `launch_recnum`.
pub fn evidence(
    cfg: &AttestConfig,
    binding: &[u8; 48],
    launch_recnum: u64,
) -> Result<TpmEvidence, AttestError> {
    let prepared = cfg.prepared_ak.lock().ok().and_then(|p| p.clone());
    let mut ev =
        quote::quote_with(&cfg.tpm, &cfg.state_dir, binding, &[cfg.pcr], prepared.as_ref())?;
    ev.launch_recnum = Some(launch_recnum);
    Ok(ev)
}

/// Step 4: attest `session` with `evidence`, bound to `nonce` and
/// `tee_pubkey`. Returns the session with the cookie the verifier renewed.
pub fn attest(
    client: &VerifierClient,
    session: &Session,
    nonce: &str,
    tee_pubkey: &Value,
    evidence: &TpmEvidence,
) -> Result<Session, AttestError> {
    let step = "the attestation";
    let body = json!({
        "runtime-data": {"nonce": nonce, "tee-pubkey": tee_pubkey},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    });
    let answer = client.exchange(
        step,
        ATTEST_PATH,
        Some(body.to_string().as_bytes()),
        Some(&session.cookie),
        MAX_ANSWER_LEN,
    )?;
    let v: Value = answer.ok_json(step)?;
    if !v["token"].is_string() {
        return Err(AttestError::BadAnswer { step, reason: "no `token`".into() });
    }
    let cookie = session_cookie(&answer.set_cookie).unwrap_or_else(|| session.cookie.clone());
    Ok(Session { cookie, nonce: session.nonce.clone() })
}

/// Step 5: each resource's JWE, in order.
pub fn fetch(
    client: &VerifierClient,
    session: &Session,
    resources: &[String],
) -> Result<Vec<ReleasedResource>, AttestError> {
    let step = "the resource request";
    let mut out = Vec::with_capacity(resources.len());
    for r in resources {
        let path = tellus_protocol::ResourcePath::parse(r)
            .map_err(|e| AttestError::BadAnswer { step, reason: e.to_string() })?;
        let answer = client.exchange(
            step,
            &format!("{RESOURCE_PATH}{path}"),
            None,
            Some(&session.cookie),
            MAX_JWE_LEN as u64,
        )?;
        if answer.status != 200 {
            return Err(answer.refusal(step).into());
        }
        let jwe = String::from_utf8(answer.body)
            .map_err(|_| AttestError::BadAnswer { step, reason: format!("{path}: not UTF-8") })?;
        out.push(ReleasedResource { resource: path.to_string(), jwe });
    }
    Ok(out)
}

/// Checks a guest's request before anything is sent: every resource it
/// names must be configured for this launch. Returns its key as the JWK
/// value the binding covers.
pub fn checked_request(
    cfg: &AttestConfig,
    resources: &[String],
    tee_pubkey: &TeePubKey,
) -> Result<Value, AttestError> {
    if let Some(r) = resources.iter().find(|r| !cfg.resources.contains(r)) {
        return Err(AttestError::NotConfigured { resource: r.clone() });
    }
    serde_json::to_value(tee_pubkey).map_err(|e| AttestError::Binding(e.to_string()))
}

/// The whole exchange for one `AttestRequest`.
pub fn relay(
    cfg: &AttestConfig,
    launch_recnum: u64,
    resources: &[String],
    tee_pubkey: &TeePubKey,
) -> Result<Released, AttestError> {
    let jwk = checked_request(cfg, resources, tee_pubkey)?;
    let mut t = StepTimings::default();
    let t0 = Instant::now();
    let session = auth(&cfg.client)?;
    t.auth_ms = ms(t0.elapsed());
    let t1 = Instant::now();
    let h = binding(&jwk, &session.nonce)?;
    let ev = evidence(cfg, &h, launch_recnum)?;
    t.quote_ms = ms(t1.elapsed());
    let t2 = Instant::now();
    let session = attest(&cfg.client, &session, &session.nonce, &jwk, &ev)?;
    t.attest_ms = ms(t2.elapsed());
    let t3 = Instant::now();
    let released = fetch(&cfg.client, &session, resources)?;
    t.resources_ms = ms(t3.elapsed());
    Ok(Released { resources: released, timings: t })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookie_is_bounded_and_checked() {
        let h = |s: &str| vec![s.to_string()];
        assert_eq!(
            session_cookie(&h("kbs-session-id=0123abcd; Expires=Wed, 21 Oct 2026 07:28:00 GMT"))
                .as_deref(),
            Some("kbs-session-id=0123abcd")
        );
        assert_eq!(session_cookie(&h("other=1")), None);
        assert_eq!(session_cookie(&h("kbs-session-id=")), None);
        assert_eq!(session_cookie(&h("kbs-session-id=a b")), None);
        assert_eq!(session_cookie(&h("kbs-session-id=a\r\nX-Evil: 1")), None);
        assert_eq!(session_cookie(&h(&format!("kbs-session-id={}", "a".repeat(129)))), None);
        let two = vec!["x=1".to_string(), "kbs-session-id=ok".to_string()];
        assert_eq!(session_cookie(&two).as_deref(), Some("kbs-session-id=ok"));
    }

    /// The same value as the verifier's `runtime_data_binding` for the
    /// same inputs (its test vector: the canonical triple, hashed).
    #[test]
    fn binding_is_sha384_of_the_canonical_triple() {
        let jwk = json!({"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"AAA","y":"BBB"});
        let h = binding(&jwk, "bm9uY2U=").unwrap();
        let expected = concat!(
            r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":"#,
            r#"{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAA","y":"BBB"}}"#
        );
        let d = ring::digest::digest(&ring::digest::SHA384, expected.as_bytes());
        assert_eq!(h.as_slice(), d.as_ref());
    }
}
