//! `tellus launch --config vm.toml`: a measured launch whose guest receives
//! its secrets only after the verifier attested it. The same code path as
//! `tellus run` ([`crate::run::run`]); `run` is a launch without a verifier.
//!
//! The configuration file (TOML; relative paths are relative to the file):
//!
//! ```toml
//! name = "demo"                       # VM identity (measured); default "tellus-vm"
//! kernel = "vmlinuz"                  # required
//! initrd = "initramfs.cpio.gz"        # required
//! cmdline = "console=ttyS0 reboot=t panic=-1 tellus.oneshot"   # default as `tellus run`
//! memory = "256M"                     # default 256M
//! vcpus = 1                           # default 1
//! # firmware, backend ("auto"|"qemu"|"builtin"), accel ("auto"|"kvm"|"tcg"), qemu, tellus_vmm
//! # machine ("microvm"|"q35"); sev_snp = true (+ snp_policy = 0x30000, snp_vcpu_type = "EPYC-v4"):
//! # an SEV-SNP guest that produces its own report (see `attest_snp`)
//! tpm = "swtpm:host=127.0.0.1,port=2321"   # default $TELLUS_TPM, else device:/dev/tpmrm0
//! pcr = 13
//! state_dir = "/var/lib/tellus"       # default $TELLUS_STATE_DIR, else /var/lib/tellus
//! console_log = "console.log"         # optional
//! control_socket = "ctl.sock"         # optional
//! resources = ["default/key/disk"]    # KBS resources the guest may fetch
//! on_attestation_failure = "poweroff" # or "continue"
//!
//! [verifier]
//! url = "https://verifier.example:8443"   # http:// only to loopback
//! ca_cert = "verifier-ca.pem"             # optional
//! ```
//!
//! `resources` are appended to the kernel command line as
//! `tellus.resources=a/b/c,...`, so the list is measured with the command
//! line (reference values from `tellus measure predict` must use the same
//! full command line, which the launch prints), and the guest agent asks
//! for exactly these. The launcher relays only requests for configured
//! resources.
//!
//! One attestation per boot: the first `AttestRequest` of a boot is relayed
//! (in its own thread; the control socket and signals keep working), any
//! further one in the same boot is denied without changing the first
//! verdict. A reboot (guest- or host-initiated) allows one more, with a new
//! guest key and a new KBS session; a verdict that arrives after a reboot
//! is dropped, since the key it was for is gone.
//!
//! Progress lines on stderr name the phases: `phase measure` (records in
//! the TPM and host log), `phase boot` (vCPUs started → agent `Ready`),
//! `phase attest` (request → verdict, with the KBS steps' times) and `phase
//! release` (verdict → the guest's report of the secrets it stored, with
//! their SHA-256). `--output json` prints one summary object on stdout at
//! the end: `verdict` (`released`, `denied`, `none` or `not-requested`),
//! `reason`, `secrets` (`resource`, `sha256` as the guest reported them;
//! the launcher never sees a secret), `failed`, `powered_off_by_policy`,
//! `phases_ms`, `exit_status`.
//!
//! Exit status: 0 when the guest powered off (secrets released, none asked
//! for, or denied under `"continue"`); 1 when the VM could not be started
//! (including a bad configuration file or an unusable verifier URL); 3 when
//! the VMM failed while the VM ran; 4 when the stop could not be recorded;
//! 5 when the attestation was denied (or the verifier could not be asked)
//! and the VM was powered off by `on_attestation_failure = "poweroff"`.

use crate::accel::AccelChoice;
use crate::attest::AttestConfig;
use crate::backend::qemu::snp::SnpSpec;
use crate::backend::qemu::Machine;
use crate::backend::BackendChoice;
use crate::enroll_client::{ClientError, VerifierClient};
use crate::measured_launch::MeasureConfig;
use crate::run::{self, OnAttestationFailure, Outcome, RunError, RunOptions, VmSpec};
use crate::tpm::{TpmAddress, DEFAULT_TPM};
use crate::vm_config::MemorySize;
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tellus_protocol::{ResourcePath, MAX_RESOURCES};

/// Exit status of a denial that powered the VM off.
pub const EXIT_DENIED: u8 = 5;
/// Largest configuration file read.
const MAX_CONFIG_LEN: u64 = 64 << 10;

/// Why a launch configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot read the launch configuration {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the launch configuration {path} is larger than {MAX_CONFIG_LEN} bytes")]
    TooLarge { path: PathBuf },
    #[error("the launch configuration {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the launch configuration's [verifier]: {0}")]
    Verifier(#[from] ClientError),
}

/// `[verifier]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierSection {
    pub url: String,
    pub ca_cert: Option<PathBuf>,
}

/// The launch configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchConfig {
    #[serde(default = "default_name")]
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: Option<String>,
    #[serde(default = "default_memory")]
    pub memory: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    pub firmware: Option<PathBuf>,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub accel: Option<String>,
    pub qemu: Option<PathBuf>,
    /// The built-in VMM's executable (default: `tellus-vmm` next to `tellus`).
    pub tellus_vmm: Option<PathBuf>,
    /// QEMU machine, `microvm` or `q35`.
    pub machine: Option<String>,
    /// An SEV-SNP guest.
    #[serde(default)]
    pub sev_snp: bool,
    pub snp_policy: Option<u64>,
    pub snp_vcpu_type: Option<String>,
    pub tpm: Option<String>,
    #[serde(default = "default_pcr")]
    pub pcr: u32,
    pub state_dir: Option<PathBuf>,
    pub console_log: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub on_attestation_failure: OnAttestationFailure,
    pub verifier: Option<VerifierSection>,
}

fn default_name() -> String {
    "tellus-vm".into()
}
fn default_memory() -> String {
    "256M".into()
}
fn default_vcpus() -> u32 {
    1
}
fn default_pcr() -> u32 {
    crate::measure::DEFAULT_PCR
}

/// A configuration resolved into what [`run::run`] takes.
pub struct Prepared {
    pub opts: RunOptions,
    pub resources: Vec<String>,
    pub on_failure: OnAttestationFailure,
}

impl LaunchConfig {
    /// Reads and parses `path` (bounded).
    pub fn load(path: &Path) -> Result<LaunchConfig, LaunchError> {
        use std::io::Read;
        let read = |source| LaunchError::Read { path: path.into(), source };
        let f = std::fs::File::open(path).map_err(read)?;
        let mut text = String::new();
        f.take(MAX_CONFIG_LEN + 1).read_to_string(&mut text).map_err(read)?;
        if text.len() as u64 > MAX_CONFIG_LEN {
            return Err(LaunchError::TooLarge { path: path.into() });
        }
        let mut cfg: LaunchConfig = toml::from_str(&text)
            .map_err(|e| LaunchError::Invalid { path: path.into(), reason: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rel(&mut cfg.kernel);
        rel(&mut cfg.initrd);
        for p in [
            &mut cfg.firmware,
            &mut cfg.qemu,
            &mut cfg.tellus_vmm,
            &mut cfg.state_dir,
            &mut cfg.console_log,
            &mut cfg.control_socket,
        ]
        .into_iter()
        .flatten()
        {
            rel(p);
        }
        if let Some(ca) = cfg.verifier.as_mut().and_then(|v| v.ca_cert.as_mut()) {
            rel(ca);
        }
        Ok(cfg)
    }

    /// Checks the configuration and builds the run options; connects to
    /// nothing.
    pub fn prepare(self, path: &Path, started: Instant) -> Result<Prepared, LaunchError> {
        let invalid = |reason: String| LaunchError::Invalid { path: path.into(), reason };
        let memory: MemorySize =
            self.memory.parse().map_err(|e| invalid(format!("memory: {e}")))?;
        let backend = match self.backend.as_deref() {
            None | Some("auto") => BackendChoice::Auto,
            Some("qemu") => BackendChoice::Qemu,
            Some("builtin") => BackendChoice::Builtin,
            Some(o) => return Err(invalid(format!("backend {o:?}: use auto, qemu or builtin"))),
        };
        let machine = match self.machine.as_deref() {
            None => None,
            Some("microvm") => Some(Machine::Microvm),
            Some("q35") => Some(Machine::Q35),
            Some(o) => return Err(invalid(format!("machine {o:?}: use microvm or q35"))),
        };
        if !self.sev_snp && (self.snp_policy.is_some() || self.snp_vcpu_type.is_some()) {
            return Err(invalid("snp_policy and snp_vcpu_type need sev_snp = true".into()));
        }
        let sev_snp = self.sev_snp.then(|| {
            let d = SnpSpec::default();
            SnpSpec {
                policy: self.snp_policy.unwrap_or(d.policy),
                vcpu_type: self.snp_vcpu_type.clone().unwrap_or(d.vcpu_type),
            }
        });
        let accel = match self.accel.as_deref() {
            None | Some("auto") => AccelChoice::Auto,
            Some("kvm") => AccelChoice::Kvm,
            Some("tcg") => AccelChoice::Tcg,
            Some(o) => return Err(invalid(format!("accel {o:?}: use auto, kvm or tcg"))),
        };
        if self.resources.len() > MAX_RESOURCES {
            return Err(invalid(format!("at most {MAX_RESOURCES} resources")));
        }
        let mut resources = Vec::new();
        for r in &self.resources {
            let p = ResourcePath::parse(r).map_err(|e| invalid(format!("resources: {e}")))?;
            if !resources.contains(&p.to_string()) {
                resources.push(p.to_string());
            }
        }
        if self.cmdline.as_deref().is_some_and(|c| c.contains("tellus.resources=")) {
            return Err(invalid(
                "name the resources in `resources`, not as tellus.resources= in `cmdline`".into(),
            ));
        }
        if !resources.is_empty() && self.verifier.is_none() {
            return Err(invalid("`resources` need a [verifier] to release them".into()));
        }
        let tpm_spec = self
            .tpm
            .or_else(|| std::env::var("TELLUS_TPM").ok())
            .unwrap_or_else(|| DEFAULT_TPM.into());
        let tpm: TpmAddress = tpm_spec.parse().map_err(|e| invalid(format!("tpm: {e}")))?;
        let state_dir = self
            .state_dir
            .or_else(|| std::env::var_os("TELLUS_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/lib/tellus"));
        let attest = match &self.verifier {
            Some(v) => Some(AttestConfig::new(
                VerifierClient::new(&v.url, v.ca_cert.as_deref())?,
                tpm.clone(),
                state_dir.clone(),
                self.pcr,
                resources.clone(),
            )),
            None => None,
        };
        let spec = VmSpec {
            name: self.name,
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            cmdline_extra: (!resources.is_empty())
                .then(|| format!("tellus.resources={}", resources.join(","))),
            memory,
            vcpus: self.vcpus,
            firmware: self.firmware,
            backend,
            accel,
            qemu: self.qemu,
            vmm: self.tellus_vmm,
            machine,
            sev_snp,
        };
        Ok(Prepared {
            opts: RunOptions {
                spec,
                measure: MeasureConfig { tpm, pcr: self.pcr, state_dir },
                console_log: self.console_log,
                control_socket: self.control_socket,
                started,
                attest,
                on_attestation_failure: self.on_attestation_failure,
                console_to_stdout: true,
                after_ready: None,
            },
            resources,
            on_failure: self.on_attestation_failure,
        })
    }
}

/// The VM and PCR `tellus launch --config path` would measure, for
/// `tellus measure predict --config`: the same parsing and checks as the
/// launch, so the prediction has the launch's full command line
/// (`tellus.resources=` included). Connects to nothing.
pub fn predict_spec(path: &Path) -> Result<(VmSpec, u32), LaunchError> {
    let prepared = LaunchConfig::load(path)?.prepare(path, Instant::now())?;
    Ok((prepared.opts.spec, prepared.opts.measure.pcr))
}

/// The exit status of a finished launch.
pub fn exit_status(result: &Result<Outcome, RunError>) -> u8 {
    match result {
        Ok(o) if o.denied_and_powered_off() => EXIT_DENIED,
        Ok(_) => 0,
        Err(e) => u8::try_from(e.exit_code()).unwrap_or(1),
    }
}

/// Milliseconds rounded to 0.1.
fn r1(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// The `--output json` summary of a launch.
pub fn summary(
    name: &str,
    resources: &[String],
    on_failure: OnAttestationFailure,
    result: &Result<Outcome, RunError>,
    total_ms: f64,
) -> serde_json::Value {
    let status = exit_status(result);
    match result {
        Ok(o) => {
            let a = o.attestation.as_ref();
            let verdict = match a.and_then(|a| a.verdict) {
                Some(v) => json!(v),
                None if resources.is_empty() => json!("not-requested"),
                None => json!("none"),
            };
            json!({
                "name": name,
                "exit_status": status,
                "stop_reason": o.reason,
                "boots": o.boots,
                "on_attestation_failure": on_failure,
                "resources": resources,
                "verdict": verdict,
                "reason": a.and_then(|a| a.reason.clone()),
                "powered_off_by_policy": o.denied_and_powered_off(),
                "secrets": a.map(|a| a.stored.clone()).unwrap_or_default(),
                "failed": a.map(|a| a.failed.clone()).unwrap_or_default(),
                "phases_ms": {
                    "measure": o.timeline.measured_ms,
                    "boot": o.timeline.agent_ready_ms.map(|r| r1(r - o.timeline.measured_ms)),
                    "vcpus_started_at": o.timeline.vcpus_started_ms,
                    "agent_ready_at": o.timeline.agent_ready_ms,
                    "attest_requested_at": a.map(|a| a.requested_ms),
                    "attest": a.and_then(|a| a.answered_ms.map(|x| r1(x - a.requested_ms))),
                    "attest_steps": a.and_then(|a| a.steps.clone()),
                    "release": a.and_then(|a| match (a.answered_ms, a.stored_ms) {
                        (Some(x), Some(y)) => Some(r1(y - x)),
                        _ => None,
                    }),
                    "total": total_ms,
                },
            })
        }
        Err(e) => json!({
            "name": name,
            "exit_status": status,
            "error": e.to_string(),
            "resources": resources,
            "verdict": "none",
        }),
    }
}

/// `tellus launch`: runs the launch and returns its exit status.
pub fn launch(config: &Path, json_output: bool, started: Instant) -> u8 {
    let prepared = LaunchConfig::load(config).and_then(|c| c.prepare(config, started));
    let Prepared { mut opts, resources, on_failure } = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tellus: error: {e}");
            if json_output {
                println!(
                    "{}",
                    json!({"exit_status": 1, "error": e.to_string(), "verdict": "none"})
                );
            }
            return 1;
        }
    };
    opts.console_to_stdout = !json_output;
    let name = opts.spec.name.clone();
    let result = run::run(opts);
    let total = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
    match &result {
        Ok(o) => {
            let how = if o.reason == "guest-shutdown" { "powered off" } else { "stopped" };
            eprintln!("tellus: VM {how} ({}) after {total} ms, {} boot(s)", o.reason, o.boots);
            if let Some(a) = &o.attestation {
                match a.verdict {
                    Some(run::Verdict::Released) => eprintln!(
                        "tellus: verdict: released {} of {} resource(s) to the guest",
                        a.stored.len(),
                        a.resources.len()
                    ),
                    Some(run::Verdict::Denied) if a.powered_off => eprintln!(
                        "tellus: verdict: DENIED ({}); the VM was powered off (exit status {EXIT_DENIED})",
                        a.reason.as_deref().unwrap_or("no reason")
                    ),
                    Some(run::Verdict::Denied) => eprintln!(
                        "tellus: verdict: DENIED ({}); the guest ran on without its secrets",
                        a.reason.as_deref().unwrap_or("no reason")
                    ),
                    None => eprintln!("tellus: verdict: none (the VM stopped before the verifier answered)"),
                }
            } else if !resources.is_empty() {
                eprintln!("tellus: verdict: none (the guest never asked for its resources)");
            }
        }
        Err(e) => eprintln!("tellus: error: {e}"),
    }
    if json_output {
        let s = summary(&name, &resources, on_failure, &result, total);
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    }
    exit_status(&result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("vm.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn parses_resolves_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"
name = "demo"
kernel = "vmlinuz"
initrd = "/abs/initrd"
memory = "512M"
vcpus = 2
tpm = "swtpm:host=127.0.0.1,port=2321"
state_dir = "state"
resources = ["default/key/disk", "default/key/disk", "r/t/x"]
on_attestation_failure = "continue"
[verifier]
url = "http://127.0.0.1:8080"
"#,
        );
        let cfg = LaunchConfig::load(&p).unwrap();
        assert_eq!(cfg.kernel, dir.path().join("vmlinuz"));
        assert_eq!(cfg.initrd, PathBuf::from("/abs/initrd"));
        let prep = cfg.prepare(&p, Instant::now()).unwrap();
        assert_eq!(prep.resources, ["default/key/disk", "r/t/x"]);
        assert_eq!(prep.on_failure, OnAttestationFailure::Continue);
        assert_eq!(
            prep.opts.spec.cmdline_extra.as_deref(),
            Some("tellus.resources=default/key/disk,r/t/x")
        );
        assert_eq!(prep.opts.spec.vcpus, 2);
        assert_eq!(prep.opts.measure.state_dir, dir.path().join("state"));
        assert!(prep.opts.attest.is_some());
        assert_eq!(prep.opts.spec.machine, None);
        assert_eq!(prep.opts.spec.sev_snp, None);
        let p = write(
            dir.path(),
            "kernel = \"k\"\ninitrd = \"i\"\nmachine = \"q35\"\nsev_snp = true\nsnp_vcpu_type = \"EPYC-Milan\"\n",
        );
        let prep = LaunchConfig::load(&p).unwrap().prepare(&p, Instant::now()).unwrap();
        assert_eq!(prep.opts.spec.machine, Some(Machine::Q35));
        assert_eq!(
            prep.opts.spec.sev_snp,
            Some(SnpSpec { policy: 0x30000, vcpu_type: "EPYC-Milan".into() })
        );
    }

    #[test]
    fn refuses_bad_configurations() {
        let dir = tempfile::tempdir().unwrap();
        for (text, want) in [
            ("kernel = \"k\"\ninitrd = \"i\"\nbogus = 1\n", "unknown field"),
            ("kernel = \"k\"\n", "initrd"),
            ("kernel = \"k\"\ninitrd = \"i\"\non_attestation_failure = \"ignore\"\n", "ignore"),
            ("kernel = \"k\"\ninitrd = \"i\"\nresources = [\"a/b\"]\n[verifier]\nurl = \"http://127.0.0.1:1\"\n", "repo/type/tag"),
            ("kernel = \"k\"\ninitrd = \"i\"\nresources = [\"a/b/c\"]\n", "[verifier]"),
            ("kernel = \"k\"\ninitrd = \"i\"\ncmdline = \"tellus.resources=a/b/c\"\n", "not as tellus.resources"),
            ("kernel = \"k\"\ninitrd = \"i\"\nresources = [\"a/b/c\"]\n[verifier]\nurl = \"http://10.0.0.1:1\"\n", "loopback"),
            ("kernel = \"k\"\ninitrd = \"i\"\nmachine = \"pc\"\n", "use microvm or q35"),
            ("kernel = \"k\"\ninitrd = \"i\"\nsnp_policy = 196608\n", "need sev_snp = true"),
        ] {
            let p = write(dir.path(), text);
            let e = LaunchConfig::load(&p)
                .and_then(|c| c.prepare(&p, Instant::now()))
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"))
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
