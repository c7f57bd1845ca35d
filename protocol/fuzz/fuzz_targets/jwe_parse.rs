//! The guest's JWE parser and decryptor on hostile input (a relayed
//! verifier answer): never panics, and nothing that is not a JWE encrypted
//! to the guest's key ever decrypts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tellus_protocol::jwe::{parse, TeeKey};

fn key() -> &'static TeeKey {
    static KEY: OnceLock<TeeKey> = OnceLock::new();
    KEY.get_or_init(|| TeeKey::generate().expect("system RNG"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = parse(text);
    let decrypted = key().decrypt(text);
    // Decryption implies a parse; random input never authenticates.
    if decrypted.is_ok() {
        assert!(parsed.is_ok());
    }
    assert!(decrypted.is_err(), "fuzz input decrypted under a fresh key");
});
