//! The built-in VMM: KVM through kvm-ioctls, memory through vm-memory, the
//! kernel through linux-loader, two UARTs and the i8042 reset line through
//! vm-superio, seccomp through seccompiler. It runs in a process of its own,
//! `tellus-vmm` ([`process`]: what it gets from the launcher and how they
//! talk), one thread per vCPU, and offers exactly what the
//! [`Backend`](super::Backend) interface asks for: console and
//! agent-channel streams and the power functions.
//!
//! What it cannot do, by construction:
//! - read or write guest memory after loading: [`boot::load`] is the only
//!   writer and seals the memory into a [`ram::GuestRam`], which has no
//!   accessor (see `ram.rs`); the devices are port-I/O only;
//! - debug, snapshot or migrate: there is no gdbstub, no state save/restore,
//!   no register read-back after set-up;
//! - make syscalls outside its allow-lists on its vCPU and device threads
//!   (see [`seccomp`]);
//! - use capabilities: `tellus-vmm` drops them (and sets `no_new_privs`) on
//!   its main thread right after opening `/dev/kvm`, before it reads the
//!   kernel image or starts a thread, so every VMM thread runs with none;
//! - open a file, execute, create a process, open a socket, trace, signal
//!   or read another process, or become dumpable again: a process-wide
//!   seccomp filter ([`seccomp::process_program`]) kills the VMM on any of
//!   these, so the TPM, the launcher's state directory, its event log and
//!   the launcher's memory stay out of reach even of a VMM thread the
//!   guest took over; and the process is not dumpable, so other processes
//!   of the same user cannot read guest memory through `/proc`.
//!
//! Power semantics (no ACPI, as close to QEMU's as that allows):
//! - **Reset** — the guest writes 0xFE to port 0x64 (Linux: `reboot=k`) or
//!   the host calls [`Vm::reset`] (`tellus ctl reboot` without a ready
//!   agent): the supervisor stops and joins every vCPU thread, drops
//!   the VM and its sealed RAM, and builds a fresh VM from the same
//!   [`BootSpec`] — a fresh [`boot::load`], new vCPU threads with their
//!   seccomp filters installed before they run — on the `/dev/kvm` opened at
//!   start (a reboot opens nothing new, so it works after the VMM has
//!   dropped its privileges). The console and agent-channel streams stay the
//!   same: their host ends never see the reboot, the UARTs behind them are
//!   reset. Then [`VmmEvent::Reset`] (`guest-reset` / `host-reset`), and the
//!   new boot runs.
//! - **Triple fault** (`KVM_EXIT_SHUTDOWN`) **ends the VM**
//!   (`guest-triple-fault`), where QEMU would reset. Without ACPI it is the
//!   one way a guest can stop a built-in VM itself, and a guest that lost
//!   its exception handling is not restarted into the same crash. (Linux
//!   resets through the i8042 with the default command line, so its reboots
//!   are real reboots.)
//! - There is no power button: a polite power-off goes through the guest
//!   agent, and [`Vm::terminate`] stops the VM at once.

/// Guest memory, kernel, initrd and boot structures.
pub mod boot;
/// vCPU registers, CPUID, MSRs, LAPIC.
pub mod cpu;
/// UARTs and the i8042 reset line on port I/O.
pub mod devices;
/// Bounded bzImage header checks.
pub mod kernel;
/// `tellus-vmm`: the VMM's own process and the launcher's side of it.
pub mod process;
/// Sealed guest RAM.
pub mod ram;
/// seccomp allow-lists of the VMM threads.
pub mod seccomp;
/// vCPU threads, start gate and stop kick.
pub mod vcpu;

use super::{BackendError, EventSink, VmmEvent};
use crate::accel::{Accel, AccelChoice, KvmKind};
use crate::vm_config::VmConfig;
use boot::BootSpec;
use devices::{IrqLine, PioBus, ResetLine, Sink, Uart, COM1, COM2};
use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use std::io::Read;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vcpu::{Gate, GateState, StopRequest};

pub use process::{Builtin, VMM_BINARY};
use vm_superio::{I8042Device, Serial};
use vmm_sys_util::eventfd::EventFd;

/// How often a stopping vCPU is kicked until its thread has ended.
const KICK_INTERVAL: Duration = Duration::from_millis(5);
/// KVM's TSS and identity-map pages (Intel needs them below 4 GiB, outside RAM).
const TSS_ADDR: usize = 0xfffb_d000;
const IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// The devices a built-in guest gets (measured in the launch config).
pub const DEVICES: [&str; 3] = ["com1:console", "com2:agent-channel", "i8042:reset"];
/// Machine name in the launch config.
pub const MACHINE: &str = "tellus-builtin";

/// The kernel command line when none is given. `reboot=k`: the kernel
/// reboots through the i8042 reset line, which the built-in VMM turns into a
/// fresh boot (as QEMU does); with `panic=-1` a panic reboots too. Linux
/// cannot power off without ACPI: its power-off ends in a panic and so in a
/// reset, and the launcher stops a VM that resets while it waits for the
/// guest to power off.
/// `pci=off`: there is no PCI. The `i8042.*` options keep Linux from probing
/// a keyboard controller that only has its reset line.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// The accelerator of a built-in VM: always KVM. PVM's `/dev/kvm` is
/// accepted (the KVM API works; only PVM-enabled kernels and the test
/// payloads boot there), and the reason says so.
pub fn choose_accel(choice: AccelChoice, host: &KvmKind) -> Result<(Accel, String), BackendError> {
    match (choice, host) {
        (AccelChoice::Tcg, _) => Err(BuiltinError::NeedsKvm("--accel tcg was given".into()).into()),
        (_, KvmKind::Hardware(_)) => Ok((Accel::Kvm, host.to_string())),
        (_, KvmKind::Pvm) => Ok((
            Accel::Kvm,
            "built-in VMM on PVM's /dev/kvm: stock kernels do not boot here, only PVM-enabled ones"
                .into(),
        )),
        (_, KvmKind::Unavailable(why)) => Err(BuiltinError::NeedsKvm(why.clone()).into()),
    }
}

/// Errors of the built-in VMM.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error(
        "cannot open /dev/kvm: {0}; the built-in VMM needs KVM (use --backend qemu elsewhere)"
    )]
    Kvm(kvm_ioctls::Error),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    #[error("KVM refused to {what}: {source}")]
    VmSetup { what: &'static str, source: kvm_ioctls::Error },
    #[error("cannot set up the VMM's {what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("a VMM thread could not start safely: {0}")]
    Thread(String),
    #[error("the built-in VMM has no ACPI power button; the guest is asked through its agent, or stopped")]
    NoPowerButton,
    #[error("the built-in VMM has stopped (its messages, above, say why)")]
    Stopped,
    #[error("the built-in VMM runs only on KVM ({0}); use --backend qemu")]
    NeedsKvm(String),
    #[error("the built-in VMM boots the kernel directly and runs no firmware; drop --firmware or use --backend qemu")]
    NoFirmware,
    #[error("the built-in VMM's executable {path} cannot be used ({why}); build it (cargo build --bins) next to tellus, or pass --tellus-vmm PATH")]
    VmmNotFound { path: std::path::PathBuf, why: String },
    #[error("tellus-vmm failed to start the VM ({status}){}; if it is not the tellus-vmm built with this tellus, use that one (--tellus-vmm)", said(.stderr))]
    VmmStart { status: ExitStatus, stderr: String },
    #[error("tellus-vmm did not report the VM built within {secs} s; it was stopped{}; check /dev/kvm and the host's load, or use --backend qemu", said(.stderr))]
    VmmStartTimeout { secs: u64, stderr: String },
    #[error("tellus-vmm broke its control protocol ({0}); it was stopped; use the tellus-vmm built with this tellus (--tellus-vmm)")]
    VmmProtocol(String),
}

fn said(stderr: &str) -> String {
    match stderr.trim() {
        "" => String::new(),
        t => format!(": {t}"),
    }
}

impl From<&VmConfig> for BootSpec {
    fn from(cfg: &VmConfig) -> BootSpec {
        BootSpec {
            kernel: cfg.kernel.clone(),
            initrd: cfg.initrd.clone(),
            cmdline: cfg.cmdline.clone(),
            memory_mib: cfg.memory.0,
            vcpus: cfg.vcpus,
        }
    }
}

/// Checks that the built-in VMM can boot `cfg` (kernel header, memory,
/// vCPUs, command line) without starting anything.
pub fn preflight(cfg: &VmConfig) -> Result<(), BackendError> {
    Ok(boot::preflight(&BootSpec::from(cfg)).map_err(BuiltinError::from)?)
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BuiltinError {
    move |source| BuiltinError::Io { what, source }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuiltinError {
    move |source| BuiltinError::VmSetup { what, source }
}

/// Messages to the supervisor.
enum Msg {
    /// Let the vCPUs of this boot, and of every later boot, run.
    Start,
    /// From the host (power functions): a reset or the end.
    Host(StopRequest),
    /// From a vCPU or device of boot `n` (1 = the first).
    Boot(u32, StopRequest),
}

/// What outlives a reboot: the open `/dev/kvm`, the boot spec, KVM's CPUID
/// and the device ends of the console and agent-channel streams (the host
/// ends, held by the launcher, are never replaced).
struct Host {
    kvm: Kvm,
    spec: BootSpec,
    supported: CpuId,
    console_dev: UnixStream,
    chan_dev: UnixStream,
    msgs: Sender<Msg>,
}

/// One boot: a VM built from the boot spec, its devices and its vCPU
/// threads. Dropping it stops and joins the vCPU threads first, then drops
/// the devices, the VM fd and last the guest RAM (field order), so KVM
/// never runs on unmapped memory.
struct Machine {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    gate: Arc<Gate>,
    bus: Arc<PioBus<UnixStream>>,
    /// Held for KVM, never read.
    _vm: VmFd,
    /// Held for KVM, never read (sealed).
    _ram: ram::GuestRam,
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.gate.set(GateState::Aborted);
        self.stop.store(true, Ordering::Release);
        while self.threads.iter().any(|t| !t.is_finished()) {
            for t in self.threads.iter().filter(|t| !t.is_finished()) {
                vcpu::kick(t);
            }
            std::thread::sleep(KICK_INTERVAL);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Host {
    /// Builds boot `boot` with its vCPUs held at its gate: a fresh
    /// [`boot::load`] (fresh guest RAM), a fresh VM on the open `/dev/kvm`,
    /// fresh UARTs on the same streams, and vCPU threads that have their
    /// seccomp filters installed. `com2`: the agent channel's UART slot of
    /// the earlier boots (the COM2 input thread feeds it), reset here.
    fn build(
        &self,
        boot: u32,
        com2: Option<&Arc<Mutex<Uart<UnixStream>>>>,
    ) -> Result<Machine, BuiltinError> {
        let spec = &self.spec;
        // Everything that reads untrusted files and writes guest memory
        // happens here, before any KVM object exists that could run it.
        let (ram, entry) = boot::load(spec)?;

        let vm = self.kvm.create_vm().map_err(kvm_err("create a VM"))?;
        vm.set_tss_address(TSS_ADDR).map_err(kvm_err("set the TSS address"))?;
        vm.set_identity_map_address(IDENTITY_MAP_ADDR).map_err(kvm_err("set the identity map"))?;
        vm.create_irq_chip().map_err(kvm_err("create the interrupt controllers"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
        ram.register(&vm).map_err(kvm_err("map guest memory"))?;

        let irq = |gsi: u32| -> Result<IrqLine, BuiltinError> {
            let e = EventFd::new(libc::EFD_NONBLOCK).map_err(io("interrupt line"))?;
            vm.register_irqfd(&e, gsi).map_err(kvm_err("connect a UART interrupt"))?;
            Ok(IrqLine(e))
        };
        let console = self.console_dev.try_clone().map_err(io("console stream"))?;
        let chan = self.chan_dev.try_clone().map_err(io("agent channel"))?;
        let com2_uart = Serial::new(irq(COM2.1)?, Sink(chan));
        let com2 = match com2 {
            Some(slot) => {
                // A reset UART: whatever the old boot left in its FIFOs is gone.
                *slot.lock().map_err(|_| BuiltinError::Thread("COM2 lock poisoned".into()))? =
                    com2_uart;
                slot.clone()
            }
            None => Arc::new(Mutex::new(com2_uart)),
        };
        let reset_tx = Mutex::new(self.msgs.clone());
        let bus = Arc::new(PioBus {
            com1: Mutex::new(Serial::new(irq(COM1.1)?, Sink(console))),
            com2,
            i8042: Mutex::new(I8042Device::new(ResetLine(Box::new(move || {
                if let Ok(tx) = reset_tx.lock() {
                    let _ = tx.send(Msg::Boot(boot, StopRequest::GuestReset));
                }
            })))),
        });

        let mut vcpus = Vec::new();
        for id in 0..spec.vcpus {
            let fd = vm.create_vcpu(u64::from(id)).map_err(kvm_err("create a vCPU"))?;
            cpu::setup(&fd, id, spec.vcpus, &self.supported, (id == 0).then_some(entry))?;
            vcpus.push(fd);
        }

        let mut m = Machine {
            threads: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            gate: Arc::new(Gate::default()),
            bus,
            _vm: vm,
            _ram: ram,
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        for (id, fd) in vcpus.into_iter().enumerate() {
            let tx = self.msgs.clone();
            let t = vcpu::spawn(
                id as u32,
                fd,
                m.bus.clone(),
                m.stop.clone(),
                m.gate.clone(),
                move |r| {
                    let _ = tx.send(Msg::Boot(boot, r));
                },
                ready_tx.clone(),
            );
            // On an error, dropping `m` aborts the gate and joins the threads.
            match t {
                Ok(t) => m.threads.push(t),
                Err(e) => return Err(BuiltinError::Thread(format!("vCPU thread: {e}"))),
            }
        }
        drop(ready_tx);
        // Every vCPU thread has its seccomp filter before the VM may start.
        for _ in 0..m.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(BuiltinError::Thread(e)),
                Err(_) => return Err(BuiltinError::Thread("a vCPU thread ended early".into())),
            }
        }
        Ok(m)
    }
}

/// The device ends of a built-in VM's console and agent-channel streams
/// (their host ends are the launcher's). Both outlive every reboot.
pub struct DeviceStreams {
    /// COM1's output goes here.
    pub console: UnixStream,
    /// COM2: guest output goes here, host input is read from here.
    pub channel: UnixStream,
}

/// Builds the VM with its vCPUs held at the gate on `kvm` (the open
/// `/dev/kvm`: reboots build their VMs on it too) and returns its power
/// handle. This is the VMM itself: `tellus-vmm` ([`process`]) runs it in a
/// process of its own, after dropping its capabilities and installing the
/// process-wide seccomp filter, which every thread started here inherits.
pub fn start(
    spec: &BootSpec,
    kvm: Kvm,
    streams: DeviceStreams,
    events: EventSink,
) -> Result<Vm, BuiltinError> {
    let supported =
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("report its CPUID"))?;
    vcpu::install_kick_handler().map_err(io("vCPU kick signal"))?;

    let DeviceStreams { console: console_dev, channel: chan_dev } = streams;
    let chan_dev_in = chan_dev.try_clone().map_err(io("agent channel"))?;
    let (msgs, msg_rx) = mpsc::channel::<Msg>();
    let host =
        Host { kvm, spec: spec.clone(), supported, console_dev, chan_dev, msgs: msgs.clone() };
    let machine = host.build(1, None)?;
    let com2 = machine.bus.com2.clone();
    let ended = Arc::new(AtomicBool::new(false));
    // On an error, dropping `machine` stops its (held) vCPU threads.
    let feeder =
        spawn_feeder(chan_dev_in, com2.clone(), ended.clone()).map_err(BuiltinError::Thread)?;
    let sup = Supervisor {
        host,
        machine: Some(machine),
        boot: 1,
        started: false,
        com2,
        feeder,
        ended,
        events,
        msg_rx,
    };
    std::thread::Builder::new()
        .name("vmm-supervisor".into())
        .spawn(move || sup.run())
        .map_err(|e| BuiltinError::Thread(format!("supervisor thread: {e}")))?;
    Ok(Vm { msgs })
}

/// Moves bytes from the host into COM2's receive FIFO as the guest drains it.
/// It lives as long as the VM, across reboots: each boot resets the UART in
/// the same `com2` slot.
fn spawn_feeder<W: std::io::Write + Send + 'static>(
    mut input: UnixStream,
    com2: Arc<Mutex<Uart<W>>>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let t = std::thread::Builder::new()
        .name("com2-input".into())
        .spawn(move || {
            if let Err(e) = seccomp::apply(seccomp::ThreadKind::Device) {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            let mut buf = [0u8; 256];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let took = match com2.lock() {
                        Ok(mut u) => u.enqueue_raw_bytes(pending).unwrap_or(0),
                        Err(_) => return,
                    };
                    pending = &pending[took..];
                    if !pending.is_empty() {
                        // The FIFO is full until the guest reads it.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        })
        .map_err(|e| format!("COM2 input thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(t),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the COM2 input thread ended early".into()),
    }
}

/// Owns the VM while it runs: starts it, rebuilds it on a reset, stops it
/// on any other request, and reports. It runs under `tellus-vmm`'s
/// process-wide allow-list only (inherited, with no capabilities), not a
/// narrower list of its own: rebuilding a VM takes what that list allows
/// (reading the boot images, mapping RAM, KVM's VM ioctls, new threads). It
/// reads no guest-controlled data: only [`Msg`]s.
struct Supervisor {
    host: Host,
    /// `None` only between stopping a boot and building the next.
    machine: Option<Machine>,
    boot: u32,
    started: bool,
    com2: Arc<Mutex<Uart<UnixStream>>>,
    feeder: JoinHandle<()>,
    ended: Arc<AtomicBool>,
    events: EventSink,
    msg_rx: Receiver<Msg>,
}

impl Supervisor {
    fn run(mut self) {
        let (reason, failure) = loop {
            // The supervisor holds a sender itself (for later boots); the
            // power handle's drop sends `Terminate`, so this never waits on
            // a VM nobody controls.
            let msg = self.msg_rx.recv().unwrap_or(Msg::Host(StopRequest::Terminate));
            let request = match msg {
                Msg::Start => {
                    self.started = true;
                    if let Some(m) = &self.machine {
                        m.gate.set(GateState::Open);
                    }
                    continue;
                }
                // The last word of a boot that has been replaced already.
                Msg::Boot(b, _) if b != self.boot => continue,
                Msg::Boot(_, r) | Msg::Host(r) => r,
            };
            // Stop every vCPU of this boot and drop its VM and RAM.
            drop(self.machine.take());
            let reason = match &request {
                StopRequest::GuestReset => "guest-reset",
                StopRequest::HostReset => "host-reset",
                StopRequest::TripleFault => break ("guest-triple-fault".to_string(), None),
                StopRequest::SystemEvent(t) => break (format!("guest-system-event-{t}"), None),
                StopRequest::Terminate => break ("host-terminate".into(), None),
                StopRequest::Failed(why) => break ("vmm-failed".into(), Some(why.clone())),
            };
            self.boot += 1;
            match self.host.build(self.boot, Some(&self.com2)) {
                Ok(m) => {
                    // Before the new boot runs, so the launcher sees the
                    // reset before anything the new boot sends.
                    (self.events)(VmmEvent::Reset { reason: reason.into() });
                    if self.started {
                        m.gate.set(GateState::Open);
                    }
                    self.machine = Some(m);
                }
                Err(e) => {
                    break (
                        "vmm-failed".into(),
                        Some(format!("cannot boot again after {reason}: {e}")),
                    )
                }
            }
        };
        if failure.is_none() {
            (self.events)(VmmEvent::Shutdown { reason });
        }
        // Close the guest side of both streams: the host readers see EOF.
        let Supervisor { host, machine, com2, feeder, ended, events, .. } = self;
        ended.store(true, Ordering::Release);
        let _ = host.chan_dev.shutdown(Shutdown::Both);
        let _ = feeder.join();
        drop((machine, com2, host));
        let (status, stderr_tail) = match failure {
            None => (ExitStatus::from_raw(0), String::new()),
            Some(why) => (ExitStatus::from_raw(1 << 8), why),
        };
        events(VmmEvent::Exited { status, stderr_tail });
    }
}

/// The power functions of a running built-in VM, in the VMM's process.
pub struct Vm {
    msgs: Sender<Msg>,
}

impl Vm {
    fn send(&self, m: Msg) -> Result<(), BuiltinError> {
        self.msgs.send(m).map_err(|_| BuiltinError::Stopped)
    }
    /// Lets the vCPUs of this boot, and of every later boot, run.
    pub fn start_vcpus(&self) -> Result<(), BuiltinError> {
        self.send(Msg::Start)
    }
    /// Stops every vCPU, drops the VM and its RAM and boots the same spec
    /// again; [`VmmEvent::Reset`] `host-reset` follows.
    pub fn reset(&self) -> Result<(), BuiltinError> {
        self.send(Msg::Host(StopRequest::HostReset))
    }
    /// Stops the VM at once; [`VmmEvent::Shutdown`] `host-terminate` and
    /// [`VmmEvent::Exited`] follow.
    pub fn terminate(&self) -> Result<(), BuiltinError> {
        self.send(Msg::Host(StopRequest::Terminate))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // No VM outlives the handle that controls it.
        let _ = self.msgs.send(Msg::Host(StopRequest::Terminate));
    }
}
