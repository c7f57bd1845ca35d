//! The third-party CEL sample (go-tpm-tools' `cel.b64`, a TDX CCEL launch
//! log in go-eventlog's CEL-TLV encoding) decodes and re-encodes byte for
//! byte. Read from ../shared/test-vectors at run time; nothing is copied.

use base64::Engine;
use std::path::PathBuf;
use tellus_measured_boot::cel::{self, Handle};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/test-vectors/tpm-eventlogs/cel")
}

#[test]
fn cel_sample_decodes_and_round_trips() {
    let b64 = std::fs::read_to_string(vectors().join("cel.b64")).expect("shared test vectors");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap();
    assert_eq!(bytes.len(), 3569);
    let recs = cel::decode(&bytes).unwrap();
    assert_eq!(recs.len(), 18);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.recnum, i as u64);
        assert!(matches!(r.handle, Handle::Ccmr(_)), "{:?}", r.handle);
        assert_eq!(r.content_type, 80, "COS event content");
        assert_eq!(r.digests.len(), 1);
        assert_eq!(r.digests[0].alg, 0x0c, "SHA-384");
        assert_eq!(r.digests[0].bytes.len(), 48);
    }
    assert_eq!(cel::encode(&recs), bytes, "TLV round trip must be byte-identical");
    let json = cel::to_json(&recs);
    let back = cel::from_json(&json).unwrap();
    assert_eq!(cel::encode(&back), bytes, "JSON round trip must be byte-identical");
    // CCMR records are not PCR extends: replay yields no PCR.
    let banks = cel::replay(&recs).unwrap();
    assert_eq!(banks.algorithms().count(), 0);
    // The first record names the container image (COS content, TLV type 0).
    assert!(String::from_utf8_lossy(&recs[0].content).contains("docker.pkg.dev"));
}
