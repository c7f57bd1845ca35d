//! The built-in VMM's seccomp allow-lists, as installed on its threads
//! (`seccomp::program` + `seccomp::install`, the two halves of what every vCPU
//! and device thread runs first), kill the process on a syscall outside them
//! and let the listed ones through; the process-wide allow-list of
//! `tellus-vmm` (`seccomp::process_program`) kills it on what no VMM thread
//! may do.
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
    /// `fork()`
    Fork,
    /// `clone(SIGCHLD)`: a new process, not a thread.
    CloneProcess,
    /// `clone3(NULL, 0)`: must fail with ENOSYS (glibc then uses clone).
    Clone3,
    /// `ptrace(PTRACE_ATTACH, 1)`
    Ptrace,
    /// `kill(1, 0)`
    Kill,
    /// `tgkill(1, 1, 0)`: another process.
    TgkillOther,
    /// `prctl(PR_SET_DUMPABLE, 1)`
    SetDumpable,
    /// `prctl(PR_GET_DUMPABLE)`
    GetDumpable,
    /// `prctl((1 << 32) | PR_SET_DUMPABLE, 1)`: the kernel reads an int.
    SetDumpableHighBits,
    /// `prctl(PR_SET_NAME, "x")`: allowed.
    SetName,
    /// `fchmodat(AT_FDCWD, "/etc/hostname", 0644)`
    Chmod,
    /// `getpid` through its x32 number.
    X32,
}

/// Which filter the child installs.
#[derive(Clone, Copy)]
enum Filter {
    Thread(ThreadKind),
    /// tellus-vmm's process-wide filter, built for this (the parent) pid.
    Process,
}

/// Runs `call` under `kind`'s filter in a child; returns its wait status and
/// what it wrote.
fn run_child(kind: impl Into<Filter>, call: Call) -> (WaitStatus, String) {
    // Built before fork: the child must not allocate.
    let programs = match kind.into() {
        Filter::Thread(k) => vec![seccomp::program(k).unwrap()],
        Filter::Process => seccomp::process_program(std::process::id()).unwrap().to_vec(),
    };
    let (r, w) = pipe().unwrap();
    // SAFETY: the child only makes raw syscalls (prctl/seccomp via
    // `install`, which does not allocate; write; the call under test; exit)
    // and never returns into the test harness, so the fork of a
    // multi-threaded process cannot deadlock or double-run anything.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let fd = w.as_raw_fd();
            let mut code = 0;
            for p in &programs {
                if seccomp::install(p).is_err() {
                    code = 99;
                }
            }
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
                    Call::Fork => libc::syscall(libc::SYS_fork),
                    Call::CloneProcess => libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0),
                    Call::Clone3 => {
                        let r = libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0);
                        if r != -1 || *libc::__errno_location() != libc::ENOSYS {
                            code = 98;
                        }
                        r
                    }
                    Call::Ptrace => libc::syscall(libc::SYS_ptrace, libc::PTRACE_ATTACH, 1, 0, 0),
                    Call::Kill => libc::syscall(libc::SYS_kill, 1, 0),
                    Call::TgkillOther => libc::syscall(libc::SYS_tgkill, 1, 1, 0),
                    Call::SetDumpable => libc::syscall(libc::SYS_prctl, libc::PR_SET_DUMPABLE, 1),
                    Call::GetDumpable => libc::syscall(libc::SYS_prctl, libc::PR_GET_DUMPABLE),
                    Call::SetDumpableHighBits => libc::syscall(
                        libc::SYS_prctl,
                        (1u64 << 32) | libc::PR_SET_DUMPABLE as u64,
                        1,
                    ),
                    Call::SetName => {
                        libc::syscall(libc::SYS_prctl, libc::PR_SET_NAME, c"x".as_ptr())
                    }
                    Call::Chmod => {
                        libc::syscall(libc::SYS_fchmodat, libc::AT_FDCWD, path.as_ptr(), 0o644)
                    }
                    Call::X32 => libc::syscall(0x4000_0000 | libc::SYS_getpid),
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

impl From<ThreadKind> for Filter {
    fn from(k: ThreadKind) -> Filter {
        Filter::Thread(k)
    }
}

fn killed_by_sigsys(kind: impl Into<Filter>, call: Call) {
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

#[test]
fn the_process_filter_allows_threads_and_kills_what_no_vmm_thread_may_do() {
    for call in [Call::None, Call::Clone3, Call::IoctlKvmRun, Call::SetName] {
        let (status, out) = run_child(Filter::Process, call);
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
        assert_eq!(out, "filter installed\nsurvived\n");
    }
    for call in [
        Call::Open,
        Call::Exec,
        Call::Socket,
        Call::Fork,
        Call::CloneProcess,
        Call::Ptrace,
        Call::Kill,
        Call::TgkillOther,
        Call::SetDumpable,
        Call::SetDumpableHighBits,
        Call::GetDumpable,
        Call::IoctlNotKvmRun,
        Call::Chmod,
        Call::X32,
    ] {
        killed_by_sigsys(Filter::Process, call);
    }
}
