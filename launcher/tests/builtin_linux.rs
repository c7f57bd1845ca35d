//! The built-in VMM boots the real Debian cloud kernel with the tellus-agent
//! initramfs (scripts/setup.sh) to `Ready` on 1 and 2 vCPUs, reboots it
//! through the agent (i8042 reset: a fresh VM boots to `Ready` again), then
//! stops it. Needs hardware KVM: on PVM's /dev/kvm a stock kernel
//! dies in KVM's instruction emulator, so there it reports SKIP.

mod builtin_support;

use builtin_support::{channel_events, console_text, hardware_kvm_or_skip, start_builtin};
use std::time::{Duration, Instant};
use tellus_launcher::backend::VmmEvent;
use tellus_launcher::channel::{ChannelEvent, ChannelWriter};
use tellus_launcher::vm_config::{MemorySize, VmConfig};
use tellus_protocol::{GuestMessage, HostMessage};

const TIMEOUT: Duration = Duration::from_secs(60);

use swtpm_tests::test_guest as guest;

fn boot_to_ready_reboot_and_stop(vcpus: u32) {
    let (kernel, initrd) = guest();
    // reboot=k (in the default): the kernel resets through the i8042, which
    // boots a built-in VM again.
    let cfg = VmConfig::stage(
        &kernel,
        &initrd,
        None,
        tellus_launcher::backend::builtin::DEFAULT_CMDLINE,
        MemorySize(256),
        vcpus,
    )
    .unwrap();
    let vm = start_builtin(&cfg);
    let chan = channel_events(vm.channel_rx);
    let mut writer = ChannelWriter(vm.channel_tx);
    let (vmm, console) = (vm.vmm, vm.console);
    let mut power = vm.power;
    let t0 = Instant::now();
    power.start_vcpus().unwrap();
    let text = || console_text(&console);
    let wait_ready = || loop {
        match chan.recv_timeout(TIMEOUT) {
            Ok(ChannelEvent::Message(GuestMessage::Ready { .. })) => break,
            Ok(_) => {}
            Err(e) => panic!("no Ready ({e}); console:\n{}", text()),
        }
    };
    wait_ready();
    eprintln!("builtin: {vcpus} vCPU Linux guest agent ready after {:?}", t0.elapsed());
    writer.send(HostMessage::Reboot).unwrap();
    match vmm.recv_timeout(TIMEOUT) {
        Ok(VmmEvent::Reset { reason }) => assert_eq!(reason, "guest-reset"),
        other => panic!("expected Reset(guest-reset), got {other:?}; console:\n{}", text()),
    }
    let t1 = Instant::now();
    wait_ready();
    eprintln!("builtin: {vcpus} vCPU Linux guest agent ready again after {:?}", t1.elapsed());
    // Linux cannot power off without ACPI (its power-off ends in a panic
    // and a reset): the host stops it.
    power.terminate().unwrap();
    match vmm.recv_timeout(TIMEOUT) {
        Ok(VmmEvent::Shutdown { reason }) => assert_eq!(reason, "host-terminate"),
        other => panic!("expected Shutdown(host-terminate), got {other:?}"),
    }
    assert!(
        matches!(vmm.recv_timeout(TIMEOUT), Ok(VmmEvent::Exited { status, .. }) if status.success())
    );
    vm.console_done.join().unwrap();
    let log = text();
    assert!(log.contains("Linux version 6."), "{log}");
    assert!(log.contains("Run /init as init process"), "{log}");
    assert!(log.contains(&format!("Brought up 1 node, {vcpus} CPU")), "{log}");
    assert!(log.contains("tellus-agent"), "{log}");
    assert!(log.contains("reboot: Restarting system"), "{log}");
    assert_eq!(log.matches("Linux version 6.").count(), 2, "{log}");
}

#[test]
fn linux_boots_to_ready_on_one_vcpu() {
    if hardware_kvm_or_skip("linux_boots_to_ready_on_one_vcpu") {
        boot_to_ready_reboot_and_stop(1);
    }
}

#[test]
fn linux_boots_to_ready_on_two_vcpus() {
    if hardware_kvm_or_skip("linux_boots_to_ready_on_two_vcpus") {
        boot_to_ready_reboot_and_stop(2);
    }
}
