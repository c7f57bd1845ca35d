//! The built-in VMM's seccomp allow-lists, as installed on its threads
//! (`seccomp::program` + `seccomp::install`, the two halves of what every vCPU
//! and device thread runs first), kill the process on a syscall outside them
//! and let the listed ones through.
//!
//! Each case runs in a forked child that is single-threaded like a VMM thread
//! under its filter: it installs the real program, writes a marker (an
//! allowed `write`), makes one syscall and ends with `exit` (allowed: a
//! thread's own exit). The parent reads the marker and the child's fate.

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult};
use std::io::Read;
use std::os::fd::AsRawFd;
use tellus_launcher::backend::builtin::seccomp::{self, ThreadKind, KVM_RUN};

/// What the child does after installing the filter.
#[derive(Clone, Copy)]
enum Call {
    /// Nothing more: the control case.
    None,
    /// `openat(AT_FDCWD, "/etc/hostname", O_RDONLY)`
    Open,
    /// `ioctl(0, TCGETS)`: an ioctl that is not KVM_RUN.
    IoctlNotKvmRun,
    /// `ioctl(-1, KVM_RUN)`: allowed (fails with EBADF, but is not killed).
    IoctlKvmRun,
    /// `socket(AF_INET, SOCK_STREAM, 0)`
    Socket,
    /// `execve("/bin/true", ...)`
    Exec,
}

/// Runs `call` under `kind`'s filter in a child; returns its wait status and
/// what it wrote.
fn run_child(kind: ThreadKind, call: Call) -> (WaitStatus, String) {
    // Built before fork: the child must not allocate.
    let program = seccomp::program(kind).unwrap();
    let (r, w) = pipe().unwrap();
    // SAFETY: the child only makes raw syscalls (prctl/seccomp via
    // `install`, which does not allocate; write; the call under test; exit)
    // and never returns into the test harness, so the fork of a
    // multi-threaded process cannot deadlock or double-run anything.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let fd = w.as_raw_fd();
            let code = match seccomp::install(&program) {
                Ok(()) => 0,
                Err(_) => 99,
            };
            let marker = b"filter installed\n";
            // SAFETY: raw syscalls with valid pointers and lengths; the child
            // ends with SYS_exit and never returns.
            unsafe {
                libc::write(fd, marker.as_ptr().cast(), marker.len());
                let path = c"/etc/hostname";
                let mut termios = std::mem::zeroed::<libc::termios>();
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                match call {
                    Call::None => 0,
                    Call::Open => libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        libc::O_RDONLY,
                    ),
                    Call::IoctlNotKvmRun => {
                        libc::syscall(libc::SYS_ioctl, 0, libc::TCGETS, &mut termios)
                    }
                    Call::IoctlKvmRun => libc::syscall(libc::SYS_ioctl, -1, KVM_RUN, 0),
                    Call::Socket => {
                        libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0)
                    }
                    Call::Exec => libc::syscall(
                        libc::SYS_execve,
                        argv[0],
                        argv.as_ptr(),
                        std::ptr::null::<*const libc::c_char>(),
                    ),
                };
                let survived = b"survived\n";
                libc::write(fd, survived.as_ptr().cast(), survived.len());
                libc::syscall(libc::SYS_exit, code);
            }
            unreachable!("SYS_exit returned");
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut out = String::new();
            std::fs::File::from(r).read_to_string(&mut out).unwrap();
            (waitpid(child, None).unwrap(), out)
        }
    }
}

fn killed_by_sigsys(kind: ThreadKind, call: Call) {
    let (status, out) = run_child(kind, call);
    assert!(
        matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
        "expected SIGSYS, got {status:?}"
    );
    assert_eq!(out, "filter installed\n");
}

#[test]
fn allowed_syscalls_pass_under_the_vcpu_filter() {
    let (status, out) = run_child(ThreadKind::Vcpu, Call::None);
    assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    assert_eq!(out, "filter installed\nsurvived\n");
    // KVM_RUN itself is allowed (on a bad fd it fails with EBADF, not SIGSYS).
    let (status, out) = run_child(ThreadKind::Vcpu, Call::IoctlKvmRun);
    assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    assert_eq!(out, "filter installed\nsurvived\n");
}

#[test]
fn forbidden_syscalls_kill_a_vcpu_thread() {
    killed_by_sigsys(ThreadKind::Vcpu, Call::Open);
    killed_by_sigsys(ThreadKind::Vcpu, Call::IoctlNotKvmRun);
    killed_by_sigsys(ThreadKind::Vcpu, Call::Socket);
    killed_by_sigsys(ThreadKind::Vcpu, Call::Exec);
}

#[test]
fn forbidden_syscalls_kill_a_device_thread() {
    let (status, out) = run_child(ThreadKind::Device, Call::None);
    assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    assert_eq!(out, "filter installed\nsurvived\n");
    killed_by_sigsys(ThreadKind::Device, Call::Open);
    killed_by_sigsys(ThreadKind::Device, Call::IoctlKvmRun);
    killed_by_sigsys(ThreadKind::Device, Call::Socket);
    killed_by_sigsys(ThreadKind::Device, Call::Exec);
}
