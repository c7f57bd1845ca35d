//! Shared helpers of the registrar tests: test-vector paths, a real swtpm
//! driven by tpm2-tools, and openssl-made certificates.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `shared/test-vectors/ek-certs`, read in place at run time.
pub fn ek_vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/test-vectors/ek-certs")
}

/// `shared/test-vectors/tpm-quotes`.
pub fn quote_vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/test-vectors/tpm-quotes")
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[allow(unused_imports)] // not every test binary needs both
pub use swtpm_tests::{openssl, Swtpm};
