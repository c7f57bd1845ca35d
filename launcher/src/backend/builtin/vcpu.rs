//! One thread per vCPU, held at a gate until the launcher starts the VM, and
//! stopped by a flag plus a kick signal that interrupts `KVM_RUN`.

use super::devices::PioBus;
use super::seccomp::{self, ThreadKind};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Why a boot of the VM ends (sent to the supervisor by vCPUs, devices and
/// the host). Resets start a fresh boot; the others end the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopRequest {
    /// The guest wrote 0xFE to the i8042 command port: a reset.
    GuestReset,
    /// The host asked for a hard reset ([`PowerControl::reset`](crate::backend::PowerControl::reset)).
    HostReset,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// KVM reported a system event of this type.
    SystemEvent(u32),
    /// The host asked the VM to stop now.
    Terminate,
    /// A vCPU failed; the text says how.
    Failed(String),
}

/// Whether vCPUs may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    /// vCPU threads wait.
    Held,
    /// vCPU threads run.
    Open,
    /// vCPU threads end without running.
    Aborted,
}

/// The start gate all vCPU threads wait at.
pub struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
}

impl Default for Gate {
    fn default() -> Self {
        Gate { state: Mutex::new(GateState::Held), cv: Condvar::new() }
    }
}

impl Gate {
    /// Opens or aborts the gate (only from `Held`).
    pub fn set(&self, to: GateState) {
        if let Ok(mut s) = self.state.lock() {
            if *s == GateState::Held {
                *s = to;
            }
            self.cv.notify_all();
        }
    }

    /// Waits until the gate is no longer held; true if the vCPU may run.
    fn wait(&self) -> bool {
        let Ok(mut s) = self.state.lock() else { return false };
        while *s == GateState::Held {
            s = match self.cv.wait(s) {
                Ok(s) => s,
                Err(_) => return false,
            };
        }
        *s == GateState::Open
    }
}

/// The kick signal: its handler does nothing, its delivery makes `KVM_RUN`
/// return `EINTR` so the thread sees the stop flag.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick signal's handler once per process.
pub fn install_kick_handler() -> Result<(), std::io::Error> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    res
}

/// Kicks `thread` out of `KVM_RUN` (or any blocking call).
pub fn kick<T>(thread: &JoinHandle<T>) {
    // ESRCH (already exited) is fine.
    let _ = thread.kill(kick_signal());
}

/// Starts the thread of vCPU `id`. It installs its seccomp filter first
/// (capabilities and the process-wide filter it inherits, see
/// [`super::process`]) and reports that on `ready`, then waits at `gate`; when its vCPU stops the
/// VM (reset, triple fault, failure) it hands the reason to `report`.
#[allow(clippy::too_many_arguments)]
pub fn spawn<W: Write + Send + 'static, R: FnOnce(StopRequest) + Send + 'static>(
    id: u32,
    mut vcpu: VcpuFd,
    bus: Arc<PioBus<W>>,
    stop: Arc<AtomicBool>,
    gate: Arc<Gate>,
    report: R,
    ready: Sender<Result<(), String>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("vcpu{id}")).spawn(move || {
        if let Err(e) = seccomp::apply(ThreadKind::Vcpu) {
            let _ = ready.send(Err(format!("vCPU {id}: {e}")));
            return;
        }
        let _ = ready.send(Ok(()));
        drop(ready);
        if !gate.wait() {
            return;
        }
        let request = run(&mut vcpu, id, &bus, &stop);
        if let Some(r) = request {
            report(r);
        }
    })
}

fn run<W: Write>(
    vcpu: &mut VcpuFd,
    id: u32,
    bus: &PioBus<W>,
    stop: &AtomicBool,
) -> Option<StopRequest> {
    loop {
        if stop.load(Ordering::Acquire) {
            return None;
        }
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => bus.read(port, data),
            Ok(VcpuExit::IoOut(port, data)) => bus.write(port, data),
            // No MMIO devices: reads see nothing, writes go nowhere.
            Ok(VcpuExit::MmioRead(_, data)) => data.fill(0xff),
            Ok(VcpuExit::MmioWrite(..)) => {}
            Ok(VcpuExit::Shutdown) => return Some(StopRequest::TripleFault),
            Ok(VcpuExit::SystemEvent(t, _)) => return Some(StopRequest::SystemEvent(t)),
            Ok(other) => {
                return Some(StopRequest::Failed(format!("vCPU {id}: unexpected exit {other:?}")))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Some(StopRequest::Failed(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        }
    }
}
