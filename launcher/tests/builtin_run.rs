//! `tellus run --backend builtin` end to end: the real launcher binary, a
//! real swtpm for the measured launch, the control socket and `tellus ctl`,
//! and a test payload booted by the built-in VMM on /dev/kvm (PVM here).
//! Exact console output, agent-channel outcome and exit codes.

mod builtin_support;
mod common;

use builtin_support::*;
use common::{collect_output, tellus, tellus_run};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swtpm_tests::Swtpm;
use tellus_launcher::privileges::ThreadPrivileges;

const TIMEOUT: Duration = Duration::from_secs(60);
/// What `tellus run --backend builtin` passes when no `--cmdline` is given.
const CMDLINE: &str = tellus_launcher::backend::builtin::DEFAULT_CMDLINE;

struct Run {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    guest: Guest,
    tpm: Swtpm,
}

impl Run {
    fn start(guest: Guest, extra: &[&str]) -> Run {
        let tpm = Swtpm::start();
        let mut cmd = tellus_run(&tpm.addr(), &tpm.dir.path().join("state"));
        cmd.arg("--backend")
            .arg("builtin")
            .arg("--kernel")
            .arg(&guest.kernel)
            .arg("--initrd")
            .arg(&guest.initrd)
            .arg("--memory")
            .arg("64M")
            .arg("--control-socket")
            .arg(guest.path("ctl.sock"))
            .arg("--console-log")
            .arg(guest.path("console.log"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (stderr, stdout) = collect_output(&mut child);
        Run { child, stderr, stdout, guest, tpm }
    }

    /// Starts `tellus run` on payload `v` and waits for the agent's `Ready`.
    fn ready(v: Variant, extra: &[&str]) -> Run {
        let mut r = Run::start(Guest::payload(v), extra);
        r.wait_stderr("guest agent ready after");
        r
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn wait_stderr(&mut self, needle: &str) {
        let end = Instant::now() + TIMEOUT;
        while !self.stderr().contains(needle) {
            if let Ok(Some(st)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!("tellus exited ({st}) before {needle:?}:\n{}", self.stderr());
            }
            assert!(Instant::now() < end, "no {needle:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ctl(&self, request: &str) -> serde_json::Value {
        let out = tellus()
            .arg("ctl")
            .arg("--socket")
            .arg(self.guest.path("ctl.sock"))
            .arg(request)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctl {request}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200)); // readers drain
                return st;
            }
            assert!(Instant::now() < end, "tellus did not exit:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn console_log(&self) -> String {
        String::from_utf8(std::fs::read(self.guest.path("console.log")).unwrap()).unwrap()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn run_builtin_payload_ready_then_ctl_shutdown_through_the_agent() {
    if !kvm_usable_or_skip("run_builtin_payload_ready_then_ctl_shutdown_through_the_agent") {
        return;
    }
    let mut r = Run::ready(Variant::Ready, &[]);
    assert!(r
        .stderr()
        .contains(&format!("tellus-agent {AGENT_VERSION}, guest uptime {UPTIME_MS} ms")));
    let status = r.ctl("status");
    assert_eq!(status["status"]["backend"], "builtin");
    assert_eq!(status["status"]["accel"], "kvm");
    assert_eq!(status["status"]["agent_ready"], true);
    // The VMM is a process of its own, named for what it is.
    let vmm = status["status"]["vmm_pid"].as_u64().expect("vmm_pid");
    assert_ne!(vmm, u64::from(r.child.id()));
    let comm = std::fs::read_to_string(format!("/proc/{vmm}/comm")).unwrap();
    assert_eq!(comm.trim_end(), "tellus-vmm");
    let ppid = std::fs::read_to_string(format!("/proc/{vmm}/stat")).unwrap();
    let ppid = ppid.rsplit(") ").next().unwrap().split(' ').nth(1).unwrap().to_string();
    assert_eq!(ppid, r.child.id().to_string(), "tellus-vmm is tellus's child");
    // Every thread runs under the process-wide filter (two programs), and
    // every thread that handles guest or launcher bytes under its own
    // allow-list besides; the supervisor, which rebuilds VMs, and the main
    // thread, which only waits for the end, under the process filter only.
    // (KVM's own kernel worker, kvm-nx-lpage-recovery, is listed among
    // the process's tasks on some hosts; it is not a VMM thread.)
    let mut modes = seccomp_modes(vmm as u32);
    modes.retain(|(name, _)| !name.starts_with("kvm-"));
    for (name, (mode, filters)) in &modes {
        let own = ["vcpu0", "com2-input", "vmm-control"].contains(&name.as_str());
        assert_eq!((*mode, *filters), (2, if own { 3 } else { 2 }), "thread {name}: {modes:?}");
    }
    assert_eq!(modes.len(), 5, "{modes:?}");
    let resp = r.ctl("shutdown");
    assert_eq!(resp["message"], "power-off requested from the guest agent");
    let st = r.wait_exit();
    assert_eq!(st.code(), Some(0), "{}", r.stderr());
    let expected = expected_console(Variant::Ready, CMDLINE, 1);
    assert_eq!(r.console_log(), expected);
    assert_eq!(String::from_utf8_lossy(&r.stdout.lock().unwrap()), expected);
    let err = r.stderr();
    // The payload powers off by triple fault (no ACPI in the built-in VMM).
    assert!(err.contains("VM shut down (guest-triple-fault)"), "{err}");
    assert!(err.contains("recorded stop (guest-triple-fault)"), "{err}");
    assert!(!err.contains("agent channel: dropped"), "{err}");
}

#[test]
fn run_builtin_payload_garbage_is_reported_then_ready() {
    if !kvm_usable_or_skip("run_builtin_payload_garbage_is_reported_then_ready") {
        return;
    }
    let mut r = Run::ready(Variant::Garbage, &[]);
    r.ctl("shutdown");
    assert_eq!(r.wait_exit().code(), Some(0), "{}", r.stderr());
    assert_eq!(r.console_log(), expected_console(Variant::Garbage, CMDLINE, 1));
    let err = r.stderr();
    assert!(err.contains(&format!("agent channel: dropped {} bytes in", GARBAGE.len())), "{err}");
}

#[test]
fn run_builtin_spinning_guest_is_stopped_by_ctl_shutdown() {
    if !kvm_usable_or_skip("run_builtin_spinning_guest_is_stopped_by_ctl_shutdown") {
        return;
    }
    let mut r = Run::start(Guest::payload(Variant::Spin), &["--vcpus", "2"]);
    r.wait_stderr("vCPUs running");
    let end = Instant::now() + TIMEOUT;
    while !r.console_log().contains("spinning\n") {
        assert!(Instant::now() < end, "{}", r.console_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Agent not ready, no power button: the launcher stops the VM.
    r.ctl("shutdown");
    let st = r.wait_exit();
    assert_eq!(st.code(), Some(0), "{}", r.stderr());
    assert_eq!(r.console_log(), expected_console(Variant::Spin, CMDLINE, 2));
    let err = r.stderr();
    assert!(err.contains("no ACPI power button"), "{err}");
    assert!(err.contains("VM shut down (host-terminate)"), "{err}");
}

#[test]
fn run_builtin_triple_fault_ends_the_vm() {
    if !kvm_usable_or_skip("run_builtin_triple_fault_ends_the_vm") {
        return;
    }
    let mut r = Run::start(Guest::payload(Variant::TripleFault), &[]);
    let st = r.wait_exit();
    assert_eq!(st.code(), Some(0), "{}", r.stderr());
    assert_eq!(r.console_log(), expected_console(Variant::TripleFault, CMDLINE, 1));
    assert!(r.stderr().contains("recorded stop (guest-triple-fault)"), "{}", r.stderr());
}

#[test]
fn run_builtin_refuses_an_old_kernel_before_measuring() {
    if !kvm_usable_or_skip("run_builtin_refuses_an_old_kernel_before_measuring") {
        return;
    }
    let old = bzimage(&program(Variant::Ready), Header { protocol: 0x020b, ..Header::default() });
    let mut r = Run::start(Guest::new(&old), &[]);
    let st = r.wait_exit();
    assert_eq!(st.code(), Some(1), "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("kernel boot protocol 2.11 is too old"), "{err}");
    assert!(!err.contains("measured"), "measured before refusing: {err}");
    // --firmware makes no sense for the built-in VMM.
    let mut r = Run::start(Guest::payload(Variant::Ready), &["--firmware", "/etc/hostname"]);
    assert_eq!(r.wait_exit().code(), Some(1));
    assert!(r.stderr().contains("runs no firmware"), "{}", r.stderr());
}

#[test]
fn run_builtin_reports_a_vmm_that_is_missing_or_fails_to_start() {
    if !kvm_usable_or_skip("run_builtin_reports_a_vmm_that_is_missing_or_fails_to_start") {
        return;
    }
    // Missing: refused before anything is measured.
    let mut r = Run::start(Guest::payload(Variant::Ready), &["--tellus-vmm", "/nonexistent/vmm"]);
    assert_eq!(r.wait_exit().code(), Some(1));
    let err = r.stderr();
    assert!(err.contains("executable /nonexistent/vmm cannot be used (No such file"), "{err}");
    assert!(err.contains("or pass --tellus-vmm PATH"), "{err}");
    assert!(!err.contains("measured"), "measured before refusing: {err}");
    // An executable that ends without building a VM: measured (it is what
    // would have run), then reported with its exit status; no guest ran.
    for (exe, status) in [("/bin/false", "exit status: 1"), ("/bin/true", "exit status: 0")] {
        let mut r = Run::start(Guest::payload(Variant::Ready), &["--tellus-vmm", exe]);
        assert_eq!(r.wait_exit().code(), Some(1), "{}", r.stderr());
        let err = r.stderr();
        assert!(err.contains(&format!("tellus-vmm failed to start the VM ({status})")), "{err}");
        assert!(err.contains("measured 9 launch records into PCR 13"), "{err}");
        assert!(!err.contains("guest agent ready"), "{err}");
        assert_eq!(r.console_log(), "", "{exe}");
    }
}

/// `tests/fake_vmm.c` built with `-D{variant}` into `dir`.
fn fake_vmm(dir: &Path, variant: &str) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_vmm.c");
    let out = dir.join(format!("fake-vmm-{variant}"));
    let st = Command::new("cc").arg(format!("-D{variant}")).arg(&src).arg("-o").arg(&out).status();
    assert!(st.unwrap().success(), "cc {}", src.display());
    out
}

/// Whether process `pid` is gone (or a zombie nobody waits for).
fn gone(pid: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')) {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_builtin_stops_a_vmm_that_breaks_the_protocol_or_ignores_terminate() {
    if !kvm_usable_or_skip("run_builtin_stops_a_vmm_that_breaks_the_protocol_or_ignores_terminate")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A line outside the protocol: killed at once, the run fails.
    let garbage = fake_vmm(dir.path(), "GARBAGE");
    let mut r = Run::start(Guest::payload(Variant::Ready), &["--tellus-vmm", path_str(&garbage)]);
    // Exit status 3: the VMM died (it was killed before the vCPUs could
    // start, and the launcher reports its end, not the failed start).
    assert_eq!(r.wait_exit().code(), Some(3), "{}", r.stderr());
    let err = r.stderr();
    assert!(
        err.contains("tellus-vmm broke its control protocol (a host reset nobody asked for)"),
        "{err}"
    );
    assert!(err.contains("the VMM died while the VM was running (signal: 9"), "{err}");
    assert!(err.contains("recorded stop (vmm-died)"), "{err}");
    // The fake is gone.
    let pid: u64 = err
        .split("tellus-vmm pid ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {err}"));
    assert!(gone(pid), "fake VMM {pid} still there");
    // Deaf to `T`: killed after the grace period, the run ends.
    let deaf = fake_vmm(dir.path(), "DEAF");
    let mut r = Run::start(Guest::payload(Variant::Ready), &["--tellus-vmm", path_str(&deaf)]);
    r.wait_stderr("vCPUs running");
    let pid = r.ctl("status")["status"]["vmm_pid"].as_u64().unwrap();
    let started = Instant::now();
    r.ctl("shutdown");
    r.wait_exit();
    let err = r.stderr();
    assert!(err.contains("the VMM did not exit within 5s of being told to; killing it"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(5), "{err}");
    assert!(gone(pid), "fake VMM {pid} still there");
}

#[test]
fn tellus_vmm_dies_with_its_launcher() {
    if !kvm_usable_or_skip("tellus_vmm_dies_with_its_launcher") {
        return;
    }
    let mut r = Run::start(Guest::payload(Variant::Spin), &[]);
    r.wait_stderr("vCPUs running");
    let pid = r.ctl("status")["status"]["vmm_pid"].as_u64().unwrap();
    assert!(!gone_now(pid));
    r.child.kill().unwrap(); // SIGKILL: no clean-up in the launcher
    r.child.wait().unwrap();
    assert!(gone(pid), "tellus-vmm {pid} outlived its launcher");
}

fn gone_now(pid: u64) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn tellus_vmm_refuses_what_the_launcher_would_not_hand_it() {
    let vmm = env!("CARGO_BIN_EXE_tellus-vmm");
    let out = Command::new(vmm).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--protocol is missing") && err.contains("not by hand"), "{err}");
    let out = Command::new(vmm).args(["--protocol", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "speaks control protocol 1, its launcher 2; use the tellus-vmm built with this tellus"
        ),
        "{err}"
    );
    let out = Command::new(vmm).args(["--protocol", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kernel-fd is missing") && err.contains("not by hand"), "{err}");
    // A kernel that is a plain file, not the launcher's sealed copy.
    let guest = Guest::payload(Variant::Ready);
    let kernel = std::fs::File::open(&guest.kernel).unwrap();
    let fd = kernel.as_raw_fd();
    let mut cmd = Command::new(vmm);
    cmd.args(["--protocol", "1", "--kernel-fd", "3", "--initrd-fd", "4", "--console-fd", "5"])
        .args(["--channel-fd", "6"])
        .args(["--control-fd", "7", "--vcpus", "1", "--memory-mib", "64", "--cmdline", "x"]);
    // SAFETY: runs in the forked child before exec and only calls dup2(2)
    // and fcntl(2), which are async-signal-safe, on descriptors the child
    // has (dup2 onto itself keeps close-on-exec, hence the fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) == -1 || libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kernel /proc/self/fd/3 is not sealed against change"), "{err}");
}

#[test]
fn run_builtin_measures_what_predict_says() {
    if !kvm_usable_or_skip("run_builtin_measures_what_predict_says") {
        return;
    }
    let guest = Guest::payload(Variant::Ready);
    let out = tellus()
        .args(["measure", "predict", "--backend", "builtin", "--memory", "64M", "--output", "json"])
        .arg("--kernel")
        .arg(&guest.kernel)
        .arg("--initrd")
        .arg(&guest.initrd)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let config = p["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "launch-config")
        .expect("launch-config record");
    assert_eq!(config["backend"], "builtin");
    assert_eq!(config["machine"], "tellus-builtin");
    assert_eq!(config["accel"], "kvm");
    assert_eq!(
        config["devices"],
        serde_json::json!(["com1:console", "com2:agent-channel", "i8042:reset"])
    );
    // No firmware record (the built-in VMM runs none); the VMM binary is
    // tellus-vmm, measured after the launcher.
    let kinds: Vec<&str> =
        p["records"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert!(!kinds.contains(&"firmware"), "{kinds:?}");
    assert_eq!(kinds[..2], ["launcher-binary", "vmm-binary"]);
    let vmm = &p["records"][1];
    let file = std::fs::read(env!("CARGO_BIN_EXE_tellus-vmm")).unwrap();
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &file));
    assert_eq!(vmm["sha256"], format!("sha256:{sha}"), "{vmm}");
    let sha256 = p["pcr_values"]["sha256"].as_str().unwrap().to_string();

    // A fresh swtpm starts PCR 13 at zero, so after the launch it holds
    // exactly the predicted value.
    let mut r = Run::start(guest, &[]);
    r.wait_stderr("guest agent ready after");
    assert!(
        r.stderr().contains(&format!("PCR 13 {sha256}")),
        "predicted {sha256}:\n{}",
        r.stderr()
    );
    r.ctl("shutdown");
    assert_eq!(r.wait_exit().code(), Some(0), "{}", r.stderr());
}

#[test]
fn run_builtin_ctl_reboot_through_the_agent_boots_again() {
    if !kvm_usable_or_skip("run_builtin_ctl_reboot_through_the_agent_boots_again") {
        return;
    }
    let mut r = Run::ready(Variant::Ready, &[]);
    let resp = r.ctl("reboot");
    assert_eq!(resp["message"], "reboot requested from the guest agent");
    // The payload resets through the i8042; the VMM boots a fresh VM on the
    // same streams, and its agent is ready again.
    r.wait_stderr("VM reset (guest-reset); boot 2");
    r.wait_stderr("guest agent ready again after");
    let status = r.ctl("status");
    assert_eq!(status["status"]["boots"], 2);
    assert_eq!(status["status"]["state"], "running");
    assert_eq!(status["status"]["agent_ready"], true);
    r.ctl("shutdown");
    assert_eq!(r.wait_exit().code(), Some(0), "{}", r.stderr());
    assert_eq!(
        r.console_log(),
        expected_rebooted(Variant::Ready, CMDLINE, 1)
            + &expected_console(Variant::Ready, CMDLINE, 1)
    );
    assert!(r.stderr().contains("recorded stop (guest-triple-fault)"), "{}", r.stderr());
}

#[test]
fn run_builtin_ctl_reboot_without_agent_resets_the_vm() {
    if !kvm_usable_or_skip("run_builtin_ctl_reboot_without_agent_resets_the_vm") {
        return;
    }
    let mut r = Run::start(Guest::payload(Variant::Spin), &["--vcpus", "2"]);
    let once = expected_console(Variant::Spin, CMDLINE, 2);
    let wait_console = |r: &Run, text: &str| {
        let end = Instant::now() + TIMEOUT;
        // The log exists once the VMM has started.
        let now = || std::fs::read(r.guest.path("console.log")).unwrap_or_default();
        while now() != text.as_bytes() {
            assert!(Instant::now() < end, "{:?}", String::from_utf8_lossy(&now()));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_console(&r, &once);
    let resp = r.ctl("reboot");
    assert_eq!(resp["message"], "agent not ready: VM reset");
    r.wait_stderr("VM reset (host-reset); boot 2");
    wait_console(&r, &once.repeat(2));
    let status = r.ctl("status");
    assert_eq!(status["status"]["boots"], 2);
    assert_eq!(status["status"]["state"], "rebooting");
    r.ctl("shutdown");
    assert_eq!(r.wait_exit().code(), Some(0), "{}", r.stderr());
    assert_eq!(r.console_log(), once.repeat(2));
    assert!(r.stderr().contains("recorded stop (host-terminate)"), "{}", r.stderr());
}

/// Every thread of `pid`: (name, privilege state).
fn threads(pid: u32) -> Vec<(String, ThreadPrivileges)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let (Ok(status), Ok(comm)) = (
            std::fs::read_to_string(t.path().join("status")),
            std::fs::read_to_string(t.path().join("comm")),
        ) else {
            continue; // ended meanwhile
        };
        out.push((comm.trim().to_string(), ThreadPrivileges::parse(&status).unwrap()));
    }
    out
}

/// (thread name, (`Seccomp:` mode, `Seccomp_filters:` count)) of every
/// thread of `pid`.
fn seccomp_modes(pid: u32) -> Vec<(String, (u32, u32))> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap();
        let field = |k: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().parse().unwrap())
                .unwrap()
        };
        out.push((comm.trim().to_string(), (field("Seccomp:"), field("Seccomp_filters:"))));
    }
    out.sort();
    out
}

fn dev_kvm_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == Path::new("/dev/kvm")))
        .count()
}

fn assert_dropped(pid: u32, setpcap: bool) -> Vec<String> {
    let ts = threads(pid);
    for (name, p) in &ts {
        assert_eq!(
            (p.cap_inh, p.cap_prm, p.cap_eff, p.cap_amb),
            (0, 0, 0, 0),
            "thread {name} kept capabilities: {p:?}"
        );
        assert!(p.no_new_privs, "thread {name}: no_new_privs not set");
        if setpcap {
            assert_eq!(p.cap_bnd, 0, "thread {name} kept its bounding set");
        }
    }
    ts.into_iter().map(|(n, _)| n).collect()
}

#[test]
fn run_builtin_drops_privileges_then_reboots_and_records_the_stop() {
    if !kvm_usable_or_skip("run_builtin_drops_privileges_then_reboots_and_records_the_stop") {
        return;
    }
    let me = ThreadPrivileges::current().unwrap();
    if me.cap_eff == 0 {
        swtpm_tests::skip(
            "no capabilities to drop (not run as root)",
            "run_builtin_drops_privileges_then_reboots_and_records_the_stop",
        );
        return;
    }
    let setpcap = me.cap_eff & (1 << 8) != 0;
    let mut r = Run::ready(Variant::Ready, &["--vcpus", "2"]);
    assert!(r.stderr().contains("dropped privileges: capabilities"), "{}", r.stderr());
    assert!(!r.stderr().contains("keep capabilities"), "{}", r.stderr());
    let pid = r.child.id();
    let vmm = r.ctl("status")["status"]["vmm_pid"].as_u64().expect("vmm_pid") as u32;
    let names = assert_dropped(pid, setpcap);
    assert!(names.iter().any(|n| n == "control"), "no control thread in {names:?}");
    // The VMM's threads, in its own process: none keeps a capability either.
    let names = assert_dropped(vmm, setpcap);
    for t in ["vcpu0", "vcpu1", "com2-input", "vmm-supervisor", "vmm-control"] {
        assert!(names.iter().any(|n| n == t), "no thread {t} in {names:?}");
    }
    // Only the VMM holds /dev/kvm.
    assert_eq!((dev_kvm_fds(pid), dev_kvm_fds(vmm)), (0, 1));

    // A reboot after the drop: a fresh VM on the /dev/kvm fd opened before.
    assert_eq!(r.ctl("reboot")["message"], "reboot requested from the guest agent");
    r.wait_stderr("guest agent ready again after");
    assert_dropped(pid, setpcap);
    assert_dropped(vmm, setpcap);
    assert_eq!((dev_kvm_fds(pid), dev_kvm_fds(vmm)), (0, 1));
    assert_eq!(r.ctl("status")["status"]["boots"], 2);

    // A clean shutdown still extends the TPM and appends to the root-owned
    // host log, and the log replays to the PCR.
    r.ctl("shutdown");
    assert_eq!(r.wait_exit().code(), Some(0), "{}", r.stderr());
    assert!(r.stderr().contains("recorded stop (guest-triple-fault)"), "{}", r.stderr());
    let log = r.tpm.dir.path().join("state/launch-log.cel");
    let out = tellus().args(["eventlog", "show", "--output", "json"]).arg(&log).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let recs = shown["records"].as_array().unwrap();
    let kinds: Vec<&str> =
        recs.iter().map(|r| r["content"]["kind"].as_str().unwrap_or("?")).collect();
    assert_eq!(kinds[kinds.len() - 2..], ["stop", "console-log"], "{kinds:?}");
    let stop = &recs[recs.len() - 2]["content"];
    assert_eq!(stop["reason"], "guest-triple-fault", "{stop}");
    assert_eq!(stop["boots"], 2, "{stop}");
    for bank in ["sha256", "sha384"] {
        assert_eq!(shown["pcrs"][bank]["13"], r.tpm.pcrread(bank, 13), "{bank}");
    }
}
