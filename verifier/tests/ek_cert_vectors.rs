//! EK certificate chains against the real vectors in
//! `shared/test-vectors/ek-certs` (read in place): the GCE vTPM EK/AK leaf
//! certificates with Google's CA chains, and keylime's TPM manufacturer CA
//! certificates, chained exactly as `expected.json` says.

mod registrar_support;

use std::path::Path;

use registrar_support::{ek_vectors, quote_vectors, read};
use serde_json::Value;
use tellus_verifier::registrar::ek_cert::{
    ek_cert_der, ek_public_matches_cert, load_certificates, tpm_device_info, verify_ek_chain,
    verify_signed_by, EkCertError, TpmDeviceInfo, TrustAnchors, ValidationTime,
};
use tellus_verifier::tpm_types::TpmPublic;

/// 2026-06-01T00:00:00Z: every vector certificate is valid then (the
/// earliest expiry is STM_RSA_01I's, 2029-12-31), so the tests do not
/// depend on the clock.
const PINNED: ValidationTime = ValidationTime::At(1_780_272_000);

fn cert(path: &Path) -> Vec<u8> {
    let mut v = load_certificates(&read(path), &path.display().to_string()).unwrap();
    assert_eq!(v.len(), 1, "{}", path.display());
    v.remove(0)
}

fn expected() -> Value {
    serde_json::from_slice(&read(&ek_vectors().join("expected.json"))).unwrap()
}

fn anchors(paths: &[&Path]) -> TrustAnchors {
    TrustAnchors::from_files(paths).unwrap()
}

const NONE: [Vec<u8>; 0] = [];

#[test]
fn gce_leaves_chain_as_expected_json_says() {
    let exp = expected();
    let leaves = exp["gce"]["leaf_certs"].as_object().unwrap();
    assert_eq!(leaves.len(), 8);
    let gce = ek_vectors().join("gce");
    let mut verified = 0;
    for (file, e) in leaves {
        let chain: Vec<&str> = e["chain (intermediate, root)"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(chain.len(), 2, "{file}");
        let leaf = cert(&gce.join(file));
        let inter = cert(&gce.join(chain[0]));
        let root_path = gce.join(chain[1]);
        let root = cert(&root_path);
        let a = anchors(&[&root_path]);
        for time in [PINNED, ValidationTime::Now] {
            let v = verify_ek_chain(&leaf, std::slice::from_ref(&inter), &a, time)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(v.certs.len(), 3, "{file}");
            assert_eq!(v.certs[0].der, leaf);
            assert_eq!(v.certs[1].der, inter);
            assert_eq!(v.certs[1].source, "intermediate #0");
            assert_eq!(v.anchor().unwrap().der, root);
        }
        // Without the intermediate the leaf's issuer is unknown.
        let err = verify_ek_chain(&leaf, &NONE, &a, PINNED).unwrap_err();
        assert!(matches!(err, EkCertError::UntrustedIssuer { .. }), "{file}: {err}");

        // The role and family in expected.json match the certificate.
        let role = e["role"].as_str().unwrap();
        let family = e["issuer_family"].as_str().unwrap();
        let info = tpm_device_info(&leaf).unwrap();
        if family == "UCA" {
            assert_eq!(
                info,
                Some(TpmDeviceInfo {
                    manufacturer: Some("id:474F4F47".into()),
                    model: Some("vTPM".into()),
                    version: Some("id:20160511".into()),
                }),
                "{file}"
            );
            // UCA leaves have an empty subject and a critical SAN.
            assert!(v_subject_empty(&leaf), "{file}");
        } else {
            assert_eq!(info, None, "{file}");
        }
        assert!(role.starts_with("EK ") || role.starts_with("AK "), "{file}: {role}");
        verified += 1;
    }
    assert_eq!(verified, 8);
}

fn v_subject_empty(der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    c.subject().as_raw() == [0x30, 0x00]
}

/// A verifier configured with every GCE CA certificate: the two roots as
/// anchors and the three intermediates as supplied intermediates picks the
/// right path for each leaf; with all five as anchors (a directory, as
/// Keylime's cert store) each leaf stops at its intermediate.
#[test]
fn gce_path_building_among_all_cas() {
    let exp = expected();
    let leaves = exp["gce"]["leaf_certs"].as_object().unwrap();
    let ca = ek_vectors().join("gce/ca");
    let roots = anchors(&[&ca.join("tpm_ek_root_1.cer"), &ca.join("gcp_ek_ak_ca_root.crt")]);
    let inters: Vec<Vec<u8>> = [
        "tpm_ek_intermediate_2.crt",
        "tpm_ek_intermediate_3.crt",
        "gcp_ek_ak_ca_intermediate_v3.crt",
    ]
    .iter()
    .map(|f| cert(&ca.join(f)))
    .collect();
    let dir = TrustAnchors::from_dir(&ca).unwrap();
    assert_eq!(dir.len(), 5);
    let mut n = 0;
    for (file, e) in leaves {
        let chain: Vec<&str> = e["chain (intermediate, root)"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let leaf = cert(&ek_vectors().join("gce").join(file));
        let v = verify_ek_chain(&leaf, &inters, &roots, PINNED).unwrap();
        assert_eq!(v.certs.len(), 3);
        assert_eq!(v.certs[1].der, cert(&ek_vectors().join("gce").join(chain[0])), "{file}");
        assert_eq!(v.certs[2].der, cert(&ek_vectors().join("gce").join(chain[1])), "{file}");

        let v = verify_ek_chain(&leaf, &NONE, &dir, PINNED).unwrap();
        assert_eq!(v.certs.len(), 2);
        assert_eq!(v.certs[1].der, cert(&ek_vectors().join("gce").join(chain[0])), "{file}");
        assert!(v.certs[1].source.ends_with(chain[0].trim_start_matches("ca/")), "{file}");
        n += 1;
    }
    assert_eq!(n, 8);
}

/// The AK certificate of the real GCE COS-85 attestation (tpm-quotes)
/// chains to tpm_ek_intermediate_2 -> tpm_ek_root_1, as its README says.
#[test]
fn gce_cos85_ak_cert_chains_to_intermediate_2() {
    let ca = ek_vectors().join("gce/ca");
    let leaf = read(&quote_vectors().join("gce-cos85/ak_cert.der"));
    let v = verify_ek_chain(
        &leaf,
        &[cert(&ca.join("tpm_ek_intermediate_2.crt"))],
        &anchors(&[&ca.join("tpm_ek_root_1.cer")]),
        PINNED,
    )
    .unwrap();
    assert_eq!(v.certs.len(), 3);
    // Intermediate 3, the other GCE signer under the same root, did not
    // issue it.
    let err = verify_ek_chain(
        &leaf,
        &[cert(&ca.join("tpm_ek_intermediate_3.crt"))],
        &anchors(&[&ca.join("tpm_ek_root_1.cer")]),
        PINNED,
    )
    .unwrap_err();
    assert!(
        matches!(err, EkCertError::UntrustedIssuer { .. } | EkCertError::BadSignature { .. }),
        "{err}"
    );
}

#[test]
fn keylime_store_parses_and_chains_as_expected_json_says() {
    let exp = expected();
    let certs = exp["keylime-tpm-cert-store"]["certs"].as_object().unwrap();
    assert_eq!(certs.len(), 12);
    let store = ek_vectors().join("keylime-tpm-cert-store");
    let files: Vec<_> =
        std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 12, "every file in the folder is listed in expected.json");
    let all = TrustAnchors::from_dir(&store).unwrap();
    assert_eq!(all.len(), 12);

    let (mut roots, mut chained) = (0, 0);
    for (file, e) in certs {
        let path = store.join(file);
        let c = cert(&path);
        match e["issuer_chain_in_this_folder"].as_str() {
            None => {
                assert!(e["issuer_chain_in_this_folder"].is_null(), "{file}");
                // Self-signed root: its own signature verifies, and it
                // chains to itself as a trust anchor.
                verify_signed_by(&c, &c).unwrap_or_else(|e| panic!("{file}: {e}"));
                let v = verify_ek_chain(&c, &NONE, &anchors(&[&path]), PINNED)
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(v.certs.len(), 2);
                roots += 1;
            }
            Some(chain) => {
                // "A -> B -> ROOT": A, B intermediates, ROOT the anchor.
                let names: Vec<&str> = chain.split(" -> ").collect();
                let (root, inters) = names.split_last().unwrap();
                let inter_ders: Vec<Vec<u8>> =
                    inters.iter().map(|n| cert(&store.join(n))).collect();
                let v = verify_ek_chain(&c, &inter_ders, &anchors(&[&store.join(root)]), PINNED)
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(v.certs.len(), names.len() + 1, "{file}");
                for (i, n) in inters.iter().enumerate() {
                    assert_eq!(v.certs[i + 1].der, cert(&store.join(n)), "{file}");
                }
                assert_eq!(v.anchor().unwrap().der, cert(&store.join(root)), "{file}");
                // The immediate issuer signed it.
                verify_signed_by(&c, &cert(&store.join(names[0]))).unwrap();
                // With the whole store as anchors the chain stops at the
                // immediate issuer.
                let v = verify_ek_chain(&c, &NONE, &all, PINNED).unwrap();
                assert_eq!(v.certs.len(), 2, "{file}");
                assert_eq!(v.certs[1].der, cert(&store.join(names[0])), "{file}");
                // Without its issuer it is untrusted.
                let only_self = anchors(&[&path]);
                let err = verify_ek_chain(&c, &NONE, &only_self, PINNED).unwrap_err();
                assert!(matches!(err, EkCertError::UntrustedIssuer { .. }), "{file}: {err}");
                chained += 1;
            }
        }
    }
    assert_eq!((roots, chained), (6, 6));
}

#[test]
fn wrong_root_is_untrusted() {
    let gce = ek_vectors().join("gce");
    let leaf = cert(&gce.join("uca_tpm_rsa_enc_cert.pem"));
    let inter = cert(&gce.join("ca/tpm_ek_intermediate_3.crt"));
    let err = verify_ek_chain(
        &leaf,
        &[inter],
        &anchors(&[&gce.join("ca/gcp_ek_ak_ca_root.crt")]),
        PINNED,
    )
    .unwrap_err();
    assert!(matches!(err, EkCertError::UntrustedIssuer { .. }), "{err}");
    assert!(err.to_string().contains("add that CA"), "{err}");

    let leaf = cert(&gce.join("pca_tpm_ecc_enc_cert.pem"));
    let store = TrustAnchors::from_dir(&ek_vectors().join("keylime-tpm-cert-store")).unwrap();
    let err = verify_ek_chain(&leaf, &NONE, &store, PINNED).unwrap_err();
    assert!(matches!(err, EkCertError::UntrustedIssuer { .. }), "{err}");
}

#[test]
fn flipped_signature_byte_is_a_bad_signature() {
    let gce = ek_vectors().join("gce");
    let root = gce.join("ca/tpm_ek_root_1.cer");
    let leaf = cert(&gce.join("uca_tpm_ecc_enc_cert.pem"));
    let inter = cert(&gce.join("ca/tpm_ek_intermediate_3.crt"));
    // The signature BIT STRING is the last element of a certificate.
    let flip = |d: &[u8]| {
        let mut d = d.to_vec();
        let n = d.len();
        d[n - 1] ^= 0x01;
        d
    };
    let err =
        verify_ek_chain(&flip(&leaf), std::slice::from_ref(&inter), &anchors(&[&root]), PINNED)
            .unwrap_err();
    assert!(matches!(err, EkCertError::BadSignature { .. }), "{err}");
    let err = verify_ek_chain(&leaf, &[flip(&inter)], &anchors(&[&root]), PINNED).unwrap_err();
    assert!(matches!(err, EkCertError::BadSignature { .. }), "{err}");
    assert!(verify_signed_by(&flip(&leaf), &inter).is_err());

    // ECDSA (Infineon ECC CA, P-384 root) and SHA-1 RSA (Nuvoton) too.
    let store = ek_vectors().join("keylime-tpm-cert-store");
    let ifx = cert(&store.join("IFX_ECC_042.pem"));
    let err =
        verify_ek_chain(&flip(&ifx), &NONE, &anchors(&[&store.join("INF_ECC_010RT.pem")]), PINNED)
            .unwrap_err();
    assert!(matches!(err, EkCertError::BadSignature { .. }), "{err}");
    let ntc = cert(&store.join("NTC2.pem"));
    assert!(matches!(verify_signed_by(&flip(&ntc), &ntc), Err(EkCertError::BadSignature { .. })));
}

#[test]
fn time_outside_validity_is_rejected() {
    let gce = ek_vectors().join("gce");
    let root = gce.join("ca/tpm_ek_root_1.cer");
    let leaf = cert(&gce.join("uca_tpm_rsa_sign_cert.pem")); // 2022-10-07 .. 2052-09-29
    let inter = cert(&gce.join("ca/tpm_ek_intermediate_3.crt")); // 2021-10-12 .. 2121
    let a = anchors(&[&root]);
    let at = |t| verify_ek_chain(&leaf, std::slice::from_ref(&inter), &a, ValidationTime::At(t));
    assert!(matches!(at(1_600_000_000), Err(EkCertError::NotYetValid { .. }))); // 2020
    assert!(matches!(at(2_700_000_000), Err(EkCertError::Expired { .. }))); // 2055
    assert!(at(1_700_000_000).is_ok());
    // An expired issuer in the middle of the chain: STM's root CA (an
    // intermediate here, under GlobalSign) outlives STM_RSA_01I, so check
    // STM_RSA_01I itself after 2029-12-31.
    let store = ek_vectors().join("keylime-tpm-cert-store");
    let stm_i = cert(&store.join("STM_RSA_01I.pem"));
    let stm_rt = cert(&store.join("STM_RSA_RT.pem"));
    let gs = anchors(&[&store.join("GS_TPM_RT.pem")]);
    assert!(verify_ek_chain(&stm_i, std::slice::from_ref(&stm_rt), &gs, PINNED).is_ok());
    let err =
        verify_ek_chain(&stm_i, &[stm_rt], &gs, ValidationTime::At(1_900_000_000)).unwrap_err();
    assert!(matches!(err, EkCertError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("pin the validation time"), "{err}");
}

/// An EK certificate as read from NV: TCG PC Client header and padding.
#[test]
fn nv_header_and_padding_are_tolerated() {
    let gce = ek_vectors().join("gce");
    let leaf = cert(&gce.join("uca_tpm_rsa_enc_cert.pem"));
    let mut nv = vec![0x10, 0x01, 0x00];
    nv.extend_from_slice(&(leaf.len() as u16).to_be_bytes());
    nv.extend_from_slice(&leaf);
    nv.extend_from_slice(&[0xff; 40]);
    assert_eq!(ek_cert_der(&nv).unwrap(), &leaf[..]);
    let mut padded = leaf.clone();
    padded.extend_from_slice(&[0; 17]);
    assert_eq!(ek_cert_der(&padded).unwrap(), &leaf[..]);
    let v = verify_ek_chain(
        &nv,
        &[cert(&gce.join("ca/tpm_ek_intermediate_3.crt"))],
        &anchors(&[&gce.join("ca/tpm_ek_root_1.cer")]),
        PINNED,
    )
    .unwrap();
    assert_eq!(v.certs[0].der, leaf);
    // A header that promises more than there is.
    let mut short = vec![0x10, 0x01, 0x00, 0xff, 0xff];
    short.extend_from_slice(&leaf);
    assert!(matches!(ek_cert_der(&short), Err(EkCertError::Parse { .. })));
    // Garbage.
    assert!(matches!(ek_cert_der(b"not a certificate"), Err(EkCertError::Parse { .. })));
}

/// Key comparison against the EK public areas in the vectors: keylime's
/// RSA EK does not match any GCE certificate's key.
#[test]
fn ek_public_mismatch_is_reported() {
    let ek = TpmPublic::from_tpm2b_public(&read(&quote_vectors().join("keylime/ek.pub"))).unwrap();
    let gce = ek_vectors().join("gce");
    let err =
        ek_public_matches_cert(&ek, &cert(&gce.join("uca_tpm_rsa_enc_cert.pem"))).unwrap_err();
    assert!(matches!(err, EkCertError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("moduli differ"), "{err}");
    let err =
        ek_public_matches_cert(&ek, &cert(&gce.join("uca_tpm_ecc_enc_cert.pem"))).unwrap_err();
    assert!(matches!(err, EkCertError::KeyMismatch { .. }), "{err}");
}

#[test]
fn trust_directory_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(TrustAnchors::from_dir(dir.path()), Err(EkCertError::NoTrustAnchors { .. })));
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    std::fs::write(
        dir.path().join("bad.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = TrustAnchors::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, EkCertError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("bad.pem"), "{err}");
    assert!(matches!(
        TrustAnchors::from_dir(&dir.path().join("missing")),
        Err(EkCertError::Io { .. })
    ));
}
