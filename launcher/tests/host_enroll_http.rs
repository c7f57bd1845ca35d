//! `tellus host enroll --verifier URL` against a real `tellus-verifier`
//! process (`swtpm_tests::verifier_process`: plain HTTP on loopback, EK CA
//! = a copy of the swtpm local CA) and a provisioned swtpm.
//!
//! The verifier binary: cargo builds a dev-dependency's library but not its
//! binaries, so each test runs `$CARGO build -p tellus-verifier --bin
//! tellus-verifier` first (a no-op when it is up to date; cargo does not
//! hold the build lock while tests run) and takes the binary from the
//! profile directory this test executable lives in
//! (`<target>/<profile>/deps/..`), which also honours `CARGO_TARGET_DIR`.

mod common;
use common::{text, tpm_host};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use swtpm_tests::verifier_process::Verifier;

/// The `tellus-verifier` binary, built once per test process.
fn verifier_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).args([
            "build",
            "-q",
            "-p",
            "tellus-verifier",
            "--bin",
            "tellus-verifier",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let target_dir = profile_dir.parent().unwrap();
        cmd.env("CARGO_TARGET_DIR", target_dir);
        let out = cmd.output().expect("run cargo build for tellus-verifier");
        assert!(out.status.success(), "building tellus-verifier failed:\n{}", text(&out.stderr));
        let bin = profile_dir.join("tellus-verifier");
        assert!(bin.is_file(), "{} missing after cargo build", bin.display());
        bin
    })
}

/// `GET path` with the admin token; (status, JSON body or null).
fn admin_get(verifier: &Verifier, path: &str) -> (u16, Value) {
    let (status, body) = verifier.admin("GET", path, b"");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn enroll_over_http() {
    let host = tpm_host();
    let verifier = Verifier::start(verifier_bin(), &host.tpm.local_ca());
    let host_id = host.host_id();

    let out = host.tellus(&["host", "enroll", "--verifier", &verifier.url()]);
    assert!(out.status.success(), "enroll failed:\n{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("host id:   {host_id}")), "{stdout}");
    assert!(stdout.contains("activated: true"), "{stdout}");

    let (status, v) = admin_get(&verifier, &format!("/tellus/v1/hosts/{host_id}"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["activated"], true);
    assert_eq!(v["host_id"], host_id.as_str());

    // Again: a new challenge, the same host, JSON output.
    let out = host.tellus(&["host", "enroll", "--verifier", &verifier.url(), "--output", "json"]);
    assert!(out.status.success(), "second enroll failed:\n{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["host_id"], host_id.as_str());
    assert_eq!(v["activated"], true);

    // The TPM is left clean.
    for cap in ["handles-transient", "handles-loaded-session"] {
        let out = host.tpm.run("tpm2_getcap", &[cap]);
        assert!(text(&out.stdout).trim().is_empty(), "{cap}: {}", text(&out.stdout));
    }
}

#[test]
fn verifier_errors_are_shown_with_their_detail() {
    let host = tpm_host();
    // A verifier that trusts only an unrelated self-signed CA (under the
    // two file names Verifier::start copies).
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca");
    std::fs::create_dir_all(&other_ca).unwrap();
    swtpm_tests::self_signed_ca(&other_ca, "issuercert.pem", "other CA");
    std::fs::copy(other_ca.join("issuercert.pem"), other_ca.join("swtpm-localca-rootca-cert.pem"))
        .unwrap();
    let verifier = Verifier::start(verifier_bin(), &other_ca);
    let out = host.tellus(&["host", "enroll", "--verifier", &verifier.url()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("EnrollmentRefused") && err.contains("not trusted"), "{err}");
}

#[test]
fn refuses_plain_http_off_loopback_and_reports_unreachable_verifiers() {
    let host = tpm_host();
    let t = Instant::now();
    let out = host.tellus(&["host", "enroll", "--verifier", "http://10.0.0.1:1"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("refusing plain HTTP") && err.contains("https://"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "it must not try to connect");

    // Nothing listens on this port.
    let port = swtpm_tests::free_port();
    let out = host.tellus(&["host", "enroll", "--verifier", &format!("http://127.0.0.1:{port}")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach the verifier") && err.contains("running"), "{err}");
}
