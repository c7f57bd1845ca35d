//! A reboot of a built-in VM replaces the VM and keeps nothing of it: the
//! VMM process's file descriptors after each reboot are the same kinds and
//! numbers as before (the old VM, vCPU and interrupt fds are closed), and
//! `/dev/kvm` stays the one fd opened at start (a reboot opens nothing).
//! The launcher's process holds no KVM descriptor at any time.
//! One test in its own binary, so no other test's fds interfere.

mod builtin_support;

use builtin_support::*;
use std::collections::BTreeMap;
use std::time::Duration;
use tellus_launcher::backend::VmmEvent;
use tellus_launcher::vm_config::{MemorySize, VmConfig};

const TIMEOUT: Duration = Duration::from_secs(30);
const CMDLINE: &str = "console=ttyS0 tellus.test=reboot";

/// The open fds of process `pid` (`self`: this one), counted by what they point at (`/dev/kvm`,
/// `anon_inode:kvm-vm`, `anon_inode:kvm-vcpu:0`, `anon_inode:[eventfd]`, …;
/// sockets, pipes and files by kind only).
fn fds(pid: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        let t = target.to_string_lossy().into_owned();
        let key = if t.starts_with("socket:") || t.starts_with("pipe:") {
            t.split(':').next().unwrap().to_string()
        } else if t.starts_with('/') && t != "/dev/kvm" {
            "file".into()
        } else {
            t
        };
        *m.entry(key).or_default() += 1;
    }
    m
}

#[test]
fn reboots_close_the_old_vm_and_reuse_the_open_dev_kvm() {
    if !kvm_usable_or_skip("reboots_close_the_old_vm_and_reuse_the_open_dev_kvm") {
        return;
    }
    let g = Guest::payload(Variant::Spin);
    let cfg = VmConfig::stage(&g.kernel, &g.initrd, None, CMDLINE, MemorySize(64), 2).unwrap();
    let vm = start_builtin(&cfg);
    let (vmm, console) = (vm.vmm, vm.console);
    let mut power = vm.power;
    power.start_vcpus().unwrap();
    let once = expected_console(Variant::Spin, CMDLINE, 2);
    let wait_boots = |n: usize| {
        wait_console(&console, TIMEOUT, &format!("boot {n}"), |text| text == once.repeat(n))
    };
    wait_boots(1);
    let pid = power.vmm_pid().expect("the built-in VMM runs as a process").to_string();
    let no_kvm_here = || {
        let mine = fds("self");
        assert!(!mine.keys().any(|k| k == "/dev/kvm" || k.contains("kvm-")), "{mine:?}");
    };
    no_kvm_here();
    let before = fds(&pid);
    assert_eq!(before.get("/dev/kvm"), Some(&1), "{before:?}");
    assert_eq!(before.get("anon_inode:kvm-vm"), Some(&1), "{before:?}");
    assert_eq!(before.get("anon_inode:kvm-vcpu:1"), Some(&1), "{before:?}");
    for boot in 2..=4 {
        power.reset().unwrap();
        match vmm.recv_timeout(TIMEOUT).unwrap() {
            VmmEvent::Reset { reason } => assert_eq!(reason, "host-reset"),
            other => panic!("{other:?}"),
        }
        wait_boots(boot);
        assert_eq!(fds(&pid), before, "after reboot {}", boot - 1);
        no_kvm_here();
    }
    power.terminate().unwrap();
    assert!(
        matches!(vmm.recv_timeout(TIMEOUT).unwrap(), VmmEvent::Shutdown { reason } if reason == "host-terminate")
    );
    assert!(
        matches!(vmm.recv_timeout(TIMEOUT).unwrap(), VmmEvent::Exited { status, .. } if status.success())
    );
    vm.console_done.join().unwrap();
    drop(power);
    // The VMM has exited and been reaped: its VM went with it.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "tellus-vmm {pid} still there"
    );
    no_kvm_here();
}
