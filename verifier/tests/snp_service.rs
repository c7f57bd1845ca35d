//! The `snp` tee in the KBS service (in process): real SNP evidence from
//! ../shared/test-vectors/sev-snp goes through auth → attest. Its
//! REPORT_DATA is fixed upstream, so it cannot carry this session's binding:
//! the chain, TCB and signature checks pass and the attestation is refused
//! for the binding (the binding check itself is tested on the verifier with
//! a report whose REPORT_DATA is known, in `service::snp_verifier`). An
//! altered report, or evidence without its VCEK, is refused earlier, each
//! with its reason.

mod service_support;

use serde_json::{json, Value};
use service_support::*;
use std::path::Path;

fn e2e_evidence() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/test-vectors/sev-snp/trustee/e2e-evidence.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn attestation(key: &TeeKey, nonce: &str, evidence: Value) -> Value {
    json!({
        "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk()},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    })
}

async fn attest_detail(app: &App, evidence: Value) -> String {
    let (cookie, nonce) = app.auth("snp").await;
    let key = TeeKey::new();
    let req =
        with_cookie(post_json("/kbs/v0/attest", &attestation(&key, &nonce, evidence)), &cookie);
    let (s, _, v) = app.json(req).await;
    assert_eq!(s.as_u16(), 403, "{v}");
    assert_eq!(error_kind(&v), "AttestationError", "{v}");
    v["detail"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn real_snp_evidence_passes_the_chain_and_fails_only_the_binding() {
    let app = App::new(false);
    let detail = attest_detail(&app, e2e_evidence()).await;
    assert!(detail.contains("binding"), "{detail}");

    let mut altered = e2e_evidence();
    altered["attestation_report"]["host_data"][0] = json!(1);
    let detail = attest_detail(&app, altered).await;
    assert!(detail.contains("signature does not verify"), "{detail}");

    let mut no_vcek = e2e_evidence();
    no_vcek["cert_chain"] = json!([]);
    let detail = attest_detail(&app, no_vcek).await;
    assert!(detail.contains("kdsintf.amd.com/vcek/v1/Genoa/"), "{detail}");

    let detail = attest_detail(&app, json!({"attestation_report": "AAAA"})).await;
    assert!(detail.contains("1184 bytes"), "{detail}");
}
