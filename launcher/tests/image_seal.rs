//! The images a launch measures are the images the VM boots, even when the
//! files on disk are replaced between the measurement and the VMM's start
//! (the time-of-check/time-of-use attack on a measured launch).
//!
//! QEMU: the real `tellus run` with a real swtpm boots the real Debian kernel
//! and agent initramfs under TCG, through a `--qemu` wrapper that runs where
//! QEMU would start, i.e. after the launch records are in the TPM: it
//! replaces the kernel (a new file renamed over it), and overwrites the
//! initrd and the firmware in place, with bytes that cannot boot, then execs
//! the real QEMU. The guest still reaches the agent's Ready, and the host
//! log and PCR 13 are the prediction for the original files. On microvm
//! (qboot) and on q35 (OVMF).
//!
//! Built-in VMM: the library path `tellus run` takes (resolve, which stages
//! the images; the launch records; the backend start), with the files
//! replaced between the records and the start: the test payload booted is
//! the measured one, twice from the same staged images (a reboot reloads
//! them), while staging the replaced files boots the replacement.

mod builtin_support;
mod common;

use builtin_support::{
    console_text, expected_console, kvm_usable_or_skip, start_builtin, wait_console, Guest,
    Variant, INITRD_MAGIC,
};
use common::{
    assert_log_starts_as_predicted, guest, json_of, record, tellus, tellus_run, Swtpm, BOOT_TIMEOUT,
};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tellus_launcher::accel::AccelChoice;
use tellus_launcher::backend::{BackendChoice, VmmEvent};
use tellus_launcher::run::{self, VmSpec, Vmm};
use tellus_launcher::vm_config::MemorySize;
use tellus_measured_boot::records::{launch_records, FileMeasurement, LaunchRecord, RecordKind};

const MICROVM_ONESHOT: &str =
    "console=ttyS0 reboot=t panic=-1 tsc_early_khz=2000000 tellus.oneshot";
const OVMF_ONESHOT: &str = "console=ttyS0 reboot=t panic=-1 tellus.oneshot";

fn sha256_hex(path: &Path) -> String {
    FileMeasurement::of("file", path).unwrap().sha256.to_hex()
}

/// The images of one launch, as copies the test may replace.
struct Images {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    initrd: PathBuf,
    firmware: PathBuf,
    wrapper: PathBuf,
}

impl Images {
    fn new(firmware: &Path) -> Images {
        let (k, i) = guest();
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        let initrd = dir.path().join("initrd.img");
        let fw = dir.path().join("firmware.bin");
        std::fs::copy(k, &kernel).unwrap();
        std::fs::copy(i, &initrd).unwrap();
        std::fs::copy(firmware, &fw).unwrap();
        // Runs where QEMU would: after the measurement, before any image is
        // loaded. Replaces every image on disk, then becomes the real QEMU.
        let wrapper = dir.path().join("qemu-swap");
        let script = format!(
            "#!/bin/sh\nset -e\nd='{d}'\n\
             head -c 65536 /dev/zero | tr '\\000' '\\314' > \"$d/vmlinuz.new\"\n\
             mv \"$d/vmlinuz.new\" \"$d/vmlinuz\"\n\
             printf 'EVIL INITRD' > \"$d/initrd.img\"\n\
             printf 'EVIL FIRMWARE' > \"$d/firmware.bin\"\n\
             : > \"$d/swapped\"\n\
             exec {qemu} \"$@\"\n",
            d = dir.path().display(),
            qemu = which("qemu-system-x86_64").display()
        );
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Images { dir, kernel, initrd, firmware: fw, wrapper }
    }

    /// The flags `tellus run` and `tellus measure predict` share.
    fn flags(&self, extra: &[&str]) -> Vec<String> {
        let mut a = vec![
            "--kernel".to_string(),
            self.kernel.display().to_string(),
            "--initrd".into(),
            self.initrd.display().to_string(),
            "--firmware".into(),
            self.firmware.display().to_string(),
            "--qemu".into(),
            self.wrapper.display().to_string(),
            "--name".into(),
            "vm-sealed".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    fn predict(&self, extra: &[&str]) -> Value {
        json_of(
            tellus()
                .args(["measure", "predict", "--output", "json", "--banks", "sha256,sha384"])
                .args(self.flags(extra)),
        )
    }
}

fn which(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not on PATH: run scripts/setup.sh"))
}

/// `tellus run` to its end; returns (success, stderr, console log).
fn run_to_end(tpm: &Swtpm, img: &Images, extra: &[&str]) -> (bool, String, String) {
    let console = img.dir.path().join("console.log");
    let mut child = tellus_run(&tpm.addr(), &tpm.dir.path().join("state"))
        .arg("--console-log")
        .arg(&console)
        .args(img.flags(extra))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tellus run did not end within {BOOT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = stderr.join().unwrap();
    eprintln!("{stderr}");
    let console = String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into();
    (status.success(), stderr, console)
}

/// Launches with images replaced after the measurement; the guest boots the
/// originals and the log is the prediction for them.
fn qemu_boots_the_measured_images(machine: &[&str], firmware: &Path, cmdline: &str) {
    let img = Images::new(firmware);
    let mut extra = machine.to_vec();
    extra.extend(["--cmdline", cmdline]);
    let (k, i) = guest();
    let originals = [
        ("kernel", sha256_hex(&k)),
        ("initrd", sha256_hex(&i)),
        ("firmware", sha256_hex(firmware)),
    ];
    let before = img.predict(&extra);
    for (kind, sha) in &originals {
        assert_eq!(record(&before, kind)["sha256"], format!("sha256:{sha}"), "{kind}");
    }

    let tpm = Swtpm::start();
    let (ok, stderr, console) = run_to_end(&tpm, &img, &extra);
    assert!(img.dir.path().join("swapped").exists(), "the wrapper did not run:\n{stderr}");
    // Every image on disk is now something else (and could not boot) ...
    assert_eq!(std::fs::read(&img.initrd).unwrap(), b"EVIL INITRD");
    assert_eq!(std::fs::read(&img.firmware).unwrap(), b"EVIL FIRMWARE");
    assert_eq!(std::fs::read(&img.kernel).unwrap(), vec![0xcc; 65536]);
    // ... yet the VM booted the measured ones to the agent's Ready.
    assert!(ok, "tellus run failed:\n{stderr}");
    assert!(stderr.contains("guest agent ready after"), "{stderr}");
    assert!(stderr.contains("VM powered off"), "{stderr}");
    assert!(console.contains("tellus-agent"), "{console}");

    // The host log's launch records are the prediction for the original
    // files, record by record, and the TPM holds the log's replay.
    let log = tpm.dir.path().join("state/launch-log.cel");
    let shown = json_of(tellus().args(["eventlog", "show", "--output", "json"]).arg(&log));
    let recs = shown["records"].as_array().unwrap();
    let want = before["records"].as_array().unwrap();
    assert_eq!(recs.len(), want.len() + 2, "launch records + stop + console-log");
    assert_log_starts_as_predicted(recs, want);
    for (kind, sha) in &originals {
        let r = recs.iter().find(|r| r["content"]["kind"] == *kind).unwrap();
        assert_eq!(r["content"]["sha256"], format!("sha256:{sha}"), "{kind}");
    }
    for bank in ["sha256", "sha384"] {
        assert_eq!(shown["pcrs"][bank]["13"], tpm.pcrread(bank, 13), "{bank}");
    }
    // What is on disk now is not even a kernel: a launch (or prediction)
    // from the files as they are would be refused.
    let out = tellus()
        .args(["measure", "predict", "--output", "json"])
        .args(img.flags(&extra))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a bzImage"), "{err}");
}

#[test]
fn qemu_microvm_boots_the_measured_images_after_they_are_replaced_on_disk() {
    let qboot = Path::new("/usr/share/qemu/bios-microvm.bin").canonicalize().unwrap();
    qemu_boots_the_measured_images(&[], &qboot, MICROVM_ONESHOT);
}

#[test]
fn qemu_q35_ovmf_boots_the_measured_images_after_they_are_replaced_on_disk() {
    let ovmf = ["/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("OVMF missing: run scripts/setup.sh (installs the ovmf package)");
    qemu_boots_the_measured_images(&["--machine", "q35"], &ovmf, OVMF_ONESHOT);
}

const PAYLOAD_CMDLINE: &str = "console=ttyS0 tellus.test=sealed";

/// Starts the built-in VMM on `vm`, waits for `until` on the console, stops
/// the VM and returns the whole console output.
fn builtin_console(vm: &tellus_launcher::vm_config::VmConfig, until: &str) -> String {
    // The agent channel is not used; its ends stay open in `started`.
    let started = start_builtin(vm);
    let mut power = started.power;
    power.start_vcpus().unwrap();
    let what = format!("no {until:?} on the console");
    wait_console(&started.console, Duration::from_secs(30), &what, |text| text.contains(until));
    power.terminate().unwrap();
    loop {
        match started.vmm.recv_timeout(Duration::from_secs(30)).expect("VMM event") {
            VmmEvent::Exited { status, .. } => {
                assert!(status.success(), "{status}");
                break;
            }
            _ => continue,
        }
    }
    started.console_done.join().unwrap();
    console_text(&started.console)
}

/// What `tellus run --name vm-sealed` asks for on the built-in VMM with
/// these images and command line (64 MiB, 1 vCPU).
fn sealed_spec(kernel: &Path, initrd: &Path, cmdline: &str) -> VmSpec {
    VmSpec {
        name: "vm-sealed".into(),
        kernel: kernel.into(),
        initrd: initrd.into(),
        cmdline: Some(cmdline.into()),
        cmdline_extra: None,
        memory: MemorySize(64),
        vcpus: 1,
        firmware: None,
        backend: BackendChoice::Builtin,
        accel: AccelChoice::Auto,
        qemu: None,
        vmm: Some(PathBuf::from(env!("CARGO_BIN_EXE_tellus-vmm"))),
        machine: None,
        sev_snp: None,
    }
}

fn file_record(recs: &[LaunchRecord], kind: RecordKind) -> FileMeasurement {
    recs.iter().find(|r| r.kind == kind).and_then(|r| r.file_measurement()).unwrap()
}

#[test]
fn builtin_boots_the_measured_payload_after_it_is_replaced_on_disk() {
    if !kvm_usable_or_skip("builtin_boots_the_measured_payload_after_it_is_replaced_on_disk") {
        return;
    }
    let g = Guest::payload(Variant::Spin);
    let spec = sealed_spec(&g.kernel, &g.initrd, PAYLOAD_CMDLINE);
    let original = (std::fs::read(&g.kernel).unwrap(), std::fs::read(&g.initrd).unwrap());
    // As `tellus run`: resolve (stages the images), then the records.
    let resolved = run::resolve(&spec).unwrap();
    let inputs = tellus_launcher::measure::launch_inputs(&spec, &resolved, 13, None).unwrap();
    let recs = launch_records(&inputs).unwrap();
    let (kernel_rec, initrd_rec) =
        (file_record(&recs, RecordKind::Kernel), file_record(&recs, RecordKind::Initrd));
    // The records are the digests of the sealed copies, which are the
    // files as they were.
    assert_eq!(kernel_rec, resolved.vm.kernel.measurement().unwrap());
    assert_eq!(initrd_rec, resolved.vm.initrd.measurement().unwrap());
    assert_eq!(kernel_rec, FileMeasurement::of("kernel", &g.kernel).unwrap());
    assert_eq!(initrd_rec, FileMeasurement::of("initrd", &g.initrd).unwrap());

    // Between the measurement and the start: the kernel is replaced by
    // another payload (rename over it), the initrd overwritten in place.
    let evil = Guest::payload(Variant::Ready);
    std::fs::rename(&evil.kernel, &g.kernel).unwrap();
    let mut evil_rd = b"EVIL-RD!!".to_vec();
    evil_rd.resize(8192, 0x5a);
    std::fs::write(&g.initrd, &evil_rd).unwrap();
    assert_ne!(std::fs::read(&g.kernel).unwrap(), original.0);
    assert_ne!(FileMeasurement::of("kernel", &g.kernel).unwrap(), kernel_rec);
    assert_ne!(FileMeasurement::of("initrd", &g.initrd).unwrap(), initrd_rec);

    // The built-in VMM boots the measured payload (its banner prints the
    // initrd's first bytes, the spinning tail is the original kernel's) ...
    let want = expected_console(Variant::Spin, PAYLOAD_CMDLINE, 1);
    assert!(want.contains(std::str::from_utf8(INITRD_MAGIC).unwrap()));
    assert_eq!(builtin_console(&resolved.vm, "spinning\n"), want);
    // ... and again from the same staged images (what a reboot reloads).
    assert_eq!(builtin_console(&resolved.vm, "spinning\n"), want);
    assert_eq!(resolved.vm.kernel.read_all(1 << 30).unwrap(), original.0);
    assert_eq!(resolved.vm.initrd.read_all(1 << 30).unwrap(), original.1);

    // The attack is real: staging the files now on disk boots the
    // replacement, under other digests.
    let swapped = run::resolve(&spec).unwrap();
    let now = swapped.vm.kernel.measurement().unwrap();
    assert_ne!(now, kernel_rec);
    let console = builtin_console(&swapped.vm, "ready sent\n");
    assert!(console.contains("EVIL-RD!!"), "{console}");
    assert!(!console.contains("spinning"), "{console}");
}

#[test]
fn records_hash_the_sealed_copies_not_the_files_on_disk() {
    let qboot = Path::new("/usr/share/qemu/bios-microvm.bin").canonicalize().unwrap();
    let img = Images::new(&qboot);
    let real_qemu = which("qemu-system-x86_64");
    let qemu = img.dir.path().join("qemu-system-x86_64");
    std::fs::copy(&real_qemu, &qemu).unwrap();
    let spec = VmSpec {
        memory: MemorySize(256),
        firmware: Some(img.firmware.clone()),
        backend: BackendChoice::Qemu,
        accel: AccelChoice::Tcg,
        qemu: Some(qemu.clone()),
        vmm: None,
        ..sealed_spec(&img.kernel, &img.initrd, MICROVM_ONESHOT)
    };
    let resolved = run::resolve(&spec).unwrap();
    // Every file changes after staging, before the records are built.
    for p in [&img.kernel, &img.initrd, &img.firmware, &qemu] {
        std::fs::write(p, b"replaced after staging").unwrap();
    }
    let inputs = tellus_launcher::measure::launch_inputs(&spec, &resolved, 13, None).unwrap();
    let recs = launch_records(&inputs).unwrap();
    let (k, i) = guest();
    let vm = &resolved.vm;
    for (kind, sealed, original) in [
        (RecordKind::Kernel, &vm.kernel, k),
        (RecordKind::Initrd, &vm.initrd, i),
        (RecordKind::Firmware, vm.firmware.as_ref().unwrap(), qboot.clone()),
    ] {
        let rec = file_record(&recs, kind);
        assert_eq!(rec, sealed.measurement().unwrap(), "{kind:?}: the digest of the memfd");
        assert_eq!(rec, FileMeasurement::of("original", &original).unwrap(), "{kind:?}");
        assert_eq!(rec.size, sealed.len(), "{kind:?}");
        assert_eq!(sealed.read_all(1 << 30).unwrap(), std::fs::read(&original).unwrap());
    }
    // QEMU too: the record is the staged copy, which is what runs.
    let rec = file_record(&recs, RecordKind::VmmBinary);
    assert_eq!(rec, FileMeasurement::of("original", &real_qemu).unwrap(), "vmm-binary");
    let Vmm::Qemu(q) = &resolved.vmm else { panic!("QEMU backend expected") };
    assert_eq!(rec, q.executable().measurement().unwrap(), "vmm-binary: the digest of the memfd");
}
