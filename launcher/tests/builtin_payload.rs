//! The built-in VMM on /dev/kvm (PVM here, hardware KVM elsewhere) with test
//! payloads that go through the real bzImage loader and boot path, driven
//! through the same `Backend` interface `tellus run` uses: console capture,
//! the agent channel through the launcher's own FrameDecoder path
//! (`channel::spawn_reader`), and the power functions.

mod builtin_support;

use builtin_support::*;
use std::io::Read;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tellus_launcher::accel::Accel;
use tellus_launcher::backend::builtin::boot::BootError;
use tellus_launcher::backend::builtin::kernel::KernelError;
use tellus_launcher::backend::builtin::BuiltinError;
use tellus_launcher::backend::{Backend, BackendError, EventSink, PowerControl, VmmEvent};
use tellus_launcher::channel::{ChannelEvent, ChannelWriter};
use tellus_launcher::vm_config::{MemorySize, VmConfig};
use tellus_protocol::{DropReason, GuestMessage, HostMessage};

const TIMEOUT: Duration = Duration::from_secs(30);
const CMDLINE: &str = "console=ttyS0 tellus.test=payload";

fn config(g: &Guest, vcpus: u32, mib: u64) -> VmConfig {
    VmConfig::stage(&g.kernel, &g.initrd, None, CMDLINE, MemorySize(mib), vcpus).unwrap()
}

/// Copies what it reads into a shared buffer.
struct Tee<R> {
    inner: R,
    copy: Arc<Mutex<Vec<u8>>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// A running payload VM and everything observed from it.
struct Run {
    power: Box<dyn PowerControl>,
    writer: ChannelWriter,
    vmm: Receiver<VmmEvent>,
    chan: Receiver<ChannelEvent>,
    console: Arc<Mutex<Vec<u8>>>,
    channel_bytes: Arc<Mutex<Vec<u8>>>,
    console_done: std::thread::JoinHandle<()>,
    /// The payload's files, kept while it runs.
    _guest: Guest,
}

/// Starts payload `v` on `vcpus` (64 MiB) and its vCPUs.
fn start(v: Variant, vcpus: u32) -> Run {
    let guest = Guest::payload(v);
    let vm = start_builtin(&config(&guest, vcpus, 64));
    let channel_bytes = Arc::new(Mutex::new(Vec::new()));
    let chan = channel_events(Box::new(Tee { inner: vm.channel_rx, copy: channel_bytes.clone() }));
    let mut power = vm.power;
    power.start_vcpus().unwrap();
    Run {
        power,
        writer: ChannelWriter(vm.channel_tx),
        vmm: vm.vmm,
        chan,
        console: vm.console,
        channel_bytes,
        console_done: vm.console_done,
        _guest: guest,
    }
}

impl Run {
    fn wait_console(&self, text: &str) {
        let what = format!("no {text:?} on the console");
        wait_console(&self.console, TIMEOUT, &what, |now| now.contains(text));
    }

    fn next_channel(&self) -> ChannelEvent {
        self.chan.recv_timeout(TIMEOUT).expect("channel event")
    }

    fn next_vmm(&self) -> VmmEvent {
        self.vmm.recv_timeout(TIMEOUT).expect("VMM event")
    }

    /// Expects `Shutdown { reason }` then a successful `Exited`; returns the
    /// console output (complete: the stream has ended).
    fn expect_end(self, reason: &str) -> String {
        match self.next_vmm() {
            VmmEvent::Shutdown { reason: r } => assert_eq!(r, reason),
            other => panic!("expected Shutdown({reason}), got {other:?}"),
        }
        match self.next_vmm() {
            VmmEvent::Exited { status, stderr_tail } => {
                assert!(status.success(), "{status} {stderr_tail}");
                assert_eq!(stderr_tail, "");
            }
            other => panic!("expected Exited, got {other:?}"),
        }
        self.console_done.join().unwrap();
        // The channel stream ends too.
        match self.chan.recv_timeout(TIMEOUT) {
            Ok(ChannelEvent::Closed) => {}
            Ok(other) => panic!("unexpected channel event at the end: {other:?}"),
            Err(e) => panic!("channel did not close: {e}"),
        }
        String::from_utf8(self.console.lock().unwrap().clone()).unwrap()
    }
}

fn expect_ready(e: ChannelEvent) {
    match e {
        ChannelEvent::Message(GuestMessage::Ready { agent_version, uptime_ms }) => {
            assert_eq!(agent_version, AGENT_VERSION);
            assert_eq!(uptime_ms, UPTIME_MS);
        }
        other => panic!("expected Ready, got {other:?}"),
    }
}

/// Runs a variant that sends `Ready` and answers `PowerOff`; `before` are
/// the bytes it sends ahead of its `Ready` frame.
fn ready_and_poweroff(v: Variant, vcpus: u32, before: &[u8]) -> Vec<ChannelEvent> {
    let mut run = start(v, vcpus);
    let mut dropped = Vec::new();
    loop {
        match run.next_channel() {
            e @ ChannelEvent::Dropped { .. } => dropped.push(e),
            e => {
                expect_ready(e);
                break;
            }
        }
    }
    run.writer.send(HostMessage::PowerOff).unwrap();
    let channel_bytes = run.channel_bytes.clone();
    // The payload powers off the one way a built-in VM offers: a triple fault.
    let console = run.expect_end("guest-triple-fault");
    assert_eq!(console, expected_console(v, CMDLINE, vcpus));
    let mut sent = before.to_vec();
    sent.extend_from_slice(&ready_frame());
    assert_eq!(*channel_bytes.lock().unwrap(), sent, "bytes on COM2");
    dropped
}

/// How many bytes the `Dropped` events among `events` dropped in all.
fn dropped_bytes(events: &[ChannelEvent]) -> usize {
    events
        .iter()
        .map(|e| match e {
            ChannelEvent::Dropped { bytes, .. } => *bytes,
            _ => 0,
        })
        .sum()
}

#[test]
fn payload_ready_then_poweroff() {
    if !kvm_usable_or_skip("payload_ready_then_poweroff") {
        return;
    }
    let dropped = ready_and_poweroff(Variant::Ready, 1, &[]);
    assert!(dropped.is_empty(), "{dropped:?}");
}

#[test]
fn payload_on_two_vcpus_stops_both() {
    if !kvm_usable_or_skip("payload_on_two_vcpus_stops_both") {
        return;
    }
    // vCPU 1 waits for INIT/SIPI in KVM the whole time; ending the VM must
    // still stop and join its thread.
    let dropped = ready_and_poweroff(Variant::Ready, 2, &[]);
    assert!(dropped.is_empty(), "{dropped:?}");
}

#[test]
fn payload_garbage_is_dropped_then_ready() {
    if !kvm_usable_or_skip("payload_garbage_is_dropped_then_ready") {
        return;
    }
    let dropped = ready_and_poweroff(Variant::Garbage, 1, GARBAGE);
    let total = dropped_bytes(&dropped);
    assert_eq!(total, GARBAGE.len(), "{dropped:?}");
}

#[test]
fn payload_oversized_frame_is_dropped_then_ready() {
    if !kvm_usable_or_skip("payload_oversized_frame_is_dropped_then_ready") {
        return;
    }
    let dropped = ready_and_poweroff(Variant::Oversized, 1, OVERSIZED);
    let total = dropped_bytes(&dropped);
    assert_eq!(total, OVERSIZED.len(), "{dropped:?}");
    assert!(
        matches!(
            dropped.first(),
            Some(ChannelEvent::Dropped { reason: DropReason::BadLength(0x10_0000), .. })
        ),
        "{dropped:?}"
    );
}

/// Runs payload `v` on `vcpus` until it ends itself (a triple fault, the
/// one power-off a built-in VM offers) and checks its whole console output.
fn runs_to_its_end(v: Variant, vcpus: u32) {
    let console = start(v, vcpus).expect_end("guest-triple-fault");
    assert_eq!(console, expected_console(v, CMDLINE, vcpus));
}

#[test]
fn payload_starts_an_application_processor() {
    if !kvm_usable_or_skip("payload_starts_an_application_processor") {
        return;
    }
    // INIT + SIPI through KVM's in-kernel LAPIC (x2APIC ICR): vCPU 1's
    // thread, in KVM_RUN since start, runs real-mode code at 0x8000.
    runs_to_its_end(Variant::Smp, 2);
}

#[test]
fn payload_takes_a_uart_interrupt() {
    if !kvm_usable_or_skip("payload_takes_a_uart_interrupt") {
        return;
    }
    // COM1's irqfd (GSI 4) through KVM's in-kernel PIC to LINT0 of the boot
    // vCPU, as Linux's 8250 driver relies on.
    runs_to_its_end(Variant::Interrupt, 1);
}

#[test]
fn payload_triple_fault_ends_the_vm() {
    if !kvm_usable_or_skip("payload_triple_fault_ends_the_vm") {
        return;
    }
    runs_to_its_end(Variant::TripleFault, 1);
}

#[test]
fn payload_spinning_forever_is_stopped_by_terminate() {
    if !kvm_usable_or_skip("payload_spinning_forever_is_stopped_by_terminate") {
        return;
    }
    let mut run = start(Variant::Spin, 2);
    run.wait_console("spinning\n");
    // No ACPI: the power button is refused with its reason, the VM runs on.
    let e = run.power.power_button().unwrap_err();
    assert!(matches!(e, BackendError::Builtin(BuiltinError::NoPowerButton)), "{e}");
    assert!(run.vmm.recv_timeout(Duration::from_millis(200)).is_err());
    run.power.terminate().unwrap();
    let console = run.expect_end("host-terminate");
    assert_eq!(console, expected_console(Variant::Spin, CMDLINE, 2));
}

#[test]
fn payload_on_eight_vcpus_is_stopped_by_terminate() {
    if !kvm_usable_or_skip("payload_on_eight_vcpus_is_stopped_by_terminate") {
        return;
    }
    // The most vCPUs the MP table is built for; seven of them wait for
    // INIT/SIPI inside KVM_RUN and must be kicked out.
    let mut run = start(Variant::Spin, 8);
    run.wait_console("spinning\n");
    run.power.terminate().unwrap();
    assert_eq!(run.expect_end("host-terminate"), expected_console(Variant::Spin, CMDLINE, 8));
}

#[test]
fn terminate_before_start_runs_nothing() {
    if !kvm_usable_or_skip("terminate_before_start_runs_nothing") {
        return;
    }
    let g = Guest::payload(Variant::Ready);
    let (sink, vmm) = event_channel();
    let started = builtin().start(&config(&g, 1, 64), Accel::Kvm, sink).unwrap();
    let mut power = started.power;
    let mut console = started.streams.console;
    power.terminate().unwrap();
    assert!(
        matches!(vmm.recv_timeout(TIMEOUT).unwrap(), VmmEvent::Shutdown { reason } if reason == "host-terminate")
    );
    assert!(
        matches!(vmm.recv_timeout(TIMEOUT).unwrap(), VmmEvent::Exited { status, .. } if status.success())
    );
    let mut out = Vec::new();
    console.read_to_end(&mut out).unwrap();
    assert!(out.is_empty(), "the guest ran: {:?}", String::from_utf8_lossy(&out));
}

fn start_err(image: &[u8], mib: u64) -> BootError {
    let g = Guest::new(image);
    let sink: EventSink = Arc::new(|_| {});
    match builtin().start(&config(&g, 1, mib), Accel::Kvm, sink) {
        Ok(_) => panic!("started"),
        Err(BackendError::Builtin(BuiltinError::Boot(e))) => e,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn kernel_err(image: &[u8]) -> KernelError {
    match start_err(image, 64) {
        BootError::Kernel { source, .. } => source,
        e => panic!("not a kernel error: {e}"),
    }
}

#[test]
fn bad_kernel_images_are_rejected_with_specific_errors() {
    if !kvm_usable_or_skip("bad_kernel_images_are_rejected_with_specific_errors") {
        return;
    }
    let good = bzimage(&program(Variant::Ready), Header::default());
    // Random bytes (a fixed xorshift sequence, so failures reproduce).
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    assert_eq!(kernel_err(&random), KernelError::NoBootSignature);
    assert_eq!(kernel_err(&random[..100]), KernelError::TooShort { len: 100 });
    // Truncated: the header announces more payload than the file has.
    let cut = &good[..good.len() - 64];
    assert!(matches!(kernel_err(cut), KernelError::Truncated { .. }), "{:?}", kernel_err(cut));
    assert!(matches!(kernel_err(&good[..1024 + 0x100]), KernelError::Truncated { .. }));
    let old = bzimage(&program(Variant::Ready), Header { protocol: 0x020b, ..Header::default() });
    assert_eq!(kernel_err(&old), KernelError::ProtocolTooOld { major: 2, minor: 11 });
    let no64 = bzimage(&program(Variant::Ready), Header { xloadflags: 0, ..Header::default() });
    assert_eq!(kernel_err(&no64), KernelError::No64BitEntry);
    let e = kernel_err(&old).to_string();
    assert!(e.contains("2.11 is too old") && e.contains("2.12"), "{e}");
}

#[test]
fn memory_too_small_for_kernel_and_initrd() {
    if !kvm_usable_or_skip("memory_too_small_for_kernel_and_initrd") {
        return;
    }
    // A kernel that needs 200 MiB to decompress into 64 MiB of RAM.
    let big = bzimage(
        &program(Variant::Ready),
        Header { init_size: Some(200 << 20), ..Header::default() },
    );
    match start_err(&big, 64) {
        BootError::MemoryTooSmall { mib: 64, need_mib } => assert!(need_mib > 200, "{need_mib}"),
        e => panic!("{e}"),
    }
    let g = Guest::payload(Variant::Ready);
    let mut cfg = config(&g, 9, 64);
    let sink: EventSink = Arc::new(|_| {});
    assert!(matches!(
        builtin().start(&cfg, Accel::Kvm, sink.clone()),
        Err(BackendError::Builtin(BuiltinError::Boot(BootError::Vcpus(9))))
    ));
    cfg.vcpus = 1;
    cfg.memory = MemorySize(1);
    assert!(matches!(
        builtin().start(&cfg, Accel::Kvm, sink),
        Err(BackendError::Builtin(BuiltinError::Boot(BootError::MemoryTooSmall { mib: 1, .. })))
    ));
}

impl Run {
    fn expect_reset(&self, reason: &str) {
        match self.next_vmm() {
            VmmEvent::Reset { reason: r } => assert_eq!(r, reason),
            other => panic!("expected Reset({reason}), got {other:?}"),
        }
    }
}

/// Boots the `Ready` payload on `vcpus`; after its first `Ready`, `reset`
/// resets it (a `reason` reset: every vCPU stopped, the VM rebuilt from the
/// same kernel/initrd), a second `Ready` arrives on the same streams, and
/// `PowerOff` ends it. The console is `first_boot` then one whole boot, and
/// COM2 carried the two `Ready` frames.
fn reset_then_poweroff(vcpus: u32, reason: &str, reset: impl FnOnce(&mut Run), first_boot: &str) {
    let mut run = start(Variant::Ready, vcpus);
    expect_ready(run.next_channel());
    reset(&mut run);
    run.expect_reset(reason);
    expect_ready(run.next_channel());
    run.writer.send(HostMessage::PowerOff).unwrap();
    let channel_bytes = run.channel_bytes.clone();
    let console = run.expect_end("guest-triple-fault");
    assert_eq!(console, first_boot.to_string() + &expected_console(Variant::Ready, CMDLINE, vcpus));
    assert_eq!(*channel_bytes.lock().unwrap(), [ready_frame(), ready_frame()].concat());
}

#[test]
fn payload_guest_reset_boots_it_again_then_poweroff_ends_it() {
    if !kvm_usable_or_skip("payload_guest_reset_boots_it_again_then_poweroff_ends_it") {
        return;
    }
    // Reboot frame → the payload writes 0xFE to port 0x64.
    let reboot = |run: &mut Run| run.writer.send(HostMessage::Reboot).unwrap();
    reset_then_poweroff(2, "guest-reset", reboot, &expected_rebooted(Variant::Ready, CMDLINE, 2));
}

#[test]
fn payload_host_reset_boots_it_again_then_poweroff_ends_it() {
    if !kvm_usable_or_skip("payload_host_reset_boots_it_again_then_poweroff_ends_it") {
        return;
    }
    let reset = |run: &mut Run| {
        // The boot waits for a host frame after printing this.
        run.wait_console("ready sent\n");
        run.power.reset().unwrap();
    };
    reset_then_poweroff(1, "host-reset", reset, &expected_until_ready(Variant::Ready, CMDLINE, 1));
}

#[test]
fn payload_spinning_on_four_vcpus_is_reset_twice_then_terminated() {
    if !kvm_usable_or_skip("payload_spinning_on_four_vcpus_is_reset_twice_then_terminated") {
        return;
    }
    // Three vCPUs sit in KVM_RUN waiting for INIT/SIPI, one spins: a reset
    // must stop them all each time.
    let mut run = start(Variant::Spin, 4);
    let once = expected_console(Variant::Spin, CMDLINE, 4);
    for boot in 1..=3 {
        let what = format!("boot {boot}");
        wait_console(&run.console, TIMEOUT, &what, |text| text == once.repeat(boot));
        if boot < 3 {
            run.power.reset().unwrap();
            run.expect_reset("host-reset");
        }
    }
    run.power.terminate().unwrap();
    assert_eq!(run.expect_end("host-terminate"), once.repeat(3));
}
