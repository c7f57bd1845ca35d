//! Shared helpers of the registrar tests: test-vector paths, a real swtpm
//! driven by tpm2-tools, and openssl-made certificates.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// A real swtpm (TPM 2.0 over TCP, control port = server port + 1) on a
/// private state directory; killed when dropped.
pub struct Swtpm {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65535 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair");
}

impl Swtpm {
    /// A fresh, unprovisioned TPM.
    pub fn start() -> Swtpm {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        Swtpm::start_in(dir)
    }

    /// A TPM manufactured by `swtpm_setup --create-ek-cert`: RSA-2048 and
    /// ECC EKs with certificates in NV (0x01c00002, 0x01c00016), signed by a
    /// local CA kept in this TPM's own directory ([`Swtpm::local_ca`]).
    pub fn start_provisioned() -> Swtpm {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (conf, ca, state) = (d.join("conf"), d.join("localca"), d.join("state"));
        for p in [&conf, &ca, &state] {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(
            conf.join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\n\
                 create_certs_tool_config = {c}/swtpm-localca.conf\n\
                 create_certs_tool_options = {c}/swtpm-localca.options\n\
                 active_pcr_banks = sha256\n",
                c = conf.display()
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("swtpm-localca.conf"),
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\n\
                 issuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n",
                ca = ca.display()
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("swtpm-localca.options"),
            "--platform-manufacturer tellus\n--platform-version 2.1\n--platform-model test\n",
        )
        .unwrap();
        let out = Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--pcr-banks", "sha256"])
            .arg("--tpmstate")
            .arg(&state)
            .arg("--config")
            .arg(conf.join("swtpm_setup.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("swtpm_setup (package swtpm-tools)");
        assert!(
            out.status.success(),
            "swtpm_setup failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Swtpm::start_in(dir)
    }

    fn start_in(mut dir: tempfile::TempDir) -> Swtpm {
        for _ in 0..5 {
            let port = free_port_pair();
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.path().join("state").display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm (package swtpm)");
            let mut t = Swtpm { child: Some(child), port, dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(Ok(Some(_))) = t.child.as_mut().map(|c| c.try_wait()) {
                    break; // port taken in the meantime: retry
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return t;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            t.kill();
            dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
        }
        panic!("swtpm did not start");
    }

    /// A scratch file path in this TPM's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The local CA of [`Swtpm::start_provisioned`].
    pub fn local_ca(&self) -> PathBuf {
        self.dir.path().join("localca")
    }

    /// Runs a tpm2-tools command against this TPM, in its directory.
    pub fn try_tool(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(tool)
            .env("TPM2TOOLS_TCTI", format!("swtpm:host=127.0.0.1,port={}", self.port))
            .current_dir(self.dir.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{tool} (package tpm2-tools): {e}"))
    }

    /// Like [`Swtpm::try_tool`], failing the test if the command fails.
    pub fn tool(&self, tool: &str, args: &[&str]) -> Output {
        let out = self.try_tool(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `openssl` in `dir`, failing the test if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
