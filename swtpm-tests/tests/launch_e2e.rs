//! End-to-end attested secret release with real components only: a
//! provisioned swtpm as the host TPM, a real `tellus-verifier serve`
//! process, `tellus host init` + `enroll`, and `tellus launch` booting the
//! real Debian cloud kernel with the tellus-agent initramfs under QEMU (TCG
//! here, KVM on hardware hosts).
//!
//! Every denial must end with no secret in the guest, the verifier's (or
//! the launcher's) explanation on the launcher's stderr and in its JSON
//! summary, and the VM powered off (exit status 5).

mod e2e_support;

use e2e_support::{launch, sha256_hex, text, Host, Launched, Verifier, VmToml};
use serde_json::Value;
use std::io::Write;
use std::time::Instant;

const RESOURCE: &str = "default/key/e2e";

/// A secret that differs per run.
fn secret() -> Vec<u8> {
    let mut s = b"tellus e2e secret ".to_vec();
    let mut r = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r).unwrap();
    s.extend(hex::encode(r).as_bytes());
    s
}

/// Enrolled host + verifier holding `secret` at [`RESOURCE`], and a VM
/// that asks for it. With a policy-evaluating verifier (issue 6) the VM's
/// reference values are loaded too.
struct World {
    host: Host,
    verifier: Verifier,
    vm: VmToml,
    secret: Vec<u8>,
}

impl World {
    fn new(enroll: bool) -> World {
        let host = e2e_support::host();
        let verifier = Verifier::start(&host.tpm.local_ca());
        if enroll {
            host.enroll(&verifier.url());
        }
        let secret = secret();
        verifier.upload(RESOURCE, &secret);
        let mut vm = VmToml::guest();
        vm.resources = vec![RESOURCE.into()];
        vm.verifier = Some(verifier.url());
        let w = World { host, verifier, vm, secret };
        w.add_refs(&w.vm.clone());
        w
    }

    /// Loads `vm`'s predicted measurements as reference values.
    fn add_refs(&self, vm: &VmToml) {
        let file = vm.predict(&self.host, self.verifier.dir.path());
        let out = self.verifier.refs_add(&file);
        assert!(out.status.success(), "refs add failed:\n{}", text(&out.stderr));
    }
}

/// The guest got no secret, said so, the launcher showed `why`, and the VM
/// was powered off.
fn assert_denied_and_off(l: &Launched, why: &str) {
    assert_eq!(l.status, 5, "{}", l.dump());
    assert!(l.secret_lines().is_empty(), "a secret reached the guest:\n{}", l.dump());
    assert!(l.console.contains("tellus-agent: attestation denied: "), "{}", l.dump());
    assert!(l.console.contains("tellus-agent: no secret received"), "{}", l.dump());
    assert!(!l.console.contains("/run/tellus/secrets/"), "{}", l.dump());
    assert!(l.stderr.contains("phase attest: DENIED: "), "{}", l.dump());
    assert!(l.stderr.contains(why), "no {why:?} on the launcher's stderr:\n{}", l.dump());
    assert!(l.stderr.contains("powering the VM off"), "{}", l.dump());
    assert!(l.console.contains("reboot: Power down"), "{}", l.dump());
    assert_eq!(l.summary["verdict"], "denied", "{}", l.dump());
    assert_eq!(l.summary["powered_off_by_policy"], true);
    assert_eq!(l.summary["stop_reason"], "guest-shutdown");
    assert!(l.summary["reason"].as_str().unwrap_or("").contains(why), "{}", l.dump());
    assert_eq!(l.summary["secrets"], Value::Array(vec![]));
}

#[test]
fn happy_path_the_guest_gets_the_uploaded_secret() {
    let w = World::new(true);
    let l = launch(&w.host, &w.vm);
    assert_eq!(l.status, 0, "{}", l.dump());
    let want = sha256_hex(&w.secret);
    let line = format!("secret /run/tellus/secrets/{RESOURCE} sha256={want}");
    assert_eq!(l.secret_lines(), [line], "{}", l.dump());
    // The secret's bytes never appear on the console or the launcher's output.
    let s = text(&w.secret);
    assert!(!l.console.contains(&s) && !l.stderr.contains(&s));
    assert!(!serde_json::to_string(&l.summary).unwrap().contains(&s));

    assert_eq!(l.summary["verdict"], "released", "{}", l.dump());
    assert_eq!(l.summary["secrets"][0]["resource"], RESOURCE);
    assert_eq!(l.summary["secrets"][0]["sha256"], want.as_str());
    assert_eq!(l.summary["exit_status"], 0);
    assert!(l.stderr.contains(&format!("guest stored secret {RESOURCE} sha256={want}")));
    for phase in ["phase measure", "phase boot", "phase attest: affirmed", "phase release"] {
        assert!(l.stderr.contains(phase), "no {phase:?}:\n{}", l.dump());
    }
    // The verifier attested the VM (affirming, where it appraises) and released it.
    let log = w.verifier.log_text();
    let attested = log.lines().find(|l| l.contains("attested")).unwrap_or_else(|| {
        panic!("no attestation in the verifier log:\n{log}");
    });
    if attested.contains("status") {
        assert!(attested.contains("affirming"), "{attested}");
    }
    assert!(log.contains("released"), "{log}");
    let p = &l.summary["phases_ms"];
    eprintln!(
        "happy path: measure {} ms, boot {} ms, attest {} ms ({}), release {} ms, total {} ms",
        p["measure"], p["boot"], p["attest"], p["attest_steps"], p["release"], p["total"]
    );
}

#[test]
fn denied_when_the_host_is_not_enrolled() {
    let w = World::new(false);
    let l = launch(&w.host, &w.vm);
    assert_denied_and_off(&l, "not enrolled");
    assert!(w.verifier.log_text().contains("attestation refused"));
}

/// The enrolled TPM is replaced by a fresh one (a different EK): the host's
/// AK no longer loads, so no evidence can be made; and once the host is
/// re-initialised on the new TPM (what the error says to do), the verifier
/// does not know its EK.
#[test]
fn denied_with_a_fresh_swtpm_in_place_of_the_enrolled_one() {
    let w = World::new(true);
    let fresh = swtpm_tests::Swtpm::start_provisioned();
    let swapped = w.host.with_tpm(fresh);
    let l = launch(&swapped, &w.vm);
    assert_denied_and_off(&l, "endorsement key no longer matches");

    std::fs::rename(swapped.state.join("host"), swapped.state.join("host.old")).unwrap();
    swapped.init();
    let l = launch(&swapped, &w.vm);
    assert_denied_and_off(&l, "not enrolled");
    std::mem::forget(swapped.state); // the directory belongs to w.host
}

/// The verifier's nonce of one session, replayed into another, is refused,
/// and evidence bound to an old nonce does not attest a new session. The
/// launcher never reuses a nonce, so this drives the verifier with the
/// launcher's own relay steps.
#[test]
fn denied_when_a_nonce_is_replayed_from_an_earlier_session() {
    use tellus_launcher::attest::{self, AttestConfig};
    use tellus_launcher::enroll_client::VerifierClient;
    let w = World::new(true);
    // A real launch, so the host log holds launch records for PCR 13.
    let l = launch(&w.host, &w.vm);
    assert_eq!(l.status, 0, "{}", l.dump());

    let cfg = AttestConfig::new(
        VerifierClient::new(&w.verifier.url(), None).unwrap(),
        w.host.tpm.addr().parse().unwrap(),
        w.host.state.clone(),
        13,
        vec![RESOURCE.into()],
    );
    let key = tellus_protocol::jwe::TeeKey::generate().unwrap();
    let jwk = serde_json::to_value(key.public_jwk()).unwrap();

    // Session A, complete and genuine.
    let a = attest::auth(&cfg.client).unwrap();
    let ev_a = attest::evidence(&cfg, &attest::binding(&jwk, &a.nonce).unwrap(), 0).unwrap();
    let a = attest::attest(&cfg.client, &a, &a.nonce, &jwk, &ev_a).unwrap();
    assert!(attest::fetch(&cfg.client, &a, &[RESOURCE.into()]).is_ok());

    // Session B: A's nonce and evidence replayed.
    let b = attest::auth(&cfg.client).unwrap();
    assert_ne!(a.nonce, b.nonce);
    let e = attest::attest(&cfg.client, &b, &a.nonce, &jwk, &ev_a).unwrap_err().to_string();
    assert!(e.contains("NonceMismatch") && e.contains("nonce"), "{e}");
    // B's nonce with A's evidence: the quote is bound to A's nonce.
    let e = attest::attest(&cfg.client, &b, &b.nonce, &jwk, &ev_a).unwrap_err().to_string();
    assert!(
        e.contains("HTTP 403") && e.contains("does not carry this attestation's binding"),
        "{e}"
    );
    // Session B released nothing.
    let e = attest::fetch(&cfg.client, &b, &[RESOURCE.into()]).unwrap_err().to_string();
    assert!(e.contains("401") && e.contains("not attested"), "{e}");
}

#[test]
fn continue_boots_the_guest_without_its_secret_and_says_so() {
    let mut w = World::new(false);
    w.vm.on_failure = "continue";
    let l = launch(&w.host, &w.vm);
    assert_eq!(l.status, 0, "{}", l.dump());
    assert!(l.secret_lines().is_empty(), "{}", l.dump());
    assert!(l.console.contains("tellus-agent: no secret received"), "{}", l.dump());
    assert!(l.stderr.contains("the guest runs on without its secrets"), "{}", l.dump());
    assert!(l.stderr.contains("not enrolled"), "{}", l.dump());
    assert!(!l.stderr.contains("powering the VM off"), "{}", l.dump());
    assert_eq!(l.summary["verdict"], "denied");
    assert_eq!(l.summary["powered_off_by_policy"], false);
    // The guest powered itself off (tellus.oneshot) after going on.
    assert!(l.console.contains("tellus.oneshot: powering off"), "{}", l.dump());
}

/// Runs the test guest in this process (`run::run`, no verifier, no
/// oneshot: the agent waits for the host) as VM `name`, writes `frames` to
/// its agent channel right after `Ready` (before the agent's
/// `AttestRequest`, if any, is answered: the agent reads them first), and
/// returns the outcome and the console log.
fn run_with_frames(
    name: &str,
    cmdline_extra: Option<&str>,
    frames: Vec<u8>,
) -> (tellus_launcher::run::Outcome, String) {
    use tellus_launcher::run::{self, OnAttestationFailure, RunOptions, VmSpec};
    let tpm = swtpm_tests::Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let (kernel, initrd) = e2e_support::guest();
    let spec = VmSpec {
        name: name.into(),
        kernel,
        initrd,
        cmdline: Some("console=ttyS0 reboot=t panic=-1 tsc_early_khz=2000000".into()),
        cmdline_extra: cmdline_extra.map(Into::into),
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
        after_ready: Some(Box::new(move |w: &mut dyn Write| {
            w.write_all(&frames)?;
            w.flush()
        })),
    };
    let outcome = run::run(opts).unwrap();
    (outcome, text(&std::fs::read(&console).unwrap()))
}

/// A host that sends a command-shaped frame gets it rejected and logged by
/// the agent, which executes nothing and goes on obeying `PowerOff`.
#[test]
fn the_agent_rejects_an_exec_like_frame() {
    #[derive(serde::Serialize)]
    enum Evil {
        Exec { argv: Vec<String> },
    }
    let mut frames = tellus_protocol::encode_frame(&Evil::Exec {
        argv: vec!["/bin/sh".into(), "-c".into(), "echo PWNED".into()],
    })
    .unwrap();
    frames.extend(tellus_protocol::encode_frame(&tellus_protocol::HostMessage::PowerOff).unwrap());
    let (outcome, log) = run_with_frames("exec-frame", None, frames);
    assert_eq!(outcome.reason, "guest-shutdown");
    assert!(
        log.contains("from the host: message \"Exec\" rejected")
            && log.contains("nothing executed"),
        "{log}"
    );
    assert!(!log.contains("PWNED"), "{log}");
    assert!(log.contains("host requests PowerOff"), "{log}");
}

/// The agent's SEV-SNP challenge path in a real guest (no SEV here): after
/// its `AttestRequest` the agent gets an `AttestChallenge` frame, tries
/// `/dev/sev-guest` through the `sev` crate, and answers `SnpUnavailable`
/// with the reason instead of evidence; the launcher, which sent no
/// challenge itself (this is not an SNP launch), ignores the unsolicited
/// answer and the attestation is denied as for any VM without a verifier.
/// A real report needs SEV-SNP hardware.
#[test]
fn the_agent_answers_an_snp_challenge_without_sev_guest_device_with_its_reason() {
    use tellus_launcher::run::Verdict;
    let challenge = tellus_protocol::encode_frame(&tellus_protocol::HostMessage::AttestChallenge {
        nonce: "bm9uY2U=".into(),
        additional_evidence: "{\"tpm\":{}}".into(),
    })
    .unwrap();
    let (outcome, log) =
        run_with_frames("snp-challenge", Some("tellus.resources=default/key/k"), challenge);
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
    assert_eq!(a.verdict, Some(Verdict::Denied));
    assert!(a.powered_off);
    assert_eq!(outcome.reason, "guest-shutdown");
}

/// The verifier's JWE encryption and the guest's decryption interoperate
/// (no VM: the same functions the verifier and the agent run).
#[test]
fn verifier_jwe_decrypts_in_the_guest_library() {
    let key = tellus_protocol::jwe::TeeKey::generate().unwrap();
    let jwk: kbs_types::TeePubKey =
        serde_json::from_value(serde_json::to_value(key.public_jwk()).unwrap()).unwrap();
    let rng = ring::rand::SystemRandom::new();
    for plain in [&b""[..], b"x", &[7u8; 40_000][..]] {
        let jwe = tellus_verifier::service::jwe::encrypt(&jwk, plain, &rng).unwrap();
        let wire = serde_json::to_string(&jwe).unwrap();
        assert_eq!(key.decrypt(&wire).unwrap(), plain);
    }
}

// ---- denials by the verifier's policy against the reference values ---------

/// Reference values of the good VM are loaded; a launch of `changed`
/// (which still boots) must be denied by policy.
fn policy_denial(change: impl FnOnce(&mut VmToml, &std::path::Path), why: &str) {
    let w = World::new(true);
    let dir = tempfile::tempdir().unwrap();
    let mut vm = w.vm.clone();
    change(&mut vm, dir.path());
    let l = launch(&w.host, &vm);
    assert_denied_and_off(&l, why);
}

fn copy_with_appended(
    src: &std::path::Path,
    dir: &std::path::Path,
    extra: &[u8],
) -> std::path::PathBuf {
    let name = src.file_name().unwrap();
    let dst = dir.join(name);
    let mut bytes = std::fs::read(src).unwrap();
    bytes.extend_from_slice(extra);
    std::fs::write(&dst, bytes).unwrap();
    dst
}

#[test]
fn denied_for_a_kernel_with_one_byte_appended() {
    policy_denial(|vm, dir| vm.kernel = copy_with_appended(&vm.kernel, dir, &[0]), "kernel");
}

#[test]
fn denied_for_a_changed_initrd() {
    // Zero padding after the cpio archive: the kernel skips it, the digest differs.
    policy_denial(|vm, dir| vm.initrd = copy_with_appended(&vm.initrd, dir, &[0; 512]), "initrd");
}

#[test]
fn denied_for_a_changed_cmdline() {
    policy_denial(|vm, _| vm.cmdline.push_str(" quiet"), "cmdline");
}

#[test]
fn denied_for_a_changed_vcpu_count() {
    // The vCPU count is part of the launch-config record.
    policy_denial(|vm, _| vm.vcpus = 2, "launch-config");
}
