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

pub use swtpm_tests::test_guest as guest_files;

/// A whole predicted launch measured into PCR 13 of `tpm`: runs the real
/// `tellus measure predict` (SHA-256 bank, `--cel-log`) for the guest
/// kernel and initrd, a firmware file written into `dir`, and `cmdline`,
/// and extends each predicted record into the TPM, as `tellus run` would.
/// Returns the CEL records and the predict JSON (the reference values of
/// this launch).
pub fn extend_predicted_launch(tpm: &Swtpm, dir: &Path, cmdline: &str) -> (Vec<CelRecord>, Value) {
    let (kernel, initrd) = guest_files();
    let firmware = dir.join("firmware.img");
    std::fs::write(&firmware, "firmware image for the policy tests").unwrap();
    let files = [kernel, initrd, firmware];
    let cel = dir.join("predicted.cel");
    let out = Command::new(tellus_bin())
        .args(["measure", "predict", "--banks", "sha256", "--output", "json", "--cmdline", cmdline])
        .arg("--kernel")
        .arg(&files[0])
        .arg("--initrd")
        .arg(&files[1])
        .arg("--firmware")
        .arg(&files[2])
        .arg("--cel-log")
        .arg(&cel)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tellus measure predict: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let predict: Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = tellus_measured_boot::cel::decode(&std::fs::read(&cel).unwrap()).unwrap();
    extend_records(tpm, &records);
    (records, predict)
}

/// Extends each record's SHA-256 digest into PCR 13 of `tpm`.
pub fn extend_records(tpm: &Swtpm, records: &[CelRecord]) {
    for r in records {
        let d = r.digests.iter().find_map(|d| d.digest()).unwrap();
        assert_eq!(d.alg(), HashAlg::Sha256);
        tpm.tpm2("tpm2_pcrextend", &[&format!("13:sha256={}", d.to_hex())]);
    }
}

/// A provisioned swtpm with a whole predicted launch measured into PCR 13
/// ([`extend_predicted_launch`]) and `tellus host init` done in `state`
/// beside that launch's log, as on a host that ran it.
pub struct MeasuredHost {
    pub tpm: Swtpm,
    pub dir: tempfile::TempDir,
    /// The launch's records, as measured.
    pub records: Vec<CelRecord>,
    /// `tellus measure predict --output json` of the launch.
    pub predict: Value,
}

impl MeasuredHost {
    pub fn new(cmdline: &str) -> MeasuredHost {
        let tpm = Swtpm::start_provisioned();
        let dir = tempfile::tempdir().unwrap();
        let (records, predict) = extend_predicted_launch(&tpm, dir.path(), cmdline);
        let host = MeasuredHost { tpm, dir, records, predict };
        host.init("state");
        host
    }

    /// `host init` in state directory `name` (another one: a new AK on the
    /// same TPM), with the launch log; returns the directory.
    pub fn init(&self, name: &str) -> PathBuf {
        let state = self.dir.path().join(name);
        self.tellus(&state, &["host", "init"]);
        std::fs::write(
            state.join("launch-log.cel"),
            tellus_measured_boot::cel::encode(&self.records),
        )
        .unwrap();
        state
    }

    /// The state directory made by [`MeasuredHost::new`].
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The host id `host init` saved.
    pub fn host_id(&self) -> String {
        std::fs::read_to_string(self.state().join("host/host-id")).unwrap().trim().to_owned()
    }

    /// `tellus ARGS --tpm .. --state-dir STATE`, which must succeed.
    pub fn tellus(&self, state: &Path, args: &[&str]) -> std::process::Output {
        let out = Command::new(tellus_bin())
            .args(args)
            .arg("--tpm")
            .arg(self.tpm.addr())
            .arg("--state-dir")
            .arg(state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tellus {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `tellus quote --pcrs 13` with `binding` as qualifyingData, by the
    /// AK of `state`.
    pub fn quote(&self, state: &Path, binding: &[u8]) -> Value {
        let out = state.join("ev.json");
        let nonce = hex::encode(binding);
        self.tellus(
            state,
            &["quote", "--nonce", &nonce, "--pcrs", "13", "--output", out.to_str().unwrap()],
        );
        serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
    }
}
