//! The QEMU backend on `-M q35` with OVMF (UEFI direct kernel boot through
//! fw_cfg) under the same measured launch as microvm: the real Debian cloud
//! kernel + agent initramfs reach the agent's Ready, PCR 13 equals `tellus
//! measure predict` for the same flags, and the VM powers off. And the SEV-SNP
//! side that works without SEV hardware: `--sev-snp` refused before anything is
//! measured, and the predicted `snp-launch-digest` record (MEASUREMENT as
//! `tellus measure snp` computes it, HOST_DATA = SHA-256 of the launch-config
//! record).

mod common;
use common::{
    assert_log_starts_as_predicted, guest, json_of, kinds, predict_guest, predict_json, record,
    tellus, tellus_run, Launch, Swtpm, QEMU_RECORD_KINDS,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const OVMF_ONESHOT: &str = "console=ttyS0 reboot=t panic=-1 tellus.oneshot";

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// Debian's unified OVMF image, as the launcher finds it.
fn ovmf() -> PathBuf {
    ["/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("OVMF missing: run scripts/setup.sh (installs the ovmf package)")
        .canonicalize()
        .unwrap()
}

fn amdsev_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/test-vectors/snp-measure/ovmf_AmdSev_suffix.bin")
}

#[test]
fn ovmf_q35_boots_to_ready_measured_as_predicted_and_powers_off() {
    let extra = ["--machine", "q35", "--name", "vm-ovmf", "--cmdline", OVMF_ONESHOT];
    let t0 = Instant::now();
    let mut l = Launch::start(&extra);
    let ready = l.wait_for("guest agent ready after", 1);
    let ready_s = t0.elapsed().as_secs_f64();
    let st = l.wait_exit();
    let total_s = t0.elapsed().as_secs_f64();
    assert!(st.success(), "{}", l.stderr().join("\n"));
    let stderr = l.stderr();
    let accel = stderr.iter().find(|x| x.starts_with("tellus: accelerator:")).unwrap().clone();
    let boot = stderr.iter().find(|x| x.contains("phase boot:")).cloned().unwrap_or_default();
    eprintln!("OVMF q35 boot: {accel}");
    eprintln!("OVMF q35 boot: {ready}; {boot}");
    eprintln!(
        "OVMF q35 boot: Ready {ready_s:.1} s, powered off {total_s:.1} s after `tellus run` started"
    );
    assert!(stderr.iter().any(|x| x.contains("-M q35")), "{stderr:?}");
    assert!(stderr.iter().any(|x| x.contains("VM powered off")), "{stderr:?}");
    // UEFI ran: the kernel says it was booted through EFI.
    let console = l.console_log();
    assert!(console.contains("efi: EFI v"), "no EFI boot in the console:\n{console}");
    assert!(console.contains("tellus-agent"), "{console}");

    // The log's launch records equal the prediction for the same flags:
    // PCR 13 after the launch records (before the stop records) is the
    // predicted value.
    let tpm = l.tpm.take().unwrap();
    let p = predict_json(&extra);
    assert_eq!(kinds(&p), QEMU_RECORD_KINDS);
    assert_eq!(record(&p, "launch-config")["machine"], "q35");
    assert_eq!(record(&p, "firmware")["sha256"], format!("sha256:{}", sha256sum(&ovmf())));
    let log = tpm.dir.path().join("tellus-state/launch-log.cel");
    let shown = json_of(tellus().args(["eventlog", "show", "--output", "json"]).arg(&log));
    let recs = shown["records"].as_array().unwrap();
    assert_eq!(recs.len(), 12, "10 launch records + stop + console-log");
    assert_eq!(recs[10]["content"]["kind"], "stop");
    assert_eq!(recs[10]["content"]["reason"], "guest-shutdown");
    // Every launch record in the host log has the predicted content and
    // digests, in order: the PCR after them is the predicted one.
    assert_log_starts_as_predicted(recs, p["records"].as_array().unwrap());
    // And the TPM holds the replay of the whole log.
    for bank in ["sha256", "sha384"] {
        assert_eq!(shown["pcrs"][bank]["13"], tpm.pcrread(bank, 13), "{bank}");
    }
}

#[test]
fn ovmf_q35_pcr13_while_running_equals_predict() {
    // Without oneshot the agent waits: PCR 13 is read while the guest runs.
    let extra = ["--machine", "q35", "--name", "vm-ovmf-2", "--vcpus", "2", "--memory", "192M"];
    let mut l = Launch::start(&extra);
    l.wait_for("guest agent ready after", 1);
    let tpm = l.tpm.take().unwrap();
    let p = predict_json(&extra);
    for bank in ["sha256", "sha384"] {
        let in_tpm = tpm.pcrread(bank, 13);
        assert_eq!(p["pcr_values"][bank], format!("{bank}:{in_tpm}"), "{bank}");
    }
    let (ok, status) = l.ctl("status");
    assert!(ok && status["status"]["vcpus"] == 2, "{status}");
    assert!(l.ctl("shutdown").0);
    assert!(l.wait_exit().success(), "{}", l.stderr().join("\n"));
}

#[test]
fn sev_snp_is_refused_here_before_anything_is_measured() {
    let snp_host = Path::new("/dev/sev").exists()
        && std::fs::read_to_string("/sys/module/kvm_amd/parameters/sev_snp")
            .is_ok_and(|v| v.trim() == "Y" || v.trim() == "1");
    if snp_host {
        swtpm_tests::skip(
            "this host has SEV-SNP; the refusal is for hosts without it",
            "sev_snp_is_refused_here_before_anything_is_measured",
        );
        return;
    }
    let (kernel, initrd) = guest();
    let tpm = Swtpm::start();
    let state = tpm.dir.path().join("tellus-state");
    let out = tellus_run(&tpm.addr(), &state)
        .arg("--sev-snp")
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--sev-snp needs an AMD SEV-SNP host"), "{err}");
    assert!(err.contains("nothing was measured or started"), "{err}");
    assert!(!err.contains("tellus: measured "), "{err}");
    assert!(!err.contains("tellus: started "), "{err}");
    // Nothing reached the TPM or the host log.
    assert_eq!(tpm.pcrread("sha256", 13), "0".repeat(64));
    assert!(!state.join("launch-log.cel").exists());
    // Clear refusals of configurations SNP cannot have.
    for (args, want) in [
        (&["--sev-snp", "--accel", "tcg"][..], "--sev-snp needs KVM"),
        (&["--sev-snp", "--machine", "microvm"][..], "--sev-snp needs --machine q35"),
        (&["--sev-snp", "--backend", "builtin"][..], "use --backend qemu"),
        (&["--snp-policy", "0x30000"][..], "--sev-snp"),
        (&["--sev-snp", "--snp-policy", "0xb0000"][..], "allows debugging"),
        (&["--sev-snp", "--snp-policy", "0x70000"][..], "migration agent"),
        (&["--sev-snp", "--snp-vcpu-type", "EPYC,+x"][..], "not a plain model name"),
    ] {
        let out = predict_guest().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Debian's OVMF (OvmfPkgX64) has no kernel-hashes table: an SNP
    // prediction with it says which build to use.
    let out = predict_guest().arg("--sev-snp").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("SNP_KERNEL_HASHES") && err.contains("AmdSev"), "{err}");
}

#[test]
fn sev_snp_prediction_records_measurement_and_host_data() {
    let (kernel, initrd) = guest();
    let fw = amdsev_fixture();
    let cmdline = "console=ttyS0 reboot=t panic=-1 tellus.channel=ttyS1";
    let p = predict_json(&[
        "--sev-snp",
        "--firmware",
        fw.to_str().unwrap(),
        "--vcpus",
        "2",
        "--memory",
        "2G",
        "--cmdline",
        cmdline,
        "--snp-vcpu-type",
        "EPYC-Milan",
    ]);
    // A QEMU launch's records, with the SNP launch digest last before the
    // separator.
    let (separator, launch) = QEMU_RECORD_KINDS.split_last().unwrap();
    assert_eq!(kinds(&p), [launch, &["snp-launch-digest", separator]].concat());
    let lc = record(&p, "launch-config");
    assert_eq!(lc["machine"], "q35");
    assert_eq!(lc["accel"], "kvm");
    assert_eq!(lc["sev_policy"], 0x30000);
    let snp = record(&p, "snp-launch-digest");
    // MEASUREMENT as `tellus measure snp` (checked against sev-snp-measure's
    // vectors) computes it for the same OVMF, kernel, initrd and cmdline.
    let out = tellus()
        .args(["measure", "snp", "--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-Milan"])
        .args(["--vmm-type", "QEMU", "--guest-features", "0x1", "--ovmf"])
        .arg(&fw)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--append")
        .arg(cmdline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(want.len(), 96);
    assert_eq!(snp["measurement"], want);
    assert_eq!(snp["policy"], 0x30000);
    assert_eq!(snp["vcpu_type"], "EPYC-Milan");
    assert_eq!(snp["guest_features"], 1);
    // HOST_DATA is the launch-config record's SHA-256 event digest.
    let lc_digest = lc["record_digests"]["sha256"].as_str().unwrap();
    assert_eq!(format!("sha256:{}", snp["host_data"].as_str().unwrap()), lc_digest);
    // A different vCPU count changes MEASUREMENT and HOST_DATA.
    let q = predict_json(&["--sev-snp", "--firmware", fw.to_str().unwrap(), "--cmdline", cmdline]);
    assert_ne!(record(&q, "snp-launch-digest")["measurement"], snp["measurement"]);
    assert_ne!(record(&q, "snp-launch-digest")["host_data"], snp["host_data"]);
}
