//! Footprint of the built-in VMM, next to QEMU:
//!
//! - peak RSS (`VmHWM`) of the VMM process of `tellus run --backend builtin`
//!   (`tellus-vmm`) minus the resident part of guest RAM, at the guest
//!   agent's `Ready` (goal: at most 8 MiB), and the launcher process beside
//!   it;
//! - the same for the QEMU process of `tellus run --backend qemu` with the
//!   same guest memory size, and the launcher process beside it;
//! - lines of code on the built-in VMM path (goal: at most 10k), and of the
//!   rust-vmm crates it runs on.
//!
//! Guest RAM's resident part is read from `/proc/PID/smaps` (the anonymous
//! mapping of the guest memory size), so what remains is the VMM's own
//! memory. On hardware KVM both VMMs boot the Debian cloud kernel + agent
//! initramfs (scripts/setup.sh). On PVM's `/dev/kvm` a stock kernel cannot
//! boot in the built-in VMM, so it runs the test payload (the same
//! `Ready`/`PowerOff` exchange, tests/builtin_support) and QEMU runs the
//! Linux guest under TCG; the report says which.
//!
//! `cargo bench -p tellus-launcher --bench builtin_footprint -- [--memory MiB]`

#[path = "../tests/builtin_support/mod.rs"]
mod builtin_support;
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::arg;
use swtpm_tests::Swtpm;
use tellus_launcher::accel::{self, KvmKind};

const TIMEOUT: Duration = Duration::from_secs(300);

use swtpm_tests::test_guest as linux_guest;

/// `VmHWM`, `RssAnon` and `RssFile` of `pid`, in KiB.
fn status_kib(pid: u32) -> (u64, u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let get = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    (get("VmHWM:"), get("RssAnon:"), get("RssFile:"))
}

/// Resident KiB of guest RAM: the largest mapping of at least `mib` MiB
/// (and at most 4 MiB more, for a VMM's alignment padding).
fn guest_rss_kib(pid: u32, mib: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let want = mib * 1024;
    let mut best = None;
    let mut size = 0;
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            size = v.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let rss = v.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            if (want..=want + 4096).contains(&size) && best.map_or(true, |(s, _)| size > s) {
                best = Some((size, rss));
            }
        }
    }
    best.map(|(_, rss)| rss)
        .unwrap_or_else(|| panic!("no {mib} MiB guest RAM mapping in pid {pid}"))
}

struct Measured {
    /// (VmHWM, RssAnon, RssFile) of the VMM process.
    vmm: (u64, u64, u64),
    /// Resident KiB of guest RAM in the VMM process.
    guest: u64,
    /// (VmHWM, RssAnon, RssFile) of the launcher when the VMM is separate.
    launcher: Option<(u64, u64, u64)>,
}

/// Runs `tellus run` until the agent is ready, measures, shuts down.
fn measure(backend: &str, kernel: &Path, initrd: &Path, mib: u64, extra: &[&str]) -> Measured {
    let tpm = Swtpm::start();
    let ctl = tpm.dir.path().join("ctl.sock");
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_tellus"))
        .arg("run")
        .args(["--backend", backend])
        .arg("--tpm")
        .arg(tpm.addr())
        .arg("--state-dir")
        .arg(tpm.dir.path().join("state"))
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--memory", &format!("{mib}M")])
        .arg("--control-socket")
        .arg(&ctl)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tellus run");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = lines.clone();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    let end = Instant::now() + TIMEOUT;
    while !lines.lock().unwrap().iter().any(|l| l.contains("guest agent ready")) {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("tellus run exited ({st}):\n{}", lines.lock().unwrap().join("\n"));
        }
        assert!(Instant::now() < end, "no Ready:\n{}", lines.lock().unwrap().join("\n"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new(env!("CARGO_BIN_EXE_tellus"))
        .args(["ctl", "--socket"])
        .arg(&ctl)
        .arg("status")
        .output()
        .expect("tellus ctl");
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let launcher_pid = child.id();
    let m = match v["status"]["vmm_pid"].as_u64() {
        Some(pid) => {
            let pid = pid as u32;
            Measured {
                vmm: status_kib(pid),
                guest: guest_rss_kib(pid, mib),
                launcher: Some(status_kib(launcher_pid)),
            }
        }
        None => Measured {
            vmm: status_kib(launcher_pid),
            guest: guest_rss_kib(launcher_pid, mib),
            launcher: None,
        },
    };
    let _ = Command::new(env!("CARGO_BIN_EXE_tellus"))
        .args(["ctl", "--socket"])
        .arg(&ctl)
        .arg("shutdown")
        .output();
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    m
}

/// Lines that are code: not blank, not only a comment, and before the
/// file's `#[cfg(test)]` module.
fn code_lines(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with("//")
        })
        .count()
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn count_dir(dir: &Path) -> usize {
    let mut files = Vec::new();
    rs_files(dir, &mut files);
    files.iter().map(|f| code_lines(f)).sum()
}

/// `name-version/src` of a crate from Cargo.lock in the cargo registry.
fn crate_src(name: &str) -> Option<PathBuf> {
    let lock =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    let version = loop {
        let l = lines.next()?;
        if l == format!("name = \"{name}\"") {
            break lines.next()?.strip_prefix("version = \"")?.strip_suffix('"')?.to_string();
        }
    };
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    std::fs::read_dir(home.join("registry/src"))
        .ok()?
        .flatten()
        .map(|d| d.path().join(format!("{name}-{version}/src")))
        .find(|p| p.is_dir())
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

/// One line of figures for a process.
fn figures((hwm, anon, file): (u64, u64, u64), guest: Option<u64>) -> String {
    let mut s = format!("peak RSS {}", mib(hwm));
    if let Some(g) = guest {
        s.push_str(&format!(
            ", guest RAM resident {} KiB, peak minus guest RAM {}",
            g,
            mib(hwm.saturating_sub(g))
        ));
    }
    format!("{s} (now: anonymous {}, file-backed {})", mib(anon), mib(file))
}

fn main() {
    let memory = arg("--memory", 256);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let builtin = count_dir(&src.join("backend/builtin"));
    let shared: usize = [
        "backend/mod.rs",
        "backend/process.rs",
        "image.rs",
        "channel.rs",
        "control.rs",
        "run.rs",
        "vm_config.rs",
    ]
    .iter()
    .map(|f| code_lines(&src.join(f)))
    .sum();
    println!("lines of code (non-blank, non-comment, without unit tests):");
    println!("  built-in VMM (launcher/src/backend/builtin): {builtin}");
    println!(
        "  shared launcher path (backend interface, VMM process, sealed images, channel, control, run loop, config): {shared}"
    );
    let mut crates_total = 0;
    for name in [
        "kvm-ioctls",
        "vm-memory",
        "linux-loader",
        "vm-superio",
        "seccompiler",
        "vmm-sys-util",
        "kvm-bindings",
    ] {
        match crate_src(name) {
            Some(dir) => {
                let n = count_dir(&dir);
                crates_total += n;
                println!(
                    "  {name}: {n}{}",
                    if name == "kvm-bindings" { " (mostly generated FFI bindings)" } else { "" }
                );
            }
            None => println!("  {name}: source not found in the cargo registry"),
        }
    }
    println!(
        "  total on the built-in path: {} ours + {crates_total} in rust-vmm crates = {} (goal for ours: <= 10000)",
        builtin + shared,
        builtin + shared + crates_total
    );

    let hw = matches!(accel::detect(), KvmKind::Hardware(_));
    let (kernel, initrd) = linux_guest();
    let payload = builtin_support::Guest::payload(builtin_support::Variant::Ready);
    let (bk, bi, bguest) = if hw {
        (kernel.clone(), initrd.clone(), "Debian cloud kernel + agent initramfs")
    } else {
        (
            payload.kernel.clone(),
            payload.initrd.clone(),
            "test payload (PVM: stock kernels do not boot)",
        )
    };
    let b = measure("builtin", &bk, &bi, memory, &[]);
    println!("\nguest memory {memory} MiB, measured at the agent's Ready:");
    println!(
        "  tellus-vmm process of tellus run --backend builtin ({bguest}): {} (goal for peak minus guest RAM: <= 8 MiB)",
        figures(b.vmm, Some(b.guest))
    );
    if let Some(l) = b.launcher {
        println!(
            "  tellus run beside tellus-vmm (the launcher alone, no VMM inside): {}",
            figures(l, None)
        );
    }
    let accel_args: &[&str] = if hw { &["--accel", "kvm"] } else { &["--accel", "tcg"] };
    let q = measure("qemu", &kernel, &initrd, memory, accel_args);
    println!(
        "  QEMU -M microvm process (-accel {}, Debian cloud kernel + agent initramfs): {}",
        if hw { "kvm" } else { "tcg" },
        figures(q.vmm, Some(q.guest))
    );
    if let Some(l) = q.launcher {
        println!(
            "  tellus run beside QEMU (the launcher alone, no VMM inside): {}",
            figures(l, None)
        );
    }
}
