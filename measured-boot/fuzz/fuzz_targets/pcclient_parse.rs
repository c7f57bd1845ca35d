//! PC Client binary event logs: parse and replay must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_measured_boot::pcclient;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = pcclient::parse(data) {
        let _ = log.replay();
    }
});
