//! Shared helpers of the registrar and enrollment tests: test-vector
//! paths, a real swtpm driven by tpm2-tools (EK and AK creation, the
//! enrollment request, `tpm2_activatecredential` on a challenge), and
//! openssl-made certificates.
#![allow(dead_code)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::path::{Path, PathBuf};
use tellus_protocol::enrollment::{EnrollChallenge, EnrollRequest};
use tellus_verifier::config::Config;

/// `shared/test-vectors/ek-certs`, read in place at run time.
pub fn ek_vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/test-vectors/ek-certs")
}

/// `shared/test-vectors/tpm-quotes`.
pub fn quote_vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/test-vectors/tpm-quotes")
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[allow(unused_imports)] // not every test binary needs both
pub use swtpm_tests::{openssl, Swtpm};

/// Creates the EK (`tpm2_createek -G ek_alg`) and an ECC AK (as the
/// launcher does), saves their contexts (ek.ctx, ak.ctx), public areas
/// (ek.pub, ak.pub) and the AK Name (ak.name), then flushes all transient
/// objects: without a resource manager they stay loaded, and swtpm has
/// only three slots.
pub fn create_ek_and_ak(tpm: &Swtpm, ek_alg: &str) {
    tpm.run("tpm2_createek", &["-c", "ek.ctx", "-G", ek_alg, "-u", "ek.pub"]);
    tpm.run(
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u",
            "ak.pub", "-n", "ak.name",
        ],
    );
    tpm.run("tpm2_flushcontext", &["-t"]);
}

/// `tpm2_activatecredential` of the AK and EK of [`create_ek_and_ak`] on
/// `file` (in the TPM's directory): the recovered secret, or the tool's
/// stderr. A low-range EK (RSA 2048, ECC P-256) needs
/// PolicySecret(TPM_RH_ENDORSEMENT) (`policy_session`); the high-range
/// templates set userWithAuth, so the EK's empty password authorizes it.
pub fn activate_credential(
    tpm: &Swtpm,
    policy_session: bool,
    file: &str,
) -> Result<Vec<u8>, String> {
    let _ = std::fs::remove_file(tpm.path("actcred.out"));
    let out = if policy_session {
        tpm.run("tpm2_startauthsession", &["--policy-session", "-S", "s.ctx"]);
        tpm.run("tpm2_policysecret", &["-S", "s.ctx", "-c", "e"]);
        let out = tpm.try_run(
            "tpm2_activatecredential",
            &[
                "-c",
                "ak.ctx",
                "-C",
                "ek.ctx",
                "-i",
                file,
                "-o",
                "actcred.out",
                "-P",
                "session:s.ctx",
            ],
        );
        tpm.run("tpm2_flushcontext", &["s.ctx"]);
        out
    } else {
        tpm.try_run(
            "tpm2_activatecredential",
            &["-c", "ak.ctx", "-C", "ek.ctx", "-i", file, "-o", "actcred.out"],
        )
    };
    // The tool leaves the EK and AK it loaded from their contexts.
    tpm.run("tpm2_flushcontext", &["-t"]);
    if out.status.success() {
        Ok(read(&tpm.path("actcred.out")))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A provisioned swtpm with an RSA 2048 EK (certified by swtpm's local CA
/// at NV 0x01c00002, read out to `ekcert.der`) and an ECC AK.
pub struct TpmHost {
    pub tpm: Swtpm,
}

impl TpmHost {
    pub fn new() -> TpmHost {
        let tpm = Swtpm::start_provisioned();
        create_ek_and_ak(&tpm, "rsa");
        tpm.run("tpm2_nvread", &["0x01c00002", "-C", "o", "-o", "ekcert.der"]);
        TpmHost { tpm }
    }

    /// Makes `config` trust this TPM's EK CA ([`trust_swtpm_ek_ca`]).
    pub fn trust_ek_ca(&self, config: &mut Config) {
        trust_swtpm_ek_ca(config, &self.tpm);
    }

    /// The enrollment request for this TPM's EK, EK certificate and AK.
    pub fn request(&self) -> EnrollRequest {
        let ek = read(&self.tpm.path("ek.pub"));
        EnrollRequest {
            host_id: hex::encode(ring::digest::digest(&ring::digest::SHA256, &ek)),
            ek_public: B64.encode(&ek),
            ek_cert: Some(B64.encode(read(&self.tpm.path("ekcert.der")))),
            ak_public: B64.encode(read(&self.tpm.path("ak.pub"))),
            ak_name: hex::encode(read(&self.tpm.path("ak.name"))),
        }
    }

    /// `tpm2_activatecredential` on the challenge: the recovered secret.
    pub fn activate(&self, c: &EnrollChallenge) -> Vec<u8> {
        let mut file = 0xBADC_C0DEu32.to_be_bytes().to_vec();
        file.extend_from_slice(&1u32.to_be_bytes());
        file.extend(B64.decode(&c.credential_blob).unwrap());
        file.extend(B64.decode(&c.encrypted_secret).unwrap());
        std::fs::write(self.tpm.path("cred.in"), file).unwrap();
        activate_credential(&self.tpm, true, "cred.in").unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Makes `config` trust `tpm`'s EK CA: a copy of the swtpm local CA
/// certificates in `ek-ca` beside the state directory.
pub fn trust_swtpm_ek_ca(config: &mut Config, tpm: &Swtpm) {
    let dir = config.state_dir.with_file_name("ek-ca");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["issuercert.pem", "swtpm-localca-rootca-cert.pem"] {
        std::fs::copy(tpm.local_ca().join(f), dir.join(f)).unwrap();
    }
    config.ek_ca_dir = Some(dir);
}
