//! Shared by the TPM tests and the round-trip bench: a tellus launch log
//! measured into a real swtpm, and the `tellus` launcher binary.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use swtpm_tests::Swtpm;
use tellus_measured_boot::cel::CelRecord;
use tellus_measured_boot::records::LaunchRecord;
use tellus_measured_boot::HashAlg;

/// Three tellus launch records (cmdline, separator, stop) extended into
/// PCR 13 of `tpm`'s SHA-256 bank, as `tellus run` would; returns them.
pub fn extend_launch_log(tpm: &Swtpm, cmdline: &str) -> Vec<CelRecord> {
    let records: Vec<CelRecord> = [
        LaunchRecord::cmdline(cmdline),
        LaunchRecord::separator(),
        LaunchRecord::stop("poweroff", 1),
    ]
    .iter()
    .enumerate()
    .map(|(i, r)| CelRecord::tellus(i as u64, 13, r, &[HashAlg::Sha256]))
    .collect();
    for r in &records {
        tpm.tpm2("tpm2_pcrextend", &[&format!("13:sha256={}", hex::encode(&r.digests[0].bytes))]);
    }
    records
}

/// The `tellus` launcher binary, built once per process. Cargo builds a
/// dev-dependency's library but not its binaries, so this asks cargo to
/// build it and takes the path cargo reports.
pub fn tellus_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "tellus-launcher", "--bin", "tellus"])
            .args(["--message-format", "json-render-diagnostics"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "tellus")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no tellus executable")
    })
}
