//! Memoised decisions from untrusted policy inputs: the input digest never
//! panics, and a decision from the memo equals a fresh evaluation of the
//! same input. The memo lives across runs, so an input whose digest equals
//! an earlier, different input's (they differ only where the policy does
//! not read) is answered from it and checked against its own evaluation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::sync::OnceLock;
use tellus_policies::{Policy, Prepared};

fn prepared() -> &'static Prepared {
    static P: OnceLock<Prepared> = OnceLock::new();
    P.get_or_init(|| {
        // Reference values that the seeds' digests can match.
        let data = json!({
            "reference": {"kernel": [{"digest": "sha256:aa", "expired": false}]},
            "reference_live": {"kernel": ["sha256:aa"], "launcher-binary": ["sha256:bb"]},
            "requirements": {"host_labels": {"zone": "dmz"}},
        });
        Policy::default_attestation().prepare(&data).expect("prepares")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Value>(data) else { return };
    let p = prepared();
    let fresh = p.evaluate_unmemoised(&input);
    assert_eq!(p.evaluate(&input), fresh, "first answer differs");
    assert_eq!(p.evaluate(&input), fresh, "memoised answer differs");
    // The same input with a part no rule reads changed: one digest, one
    // decision.
    let mut other = input.clone();
    if let Some(host) = other.get_mut("host").and_then(Value::as_object_mut) {
        host.insert("clock".into(), json!({"clock": data.len()}));
        let reads = p.input_reads();
        assert_eq!(reads.digest(&other), reads.digest(&input));
        assert_eq!(p.evaluate(&other), fresh, "a change outside the reads changed the decision");
    }
});
