//! seccomp allow-lists (seccompiler) for the built-in VMM's threads. Each
//! thread installs its list as its first action, before it touches the guest:
//! vCPU threads before their first `KVM_RUN`.
//!
//! A syscall outside the list kills the whole process (`SIGSYS`): a VMM
//! thread that makes an unexpected syscall is broken or compromised, and the
//! VM must not go on with it. (Killing only the thread would leave the VMM
//! waiting on a vCPU that silently vanished.)

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// `KVM_RUN` = `_IO(KVMIO, 0x80)`: the only ioctl a vCPU thread makes.
pub const KVM_RUN: u64 = 0xae80;

/// The kinds of VMM thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs one vCPU: `KVM_RUN`, port I/O to the devices, UART output.
    Vcpu,
    /// Feeds host bytes into COM2, or carries out the launcher's control
    /// bytes. (The supervisor, which builds VMs on a reboot, and the main
    /// thread run under the process-wide list only: [`process_program`].)
    Device,
}

/// Errors of building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
    #[error("cannot install the seccomp filter: {0}")]
    Install(String),
}

/// Syscalls every VMM thread needs: locks, memory for the allocator, its own
/// exit, signal return (the vCPU kick) and thread-stack teardown.
const COMMON: &[i64] = &[
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_write,
    // std writes to UNIX sockets with send(2) (MSG_NOSIGNAL).
    libc::SYS_sendto,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
];

/// The allow-list of `kind`, as BPF.
pub fn program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().map(|&nr| (nr, Vec::new())).collect();
    let build = |e: seccompiler::BackendError| SeccompError::Build(e.to_string());
    // fcntl(fd, F_GETFD) only: std checks that an fd is open before closing
    // it (debug builds).
    let getfd =
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::F_GETFD as u64)
            .map_err(build)?;
    rules.insert(libc::SYS_fcntl, vec![SeccompRule::new(vec![getfd]).map_err(build)?]);
    match kind {
        ThreadKind::Vcpu => {
            let is_kvm_run =
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, KVM_RUN)
                    .map_err(build)?;
            rules.insert(libc::SYS_ioctl, vec![SeccompRule::new(vec![is_kvm_run]).map_err(build)?]);
        }
        ThreadKind::Device => {
            // Reading the host's bytes and waiting for FIFO room; no more
            // kicks or stream shutdowns since the supervisor left this list.
            for nr in
                [libc::SYS_read, libc::SYS_recvfrom, libc::SYS_clock_nanosleep, libc::SYS_nanosleep]
            {
                rules.insert(nr, Vec::new());
            }
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(e.to_string()))
}

/// Syscalls the threads of `tellus-vmm` make once `/dev/kvm` is open (the
/// supervisor building and rebuilding VMs, the main thread waiting for the
/// end, and whatever the per-thread lists allow), without conditions;
/// [`process_program`] adds `clone`, `tgkill`, `prctl`, `ioctl` and `fcntl`
/// with conditions. Taken from strace of the tests' VMMs (boot, reboots,
/// stop, failure paths) and glibc's thread start and exit.
const PROCESS: &[i64] = &[
    // Memory: the allocator, thread stacks, guest RAM, vCPU run areas.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    // Descriptors it already has: images, streams, KVM objects, eventfds.
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_write,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_shutdown,
    libc::SYS_close,
    libc::SYS_eventfd2,
    // Threads: start (clone3 is answered ENOSYS, see below), identity,
    // locks, signals for the vCPU kick, filters of the threads it starts.
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_futex,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_seccomp,
    libc::SYS_getrandom,
    // Time and waiting.
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    // The end.
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The process-wide allow-list of `tellus-vmm`, installed on its main
/// thread before any other thread exists, so every thread has it beneath
/// its own list: the syscalls of `PROCESS`, and `clone` only for threads
/// (`CLONE_THREAD`), `tgkill` only within this process (`pid`: its id; the
/// vCPU kick), `prctl` only to name a thread or set `no_new_privs`,
/// `ioctl` only KVM's (type 0xAE), `fcntl` only `F_GETFD` and
/// `F_DUPFD_CLOEXEC`. Anything else — opening, changing or linking a file
/// by path, executing, a new process, a socket, tracing, signalling another
/// process, becoming dumpable, a non-KVM ioctl, x32 syscall numbers — kills
/// the process. `clone3`, whose flags a filter cannot see, fails with
/// `ENOSYS` (second program), and glibc falls back to `clone`.
pub fn process_program(pid: u32) -> Result<[BpfProgram; 2], SeccompError> {
    let build = |e: seccompiler::BackendError| SeccompError::Build(e.to_string());
    // Arguments compared as the kernel reads them: 32-bit for int
    // parameters (a prctl option, an ioctl request, an fcntl command, a
    // pid), 64-bit for clone's flags.
    let cond = |arg: u8, wide: bool, op: SeccompCmpOp, v: u64| {
        let len = if wide { SeccompCmpArgLen::Qword } else { SeccompCmpArgLen::Dword };
        SeccompCondition::new(arg, len, op, v).map_err(build)
    };
    let rule = |c: Vec<SeccompCondition>| SeccompRule::new(c).map_err(build);
    let (dword, qword) = (false, true);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        PROCESS.iter().map(|&nr| (nr, Vec::new())).collect();
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(0, qword, SeccompCmpOp::MaskedEq(thread), thread)?])?],
    );
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(vec![cond(0, dword, SeccompCmpOp::Eq, u64::from(pid))?])?],
    );
    // Argument `arg` (an int) is one of `ops`.
    let one_of = |arg: u8, ops: &[i32]| -> Result<Vec<SeccompRule>, SeccompError> {
        ops.iter().map(|&op| rule(vec![cond(arg, dword, SeccompCmpOp::Eq, op as u64)?])).collect()
    };
    rules.insert(libc::SYS_prctl, one_of(0, &[libc::PR_SET_NAME, libc::PR_SET_NO_NEW_PRIVS])?);
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![cond(1, dword, SeccompCmpOp::MaskedEq(0xff00), 0xae00)?])?],
    );
    rules.insert(libc::SYS_fcntl, one_of(1, &[libc::F_GETFD, libc::F_DUPFD_CLOEXEC])?);
    let to_bpf = |f: Result<SeccompFilter, seccompiler::BackendError>| {
        f.map_err(build)
            .and_then(|f| BpfProgram::try_from(f).map_err(|e| SeccompError::Build(e.to_string())))
    };
    let allow = to_bpf(SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    ))?;
    let clone3 = to_bpf(SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    ))?;
    Ok([allow, clone3])
}

/// Installs the allow-list of `kind` on the calling thread (and on threads it
/// creates later). Cannot be undone.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    install(&program(kind)?)
}

/// Installs an already built program on the calling thread. Does not
/// allocate, so it may run in a freshly forked child (tests do).
pub fn install(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_build() {
        for k in [ThreadKind::Vcpu, ThreadKind::Device] {
            assert!(!program(k).unwrap().is_empty());
        }
        for p in process_program(std::process::id()).unwrap() {
            assert!(!p.is_empty());
        }
    }
}
