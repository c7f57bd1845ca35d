//! VCEK/VLEK certificates: parsing the AMD extensions (TCB SPLs, hwID,
//! product and CSP names) must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_verifier::snp::certs::{leaf_info, parse_cert, CertRole};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = parse_cert(data, CertRole::Vcek) {
        let _ = leaf_info(&c);
    }
});
