//! The QEMU backend: `qemu-system-x86_64 -M microvm` (qboot) or `-M q35`
//! (OVMF, UEFI; the machine of SEV-SNP guests), KVM on hardware hosts, TCG
//! elsewhere.
//!
//! The launcher creates a private directory (mode 0700) with three listening
//! UNIX sockets and starts QEMU as their client: COM1 (console), COM2 (agent
//! channel) and QMP. QEMU starts with `-S`, so no guest instruction runs
//! before the launcher has accepted all three and says `cont`. Nothing else
//! of QEMU is reachable: `-nodefaults -no-user-config`, no monitor on stdio,
//! no gdbstub, no `-incoming`, and QEMU's own seccomp sandbox on.
//!
//! QEMU never opens the operator's kernel, initrd or firmware files: it
//! inherits the launcher's sealed copies of them ([`crate::image`]) as open
//! descriptors and is given `/proc/self/fd/N` for `-kernel`, `-initrd` and
//! `-bios` (paths QEMU opens with open(2), which resolve to the descriptor
//! in QEMU's own process). The bytes QEMU loads are the bytes measured.
//! The same holds for QEMU itself: [`Qemu::locate`] reads the executable
//! once into a sealed, executable memfd; that copy is measured (the
//! `vmm-binary` record) and executed (`/proc/self/fd/N`), so replacing the
//! file on disk after the measurement changes nothing that runs. QEMU then
//! cannot find its data directory from its own path and is given it with
//! `-L`: the option ROMs it loads from there (e.g. `linuxboot_dma.bin`)
//! are not measured, as they were not when QEMU ran from its path.

mod qmp;
pub mod snp;

pub use qmp::{QmpClient, QmpCommand, QmpError};

use super::{process, Backend, BackendError, EventSink, GuestStreams, PowerControl, StartedVm};
use crate::accel::Accel;
use crate::image::SealedImage;
use crate::vm_config::VmConfig;
use snp::{SnpError, SnpQemuConfig, SnpSpec};
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tellus_measured_boot::records::{self, LaunchRecord};

/// How long QEMU may take to connect its sockets.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Host-side timeout for one write to the agent channel.
const CHANNEL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The devices a QEMU guest gets besides its machine's own chipset
/// (measured in the launch config).
pub const DEVICES: [&str; 2] = ["com1:console", "com2:agent-channel"];
/// QEMU machine type of the default machine ([`Machine::Microvm`]).
pub const MACHINE: &str = "microvm";

/// Where the OVMF image of `-M q35` is looked for (Debian's `ovmf` package:
/// the unified 2 MiB image with code and a variable store, used as a ROM).
const OVMF_CANDIDATES: [&str; 2] = ["/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd"];
/// [`OVMF_CANDIDATES`] for messages.
pub(crate) const OVMF_LOOKED_AT: &str =
    "looked for /usr/share/ovmf/OVMF.fd and /usr/share/qemu/OVMF.fd";

/// The QEMU machine a guest runs on (`--machine`), named in the launch-config
/// record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Machine {
    /// `-M microvm` with qboot: no PCI, no ACPI, COM2 added as an ISA UART.
    #[default]
    Microvm,
    /// `-M q35` with OVMF (UEFI) booting the kernel directly through fw_cfg;
    /// COM1 and COM2 are the chipset's two `-serial` UARTs. Needed for SEV-SNP.
    Q35,
}

impl Machine {
    /// The QEMU machine name, as measured.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => MACHINE,
            Machine::Q35 => "q35",
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The QEMU backend.
pub struct Qemu {
    /// Where the executable was read from (messages, the data directory).
    program: PathBuf,
    /// The sealed copy that is measured and executed.
    exe: Arc<SealedImage>,
    machine: Machine,
    /// SEV-SNP settings, when the guest is an SNP guest (machine q35, KVM).
    snp: Option<SnpSpec>,
    /// HOST_DATA of an SNP guest, bound from its launch records.
    host_data: Option<[u8; 32]>,
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
        let exe = SealedImage::stage_executable("vmm", &program)
            .map_err(|e| BackendError::QemuNotFound(format!("{}: {e}", program.display())))?;
        Ok(Qemu {
            program,
            exe: Arc::new(exe),
            machine: Machine::Microvm,
            snp: None,
            host_data: None,
        })
    }

    /// Runs guests on `machine` (default microvm).
    pub fn with_machine(mut self, machine: Machine) -> Self {
        self.machine = machine;
        self
    }

    /// Runs an SEV-SNP guest: machine q35 and KVM are required, checked
    /// when the command line is built.
    pub fn with_snp(mut self, snp: SnpSpec) -> Self {
        self.snp = Some(snp);
        self
    }

    /// The machine guests run on.
    pub fn machine(&self) -> Machine {
        self.machine
    }

    /// The SNP settings, for an SNP guest.
    pub fn snp(&self) -> Option<&SnpSpec> {
        self.snp.as_ref()
    }

    /// Takes what the command line needs from the launch's records, once
    /// they are built: an SNP guest's HOST_DATA (SHA-256 of the launch-config
    /// record). Call before [`Backend::start`]; an SNP guest without it
    /// does not start.
    pub fn bind_launch(&mut self, launch: &[LaunchRecord]) {
        self.host_data = records::host_data(launch);
    }

    /// The sealed copy of the QEMU executable this backend runs (measured
    /// as the `vmm-binary` record).
    pub fn executable(&self) -> &SealedImage {
        &self.exe
    }

    /// QEMU's data directory (option ROMs, firmware), beside its executable
    /// as installed (`<prefix>/bin/…` → `<prefix>/share/qemu`), else
    /// Debian's.
    fn data_dir(&self) -> PathBuf {
        self.program
            .parent()
            .map(|d| d.join("../share/qemu"))
            .filter(|d| d.is_dir())
            .unwrap_or_else(|| PathBuf::from("/usr/share/qemu"))
    }

    /// The default firmware of the machine, passed explicitly with `-bios`,
    /// so the file that is measured is the file that runs: for microvm
    /// QEMU's own qboot (`bios-microvm.bin`, from QEMU's data directory), for
    /// q35 OVMF from Debian's `ovmf` package.
    pub fn default_firmware(&self) -> Result<PathBuf, BackendError> {
        if self.machine == Machine::Q35 {
            return OVMF_CANDIDATES
                .iter()
                .map(Path::new)
                .find(|p| p.is_file())
                .and_then(|p| p.canonicalize().ok())
                .ok_or(BackendError::NoOvmf);
        }
        // From the data directory QEMU is given with `-L`.
        let qboot = self.data_dir().join("bios-microvm.bin");
        match qboot.canonicalize() {
            Ok(p) if p.is_file() => Ok(p),
            _ => Err(BackendError::NoFirmware),
        }
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

/// No default devices and no configuration files: QEMU's guest has exactly
/// what the command line names (the first arguments of every guest).
const CLOSED: [&str; 2] = ["-nodefaults", "-no-user-config"];

/// `-machine` of a q35 guest: the chipset with `props` (SEV-SNP's
/// confidential-guest support), without the VMware backdoor port (on by
/// default under TCG).
fn q35_machine(props: &[&str]) -> String {
    [&["q35"], props, &["vmport=off"]].concat().join(",")
}

/// What QEMU loads, the same on every machine: `-bios`, `-kernel`,
/// `-initrd` and `-append`, each where given, in this order.
fn image_args(
    bios: Option<&Path>,
    kernel: Option<&Path>,
    initrd: Option<&Path>,
    append: Option<&str>,
) -> Vec<OsString> {
    let files = [("-bios", bios), ("-kernel", kernel), ("-initrd", initrd)];
    let mut a: Vec<OsString> = files
        .into_iter()
        .filter_map(|(flag, p)| Some([flag.into(), p?.into()]))
        .flatten()
        .collect();
    if let Some(c) = append {
        a.extend(["-append".into(), c.into()]);
    }
    a
}

/// QEMU's command line for `cfg` on `machine` (SNP when `snp` is given).
/// Kept free of I/O so tests can inspect it.
fn args(
    cfg: &VmConfig,
    accel: Accel,
    machine: Machine,
    snp: Option<(&SnpSpec, Option<[u8; 32]>)>,
    s: &Sockets,
) -> Result<Vec<OsString>, BackendError> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |x: &str| a.push(x.into());
    if snp.is_none() {
        CLOSED.into_iter().for_each(&mut push);
    }
    push("-S");
    push("-display");
    push("none");
    push("-msg");
    push("timestamp=off");
    push("-sandbox");
    push("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    push("-chardev");
    push(&format!("socket,id=console,path={}", s.console.display()));
    push("-serial");
    push("chardev:console");
    push("-chardev");
    push(&format!("socket,id=agent,path={}", s.agent.display()));
    match machine {
        // microvm has one UART; COM2 is added explicitly (the guest's ttyS1).
        Machine::Microvm => {
            push("-device");
            push("isa-serial,chardev=agent,iobase=0x2f8,irq=3");
        }
        // q35's second -serial is COM2 (0x2f8, IRQ 3).
        Machine::Q35 => {
            push("-serial");
            push("chardev:agent");
        }
    }
    push("-chardev");
    push(&format!("socket,id=qmp,path={}", s.qmp.display()));
    push("-mon");
    push("chardev=qmp,mode=control");
    if let Some((spec, host_data)) = snp {
        if machine != Machine::Q35 {
            return Err(SnpError::NotQ35(machine.name()).into());
        }
        if accel != Accel::Kvm {
            return Err(SnpError::NotKvm.into());
        }
        let host_data = host_data.ok_or(SnpError::NoHostData)?;
        let ovmf = cfg.firmware.as_ref().ok_or(SnpError::NoFirmware)?.fd_path();
        let c = SnpQemuConfig {
            ovmf,
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory.0,
            cpu_model: spec.vcpu_type.clone(),
            policy: spec.policy,
            cbitpos: snp::CBITPOS,
            reduced_phys_bits: snp::REDUCED_PHYS_BITS,
            host_data: Some(host_data),
            kernel: Some(cfg.kernel.fd_path()),
            initrd: Some(cfg.initrd.fd_path()),
            append: Some(cfg.cmdline.clone()),
        };
        a.extend(snp::snp_qemu_args(&c).map_err(SnpError::from)?);
        return Ok(a);
    }
    push("-machine");
    push(&match machine {
        Machine::Microvm => MACHINE.into(),
        Machine::Q35 => q35_machine(&[]),
    });
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
    let bios = cfg.firmware.as_ref().map(|fw| fw.fd_path());
    let (kernel, initrd) = (cfg.kernel.fd_path(), cfg.initrd.fd_path());
    a.extend(image_args(bios.as_deref(), Some(&kernel), Some(&initrd), Some(&cfg.cmdline)));
    Ok(a)
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
        let snp = self.snp.as_ref().map(|spec| (spec, self.host_data));
        // Built before anything exists, so a refused SNP configuration starts nothing.
        let probe = Sockets { console: "c".into(), agent: "a".into(), qmp: "q".into() };
        args(cfg, accel, self.machine, snp, &probe)?;
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

        // The sealed executable, under its own name in QEMU's argv[0].
        let mut cmd = Command::new(self.exe.fd_path());
        cmd.arg0(&self.program)
            .arg("-L")
            .arg(self.data_dir())
            .args(args(cfg, accel, self.machine, snp, &s)?)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The sealed images reach QEMU as inherited descriptors it opens as
        // /proc/self/fd/N (see `args`); the executable's stays open too, for
        // an interpreter (`#!`) to read it.
        let image_fds: Vec<RawFd> =
            [Some(&self.exe), Some(&cfg.kernel), Some(&cfg.initrd), cfg.firmware.as_ref()]
                .into_iter()
                .flatten()
                .map(|i| i.raw_fd())
                .collect();
        process::vmm_command(&mut cmd, image_fds);
        let mut vmm =
            process::VmmProcess::spawn(&mut cmd, "qemu", || self.program.display().to_string())?;

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
                        Err(e) => {
                            let _ = vmm.stop();
                            return Err(sock_err(e));
                        }
                    }
                }
            }
            if let Ok(Some(_)) = vmm.try_wait() {
                let status = vmm.stop().map_err(sock_err)?;
                return Err(BackendError::StartFailed { status, stderr: vmm.stderr_tail() });
            }
            if Instant::now() > deadline {
                let _ = vmm.stop();
                return Err(BackendError::StartTimeout {
                    secs: CONNECT_TIMEOUT.as_secs(),
                    stderr: vmm.stderr_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let [Some(console), Some(agent), Some(qmp)] = conns else {
            unreachable!("loop exits only when all three are connected");
        };
        let setup = [&console, &agent, &qmp]
            .iter()
            .try_for_each(|c| c.set_nonblocking(false))
            .and_then(|_| agent.set_write_timeout(Some(CHANNEL_WRITE_TIMEOUT)))
            .and_then(|_| agent.try_clone());
        let channel_rx = match setup {
            Ok(rx) => rx,
            Err(e) => {
                let _ = vmm.stop();
                return Err(sock_err(e));
            }
        };
        let qmp = match QmpClient::connect(qmp, events.clone()) {
            Ok(q) => q,
            Err(e) => {
                let _ = vmm.stop();
                return Err(e.into());
            }
        };
        let (pid, pidfd) = (vmm.pid(), vmm.pidfd());
        vmm.supervise(|| {}, Vec::new(), events, dir);
        Ok(StartedVm {
            streams: GuestStreams {
                console: Box::new(console),
                channel_rx: Box::new(channel_rx),
                channel_tx: Box::new(agent),
            },
            power: Box::new(QemuPower { qmp, pid, pidfd }),
            description: format!(
                "{} (pid {pid}, -M {}{}, -accel {accel}, {} vCPU, {})",
                self.program.display(),
                self.machine,
                if self.snp.is_some() { " SEV-SNP" } else { "" },
                cfg.vcpus,
                cfg.memory
            ),
        })
    }
}

struct QemuPower {
    qmp: QmpClient,
    pid: u32,
    pidfd: Arc<process::Pidfd>,
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
    fn kill(&mut self) -> Result<(), BackendError> {
        self.pidfd.kill().map_err(BackendError::Kill)
    }
    fn vmm_pid(&self) -> Option<u32> {
        Some(self.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_config::MemorySize;

    fn cfg() -> (tempfile::TempDir, VmConfig) {
        let dir = tempfile::tempdir().unwrap();
        let file = |n: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, n).unwrap();
            p
        };
        let (k, i, fw) = (file("k"), file("i"), file("fw"));
        let cfg = VmConfig::stage(&k, &i, Some(&fw), "console=ttyS0", MemorySize(256), 2).unwrap();
        (dir, cfg)
    }

    #[test]
    fn command_line_is_closed() {
        let s = Sockets { console: "/d/c".into(), agent: "/d/a".into(), qmp: "/d/q".into() };
        let (dir, cfg) = cfg();
        let a: Vec<String> = args(&cfg, Accel::Tcg, Machine::Microvm, None, &s)
            .unwrap()
            .iter()
            .map(|x| x.to_string_lossy().into())
            .collect();
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
        let kvm = args(&cfg, Accel::Kvm, Machine::Microvm, None, &s).unwrap();
        assert!(kvm.windows(2).any(|w| w[0] == "-cpu" && w[1] == "host"));
        // q35: the chipset's two UARTs, OVMF as -bios, no VMware port.
        let q35: Vec<String> = args(&cfg, Accel::Tcg, Machine::Q35, None, &s)
            .unwrap()
            .iter()
            .map(|x| x.to_string_lossy().into())
            .collect();
        let joined = q35.join(" ");
        assert!(joined.contains("-serial chardev:console"), "{joined}");
        assert!(joined.contains("-serial chardev:agent"), "{joined}");
        assert!(!joined.contains("isa-serial"), "{joined}");
        assert!(joined.contains("-machine q35,vmport=off -accel tcg -cpu max"), "{joined}");
        // The sealed copies, through the descriptors QEMU inherits.
        let fd = |i: &crate::image::SealedImage| format!("/proc/self/fd/{}", i.raw_fd());
        let images = format!(
            "-bios {} -kernel {} -initrd {} -append console=ttyS0",
            fd(cfg.firmware.as_ref().unwrap()),
            fd(&cfg.kernel),
            fd(&cfg.initrd)
        );
        assert!(joined.contains(&images), "{joined}");
        assert!(!joined.contains(&dir.path().display().to_string()), "{joined}");
        for forbidden in ["-gdb", "-s", "-monitor", "-qmp", "-incoming", "-loadvm", "-snapshot"] {
            assert!(!q35.iter().any(|x| x == forbidden), "{forbidden} present: {q35:?}");
        }
    }

    #[test]
    fn locate_reports_missing_qemu() {
        let e = Qemu::locate(Some(Path::new("/nonexistent/qemu"))).err().unwrap();
        assert!(e.to_string().contains("/nonexistent/qemu does not exist"));
    }
}

/// The complete SNP invocation for one configuration, from the resolved VM
/// through its measured launch records to QEMU's argument list.
#[cfg(test)]
mod snp_golden {
    use super::*;
    use crate::accel::AccelChoice;
    use crate::backend::BackendChoice;
    use crate::run::{Resolved, VmSpec, Vmm};
    use crate::vm_config::MemorySize;
    use tellus_measured_boot::records::launch_records;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/test-vectors/snp-measure/ovmf_AmdSev_suffix.bin")
    }

    #[test]
    fn full_snp_invocation_and_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let file = |n: &str, b: &[u8]| {
            let p = dir.path().join(n);
            std::fs::write(&p, b).unwrap();
            p
        };
        let (qemu, kernel, initrd) =
            (file("qemu", b"qemu"), file("vmlinuz", b"kernel"), file("initrd", b"initrd"));
        let cmdline = "console=ttyS0 reboot=t panic=-1";
        let spec = VmSpec {
            name: "snp-golden".into(),
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline: Some(cmdline.into()),
            cmdline_extra: None,
            memory: MemorySize(2048),
            vcpus: 2,
            firmware: Some(fixture()),
            backend: BackendChoice::Qemu,
            accel: AccelChoice::Auto,
            qemu: Some(qemu.clone()),
            vmm: None,
            machine: None,
            sev_snp: Some(SnpSpec::default()),
        };
        let q = Qemu::locate(Some(&qemu))
            .unwrap()
            .with_machine(Machine::Q35)
            .with_snp(SnpSpec::default());
        let r = Resolved {
            vm: VmConfig::stage(&kernel, &initrd, Some(&fixture()), cmdline, MemorySize(2048), 2)
                .unwrap(),
            accel: Accel::Kvm,
            accel_reason: String::new(),
            vmm: Vmm::Qemu(q),
        };
        let inputs = crate::measure::launch_inputs(&spec, &r, 13, None).unwrap();
        let recs = launch_records(&inputs).unwrap();
        let Vmm::Qemu(mut q) = r.vmm else { unreachable!("built as QEMU above") };
        q.bind_launch(&recs);

        // The launch-config record names the machine and the SNP policy ...
        let lc = recs.iter().find(|x| x.kind.name() == "launch-config").unwrap();
        assert_eq!(
            String::from_utf8(lc.encode_content()[5 + "launch-config".len() + 5..].to_vec())
                .unwrap(),
            r#"{"backend":"qemu","accel":"kvm","machine":"q35","vcpus":2,"memory_mib":2048,"devices":["com1:console","com2:agent-channel"],"sev_policy":196608,"absent_features":["introspection","intervention","snapshot","migration"]}"#
        );
        // ... and the SNP record the MEASUREMENT of this OVMF, kernel, initrd
        // and cmdline (as `tellus measure snp --mode snp --vcpus 2
        // --vcpu-type EPYC-v4 --ovmf ovmf_AmdSev_suffix.bin --kernel K
        // --initrd I --append C` prints it) and HOST_DATA = SHA-256 of the
        // launch-config record's content TLV (0x74, u32 length, content).
        let snp = recs.iter().find(|x| x.kind.name() == "snp-launch-digest").unwrap();
        assert_eq!(
            snp.payload(),
            serde_json::json!({
                "measurement": GOLDEN_MEASUREMENT,
                "host_data": GOLDEN_HOST_DATA_HEX,
                "policy": 0x30000,
                "vcpu_type": "EPYC-v4",
                "vmm_type": "QEMU",
                "guest_features": 1,
            })
        );
        assert_eq!(recs.last().unwrap().kind.name(), "separator");

        let s = Sockets { console: "/d/c".into(), agent: "/d/a".into(), qmp: "/d/q".into() };
        let a =
            args(&r.vm, Accel::Kvm, q.machine, Some((q.snp.as_ref().unwrap(), q.host_data)), &s)
                .unwrap();
        // QEMU opens the sealed copies through the descriptors it inherits.
        let fd = |i: &crate::image::SealedImage| i.fd_path().display().to_string();
        let names = [
            (fd(r.vm.firmware.as_ref().unwrap()), "$OVMF_FD"),
            (fd(&r.vm.kernel), "$KERNEL_FD"),
            (fd(&r.vm.initrd), "$INITRD_FD"),
        ];
        let line: Vec<String> = a
            .iter()
            .map(|x| x.to_string_lossy().into_owned())
            .map(|x| names.iter().find(|(p, _)| *p == x).map_or(x, |(_, n)| n.to_string()))
            .collect();
        let golden = [
            "-S",
            "-display",
            "none",
            "-msg",
            "timestamp=off",
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-chardev",
            "socket,id=console,path=/d/c",
            "-serial",
            "chardev:console",
            "-chardev",
            "socket,id=agent,path=/d/a",
            "-serial",
            "chardev:agent",
            "-chardev",
            "socket,id=qmp,path=/d/q",
            "-mon",
            "chardev=qmp,mode=control",
            "-nodefaults",
            "-no-user-config",
            "-accel",
            "kvm",
            "-machine",
            "q35,confidential-guest-support=sev0,memory-backend=ram0,vmport=off",
            "-object",
            "memory-backend-memfd,id=ram0,size=2048M,share=true,prealloc=false",
            "-object",
            &format!(
                "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,\
                 kernel-hashes=on,host-data={GOLDEN_HOST_DATA_B64}"
            ),
            "-cpu",
            "EPYC-v4",
            "-smp",
            "2",
            "-m",
            "2048M",
            "-bios",
            "$OVMF_FD",
            "-kernel",
            "$KERNEL_FD",
            "-initrd",
            "$INITRD_FD",
            "-append",
            "console=ttyS0 reboot=t panic=-1",
        ];
        assert_eq!(line, golden);

        // Without bound records, on microvm, or under TCG: no SNP invocation.
        let spec_ = q.snp.clone().unwrap();
        assert!(matches!(
            args(&r.vm, Accel::Kvm, Machine::Q35, Some((&spec_, None)), &s),
            Err(BackendError::Snp(SnpError::NoHostData))
        ));
        assert!(matches!(
            args(&r.vm, Accel::Kvm, Machine::Microvm, Some((&spec_, q.host_data)), &s),
            Err(BackendError::Snp(SnpError::NotQ35("microvm")))
        ));
        assert!(matches!(
            args(&r.vm, Accel::Tcg, Machine::Q35, Some((&spec_, q.host_data)), &s),
            Err(BackendError::Snp(SnpError::NotKvm))
        ));
    }

    /// `tellus measure snp` on the same inputs (checked when this was written).
    const GOLDEN_MEASUREMENT: &str = "034c889e4075efabeb1bdfe66e83de18dc0e1bf7019efd969d386ee07acb168dfa7fcbe828c4f1408a59e9c5c75100a1";
    /// SHA-256 of the content TLV above, computed with Python's hashlib.
    const GOLDEN_HOST_DATA_HEX: &str =
        "1c1771802cdbc708bc664211aa9baf8d2a210cfecfea25d039ccee17fbca6eae";
    const GOLDEN_HOST_DATA_B64: &str = "HBdxgCzbxwi8ZkIRqpuvjSohDP7P6iXQOczuF/vKbq4=";
}
