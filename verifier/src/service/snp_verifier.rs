//! The `snp` tee: AMD SEV-SNP evidence in Trustee's shape
//! (`{"attestation_report": …, "cert_chain": [{"cert_type": "VCEK", …}]}`)
//! verified offline with [`crate::snp`].
//!
//! Checks (each failure is its own [`SnpError`], carried in
//! [`VerifyError::Snp`]): the report parses (v2–v5); its VCEK/VLEK (from the
//! evidence, else the VCEK store `<state_dir>/snp-certs`) chains to AMD's
//! built-in ARK of its generation, is valid now, certifies the report's
//! REPORTED_TCB and (VCEK) CHIP_ID, and signed the report; REPORT_DATA is
//! the attestation's binding zero-padded to 64 bytes.
//!
//! Trust vector: `hardware` = 2 (a genuine AMD SEV-SNP processor at the
//! certified TCB signed the report) and `instance-identity` = 2 (that
//! processor's guest, named by REPORT_ID and bound to this attestation by
//! REPORT_DATA). Nothing is said about `executables` or `configuration`:
//! MEASUREMENT, HOST_DATA and the guest policy (debug, migration agent,
//! SMT) are claims for the attestation policy to compare with reference
//! values.

use super::verifier::{Claims, EvidenceVerifier, VerifyError};
use crate::snp::{
    binding_report_data, verify_evidence, AmdRoots, CertStore, SnpError, SnpEvidence, VerifyOptions,
};
use serde_json::{json, Map, Value};
use std::path::Path;

/// `ear.appraisal-policy-id` of the claims.
pub const POLICY_ID: &str = "tellus:snp-amd-chain";

/// Name of the VCEK store directory under the state directory.
pub const CERT_STORE_DIR: &str = "snp-certs";

/// Verifies tee `snp` evidence.
#[derive(Debug, Clone)]
pub struct SnpVerifier {
    store: CertStore,
    /// A fixed validation time (UNIX seconds) instead of now.
    at: Option<i64>,
}

impl SnpVerifier {
    /// Certificates only from the evidence and from `store`.
    pub fn new(store: CertStore) -> SnpVerifier {
        SnpVerifier { store, at: None }
    }

    /// With the VCEK store `<state_dir>/snp-certs` (read only when the
    /// evidence carries no VCEK/VLEK; it need not exist).
    pub fn for_state_dir(state_dir: &Path) -> SnpVerifier {
        SnpVerifier::new(CertStore::dir(state_dir.join(CERT_STORE_DIR)))
    }

    /// Validates certificates at a fixed time (archived evidence, tests).
    pub fn at_time(mut self, unix_secs: i64) -> SnpVerifier {
        self.at = Some(unix_secs);
        self
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The service's error for an SNP failure: a wrong REPORT_DATA is the
/// binding error every tee shares; undecodable evidence is malformed.
fn to_verify_error(tee: &str, e: SnpError) -> VerifyError {
    match e {
        SnpError::ReportDataMismatch { .. } => VerifyError::BindingMismatch,
        SnpError::MalformedEvidence(d) => VerifyError::Malformed { tee: tee.into(), detail: d },
        other => VerifyError::Snp(other),
    }
}

impl EvidenceVerifier for SnpVerifier {
    fn verify(
        &self,
        tee: &str,
        evidence: &Value,
        binding: &[u8; 48],
    ) -> Result<Claims, VerifyError> {
        let ev = SnpEvidence::from_json(evidence).map_err(|e| to_verify_error(tee, e))?;
        let roots = AmdRoots::builtin().map_err(|e| to_verify_error(tee, e))?;
        let opts = VerifyOptions {
            roots,
            at: self.at.unwrap_or_else(now_secs),
            report_data: Some(binding_report_data(binding)),
        };
        let v = verify_evidence(&ev, &self.store, &opts).map_err(|e| to_verify_error(tee, e))?;
        let mut trust_vector = Map::new();
        trust_vector.insert("hardware".into(), json!(2));
        trust_vector.insert("instance-identity".into(), json!(2));
        Ok(Claims {
            trust_vector,
            annotated_evidence: json!({ "snp": v.claims() }),
            policy_id: POLICY_ID.into(),
            tpm_clock: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use std::path::PathBuf;

    fn vectors() -> Option<PathBuf> {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/test-vectors/sev-snp/go-sev-guest");
        d.is_dir().then_some(d)
    }

    /// go-sev-guest's report carries REPORT_DATA 0102030405 00…, i.e. the
    /// binding 0102030405 00… (48 bytes) zero-padded: the service accepts
    /// it for that binding and refuses it for any other.
    #[test]
    fn binding_is_report_data() {
        let Some(d) = vectors() else {
            swtpm_tests::skip("shared/test-vectors absent", "binding_is_report_data");
            return;
        };
        let report = std::fs::read(d.join("attestation.bin")).unwrap();
        let vcek = std::fs::read(d.join("vcek.testcer")).unwrap();
        let ev = json!({
            "attestation_report": B64.encode(&report),
            "cert_chain": [{"cert_type": "VCEK", "data": vcek}],
        });
        let v = SnpVerifier::new(CertStore::none()).at_time(1_663_981_200);
        let mut binding = [0u8; 48];
        binding[..5].copy_from_slice(&[1, 2, 3, 4, 5]);
        let c = v.verify("snp", &ev, &binding).expect("verifies");
        assert_eq!(c.trust_vector.get("hardware"), Some(&json!(2)));
        assert_eq!(c.annotated_evidence["snp"]["measurement"], "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01");
        assert_eq!(c.annotated_evidence["snp"]["policy"]["debug"], true);
        binding[0] = 9;
        assert!(matches!(v.verify("snp", &ev, &binding), Err(VerifyError::BindingMismatch)));
        // The same evidence at today's time still verifies its chain (the
        // VCEK runs to 2029), so only the binding decides.
        binding[0] = 1;
        SnpVerifier::new(CertStore::none()).verify("snp", &ev, &binding).expect("now");
        // Malformed evidence.
        assert!(matches!(
            v.verify("snp", &json!({"report": 1}), &binding),
            Err(VerifyError::Malformed { .. })
        ));
        // A changed byte: the signature fails, reported as an SNP error.
        let mut bad = report.clone();
        bad[0x90] ^= 1;
        let ev = json!({"attestation_report": B64.encode(&bad), "cert_chain": [{"cert_type": "VCEK", "data": std::fs::read(d.join("vcek.testcer")).unwrap()}]});
        assert!(matches!(
            v.verify("snp", &ev, &binding),
            Err(VerifyError::Snp(SnpError::SignatureInvalid { .. }))
        ));
    }
}
