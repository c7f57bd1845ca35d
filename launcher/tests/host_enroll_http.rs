//! `tellus host enroll --verifier URL` against a real `tellus-verifier`
//! process (plain HTTP on loopback, EK CA = a copy of the swtpm local CA)
//! and a provisioned swtpm.
//!
//! The verifier binary: cargo builds a dev-dependency's library but not its
//! binaries, so each test runs `$CARGO build -p tellus-verifier --bin
//! tellus-verifier` first (a no-op when it is up to date; cargo does not
//! hold the build lock while tests run) and takes the binary from the
//! profile directory this test executable lives in
//! (`<target>/<profile>/deps/..`), which also honours `CARGO_TARGET_DIR`.

mod common;
use common::{text, TpmHost};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running verifier; killed on drop.
struct Verifier {
    child: Child,
    port: u16,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Verifier {
    fn start(ek_ca: &Path) -> Verifier {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ca_dir = dir.path().join("ek-ca");
        std::fs::create_dir_all(&ca_dir).unwrap();
        for f in ["issuercert.pem", "swtpm-localca-rootca-cert.pem"] {
            std::fs::copy(ek_ca.join(f), ca_dir.join(f)).unwrap();
        }
        let config = dir.path().join("verifier.toml");
        std::fs::write(&config, format!("ek_ca_dir = {:?}\n", ca_dir.to_str().unwrap())).unwrap();
        let port = free_port();
        let child = Command::new(verifier_bin())
            .args(["serve", "--insecure-http", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut v = Verifier { child, port, state, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = v.child.try_wait().unwrap() {
                let mut err = String::new();
                v.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("tellus-verifier exited ({status}):\n{err}");
            }
            assert!(Instant::now() < deadline, "tellus-verifier did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        v
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Minimal HTTP/1.1 GET with the admin token; (status, body).
    fn admin_get(&self, path: &str) -> (u16, Value) {
        let token = std::fs::read_to_string(self.state.join("admin-token")).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Connection: close\r\n\r\n",
            token.trim()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp.split(' ').nth(1).unwrap().parse().unwrap();
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A provisioned host (see `common::TpmHost`) with this file's helpers.
struct Host(TpmHost);

impl std::ops::Deref for Host {
    type Target = TpmHost;
    fn deref(&self) -> &TpmHost {
        &self.0
    }
}

impl Host {
    fn new() -> Host {
        Host(TpmHost::new())
    }
}

#[test]
fn enroll_over_http() {
    let host = Host::new();
    let verifier = Verifier::start(&host.tpm.local_ca());
    let host_id = host.host_id();

    let out = host.tellus(&["host", "enroll", "--verifier", &verifier.url()]);
    assert!(out.status.success(), "enroll failed:\n{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("host id:   {host_id}")), "{stdout}");
    assert!(stdout.contains("activated: true"), "{stdout}");

    let (status, v) = verifier.admin_get(&format!("/tellus/v1/hosts/{host_id}"));
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
    let host = Host::new();
    // A verifier that trusts only an unrelated self-signed CA (under the
    // two file names Verifier::start copies).
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca");
    std::fs::create_dir_all(&other_ca).unwrap();
    swtpm_tests::openssl(
        &other_ca,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "k.key",
            "-out",
            "issuercert.pem",
            "-subj",
            "/CN=other CA",
            "-days",
            "1",
        ],
    );
    std::fs::copy(other_ca.join("issuercert.pem"), other_ca.join("swtpm-localca-rootca-cert.pem"))
        .unwrap();
    let verifier = Verifier::start(&other_ca);
    let out = host.tellus(&["host", "enroll", "--verifier", &verifier.url()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("EnrollmentRefused") && err.contains("not trusted"), "{err}");
}

#[test]
fn refuses_plain_http_off_loopback_and_reports_unreachable_verifiers() {
    let host = Host::new();
    let t = Instant::now();
    let out = host.tellus(&["host", "enroll", "--verifier", "http://10.0.0.1:1"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("refusing plain HTTP") && err.contains("https://"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "it must not try to connect");

    // Nothing listens on this port.
    let port = free_port();
    let out = host.tellus(&["host", "enroll", "--verifier", &format!("http://127.0.0.1:{port}")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach the verifier") && err.contains("running"), "{err}");
}
