//! Host enrollment against real swtpm instances provisioned with an EK
//! certificate by a private local CA: `tellus host enroll-request` →
//! verifier `begin` (EK chain, AK checks, MakeCredential in software) →
//! `tellus host activate` (TPM2_ActivateCredential) → verifier `finish`.
//! After every test the TPM holds no transient object and no session.

mod common;
use base64::Engine;
use common::{tellus, text, tpm_host, Swtpm, TpmHost};
use ring::rand::SystemRandom;
use tellus_protocol::enrollment::{ActivationProof, EnrollChallenge, EnrollRequest};
use tellus_verifier::registrar::ek_cert::{EkCertError, TrustAnchors, ValidationTime};
use tellus_verifier::registrar::enrollment::{begin, finish, EnrollError, PendingEnrollment};
use tellus_verifier::registrar::make_credential::make_credential;
use tellus_verifier::tpm_types::TpmPublic;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A provisioned host (see `common::TpmHost`) with this file's helpers.
struct Host(TpmHost);

impl std::ops::Deref for Host {
    type Target = TpmHost;
    fn deref(&self) -> &TpmHost {
        &self.0
    }
}

impl Host {
    fn new() -> Host {
        Host(tpm_host())
    }

    /// The swtpm local CA: the EK certificates' issuer and its root.
    fn anchors(&self) -> TrustAnchors {
        let ca = self.tpm.local_ca();
        TrustAnchors::from_files(&[
            ca.join("issuercert.pem"),
            ca.join("swtpm-localca-rootca-cert.pem"),
        ])
        .unwrap()
    }

    fn enroll_request(&self) -> EnrollRequest {
        let out = self.tellus(&["host", "enroll-request", "--output", "-"]);
        assert!(out.status.success(), "enroll-request failed:\n{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `tellus host activate` on `challenge`; the proof when it succeeds.
    fn activate(&self, challenge: &EnrollChallenge) -> Result<ActivationProof, String> {
        let dir = tempfile::tempdir().unwrap();
        let (c, p) = (dir.path().join("challenge.json"), dir.path().join("proof.json"));
        std::fs::write(&c, serde_json::to_vec(challenge).unwrap()).unwrap();
        let out = self.tellus(&[
            "host",
            "activate",
            "--challenge",
            c.to_str().unwrap(),
            "--output",
            p.to_str().unwrap(),
        ]);
        if !out.status.success() {
            return Err(text(&out.stderr));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "proof file mode");
        Ok(serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap())
    }

    fn begin(
        &self,
        req: &EnrollRequest,
    ) -> Result<(EnrollChallenge, PendingEnrollment), EnrollError> {
        begin(req, &self.anchors(), ValidationTime::Now, &SystemRandom::new())
    }

    /// No transient object and no loaded session is left in the TPM.
    fn assert_clean(&self) {
        for cap in ["handles-transient", "handles-loaded-session"] {
            let out = self.tpm.run("tpm2_getcap", &[cap]);
            let left = text(&out.stdout);
            assert!(left.trim().is_empty(), "{cap} left in the TPM: {left}");
        }
    }
}

fn hex_sha256(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

#[test]
fn enroll_and_activate() {
    let h = Host::new();
    let req = h.enroll_request();
    let ek = B64.decode(&req.ek_public).unwrap();
    assert_eq!(req.host_id, hex_sha256(&ek));
    assert_eq!(ek, std::fs::read(h.state.join("host/ek.pub")).unwrap());
    assert!(req.ek_cert.is_some(), "the provisioned TPM has an EK certificate");
    h.assert_clean();

    let (challenge, pending) = h.begin(&req).unwrap();
    assert_eq!(pending.host_id, req.host_id);
    assert!(pending.ek_anchor.is_some());
    // The pending enrollment is storable and holds no secret.
    let stored: PendingEnrollment =
        serde_json::from_str(&serde_json::to_string(&pending).unwrap()).unwrap();

    let proof = h.activate(&challenge).unwrap();
    h.assert_clean();
    assert_eq!(proof.enrollment_id, challenge.enrollment_id);
    assert_eq!(hex_sha256(&B64.decode(&proof.secret).unwrap()), stored.secret_sha256);
    let host = finish(&stored, &proof).unwrap();
    assert_eq!(host.host_id, req.host_id);
    assert_eq!(host.ak_name, req.ak_name);

    // The request does not change between runs (same EK, same AK).
    assert_eq!(h.enroll_request(), req);
    h.assert_clean();
}

#[test]
fn enroll_request_needs_host_init() {
    let tpm = Swtpm::start();
    let state = tpm.path("empty-state");
    let out = tellus()
        .args(["host", "enroll-request", "--output", "-", "--tpm", &tpm.addr(), "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("run `tellus host init`"), "{err}");
}

/// (a) A credential made for another AK Name: the TPM refuses it.
#[test]
fn challenge_for_another_ak_is_refused_by_the_tpm() {
    let h = Host::new();
    let req = h.enroll_request();
    let (good, pending) = h.begin(&req).unwrap();

    let ek = TpmPublic::from_tpm2b_public(&B64.decode(&req.ek_public).unwrap()).unwrap();
    let mut other_name = hex::decode(&req.ak_name).unwrap();
    let last = other_name.len() - 1;
    other_name[last] ^= 0x01;
    let cred = make_credential(&ek, &other_name, &[0x5a; 32]).unwrap();
    let forged = EnrollChallenge {
        enrollment_id: good.enrollment_id.clone(),
        credential_blob: B64.encode(cred.id_object()),
        encrypted_secret: B64.encode(cred.encrypted_secret()),
    };
    let err = h.activate(&forged).unwrap_err();
    assert!(err.contains("the TPM refused the credential"), "{err}");
    // TPM_RC_INTEGRITY: the HMAC over the blob and the AK's Name differs.
    assert!(err.contains("integrity check failed"), "{err}");
    h.assert_clean();

    // A corrupted blob is refused before the TPM is involved.
    let broken = EnrollChallenge { credential_blob: "AAAA".into(), ..good.clone() };
    let err = h.activate(&broken).unwrap_err();
    assert!(err.contains("the challenge is not valid"), "{err}");
    h.assert_clean();

    // The genuine challenge still works afterwards.
    let proof = h.activate(&good).unwrap();
    finish(&pending, &proof).unwrap();
    h.assert_clean();
}

/// (b) A proof with a tampered secret fails `finish`.
#[test]
fn tampered_secret_fails_activation() {
    let h = Host::new();
    let (challenge, pending) = h.begin(&h.enroll_request()).unwrap();
    let proof = h.activate(&challenge).unwrap();
    let mut secret = B64.decode(&proof.secret).unwrap();
    secret[0] ^= 0x80;
    let tampered = ActivationProof { secret: B64.encode(&secret), ..proof.clone() };
    assert!(matches!(finish(&pending, &tampered), Err(EnrollError::ActivationFailed)));
    // The proof of another enrollment of the same host does not fit either.
    let (_, pending2) = h.begin(&h.enroll_request()).unwrap();
    let e = finish(&pending2, &proof).unwrap_err();
    assert!(matches!(e, EnrollError::EnrollmentIdMismatch { .. }), "{e}");
    let moved = ActivationProof { enrollment_id: pending2.enrollment_id.clone(), ..proof.clone() };
    assert!(matches!(finish(&pending2, &moved), Err(EnrollError::ActivationFailed)));
    finish(&pending, &proof).unwrap();
    h.assert_clean();
}

/// (c) An EK certificate from a CA the verifier does not trust.
#[test]
fn untrusted_ek_ca_is_refused() {
    let h = Host::new();
    let req = h.enroll_request();
    let rng = SystemRandom::new();

    let e = begin(&req, &TrustAnchors::new(), ValidationTime::Now, &rng).unwrap_err();
    assert!(matches!(e, EnrollError::EkCertificate(EkCertError::UntrustedIssuer { .. })), "{e}");
    assert!(e.to_string().contains("untrusted issuer"), "{e}");

    // Another swtpm's local CA: its issuer has the same subject name
    // ("swtpm-localca"), so the chain builder tries it and reports the more
    // specific failure, the signature that does not verify.
    let other = Swtpm::start_provisioned();
    let ca = other.local_ca();
    let anchors = TrustAnchors::from_files(&[
        ca.join("issuercert.pem"),
        ca.join("swtpm-localca-rootca-cert.pem"),
    ])
    .unwrap();
    let e = begin(&req, &anchors, ValidationTime::Now, &rng).unwrap_err();
    assert!(matches!(e, EnrollError::EkCertificate(EkCertError::BadSignature { .. })), "{e}");

    // Without a certificate: refused unless explicitly allowed.
    let bare = EnrollRequest { ek_cert: None, ..req };
    assert!(matches!(h.begin(&bare), Err(EnrollError::EkCertificateMissing)));
    h.assert_clean();
}

/// (d) An AK that is not restricted (a key that could sign forged quotes).
#[test]
fn unrestricted_ak_is_refused() {
    let h = Host::new();
    let req = h.enroll_request();
    let mut ak = B64.decode(&req.ak_public).unwrap();
    // TPMA_OBJECT is the big-endian u32 at bytes 6..10 of the TPM2B_PUBLIC
    // (size, type, nameAlg); restricted is bit 16.
    assert_eq!(ak[7] & 0x01, 0x01, "restricted bit set by host init");
    ak[7] &= !0x01;
    let mut bad = EnrollRequest { ak_public: B64.encode(&ak), ..req.clone() };
    let e = h.begin(&bad).unwrap_err();
    assert!(
        matches!(&e, EnrollError::AkAttributes { problem, .. } if problem.contains("restricted")),
        "{e}"
    );
    // Consistent Name, same refusal.
    bad.ak_name = hex::encode(TpmPublic::from_tpm2b_public(&ak).unwrap().name());
    let e = h.begin(&bad).unwrap_err();
    assert!(matches!(e, EnrollError::AkAttributes { .. }), "{e}");
    // The genuine AK with a wrong Name.
    let mut name = hex::decode(&req.ak_name).unwrap();
    name[2] ^= 0xff;
    let wrong = EnrollRequest { ak_name: hex::encode(name), ..req };
    assert!(matches!(h.begin(&wrong), Err(EnrollError::AkNameMismatch { .. })));
    h.assert_clean();
}

/// (e) A host id that is not the EK's.
#[test]
fn host_id_must_match_the_ek() {
    let h = Host::new();
    let req = h.enroll_request();
    let bad = EnrollRequest { host_id: hex_sha256(b"another host"), ..req.clone() };
    let e = h.begin(&bad).unwrap_err();
    assert!(matches!(e, EnrollError::HostIdMismatch { .. }), "{e}");
    let bad = EnrollRequest { host_id: String::new(), ..req };
    assert!(matches!(h.begin(&bad), Err(EnrollError::HostIdMismatch { .. })));
    h.assert_clean();
}
