//! One interface for running a VM. The run loop, the agent channel and the
//! control socket see only [`StartedVm`]; which VMM is behind it is the
//! backend's business.
//!
//! The interface is availability-only by construction: a backend hands out
//! the guest's console and agent-channel byte streams and a [`PowerControl`]
//! with start/power-button/reset/terminate. There is no method to read or
//! write guest memory, pause for inspection, snapshot or migrate, so no caller
//! can ask for one.

pub mod builtin;
mod process;
pub mod qemu;

use crate::accel::Accel;
use crate::vm_config::VmConfig;
use std::io::{Read, Write};
use std::process::ExitStatus;
use std::sync::Arc;

/// `--backend` as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// QEMU for now; the built-in VMM on hardware KVM once it exists.
    Auto,
    Qemu,
    /// The built-in KVM VMM (`backend::builtin`).
    Builtin,
}

/// What a backend reports while the VM runs.
#[derive(Debug)]
pub enum VmmEvent {
    /// The VM was shut down (by the guest or by a power request); the VMM exits next.
    Shutdown { reason: String },
    /// The VM was reset (guest reboot or a reset request).
    Reset { reason: String },
    /// The VMM process is gone.
    Exited { status: ExitStatus, stderr_tail: String },
}

/// Where a backend delivers its events (called from backend threads).
pub type EventSink = Arc<dyn Fn(VmmEvent) + Send + Sync>;

/// The byte streams of a running guest.
pub struct GuestStreams {
    /// Everything the guest writes to its console (COM1).
    pub console: Box<dyn Read + Send>,
    /// Agent channel (COM2), guest → host.
    pub channel_rx: Box<dyn Read + Send>,
    /// Agent channel, host → guest. Writes time out rather than block forever.
    pub channel_tx: Box<dyn Write + Send>,
}

/// The availability functions a backend offers, and nothing else.
pub trait PowerControl: Send {
    /// Lets the vCPUs run. Backends hold them until this is called, so that
    /// console capture and the agent channel are in place before the first
    /// guest instruction (and, later, the measurement is complete).
    fn start_vcpus(&mut self) -> Result<(), BackendError>;
    /// Presses the virtual power button (ACPI): a polite request.
    fn power_button(&mut self) -> Result<(), BackendError>;
    /// Hard reset of the VM.
    fn reset(&mut self) -> Result<(), BackendError>;
    /// Stops the VM at once; the VMM exits.
    fn terminate(&mut self) -> Result<(), BackendError>;
    /// Ends the VMM process at once (SIGKILL through its pidfd), for a VMM
    /// that does not exit after [`PowerControl::terminate`].
    fn kill(&mut self) -> Result<(), BackendError>;
    /// Process id of the VMM, when it is a separate process.
    fn vmm_pid(&self) -> Option<u32>;
}

/// A VM whose VMM is up with its vCPUs held.
pub struct StartedVm {
    pub streams: GuestStreams,
    pub power: Box<dyn PowerControl>,
    /// A one-line description for the progress output.
    pub description: String,
}

/// A way of running VMs.
pub trait Backend {
    /// Short name for messages (`qemu`, `builtin`).
    fn name(&self) -> &'static str;
    /// Starts the VMM with the vCPUs held. `events` receives [`VmmEvent`]s
    /// until and including `Exited`.
    fn start(
        &self,
        cfg: &VmConfig,
        accel: Accel,
        events: EventSink,
    ) -> Result<StartedVm, BackendError>;
}

/// Errors of the backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "QEMU not found: {0}; run scripts/setup.sh (installs qemu-system-x86) or pass --qemu PATH"
    )]
    QemuNotFound(String),
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("QEMU failed to start ({status}):\n{stderr}")]
    StartFailed { status: ExitStatus, stderr: String },
    #[error("QEMU did not connect its console, agent channel and QMP sockets within {secs} s{}", tail(.stderr))]
    StartTimeout { secs: u64, stderr: String },
    #[error("QMP: {0}")]
    Qmp(#[from] qemu::QmpError),
    #[error("cannot set up the VMM's sockets in {dir}: {source}")]
    Sockets { dir: String, source: std::io::Error },
    #[error("QEMU's microvm firmware (bios-microvm.bin) was not found; install qemu-system-x86 or pass --firmware FILE")]
    NoFirmware,
    #[error("OVMF was not found ({}); install the ovmf package (scripts/setup.sh) or pass --firmware FILE", qemu::OVMF_LOOKED_AT)]
    NoOvmf,
    #[error(transparent)]
    Snp(#[from] qemu::snp::SnpError),
    #[error("--machine and --sev-snp choose QEMU machines; use --backend qemu (or auto)")]
    MachineNeedsQemu,
    #[error(
        "cannot kill the VMM process: {0}; kill it by hand (its pid is in `tellus ctl status`)"
    )]
    Kill(std::io::Error),
    #[error("lost track of the VMM process (its waiter thread ended without an exit status)")]
    WaiterLost,
    #[error("built-in VMM: {0}")]
    Builtin(#[from] builtin::BuiltinError),
}

fn tail(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; QEMU said:\n{stderr}")
    }
}
