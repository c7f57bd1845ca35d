//! CEL-TLV: decode, and whatever decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_measured_boot::cel;

fuzz_target!(|data: &[u8]| {
    if let Ok(recs) = cel::decode(data) {
        assert_eq!(cel::encode(&recs), data, "round trip must be byte-identical");
        let _ = cel::replay(&recs);
        for r in &recs {
            let _ = r.launch_record();
            let _ = r.digest_mismatches();
        }
    }
});
