//! Evidence verification behind one trait, so each tee's verifier plugs in
//! on its own: `sample` here; `tpm` in [`super::tpm_verifier`].

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};

/// What a verifier established about the evidence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claims {
    /// EAR trustworthiness-vector entries for what was actually checked
    /// (claim name → AR4SI tier, e.g. 2 = affirming). Empty when nothing
    /// about the platform was checked.
    pub trust_vector: Map<String, Value>,
    /// Claims to show under `ear.veraison.annotated-evidence`.
    pub annotated_evidence: Value,
    /// `ear.appraisal-policy-id`.
    pub policy_id: String,
    /// The attested TPM's clock state, to be recorded as its host's newest
    /// in the same store transaction as the attestation (the rollback
    /// check of [`super::tpm_verifier`]); `None` for tees without one.
    pub tpm_clock: Option<crate::storage::HostClock>,
}

/// Why evidence was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("tee {0:?} has no verifier here")]
    UnknownTee(String),
    #[error("{tee} evidence verification is not wired into the service yet; use tee `sample` for tests, or the `verify-evidence` command offline")]
    NotWired { tee: String },
    #[error("the {tee} evidence is malformed: {detail}")]
    Malformed { tee: String, detail: String },
    #[error("the evidence does not carry this attestation's binding (SHA-384 of the JCS of tee-pubkey, nonce and additional-evidence); recompute report data from the runtime data you sent")]
    BindingMismatch,
    #[error("the TPM quote does not verify: {detail}")]
    QuoteInvalid { detail: String },
    #[error("the TPM evidence carries no launch log (event_log): the launch PCR cannot be checked without it; quote after `tellus run` has measured a launch, so that <state-dir>/launch-log.cel exists")]
    LaunchLogMissing,
    #[error("the TPM launch log does not verify against the quote: {detail}; send <state-dir>/launch-log.cel unmodified, as `tellus quote` reads it")]
    LaunchLogInvalid { detail: String },
    #[error("the TPM quote does not cover the launch PCR sha256:13 (it selects {selection}); quote with `tellus quote --pcrs 13`")]
    LaunchPcrNotQuoted { selection: String },
    #[error("the launch log has no record for the launch PCR sha256:13, so the quoted value is not vouched for; quote after `tellus run` has measured a launch")]
    LaunchPcrNotLogged,
    #[error("AK not enrolled: no host {host_id} is enrolled with this verifier; enroll the host (`tellus host enroll-request`, then `tellus host activate`) first")]
    AkNotEnrolled { host_id: String },
    #[error("AK not enrolled: the quote is signed by AK {found}, but host {host_id} is enrolled with AK {enrolled}; if the host was re-initialised, enroll it again")]
    AkMismatch { host_id: String, enrolled: String, found: String },
    #[error("host {host_id} is enrolled but not activated: the verifier has not seen the proof of its AK credential activation; finish enrollment with `tellus host activate`")]
    HostNotActivated { host_id: String },
    #[error("the launch log holds no launch (no launcher-binary record); quote after `tellus run` has measured a launch")]
    NoLaunch,
    #[error("launch_recnum {recnum} names no tellus record of the launch log; send the recnum of the launch's first (launcher-binary) record, or none for the last launch")]
    LaunchNotFound { recnum: u64 },
    #[error("launch_recnum {recnum} is a {kind} record, not the first record (launcher-binary) of a launch; send the recnum `tellus run` reported for the launch")]
    NotALaunch { recnum: u64, kind: &'static str },
    #[error("the launch starting at record {recnum} is incomplete: the log has no separator for it (its vCPUs never started, or the log was cut); attest a launch that has started")]
    LaunchIncomplete { recnum: u64 },
    #[error("TPM rollback: the TPM of host {host_id} went back in time: {went_back}. Its state was restored from a snapshot or copied (swtpm/vTPM state), so its PCRs and keys may be replayed; nothing is released to it. Re-provision the host's TPM (fresh state, new EK) and enroll the host again")]
    TpmRollback { host_id: String, went_back: String },
    #[error("cannot read the enrollment of host {host_id}: {detail}")]
    Store { host_id: String, detail: String },
    #[error("the SEV-SNP evidence does not verify: {0}")]
    Snp(crate::snp::SnpError),
}

/// Verifies one tee's evidence against the runtime-data binding.
pub trait EvidenceVerifier: Send + Sync {
    /// Checks `evidence` (the `primary_evidence` of the attestation) and
    /// that it carries `binding`.
    fn verify(
        &self,
        tee: &str,
        evidence: &Value,
        binding: &[u8; 48],
    ) -> Result<Claims, VerifyError>;
}

/// Trustee's `sample` tee: `{"svn": "<string>", "report_data": base64(H)}`.
/// The only check is that `report_data` is the binding: it proves the
/// client saw this session's nonce and holds the tee key, and nothing about
/// the platform, so its trust vector is empty. Off unless
/// `enable_sample_tee` is set.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleVerifier;

/// Longest sample `svn` accepted.
const MAX_SVN_LEN: usize = 64;

impl EvidenceVerifier for SampleVerifier {
    fn verify(
        &self,
        tee: &str,
        evidence: &Value,
        binding: &[u8; 48],
    ) -> Result<Claims, VerifyError> {
        let malformed =
            |detail: &str| VerifyError::Malformed { tee: tee.into(), detail: detail.into() };
        let obj = evidence.as_object().ok_or_else(|| malformed("expected a JSON object"))?;
        let svn = obj
            .get("svn")
            .and_then(Value::as_str)
            .filter(|s| s.len() <= MAX_SVN_LEN)
            .ok_or_else(|| malformed("`svn` must be a string of at most 64 characters"))?;
        let report_data = obj
            .get("report_data")
            .and_then(Value::as_str)
            .filter(|s| s.len() <= 128)
            .ok_or_else(|| malformed("`report_data` must be a base64 string"))?;
        let rd = B64.decode(report_data).map_err(|_| malformed("`report_data` is not base64"))?;
        if !constant_time_eq(&rd, binding) {
            return Err(VerifyError::BindingMismatch);
        }
        Ok(Claims {
            trust_vector: Map::new(),
            annotated_evidence: json!({"sample": {"svn": svn, "report_data": report_data}}),
            policy_id: "tellus:sample-binding-only".into(),
            tpm_clock: None,
        })
    }
}

/// `tpm` until the TPM verifier is plugged in: always refuses, saying so.
#[derive(Clone, Copy, Debug, Default)]
pub struct TpmNotWired;

impl EvidenceVerifier for TpmNotWired {
    fn verify(&self, tee: &str, _: &Value, _: &[u8; 48]) -> Result<Claims, VerifyError> {
        Err(VerifyError::NotWired { tee: tee.into() })
    }
}

/// Constant-time comparison of two byte strings (their lengths are not
/// secret).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_checks_the_binding() {
        let b = [9u8; 48];
        let ok = json!({"svn": "1", "report_data": B64.encode(b)});
        let c = SampleVerifier.verify("sample", &ok, &b).unwrap();
        assert!(c.trust_vector.is_empty());
        let bad = json!({"svn": "1", "report_data": B64.encode([8u8; 48])});
        assert!(matches!(
            SampleVerifier.verify("sample", &bad, &b),
            Err(VerifyError::BindingMismatch)
        ));
        let short = json!({"svn": "1", "report_data": B64.encode([9u8; 47])});
        assert!(SampleVerifier.verify("sample", &short, &b).is_err());
        assert!(SampleVerifier.verify("sample", &json!([]), &b).is_err());
        assert!(TpmNotWired.verify("tpm", &ok, &b).is_err());
    }
}
