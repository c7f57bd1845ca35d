//! tellus record content (the CEL content of type 0x74): decode never
//! panics, and what decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_measured_boot::records::LaunchRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = LaunchRecord::decode_content(data) {
        assert_eq!(r.encode_content(), data);
        let _ = r.to_json();
    }
});
