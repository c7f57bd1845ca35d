//! Boot time of the built-in VMM against `qemu-system-x86_64 -M microvm
//! -enable-kvm` (the QEMU backend with `--accel kvm`): the same Debian cloud
//! kernel and tellus-agent initramfs, the same command line, memory and vCPU
//! count, both driven through the launcher's `Backend` interface. A run is
//! timed from `Backend::start` to the agent's `Ready` frame on the channel
//! (VMM set-up, firmware where there is one, kernel boot, agent start); the
//! VM is then stopped and the next run starts. Runs alternate between the
//! two VMMs (built-in first on even runs, QEMU first on odd ones) so drift
//! affects both alike; the report gives each side's median and the ratio
//! built-in / QEMU (goal: at most 0.6).
//!
//! `cargo bench -p tellus-launcher --bench builtin_boot -- [--runs N]
//! [--vcpus N] [--memory MiB]`
//!
//! Only meaningful on hardware KVM: on PVM's /dev/kvm a stock kernel does
//! not boot at all, and QEMU without KVM would be emulating (TCG). Where
//! `/dev/kvm` is not hardware-backed the command refuses (exit status 2) and
//! measures nothing.

#[path = "../tests/builtin_support/mod.rs"]
mod builtin_support;
mod support;

use builtin_support::{channel_events, event_channel};
use std::io::Read;
use std::time::{Duration, Instant};
use support::arg;
use tellus_launcher::accel::{self, Accel, KvmKind};
use tellus_launcher::backend::builtin::Builtin;
use tellus_launcher::backend::qemu::Qemu;
use tellus_launcher::backend::{Backend, VmmEvent};
use tellus_launcher::channel::ChannelEvent;
use tellus_launcher::vm_config::{MemorySize, VmConfig};
use tellus_protocol::GuestMessage;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Same for both VMMs: the built-in VMM's default (QEMU's microvm has no
/// PCI and no i8042 either; the VM is stopped from the host after `Ready`).
const CMDLINE: &str = tellus_launcher::backend::builtin::DEFAULT_CMDLINE;

use swtpm_tests::test_guest as guest;

/// One boot to `Ready`; returns the time it took.
fn boot(backend: &dyn Backend, cfg: &VmConfig) -> Duration {
    let (sink, vmm) = event_channel();
    let t0 = Instant::now();
    let started = backend.start(cfg, Accel::Kvm, sink).expect("VMM start");
    // Drain the console so the guest never waits on it.
    let mut con = started.streams.console;
    let console = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while matches!(con.read(&mut buf), Ok(n) if n > 0) {}
    });
    let chan = channel_events(started.streams.channel_rx);
    let mut power = started.power;
    power.start_vcpus().expect("start vCPUs");
    let took = loop {
        match chan.recv_timeout(READY_TIMEOUT) {
            Ok(ChannelEvent::Message(GuestMessage::Ready { .. })) => break t0.elapsed(),
            Ok(_) => {}
            Err(e) => panic!("{}: no Ready within {READY_TIMEOUT:?}: {e}", backend.name()),
        }
    };
    power.terminate().expect("stop the VM");
    loop {
        match vmm.recv_timeout(READY_TIMEOUT) {
            Ok(VmmEvent::Exited { .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("{}: did not exit: {e}", backend.name()),
        }
    }
    let _ = console.join();
    took
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn main() {
    match accel::detect() {
        KvmKind::Hardware(_) => {}
        other => {
            eprintln!(
                "builtin_boot: refusing to run: {other}. This benchmark compares the built-in VMM \
                 with `qemu -M microvm -enable-kvm` booting a stock Debian kernel, which needs \
                 hardware KVM (kvm_intel or kvm_amd); on this host neither side could boot it \
                 under KVM, so there is nothing meaningful to time."
            );
            std::process::exit(2);
        }
    }
    let runs = arg("--runs", 10) as usize;
    let vcpus = arg("--vcpus", 1) as u32;
    let memory = MemorySize(arg("--memory", 256));
    let (kernel, initrd) = guest();
    let qemu = Qemu::locate(None).expect("qemu-system-x86_64");
    let firmware = qemu.default_firmware().expect("microvm firmware");
    let builtin = Builtin::locate(Some(std::path::Path::new(env!("CARGO_BIN_EXE_tellus-vmm"))))
        .expect("stage tellus-vmm");
    let builtin_cfg =
        VmConfig::stage(&kernel, &initrd, None, CMDLINE, memory, vcpus).expect("guest files");
    let qemu_cfg = VmConfig::stage(&kernel, &initrd, Some(&firmware), CMDLINE, memory, vcpus)
        .expect("guest files");
    println!(
        "builtin_boot: {} + {}, {vcpus} vCPU, {memory}, {runs} runs each, alternating",
        kernel.display(),
        initrd.display()
    );
    // One untimed boot each: page cache and KVM module state warm for both.
    boot(&builtin, &builtin_cfg);
    boot(&qemu, &qemu_cfg);
    let (mut b, mut q) = (Vec::new(), Vec::new());
    for i in 0..runs {
        if i % 2 == 0 {
            b.push(boot(&builtin, &builtin_cfg));
            q.push(boot(&qemu, &qemu_cfg));
        } else {
            q.push(boot(&qemu, &qemu_cfg));
            b.push(boot(&builtin, &builtin_cfg));
        }
        println!(
            "run {i}: builtin {:.1} ms, qemu {:.1} ms",
            b[i].as_secs_f64() * 1e3,
            q[i].as_secs_f64() * 1e3
        );
    }
    let (mb, mq) = (median(&mut b), median(&mut q));
    let ratio = mb.as_secs_f64() / mq.as_secs_f64();
    println!(
        "median start-to-Ready: builtin {:.1} ms, qemu -M microvm -enable-kvm {:.1} ms, ratio {ratio:.2} (goal <= 0.60: {})",
        mb.as_secs_f64() * 1e3,
        mq.as_secs_f64() * 1e3,
        if ratio <= 0.6 { "met" } else { "NOT met" }
    );
}
