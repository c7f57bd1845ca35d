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

pub use swtpm_tests::test_guest as guest;

pub fn tellus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tellus"))
}

pub use swtpm_tests::Swtpm;

/// `tellus run` measuring into the TPM at `tpm` (`host:port`) with its state
/// (host log, keys) in `state_dir`; the caller adds the rest.
pub fn tellus_run(tpm: &str, state_dir: &Path) -> Command {
    let mut cmd = tellus();
    cmd.arg("run").arg("--tpm").arg(tpm).arg("--state-dir").arg(state_dir);
    cmd
}

/// Lines a reader thread collects.
pub type SharedLines = Arc<Mutex<Vec<String>>>;
/// Bytes a reader thread collects.
pub type SharedBytes = Arc<Mutex<Vec<u8>>>;

/// Collects what `child` (spawned with piped stdout and stderr) writes, each
/// stream by its own thread: stderr line by line, echoed as `[tellus] …`,
/// and stdout as bytes.
pub fn collect_output(child: &mut Child) -> (SharedLines, SharedBytes) {
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
    (stderr, stdout)
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
        let mut cmd = tellus_run(tpm, state_dir);
        cmd.arg("--kernel")
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
        let (stderr, stdout) = collect_output(&mut child);
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
            if Instant::now() >= deadline {
                let console =
                    std::fs::read(self.dir.path().join("console.log")).unwrap_or_default();
                let tail = &console[console.len().saturating_sub(4096)..];
                panic!(
                    "timed out waiting for {needle:?}:\n{}\n--- guest console (last 4 KiB) ---\n{}",
                    self.stderr().join("\n"),
                    String::from_utf8_lossy(tail)
                );
            }
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

/// `tellus measure predict` for the test guest's kernel and initrd; the
/// caller adds the other flags.
pub fn predict_guest() -> Command {
    let (kernel, initrd) = guest();
    let mut cmd = tellus();
    cmd.args(["measure", "predict"]).arg("--kernel").arg(kernel).arg("--initrd").arg(initrd);
    cmd
}

/// The prediction, in JSON with both banks, for the test guest and `extra`.
pub fn predict_json(extra: &[&str]) -> serde_json::Value {
    json_of(predict_guest().args(["--output", "json", "--banks", "sha256,sha384"]).args(extra))
}

/// The launch records of a QEMU guest with firmware, in log order.
pub const QEMU_RECORD_KINDS: [&str; 10] = [
    "launcher-binary",
    "vmm-binary",
    "launcher-config",
    "vm-identity",
    "launch-config",
    "firmware",
    "kernel",
    "initrd",
    "cmdline",
    "separator",
];

/// The kinds of a prediction's records, in order.
pub fn kinds(p: &serde_json::Value) -> Vec<String> {
    p["records"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap().into()).collect()
}

/// Runs `cmd`, which must succeed, and parses its stdout as JSON.
pub fn json_of(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The record of `kind` in `tellus measure predict --output json`'s output.
pub fn record<'a>(p: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    p["records"].as_array().unwrap().iter().find(|r| r["kind"] == kind).unwrap()
}

/// Checks that a host log (the `records` of `tellus eventlog show --output
/// json`) begins with the predicted launch records (the `records` of `tellus
/// measure predict --output json --banks sha256,sha384`), in order, each of
/// the predicted kind with the predicted digest in both banks.
pub fn assert_log_starts_as_predicted(log: &[serde_json::Value], predicted: &[serde_json::Value]) {
    for (n, want) in predicted.iter().enumerate() {
        assert_eq!(log[n]["content"]["kind"], want["kind"], "record {n}");
        for bank in ["sha256", "sha384"] {
            let got = log[n]["digests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["hashAlg"] == bank)
                .unwrap()["digest"]
                .as_str()
                .unwrap();
            assert_eq!(want["record_digests"][bank], format!("{bank}:{got}"), "record {n} {bank}");
        }
    }
}

/// Lossy UTF-8 of a command's output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub use swtpm_tests::TpmHost;

/// A provisioned swtpm with `tellus host init` done, run by this package's
/// `tellus`.
pub fn tpm_host() -> TpmHost {
    TpmHost::new(env!("CARGO_BIN_EXE_tellus"))
}
