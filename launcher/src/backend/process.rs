//! What both backends do with the VMM process they start (QEMU, or the
//! built-in VMM's `tellus-vmm`): tie its life to the launcher's, hand it
//! exactly the descriptors it needs, relay its stderr and report its exit.

use super::{EventSink, VmmEvent};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
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
pub(crate) fn spawn_unprivileged<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let (dropped, wait) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = crate::privileges::drop_thread();
            let _ = dropped.send(());
            f()
        })
        .expect("failed to spawn thread");
    let _ = wait.recv();
    handle
}

/// Relays a VMM's stderr to ours, each line prefixed with `prefix`, and
/// keeps its tail for error messages.
pub(crate) fn spawn_stderr_relay(
    prefix: &'static str,
    stderr: std::process::ChildStderr,
    tail: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    spawn_unprivileged(&format!("{prefix}-stderr"), move || {
        let mut r = BufReader::new(stderr);
        let mut line = Vec::new();
        while matches!(r.by_ref().take(8192).read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
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

/// Waits for the VMM to exit, then for `first` (its stderr relay, its event
/// reader: everything it said comes before its end), drops `keep` (what
/// must live exactly as long as the VMM) and reports
/// [`VmmEvent::Exited`].
pub(crate) fn spawn_waiter<K: Send + 'static>(
    name: &'static str,
    mut child: Child,
    first: Vec<JoinHandle<()>>,
    tail: Arc<Mutex<String>>,
    events: EventSink,
    keep: K,
) {
    spawn_unprivileged(&format!("{name}-waiter"), move || {
        let status = child.wait();
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
