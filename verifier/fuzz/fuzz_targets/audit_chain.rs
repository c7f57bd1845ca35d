//! An audit log export (`tellus-verifier audit show`: JSON lines) checked
//! with `verify_chain`, and the `--expect-head` argument: any bytes give a
//! summary or a named error, never a panic, and nothing that was not signed
//! by the key verifies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_verifier::audit::{parse_head, verify_chain, AuditEntry, AuditKeys};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.lines();
    let head = lines.next().and_then(parse_head);
    let entries: Vec<AuditEntry> = lines.filter_map(|l| serde_json::from_str(l).ok()).collect();
    // The P-256 base point as the key (private key 1): a valid point, and
    // the fuzzer does not compute ECDSA signatures, so none of its entries
    // can carry a valid one.
    let keys = AuditKeys::from_jwks(&serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k",
        "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
        "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU",
    }]}));
    let expect = head.as_ref().map(|(s, h)| (*s, h.as_str()));
    if let Ok(sum) = verify_chain(entries, &keys, expect) {
        assert_eq!(sum.entries, 0, "a log verified without a signature by the key");
    }
});
