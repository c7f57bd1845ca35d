//! `tellus-verifier verify-evidence --tee snp` on real evidence from
//! ../shared/test-vectors/sev-snp: exit 0 with the claims when verified,
//! 1 with the reason when not, 2 for unreadable input; `--at` for archived
//! evidence, `--vcek-dir` for a VCEK kept offline.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/test-vectors/sev-snp");
    assert!(d.is_dir(), "test vectors not found at {}", d.display());
    d
}

fn run(evidence: &Path, nonce: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tellus-verifier"))
        .args(["verify-evidence", "--tee", "snp", "--output", "json", "--nonce", nonce])
        .arg("--evidence")
        .arg(evidence)
        .args(extra)
        .output()
        .unwrap()
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} / {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn verify_evidence_snp() {
    let tmp = tempfile::tempdir().unwrap();
    // Trustee's evidence (Genoa, VCEK in cert_chain), verified now.
    let e2e = dir().join("trustee/e2e-evidence.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&e2e).unwrap()).unwrap();
    let rd: Vec<u8> = v["attestation_report"]["report_data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    let o = run(&e2e, &hex::encode(&rd), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    let j = json_out(&o);
    assert_eq!(j["claims"]["product"], "Genoa");
    assert_eq!(j["claims"]["report_data_checked"], true);
    // Other REPORT_DATA: not verified (1).
    let o = run(&e2e, &"00".repeat(48), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(json_out(&o)["error"].as_str().unwrap().contains("REPORT_DATA"));

    // Trustee's VLEK report, whose VLEK expired on 2025-12-10: rejected now,
    // verified with --at inside its validity.
    let vlek_report = std::fs::read(dir().join("trustee/test-vlek-report.bin")).unwrap();
    let vlek = std::fs::read(dir().join("trustee/test-vlek.der")).unwrap();
    let ev = tmp.path().join("vlek.json");
    std::fs::write(
        &ev,
        json!({"attestation_report": B64.encode(&vlek_report), "cert_chain": [{"cert_type": "VLEK", "data": vlek}]})
            .to_string(),
    )
    .unwrap();
    let rd = hex::encode(&vlek_report[0x50..0x90]);
    let o = run(&ev, &rd, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        json_out(&o)["error"].as_str().unwrap().contains("VLEK certificate is not valid"),
        "{:?}",
        json_out(&o)
    );
    let o = run(&ev, &rd, &["--at", "2025-06-01T00:00:00Z"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(json_out(&o)["claims"]["signer"]["kind"], "VLEK");

    // A raw report without its VCEK, the VCEK in a --vcek-dir store.
    let report = std::fs::read(dir().join("steward/milan.rprt")).unwrap();
    let ev = tmp.path().join("raw.json");
    std::fs::write(&ev, json!({"attestation_report": B64.encode(&report)}).to_string()).unwrap();
    let rd = hex::encode(&report[0x50..0x90]);
    let o = run(&ev, &rd, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(json_out(&o)["error"].as_str().unwrap().contains("kdsintf.amd.com/vcek/v1/Milan/"));
    let store = tmp.path().join("vceks");
    std::fs::create_dir(&store).unwrap();
    let chip = hex::encode(&report[0x1A0..0x1E0]);
    let tcb = u64::from_le_bytes(report[0x180..0x188].try_into().unwrap());
    std::fs::copy(
        dir().join("steward/milan.vcek"),
        store.join(format!("vcek-{chip}-{tcb:016x}.der")),
    )
    .unwrap();
    let o = run(&ev, &rd, &["--vcek-dir", store.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(json_out(&o)["claims"]["policy"]["debug"], true);

    // Unreadable input: 2.
    let o = run(&tmp.path().join("missing.json"), &rd, &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&ev, "abcd", &[]);
    assert_eq!(o.status.code(), Some(2));
}
