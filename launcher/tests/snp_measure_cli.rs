//! `tellus measure snp` on sev-snp-measure's OVMF fixtures from
//! ../shared/test-vectors/snp-measure: the printed digests are the ones
//! its expected.json records, in hex, base64 and JSON; bad flags and an
//! OVMF without kernel-hashes support fail with their messages.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vectors() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/test-vectors/snp-measure");
    assert!(d.is_dir(), "test vectors not found at {}", d.display());
    d
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(vectors().join("expected.json")).unwrap()).unwrap()
}

/// The digest of the case named `test` (first entry of `kind`).
fn digest_of(test: &str, kind: &str) -> String {
    let e = expected();
    let c = e["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["test"] == test && c["kind"] == kind)
        .unwrap_or_else(|| panic!("{test}/{kind} not in expected.json"));
    c.get("expected_launch_digest")
        .or(c.get("expected_snp_ovmf_hash"))
        .and_then(Value::as_str)
        .unwrap()
        .to_string()
}

fn tellus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tellus"))
        .current_dir(vectors())
        .args(["measure", "snp"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap().trim().to_string()
}

const AMDSEV: &str = "ovmf_AmdSev_suffix.bin";
/// An SNP guest with one EPYC-v4 vCPU (the OVMF image and the rest follow).
const SNP_ONE_VCPU: [&str; 6] = ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4"];

#[test]
fn snp_digests_match_sev_snp_measure() {
    let base = [&SNP_ONE_VCPU[..], &["--ovmf", AMDSEV]].concat();
    let kernel = ["--kernel", "/dev/null", "--initrd", "/dev/null"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [
                &base[..],
                &kernel,
                &["--append", "console=ttyS0 loglevel=7", "--guest-features", "0x21"],
            ]
            .concat(),
            "test_snp_default",
        ),
        (
            [&base[..], &kernel, &["--append", "console=ttyS0 loglevel=7"]].concat(),
            "test_snp_guest_feature_snp_only",
        ),
        ([&base[..], &["--guest-features", "0x21"]].concat(), "test_snp_without_kernel_default"),
        (
            vec![
                "--mode",
                "snp",
                "--vcpus",
                "4",
                "--vmm-type",
                "GCE",
                "--ovmf",
                AMDSEV,
                "--kernel",
                "/dev/null",
            ],
            "test_snp_gce_with_multiple_vcpus_default",
        ),
        (
            [&base[..], &kernel, &["--vmm-type", "EC2", "--guest-features", "0x21"]].concat(),
            "test_snp_ec2_default",
        ),
        (
            vec!["--mode", "seves", "--vcpus", "4", "--vcpu-family", "23", "--vcpu-model", "1"]
                .into_iter()
                .chain(["--vcpu-stepping", "2", "--ovmf", AMDSEV, "--kernel", "/dev/null"])
                .collect(),
            "test_seves_with_multiple_vcpus",
        ),
        (
            vec![
                "--mode",
                "sev",
                "--ovmf",
                AMDSEV,
                "--kernel",
                "/dev/null",
                "--append",
                "console=ttyS0 loglevel=7",
            ],
            "test_sev",
        ),
    ];
    for (args, test) in &cases {
        assert_eq!(stdout_ok(&tellus(args)), digest_of(test, "digest"), "{test}: {args:?}");
    }
    // The OVMF-only digest, and fed back as --snp-ovmf-hash.
    let h = stdout_ok(&tellus(&["--mode", "snp:ovmf-hash", "--ovmf", AMDSEV]));
    assert_eq!(h, digest_of("test_snp_ovmf_hash_full_default", "ovmf_hash"));
    let seeded =
        [&base[..], &kernel, &["--guest-features", "0x21", "--snp-ovmf-hash", &h]].concat();
    assert_eq!(stdout_ok(&tellus(&seeded)), digest_of("test_snp_ovmf_hash_gen_default", "digest"));
    // base64 and JSON.
    let b = stdout_ok(&tellus(
        &[&base[..], &["--guest-features", "0x21", "--output-format", "base64"]].concat(),
    ));
    assert_eq!(
        hex::encode(B64.decode(b).unwrap()),
        digest_of("test_snp_without_kernel_default", "digest")
    );
    let j: Value = serde_json::from_str(&stdout_ok(&tellus(
        &[&base[..], &kernel, &["--output", "json"]].concat(),
    )))
    .unwrap();
    assert_eq!(j["launch_digest"], digest_of("test_snp_ovmf_hash_gen_feature_snp_only", "digest"));
    assert_eq!(j["vcpu_sig"], "0x800f12");
    assert_eq!(
        j["kernel_hashes"]["kernel"],
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    eprintln!("{} CLI digests + ovmf-hash, seeded, base64 and JSON outputs match", cases.len());
}

#[test]
fn dump_vmsa_writes_one_page_per_vcpu() {
    let dir = tempfile::tempdir().unwrap();
    let ovmf = vectors().join(AMDSEV);
    let out = Command::new(env!("CARGO_BIN_EXE_tellus"))
        .current_dir(dir.path())
        .args([
            "measure",
            "snp",
            "--mode",
            "seves",
            "--vcpus",
            "4",
            "--vcpu-type",
            "EPYC-v4",
            "--dump-vmsa",
        ])
        .arg("--ovmf")
        .arg(&ovmf)
        .output()
        .unwrap();
    stdout_ok(&out);
    for i in 0..4 {
        assert_eq!(std::fs::metadata(dir.path().join(format!("vmsa{i}.bin"))).unwrap().len(), 4096);
    }
    assert!(!dir.path().join("vmsa4.bin").exists());
}

#[test]
fn errors_have_their_messages_and_exit_codes() {
    let ovmfx64 = "ovmf_OvmfX64_suffix.bin";
    let out = tellus(&[&SNP_ONE_VCPU[..], &["--ovmf", ovmfx64, "--kernel", "/dev/null"]].concat());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section"
        ),
        "{err}"
    );
    let out = tellus(&["--mode", "sev", "--ovmf", ovmfx64, "--kernel", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Kernel specified but OVMF doesn't support")
    );
    // Usage errors: exit 2.
    for args in [
        vec!["--mode", "snp", "--vcpu-type", "EPYC-v4", "--ovmf", AMDSEV],
        vec!["--mode", "snp", "--vcpus", "1", "--ovmf", AMDSEV],
        vec!["--mode", "snp", "--vcpus", "1", "--vcpu-type", "Skylake", "--ovmf", AMDSEV],
        [&SNP_ONE_VCPU[..], &["--ovmf", AMDSEV, "--append", "x"]].concat(),
    ] {
        assert_eq!(tellus(&args).status.code(), Some(2), "{args:?}");
    }
    // Not an OVMF image: an error, no panic.
    let out = tellus(&[&SNP_ONE_VCPU[..], &["--ovmf", "expected.json"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `--mode snp:svsm`: the SVSM images are not in the collection; they are
/// read from `$TELLUS_SNP_MEASURE_FIXTURES` (sev-snp-measure's
/// `tests/fixtures`) when set, else only the flag checks run.
#[test]
fn svsm_mode() {
    let out =
        tellus(&["--mode", "snp:svsm", "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--ovmf", AMDSEV]);
    assert_eq!(out.status.code(), Some(2), "--svsm is required");
    let out = tellus(&["--mode", "snp:svsm", "--vcpus", "2", "--ovmf", AMDSEV, "--svsm", AMDSEV]);
    assert_eq!(out.status.code(), Some(2), "--vars-size is required");
    let Some(dir) = std::env::var_os("TELLUS_SNP_MEASURE_FIXTURES").map(PathBuf::from) else {
        swtpm_tests::skip("TELLUS_SNP_MEASURE_FIXTURES not set: no svsm.bin", "svsm_mode digests");
        return;
    };
    for (vcpus, test) in [("4", "test_snp_svsm_4_vcpus"), ("2", "test_snp_svsm_2_vcpus")] {
        let out = Command::new(env!("CARGO_BIN_EXE_tellus"))
            .args([
                "measure",
                "snp",
                "--mode",
                "snp:svsm",
                "--vcpus",
                vcpus,
                "--vcpu-type",
                "EPYC-v4",
            ])
            .args(["--vars-size", "540672", "--ovmf"])
            .arg(dir.join("svsm_ovmf.fd"))
            .arg("--svsm")
            .arg(dir.join("svsm.bin"))
            .output()
            .unwrap();
        assert_eq!(stdout_ok(&out), digest_of(test, "digest"), "{test}");
    }
}
