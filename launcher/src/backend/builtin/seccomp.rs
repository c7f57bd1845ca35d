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
    /// bytes (the supervisor, which builds VMs on a reboot, runs without a
    /// filter: see `Supervisor` in `builtin/mod.rs`).
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

/// Syscalls no thread of the VMM process makes once `/dev/kvm` is open:
/// opening files, executing, creating processes, sockets, tracing or
/// reading other processes, signalling other processes, namespaces and
/// other kernel attack surface. Each kills the process.
const NEVER: &[i64] = &[
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_creat,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_getfd,
    libc::SYS_pidfd_send_signal,
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
];

/// The process-wide filter of `tellus-vmm` (see [`NEVER`]), installed on
/// its main thread before any other thread exists, so every thread has it
/// beneath its own allow-list. Besides [`NEVER`]: `clone` only for threads
/// (`CLONE_THREAD`), `tgkill` only within this process (`pid`: its id, the
/// vCPU kick), `prctl(PR_SET_DUMPABLE)` never (the process stays
/// undumpable). `clone3`, whose flags a filter cannot see, fails with
/// `ENOSYS`, and glibc falls back to `clone`.
pub fn process_program(pid: u32) -> Result<[BpfProgram; 2], SeccompError> {
    let build = |e: seccompiler::BackendError| SeccompError::Build(e.to_string());
    let cond = |arg: u8, op: SeccompCmpOp, v: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, v).map_err(build)
    };
    let rule = |c: Vec<SeccompCondition>| SeccompRule::new(c).map_err(build);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        NEVER.iter().map(|&nr| (nr, Vec::new())).collect();
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(libc::SYS_clone, vec![rule(vec![cond(0, SeccompCmpOp::MaskedEq(thread), 0)?])?]);
    rules.insert(libc::SYS_tgkill, vec![rule(vec![cond(0, SeccompCmpOp::Ne, u64::from(pid))?])?]);
    rules.insert(
        libc::SYS_prctl,
        vec![rule(vec![cond(0, SeccompCmpOp::Eq, libc::PR_SET_DUMPABLE as u64)?])?],
    );
    let to_bpf = |f: Result<SeccompFilter, seccompiler::BackendError>| {
        f.map_err(build)
            .and_then(|f| BpfProgram::try_from(f).map_err(|e| SeccompError::Build(e.to_string())))
    };
    let never = to_bpf(SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        TargetArch::x86_64,
    ))?;
    let clone3 = to_bpf(SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    ))?;
    Ok([never, clone3])
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
