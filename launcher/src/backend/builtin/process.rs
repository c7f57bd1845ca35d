//! The built-in VMM in a process of its own: `tellus-vmm`.
//!
//! The launcher keeps the TPM, the state directory, the event log and the
//! network; the VMM process gets only what running one VM needs, as
//! inherited descriptors: the sealed kernel and initrd, the device ends of
//! the console and agent-channel streams, and a control socket. It opens
//! `/dev/kvm` itself, drops its capabilities, and from then on can reach
//! nothing else the launcher holds. Its executable is staged into a sealed
//! memfd like the kernel ([`crate::image`]), measured as the `vmm-binary`
//! record, and executed from that memfd, so the VMM that runs is the one
//! measured. Keeping the TPM stack (libtss2, OpenSSL) out of it is also what
//! keeps its footprint small (BENCHMARKS.md).
//!
//! Control protocol on the control socket (a stream socket pair):
//! - launcher → VMM, one byte each: `S` let the vCPUs run, `R` reset,
//!   `T` terminate. End of stream means terminate: no VM outlives its
//!   launcher (the VMM also dies with it, `PR_SET_PDEATHSIG`).
//! - VMM → launcher, one line each: `ready` (the VM is built, its vCPUs
//!   held) once, then `reset <reason>` and `shutdown <reason>`. The VMM
//!   runs guest-facing code, so the launcher reads these lines as untrusted:
//!   bounded, from a closed vocabulary; anything else ends the VMM.
//! - Errors: the VMM writes why to stderr and exits with status 1; the
//!   launcher reports its exit with the tail of its stderr.

use super::boot::{self, BootSpec};
use super::seccomp::{self, SeccompError};
use super::{io, BuiltinError, DeviceStreams, Vm};
use crate::accel::Accel;
use crate::backend::{
    process, Backend, BackendError, EventSink, GuestStreams, PowerControl, StartedVm, VmmEvent,
};
use crate::image::{ImageError, SealedImage};
use crate::vm_config::VmConfig;
use kvm_ioctls::Kvm;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// File name of the VMM executable, looked for next to `tellus`.
pub const VMM_BINARY: &str = "tellus-vmm";
/// Version of the launcher ↔ `tellus-vmm` arguments and control protocol;
/// the two must come from the same build.
pub const PROTOCOL: &str = "1";
/// How long the VMM may take to build the VM and say `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Host-side timeout for one write to the agent channel (as for QEMU).
const CHANNEL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout for one control byte to the VMM.
const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a VMM that closed its control socket may take to exit.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Longest control line the launcher reads from the VMM.
const MAX_LINE: u64 = 128;

/// The built-in backend: starts `tellus-vmm` from its sealed copy.
#[derive(Debug, Clone)]
pub struct Builtin {
    vmm: Arc<SealedImage>,
}

impl Builtin {
    /// Stages the VMM executable: `path`, or `tellus-vmm` in the directory
    /// of the running executable. It is read once, here; what is measured
    /// and executed is this sealed copy.
    pub fn locate(path: Option<&Path>) -> Result<Builtin, BuiltinError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let exe = std::env::current_exe().map_err(|e| BuiltinError::VmmNotFound {
                    path: PathBuf::from(VMM_BINARY),
                    why: format!("cannot find the running executable: {e}"),
                })?;
                exe.with_file_name(VMM_BINARY)
            }
        };
        // The staging opens and checks the file; its refusals say which.
        let vmm = SealedImage::stage_executable("vmm", &path).map_err(|e| {
            let why = match e {
                ImageError::Read { source, .. } => source.to_string(),
                ImageError::NotAFile { .. } => "not a regular file".into(),
                e => e.to_string(),
            };
            BuiltinError::VmmNotFound { path, why }
        })?;
        Ok(Builtin { vmm: Arc::new(vmm) })
    }

    /// The sealed VMM executable (measured as the `vmm-binary` record).
    pub fn executable(&self) -> &SealedImage {
        &self.vmm
    }
}

/// The arguments the launcher passes (descriptor numbers it inherits).
fn vmm_args(spec: &BootSpec, fds: &ChildFds) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |k: &str, v: String| {
        a.push(k.into());
        a.push(v.into());
    };
    push("--protocol", PROTOCOL.into());
    push("--kernel-fd", spec.kernel.raw_fd().to_string());
    push("--initrd-fd", spec.initrd.raw_fd().to_string());
    push("--console-fd", fds.console.as_raw_fd().to_string());
    push("--channel-fd", fds.channel.as_raw_fd().to_string());
    push("--control-fd", fds.control.as_raw_fd().to_string());
    push("--vcpus", spec.vcpus.to_string());
    push("--memory-mib", spec.memory_mib.to_string());
    push("--cmdline", spec.cmdline.clone());
    a
}

/// The VMM's ends of the three stream pairs.
struct ChildFds {
    console: UnixStream,
    channel: UnixStream,
    control: UnixStream,
}

impl Backend for Builtin {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn start(
        &self,
        cfg: &VmConfig,
        _accel: Accel,
        events: EventSink,
    ) -> Result<StartedVm, BackendError> {
        let spec = BootSpec::from(cfg);
        // Refusals of the configuration come before any process exists.
        boot::preflight(&spec).map_err(BuiltinError::from)?;
        let (console_host, console) = UnixStream::pair().map_err(io("console stream"))?;
        let (chan_host, channel) = UnixStream::pair().map_err(io("agent channel"))?;
        let (ctl, control) = UnixStream::pair().map_err(io("control socket"))?;
        let fds = ChildFds { console, channel, control };

        let mut cmd = Command::new(self.vmm.fd_path());
        cmd.arg0(VMM_BINARY)
            .args(vmm_args(&spec, &fds))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let inherit = vec![
            spec.kernel.raw_fd(),
            spec.initrd.raw_fd(),
            fds.console.as_raw_fd(),
            fds.channel.as_raw_fd(),
            fds.control.as_raw_fd(),
        ];
        process::vmm_command(&mut cmd, inherit);
        let mut vmm = process::VmmProcess::spawn(&mut cmd, VMM_BINARY, || {
            format!("{VMM_BINARY} (sealed copy of {})", self.vmm.path().display())
        })?;
        // Only the VMM holds its ends now: its exit closes them.
        drop(fds);

        let mut lines = match ctl.try_clone() {
            Ok(c) => BufReader::new(c),
            Err(e) => {
                let _ = vmm.stop();
                return Err(io("control socket")(e).into());
            }
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let handshake = read_line_by(&mut lines, deadline);
        if !matches!(&handshake, Ok(Some(l)) if l == "ready") {
            if matches!(handshake, Ok(None)) {
                // The VMM closed the control socket before the VM was
                // built: it has exited or is about to (it said why on
                // stderr); give it a moment before making sure.
                let _ = vmm.pidfd().exited_within(EXIT_GRACE);
            }
            let status = vmm.stop().map_err(io("VMM process"))?;
            let stderr = vmm.stderr_tail();
            return Err(match handshake {
                Ok(None) => BuiltinError::VmmStart { status, stderr },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    BuiltinError::VmmStartTimeout { secs: START_TIMEOUT.as_secs(), stderr }
                }
                Err(e) => BuiltinError::VmmProtocol(process::printable(&e.to_string())),
                Ok(Some(l)) => BuiltinError::VmmProtocol(process::printable(&l)),
            }
            .into());
        }
        let setup = lines
            .get_ref()
            .set_read_timeout(None)
            .and_then(|_| ctl.set_write_timeout(Some(CONTROL_WRITE_TIMEOUT)))
            .and_then(|_| chan_host.set_write_timeout(Some(CHANNEL_WRITE_TIMEOUT)))
            .and_then(|_| chan_host.try_clone())
            .and_then(|rx| ctl.try_clone().map(|c| (rx, c)));
        let (chan_rx, ctl_end) = match setup {
            Ok(c) => c,
            Err(e) => {
                let _ = vmm.stop();
                return Err(io("VMM streams")(e).into());
            }
        };
        let (pid, pidfd) = (vmm.pid(), vmm.pidfd());
        let asked = Arc::new(Asked::default());
        let reader = spawn_event_reader(lines, pidfd.clone(), asked.clone(), events.clone());
        // Once the VMM is reaped nothing it says matters any more: end the
        // event reader even if something else still held the VMM's end.
        let exited = move || {
            let _ = ctl_end.shutdown(Shutdown::Read);
        };
        vmm.supervise(exited, vec![reader], events, ());
        Ok(StartedVm {
            streams: GuestStreams {
                console: Box::new(console_host),
                channel_rx: Box::new(chan_rx),
                channel_tx: Box::new(chan_host),
            },
            power: Box::new(BuiltinPower { ctl, pid, pidfd, asked }),
            description: format!(
                "built-in VMM ({VMM_BINARY} pid {pid}, KVM, {} vCPU, {}M, COM1 console, COM2 agent channel)",
                spec.vcpus, spec.memory_mib
            ),
        })
    }
}

/// [`read_line`] that gives up at `deadline`: the timeout is armed again
/// before every read, with what is left, so a VMM that trickles bytes
/// cannot stretch it.
fn read_line_by(
    r: &mut BufReader<UnixStream>,
    deadline: Instant,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        r.get_ref().set_read_timeout(Some(left))?;
        let buf = r.fill_buf()?; // at most one read(2)
        if buf.is_empty() {
            break;
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done || line.len() as u64 > MAX_LINE {
            break;
        }
    }
    finish_line(line)
}

/// One control line, without its newline; `None` at the end of the
/// stream. Lines longer than [`MAX_LINE`] are an error.
fn read_line(r: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    r.take(MAX_LINE + 1).read_until(b'\n', &mut line)?;
    finish_line(line)
}

/// A line read by [`read_line`] or [`read_line_by`], checked.
fn finish_line(mut line: Vec<u8>) -> std::io::Result<Option<String>> {
    if line.is_empty() {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err(std::io::Error::other(format!(
            "a control line longer than {MAX_LINE} bytes or cut off"
        )));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| std::io::Error::other("a control line that is not UTF-8"))
}

/// A VMM event line, as the launcher accepts it.
#[derive(Debug, PartialEq, Eq)]
enum EventLine {
    Reset(&'static str),
    Shutdown(String),
}

/// Parses `reset <reason>` / `shutdown <reason>` with exactly the reasons
/// the VMM has ([`super::Supervisor`]): `guest-reset`, `host-reset`;
/// `guest-triple-fault`, `guest-system-event-<n>`, `host-terminate`.
fn parse_event(line: &str) -> Option<EventLine> {
    let (kind, reason) = line.split_once(' ')?;
    match kind {
        "reset" => {
            ["guest-reset", "host-reset"].into_iter().find(|r| *r == reason).map(EventLine::Reset)
        }
        "shutdown" => {
            let system_event = reason.strip_prefix("guest-system-event-").is_some_and(|n| {
                n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u32>().is_ok()
            });
            (system_event || reason == "guest-triple-fault" || reason == "host-terminate")
                .then(|| EventLine::Shutdown(reason.into()))
        }
        _ => None,
    }
}

/// What the launcher asked of the VMM, so that host-caused events are
/// believed only when the host caused them.
#[derive(Debug, Default)]
struct Asked {
    /// Resets asked for and not reported yet.
    resets: AtomicU32,
    terminate: AtomicBool,
}

/// Turns the VMM's event lines into [`VmmEvent`]s until it closes the
/// control socket. A line outside the protocol — unknown, a host-caused
/// event the launcher did not ask for, anything after `shutdown` — ends the
/// VMM: the launcher does not go on with a VMM that misbehaves.
fn spawn_event_reader(
    mut lines: BufReader<UnixStream>,
    pidfd: Arc<process::Pidfd>,
    asked: Arc<Asked>,
    events: EventSink,
) -> std::thread::JoinHandle<()> {
    process::spawn_unprivileged("tellus-vmm-events", move || {
        let mut shut_down = false;
        let bad = loop {
            let l = match read_line(&mut lines) {
                Ok(None) => return,
                Ok(Some(l)) => l,
                Err(e) => break e.to_string(),
            };
            match parse_event(&l) {
                _ if shut_down => break format!("{l:?} after shutdown"),
                Some(EventLine::Reset("host-reset"))
                    if asked
                        .resets
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                        .is_err() =>
                {
                    break "a host reset nobody asked for".into()
                }
                Some(EventLine::Reset(reason)) => events(VmmEvent::Reset { reason: reason.into() }),
                Some(EventLine::Shutdown(r))
                    if r == "host-terminate" && !asked.terminate.load(Ordering::Acquire) =>
                {
                    break "a host terminate nobody asked for".into()
                }
                Some(EventLine::Shutdown(reason)) => {
                    shut_down = true;
                    events(VmmEvent::Shutdown { reason })
                }
                None => break format!("{l:?}"),
            }
        };
        eprintln!(
            "tellus: {VMM_BINARY} broke its control protocol ({}); stopping it",
            process::printable(&bad)
        );
        if let Err(e) = pidfd.kill() {
            eprintln!("tellus: cannot kill {VMM_BINARY}: {e}");
        }
    })
}

/// The power functions of a built-in VM, from the launcher's side.
struct BuiltinPower {
    ctl: UnixStream,
    pid: u32,
    pidfd: Arc<process::Pidfd>,
    asked: Arc<Asked>,
}

impl BuiltinPower {
    fn send(&mut self, b: u8) -> Result<(), BackendError> {
        self.ctl.write_all(&[b]).map_err(|_| BuiltinError::Stopped.into())
    }
}

impl PowerControl for BuiltinPower {
    fn start_vcpus(&mut self) -> Result<(), BackendError> {
        self.send(b'S')
    }
    fn power_button(&mut self) -> Result<(), BackendError> {
        Err(BuiltinError::NoPowerButton.into())
    }
    /// Stops every vCPU, drops the VM and its RAM and boots the same spec
    /// again; [`VmmEvent::Reset`] `host-reset` follows.
    fn reset(&mut self) -> Result<(), BackendError> {
        self.asked.resets.fetch_add(1, Ordering::AcqRel);
        self.send(b'R')
    }
    fn terminate(&mut self) -> Result<(), BackendError> {
        self.asked.terminate.store(true, Ordering::Release);
        self.send(b'T')
    }
    fn kill(&mut self) -> Result<(), BackendError> {
        self.pidfd.kill().map_err(BackendError::Kill)
    }
    fn vmm_pid(&self) -> Option<u32> {
        Some(self.pid)
    }
}

impl Drop for BuiltinPower {
    fn drop(&mut self) {
        // No VM outlives the handle that controls it. (The control socket
        // stays open while the event reader holds its clone; the VMM also
        // ends when the launcher does, by PR_SET_PDEATHSIG.)
        self.asked.terminate.store(true, Ordering::Release);
        let _ = self.ctl.write_all(b"T");
    }
}

/// Why `tellus-vmm` could not start its VM. It reports this on stderr and
/// exits with status 1.
#[derive(Debug, thiserror::Error)]
pub enum VmmMainError {
    #[error("{0}; tellus-vmm is started by `tellus run --backend builtin`, not by hand")]
    Usage(String),
    #[error("this tellus-vmm speaks control protocol {PROTOCOL}, its launcher {0}; use the tellus-vmm built with this tellus (next to it, or --tellus-vmm)")]
    Protocol(String),
    #[error("descriptor {fd} ({what}) is not open: {source}; tellus-vmm needs the descriptors its launcher passes, so start it through `tellus run --backend builtin`")]
    Descriptor { what: &'static str, fd: RawFd, source: std::io::Error },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Vmm(#[from] BuiltinError),
    #[error("cannot drop the main thread's privileges: {0}")]
    Privileges(#[from] crate::privileges::PrivilegeError),
    #[error("control socket: {0}")]
    Control(std::io::Error),
    #[error("cannot limit malloc to one arena (mallopt M_ARENA_MAX); tellus-vmm needs glibc")]
    Malloc,
    #[error("the process-wide seccomp filter: {0}; tellus-vmm needs seccomp filters (Linux 3.17 or later, CONFIG_SECCOMP_FILTER)")]
    ProcessFilter(SeccompError),
    #[error("the control thread's seccomp filter: {0}")]
    ControlFilter(SeccompError),
}

/// What the launcher passes to `tellus-vmm`.
#[derive(Debug, PartialEq, Eq)]
struct VmmArgs {
    kernel_fd: RawFd,
    initrd_fd: RawFd,
    console_fd: RawFd,
    channel_fd: RawFd,
    control_fd: RawFd,
    vcpus: u32,
    memory_mib: u64,
    cmdline: String,
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<VmmArgs, VmmMainError> {
    let usage = |m: String| VmmMainError::Usage(m);
    let mut it = args.into_iter();
    let mut get = std::collections::BTreeMap::new();
    while let Some(k) = it.next() {
        let k = k.into_string().map_err(|k| usage(format!("argument {k:?} is not UTF-8")))?;
        let v = it.next().ok_or_else(|| usage(format!("{k} needs a value")))?;
        let v = v.into_string().map_err(|_| usage(format!("the value of {k} is not UTF-8")))?;
        if get.insert(k.clone(), v).is_some() {
            return Err(usage(format!("{k} given twice")));
        }
    }
    match get.remove("--protocol") {
        Some(p) if p == PROTOCOL => {}
        Some(p) => return Err(VmmMainError::Protocol(p)),
        None => return Err(usage("--protocol is missing".into())),
    }
    let mut take = |k: &str| get.remove(k).ok_or_else(|| usage(format!("{k} is missing")));
    let fd = |k: &str, v: String| -> Result<RawFd, VmmMainError> {
        v.parse::<RawFd>()
            .ok()
            .filter(|&n| n > 2)
            .ok_or_else(|| usage(format!("{k} {v}: not a descriptor number above 2")))
    };
    let a = VmmArgs {
        kernel_fd: fd("--kernel-fd", take("--kernel-fd")?)?,
        initrd_fd: fd("--initrd-fd", take("--initrd-fd")?)?,
        console_fd: fd("--console-fd", take("--console-fd")?)?,
        channel_fd: fd("--channel-fd", take("--channel-fd")?)?,
        control_fd: fd("--control-fd", take("--control-fd")?)?,
        vcpus: {
            let v = take("--vcpus")?;
            v.parse().map_err(|_| usage(format!("--vcpus {v}: not a number")))?
        },
        memory_mib: {
            let v = take("--memory-mib")?;
            v.parse().map_err(|_| usage(format!("--memory-mib {v}: not a number")))?
        },
        cmdline: take("--cmdline")?,
    };
    if let Some(k) = get.keys().next() {
        return Err(usage(format!("unknown argument {k}")));
    }
    let mut fds = [a.kernel_fd, a.initrd_fd, a.console_fd, a.channel_fd, a.control_fd];
    fds.sort_unstable();
    if fds.windows(2).any(|w| w[0] == w[1]) {
        return Err(usage("one descriptor given for two purposes".into()));
    }
    Ok(a)
}

/// Takes ownership of inherited descriptor `fd` after checking that it is
/// open, and sets close-on-exec on it.
fn take_fd(what: &'static str, fd: RawFd) -> Result<OwnedFd, VmmMainError> {
    // SAFETY: fcntl(2) F_SETFD on a plain number: it fails with EBADF if
    // the number is not open and otherwise only sets that descriptor's
    // close-on-exec flag; no memory is involved.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        let source = std::io::Error::last_os_error();
        return Err(VmmMainError::Descriptor { what, fd, source });
    }
    // SAFETY: the descriptor is open (checked above) and was inherited from
    // the launcher for this purpose; this process has opened no descriptor
    // of its own before taking them (take_fd runs first thing in run_vmm),
    // so nothing else here refers to it, and `parse_args` refused numbers
    // given twice, so this OwnedFd is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `tellus-vmm`'s main: builds the VM from the inherited descriptors, says
/// `ready`, then obeys the control socket until the VM ends; exits with the
/// VM's exit status.
pub fn vmm_main() -> ExitCode {
    // Executed as /proc/self/fd/N, the kernel names the process "N".
    let _ = nix::sys::prctl::set_name(c"tellus-vmm");
    // Guest memory is not for other processes of this user to read through
    // /proc/PID/mem or a core dump. The seccomp filter keeps this so.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("cannot make tellus-vmm undumpable: {e}");
        return ExitCode::from(1);
    }
    match run_vmm(std::env::args_os().skip(1)) {
        Ok(status) => ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run_vmm(args: impl IntoIterator<Item = OsString>) -> Result<ExitStatus, VmmMainError> {
    let a = parse_args(args)?;
    let kernel = SealedImage::inherited("kernel", take_fd("kernel", a.kernel_fd)?)?;
    let initrd = SealedImage::inherited("initrd", take_fd("initrd", a.initrd_fd)?)?;
    let console = UnixStream::from(take_fd("console stream", a.console_fd)?);
    let channel = UnixStream::from(take_fd("agent channel", a.channel_fd)?);
    let ctl = UnixStream::from(take_fd("control socket", a.control_fd)?);
    let spec = BootSpec {
        kernel: Arc::new(kernel),
        initrd: Arc::new(initrd),
        cmdline: a.cmdline,
        memory_mib: a.memory_mib,
        vcpus: a.vcpus,
    };
    boot::preflight(&spec).map_err(BuiltinError::from)?;

    // The last file this process opens. Then, before the kernel image is
    // read or a thread exists: no capabilities, no_new_privs, and the
    // process-wide seccomp filter, all inherited by every later thread.
    let kvm = Kvm::new().map_err(BuiltinError::Kvm)?;
    // One malloc arena for every thread: glibc opens files for arenas of
    // their own (/sys/devices/system/cpu/online when the ninth thread wants
    // one, /proc/sys/vm/overcommit_memory when a thread trims its heap),
    // and the seccomp filter forbids opening files. It also keeps the
    // footprint small; the VMM's threads rarely allocate.
    // SAFETY: mallopt(3) takes two integers; it runs while this process
    // has one thread, before any other allocation could race with it.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        return Err(VmmMainError::Malloc);
    }
    crate::privileges::drop_thread()?;
    for p in seccomp::process_program(std::process::id()).map_err(VmmMainError::ProcessFilter)? {
        seccomp::install(&p).map_err(VmmMainError::ProcessFilter)?;
    }

    let (exit_tx, exit_rx) = mpsc::channel();
    let out = Mutex::new(ctl.try_clone().map_err(VmmMainError::Control)?);
    let say = move |line: String| {
        if let Ok(mut o) = out.lock() {
            let _ = o.write_all(line.as_bytes());
        }
    };
    let sink: EventSink = Arc::new(move |e| match e {
        VmmEvent::Reset { reason } => say(format!("reset {reason}\n")),
        VmmEvent::Shutdown { reason } => say(format!("shutdown {reason}\n")),
        VmmEvent::Exited { status, stderr_tail } => {
            let _ = exit_tx.send((status, stderr_tail));
        }
    });
    let vm = super::start(&spec, kvm, DeviceStreams { console, channel }, sink)?;
    let reader = ctl.try_clone().map_err(VmmMainError::Control)?;
    let (filtered_tx, filtered) = mpsc::channel();
    std::thread::Builder::new()
        .name("vmm-control".into())
        .spawn(move || {
            // The launcher's bytes are read under the device threads' list.
            let r = seccomp::apply(seccomp::ThreadKind::Device);
            let ok = r.is_ok();
            let _ = filtered_tx.send(r);
            if ok {
                obey(reader, vm);
            }
        })
        .map_err(VmmMainError::Control)?;
    match filtered.recv() {
        Ok(Ok(())) => {}
        // Exit before the VM handle's drop would report a host terminate
        // the launcher never asked for: the cause is what it must see.
        Ok(Err(e)) => {
            eprintln!("{}", VmmMainError::ControlFilter(e));
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("the control thread ended before it was ready");
            std::process::exit(1);
        }
    }
    (&ctl).write_all(b"ready\n").map_err(VmmMainError::Control)?;
    match exit_rx.recv() {
        Ok((status, tail)) => {
            if !tail.is_empty() {
                eprintln!("{tail}");
            }
            Ok(status)
        }
        Err(_) => Ok(ExitStatus::from_raw(1 << 8)),
    }
}

/// Carries out the launcher's control bytes; the end of the stream (the
/// launcher is gone) or a byte outside the protocol terminates the VM.
fn obey(mut ctl: UnixStream, vm: Vm) {
    let mut b = [0u8; 1];
    loop {
        let r = match ctl.read(&mut b) {
            Ok(1) => match b[0] {
                b'S' => vm.start_vcpus(),
                b'R' => vm.reset(),
                b'T' => vm.terminate(),
                other => {
                    eprintln!("unknown control byte {other:#04x}; terminating the VM");
                    let _ = vm.terminate();
                    return;
                }
            },
            _ => {
                let _ = vm.terminate();
                return;
            }
        };
        if r.is_err() {
            return; // the VM has stopped; its exit is on its way
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    const GOOD: [&str; 18] = [
        "--protocol",
        "1",
        "--kernel-fd",
        "3",
        "--initrd-fd",
        "4",
        "--console-fd",
        "5",
        "--channel-fd",
        "6",
        "--control-fd",
        "7",
        "--vcpus",
        "2",
        "--memory-mib",
        "64",
        "--cmdline",
        "console=ttyS0 x=y",
    ];

    #[test]
    fn arguments_parse_strictly() {
        let a = parse_args(args(&GOOD)).unwrap();
        assert_eq!((a.kernel_fd, a.control_fd, a.vcpus, a.memory_mib), (3, 7, 2, 64));
        assert_eq!(a.cmdline, "console=ttyS0 x=y");
        let refused = |s: Vec<&str>, want: &str| {
            let e = parse_args(args(&s)).unwrap_err().to_string();
            assert!(e.contains(want), "{s:?}: {e}");
            assert!(e.contains("not by hand"), "{e}");
        };
        refused(GOOD[..16].to_vec(), "--cmdline is missing");
        refused(GOOD[..17].to_vec(), "--cmdline needs a value");
        let mut dup = GOOD.to_vec();
        dup[5] = "3";
        refused(dup, "one descriptor given for two purposes");
        let mut low = GOOD.to_vec();
        low[3] = "2";
        refused(low, "not a descriptor number above 2");
        let mut nan = GOOD.to_vec();
        nan[13] = "two";
        refused(nan, "--vcpus two: not a number");
        let mut extra = GOOD.to_vec();
        extra.extend(["--gdb", "1234"]);
        refused(extra, "unknown argument --gdb");
        let mut twice = GOOD.to_vec();
        twice.extend(["--vcpus", "1"]);
        refused(twice, "--vcpus given twice");
        let mut old = GOOD.to_vec();
        old[1] = "0";
        let e = parse_args(args(&old)).unwrap_err().to_string();
        assert!(e.contains("protocol 1, its launcher 0; use the tellus-vmm built with"), "{e}");
    }

    #[test]
    fn event_lines_are_a_closed_vocabulary() {
        assert_eq!(parse_event("reset guest-reset"), Some(EventLine::Reset("guest-reset")));
        assert_eq!(parse_event("reset host-reset"), Some(EventLine::Reset("host-reset")));
        for r in ["guest-triple-fault", "host-terminate", "guest-system-event-2"] {
            assert_eq!(parse_event(&format!("shutdown {r}")), Some(EventLine::Shutdown(r.into())));
        }
        for bad in [
            "ready",
            "reset",
            "reset ",
            "reset Guest-reset",
            "reset guest-reset ",
            "reset guest-triple-fault",
            "shutdown guest-reset",
            "shutdown vmm-failed",
            "shutdown guest-system-event-",
            "shutdown guest-system-event-x",
            "shutdown guest-system-event-4294967296",
            "shutdown guest-system-event-+1",
            "exited 0",
            "shutdown \u{1b}[2J",
        ] {
            assert_eq!(parse_event(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn control_lines_are_bounded() {
        let mut r = BufReader::new(&b"ready\nshutdown x\n"[..]);
        assert_eq!(read_line(&mut r).unwrap().as_deref(), Some("ready"));
        assert_eq!(read_line(&mut r).unwrap().as_deref(), Some("shutdown x"));
        assert_eq!(read_line(&mut r).unwrap(), None);
        let long = vec![b'a'; 1000];
        assert!(read_line(&mut BufReader::new(&long[..])).is_err());
        assert!(read_line(&mut BufReader::new(&b"cut"[..])).is_err());
        assert!(read_line(&mut BufReader::new(&b"\xff\n"[..])).is_err());
    }
}
