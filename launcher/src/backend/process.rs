//! What both backends do with the VMM process they start (QEMU, or the
//! built-in VMM's `tellus-vmm`): tie its life to the launcher's, hand it
//! exactly the descriptors it needs, relay its stderr and report its exit.

use super::{BackendError, EventSink, VmmEvent};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How much of a VMM's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;

/// Prepares `cmd` for a VMM child: its own process group (a terminal's
/// Ctrl-C reaches the launcher, which shuts the guest down in order, not the
/// VMM directly), death with the launcher (no VM outlives the process that
/// accounts for it), and `inherit` passed on under the same numbers. Those
/// descriptors stay close-on-exec in the launcher, so no other child gets
/// them; each must be at least 3 (0..=2 become the child's standard
/// streams).
pub(crate) fn vmm_command(cmd: &mut Command, inherit: Vec<RawFd>) {
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2), which is async-signal-safe; it touches no memory of
    // the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    // SAFETY: the closure runs in the forked child before exec; it only
    // reads the vector allocated before the fork and calls fcntl(2), which
    // is async-signal-safe, on descriptors the child inherited.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Starts `f` on a thread named `name` that first drops its own
/// capabilities (capabilities are per thread, and these threads only read,
/// wait for or remove what is already theirs), and returns once it has: the
/// launcher's check after its own drop never finds it still holding any.
///
/// Panics when no thread can be started: the launcher then ends, and its
/// VMM with it (`PR_SET_PDEATHSIG`). Code that can report the failure
/// uses [`try_spawn_unprivileged`].
pub(crate) fn spawn_unprivileged<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    try_spawn_unprivileged(name, f).expect("failed to spawn thread")
}

/// [`spawn_unprivileged`], returning the error when no thread can be
/// started.
pub(crate) fn try_spawn_unprivileged<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    let (dropped, wait) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new().name(name.into()).spawn(move || {
        let _ = crate::privileges::drop_thread();
        let _ = dropped.send(());
        f()
    })?;
    let _ = wait.recv();
    Ok(handle)
}

/// A VMM process by its pidfd (`pidfd_open(2)`, Linux 5.3): signals sent
/// through it reach that process or, once it has been reaped, nobody —
/// never another process that got its pid since.
#[derive(Debug)]
pub(crate) struct Pidfd(OwnedFd);

impl Pidfd {
    /// Opens the pidfd of `pid`, a child of ours not reaped yet.
    pub(crate) fn open(pid: u32) -> std::io::Result<Pidfd> {
        let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
        // SAFETY: pidfd_open(2) takes two integers and returns a new
        // descriptor or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(std::io::Error::other)?;
        // SAFETY: pidfd_open returned a new descriptor (close-on-exec) that
        // nothing else owns.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Waits until the process has exited (not necessarily been reaped),
    /// at most `timeout`; whether it has.
    pub(crate) fn exited_within(&self, timeout: std::time::Duration) -> std::io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // After a signal, wait only for what is left of `timeout`
            // (rounded up, so that a wait never ends early).
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms =
                libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
            // SAFETY: poll(2) on one pollfd that lives on this stack frame
            // for the call; a pidfd turns readable when its process exits.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            match r {
                0 => return Ok(false),
                r if r > 0 => return Ok(true),
                _ => match std::io::Error::last_os_error() {
                    e if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    e => return Err(e),
                },
            }
        }
    }

    /// SIGKILL to the process; `Ok` also when it has already ended.
    pub(crate) fn kill(&self) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal(2) with a descriptor we own, a signal
        // number, no siginfo (NULL) and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match r {
            0 => Ok(()),
            _ => match std::io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                e => Err(e),
            },
        }
    }
}

/// `text` with every control character except tab and newline escaped: a
/// VMM's output reaches the operator's terminal and error messages, and
/// must not move the cursor, clear the screen or forge a line of ours.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Relays a VMM's stderr to ours, each line prefixed with `prefix` and its
/// control characters escaped ([`printable`]), and keeps its tail for error
/// messages.
pub(crate) fn spawn_stderr_relay(
    prefix: &'static str,
    stderr: std::process::ChildStderr,
    tail: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    spawn_unprivileged(&format!("{prefix}-stderr"), move || {
        let mut r = BufReader::new(stderr);
        let mut line = Vec::new();
        while matches!(r.by_ref().take(8192).read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = printable(&String::from_utf8_lossy(&line));
            eprint!("{prefix}: {text}");
            if let Ok(mut t) = tail.lock() {
                t.push_str(&text);
                if t.len() > STDERR_TAIL {
                    let cut = t.len() - STDERR_TAIL;
                    let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                    t.drain(..cut);
                }
            }
            line.clear();
        }
    })
}

/// A VMM process from the moment it is spawned: its pidfd (opened at once,
/// so every kill names this process and never a reused pid) and its stderr,
/// relayed to the launcher's with the tail kept for error messages. Both
/// backends start their VMM through it and hand it to [`VmmProcess::supervise`]
/// once the VM runs, or [`VmmProcess::stop`] it when starting fails. One
/// dropped in any other way (an error path, a panic) is killed and reaped:
/// no VM outlives the launch that started it unsupervised.
pub(crate) struct VmmProcess {
    name: &'static str,
    /// `None` only once [`VmmProcess::supervise`] has handed it on.
    child: Option<Child>,
    pid: u32,
    pidfd: Arc<Pidfd>,
    tail: Arc<Mutex<String>>,
    stderr: Option<JoinHandle<()>>,
}

impl VmmProcess {
    /// Spawns `cmd` (prepared with [`vmm_command`], stderr piped); `name`
    /// tags its stderr lines and threads, `program` names it in errors.
    pub(crate) fn spawn(
        cmd: &mut Command,
        name: &'static str,
        program: impl Fn() -> String,
    ) -> Result<VmmProcess, BackendError> {
        let mut child =
            cmd.spawn().map_err(|source| BackendError::Spawn { program: program(), source })?;
        let pidfd = match Pidfd::open(child.id()) {
            Ok(p) => Arc::new(p),
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BackendError::Spawn { program: program(), source });
            }
        };
        let tail = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().map(|e| spawn_stderr_relay(name, e, tail.clone()));
        let pid = child.id();
        Ok(VmmProcess { name, child: Some(child), pid, pidfd, tail, stderr })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The pidfd, for power control and readers that end the VMM.
    pub(crate) fn pidfd(&self) -> Arc<Pidfd> {
        self.pidfd.clone()
    }

    /// What the VMM has said on stderr so far (its last few KiB).
    pub(crate) fn stderr_tail(&self) -> String {
        self.tail.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Its exit status, once it has exited (reaped), or `None`.
    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    /// Ends the VMM (if it still runs), reaps it and lets its stderr relay
    /// finish, so that [`VmmProcess::stderr_tail`] holds all it said.
    pub(crate) fn stop(&mut self) -> std::io::Result<ExitStatus> {
        let _ = self.pidfd.kill();
        // Waiting again (after a stop, in drop) returns the same status.
        let status = match self.child.as_mut() {
            Some(c) => c.wait(),
            None => Err(std::io::Error::other("the VMM is supervised by its waiter thread")),
        };
        if let Some(t) = self.stderr.take() {
            let _ = t.join();
        }
        status
    }

    /// Hands the running VMM to a waiter thread (see [`spawn_waiter`]):
    /// `readers` are threads that end with it (besides its stderr relay).
    pub(crate) fn supervise<K: Send + 'static>(
        self,
        exited: impl FnOnce() + Send + 'static,
        readers: Vec<JoinHandle<()>>,
        events: EventSink,
        keep: K,
    ) {
        let mut this = self;
        let Some(child) = this.child.take() else { return };
        let first = this.stderr.take().into_iter().chain(readers).collect();
        spawn_waiter(this.name, child, exited, first, this.tail.clone(), events, keep);
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Waits for the VMM to exit, calls `exited` (e.g. to end a reader that
/// something other than the VMM could keep open), waits for `first` (its
/// stderr relay, its event reader: everything it said comes before its
/// end), drops `keep` (what must live exactly as long as the VMM) and
/// reports [`VmmEvent::Exited`].
fn spawn_waiter<K: Send + 'static>(
    name: &'static str,
    mut child: Child,
    exited: impl FnOnce() + Send + 'static,
    first: Vec<JoinHandle<()>>,
    tail: Arc<Mutex<String>>,
    events: EventSink,
    keep: K,
) {
    spawn_unprivileged(&format!("{name}-waiter"), move || {
        let status = child.wait();
        exited();
        for t in first {
            let _ = t.join();
        }
        drop(keep);
        let stderr_tail = tail.lock().map(|t| t.clone()).unwrap_or_default();
        match status {
            Ok(status) => events(VmmEvent::Exited { status, stderr_tail }),
            Err(e) => eprintln!("tellus: cannot wait for {name}: {e}"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_what_could_steer_a_terminal() {
        assert_eq!(printable("boot ok\tnow\n"), "boot ok\tnow\n");
        assert_eq!(
            printable("\u{1b}[2J\rtellus: attestation succeeded\u{7}\u{0}"),
            "\\u{1b}[2J\\rtellus: attestation succeeded\\u{7}\\u{0}"
        );
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
    }

    #[test]
    fn pidfd_kills_its_process_and_never_another() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        pidfd.kill().unwrap();
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        // Reaped: the pidfd now names nobody, and killing is a no-op.
        pidfd.kill().unwrap();
    }

    #[test]
    fn pidfd_tells_when_its_process_has_exited() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        assert!(!pidfd.exited_within(std::time::Duration::from_millis(50)).unwrap());
        pidfd.kill().unwrap();
        assert!(pidfd.exited_within(std::time::Duration::from_secs(10)).unwrap());
        child.wait().unwrap();
    }

    #[test]
    fn a_vmm_process_dropped_unsupervised_is_killed_and_reaped() {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("60").stderr(std::process::Stdio::piped());
        let vmm = VmmProcess::spawn(&mut cmd, "test-vmm", || "sleep".into()).unwrap();
        let (pidfd, pid) = (vmm.pidfd(), vmm.pid());
        let t0 = std::time::Instant::now();
        drop(vmm);
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "drop waited for sleep 60");
        assert!(pidfd.exited_within(std::time::Duration::ZERO).unwrap());
        // Reaped: no zombie is left under its pid.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(!stat.contains(") Z "), "left a zombie: {stat}");
    }
}
