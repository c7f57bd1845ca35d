//! `tellus run`: start a VM, capture its console, talk to its agent, serve
//! the control socket, and account for how it ends.

use crate::accel::{self, Accel, AccelChoice, NoHardwareKvm};
use crate::backend::qemu::Qemu;
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
use tellus_protocol::{GuestMessage, HostMessage};

/// How long the agent gets to power the guest off before the ACPI button.
const AGENT_GRACE: Duration = Duration::from_secs(10);
/// How long the guest gets after the ACPI button before QEMU is stopped.
const POWER_BUTTON_GRACE: Duration = Duration::from_secs(10);
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
    pub memory: MemorySize,
    pub vcpus: u32,
    /// Firmware image; `None`: the backend's default (QEMU: qboot for microvm).
    pub firmware: Option<PathBuf>,
    pub backend: BackendChoice,
    pub accel: AccelChoice,
    pub qemu: Option<PathBuf>,
}

/// A [`VmSpec`] resolved against this host: accelerator chosen, defaults
/// filled in, every input checked, the backend located.
pub struct Resolved {
    pub vm: VmConfig,
    pub accel: Accel,
    /// Why this accelerator (printed).
    pub accel_reason: String,
    pub qemu: Qemu,
}

/// Resolves and validates `spec`. Nothing is started.
pub fn resolve(spec: &VmSpec) -> Result<Resolved, RunError> {
    let host = accel::detect();
    let (accel, accel_reason) = accel::choose(spec.accel, &host)?;
    let cmdline = spec.cmdline.clone().unwrap_or_else(|| default_cmdline(accel));
    let qemu = match spec.backend {
        BackendChoice::Auto | BackendChoice::Qemu => Qemu::locate(spec.qemu.as_deref())?,
        BackendChoice::Builtin => return Err(BackendError::BuiltinUnavailable.into()),
    };
    let firmware = match &spec.firmware {
        Some(f) => f.clone(),
        None => qemu.default_firmware()?,
    };
    let vm = VmConfig {
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        cmdline,
        memory: spec.memory,
        vcpus: spec.vcpus,
        firmware,
    };
    vm.validate()?;
    Ok(Resolved { vm, accel, accel_reason, qemu })
}

/// Everything `tellus run` is given.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub spec: VmSpec,
    /// TPM, PCR and host log of the measured launch.
    pub measure: MeasureConfig,
    pub console_log: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    /// When the command started; "ready after N ms" counts from here.
    pub started: Instant,
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
    /// Told the VMM to quit.
    Terminated,
}

/// Runs one VM to its end.
pub fn run(opts: RunOptions) -> Result<Outcome, RunError> {
    let resolved = resolve(&opts.spec)?;
    let inputs = measure::launch_inputs(&opts.spec, &resolved, opts.measure.pcr, None)?;
    let launch = records::launch_records(&inputs)?;
    let Resolved { vm, accel, accel_reason, qemu } = resolved;
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
    if accel == Accel::Tcg && !vm.cmdline.contains("tsc_early_khz=") {
        progress!("warning: under TCG the guest may hang in TSC calibration without tsc_early_khz=2000000 on its command line");
    }
    let backend: Box<dyn Backend> = Box::new(qemu);
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
    let _control = match &opts.control_socket {
        Some(path) => {
            let tx = tx.clone();
            Some(ControlServer::start(path, move |p| {
                let _ = tx.send(Event::Control(p));
            })?)
        }
        None => None,
    };
    spawn_signal_relay(tx.clone());
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
    let console = spawn_console(started.streams.console, log);
    let chan_tx = tx.clone();
    channel::spawn_reader(started.streams.channel_rx, move |e| {
        let _ = chan_tx.send(Event::Channel(e));
    });
    drop(tx);

    let mut lp = Loop {
        opts: &opts,
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
}

impl Loop<'_> {
    fn run_until_exit(&mut self, rx: &mpsc::Receiver<Event>) -> Result<Outcome, RunError> {
        self.power.start_vcpus()?;
        progress!("vCPUs running after {} ms", self.opts.started.elapsed().as_millis());
        loop {
            let deadline = match self.stopping {
                Some(Stopping::Agent(d) | Stopping::PowerButton(d)) => Some(d),
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
                        Ok(Outcome { reason: self.last_reason.clone(), boots: self.boots })
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
                }
                Some(Event::Channel(e)) => self.on_channel(e),
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
        match e {
            ChannelEvent::Message(GuestMessage::Ready { agent_version, uptime_ms }) => {
                let again = if self.boots > 1 { " again" } else { "" };
                progress!(
                    "guest agent ready{again} after {} ms (tellus-agent {agent_version}, guest uptime {uptime_ms} ms)",
                    self.opts.started.elapsed().as_millis()
                );
                self.agent_ready = true;
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
        self.stopping = Some(Stopping::Terminated);
        if let Err(e) = self.power.terminate() {
            progress!("warning: cannot stop the VMM through QMP ({e})");
            if let Some(pid) = self.power.vmm_pid() {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
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
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&buf[..n]).and_then(|_| out.flush());
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
