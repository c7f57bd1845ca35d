//! Reference values from untrusted JSON (uploads, `refs add` files): never
//! panics; what it accepts is bounded, normalised and round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_policies::ReferenceSet;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(set) = ReferenceSet::from_json(&v, None, Some("fuzz")) else { return };
    assert!(set.values.len() <= tellus_policies::refs::MAX_NAMES);
    // What was accepted is accepted again, unchanged (the stored form).
    let stored = serde_json::to_value(&set).unwrap();
    let again = ReferenceSet::from_json(&stored, None, None).unwrap();
    assert_eq!(again, set);
    let mut merged = set.clone();
    merged.merge(&again).unwrap();
    assert_eq!(merged, set);
    let _ = set.to_policy_data(0);
    let _ = set.next_expiry_after(0);
});
