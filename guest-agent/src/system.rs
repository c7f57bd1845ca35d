//! PID-1 duties and power actions.

use crate::AgentError;
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::time::{clock_gettime, ClockId};
use std::process::Command;

/// Mounts /proc, /sys, /dev and a tmpfs at /run. Already-mounted targets
/// (`EBUSY`) are fine: the kernel may have mounted devtmpfs itself.
pub fn mount_basics() -> Result<(), AgentError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &'static str, MsFlags, Option<&str>); 4] = [
        ("proc", "/proc", nosuid, None),
        ("sysfs", "/sys", nosuid, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        ("tmpfs", "/run", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755")),
    ];
    for (fstype, target, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(fstype), target, Some(fstype), flags, data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => return Err(AgentError::Mount { target, source }),
        }
    }
    Ok(())
}

/// Milliseconds since boot (CLOCK_BOOTTIME).
pub fn uptime_ms() -> Result<u64, AgentError> {
    let t = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(AgentError::Clock)?;
    Ok(u64::try_from(t.tv_sec()).unwrap_or(0) * 1000
        + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000)
}

/// A power action the host asked for (or the agent's own, on error or
/// `tellus.oneshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Off,
    Reboot,
}

/// Carries out a power action and does not return.
///
/// As PID 1 the agent is the init system: it syncs and calls reboot(2). As a
/// service it asks the guest's own init through the fixed programs
/// `/sbin/poweroff` and `/sbin/reboot` (nothing received names a program).
pub fn finish(pid1: bool, action: Power) -> ! {
    let (mode, program) = match action {
        Power::Off => (RebootMode::RB_POWER_OFF, "/sbin/poweroff"),
        Power::Reboot => (RebootMode::RB_AUTOBOOT, "/sbin/reboot"),
    };
    nix::unistd::sync();
    if pid1 {
        let err = reboot(mode);
        println!("tellus-agent: reboot(2) failed: {err:?}");
        // PID 1 must never exit; wait for the host to pull the plug.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    match Command::new(program).status() {
        Ok(s) if s.success() => std::process::exit(0),
        Ok(s) => {
            println!("tellus-agent: {program} exited with {s}");
            std::process::exit(1)
        }
        Err(e) => {
            println!("tellus-agent: cannot run {program}: {e}");
            std::process::exit(1)
        }
    }
}
