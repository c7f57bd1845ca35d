//! The built-in VMM: KVM through kvm-ioctls, memory through vm-memory, the
//! kernel through linux-loader, two UARTs and the i8042 reset line through
//! vm-superio, seccomp through seccompiler. It runs in the launcher process,
//! one thread per vCPU, and offers exactly what the [`Backend`] interface
//! asks for: console and agent-channel streams and the power functions.
//!
//! What it cannot do, by construction:
//! - read or write guest memory after loading: [`boot::load`] is the only
//!   writer and seals the memory into a [`ram::GuestRam`], which has no
//!   accessor (see `ram.rs`); the devices are port-I/O only;
//! - debug, snapshot or migrate: there is no gdbstub, no state save/restore,
//!   no register read-back after set-up;
//! - make syscalls outside its allow-lists on its vCPU and device threads
//!   (see [`seccomp`]).
//!
//! Power semantics (no ACPI): the guest ends the VM by writing 0xFE to port
//! 0x64 (Linux: `reboot=k`) or by triple-faulting; both end the VMM, as in
//! other minimal VMMs, rather than rebooting it. There is no power button.

/// Guest memory, kernel, initrd and boot structures.
pub mod boot;
/// vCPU registers, CPUID, MSRs, LAPIC.
pub mod cpu;
/// UARTs and the i8042 reset line on port I/O.
pub mod devices;
/// Bounded bzImage header checks.
pub mod kernel;
/// Sealed guest RAM.
pub mod ram;
/// seccomp allow-lists of the VMM threads.
pub mod seccomp;
/// vCPU threads, start gate and stop kick.
pub mod vcpu;

use super::{Backend, BackendError, EventSink, GuestStreams, PowerControl, StartedVm, VmmEvent};
use crate::accel::{Accel, AccelChoice, KvmKind};
use crate::vm_config::VmConfig;
use boot::BootSpec;
use devices::{IrqLine, PioBus, ResetLine, Sink, COM1, COM2};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::Kvm;
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
use vm_superio::{I8042Device, Serial};
use vmm_sys_util::eventfd::EventFd;

/// Host-side timeout for one write to the agent channel (as for QEMU).
const CHANNEL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a stopping vCPU is kicked until its thread has ended.
const KICK_INTERVAL: Duration = Duration::from_millis(5);
/// KVM's TSS and identity-map pages (Intel needs them below 4 GiB, outside RAM).
const TSS_ADDR: usize = 0xfffb_d000;
const IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// The devices a built-in guest gets (measured in the launch config).
pub const DEVICES: [&str; 3] = ["com1:console", "com2:agent-channel", "i8042:reset"];
/// Machine name in the launch config.
pub const MACHINE: &str = "tellus-builtin";

/// The kernel command line when none is given. `reboot=k`: the i8042 reset
/// ends a built-in VM, so the kernel reboots (and panics) through it.
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
    #[error("the built-in VMM does not reset a running VM; stop it and run it again")]
    NoReset,
    #[error("the built-in VMM has stopped")]
    Stopped,
    #[error("the built-in VMM runs only on KVM ({0}); use --backend qemu")]
    NeedsKvm(String),
    #[error("the built-in VMM boots the kernel directly and runs no firmware; drop --firmware or use --backend qemu")]
    NoFirmware,
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

/// The built-in backend.
#[derive(Debug, Default)]
pub struct Builtin;

impl Backend for Builtin {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn start(
        &self,
        cfg: &VmConfig,
        _accel: Accel,
        events: EventSink,
    ) -> Result<StartedVm, BackendError> {
        Ok(start(&BootSpec::from(cfg), events)?)
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BuiltinError {
    move |source| BuiltinError::Io { what, source }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuiltinError {
    move |source| BuiltinError::VmSetup { what, source }
}

/// Builds the VM with its vCPUs held at the gate.
pub fn start(spec: &BootSpec, events: EventSink) -> Result<StartedVm, BuiltinError> {
    let kvm = Kvm::new().map_err(BuiltinError::Kvm)?;
    // Everything that reads untrusted files and writes guest memory happens
    // here, before any KVM object exists that could run it.
    let (ram, entry) = boot::load(spec)?;

    let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    vm.set_tss_address(TSS_ADDR).map_err(kvm_err("set the TSS address"))?;
    vm.set_identity_map_address(IDENTITY_MAP_ADDR).map_err(kvm_err("set the identity map"))?;
    vm.create_irq_chip().map_err(kvm_err("create the interrupt controllers"))?;
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
    ram.register(&vm).map_err(kvm_err("map guest memory"))?;

    // Streams: (host end, device end) pairs.
    let (console_host, console_dev) = UnixStream::pair().map_err(io("console stream"))?;
    let (chan_host, chan_dev) = UnixStream::pair().map_err(io("agent channel"))?;
    chan_host.set_write_timeout(Some(CHANNEL_WRITE_TIMEOUT)).map_err(io("agent channel"))?;
    let chan_rx = chan_host.try_clone().map_err(io("agent channel"))?;
    let chan_dev_in = chan_dev.try_clone().map_err(io("agent channel"))?;
    let chan_dev_ctl = chan_dev.try_clone().map_err(io("agent channel"))?;

    let irq = |gsi: u32| -> Result<IrqLine, BuiltinError> {
        let e = EventFd::new(libc::EFD_NONBLOCK).map_err(io("interrupt line"))?;
        vm.register_irqfd(&e, gsi).map_err(kvm_err("connect a UART interrupt"))?;
        Ok(IrqLine(e))
    };
    let (requests, request_rx) = mpsc::channel::<StopRequest>();
    let reset_tx = Mutex::new(requests.clone());
    let bus = Arc::new(PioBus {
        com1: Mutex::new(Serial::new(irq(COM1.1)?, Sink(console_dev))),
        com2: Arc::new(Mutex::new(Serial::new(irq(COM2.1)?, Sink(chan_dev)))),
        i8042: Mutex::new(I8042Device::new(ResetLine(Box::new(move || {
            if let Ok(tx) = reset_tx.lock() {
                let _ = tx.send(StopRequest::GuestReset);
            }
        })))),
    });

    let supported =
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("report its CPUID"))?;
    let mut vcpus = Vec::new();
    for id in 0..spec.vcpus {
        let fd = vm.create_vcpu(u64::from(id)).map_err(kvm_err("create a vCPU"))?;
        cpu::setup(&fd, id, spec.vcpus, &supported, (id == 0).then_some(entry))?;
        vcpus.push(fd);
    }

    vcpu::install_kick_handler().map_err(io("vCPU kick signal"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Gate::default());
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::new();
    let abort = |threads: Vec<JoinHandle<()>>, gate: &Gate, why: String| {
        gate.set(GateState::Aborted);
        for t in threads {
            let _ = t.join();
        }
        BuiltinError::Thread(why)
    };
    for (id, fd) in vcpus.into_iter().enumerate() {
        let t = vcpu::spawn(
            id as u32,
            fd,
            bus.clone(),
            stop.clone(),
            gate.clone(),
            requests.clone(),
            ready_tx.clone(),
        );
        match t {
            Ok(t) => threads.push(t),
            Err(e) => return Err(abort(threads, &gate, format!("vCPU thread: {e}"))),
        }
    }
    drop(ready_tx);
    // Every vCPU thread has its seccomp filter before the VM may start.
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(abort(threads, &gate, e)),
            Err(_) => return Err(abort(threads, &gate, "a vCPU thread ended early".into())),
        }
    }

    let feeder = spawn_feeder(chan_dev_in, bus.clone(), stop.clone())
        .map_err(|e| abort(Vec::new(), &gate, e))?;
    let sup = Supervisor {
        threads,
        feeder,
        stop,
        gate: gate.clone(),
        chan_dev: chan_dev_ctl,
        bus,
        events,
        request_rx,
        vm_objects: Box::new((vm, kvm)),
        ram,
    };
    let description = format!(
        "built-in VMM (KVM, {} vCPU, {}M, COM1 console, COM2 agent channel)",
        spec.vcpus, spec.memory_mib
    );
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("vmm-supervisor".into())
        .spawn(move || sup.run(ready_tx))
        .map_err(|e| BuiltinError::Thread(format!("supervisor thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(BuiltinError::Thread(e)),
        Err(_) => return Err(BuiltinError::Thread("the supervisor ended early".into())),
    }
    Ok(StartedVm {
        streams: GuestStreams {
            console: Box::new(console_host),
            channel_rx: Box::new(chan_rx),
            channel_tx: Box::new(chan_host),
        },
        power: Box::new(BuiltinPower { gate, requests }),
        description,
    })
}

/// Moves bytes from the host into COM2's receive FIFO as the guest drains it.
fn spawn_feeder<W: std::io::Write + Send + 'static>(
    mut input: UnixStream,
    bus: Arc<PioBus<W>>,
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
                    let took = match bus.com2.lock() {
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

/// Owns the VM while it runs; stops it on the first request and reports.
struct Supervisor<W: std::io::Write + Send + 'static> {
    threads: Vec<JoinHandle<()>>,
    feeder: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    gate: Arc<Gate>,
    chan_dev: UnixStream,
    bus: Arc<PioBus<W>>,
    events: EventSink,
    request_rx: Receiver<StopRequest>,
    /// VM and KVM fds: dropped before `ram` (field order), so KVM never runs
    /// on unmapped memory.
    vm_objects: Box<(kvm_ioctls::VmFd, Kvm)>,
    ram: ram::GuestRam,
}

impl<W: std::io::Write + Send + 'static> Supervisor<W> {
    fn run(self, ready: Sender<Result<(), String>>) {
        if let Err(e) = seccomp::apply(seccomp::ThreadKind::Device) {
            let _ = ready.send(Err(e.to_string()));
            self.gate.set(GateState::Aborted);
            return;
        }
        let _ = ready.send(Ok(()));
        drop(ready);
        let Supervisor {
            threads,
            feeder,
            stop,
            gate,
            chan_dev,
            bus,
            events,
            request_rx,
            vm_objects,
            ram,
        } = self;
        // All senders live as long as the vCPUs and the power handle; if they
        // are all gone, nothing can run the VM any more: stop it.
        let request = request_rx.recv().unwrap_or(StopRequest::Terminate);
        gate.set(GateState::Aborted);
        stop.store(true, Ordering::Release);
        while threads.iter().any(|t| !t.is_finished()) {
            for t in threads.iter().filter(|t| !t.is_finished()) {
                vcpu::kick(t);
            }
            std::thread::sleep(KICK_INTERVAL);
        }
        for t in threads {
            let _ = t.join();
        }
        let (reason, failure) = match &request {
            StopRequest::GuestReset => ("guest-reset".to_string(), None),
            StopRequest::TripleFault => ("guest-triple-fault".into(), None),
            StopRequest::SystemEvent(t) => (format!("guest-system-event-{t}"), None),
            StopRequest::Terminate => ("host-terminate".into(), None),
            StopRequest::Failed(why) => ("vmm-failed".into(), Some(why.clone())),
        };
        if failure.is_none() {
            events(VmmEvent::Shutdown { reason });
        }
        // Close the guest side of both streams: the host readers see EOF.
        let _ = chan_dev.shutdown(Shutdown::Both);
        let _ = feeder.join();
        drop(chan_dev);
        drop(bus);
        drop(vm_objects);
        drop(ram);
        let (status, stderr_tail) = match failure {
            None => (ExitStatus::from_raw(0), String::new()),
            Some(why) => (ExitStatus::from_raw(1 << 8), why),
        };
        events(VmmEvent::Exited { status, stderr_tail });
    }
}

/// The power functions of a built-in VM.
struct BuiltinPower {
    gate: Arc<Gate>,
    requests: Sender<StopRequest>,
}

impl PowerControl for BuiltinPower {
    fn start_vcpus(&mut self) -> Result<(), BackendError> {
        self.gate.set(GateState::Open);
        Ok(())
    }
    fn power_button(&mut self) -> Result<(), BackendError> {
        Err(BuiltinError::NoPowerButton.into())
    }
    fn reset(&mut self) -> Result<(), BackendError> {
        Err(BuiltinError::NoReset.into())
    }
    fn terminate(&mut self) -> Result<(), BackendError> {
        self.requests.send(StopRequest::Terminate).map_err(|_| BuiltinError::Stopped)?;
        Ok(())
    }
    fn vmm_pid(&self) -> Option<u32> {
        None
    }
}

impl Drop for BuiltinPower {
    fn drop(&mut self) {
        // No VM outlives the handle that controls it.
        let _ = self.requests.send(StopRequest::Terminate);
    }
}
