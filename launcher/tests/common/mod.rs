//! Helpers for tests that run the real `tellus` binary against real QEMU and
//! the real Debian cloud kernel + agent initramfs built by scripts/setup.sh.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous: several TCG guests may boot at once on a 2-core CI machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The test guest: (kernel, initrd). Fails loudly when set-up has not run.
pub fn guest() -> (PathBuf, PathBuf) {
    if let (Ok(k), Ok(i)) =
        (std::env::var("TELLUS_GUEST_KERNEL"), std::env::var("TELLUS_GUEST_INITRD"))
    {
        return (k.into(), i.into());
    }
    let cache = std::env::var_os("TELLUS_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/tellus")
    });
    let env = cache.join("guest/env");
    let text = std::fs::read_to_string(&env).unwrap_or_else(|e| {
        panic!("test guest missing ({}: {e}): run scripts/setup.sh first", env.display())
    });
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{key} missing in {}", env.display()))
    };
    (get("TELLUS_GUEST_KERNEL"), get("TELLUS_GUEST_INITRD"))
}

pub fn tellus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tellus"))
}

/// A real swtpm (TPM 2.0 over TCP, control port = server port + 1) in a
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
    /// A fresh, unprovisioned TPM (all PCR banks allocated, no EK certificate).
    pub fn start() -> Swtpm {
        let dir = tempfile::tempdir().unwrap();
        Swtpm::start_in(dir)
    }

    /// Starts swtpm on the TPM state in `dir` (e.g. one made by swtpm_setup).
    pub fn start_in(mut dir: tempfile::TempDir) -> Swtpm {
        for _ in 0..5 {
            let port = free_port_pair();
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.path().display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm (scripts/setup.sh installs it)");
            let mut t = Swtpm { child: Some(child), port, dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // A swtpm that lost the port to a concurrently started
                    // one exits at once, while the connect above reached the
                    // other one: only a swtpm still running is ours.
                    std::thread::sleep(Duration::from_millis(150));
                    if let Some(Ok(None)) = t.child.as_mut().map(|c| c.try_wait()) {
                        return t;
                    }
                    break;
                }
                if let Ok(Some(_)) = t.child.as_mut().unwrap().try_wait() {
                    break; // port taken in the meantime: retry
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            t.kill();
            dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
        }
        panic!("swtpm did not start");
    }

    /// The `--tpm` address.
    pub fn addr(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Environment for tpm2-tools.
    pub fn tcti_env(&self) -> (&'static str, String) {
        ("TPM2TOOLS_TCTI", self.addr())
    }

    /// `tpm2_pcrread` of one PCR in one bank, as lower-case hex.
    pub fn pcrread(&self, bank: &str, pcr: u32) -> String {
        let (k, v) = self.tcti_env();
        let out =
            Command::new("tpm2_pcrread").env(k, v).arg(format!("{bank}:{pcr}")).output().unwrap();
        assert!(out.status.success(), "tpm2_pcrread: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // tpm2_pcrread prints "13: 0x…" and, for one-digit PCRs, "0 : 0x…".
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == pcr.to_string())
                    .then(|| v.trim().trim_start_matches("0x").to_lowercase())
            })
            .unwrap_or_else(|| panic!("no PCR {pcr} in: {text}"))
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

/// A running `tellus run` whose stderr is collected line by line.
pub struct Launch {
    pub child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    pub dir: tempfile::TempDir,
    /// The launch's own swtpm, when it has one (see [`Launch::start`]).
    pub tpm: Option<Swtpm>,
}

impl Launch {
    /// Starts `tellus run` on the test guest with its own swtpm, a control
    /// socket, a console log and a state directory in a fresh directory,
    /// plus `extra` arguments.
    pub fn start(extra: &[&str]) -> Launch {
        let tpm = Swtpm::start();
        let state = tpm.dir.path().join("tellus-state");
        let mut l = Launch::start_with(&tpm.addr(), &state, extra);
        l.tpm = Some(tpm);
        l
    }

    /// Starts `tellus run` against an existing TPM and state directory.
    pub fn start_with(tpm: &str, state_dir: &Path, extra: &[&str]) -> Launch {
        let (kernel, initrd) = guest();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = tellus();
        cmd.arg("run")
            .arg("--tpm")
            .arg(tpm)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .arg("--control-socket")
            .arg(dir.path().join("ctl.sock"))
            .arg("--console-log")
            .arg(dir.path().join("console.log"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tellus");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (e, o) = (stderr.clone(), stdout.clone());
        let err = child.stderr.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[tellus] {line}");
                e.lock().unwrap().push(line);
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Launch { child, stderr, stdout, dir, tpm: None }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    pub fn console_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path().join("console.log")).unwrap()).into()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a stderr line contains `needle` (counting `nth` matches).
    pub fn wait_for(&mut self, needle: &str, nth: usize) -> String {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(l) = self.stderr().into_iter().filter(|l| l.contains(needle)).nth(nth - 1) {
                return l;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "tellus exited ({st}) before printing {needle:?}:\n{}",
                    self.stderr().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?}:\n{}",
                self.stderr().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `tellus ctl` against this launch; returns (success, stdout JSON).
    pub fn ctl(&self, request: &str) -> (bool, serde_json::Value) {
        let out =
            tellus().arg("ctl").arg("--socket").arg(self.socket()).arg(request).output().unwrap();
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.success(), v)
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200)); // let the readers drain
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "tellus did not exit:\n{}",
                self.stderr().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tellus` to completion with `args`; returns (status, stderr).
pub fn run_to_end(
    args: &[&dyn AsRef<std::ffi::OsStr>],
    env: &[(&str, &str)],
) -> (ExitStatus, String) {
    let mut cmd = tellus();
    for a in args {
        cmd.arg(a);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into())
}

pub fn write_exe(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `swtpm_localca`, which `swtpm_setup` calls to sign the EK certificate.
pub const SWTPM_LOCALCA: &str = "/usr/bin/swtpm_localca";

impl Swtpm {
    /// A TPM manufactured like a real one by `swtpm_setup --create-ek-cert
    /// --create-platform-cert`: RSA 2048 and ECC EKs with certificates in NV
    /// (0x01c00002, 0x01c00016) and a platform certificate, PCR banks SHA-256
    /// and SHA-384. The local CA that signs them lives in the TPM's own
    /// temporary directory ([`Swtpm::local_ca`]), never in
    /// /var/lib/swtpm-localca, through private swtpm_setup and swtpm-localca
    /// configuration files.
    pub fn start_provisioned() -> Swtpm {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let conf = d.join("swtpm-config");
        let ca = d.join("localca");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&ca).unwrap();
        std::fs::write(
            conf.join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = {SWTPM_LOCALCA}\n\
                 create_certs_tool_config = {c}/swtpm-localca.conf\n\
                 create_certs_tool_options = {c}/swtpm-localca.options\n\
                 active_pcr_banks = sha256,sha384\n",
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
            .args(["--tpm2", "--create-ek-cert", "--create-platform-cert"])
            .args(["--pcr-banks", "sha256,sha384"])
            .arg("--tpmstate")
            .arg(d)
            .arg("--config")
            .arg(conf.join("swtpm_setup.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("swtpm_setup (package swtpm-tools; scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "swtpm_setup failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Swtpm::start_in(dir)
    }

    /// The local CA of [`Swtpm::start_provisioned`]: `issuercert.pem` (the
    /// EK certificates' issuer) and `swtpm-localca-rootca-cert.pem` (its root).
    pub fn local_ca(&self) -> PathBuf {
        self.dir.path().join("localca")
    }
}
