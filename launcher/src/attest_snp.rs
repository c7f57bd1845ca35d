//! The attestation relay of an SEV-SNP guest: the guest produces the
//! evidence, the launcher only relays bytes and adds where the VM runs.
//!
//! 1. The guest's `AttestRequest` (resources, tee key) arrives as in TPM mode.
//! 2. `POST /kbs/v0/auth` with tee `snp` → nonce and session cookie.
//! 3. The host's TPM evidence for the location: a quote of the launch PCR
//!    with qualifyingData = `SHA-384(JCS({tee-pubkey, nonce,
//!    "additional-evidence": ""}))` (the TPM-mode binding of the same key
//!    and nonce) and `launch_recnum`; its JSON is the `additional_evidence`
//!    string. The launch log it carries names HOST_DATA's launch-config
//!    record, so the report and the quote name the same VM.
//! 4. `AttestChallenge{nonce, additional_evidence}` to the guest, which
//!    computes the binding `SHA-384(JCS({tee-pubkey, nonce,
//!    additional-evidence}))` itself, puts it into REPORT_DATA and answers
//!    `SnpEvidence{report, certs}`.
//! 5. `POST /kbs/v0/attest` with tee-evidence `{"primary_evidence": <the
//!    report as Trustee's SNP evidence>, "additional_evidence": <3>}`, then
//!    the resources as in TPM mode. The JWEs are encrypted to the guest's key.
//!
//! The launcher cannot bend the binding: the guest hashes its own key, and a
//! report over any other key or nonce fails the verifier's REPORT_DATA check.

use crate::attest::{self, AttestConfig, AttestError, Released, Session, StepTimings};
use crate::enroll_client::VerifierClient;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::time::Instant;
use tellus_protocol::{SnpCert, TeePubKey, MAX_ADDITIONAL_EVIDENCE_LEN};

/// The KBS tee of SNP guests.
pub const TEE_SNP: &str = "snp";
/// Largest attest answer read.
const MAX_ANSWER_LEN: u64 = 256 << 10;

/// The first half of an SNP attestation: the session and what the guest
/// must bind.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The KBS session (tee `snp`).
    pub session: Session,
    /// The host's TPM evidence as the `additional_evidence` string.
    pub additional_evidence: String,
    /// The resources asked for, checked against the launch configuration.
    pub resources: Vec<String>,
    /// The guest's key, as it sent it.
    pub tee_pubkey: TeePubKey,
    /// Milliseconds of auth and quote.
    pub timings: StepTimings,
}

/// Steps 2 and 3 for the guest's request.
pub fn challenge(
    cfg: &AttestConfig,
    launch_recnum: u64,
    resources: &[String],
    tee_pubkey: &TeePubKey,
) -> Result<Challenge, AttestError> {
    let jwk = attest::checked_request(cfg, resources, tee_pubkey)?;
    let mut timings = StepTimings::default();
    let t0 = Instant::now();
    let session = attest::auth_as(&cfg.client, TEE_SNP)?;
    timings.auth_ms = ms(t0);
    let t1 = Instant::now();
    let tpm_binding = attest::binding(&jwk, &session.nonce)?;
    let ev = attest::evidence(cfg, &tpm_binding, launch_recnum)?;
    let additional_evidence = additional_evidence(&ev)?;
    timings.quote_ms = ms(t1);
    Ok(Challenge {
        session,
        additional_evidence,
        resources: resources.to_vec(),
        tee_pubkey: tee_pubkey.clone(),
        timings,
    })
}

/// The host's TPM evidence as the `additional_evidence` string, bounded so
/// it fits the guest's challenge.
pub fn additional_evidence(ev: &tellus_protocol::TpmEvidence) -> Result<String, AttestError> {
    let s = serde_json::to_string(&json!({ "tpm": ev }))
        .map_err(|e| AttestError::Binding(e.to_string()))?;
    if s.len() > MAX_ADDITIONAL_EVIDENCE_LEN {
        return Err(AttestError::Binding(format!(
            "the host's TPM evidence is {} bytes, more than the {MAX_ADDITIONAL_EVIDENCE_LEN} an \
             SNP challenge carries; start a new host launch log (it grows with every launch)",
            s.len()
        )));
    }
    Ok(s)
}

/// The binding with `additional_evidence`: what the verifier recomputes and
/// the guest's REPORT_DATA must hold.
pub fn binding(
    tee_pubkey: &Value,
    nonce: &str,
    additional_evidence: &str,
) -> Result<[u8; 48], AttestError> {
    let triple = json!({
        "tee-pubkey": tee_pubkey,
        "nonce": nonce,
        "additional-evidence": additional_evidence,
    });
    let canonical = serde_json_canonicalizer::to_vec(&triple)
        .map_err(|e| AttestError::Binding(e.to_string()))?;
    let d = ring::digest::digest(&ring::digest::SHA384, &canonical);
    let mut out = [0u8; 48];
    out.copy_from_slice(d.as_ref());
    Ok(out)
}

/// Trustee's SNP evidence for the guest's report and certificates: the
/// report as base64 of its bytes, each certificate as `{"cert_type",
/// "data": [bytes]}` (kbs-types `SnpEvidence`'s `cert_chain`).
pub fn snp_evidence(report: &[u8], certs: &[SnpCert]) -> Value {
    json!({
        "attestation_report": B64.encode(report),
        "cert_chain": certs
            .iter()
            .map(|c| json!({"cert_type": c.cert_type, "data": c.data}))
            .collect::<Vec<_>>(),
    })
}

/// The attest request body of step 5.
pub fn attest_body(c: &Challenge, evidence: &Value) -> Result<Value, AttestError> {
    let jwk =
        serde_json::to_value(&c.tee_pubkey).map_err(|e| AttestError::Binding(e.to_string()))?;
    Ok(json!({
        "runtime-data": {"nonce": c.session.nonce, "tee-pubkey": jwk},
        "tee-evidence": {
            "primary_evidence": evidence,
            "additional_evidence": c.additional_evidence,
        },
    }))
}

/// Step 5 with the guest's evidence: attest, then fetch the resources.
pub fn finish(
    client: &VerifierClient,
    c: &Challenge,
    report: &[u8],
    certs: &[SnpCert],
) -> Result<Released, AttestError> {
    let step = "the SNP attestation";
    let mut timings = c.timings.clone();
    let t2 = Instant::now();
    let body = attest_body(c, &snp_evidence(report, certs))?;
    let answer = client.exchange(
        step,
        attest::ATTEST_PATH,
        Some(body.to_string().as_bytes()),
        Some(&c.session.cookie),
        MAX_ANSWER_LEN,
    )?;
    let v: Value = answer.ok_json(step)?;
    if !v["token"].is_string() {
        return Err(AttestError::BadAnswer { step, reason: "no `token`".into() });
    }
    let session = Session {
        cookie: attest::renewed_cookie(&answer.set_cookie)
            .unwrap_or_else(|| c.session.cookie.clone()),
        nonce: c.session.nonce.clone(),
    };
    timings.attest_ms = ms(t2);
    let t3 = Instant::now();
    let resources = attest::fetch(client, &session, &c.resources)?;
    timings.resources_ms = ms(t3);
    Ok(Released { resources, timings })
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tellus_verifier::service::snp_verifier::SnpVerifier;
    use tellus_verifier::service::verifier::EvidenceVerifier;
    use tellus_verifier::snp::CertStore;

    fn vectors() -> Option<PathBuf> {
        let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/test-vectors/sev-snp/go-sev-guest");
        d.is_dir().then_some(d)
    }

    fn key() -> TeePubKey {
        TeePubKey {
            kty: "EC".into(),
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "AAA".into(),
            y: "BBB".into(),
        }
    }

    /// The binding with additional evidence is the verifier's.
    #[test]
    fn binding_equals_the_verifiers() {
        let jwk = serde_json::to_value(key()).unwrap();
        for ae in ["", "{\"tpm\":{\"a\":1}}", "é\n\u{1}"] {
            let ours = binding(&jwk, "bm9uY2U=", ae).unwrap();
            let theirs =
                tellus_verifier::tpm::binding::runtime_data_binding(&jwk, "bm9uY2U=", ae).unwrap();
            assert_eq!(ours, theirs, "{ae:?}");
        }
        // Without additional evidence it is the TPM-mode binding.
        assert_eq!(binding(&jwk, "n", "").unwrap(), attest::binding(&jwk, "n").unwrap());
    }

    /// The evidence the relay builds from a guest's report and VCEK is what
    /// the verifier's `snp` tee accepts: go-sev-guest's real report, whose
    /// REPORT_DATA is the binding 01 02 03 04 05 00… (the relay cannot make
    /// a real report carry another binding: that is the point).
    #[test]
    fn relayed_evidence_is_accepted_by_the_snp_verifier() {
        let Some(d) = vectors() else {
            swtpm_tests::skip(
                "shared/test-vectors absent",
                "relayed_evidence_is_accepted_by_the_snp_verifier",
            );
            return;
        };
        let report = std::fs::read(d.join("attestation.bin")).unwrap();
        let vcek = std::fs::read(d.join("vcek.testcer")).unwrap();
        let certs = [SnpCert { cert_type: "VCEK".into(), data: vcek }];
        let msg = tellus_protocol::GuestMessage::SnpEvidence {
            report: report.clone(),
            certs: certs.to_vec(),
        };
        msg.validate().expect("a real report passes the channel's checks");
        let ev = snp_evidence(&report, &certs);
        let v = SnpVerifier::new(CertStore::none()).at_time(1_663_981_200);
        let mut b = [0u8; 48];
        b[..5].copy_from_slice(&[1, 2, 3, 4, 5]);
        let claims = v.verify("snp", &ev, &b).expect("the verifier accepts the relayed evidence");
        assert_eq!(claims.trust_vector.get("hardware"), Some(&json!(2)));
        b[0] = 7;
        assert!(v.verify("snp", &ev, &b).is_err(), "another binding is refused");

        // The attest body: runtime data with the guest's key and the nonce,
        // the report as primary evidence, the TPM evidence as additional.
        let c = Challenge {
            session: Session { cookie: "kbs-session-id=s".into(), nonce: "bm9uY2U=".into() },
            additional_evidence: "{\"tpm\":{}}".into(),
            resources: vec!["default/key/k".into()],
            tee_pubkey: key(),
            timings: StepTimings::default(),
        };
        let body = attest_body(&c, &ev).unwrap();
        assert_eq!(body["runtime-data"]["nonce"], "bm9uY2U=");
        assert_eq!(body["runtime-data"]["tee-pubkey"]["x"], "AAA");
        assert_eq!(body["tee-evidence"]["additional_evidence"], "{\"tpm\":{}}");
        assert_eq!(body["tee-evidence"]["primary_evidence"], ev);
        assert_eq!(body["tee-evidence"]["primary_evidence"]["cert_chain"][0]["cert_type"], "VCEK");
    }
}
