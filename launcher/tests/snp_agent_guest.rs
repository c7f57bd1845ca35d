//! The agent's SEV-SNP challenge path in a real guest (the Debian kernel +
//! agent initramfs under QEMU, no SEV): after its `AttestRequest` the agent
//! gets an `AttestChallenge` frame, tries `/dev/sev-guest` through the `sev`
//! crate, and answers `SnpUnavailable` with the reason instead of evidence;
//! the launcher, which sent no challenge itself (this is not an SNP launch),
//! ignores the unsolicited answer and the attestation is denied as for any
//! VM without a verifier. A real report needs SEV-SNP hardware.

mod common;
use common::{guest, Swtpm};
use std::io::Write;
use std::time::Instant;
use tellus_launcher::run::{self, OnAttestationFailure, RunOptions, VmSpec};
use tellus_protocol::HostMessage;

#[test]
fn agent_answers_a_challenge_without_sev_guest_device_with_its_reason() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let (kernel, initrd) = guest();
    let spec = VmSpec {
        name: "snp-challenge".into(),
        kernel,
        initrd,
        cmdline: Some("console=ttyS0 reboot=t panic=-1 tsc_early_khz=2000000".into()),
        cmdline_extra: Some("tellus.resources=default/key/k".into()),
        memory: "256M".parse().unwrap(),
        vcpus: 1,
        firmware: None,
        backend: tellus_launcher::backend::BackendChoice::Auto,
        accel: tellus_launcher::accel::AccelChoice::Auto,
        qemu: None,
        vmm: None,
        machine: None,
        sev_snp: None,
    };
    let challenge = tellus_protocol::encode_frame(&HostMessage::AttestChallenge {
        nonce: "bm9uY2U=".into(),
        additional_evidence: "{\"tpm\":{}}".into(),
    })
    .unwrap();
    let opts = RunOptions {
        spec,
        measure: tellus_launcher::measured_launch::MeasureConfig {
            tpm: tpm.addr().parse().unwrap(),
            pcr: 13,
            state_dir: dir.path().join("state"),
        },
        console_log: Some(console.clone()),
        control_socket: None,
        started: Instant::now(),
        attest: None,
        on_attestation_failure: OnAttestationFailure::Poweroff,
        console_to_stdout: false,
        // Written right after Ready, before the agent's AttestRequest is
        // answered: the agent reads it first.
        after_ready: Some(Box::new(move |w: &mut dyn Write| {
            w.write_all(&challenge)?;
            w.flush()
        })),
    };
    let outcome = run::run(opts).unwrap();
    let log = String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned();
    assert!(
        log.contains("tellus-agent: asked for 1 resource(s)"),
        "the agent did not ask to be attested:\n{log}"
    );
    assert!(
        log.contains("tellus-agent: no SEV-SNP evidence: /dev/sev-guest does not exist"),
        "no SnpUnavailable answer in the console (a test guest built before SEV-SNP \
         challenges? run scripts/setup.sh):\n{log}"
    );
    // The attestation is denied (no verifier) and the VM powered off by policy.
    let a = outcome.attestation.expect("an attestation was asked for");
    assert_eq!(a.verdict, Some(run::Verdict::Denied));
    assert!(a.powered_off);
    assert_eq!(outcome.reason, "guest-shutdown");
}
