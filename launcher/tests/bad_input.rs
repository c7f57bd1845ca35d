//! Every bad input to `tellus run` gets a specific error and a non-zero exit,
//! without a panic and without starting a guest.

mod common;
use common::{guest, run_to_end, write_exe};
use std::path::Path;

fn run(extra: &[&str], kernel: &Path, initrd: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"run", &"--kernel", &kernel, &"--initrd", &initrd];
    for e in extra {
        args.push(e);
    }
    let (st, err) = run_to_end(&args, env);
    assert!(!err.contains("panicked"), "panic: {err}");
    (st.code().expect("exited by signal"), err)
}

fn expect_error(extra: &[&str], kernel: &Path, initrd: &Path, env: &[(&str, &str)], needle: &str) {
    let (code, err) = run(extra, kernel, initrd, env);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    assert!(!err.contains("started"), "a VM was started:\n{err}");
}

#[test]
fn kernel_that_is_not_a_bzimage() {
    let (_, initrd) = guest();
    // The initramfs is a perfectly readable file, but not a kernel.
    expect_error(&[], &initrd, &initrd, &[], "is not a bzImage (no 0xAA55 boot signature");
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny");
    std::fs::write(&tiny, b"MZ").unwrap();
    expect_error(&[], &tiny, &initrd, &[], "file too short for a boot header");
    expect_error(&[], &dir.path().join("nope"), &initrd, &[], "cannot read kernel");
}

#[test]
fn missing_initrd() {
    let (kernel, _) = guest();
    expect_error(
        &[],
        &kernel,
        Path::new("/nonexistent/initrd.gz"),
        &[],
        "cannot read initrd /nonexistent/initrd.gz",
    );
}

#[test]
fn memory_too_small_and_bad_sizes() {
    let (k, i) = guest();
    expect_error(&["--memory", "16M"], &k, &i, &[], "--memory 16 MiB is too small");
    let (code, err) = run(&["--memory", "12X"], &k, &i, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown size unit"), "{err}");
}

#[test]
fn zero_vcpus() {
    let (k, i) = guest();
    expect_error(&["--vcpus", "0"], &k, &i, &[], "--vcpus 0: a VM needs at least one vCPU");
}

#[test]
fn qemu_missing() {
    let (k, i) = guest();
    expect_error(
        &[],
        &k,
        &i,
        &[("PATH", "/nonexistent")],
        "QEMU not found: qemu-system-x86_64 is not on PATH",
    );
    expect_error(
        &["--qemu", "/nonexistent/qemu"],
        &k,
        &i,
        &[],
        "QEMU not found: /nonexistent/qemu does not exist",
    );
}

#[test]
fn qemu_failing_to_start() {
    let (k, i) = guest();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("qemu-system-x86_64");
    write_exe(&fake, "#!/bin/sh\necho 'qemu-system-x86_64: -machine microvm: unsupported machine type' >&2\nexit 1\n");
    // QEMU starts after the launch is measured, so this one needs a TPM.
    let tpm = common::Swtpm::start();
    let state = tpm.dir.path().join("state");
    let addr = tpm.addr();
    let args =
        ["--qemu", fake.to_str().unwrap(), "--tpm", &addr, "--state-dir", state.to_str().unwrap()];
    let (code, err) = run(&args, &k, &i, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("QEMU failed to start (exit status: 1)"), "{err}");
    // The failed start is on record: stop event after the launch records.
    assert!(err.contains("recorded stop (vmm-start-failed)"), "{err}");
    assert!(err.contains("unsupported machine type"), "{err}");
}

#[test]
fn builtin_backend_refuses_tcg() {
    let (k, i) = guest();
    expect_error(
        &["--backend", "builtin", "--accel", "tcg"],
        &k,
        &i,
        &[],
        "the built-in VMM runs only on KVM (--accel tcg was given); use --backend qemu",
    );
}

#[test]
fn kernel_cmdline_longer_than_the_kernel_accepts() {
    let (k, i) = guest();
    let long = "x".repeat(5000);
    expect_error(
        &["--cmdline", &long],
        &k,
        &i,
        &[],
        "kernel command line is 5000 bytes; this kernel accepts at most",
    );
}

/// `--accel kvm` is refused where /dev/kvm is missing or PVM, and chosen
/// where it is hardware-backed (checked up to QEMU's start with a fake QEMU).
#[test]
fn accel_kvm_only_on_hardware_kvm() {
    let hw = ["/sys/module/kvm_intel", "/sys/module/kvm_amd"].iter().any(|p| Path::new(p).exists())
        && !Path::new("/sys/module/kvm_pvm").exists();
    let (k, i) = guest();
    if hw {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("qemu");
        write_exe(&fake, "#!/bin/sh\nexit 1\n");
        let (_, err) = run(&["--accel", "kvm", "--qemu", fake.to_str().unwrap()], &k, &i, &[]);
        assert!(err.contains("accelerator: kvm"), "{err}");
    } else {
        expect_error(&["--accel", "kvm"], &k, &i, &[], "--accel kvm needs hardware KVM");
    }
}
