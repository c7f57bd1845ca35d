//! `tellus run`: start a VM, capture its console, talk to its agent, serve
//! the control socket, and account for how it ends.

use crate::accel::{self, Accel, AccelChoice, NoHardwareKvm};
use crate::attest::{self, AttestConfig, AttestError, StepTimings};
use crate::attest_snp;
use crate::backend::builtin::{self, Builtin};
use crate::backend::qemu::snp::{self as qemu_snp, SnpError, SnpSpec};
use crate::backend::qemu::{Machine, Qemu};
use crate::backend::{Backend, BackendChoice, BackendError, EventSink, PowerControl, VmmEvent};
use crate::channel::{self, ChannelEvent, ChannelWriter};
use crate::control::{
    ControlError, ControlRequest, ControlResponse, ControlServer, Pending, VmStatus,
};
use crate::measure::{self, MeasureError};
use crate::measured_launch::{self, MeasureConfig, MeasuredLaunchError};
use crate::vm_config::{ConfigError, MemorySize, VmConfig};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tellus_measured_boot::digest::MultiHasher;
use tellus_measured_boot::records::{self, FileMeasurement, LaunchRecord, RecordError};
use tellus_measured_boot::HashAlg;
use tellus_protocol::{
    AttestResult, FailedSecret, GuestMessage, HostMessage, StoredSecret, TeePubKey, MAX_REASON_LEN,
};

/// How long the agent gets to power the guest off before the ACPI button.
const AGENT_GRACE: Duration = Duration::from_secs(10);
/// How long the guest gets after the ACPI button before QEMU is stopped.
const POWER_BUTTON_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the exit report of a VMM found dead.
const VMM_EXIT_WAIT: Duration = Duration::from_secs(2);
/// How long a VMM told to stop may take to exit before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);
/// Channel drop reports printed individually; later ones are only counted.
const DROP_REPORTS: u32 = 20;

macro_rules! progress {
    ($($t:tt)*) => { eprintln!("tellus: {}", format_args!($($t)*)) };
}

/// What a VM is launched from: the flags `tellus run` and
/// `tellus measure predict` share.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// VM identity; measured in the vm-identity record.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `None`: the default for the chosen accelerator, see [`default_cmdline`].
    pub cmdline: Option<String>,
    /// Appended to the command line (after a space), e.g. the
    /// `tellus.resources=` of `tellus launch`; measured with it.
    pub cmdline_extra: Option<String>,
    pub memory: MemorySize,
    pub vcpus: u32,
    /// Firmware image; `None`: the backend's default (QEMU: qboot for microvm).
    pub firmware: Option<PathBuf>,
    pub backend: BackendChoice,
    pub accel: AccelChoice,
    pub qemu: Option<PathBuf>,
    /// The built-in VMM's executable; `None`: `tellus-vmm` next to the
    /// running executable.
    pub vmm: Option<PathBuf>,
    /// QEMU machine; `None`: microvm, or q35 for SEV-SNP.
    pub machine: Option<Machine>,
    /// Launch as an SEV-SNP guest (QEMU, q35, KVM on an SNP host).
    pub sev_snp: Option<SnpSpec>,
}

/// A [`VmSpec`] resolved against this host: accelerator chosen, defaults
/// filled in, every input checked, the backend located.
pub struct Resolved {
    pub vm: VmConfig,
    pub accel: Accel,
    /// Why this accelerator (printed).
    pub accel_reason: String,
    /// The VMM, located.
    pub vmm: Vmm,
}

/// The VMM of a resolved launch.
pub enum Vmm {
    Qemu(Qemu),
    /// The built-in VMM, its executable (`tellus-vmm`) staged.
    Builtin(Builtin),
}

impl Vmm {
    /// QEMU, when it is QEMU.
    pub fn qemu(&self) -> Option<&Qemu> {
        match self {
            Vmm::Qemu(q) => Some(q),
            Vmm::Builtin(_) => None,
        }
    }
}

/// Resolves and validates `spec`: the kernel, initrd and firmware are
/// staged into sealed in-memory copies ([`crate::image`]) and checked there;
/// a launch measures and loads those copies, a prediction measures them.
/// Nothing is started.
pub fn resolve(spec: &VmSpec) -> Result<Resolved, RunError> {
    let host = accel::detect();
    let (accel, accel_reason) = match spec.backend {
        BackendChoice::Builtin if spec.machine.is_some() || spec.sev_snp.is_some() => {
            return Err(BackendError::MachineNeedsQemu.into())
        }
        BackendChoice::Builtin => builtin::choose_accel(spec.accel, &host)?,
        // The host's SNP support is checked by `run` (a prediction needs none).
        _ if spec.sev_snp.is_some() => match spec.accel {
            AccelChoice::Tcg => return Err(BackendError::from(SnpError::NotKvm).into()),
            _ => (Accel::Kvm, "SEV-SNP guests run under KVM only".to_string()),
        },
        _ => accel::choose(spec.accel, &host)?,
    };
    let mut cmdline = spec.cmdline.clone().unwrap_or_else(|| match spec.backend {
        BackendChoice::Builtin => builtin::DEFAULT_CMDLINE.into(),
        _ => default_cmdline(accel),
    });
    if let Some(extra) = spec.cmdline_extra.as_deref().filter(|e| !e.is_empty()) {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let qemu = match spec.backend {
        BackendChoice::Auto | BackendChoice::Qemu => {
            let snp = spec.sev_snp.clone();
            if let Some(s) = &snp {
                s.check().map_err(|e| BackendError::from(SnpError::from(e)))?;
            }
            if let (Some(_), Some(m @ Machine::Microvm)) = (&snp, spec.machine) {
                return Err(BackendError::from(SnpError::NotQ35(m.name())).into());
            }
            let default = if snp.is_some() { Machine::Q35 } else { Machine::Microvm };
            let q =
                Qemu::locate(spec.qemu.as_deref())?.with_machine(spec.machine.unwrap_or(default));
            Some(match snp {
                Some(s) => q.with_snp(s),
                None => q,
            })
        }
        BackendChoice::Builtin => None,
    };
    let firmware = match (&spec.firmware, &qemu) {
        (Some(_), None) => return Err(BackendError::from(builtin::BuiltinError::NoFirmware).into()),
        (Some(f), Some(_)) => Some(f.clone()),
        (None, Some(q)) => Some(q.default_firmware()?),
        (None, None) => None,
    };
    // Each file is opened here, once: everything after (the checks, the
    // launch records, the backend) reads the sealed copies.
    let vm = VmConfig::stage(
        &spec.kernel,
        &spec.initrd,
        firmware.as_deref(),
        cmdline,
        spec.memory,
        spec.vcpus,
    )?;
    vm.validate()?;
    let vmm = match qemu {
        Some(q) => Vmm::Qemu(q),
        None => {
            builtin::preflight(&vm)?;
            Vmm::Builtin(Builtin::locate(spec.vmm.as_deref()).map_err(BackendError::from)?)
        }
    };
    Ok(Resolved { vm, accel, accel_reason, vmm })
}

/// What `tellus launch` does when the verifier denies the attestation (or
/// cannot be asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAttestationFailure {
    /// Tell the guest, then power the VM off (exit status 5).
    #[default]
    Poweroff,
    /// Tell the guest and let it run without its secrets.
    Continue,
}

/// A hook that may write raw bytes to the guest's agent channel once, right
/// after the agent's first `Ready`. For embedders and tests (the end-to-end
/// test sends a command-shaped frame with it to show the agent rejects it);
/// the CLI never sets one. It can only do what any host could: send bytes
/// the guest treats as hostile.
pub type ReadyHook = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

/// Everything `tellus run` / `tellus launch` is given.
pub struct RunOptions {
    pub spec: VmSpec,
    /// TPM, PCR and host log of the measured launch.
    pub measure: MeasureConfig,
    pub console_log: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    /// When the command started; "ready after N ms" counts from here.
    pub started: Instant,
    /// Relay the guest's attestation requests to this verifier (`tellus
    /// launch`); `None` (`tellus run`): every request is denied.
    pub attest: Option<AttestConfig>,
    pub on_attestation_failure: OnAttestationFailure,
    /// Copy the guest console to stdout (off for `--output json`).
    pub console_to_stdout: bool,
    pub after_ready: Option<ReadyHook>,
}

/// Why `tellus run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Accel(#[from] NoHardwareKvm),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot create console log {path}: {source}")]
    ConsoleLog { path: PathBuf, source: std::io::Error },
    #[error("the VMM died while the VM was running ({status}){}", qemu_said(.stderr_tail))]
    VmmDied { status: ExitStatus, stderr_tail: String },
    #[error(transparent)]
    MeasureInputs(#[from] MeasureError),
    #[error(transparent)]
    Records(#[from] RecordError),
    #[error("measured launch failed, no VM was started: {0}")]
    Measurement(#[from] MeasuredLaunchError),
    #[error("the VM ended ({reason}) but its stop could not be recorded in the TPM and host log: {source}")]
    StopNotRecorded { reason: String, source: MeasuredLaunchError },
}

impl RunError {
    /// Process exit code: 1 when nothing ran, 3 when the VM failed while running.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::VmmDied { .. } => 3,
            RunError::StopNotRecorded { .. } => 4,
            _ => 1,
        }
    }
}

fn qemu_said(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; its last words:\n{tail}")
    }
}

/// How a VM ended when it ended well.
#[derive(Debug)]
pub struct Outcome {
    /// The VMM's reason, e.g. `guest-shutdown`.
    pub reason: String,
    pub boots: u32,
    /// Milliseconds since [`RunOptions::started`] at each phase.
    pub timeline: Timeline,
    /// What became of the guest's attestation request, if it made one.
    pub attestation: Option<AttestationReport>,
}

/// When each phase ended, in milliseconds since the command started.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timeline {
    /// The launch records were in the TPM and the host log.
    pub measured_ms: f64,
    /// The vCPUs were started.
    pub vcpus_started_ms: f64,
    /// The agent's first `Ready` arrived.
    pub agent_ready_ms: Option<f64>,
}

/// The verdict on the guest's attestation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The verifier attested the VM and released every resource.
    Released,
    /// Denied by the verifier, or the verifier could not be asked.
    Denied,
}

/// One attestation of a launch: what was asked, the verdict, timings, and
/// what the guest reported storing (SHA-256 only; the launcher never sees
/// a secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttestationReport {
    pub resources: Vec<String>,
    pub verdict: Option<Verdict>,
    /// The verifier's explanation of a denial.
    pub reason: Option<String>,
    /// `AttestRequest` received, since the command started.
    pub requested_ms: f64,
    /// Verdict sent to the guest, since the command started.
    pub answered_ms: Option<f64>,
    /// The guest's `SecretsStored` received, since the command started.
    pub stored_ms: Option<f64>,
    /// The KBS steps.
    pub steps: Option<StepTimings>,
    pub stored: Vec<StoredSecret>,
    pub failed: Vec<FailedSecret>,
    /// The VM was powered off because of the denial.
    pub powered_off: bool,
}

impl Outcome {
    /// Whether `on_attestation_failure = "poweroff"` stopped the VM.
    pub fn denied_and_powered_off(&self) -> bool {
        self.attestation.as_ref().is_some_and(|a| a.powered_off)
    }
}

/// The kernel command line used when `--cmdline` is absent.
///
/// `reboot=t`: microvm has no i8042, so reboot by triple fault.
/// `tsc_early_khz`: under TCG, microvm otherwise often hangs in TSC calibration.
pub fn default_cmdline(accel: Accel) -> String {
    let mut c = String::from("console=ttyS0 reboot=t panic=-1");
    if accel == Accel::Tcg {
        c.push_str(" tsc_early_khz=2000000");
    }
    c
}

enum Event {
    /// The relay finished for the guest's request made in boot `boot`.
    /// SEV-SNP: the first half of the relay for boot `boot` (session and
    /// the host's TPM evidence), to be sent to the guest as a challenge.
    SnpChallenge {
        boot: u32,
        result: Result<attest_snp::Challenge, AttestError>,
    },
    Attested {
        boot: u32,
        result: Result<attest::Released, AttestError>,
    },
    Channel(ChannelEvent),
    Vmm(VmmEvent),
    Control(Pending),
    Signal(i32),
}

enum Stopping {
    /// Asked the agent; press the power button at the deadline.
    Agent(Instant),
    /// Pressed the power button; terminate at the deadline.
    PowerButton(Instant),
    /// Told the VMM to quit; kill its process at the deadline.
    Terminated(Instant),
    /// Killed the VMM process; its exit is on its way.
    Killed,
}

fn ms_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e4).round() / 10.0
}

/// Runs one VM to its end.
pub fn run(mut opts: RunOptions) -> Result<Outcome, RunError> {
    if opts.spec.sev_snp.is_some() {
        qemu_snp::check_host().map_err(BackendError::from)?;
    }
    let resolved = resolve(&opts.spec)?;
    let inputs = measure::launch_inputs(&opts.spec, &resolved, opts.measure.pcr, None)?;
    let launch = records::launch_records(&inputs)?;
    let Resolved { vm, accel, accel_reason, mut vmm } = resolved;
    if let Vmm::Qemu(q) = &mut vmm {
        q.bind_launch(&launch);
    }
    if let Some(snp) = &inputs.snp {
        progress!(
            "SEV-SNP: expected MEASUREMENT {} (policy {:#x}, {}), recorded before the vCPUs run",
            snp.measurement,
            snp.policy,
            snp.vcpu_type
        );
    }
    progress!("accelerator: {accel} ({accel_reason})");
    // Measure before the VMM even starts: on any failure, nothing runs.
    let m = measured_launch::measure(&opts.measure, &launch)?;
    progress!(
        "measured {} launch records into PCR {} ({}) at TPM {}; host log {} records {}..{}{}",
        launch.len(),
        opts.measure.pcr,
        m.banks.iter().map(|b| b.name()).collect::<Vec<_>>().join(", "),
        opts.measure.tpm,
        m.log.display(),
        m.recnums.start,
        m.recnums.end,
        if m.rotated { " (new log: the TPM was reset)" } else { "" }
    );
    for d in &m.pcr_values {
        progress!("PCR {} {d}", opts.measure.pcr);
    }
    let measured_ms = ms_since(opts.started);
    progress!("phase measure: done after {measured_ms} ms");
    if accel == Accel::Tcg && !vm.cmdline.contains("tsc_early_khz=") {
        progress!("warning: under TCG the guest may hang in TSC calibration without tsc_early_khz=2000000 on its command line");
    }
    let backend: Box<dyn Backend> = match vmm {
        Vmm::Qemu(q) => Box::new(q),
        Vmm::Builtin(b) => Box::new(b),
    };
    let log = opts
        .console_log
        .as_ref()
        .map(|path| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| RunError::ConsoleLog { path: path.clone(), source })
        })
        .transpose()?;

    let (tx, rx) = mpsc::channel::<Event>();
    let vmm_tx = tx.clone();
    let sink: EventSink = Arc::new(move |e| {
        let _ = vmm_tx.send(Event::Vmm(e));
    });
    let started = match backend.start(&vm, accel, sink) {
        Ok(s) => s,
        Err(e) => {
            let _ = record_stop(&opts.measure, "vmm-start-failed", 0, None);
            return Err(e.into());
        }
    };
    progress!("started {} with backend {}", started.description, backend.name());
    drop_privileges(&opts.measure);
    // Started after the drop, so their threads (which read requests from
    // local clients) hold no capabilities.
    let control = match &opts.control_socket {
        Some(path) => {
            let tx = tx.clone();
            ControlServer::start(path, move |p| {
                let _ = tx.send(Event::Control(p));
            })
            .map(Some)
        }
        None => Ok(None),
    };
    let _control = match control {
        Ok(c) => c,
        Err(e) => {
            let mut power = started.power;
            let _ = power.terminate();
            drop(power);
            let _ = record_stop(&opts.measure, "launcher-error", 1, None);
            return Err(e.into());
        }
    };
    spawn_signal_relay(tx.clone());
    let console = spawn_console(started.streams.console, log, opts.console_to_stdout);
    let chan_tx = tx.clone();
    channel::spawn_reader(started.streams.channel_rx, move |e| {
        let _ = chan_tx.send(Event::Channel(e));
    });
    // The relay thread reports back through this sender; it is kept only
    // when there is a verifier to ask (it would otherwise hide a lost VMM
    // waiter, which is noticed when every sender is gone).
    let attest_tx = opts.attest.as_ref().map(|_| tx.clone());
    drop(tx);
    let after_ready = opts.after_ready.take();
    let attest_cfg = opts.attest.take().map(Arc::new);
    if let Some(cfg) = attest_cfg.clone() {
        // Off the critical path: the guest needs seconds to ask.
        let _ = std::thread::Builder::new().name("attest-prepare".into()).spawn(move || {
            if let Err(e) = cfg.prepare() {
                progress!("warning: cannot prepare the attestation key ahead ({e}); the quote will load it");
            }
        });
    }

    let mut lp = Loop {
        opts: &opts,
        attest_cfg,
        attest_tx,
        after_ready,
        launch_recnum: m.recnums.start,
        attest_boot: None,
        snp_challenge: None,
        report: None,
        timeline: Timeline { measured_ms, ..Timeline::default() },
        vm: &vm,
        accel,
        backend: backend.name(),
        power: started.power,
        writer: ChannelWriter(started.streams.channel_tx),
        agent_ready: false,
        boots: 1,
        stopping: None,
        drops: 0,
        dropped_bytes: 0,
        last_reason: "unknown".into(),
    };
    let result = lp.run_until_exit(&rx);
    let result = result.map(|mut o| {
        o.timeline = lp.timeline.clone();
        o.attestation = lp.report.take();
        o
    });
    // The console stream ends when the VMM exits; wait so the log is complete.
    let console_digest = console.join().ok();
    let reason = match &result {
        Ok(o) => o.reason.clone(),
        Err(RunError::VmmDied { .. }) => "vmm-died".into(),
        Err(_) => "launcher-error".into(),
    };
    if let Err(source) = record_stop(&opts.measure, &reason, lp.boots, console_digest) {
        if result.is_ok() {
            return Err(RunError::StopNotRecorded { reason, source });
        }
    }
    if lp.dropped_bytes > 0 {
        progress!(
            "agent channel: dropped {} bytes in {} invalid runs during this VM's life",
            lp.dropped_bytes,
            lp.drops
        );
    }
    result
}

struct Loop<'a> {
    opts: &'a RunOptions,
    attest_cfg: Option<Arc<AttestConfig>>,
    attest_tx: Option<mpsc::Sender<Event>>,
    after_ready: Option<ReadyHook>,
    /// First record number of this launch in the host log.
    launch_recnum: u64,
    /// The boot in which the guest asked for an attestation.
    attest_boot: Option<u32>,
    report: Option<AttestationReport>,
    timeline: Timeline,
    vm: &'a VmConfig,
    accel: Accel,
    backend: &'static str,
    power: Box<dyn PowerControl>,
    writer: ChannelWriter,
    agent_ready: bool,
    boots: u32,
    stopping: Option<Stopping>,
    drops: u32,
    dropped_bytes: usize,
    last_reason: String,
    /// SEV-SNP: the challenge sent to the guest, and its boot.
    snp_challenge: Option<(u32, attest_snp::Challenge)>,
}

impl Loop<'_> {
    fn run_until_exit(&mut self, rx: &mpsc::Receiver<Event>) -> Result<Outcome, RunError> {
        if let Err(e) = self.power.start_vcpus() {
            // A VMM that died since it started: its exit says why.
            let end = Instant::now() + VMM_EXIT_WAIT;
            while let Ok(ev) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                if let Event::Vmm(VmmEvent::Exited { status, stderr_tail }) = ev {
                    return Err(RunError::VmmDied { status, stderr_tail });
                }
            }
            return Err(e.into());
        }
        self.timeline.vcpus_started_ms = ms_since(self.opts.started);
        progress!("vCPUs running after {} ms", self.opts.started.elapsed().as_millis());
        loop {
            let deadline = match self.stopping {
                Some(Stopping::Agent(d) | Stopping::PowerButton(d) | Stopping::Terminated(d)) => {
                    Some(d)
                }
                _ => None,
            };
            let ev = match deadline {
                Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                    Ok(ev) => Some(ev),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(ev) => Some(ev),
                    Err(_) => break,
                },
            };
            match ev {
                None => self.escalate(),
                Some(Event::Vmm(VmmEvent::Exited { status, stderr_tail })) => {
                    return if status.success() {
                        Ok(Outcome {
                            reason: self.last_reason.clone(),
                            boots: self.boots,
                            timeline: Timeline::default(),
                            attestation: None,
                        })
                    } else {
                        Err(RunError::VmmDied { status, stderr_tail })
                    };
                }
                Some(Event::Vmm(VmmEvent::Shutdown { reason })) => {
                    progress!("VM shut down ({reason})");
                    self.last_reason = reason;
                }
                Some(Event::Vmm(VmmEvent::Reset { reason })) => {
                    self.boots += 1;
                    self.agent_ready = false;
                    progress!("VM reset ({reason}); boot {}", self.boots);
                    if matches!(self.stopping, Some(Stopping::Agent(_) | Stopping::PowerButton(_)))
                    {
                        // A guest without a power-off device (Linux in the
                        // built-in VMM panics and resets) asked to power off.
                        progress!("the guest reset instead of powering off; stopping the VM");
                        self.terminate();
                    }
                }
                Some(Event::Channel(e)) => self.on_channel(e),
                Some(Event::Attested { boot, result }) => self.on_attested(boot, result),
                Some(Event::SnpChallenge { boot, result }) => self.on_snp_challenge(boot, result),
                Some(Event::Control((req, reply))) => {
                    let _ = reply.send(self.on_control(req));
                }
                Some(Event::Signal(sig)) => {
                    if self.stopping.is_some() {
                        progress!("signal {sig} again: stopping the VM now");
                        self.terminate();
                    } else {
                        progress!("signal {sig}: shutting the VM down (again to stop it at once)");
                        self.shutdown();
                    }
                }
            }
        }
        // All senders gone without an exit report: the waiter thread died.
        Err(BackendError::WaiterLost.into())
    }

    fn on_channel(&mut self, e: ChannelEvent) {
        if let ChannelEvent::Message(m) = &e {
            if let Err(err) = m.validate() {
                progress!(
                    "warning: agent channel: ignored an invalid message from the guest: {err}"
                );
                return;
            }
        }
        match e {
            ChannelEvent::Message(GuestMessage::AttestRequest { resources, tee_pubkey }) => {
                self.on_attest_request(resources, tee_pubkey)
            }
            ChannelEvent::Message(GuestMessage::SnpEvidence { report, certs }) => {
                self.on_snp_evidence(Ok((report, certs)))
            }
            ChannelEvent::Message(GuestMessage::SnpUnavailable { reason }) => {
                self.on_snp_evidence(Err(reason))
            }
            ChannelEvent::Message(GuestMessage::SecretsStored { stored, failed }) => {
                for s in &stored {
                    progress!("guest stored secret {} sha256={}", s.resource, s.sha256);
                }
                for f in &failed {
                    progress!("warning: guest did not store {}: {}", f.resource, f.reason);
                }
                let now = ms_since(self.opts.started);
                match self.report.as_mut() {
                    Some(r) if r.stored_ms.is_none() && r.answered_ms.is_some() => {
                        if let Some(at) = r.answered_ms {
                            progress!(
                                "phase release: {} secret(s) stored in the guest {:.1} ms after the verdict",
                                stored.len(),
                                now - at
                            );
                        }
                        r.stored_ms = Some(now);
                        r.stored = stored;
                        r.failed = failed;
                    }
                    _ => progress!(
                        "warning: agent channel: a secrets report nobody asked for; ignored"
                    ),
                }
            }
            ChannelEvent::Message(GuestMessage::Ready { agent_version, uptime_ms }) => {
                let again = if self.boots > 1 { " again" } else { "" };
                progress!(
                    "guest agent ready{again} after {} ms (tellus-agent {agent_version}, guest uptime {uptime_ms} ms)",
                    self.opts.started.elapsed().as_millis()
                );
                self.agent_ready = true;
                if self.timeline.agent_ready_ms.is_none() {
                    self.timeline.agent_ready_ms = Some(ms_since(self.opts.started));
                    progress!(
                        "phase boot: agent ready {:.1} ms after the vCPUs started",
                        ms_since(self.opts.started) - self.timeline.vcpus_started_ms
                    );
                }
                if let Some(hook) = self.after_ready.take() {
                    if let Err(e) = hook(&mut self.writer.0) {
                        progress!("warning: the ready hook could not write to the channel: {e}");
                    }
                }
                // A shutdown is under way without the agent: ask it now.
                if matches!(self.stopping, Some(Stopping::PowerButton(_)))
                    && self.writer.send(HostMessage::PowerOff).is_ok()
                {
                    progress!("asked the guest agent to power off");
                }
            }
            ChannelEvent::Dropped { bytes, reason } => {
                self.drops += 1;
                self.dropped_bytes += bytes;
                if self.drops <= DROP_REPORTS {
                    progress!(
                        "warning: agent channel: dropped {bytes} bytes from the guest: {reason}"
                    );
                }
            }
            ChannelEvent::Closed => {}
        }
    }

    /// The guest asks to be attested: start the relay in its own thread
    /// (the loop keeps serving control requests and signals), or deny.
    fn on_attest_request(&mut self, resources: Vec<String>, tee_pubkey: TeePubKey) {
        let now = ms_since(self.opts.started);
        progress!("phase attest: the guest asks for {}", resources.join(", "));
        if self.attest_boot == Some(self.boots) {
            // Not a new attestation: refused without touching the first one's verdict.
            let reason = AttestError::AlreadyAttested.to_string();
            progress!("warning: {reason}");
            self.send_result(AttestResult::Denied { reason });
            return;
        }
        self.attest_boot = Some(self.boots);
        self.report = Some(AttestationReport {
            resources: resources.clone(),
            verdict: None,
            reason: None,
            requested_ms: now,
            answered_ms: None,
            stored_ms: None,
            steps: None,
            stored: Vec::new(),
            failed: Vec::new(),
            powered_off: false,
        });
        let (Some(cfg), Some(tx)) = (self.attest_cfg.clone(), self.attest_tx.clone()) else {
            self.on_attested(self.boots, Err(AttestError::NoVerifier));
            return;
        };
        let boot = self.boots;
        let recnum = self.launch_recnum;
        if self.opts.spec.sev_snp.is_some() {
            // SEV-SNP: the guest produces the evidence; ask it with the nonce.
            let spawned = std::thread::Builder::new().name("attest-snp".into()).spawn(move || {
                let result = attest_snp::challenge(&cfg, recnum, &resources, &tee_pubkey);
                let _ = tx.send(Event::SnpChallenge { boot, result });
            });
            if let Err(e) = spawned {
                self.on_attested(boot, Err(AttestError::Binding(format!("no relay thread: {e}"))));
            }
            return;
        }
        let spawned = std::thread::Builder::new().name("attest-relay".into()).spawn(move || {
            let result = attest::relay(&cfg, recnum, &resources, &tee_pubkey);
            let _ = tx.send(Event::Attested { boot, result });
        });
        if let Err(e) = spawned {
            progress!("error: cannot start the attestation relay: {e}");
            self.on_attested(boot, Err(AttestError::Binding(format!("no relay thread: {e}"))));
        }
    }

    /// SEV-SNP: the session is open and the host's quote taken; the guest
    /// gets the nonce and the additional evidence to bind its report to.
    fn on_snp_challenge(&mut self, boot: u32, result: Result<attest_snp::Challenge, AttestError>) {
        if boot != self.boots {
            progress!("SEV-SNP challenge of boot {boot} dropped: the VM has rebooted since");
            return;
        }
        let c = match result {
            Ok(c) => c,
            Err(e) => return self.on_attested(boot, Err(e)),
        };
        let msg = HostMessage::AttestChallenge {
            nonce: c.session.nonce.clone(),
            additional_evidence: c.additional_evidence.clone(),
        };
        if let Err(e) = msg.validate() {
            return self.on_attested(boot, Err(AttestError::Binding(e.to_string())));
        }
        match self.writer.send(msg) {
            Ok(()) => {
                progress!("phase attest: SEV-SNP challenge sent; the guest produces its report");
                self.snp_challenge = Some((boot, c));
            }
            Err(e) => self.on_attested(
                boot,
                Err(AttestError::Binding(format!("cannot send the challenge to the guest: {e}"))),
            ),
        }
    }

    /// SEV-SNP: the guest's report (or why it has none); relay it.
    fn on_snp_evidence(
        &mut self,
        evidence: Result<(Vec<u8>, Vec<tellus_protocol::SnpCert>), String>,
    ) {
        let Some((boot, c)) = self.snp_challenge.take().filter(|(b, _)| *b == self.boots) else {
            progress!("warning: agent channel: SEV-SNP evidence nobody asked for; ignored");
            return;
        };
        let (report, certs) = match evidence {
            Ok(e) => e,
            Err(reason) => return self.on_attested(boot, Err(AttestError::SnpUnavailable(reason))),
        };
        let (Some(cfg), Some(tx)) = (self.attest_cfg.clone(), self.attest_tx.clone()) else {
            return self.on_attested(boot, Err(AttestError::NoVerifier));
        };
        let spawned = std::thread::Builder::new().name("attest-snp".into()).spawn(move || {
            let result = attest_snp::finish(&cfg.client, &c, &report, &certs);
            let _ = tx.send(Event::Attested { boot, result });
        });
        if let Err(e) = spawned {
            self.on_attested(boot, Err(AttestError::Binding(format!("no relay thread: {e}"))));
        }
    }

    fn send_result(&mut self, result: AttestResult) -> bool {
        match self.writer.send(HostMessage::AttestResult(result)) {
            Ok(()) => true,
            Err(e) => {
                progress!("warning: cannot send the attestation result to the guest: {e}");
                false
            }
        }
    }

    /// The relay's result: relay it to the guest, and apply
    /// `on_attestation_failure` to a denial.
    fn on_attested(&mut self, boot: u32, result: Result<attest::Released, AttestError>) {
        if boot != self.boots {
            progress!("attestation result of boot {boot} dropped: the VM has rebooted since");
            return;
        }
        let requested = self.report.as_ref().map_or(0.0, |r| r.requested_ms);
        let result = result.and_then(|r| {
            let msg = HostMessage::AttestResult(AttestResult::Released {
                resources: r.resources.clone(),
            });
            match tellus_protocol::encode_frame(&msg) {
                Ok(_) => Ok(r),
                Err(tellus_protocol::FrameError::TooLarge(n)) => Err(AttestError::TooLarge(n)),
                Err(e) => Err(AttestError::Binding(e.to_string())),
            }
        });
        match result {
            Ok(released) => {
                let t = &released.timings;
                progress!(
                    "phase attest: affirmed by the verifier; {} resource(s) released in {:.1} ms                      (auth {} ms, TPM quote {} ms, attest {} ms, resources {} ms)",
                    released.resources.len(),
                    ms_since(self.opts.started) - requested,
                    t.auth_ms,
                    t.quote_ms,
                    t.attest_ms,
                    t.resources_ms
                );
                if let Some(r) = self.report.as_mut() {
                    r.verdict = Some(Verdict::Released);
                    r.steps = Some(released.timings.clone());
                }
                self.send_result(AttestResult::Released { resources: released.resources });
            }
            Err(e) => {
                let mut reason = e.to_string();
                if reason.len() > MAX_REASON_LEN {
                    let mut cut = MAX_REASON_LEN - 3;
                    while !reason.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    reason.truncate(cut);
                    reason.push_str("...");
                }
                progress!("phase attest: DENIED: {reason}");
                if let Some(r) = self.report.as_mut() {
                    r.verdict = Some(Verdict::Denied);
                    r.reason = Some(reason.clone());
                }
                self.send_result(AttestResult::Denied { reason });
                match self.opts.on_attestation_failure {
                    OnAttestationFailure::Poweroff => {
                        progress!("on_attestation_failure = \"poweroff\": powering the VM off; no secret was released");
                        if let Some(r) = self.report.as_mut() {
                            r.powered_off = true;
                        }
                        if self.stopping.is_none() {
                            self.shutdown();
                        }
                    }
                    OnAttestationFailure::Continue => progress!(
                        "on_attestation_failure = \"continue\": the guest runs on without its secrets"
                    ),
                }
            }
        }
        if let Some(r) = self.report.as_mut() {
            r.answered_ms = Some(ms_since(self.opts.started));
        }
    }

    fn on_control(&mut self, req: ControlRequest) -> ControlResponse {
        let ok =
            |message: &str| ControlResponse { ok: true, message: message.into(), status: None };
        match req {
            ControlRequest::Status => {
                ControlResponse { ok: true, message: "ok".into(), status: Some(self.status()) }
            }
            ControlRequest::Shutdown if self.stopping.is_some() => ok("already shutting down"),
            ControlRequest::Shutdown => ok(self.shutdown()),
            ControlRequest::Reboot if self.stopping.is_some() => ControlResponse {
                ok: false,
                message: "the VM is shutting down; reboot refused".into(),
                status: None,
            },
            ControlRequest::Reboot => {
                if self.agent_ready && self.writer.send(HostMessage::Reboot).is_ok() {
                    self.agent_ready = false;
                    return ok("reboot requested from the guest agent");
                }
                match self.power.reset() {
                    Ok(()) => ok("agent not ready: VM reset"),
                    Err(e) => ControlResponse {
                        ok: false,
                        message: format!("reset failed: {e}"),
                        status: None,
                    },
                }
            }
        }
    }

    /// Starts an orderly shutdown; returns what was done.
    fn shutdown(&mut self) -> &'static str {
        if self.agent_ready {
            match self.writer.send(HostMessage::PowerOff) {
                Ok(()) => {
                    progress!("asked the guest agent to power off");
                    self.stopping = Some(Stopping::Agent(Instant::now() + AGENT_GRACE));
                    return "power-off requested from the guest agent";
                }
                Err(e) => progress!(
                    "warning: cannot reach the guest agent ({e}); pressing the power button"
                ),
            }
        }
        self.power_button();
        "agent not ready: ACPI power button pressed"
    }

    fn power_button(&mut self) {
        match self.power.power_button() {
            Ok(()) => {
                self.stopping = Some(Stopping::PowerButton(Instant::now() + POWER_BUTTON_GRACE))
            }
            Err(e) => {
                progress!("warning: power button failed ({e}); stopping the VM");
                self.terminate();
            }
        }
    }

    fn terminate(&mut self) {
        if matches!(self.stopping, Some(Stopping::Terminated(_) | Stopping::Killed)) {
            // Asked once already (a second Ctrl-C): no more asking.
            return self.kill();
        }
        self.stopping = Some(Stopping::Terminated(Instant::now() + TERMINATE_GRACE));
        if let Err(e) = self.power.terminate() {
            progress!("warning: cannot tell the VMM to stop ({e}); killing it");
            self.kill();
        }
    }

    /// Ends the VMM process (through its pidfd, so never another process).
    fn kill(&mut self) {
        self.stopping = Some(Stopping::Killed);
        if let Err(e) = self.power.kill() {
            progress!("warning: {e}");
        }
    }

    fn escalate(&mut self) {
        match self.stopping {
            Some(Stopping::Agent(_)) => {
                progress!(
                    "the guest did not power off within {AGENT_GRACE:?}; pressing the power button"
                );
                self.power_button();
            }
            Some(Stopping::PowerButton(_)) => {
                progress!("the guest ignored the power button for {POWER_BUTTON_GRACE:?}; stopping the VM");
                self.terminate();
            }
            Some(Stopping::Terminated(_)) => {
                progress!(
                    "the VMM did not exit within {TERMINATE_GRACE:?} of being told to; killing it"
                );
                self.kill();
            }
            _ => {}
        }
    }

    fn status(&self) -> VmStatus {
        VmStatus {
            state: match self.stopping {
                Some(_) => "shutting-down",
                None if !self.agent_ready && self.boots > 1 => "rebooting",
                None => "running",
            }
            .into(),
            agent_ready: self.agent_ready,
            boots: self.boots,
            backend: self.backend.into(),
            accel: self.accel.to_string(),
            name: self.opts.spec.name.clone(),
            vcpus: self.vm.vcpus,
            memory_mib: self.vm.memory.0,
            uptime_ms: u64::try_from(self.opts.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            vmm_pid: self.power.vmm_pid(),
        }
    }
}

/// Copies the guest console to our stdout and the log file. The guest can
/// only append bytes to the stream; it has no access to the file.
fn spawn_console(
    mut console: Box<dyn Read + Send>,
    mut log: Option<File>,
    to_stdout: bool,
) -> std::thread::JoinHandle<FileMeasurement> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut log_failed = false;
        let mut hasher = MultiHasher::new(&records::FILE_ALGS);
        let mut size = 0u64;
        loop {
            let n = match console.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            hasher.update(&buf[..n]);
            size += n as u64;
            if to_stdout {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf[..n]).and_then(|_| out.flush());
            }
            if let Some(f) = log.as_mut() {
                if let Err(e) = f.write_all(&buf[..n]) {
                    if !log_failed {
                        progress!("warning: console log write failed: {e}");
                        log_failed = true;
                    }
                }
            }
        }
        if let Some(f) = log.as_mut() {
            let _ = f.sync_all();
        }
        let mut d = hasher.finish().into_iter();
        let zero = |a| tellus_measured_boot::Digest::zero(a);
        FileMeasurement {
            sha256: d.next().unwrap_or_else(|| zero(HashAlg::Sha256)),
            sha384: d.next().unwrap_or_else(|| zero(HashAlg::Sha384)),
            size,
        }
    })
}

/// Records the end of a VM (and the digest of its console output) in the TPM
/// and the host log. Prints what it did; returns the failure for the caller
/// to decide on.
fn record_stop(
    cfg: &MeasureConfig,
    reason: &str,
    boots: u32,
    console: Option<FileMeasurement>,
) -> Result<(), MeasuredLaunchError> {
    let mut recs = vec![LaunchRecord::stop(reason, boots)];
    if let Some(c) = &console {
        recs.push(LaunchRecord::console_log(c));
    }
    match measured_launch::measure(cfg, &recs) {
        Ok(m) => {
            let console = console
                .map(|c| format!(", console {} ({} bytes)", c.sha256, c.size))
                .unwrap_or_default();
            progress!(
                "recorded stop ({reason}){console} as records {}..{}",
                m.recnums.start,
                m.recnums.end
            );
            Ok(())
        }
        Err(e) => {
            progress!("error: cannot record the stop ({reason}): {e}");
            Err(e)
        }
    }
}

/// Everything is open now (VMM, console log, control socket; the TPM and
/// the host log are reopened by owner rights): drop capabilities and set
/// no_new_privs ([`crate::privileges`]). Threads started from here on
/// inherit the drop; the backends' threads started before drop their own,
/// and the VMM process (QEMU or `tellus-vmm`) is not this process.
fn drop_privileges(m: &MeasureConfig) {
    let log = m.log_path();
    match crate::privileges::drop_privileges(&[&m.state_dir, &log]) {
        Ok(before) => {
            progress!(
                "dropped privileges: capabilities {:#x} cleared (bounding set {:#x}), no_new_privs set",
                before.cap_eff,
                before.cap_bnd
            );
            let kept = crate::privileges::threads_with_capabilities();
            if !kept.is_empty() {
                progress!(
                    "note: threads started before the drop keep capabilities: {}",
                    kept.join(", ")
                );
            }
        }
        Err(e) => progress!("warning: privileges not dropped: {e}"),
    }
}

fn spawn_signal_relay(tx: mpsc::Sender<Event>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        });
    }
}
