//! Host enrollment against a real TPM: swtpm driven by tpm2-tools.
//!
//! - EK certificates written by `swtpm_setup --create-ek-cert` chain to
//!   swtpm's local CA and certify the EKs `tpm2_createek` creates;
//! - MakeCredential computed in Rust from `tpm2_createek -u` and
//!   `tpm2_createak -n` output is recovered by `tpm2_activatecredential`
//!   for RSA-2048 and ECC P-256 EKs (low-range templates, policy session)
//!   and for ECC P-384 and RSA-3072 EKs (high-range templates, which allow
//!   the EK's empty password), and is not with another AK Name;
//! - the file format matches `tpm2_makecredential -T none` output.

mod registrar_support;

use registrar_support::{activate_credential, create_ek_and_ak, quote_vectors, read, Swtpm};
use tellus_verifier::registrar::ek_cert::{
    ek_public_matches_cert, tpm_device_info, verify_ek_chain, EkCertError, TrustAnchors,
    ValidationTime,
};
use tellus_verifier::registrar::make_credential::{
    make_credential, MakeCredentialError, MakeCredentialOutput,
};
use tellus_verifier::tpm_types::{
    curve, name_from_tpm2b_public, parse_object_name, PublicKey, TpmPublic,
};

/// The EK templates exercised: tpm2_createek -G value, expected public key.
#[derive(Clone, Copy, Debug)]
enum Ek {
    Rsa2048,
    EccP256,
    EccP384,
    Rsa3072,
}

impl Ek {
    fn arg(self) -> &'static str {
        match self {
            Ek::Rsa2048 => "rsa",
            Ek::EccP256 => "ecc",
            Ek::EccP384 => "ecc384",
            Ek::Rsa3072 => "rsa3072",
        }
    }

    /// The high-range templates (TCG EK Credential Profile 2.3, H-2..H-7)
    /// set userWithAuth, so the EK's (empty) password authorizes it; the
    /// low-range ones need PolicySecret(TPM_RH_ENDORSEMENT).
    fn policy_session(self) -> bool {
        matches!(self, Ek::Rsa2048 | Ek::EccP256)
    }
}

/// Creates the EK and an ECC AK ([`create_ek_and_ak`]); their public
/// area and Name.
fn create_keys(tpm: &Swtpm, ek: Ek) -> (TpmPublic, Vec<u8>) {
    create_ek_and_ak(tpm, ek.arg());
    let ek_pub = TpmPublic::from_tpm2b_public(&read(&tpm.path("ek.pub"))).unwrap();
    let ak_name = read(&tpm.path("ak.name"));
    // Our Name computation agrees with the TPM's.
    assert_eq!(name_from_tpm2b_public(&read(&tpm.path("ak.pub"))).unwrap(), ak_name);
    parse_object_name(&ak_name).unwrap();
    (ek_pub, ak_name)
}

/// `tpm2_activatecredential` on `file` (in the TPM's directory): the
/// recovered secret, or the tool's stderr.
fn activate(tpm: &Swtpm, ek: Ek, file: &str) -> Result<Vec<u8>, String> {
    activate_credential(tpm, ek.policy_session(), file)
}

fn run_make_credential(ek: Ek) {
    let tpm = Swtpm::start();
    let (ek_pub, ak_name) = create_keys(&tpm, ek);
    match (ek, &ek_pub.key) {
        (Ek::Rsa2048, PublicKey::Rsa { key_bits: 2048, .. })
        | (Ek::Rsa3072, PublicKey::Rsa { key_bits: 3072, .. }) => {}
        (Ek::EccP256, PublicKey::Ecc { curve: curve::NIST_P256, .. })
        | (Ek::EccP384, PublicKey::Ecc { curve: curve::NIST_P384, .. }) => {}
        (ek, key) => panic!("{ek:?}: unexpected EK {key:?}"),
    }
    let max = ek_pub.name_alg.size();

    // Full-size and short credentials both come back.
    for secret in [vec![0x5a; max], b"tellus host proof".to_vec(), vec![0x01]] {
        let mc = make_credential(&ek_pub, &ak_name, &secret).unwrap();
        std::fs::write(tpm.path("cred.out"), mc.to_tpm2_tools_file()).unwrap();
        let got = activate(&tpm, ek, "cred.out").unwrap_or_else(|e| panic!("{ek:?}: {e}"));
        assert_eq!(got, secret, "{ek:?}");
    }

    // Another AK's Name: the TPM's integrity check fails.
    let secret = b"must not come back".to_vec();
    let mut wrong = ak_name.clone();
    let last = wrong.len() - 1;
    wrong[last] ^= 0x01;
    let mc = make_credential(&ek_pub, &wrong, &secret).unwrap();
    std::fs::write(tpm.path("wrong.out"), mc.to_tpm2_tools_file()).unwrap();
    let err = activate(&tpm, ek, "wrong.out").unwrap_err();
    // TPM_RC_INTEGRITY on parameter 1 (credentialBlob): 0x1DF.
    assert!(err.contains("integrity check failed"), "{ek:?}: {err}");

    // A tampered blob fails too.
    let mc = make_credential(&ek_pub, &ak_name, &secret).unwrap();
    let mut file = mc.to_tpm2_tools_file();
    // Header, TPM2B_ID_OBJECT size, integrityHMAC size and digest, then
    // the first byte of encIdentity.
    file[8 + 2 + 2 + mc.credential_blob().integrity_hmac().len()] ^= 0x80;
    std::fs::write(tpm.path("tampered.out"), file).unwrap();
    let err = activate(&tpm, ek, "tampered.out").unwrap_err();
    assert!(err.contains("integrity check failed"), "{ek:?}: {err}");

    // Longer than the nameAlg digest: refused before it reaches the TPM.
    assert!(matches!(
        make_credential(&ek_pub, &ak_name, &vec![0; max + 1]),
        Err(MakeCredentialError::CredentialTooLong { .. })
    ));
    // The AK is not a storage key: it cannot be the credential's EK.
    let ak_pub = TpmPublic::from_tpm2b_public(&read(&tpm.path("ak.pub"))).unwrap();
    assert!(matches!(
        make_credential(&ak_pub, &ak_name, b"x"),
        Err(MakeCredentialError::NotStorageKey { .. })
    ));

    // tpm2_makecredential -T none writes the same format and sizes, and its
    // output activates too (checking the harness itself).
    let name_hex = hex::encode(&ak_name);
    std::fs::write(tpm.path("secret.data"), b"tellus host proof").unwrap();
    tpm.run(
        "tpm2_makecredential",
        &["-T", "none", "-e", "ek.pub", "-s", "secret.data", "-n", &name_hex, "-o", "tools.out"],
    );
    let tools_file = read(&tpm.path("tools.out"));
    let theirs = MakeCredentialOutput::from_tpm2_tools_file(&tools_file).unwrap();
    assert_eq!(theirs.to_tpm2_tools_file(), tools_file);
    let ours = make_credential(&ek_pub, &ak_name, b"tellus host proof").unwrap();
    assert_eq!(
        ours.credential_blob().integrity_hmac().len(),
        theirs.credential_blob().integrity_hmac().len()
    );
    assert_eq!(
        ours.credential_blob().enc_identity().len(),
        theirs.credential_blob().enc_identity().len()
    );
    match ek_pub.key {
        PublicKey::Rsa { key_bits, .. } => {
            assert_eq!(ours.secret().len(), usize::from(key_bits) / 8);
            assert_eq!(ours.to_tpm2_tools_file().len(), tools_file.len(), "{ek:?}");
        }
        PublicKey::Ecc { .. } => {
            // A TPMS_ECC_POINT of field-size coordinates. tpm2-tools writes
            // its coordinates without leading zero bytes, so its length may
            // be a byte or two shorter.
            let field = ek_pub.name_alg.size();
            let want = (field as u16).to_be_bytes().to_vec();
            assert_eq!(&ours.secret()[..2], &want[..]);
            assert_eq!(&ours.secret()[2 + field..4 + field], &want[..]);
            assert_eq!(ours.secret().len(), 4 + 2 * field);
            assert!(
                theirs.secret().len() <= ours.secret().len() && theirs.secret().len() >= 2 * field
            );
        }
        _ => unreachable!(),
    }
    assert_eq!(activate(&tpm, ek, "tools.out").unwrap(), b"tellus host proof");
}

#[test]
fn make_credential_rsa2048_activates_on_swtpm() {
    run_make_credential(Ek::Rsa2048);
}

#[test]
fn make_credential_ecc_p256_activates_on_swtpm() {
    run_make_credential(Ek::EccP256);
}

#[test]
fn make_credential_ecc_p384_activates_on_swtpm() {
    run_make_credential(Ek::EccP384);
}

#[test]
fn make_credential_rsa3072_activates_on_swtpm() {
    run_make_credential(Ek::Rsa3072);
}

/// swtpm_setup's EK certificates (RSA-2048 at 0x01c00002, ECC P-384 at
/// 0x01c00016) chain to its local CA and certify the EKs tpm2_createek
/// makes from the matching templates.
#[test]
fn swtpm_ek_certificates_chain_and_match_the_eks() {
    let tpm = Swtpm::start_provisioned();
    let ca = tpm.local_ca();
    let root = ca.join("swtpm-localca-rootca-cert.pem");
    let issuer = ca.join("issuercert.pem");
    let anchors = TrustAnchors::from_files(&[&root]).unwrap();
    let issuer_der =
        tellus_verifier::registrar::ek_cert::load_certificates(&read(&issuer), "issuercert.pem")
            .unwrap();

    let mut checked = 0;
    for (index, g) in [("0x01c00002", "rsa"), ("0x01c00016", "ecc384")] {
        let file = format!("ekcert-{index}.der");
        tpm.run("tpm2_nvread", &[index, "-C", "o", "-o", &file]);
        let cert = read(&tpm.path(&file));

        let v = verify_ek_chain(&cert, &issuer_der, &anchors, ValidationTime::Now)
            .unwrap_or_else(|e| panic!("{index}: {e}"));
        assert_eq!(v.certs.len(), 3);
        assert_eq!(v.anchor().unwrap().source, root.display().to_string());
        // The issuing CA alone as anchor also works; the root alone without
        // the intermediate does not.
        let issuer_only = TrustAnchors::from_files(&[&issuer]).unwrap();
        assert_eq!(
            verify_ek_chain(&cert, &[] as &[Vec<u8>], &issuer_only, ValidationTime::Now)
                .unwrap()
                .certs
                .len(),
            2
        );
        assert!(matches!(
            verify_ek_chain(&cert, &[] as &[Vec<u8>], &anchors, ValidationTime::Now),
            Err(EkCertError::UntrustedIssuer { .. })
        ));

        let info = tpm_device_info(&cert).unwrap().unwrap();
        assert_eq!(info.manufacturer.as_deref(), Some("id:00001014"));
        assert_eq!(info.model.as_deref(), Some("swtpm"));

        let ek_file = format!("ek-{g}.pub");
        tpm.run("tpm2_createek", &["-c", "ek.ctx", "-G", g, "-u", &ek_file]);
        tpm.run("tpm2_flushcontext", &["-t"]);
        let ek = TpmPublic::from_tpm2b_public(&read(&tpm.path(&ek_file))).unwrap();
        ek_public_matches_cert(&ek, &cert).unwrap_or_else(|e| panic!("{index}: {e}"));
        checked += 1;
    }
    assert_eq!(checked, 2);

    // Crossed: the RSA EK against the ECC certificate and vice versa.
    let rsa = TpmPublic::from_tpm2b_public(&read(&tpm.path("ek-rsa.pub"))).unwrap();
    let ecc = TpmPublic::from_tpm2b_public(&read(&tpm.path("ek-ecc384.pub"))).unwrap();
    let rsa_cert = read(&tpm.path("ekcert-0x01c00002.der"));
    let ecc_cert = read(&tpm.path("ekcert-0x01c00016.der"));
    assert!(matches!(
        ek_public_matches_cert(&rsa, &ecc_cert),
        Err(EkCertError::KeyMismatch { .. })
    ));
    assert!(matches!(
        ek_public_matches_cert(&ecc, &rsa_cert),
        Err(EkCertError::KeyMismatch { .. })
    ));
    // Another TPM's EK (keylime's vector) does not match this certificate.
    let other =
        TpmPublic::from_tpm2b_public(&read(&quote_vectors().join("keylime/ek.pub"))).unwrap();
    assert!(matches!(
        ek_public_matches_cert(&other, &rsa_cert),
        Err(EkCertError::KeyMismatch { .. })
    ));
    // A P-256 EK is not the P-384 certificate's key.
    tpm.run("tpm2_createek", &["-c", "ek.ctx", "-G", "ecc", "-u", "ek-ecc.pub"]);
    tpm.run("tpm2_flushcontext", &["-t"]);
    let p256 = TpmPublic::from_tpm2b_public(&read(&tpm.path("ek-ecc.pub"))).unwrap();
    assert!(matches!(
        ek_public_matches_cert(&p256, &ecc_cert),
        Err(EkCertError::KeyMismatch { .. })
    ));
}

/// keylime's tpm2-tools files (an RSA EK, an AK Name and a
/// `tpm2_makecredential` output) parse with the structure sizes tpm2-tools
/// wrote; their EK private key is not available, so they are not activated.
#[test]
fn keylime_tpm2_tools_files_parse() {
    let dir = quote_vectors().join("keylime");
    let ek = TpmPublic::from_tpm2b_public(&read(&dir.join("ek.pub"))).unwrap();
    assert!(ek.is_storage_key());
    assert!(matches!(ek.key, PublicKey::Rsa { key_bits: 2048, .. }));
    let ak_name = read(&dir.join("ak.name"));
    assert_eq!(name_from_tpm2b_public(&read(&dir.join("ak.pub"))).unwrap(), ak_name);
    let file = read(&dir.join("mkcred.out"));
    let mc = MakeCredentialOutput::from_tpm2_tools_file(&file).unwrap();
    let secret_len = read(&dir.join("secret.data")).len();
    assert_eq!(mc.credential_blob().integrity_hmac().len(), 32);
    assert_eq!(mc.credential_blob().enc_identity().len(), 2 + secret_len);
    assert_eq!(mc.secret().len(), 256);
    assert_eq!(mc.to_tpm2_tools_file(), file);
    // Ours for the same EK, AK and secret has the same shape.
    let ours = make_credential(&ek, &ak_name, &read(&dir.join("secret.data"))).unwrap();
    assert_eq!(ours.to_tpm2_tools_file().len(), file.len());
}
