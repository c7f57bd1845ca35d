//! SEV-SNP reports: parsing and claims must never panic, and verifying an
//! arbitrary report against a real VCEK must fail cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_verifier::snp::{verify_report, AmdRoots, AttestationReport, Product, VerifyOptions};

/// A real Milan VCEK (Trustee's test-vcek.der), so verification reaches
/// the TCB, hwID and signature checks.
const VCEK: &[u8] = include_bytes!("../../../../shared/test-vectors/sev-snp/trustee/test-vcek.der");

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = AttestationReport::parse(data) {
        for p in Product::ALL {
            let _ = r.to_claims(p);
        }
        if let Ok(roots) = AmdRoots::builtin() {
            let o = VerifyOptions { roots, at: 1_748_736_000, report_data: Some([0; 64]) };
            let _ = verify_report(&r, VCEK, &o);
        }
    }
});
