//! The QEMU backend: `qemu-system-x86_64 -M microvm`, KVM on hardware hosts,
//! TCG elsewhere.
//!
//! The launcher creates a private directory (mode 0700) with three listening
//! UNIX sockets and starts QEMU as their client: COM1 (console), COM2 (agent
//! channel) and QMP. QEMU starts with `-S`, so no guest instruction runs
//! before the launcher has accepted all three and says `cont`. Nothing else
//! of QEMU is reachable: `-nodefaults -no-user-config`, no monitor on stdio,
//! no gdbstub, no `-incoming`, and QEMU's own seccomp sandbox on.

mod qmp;
pub mod snp;

pub use qmp::{QmpClient, QmpCommand, QmpError};

use super::{Backend, BackendError, EventSink, GuestStreams, PowerControl, StartedVm, VmmEvent};
use crate::accel::Accel;
use crate::vm_config::VmConfig;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long QEMU may take to connect its sockets.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of QEMU's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;
/// Host-side timeout for one write to the agent channel.
const CHANNEL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The devices a QEMU microvm guest gets (measured in the launch config).
pub const DEVICES: [&str; 2] = ["com1:console", "com2:agent-channel"];
/// QEMU machine type.
pub const MACHINE: &str = "microvm";

/// The QEMU backend.
pub struct Qemu {
    program: PathBuf,
}

impl Qemu {
    /// Uses `explicit` if given, else `qemu-system-x86_64` from `PATH`.
    pub fn locate(explicit: Option<&Path>) -> Result<Self, BackendError> {
        let program = match explicit {
            Some(p) if p.is_file() => p.to_path_buf(),
            Some(p) => {
                return Err(BackendError::QemuNotFound(format!("{} does not exist", p.display())))
            }
            None => find_in_path("qemu-system-x86_64").ok_or_else(|| {
                BackendError::QemuNotFound("qemu-system-x86_64 is not on PATH".into())
            })?,
        };
        Ok(Qemu { program })
    }

    /// The QEMU executable this backend runs (measured as the VMM binary).
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// QEMU's own firmware for `-M microvm` (qboot), from QEMU's data
    /// directory. It is passed explicitly with `-bios`, so the file that is
    /// measured is the file that runs.
    pub fn default_firmware(&self) -> Result<PathBuf, BackendError> {
        let candidates = [
            self.program.parent().map(|d| d.join("../share/qemu/bios-microvm.bin")),
            Some(PathBuf::from("/usr/share/qemu/bios-microvm.bin")),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
            .ok_or(BackendError::NoFirmware)
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Paths of the sockets QEMU connects to.
struct Sockets {
    console: PathBuf,
    agent: PathBuf,
    qmp: PathBuf,
}

/// QEMU's command line for `cfg`. Kept free of I/O so tests can inspect it.
fn args(cfg: &VmConfig, accel: Accel, s: &Sockets) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |x: &str| a.push(x.into());
    push("-nodefaults");
    push("-no-user-config");
    push("-S");
    push("-display");
    push("none");
    push("-msg");
    push("timestamp=off");
    push("-sandbox");
    push("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    push("-machine");
    push(MACHINE);
    push("-accel");
    push(match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    });
    push("-cpu");
    // TCG: `max` has RDRAND, without which /dev/urandom blocks for seconds at boot.
    push(match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    });
    push("-m");
    push(&format!("{}M", cfg.memory.0));
    push("-smp");
    push(&cfg.vcpus.to_string());
    push("-chardev");
    push(&format!("socket,id=console,path={}", s.console.display()));
    push("-serial");
    push("chardev:console");
    push("-chardev");
    push(&format!("socket,id=agent,path={}", s.agent.display()));
    // microvm has one UART; COM2 is added explicitly (the guest's ttyS1).
    push("-device");
    push("isa-serial,chardev=agent,iobase=0x2f8,irq=3");
    push("-chardev");
    push(&format!("socket,id=qmp,path={}", s.qmp.display()));
    push("-mon");
    push("chardev=qmp,mode=control");
    if let Some(fw) = &cfg.firmware {
        a.extend(["-bios".into(), fw.clone().into_os_string()]);
    }
    a.extend(["-kernel".into(), cfg.kernel.clone().into_os_string()]);
    a.extend(["-initrd".into(), cfg.initrd.clone().into_os_string()]);
    a.extend(["-append".into(), cfg.cmdline.clone().into()]);
    a
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn start(
        &self,
        cfg: &VmConfig,
        accel: Accel,
        events: EventSink,
    ) -> Result<StartedVm, BackendError> {
        let dir = tempfile::Builder::new()
            .prefix("tellus-qemu-")
            .tempdir()
            .map_err(|source| BackendError::Sockets { dir: "$TMPDIR".into(), source })?;
        let dir_name = dir.path().display().to_string();
        let sock_err = |source| BackendError::Sockets { dir: dir_name.clone(), source };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(sock_err)?;
        let s = Sockets {
            console: dir.path().join("console.sock"),
            agent: dir.path().join("agent.sock"),
            qmp: dir.path().join("qmp.sock"),
        };
        let listeners = [&s.console, &s.agent, &s.qmp]
            .map(|p| UnixListener::bind(p).and_then(|l| l.set_nonblocking(true).map(|_| l)));
        let [console_l, agent_l, qmp_l] = listeners;
        let (console_l, agent_l, qmp_l) =
            (console_l.map_err(sock_err)?, agent_l.map_err(sock_err)?, qmp_l.map_err(sock_err)?);

        let mut cmd = Command::new(&self.program);
        cmd.args(args(cfg, accel, &s))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Own process group: a terminal's Ctrl-C reaches the launcher,
            // which shuts the guest down in order, not QEMU directly.
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe; it touches no memory of
        // the parent. It makes QEMU die with the launcher, so no VM outlives
        // the process that accounts for it.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|source| BackendError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        let stderr_thread = child.stderr.take().map(|e| spawn_stderr_relay(e, stderr_tail.clone()));
        let tail = || stderr_tail.lock().map(|t| t.clone()).unwrap_or_default();

        // Accept the three connections, or notice QEMU dying / hanging.
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut conns: [Option<UnixStream>; 3] = [None, None, None];
        let ls = [&console_l, &agent_l, &qmp_l];
        while conns.iter().any(Option::is_none) {
            for (slot, l) in conns.iter_mut().zip(ls) {
                if slot.is_none() {
                    match l.accept() {
                        Ok((c, _)) => *slot = Some(c),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => return Err(sock_err(e)),
                    }
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                if let Some(t) = stderr_thread {
                    let _ = t.join();
                }
                return Err(BackendError::StartFailed { status, stderr: tail() });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BackendError::StartTimeout {
                    secs: CONNECT_TIMEOUT.as_secs(),
                    stderr: tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let [Some(console), Some(agent), Some(qmp)] = conns else {
            unreachable!("loop exits only when all three are connected");
        };
        for c in [&console, &agent, &qmp] {
            c.set_nonblocking(false).map_err(sock_err)?;
        }
        agent.set_write_timeout(Some(CHANNEL_WRITE_TIMEOUT)).map_err(sock_err)?;
        let qmp = match QmpClient::connect(qmp, events.clone()) {
            Ok(q) => q,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.into());
            }
        };
        let pid = child.id();
        spawn_waiter(child, stderr_thread, stderr_tail, events, dir);
        let channel_rx = agent.try_clone().map_err(sock_err)?;
        Ok(StartedVm {
            streams: GuestStreams {
                console: Box::new(console),
                channel_rx: Box::new(channel_rx),
                channel_tx: Box::new(agent),
            },
            power: Box::new(QemuPower { qmp, pid }),
            description: format!(
                "{} (pid {pid}, -M microvm, -accel {accel}, {} vCPU, {})",
                self.program.display(),
                cfg.vcpus,
                cfg.memory
            ),
        })
    }
}

/// Relays QEMU's stderr to ours (prefixed) and keeps its tail for errors.
fn spawn_stderr_relay(
    stderr: std::process::ChildStderr,
    tail: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut line = Vec::new();
        while matches!(r.by_ref().take(8192).read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            eprint!("qemu: {text}");
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

/// Waits for QEMU to exit and reports it; owns the socket directory so it
/// lives exactly as long as QEMU.
fn spawn_waiter(
    mut child: Child,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    tail: Arc<Mutex<String>>,
    events: EventSink,
    dir: tempfile::TempDir,
) {
    std::thread::spawn(move || {
        let status = child.wait();
        if let Some(t) = stderr_thread {
            let _ = t.join();
        }
        drop(dir);
        let stderr_tail = tail.lock().map(|t| t.clone()).unwrap_or_default();
        match status {
            Ok(status) => events(VmmEvent::Exited { status, stderr_tail }),
            Err(e) => eprintln!("tellus: cannot wait for QEMU: {e}"),
        }
    });
}

struct QemuPower {
    qmp: QmpClient,
    pid: u32,
}

impl PowerControl for QemuPower {
    fn start_vcpus(&mut self) -> Result<(), BackendError> {
        Ok(self.qmp.execute(QmpCommand::Cont)?)
    }
    fn power_button(&mut self) -> Result<(), BackendError> {
        Ok(self.qmp.execute(QmpCommand::SystemPowerdown)?)
    }
    fn reset(&mut self) -> Result<(), BackendError> {
        Ok(self.qmp.execute(QmpCommand::SystemReset)?)
    }
    fn terminate(&mut self) -> Result<(), BackendError> {
        Ok(self.qmp.execute(QmpCommand::Quit)?)
    }
    fn vmm_pid(&self) -> Option<u32> {
        Some(self.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_config::MemorySize;

    fn cfg() -> VmConfig {
        VmConfig {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
            memory: MemorySize(256),
            vcpus: 2,
            firmware: Some("/fw".into()),
        }
    }

    #[test]
    fn command_line_is_closed() {
        let s = Sockets { console: "/d/c".into(), agent: "/d/a".into(), qmp: "/d/q".into() };
        let a: Vec<String> =
            args(&cfg(), Accel::Tcg, &s).iter().map(|x| x.to_string_lossy().into()).collect();
        for required in ["-nodefaults", "-no-user-config", "-S", "-sandbox"] {
            assert!(a.iter().any(|x| x == required), "{required} missing: {a:?}");
        }
        // No debugging, monitor, snapshot or migration entry points.
        for forbidden in
            ["-gdb", "-s", "-monitor", "-qmp", "-incoming", "-loadvm", "-snapshot", "-daemonize"]
        {
            assert!(!a.iter().any(|x| x == forbidden), "{forbidden} present: {a:?}");
        }
        assert!(!a.iter().any(|x| x.contains("stdio")), "{a:?}");
        let joined = a.join(" ");
        assert!(joined.contains("-accel tcg -cpu max"));
        assert!(joined.contains("-m 256M -smp 2"));
        assert!(joined.contains("isa-serial,chardev=agent,iobase=0x2f8,irq=3"));
        assert!(joined.contains("-mon chardev=qmp,mode=control"));
        let kvm = args(&cfg(), Accel::Kvm, &s);
        assert!(kvm.windows(2).any(|w| w[0] == "-cpu" && w[1] == "host"));
    }

    #[test]
    fn locate_reports_missing_qemu() {
        let e = Qemu::locate(Some(Path::new("/nonexistent/qemu"))).err().unwrap();
        assert!(e.to_string().contains("/nonexistent/qemu does not exist"));
    }
}
