//! Dropping what the launcher no longer needs once its VM runs.
//!
//! After the VMM is up (its process started with the VM built, the measured
//! launch done, the console log open), `tellus run` keeps working with what
//! it holds: open file descriptors, its own child, files it owns. So it
//! drops the rest. `tellus-vmm`, the built-in VMM's process, drops the same
//! on its main thread right after opening `/dev/kvm`
//! ([`crate::backend::builtin::process`]). What is dropped:
//!
//! - `no_new_privs`: no `execve` can grant privileges again (set-uid bits
//!   and file capabilities are ignored);
//! - the ambient, bounding, inheritable, permitted and effective capability
//!   sets are cleared. With an empty bounding set even an `execve` as root
//!   gains no capability.
//!
//! The user id stays (root stays root): files the launcher owns — the host
//! launch log and its state directory, the control socket — stay writable by
//! their owner bits without `CAP_DAC_OVERRIDE`, the TPM is reached again
//! through its device (owned by root) or socket, `tellus-vmm` builds a
//! rebooted VM on its open `/dev/kvm` fd, and stopping a VMM signals our
//! own child, which needs no capability. [`drop_privileges`] checks the paths it
//! is given before it drops anything, so the stop record can still be written.
//!
//! Linux keeps capabilities and `no_new_privs` per thread: a drop changes the
//! calling thread and the threads it creates later. The launcher drops on its
//! main thread before it starts its other long-lived threads (control socket,
//! signal relay, console, agent channel, attestation); the backends' own
//! threads (QMP, stderr relays, event readers and process waiters, started
//! with the VMM) drop theirs as they start ([`drop_thread`]); the launcher
//! names any thread that still holds one after its drop
//! ([`threads_with_capabilities`]).

use caps::CapSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Errors of dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
    #[error("cannot clear the {set} capability set: {detail}")]
    Caps { set: &'static str, detail: String },
    #[error("cannot read this thread's status to check the drop: {0}")]
    Status(std::io::Error),
    #[error("capabilities left after the drop ({0}); refusing to go on as if they were gone")]
    Left(String),
    #[error("{path} would not be writable without CAP_DAC_OVERRIDE (owner uid {uid}, mode {mode:o}); make the launcher's user own it")]
    NeedsCaps { path: PathBuf, uid: u32, mode: u32 },
}

/// This thread's privilege state, as the kernel reports it in
/// `/proc/thread-self/status` (capability sets as bit masks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadPrivileges {
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
}

impl ThreadPrivileges {
    /// Parses the capability and `NoNewPrivs` lines of a `status` file.
    pub fn parse(status: &str) -> Option<ThreadPrivileges> {
        let hex = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| {
                let v = v.trim();
                u64::from_str_radix(v, 16).ok()
            })
        };
        Some(ThreadPrivileges {
            cap_inh: hex("CapInh:")?,
            cap_prm: hex("CapPrm:")?,
            cap_eff: hex("CapEff:")?,
            cap_bnd: hex("CapBnd:")?,
            cap_amb: hex("CapAmb:")?,
            no_new_privs: status
                .lines()
                .find_map(|l| l.strip_prefix("NoNewPrivs:"))
                .map(|v| v.trim() == "1")?,
        })
    }

    /// The calling thread's state.
    pub fn current() -> Result<ThreadPrivileges, PrivilegeError> {
        let s =
            std::fs::read_to_string("/proc/thread-self/status").map_err(PrivilegeError::Status)?;
        ThreadPrivileges::parse(&s).ok_or_else(|| {
            PrivilegeError::Status(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no capability lines in /proc/thread-self/status",
            ))
        })
    }
}

fn caps_err(set: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |e| PrivilegeError::Caps { set, detail: e.to_string() }
}

/// Drops the calling thread's privileges (see the module doc) and checks
/// the result. Dropping the bounding set needs `CAP_SETPCAP`; a thread
/// without it (an unprivileged launcher) keeps its bounding set, which
/// `no_new_privs` makes useless to it. Returns the state before the drop.
pub fn drop_thread() -> Result<ThreadPrivileges, PrivilegeError> {
    let before = ThreadPrivileges::current()?;
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;
    caps::clear(None, CapSet::Ambient).map_err(caps_err("ambient"))?;
    let can_drop_bounding = caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP)
        .map_err(caps_err("effective"))?;
    if can_drop_bounding {
        caps::clear(None, CapSet::Bounding).map_err(caps_err("bounding"))?;
    }
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("inheritable"))?;
    // Clearing the permitted set clears the effective set with it.
    caps::clear(None, CapSet::Permitted).map_err(caps_err("permitted"))?;
    let after = ThreadPrivileges::current()?;
    let mut left = Vec::new();
    for (name, v) in [
        ("CapInh", after.cap_inh),
        ("CapPrm", after.cap_prm),
        ("CapEff", after.cap_eff),
        ("CapAmb", after.cap_amb),
    ] {
        if v != 0 {
            left.push(format!("{name} {v:016x}"));
        }
    }
    // Capabilities newer than the caps crate knows stay in the bounding set.
    if can_drop_bounding && after.cap_bnd != 0 {
        left.push(format!("CapBnd {:016x}", after.cap_bnd));
    }
    if !after.no_new_privs {
        left.push("NoNewPrivs 0".into());
    }
    if !left.is_empty() {
        return Err(PrivilegeError::Left(left.join(", ")));
    }
    Ok(before)
}

/// Whether `path` is usable for `write` (and, for a directory, searching)
/// by its mode bits alone for this process's effective uid and groups — as
/// the kernel decides without `CAP_DAC_OVERRIDE` (ACLs are not consulted, so
/// this may refuse what an ACL would allow, never the other way round).
fn usable_without_caps(path: &Path) -> Result<(), PrivilegeError> {
    let Ok(md) = std::fs::metadata(path) else {
        // Not there (yet): whoever creates it later creates it as our uid.
        return Ok(());
    };
    let need = if md.is_dir() { 0o3 } else { 0o6 }; // wx for dirs, rw for files
    let mode = md.mode() & 0o777;
    let euid = nix::unistd::geteuid().as_raw();
    let in_group = md.gid() == nix::unistd::getegid().as_raw()
        || nix::unistd::getgroups()
            .map(|g| g.iter().any(|g| g.as_raw() == md.gid()))
            .unwrap_or(false);
    let bits = if md.uid() == euid {
        mode >> 6
    } else if in_group {
        mode >> 3
    } else {
        mode
    } & 0o7;
    if bits & need == need {
        Ok(())
    } else {
        Err(PrivilegeError::NeedsCaps { path: path.to_path_buf(), uid: md.uid(), mode })
    }
}

/// Drops the calling thread's privileges after checking that each of
/// `must_stay_writable` (files and directories the launcher writes later,
/// e.g. the host launch log) is writable without capabilities; on a failed
/// check nothing is dropped. Returns the state before the drop.
pub fn drop_privileges(must_stay_writable: &[&Path]) -> Result<ThreadPrivileges, PrivilegeError> {
    for p in must_stay_writable {
        usable_without_caps(p)?;
    }
    drop_thread()
}

/// Names of this process's threads that still hold capabilities (effective
/// or permitted), e.g. threads a backend started before the drop. Threads
/// whose status cannot be read (ended meanwhile) are skipped.
pub fn threads_with_capabilities() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else { continue };
        let Some(p) = ThreadPrivileges::parse(&status) else { continue };
        if p.cap_eff != 0 || p.cap_prm != 0 {
            let name = status.lines().find_map(|l| l.strip_prefix("Name:")).unwrap_or("?");
            out.push(format!("{} ({})", name.trim(), t.file_name().to_string_lossy()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let s = "Name:\ttellus\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                 CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n\
                 NoNewPrivs:\t0\nSeccomp:\t0\n";
        let p = ThreadPrivileges::parse(s).unwrap();
        assert_eq!(p.cap_eff, 0x1ff_ffff_ffff);
        assert_eq!(p.cap_inh, 0);
        assert!(!p.no_new_privs);
        assert_eq!(ThreadPrivileges::parse("Name:\tx\n"), None);
    }

    #[test]
    fn a_dropped_thread_has_nothing_left_and_others_keep_theirs() {
        let mine = ThreadPrivileges::current().unwrap();
        let t = std::thread::spawn(|| {
            drop_thread().unwrap();
            let after = ThreadPrivileges::current().unwrap();
            // A thread created after the drop inherits it.
            let child = std::thread::spawn(|| ThreadPrivileges::current().unwrap());
            (after, child.join().unwrap())
        });
        let (after, child) = t.join().unwrap();
        for p in [after, child] {
            assert_eq!((p.cap_inh, p.cap_prm, p.cap_eff, p.cap_amb), (0, 0, 0, 0));
            assert!(p.no_new_privs);
            if mine.cap_eff & (1 << 8) != 0 {
                assert_eq!(p.cap_bnd, 0, "CAP_SETPCAP was held: bounding set cleared");
            }
        }
        // Per-thread: the test thread itself is untouched.
        assert_eq!(ThreadPrivileges::current().unwrap(), mine);
    }

    #[test]
    fn writable_check_follows_the_mode_bits() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log");
        std::fs::write(&f, b"x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        usable_without_caps(&f).unwrap();
        usable_without_caps(dir.path()).unwrap();
        usable_without_caps(&dir.path().join("missing")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(matches!(
            usable_without_caps(&f),
            Err(PrivilegeError::NeedsCaps { mode: 0o400, .. })
        ));
    }
}
