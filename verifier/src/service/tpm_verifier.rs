//! The `tpm` tee: tellus TPM evidence (what `tellus quote` writes) checked
//! against an enrolled, activated host.
//!
//! Checks, in order (each failure is its own [`VerifyError`]):
//! 1. the evidence decodes as [`TpmEvidence`], within size bounds, and names
//!    its `host_id` and carries a launch log (`event_log`);
//! 2. [`verify_evidence`]: the quote is signed by the evidence's AK (a
//!    restricted signing key), its qualifyingData is exactly the 48-byte
//!    runtime-data binding, the quoted PCR values hash to its pcrDigest, and
//!    the CEL launch log replays to the quoted PCRs;
//! 3. the host is in the store, activated, and enrolled with this very AK
//!    (TPM Name when both sides have the public area, else the key);
//! 4. the quote covers the launch PCR (sha256:13) and the log vouches for it,
//!    and every tellus record of the log decodes.
//!
//! Trust vector: only `instance-identity` = 2 (affirming), because the quote
//! was made by the AK of an enrolled host whose AK credential activation was
//! proven. `executables`, `configuration`, `hardware` and the rest are left
//! unset: nothing here compares the measured launch with reference values;
//! that is the attestation policy's job (which sets them from the annotated
//! evidence once it exists).

use super::verifier::{Claims, EvidenceVerifier, VerifyError};
use crate::storage::Store;
use crate::tpm::attest::AkPublic;
use crate::tpm::evidence::{verify_evidence, EvidenceError, TpmEvidence};
use crate::tpm::verify::{EventLog, VerifiedQuote, VerifyError as QuoteError};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use tellus_measured_boot::cel::Handle;
use tellus_measured_boot::HashAlg;

/// The PCR `tellus run` extends its launch records into.
pub const LAUNCH_PCR: u32 = 13;
/// The bank the launch PCR must be quoted in.
pub const LAUNCH_BANK: HashAlg = HashAlg::Sha256;
/// `ear.appraisal-policy-id` of the claims.
pub const POLICY_ID: &str = "tellus:tpm-enrolled-ak";

/// Longest base64 `event_log` accepted (the launch log grows by a few
/// hundred bytes per launch).
const MAX_EVENT_LOG_B64: usize = 4 << 20;
/// Longest base64 quote message, signature or AK field.
const MAX_BLOB_B64: usize = 8 << 10;
/// Most PCR values (every PCR of four banks).
const MAX_PCR_VALUES: usize = 96;
/// Longest `launch_ticket`.
const MAX_TICKET_LEN: usize = 4 << 10;

/// Verifies tee `tpm` evidence against the hosts in `store`.
#[derive(Clone)]
pub struct TpmVerifier {
    store: Arc<dyn Store>,
}

impl TpmVerifier {
    pub fn new(store: Arc<dyn Store>) -> TpmVerifier {
        TpmVerifier { store }
    }
}

impl std::fmt::Debug for TpmVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmVerifier").finish_non_exhaustive()
    }
}

fn malformed(tee: &str, detail: impl Into<String>) -> VerifyError {
    VerifyError::Malformed { tee: tee.into(), detail: detail.into() }
}

/// Decodes and bounds the evidence; requires `host_id` and `event_log`.
fn parse(tee: &str, evidence: &Value) -> Result<(TpmEvidence, String), VerifyError> {
    let ev = TpmEvidence::deserialize(evidence).map_err(|e| {
        malformed(
            tee,
            format!("not tellus TPM evidence ({e}); send the JSON `tellus quote` writes"),
        )
    })?;
    let q = &ev.tpm_quote;
    for (field, len) in [
        ("ak_public", ev.ak_public.len()),
        ("ak_tpm_public", ev.ak_tpm_public.as_ref().map_or(0, String::len)),
        ("tpm_quote.message", q.message.len()),
        ("tpm_quote.signature", q.signature.len()),
    ] {
        if len > MAX_BLOB_B64 {
            return Err(malformed(tee, format!("`{field}` is longer than {MAX_BLOB_B64} bytes")));
        }
    }
    if q.pcrs.len() > MAX_PCR_VALUES || q.pcrs.iter().any(|p| p.len() > 128) {
        return Err(malformed(
            tee,
            format!("`tpm_quote.pcrs` must be at most {MAX_PCR_VALUES} hex digests"),
        ));
    }
    if ev.event_log.as_ref().is_some_and(|l| l.len() > MAX_EVENT_LOG_B64) {
        return Err(malformed(
            tee,
            format!("`event_log` is longer than {MAX_EVENT_LOG_B64} bytes"),
        ));
    }
    if ev.launch_ticket.as_ref().is_some_and(|t| t.len() > MAX_TICKET_LEN) {
        return Err(malformed(
            tee,
            format!("`launch_ticket` is longer than {MAX_TICKET_LEN} bytes"),
        ));
    }
    let host_id = ev.host_id.clone().ok_or_else(|| {
        malformed(
            tee,
            "`host_id` is missing: evidence without a host id cannot be tied to an enrolled host; \
             produce it with `tellus quote` on an enrolled host",
        )
    })?;
    if !ev.event_log.as_deref().is_some_and(|l| !l.trim().is_empty()) {
        return Err(VerifyError::LaunchLogMissing);
    }
    Ok((ev, host_id))
}

/// Maps an evidence-library error onto the service's refusal.
fn evidence_error(tee: &str, e: EvidenceError) -> VerifyError {
    match e {
        EvidenceError::Verify(QuoteError::NonceMismatch { .. }) => VerifyError::BindingMismatch,
        EvidenceError::Verify(
            e @ (QuoteError::Cel(_)
            | QuoteError::PcClient(_)
            | QuoteError::LogFormat { .. }
            | QuoteError::Replay(_)
            | QuoteError::LogRecordDigest { .. }
            | QuoteError::LogPcrMismatch { .. }),
        ) => VerifyError::LaunchLogInvalid { detail: e.to_string() },
        EvidenceError::Verify(e) => VerifyError::QuoteInvalid { detail: e.to_string() },
        e @ (EvidenceError::Json(_)
        | EvidenceError::Base64 { .. }
        | EvidenceError::AkKey { .. }
        | EvidenceError::PcrHex { .. }
        | EvidenceError::PcrLength { .. }
        | EvidenceError::HostId(_)) => malformed(tee, e.to_string()),
        e @ (EvidenceError::AkMismatch { .. }
        | EvidenceError::PcrCount { .. }
        | EvidenceError::SelectionMismatch { .. }) => {
            VerifyError::QuoteInvalid { detail: e.to_string() }
        }
    }
}

/// Whether the evidence's AK is the enrolled one: by TPM Name when both
/// sides have the AK's public area (the Name covers the attributes that
/// enrollment checked), else by key.
fn same_ak(enrolled: &AkPublic, evidence_ak_name: Option<&[u8]>, evidence_ak: &AkPublic) -> bool {
    match (&enrolled.tpm, evidence_ak_name) {
        (Some(tpm), Some(name)) => tpm.name() == name,
        _ => enrolled.key == evidence_ak.key,
    }
}

impl EvidenceVerifier for TpmVerifier {
    fn verify(
        &self,
        tee: &str,
        evidence: &Value,
        binding: &[u8; 48],
    ) -> Result<Claims, VerifyError> {
        let (ev, host_id) = parse(tee, evidence)?;
        let quote = verify_evidence(&ev, binding).map_err(|e| evidence_error(tee, e))?;
        // verify_evidence checked the AK fields already; this cannot fail
        // after it succeeded, but is not unwrapped.
        let evidence_ak =
            crate::tpm::evidence::evidence_ak(&ev).map_err(|e| evidence_error(tee, e))?;

        let host = self
            .store
            .get_host(&host_id)
            .map_err(|e| VerifyError::Store { host_id: host_id.clone(), detail: e.to_string() })?
            .ok_or_else(|| VerifyError::AkNotEnrolled { host_id: host_id.clone() })?;
        let enrolled = AkPublic::from_bytes(&host.ak_public).map_err(|e| VerifyError::Store {
            host_id: host_id.clone(),
            detail: format!("the enrolled AK public key does not parse: {e}"),
        })?;
        if !same_ak(&enrolled, quote.ak_name.as_deref(), &evidence_ak) {
            return Err(VerifyError::AkMismatch {
                host_id,
                enrolled: enrolled
                    .tpm
                    .as_ref()
                    .map_or_else(|| enrolled.key.describe(), |t| hex::encode(t.name())),
                found: quote.ak_name.as_ref().map_or_else(|| quote.ak_key.clone(), hex::encode),
            });
        }
        if !host.activated {
            return Err(VerifyError::HostNotActivated { host_id });
        }

        let launch_quoted = quote
            .selection
            .iter()
            .any(|s| s.bank() == Some(LAUNCH_BANK) && s.pcrs.contains(&LAUNCH_PCR));
        if !launch_quoted {
            return Err(VerifyError::LaunchPcrNotQuoted {
                selection: crate::tpm::attest::describe_selection(&quote.selection),
            });
        }
        let Some(verdict) = &quote.event_log else {
            return Err(VerifyError::LaunchLogMissing);
        };
        if !verdict.checked.contains(&(LAUNCH_BANK, LAUNCH_PCR)) {
            return Err(VerifyError::LaunchPcrNotLogged);
        }
        let records = launch_records(&verdict.log)?;

        let mut trust_vector = Map::new();
        trust_vector.insert("instance-identity".into(), json!(2));
        Ok(Claims {
            trust_vector,
            annotated_evidence: json!({ "tpm": annotated(&quote, &host, &ev, records) }),
            policy_id: POLICY_ID.into(),
        })
    }
}

/// Every record of the CEL log, tellus records decoded to kind + payload.
fn launch_records(log: &EventLog) -> Result<Vec<Value>, VerifyError> {
    let EventLog::Cel(records) = log else {
        return Err(VerifyError::LaunchLogInvalid {
            detail: "the event log is not a TCG Canonical Event Log".into(),
        });
    };
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let (handle, index) = match r.handle {
            Handle::Pcr(p) => ("pcr", p),
            Handle::NvIndex(p) => ("nv_index", p),
            Handle::Ccmr(p) => ("ccmr", p),
        };
        let mut o = Map::new();
        o.insert("recnum".into(), json!(r.recnum));
        o.insert(handle.into(), json!(index));
        match r.launch_record() {
            Some(Ok(rec)) => {
                o.insert("kind".into(), json!(rec.kind.name()));
                o.insert("payload".into(), rec.payload());
            }
            Some(Err(e)) => {
                return Err(VerifyError::LaunchLogInvalid {
                    detail: format!("tellus record {} does not decode: {e}", r.recnum),
                })
            }
            None => {
                o.insert("content_type".into(), json!(r.content_type));
            }
        }
        out.push(Value::Object(o));
    }
    Ok(out)
}

/// `ear.veraison.annotated-evidence.tpm`.
fn annotated(
    quote: &VerifiedQuote,
    host: &crate::storage::HostRecord,
    ev: &TpmEvidence,
    records: Vec<Value>,
) -> Value {
    let mut pcrs = Map::new();
    for sel in &quote.selection {
        if let Some(bank) = sel.bank() {
            let values: Map<String, Value> = sel
                .pcrs
                .iter()
                .filter_map(|&p| Some((p.to_string(), json!(quote.pcrs.get(bank, p)?.to_hex()))))
                .collect();
            pcrs.insert(bank.name().into(), Value::Object(values));
        }
    }
    let c = &quote.clock_info;
    json!({
        "host_id": host.host_id,
        "labels": host.labels,
        "ak": quote.ak_key,
        "ak_name": quote.ak_name.as_ref().map(hex::encode),
        "clock": {
            "clock": c.clock,
            "resetCount": c.reset_count,
            "restartCount": c.restart_count,
            "safe": c.safe,
        },
        "firmware_version": format!("0x{:016x}", quote.firmware_version),
        "pcrs": pcrs,
        "launch_pcr": format!("{}:{}", LAUNCH_BANK.name(), LAUNCH_PCR),
        "launch_records": records,
        "launch_ticket": ev.launch_ticket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SqliteStore;

    fn verifier() -> (tempfile::TempDir, TpmVerifier) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        (dir, TpmVerifier::new(Arc::new(store)))
    }

    #[test]
    fn refuses_before_any_crypto() {
        let (_d, v) = verifier();
        let b = [0u8; 48];
        let e = v.verify("tpm", &json!({"svn": "1"}), &b).unwrap_err();
        assert!(matches!(e, VerifyError::Malformed { .. }), "{e}");
        assert!(e.to_string().contains("tellus quote"), "{e}");
        let trustee = json!({"ak_public": "QUJD", "tpm_quote": {"signature": "cw==", "message": "bQ==", "pcrs": []}});
        let e = v.verify("tpm", &trustee, &b).unwrap_err();
        assert!(e.to_string().contains("host_id"), "{e}");
        let mut no_log = trustee.clone();
        no_log["host_id"] = json!("a".repeat(64));
        no_log["event_log"] = json!("");
        let e = v.verify("tpm", &no_log, &b).unwrap_err();
        assert!(matches!(e, VerifyError::LaunchLogMissing), "{e}");
        let mut big = no_log.clone();
        big["event_log"] = json!("A".repeat(MAX_EVENT_LOG_B64 + 4));
        let e = v.verify("tpm", &big, &b).unwrap_err();
        assert!(matches!(e, VerifyError::Malformed { .. }), "{e}");
    }
}
