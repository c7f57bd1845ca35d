//! `tellus run` boots the real Debian cloud kernel with the tellus-agent
//! initramfs under real QEMU (TCG on these machines, KVM on hardware hosts).

mod common;
use common::Launch;

fn boot_and_shutdown(vcpus: u32) {
    let n = vcpus.to_string();
    let mut l = Launch::start(&["--vcpus", &n, "--memory", "256M"]);
    let ready = l.wait_for("guest agent ready after", 1);
    eprintln!("{ready}");

    let (ok, status) = l.ctl("status");
    assert!(ok, "{status}");
    assert_eq!(status["status"]["agent_ready"], true);
    assert_eq!(status["status"]["vcpus"], vcpus);
    assert_eq!(status["status"]["state"], "running");
    // QEMU runs from the sealed copy that was measured, not from its path.
    let qemu = status["status"]["vmm_pid"].as_u64().expect("vmm_pid");
    let exe = std::fs::read_link(format!("/proc/{qemu}/exe")).unwrap();
    assert!(exe.to_string_lossy().starts_with("/memfd:tellus-vmm"), "QEMU runs {}", exe.display());

    let (ok, resp) = l.ctl("shutdown");
    assert!(ok, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("guest agent"), "{resp}");
    let st = l.wait_exit();
    assert!(st.success(), "exit {st}:\n{}", l.stderr().join("\n"));

    let log = l.console_log();
    assert!(log.contains("Linux version 6."), "kernel banner missing from console log");
    assert!(log.contains("Run /init as init process"), "{log}");
    assert!(log.contains("tellus-agent"), "agent output missing");
    assert!(log.contains(&format!("Brought up 1 node, {vcpus} CPU")), "SMP line missing:\n{log}");
    assert!(log.contains("reboot: Power down"), "guest did not power itself off");
    // The console is also relayed to stdout.
    assert!(l.stdout().contains("Run /init as init process"));
    assert!(l.stderr().iter().any(|x| x.contains("VM powered off (guest-shutdown)")));
    // Run as root, the launcher dropped its capabilities, in every thread
    // (the QEMU backend's reader and waiter threads drop their own).
    if nix::unistd::geteuid().is_root() {
        let err = l.stderr();
        assert!(err.iter().any(|x| x.contains("dropped privileges")), "{}", err.join("\n"));
        assert!(!err.iter().any(|x| x.contains("keep capabilities")), "{}", err.join("\n"));
    }
}

#[test]
fn boots_one_vcpu_agent_ready_and_shutdown() {
    boot_and_shutdown(1);
}

#[test]
fn boots_two_vcpus_agent_ready_and_shutdown() {
    boot_and_shutdown(2);
}

#[test]
fn guest_garbage_and_oversized_frame_then_ready() {
    let mut l = Launch::start(&[
        "--cmdline",
        "console=ttyS0 reboot=t panic=-1 tsc_early_khz=2000000 tellus.test.channel_noise",
    ]);
    l.wait_for("guest agent ready after", 1);
    let errs = l.stderr();
    assert!(
        errs.iter().any(|x| x.contains("frame header announces 1048576 bytes")
            || x.contains("frame header announces")),
        "no drop report:\n{}",
        errs.join("\n")
    );
    assert!(l.console_log().contains("wrote test noise to the channel"));
    let (ok, _) = l.ctl("shutdown");
    assert!(ok);
    assert!(l.wait_exit().success());
    assert!(l.stderr().iter().any(|x| x.contains("agent channel: dropped")));
}

#[test]
fn reboot_through_the_control_socket() {
    let mut l = Launch::start(&[]);
    l.wait_for("guest agent ready after", 1);
    let (ok, resp) = l.ctl("reboot");
    assert!(ok, "{resp}");
    l.wait_for("guest agent ready again after", 1);
    let (_, status) = l.ctl("status");
    assert_eq!(status["status"]["boots"], 2, "{status}");
    assert!(l.ctl("shutdown").0);
    assert!(l.wait_exit().success());
}

#[test]
fn qemu_dying_mid_run_is_an_error() {
    let mut l = Launch::start(&[]);
    l.wait_for("guest agent ready after", 1);
    let (_, status) = l.ctl("status");
    let pid = status["status"]["vmm_pid"].as_i64().expect("vmm pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let st = l.wait_exit();
    assert_eq!(st.code(), Some(3), "{}", l.stderr().join("\n"));
    assert!(l.stderr().iter().any(|x| x.contains("the VMM died while the VM was running")));
}

#[test]
fn oneshot_guest_powers_itself_off() {
    let mut l = Launch::start(&[
        "--cmdline",
        "console=ttyS0 reboot=t panic=-1 tsc_early_khz=2000000 tellus.oneshot",
    ]);
    let st = l.wait_exit();
    assert!(st.success(), "{}", l.stderr().join("\n"));
    assert!(l.stderr().iter().any(|x| x.contains("guest agent ready after")));
    assert!(l.console_log().contains("tellus.oneshot: powering off"));
}

#[test]
fn sigterm_to_the_launcher_shuts_the_guest_down_in_order() {
    let mut l = Launch::start(&[]);
    l.wait_for("guest agent ready after", 1);
    let pid = nix::unistd::Pid::from_raw(l.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let st = l.wait_exit();
    assert!(st.success(), "{}", l.stderr().join("\n"));
    assert!(l.stderr().iter().any(|x| x.contains("asked the guest agent to power off")));
    assert!(l.console_log().contains("reboot: Power down"));
}

/// Shutdown before the agent is up: the power button is pressed, and when the
/// guest (which has no userspace handler for it) ignores it, the launcher
/// stops the VM after the grace period. Either way the run ends with exit 0.
#[test]
fn shutdown_before_the_agent_is_ready_falls_back_to_power_button_then_quit() {
    let mut l = Launch::start(&[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !l.socket().exists() {
        assert!(std::time::Instant::now() < deadline, "no control socket");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (ok, resp) = l.ctl("shutdown");
    assert!(ok, "{resp}");
    assert_eq!(resp["message"], "agent not ready: ACPI power button pressed", "{resp}");
    let st = l.wait_exit();
    assert!(st.success(), "{}", l.stderr().join("\n"));
    let errs = l.stderr().join("\n");
    assert!(
        errs.contains("ignored the power button") || errs.contains("VM shut down (guest-shutdown)"),
        "{errs}"
    );
}

/// A guest that never answers (its kernel panics and halts before any init
/// runs): shutdown presses the power button, waits the grace period, then
/// stops QEMU; the run still ends with exit 0 and says what happened.
#[test]
fn shutdown_of_a_hung_guest_escalates_to_quit() {
    let mut l = Launch::start(&[
        "--cmdline",
        "console=ttyS0 tsc_early_khz=2000000 panic=0 rdinit=/nonexistent root=/dev/nonexistent",
    ]);
    // Wait for the panic, then ask for a shutdown.
    let deadline = std::time::Instant::now() + common::BOOT_TIMEOUT;
    while !l.stdout().contains("Kernel panic") {
        assert!(std::time::Instant::now() < deadline, "no panic:\n{}", l.stdout());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (ok, resp) = l.ctl("shutdown");
    assert!(ok, "{resp}");
    assert_eq!(resp["message"], "agent not ready: ACPI power button pressed");
    let st = l.wait_exit();
    assert!(st.success(), "{}", l.stderr().join("\n"));
    let errs = l.stderr().join("\n");
    assert!(errs.contains("ignored the power button"), "{errs}");
    assert!(errs.contains("VM stopped (host-qmp-quit)"), "{errs}");
}
