//! CEL-JSON: decoding arbitrary JSON never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_measured_boot::cel;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(recs) = cel::from_json(&v) {
            let _ = cel::encode(&recs);
        }
    }
});
