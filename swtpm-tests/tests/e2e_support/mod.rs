//! End-to-end harness shared by `tests/launch_e2e.rs` and
//! `benches/attest_latency.rs`: a real provisioned swtpm with `tellus host
//! init`, a real `tellus-verifier serve` process
//! ([`swtpm_tests::verifier_process`]: SQLite, plain HTTP on loopback, EK
//! CA = a copy of the swtpm's local CA, log captured to a file), and
//! `tellus launch` of the real Debian kernel + agent initramfs
//! built by scripts/setup.sh under real QEMU.
//!
//! The binaries: cargo builds a dev-dependency's library but not its
//! binaries, so [`bins`] asks cargo to build both and takes the paths cargo
//! reports (a no-op when up to date).
#![allow(dead_code)] // the bench and the tests use different subsets

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lossy UTF-8.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// (`tellus`, `tellus-verifier`), built once per process.
pub fn bins() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-q", "-p", "tellus-launcher", "--bin", "tellus"])
            .args(["-p", "tellus-verifier", "--bin", "tellus-verifier"])
            .args(["--message-format", "json-render-diagnostics"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // Same profile as this test or bench executable.
        let exe = std::env::current_exe().unwrap();
        if exe.ancestors().any(|a| a.file_name().is_some_and(|n| n == "release")) {
            cmd.arg("--release");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let find = |name: &str| {
            text(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
                .find_map(|m| m["executable"].as_str().map(PathBuf::from))
                .unwrap_or_else(|| panic!("cargo reported no {name} executable"))
        };
        (find("tellus"), find("tellus-verifier"))
    })
}

pub use swtpm_tests::test_guest as guest;

/// The command line of the test guest under TCG, with `tellus.oneshot`
/// (the agent powers off once its secrets are handled).
pub const CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 tsc_early_khz=2000000 tellus.oneshot";

/// A running `tellus-verifier serve` of [`bins`] (the library's
/// [`swtpm_tests::verifier_process::Verifier`]); killed on drop.
pub struct Verifier(swtpm_tests::verifier_process::Verifier);

impl Verifier {
    /// Starts a verifier that trusts the EK CA in `ek_ca` (a swtpm local CA).
    pub fn start(ek_ca: &Path) -> Verifier {
        Verifier(swtpm_tests::verifier_process::Verifier::start(&bins().1, ek_ca))
    }
}

impl std::ops::Deref for Verifier {
    type Target = swtpm_tests::verifier_process::Verifier;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A provisioned swtpm with `tellus host init` done in its state directory.
pub use swtpm_tests::TpmHost as Host;

/// A new [`Host`] run by the `tellus` built for these tests.
pub fn host() -> Host {
    Host::new(&bins().0)
}

/// What a launch is made of (the `vm.toml` written for it).
#[derive(Clone)]
pub struct VmToml {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory: String,
    pub resources: Vec<String>,
    pub on_failure: &'static str,
    pub verifier: Option<String>,
}

impl VmToml {
    /// The test guest, one vCPU, `tellus.oneshot`, no resources.
    pub fn guest() -> VmToml {
        let (kernel, initrd) = guest();
        VmToml {
            name: "e2e".into(),
            kernel,
            initrd,
            cmdline: CMDLINE.into(),
            vcpus: 1,
            memory: "256M".into(),
            resources: vec![],
            on_failure: "poweroff",
            verifier: None,
        }
    }

    fn render(&self, host: &Host, console_log: &Path) -> String {
        let mut t = format!(
            "name = {:?}\nkernel = {:?}\ninitrd = {:?}\ncmdline = {:?}\nvcpus = {}\n\
             memory = {:?}\ntpm = {:?}\nstate_dir = {:?}\nconsole_log = {:?}\n\
             on_attestation_failure = {:?}\nresources = {:?}\n",
            self.name,
            self.kernel,
            self.initrd,
            self.cmdline,
            self.vcpus,
            self.memory,
            host.tpm.addr(),
            host.state,
            console_log,
            self.on_failure,
            self.resources,
        );
        if let Some(url) = &self.verifier {
            t.push_str(&format!("[verifier]\nurl = {url:?}\n"));
        }
        t
    }

    /// Reference values for this VM: `tellus measure predict --config
    /// <its vm.toml> --output json`, i.e. exactly what `tellus launch` of
    /// the same file measures, written to a file in `dir`.
    pub fn predict(&self, host: &Host, dir: &Path) -> PathBuf {
        let config = dir.join(format!("predict-{}.toml", std::process::id()));
        std::fs::write(&config, self.render(host, &dir.join("console.log"))).unwrap();
        let out = Command::new(&bins().0)
            .args(["measure", "predict", "--config"])
            .arg(&config)
            .args(["--output", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "predict failed:\n{}", text(&out.stderr));
        let path = dir.join(format!("predict-{}.json", std::process::id()));
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }
}

/// A finished `tellus launch --output json`.
pub struct Launched {
    pub status: i32,
    pub summary: Value,
    pub stderr: String,
    pub console: String,
    pub wall: Duration,
}

impl Launched {
    /// The `secret <path> sha256=<hex>` lines the guest printed.
    pub fn secret_lines(&self) -> Vec<String> {
        self.console
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| l.starts_with("secret /run/tellus/secrets/"))
            .map(str::to_owned)
            .collect()
    }

    /// Everything, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit {}\n--- summary\n{}\n--- stderr\n{}\n--- console\n{}",
            self.status,
            serde_json::to_string_pretty(&self.summary).unwrap_or_default(),
            self.stderr,
            self.console
        )
    }
}

/// Runs `tellus launch --config <vm.toml> --output json` to its end.
pub fn launch(host: &Host, vm: &VmToml) -> Launched {
    let dir = tempfile::tempdir().unwrap();
    let console_log = dir.path().join("console.log");
    let config = dir.path().join("vm.toml");
    std::fs::write(&config, vm.render(host, &console_log)).unwrap();
    let t = Instant::now();
    let out = Command::new(&bins().0)
        .args(["launch", "--config"])
        .arg(&config)
        .args(["--output", "json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let wall = t.elapsed();
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "tellus panicked:\n{stderr}");
    Launched {
        status: out.status.code().unwrap_or(-1),
        summary: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        stderr,
        console: std::fs::read(&console_log).map(|b| text(&b)).unwrap_or_default(),
        wall,
    }
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}
