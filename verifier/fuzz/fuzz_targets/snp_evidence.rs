//! Trustee-shaped SNP evidence JSON: decoding (including re-encoding the
//! serde report into the firmware layout) must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_verifier::snp::{verify_evidence, AmdRoots, CertStore, SnpEvidence, VerifyOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(ev) = SnpEvidence::from_json(&v) {
        if let Ok(roots) = AmdRoots::builtin() {
            let o = VerifyOptions { roots, at: 1_748_736_000, report_data: None };
            let _ = verify_evidence(&ev, &CertStore::none(), &o);
        }
    }
});
