//! Verification of tellus TPM evidence (KBS tee `tpm`), as `tellus quote`
//! emits it.
//!
//! The wire type, its JSON shape (a superset of Trustee's TPM evidence) and
//! the encoding of every field are [`tellus_protocol::TpmEvidence`], shared
//! with the launcher and re-exported here. The tellus fields are optional so
//! that Trustee-shaped evidence decodes too; which of them a policy requires
//! is the policy's business.

use super::attest::{describe_selection, AkPublic};
use super::verify::{self, EventLog, EventLogFormat, VerifiedQuote, VerifyError};
use crate::tpm_types::ParseError;
use base64::Engine;
use tellus_measured_boot::{Digest, HashAlg, PcrBanks};

pub use tellus_protocol::{QuotedPcrs, TpmEvidence, TpmQuote};

/// Why evidence did not verify.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("TPM evidence is not valid JSON of the expected shape: {0}")]
    Json(#[source] serde_json::Error),
    #[error("TPM evidence field {field}: not valid base64: {source}")]
    Base64 {
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    #[error("TPM evidence field {field}: {source}")]
    AkKey {
        field: &'static str,
        #[source]
        source: ParseError,
    },
    #[error("TPM evidence: ak_tpm_public holds a different key ({tpm}) than ak_public ({spki})")]
    AkMismatch { tpm: String, spki: String },
    #[error("TPM evidence field tpm_quote.pcrs[{index}]: not hex: {source}")]
    PcrHex {
        index: usize,
        #[source]
        source: hex::FromHexError,
    },
    #[error("TPM evidence: tpm_quote.pcrs has {got} values, the quote selects {expected} PCRs ({selection})")]
    PcrCount { got: usize, expected: usize, selection: String },
    #[error("TPM evidence field tpm_quote.pcrs[{index}] (PCR {bank}:{pcr}) is {got} bytes, a {bank} PCR has {expected}")]
    PcrLength { index: usize, bank: HashAlg, pcr: u32, got: usize, expected: usize },
    #[error("TPM evidence: pcr_selection says {claimed}, but the quote selects {quoted}")]
    SelectionMismatch { claimed: String, quoted: String },
    #[error("TPM evidence field host_id: {0:?} is not 64 lower-case hex digits (SHA-256 of the EK public area)")]
    HostId(String),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// Decodes evidence JSON.
pub fn evidence_from_json(bytes: &[u8]) -> Result<TpmEvidence, EvidenceError> {
    serde_json::from_slice(bytes).map_err(EvidenceError::Json)
}

fn b64(field: &'static str, s: &str) -> Result<Vec<u8>, EvidenceError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|source| EvidenceError::Base64 { field, source })
}

/// The AK of the evidence: `ak_public`, cross-checked against (and
/// completed with the attributes of) `ak_tpm_public` when present.
pub fn evidence_ak(evidence: &TpmEvidence) -> Result<AkPublic, EvidenceError> {
    let text = evidence.ak_public.trim();
    let spki = if text.starts_with("-----BEGIN") {
        AkPublic::from_pem(text.as_bytes())
    } else {
        AkPublic::from_spki_der(&b64("ak_public", text)?)
    }
    .map_err(|source| EvidenceError::AkKey { field: "ak_public", source })?;
    match &evidence.ak_tpm_public {
        None => Ok(spki),
        Some(t) => {
            let tpm = AkPublic::from_tpm2b_public(&b64("ak_tpm_public", t)?)
                .map_err(|source| EvidenceError::AkKey { field: "ak_tpm_public", source })?;
            if tpm.key != spki.key {
                return Err(EvidenceError::AkMismatch {
                    tpm: tpm.key.describe(),
                    spki: spki.key.describe(),
                });
            }
            Ok(tpm)
        }
    }
}

/// Decodes `evidence` and verifies its quote against `expected_nonce` (the
/// quote's qualifyingData; for KBS attestation the 48-byte
/// [`super::binding::runtime_data_binding`]), with the event log, when
/// there is one, replayed against the quoted PCRs.
pub fn verify_evidence(
    evidence: &TpmEvidence,
    expected_nonce: &[u8],
) -> Result<VerifiedQuote, EvidenceError> {
    if let Some(h) = &evidence.host_id {
        if h.len() != 64 || !h.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
            return Err(EvidenceError::HostId(h.clone()));
        }
    }
    let ak = evidence_ak(evidence)?;
    let message = b64("tpm_quote.message", &evidence.tpm_quote.message)?;
    let signature = b64("tpm_quote.signature", &evidence.tpm_quote.signature)?;
    let (quote, sig) = verify::authenticate(&ak, &message, &signature)?;

    let selected = verify::selected_pcrs(&quote.pcr_select)?;
    if let Some(claimed) = &evidence.pcr_selection {
        let quoted_one_bank = match quote.pcr_select.as_slice() {
            [one] => one.bank().map(|b| (b.name(), &one.pcrs)),
            _ => None,
        };
        if quoted_one_bank != Some((claimed.bank.as_str(), &claimed.pcrs)) {
            let list: Vec<String> = claimed.pcrs.iter().map(u32::to_string).collect();
            return Err(EvidenceError::SelectionMismatch {
                claimed: format!("{}:{}", claimed.bank, list.join(",")),
                quoted: describe_selection(&quote.pcr_select),
            });
        }
    }
    let values = &evidence.tpm_quote.pcrs;
    if values.len() != selected.len() {
        return Err(EvidenceError::PcrCount {
            got: values.len(),
            expected: selected.len(),
            selection: describe_selection(&quote.pcr_select),
        });
    }
    let mut pcrs = PcrBanks::new();
    for (index, (text, &(bank, pcr))) in values.iter().zip(&selected).enumerate() {
        let bytes =
            hex::decode(text.trim()).map_err(|source| EvidenceError::PcrHex { index, source })?;
        let got = bytes.len();
        let value = Digest::new(bank, bytes).map_err(|_| EvidenceError::PcrLength {
            index,
            bank,
            pcr,
            got,
            expected: bank.size(),
        })?;
        pcrs.init(pcr, value).map_err(|_| VerifyError::MissingPcrValue { bank, pcr })?;
    }
    let log = match evidence.event_log.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(EventLog::parse(&b64("event_log", text)?, EventLogFormat::Cel)?),
    };
    Ok(verify::check_quote(&ak, quote, &sig, expected_nonce, &pcrs, log)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_and_trustee_shapes_decode() {
        let launcher = br#"{"ak_public":"QUJD","tpm_quote":{"signature":"cw==","message":"bQ==","pcrs":["00"]},
            "pcr_selection":{"bank":"sha256","pcrs":[13]},"ak_tpm_public":"dA==","host_id":"h",
            "event_log":"","launch_ticket":null}"#;
        let e = evidence_from_json(launcher).unwrap();
        assert_eq!(e.pcr_selection.as_ref().unwrap().pcrs, [13]);
        assert_eq!(e.event_log.as_deref(), Some(""));
        let trustee =
            br#"{"ak_public":"QUJD","tpm_quote":{"signature":"cw==","message":"bQ==","pcrs":[]}}"#;
        let e = evidence_from_json(trustee).unwrap();
        assert!(e.pcr_selection.is_none() && e.launch_ticket.is_none());
        let v = serde_json::to_value(&e).unwrap();
        assert!(v["launch_ticket"].is_null());
        assert!(matches!(evidence_from_json(b"{}"), Err(EvidenceError::Json(_))));
    }
}
