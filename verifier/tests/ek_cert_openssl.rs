//! EK chain rules the real vectors do not exercise (RSA-PSS, ECDSA P-384
//! with SHA-384 over a P-256 key, non-CA issuers, pathLenConstraint,
//! keyUsage, unknown critical extensions), on small chains made at run time
//! with the `openssl` command line tool.

mod registrar_support;

use std::path::Path;

use registrar_support::{openssl, read};
use tellus_verifier::registrar::ek_cert::{
    load_certificates, verify_ek_chain, EkCertError, TrustAnchors, ValidationTime,
};

/// Makes `<name>.key` and `<name>.pem` in `dir`: a key of `kind`
/// (`rsa`, `p256`, `p384`), a certificate with the extensions `ext` (lines of
/// an openssl `[v3]` section) signed by `issuer` (or self-signed) with the
/// extra `sign` options (digest, -sigopt).
fn make(dir: &Path, name: &str, kind: &str, issuer: Option<&str>, ext: &str, sign: &[&str]) {
    let key = format!("{name}.key");
    let _ = match kind {
        "rsa" => openssl(
            dir,
            &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &key],
        ),
        "p256" | "p384" => {
            let curve =
                if kind == "p256" { "ec_paramgen_curve:P-256" } else { "ec_paramgen_curve:P-384" };
            openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", curve, "-out", &key])
        }
        other => panic!("{other}"),
    };
    let csr = format!("{name}.csr");
    openssl(dir, &["req", "-new", "-key", &key, "-subj", &format!("/CN={name}"), "-out", &csr]);
    let cnf = format!("{name}.cnf");
    std::fs::write(dir.join(&cnf), format!("[v3]\n{ext}\n")).unwrap();
    let pem = format!("{name}.pem");
    let mut args = vec!["x509", "-req", "-in", &csr, "-out", &pem, "-days", "30"];
    args.extend_from_slice(&["-extfile", &cnf, "-extensions", "v3"]);
    let (ca, ca_key);
    match issuer {
        None => args.extend_from_slice(&["-signkey", &key]),
        Some(i) => {
            ca = format!("{i}.pem");
            ca_key = format!("{i}.key");
            args.extend_from_slice(&["-CA", &ca, "-CAkey", &ca_key, "-CAcreateserial"]);
        }
    }
    args.extend_from_slice(sign);
    openssl(dir, &args);
}

fn der(dir: &Path, name: &str) -> Vec<u8> {
    let p = dir.join(format!("{name}.pem"));
    load_certificates(&read(&p), name).unwrap().remove(0)
}

const CA: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign";
const LEAF: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyEncipherment";
const PSS: [&str; 5] =
    ["-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"];

fn verify(dir: &Path, leaf: &str, inters: &[&str], root: &str) -> Result<usize, EkCertError> {
    let anchors = TrustAnchors::from_files(&[dir.join(format!("{root}.pem"))]).unwrap();
    let inters: Vec<Vec<u8>> = inters.iter().map(|n| der(dir, n)).collect();
    verify_ek_chain(&der(dir, leaf), &inters, &anchors, ValidationTime::Now).map(|v| v.certs.len())
}

#[test]
fn rsa_pss_and_ecdsa_p384_chain() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make(d, "root", "rsa", None, CA, &PSS);
    make(d, "inter", "p384", Some("root"), CA, &PSS);
    make(d, "leaf", "p256", Some("inter"), LEAF, &["-sha384"]);
    make(d, "leaf256", "rsa", Some("inter"), LEAF, &["-sha256"]);
    assert_eq!(verify(d, "leaf", &["inter"], "root").unwrap(), 3);
    assert_eq!(verify(d, "leaf256", &["inter"], "root").unwrap(), 3);

    // PSS with a salt other than the digest length: ring cannot verify it,
    // so it is refused as unsupported rather than accepted.
    make(
        d,
        "odd",
        "p256",
        Some("root"),
        LEAF,
        &["-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:20"],
    );
    let err = verify(d, "odd", &[], "root").unwrap_err();
    assert!(matches!(err, EkCertError::UnsupportedSignatureAlgorithm { .. }), "{err}");

    // A PEM bundle loads as several anchors.
    let mut bundle = read(&d.join("root.pem"));
    bundle.extend_from_slice(&read(&d.join("inter.pem")));
    std::fs::write(d.join("bundle.pem"), bundle).unwrap();
    let mut a = TrustAnchors::new();
    assert_eq!(a.add_file(&d.join("bundle.pem")).unwrap(), 2);
    let v = verify_ek_chain(&der(d, "leaf"), &[] as &[Vec<u8>], &a, ValidationTime::Now).unwrap();
    assert_eq!(v.certs.len(), 2);
}

#[test]
fn issuer_must_be_a_ca_that_signs_certificates() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make(d, "root", "p256", None, CA, &["-sha256"]);
    make(d, "notca", "p256", Some("root"), "basicConstraints=critical,CA:FALSE", &["-sha256"]);
    make(d, "nobc", "p256", Some("root"), "keyUsage=critical,keyCertSign", &["-sha256"]);
    make(
        d,
        "noku",
        "p256",
        Some("root"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature",
        &["-sha256"],
    );
    for (issuer, want) in [("notca", "NotCa"), ("nobc", "NotCa"), ("noku", "NotCertSigner")] {
        let leaf = format!("leaf_{issuer}");
        make(d, &leaf, "p256", Some(issuer), LEAF, &["-sha256"]);
        let err = verify(d, &leaf, &[issuer], "root").unwrap_err();
        let got = match err {
            EkCertError::NotCa { .. } => "NotCa",
            EkCertError::NotCertSigner { .. } => "NotCertSigner",
            ref other => panic!("{issuer}: {other}"),
        };
        assert_eq!(got, want, "{issuer}: {err}");
    }
    // A trust anchor that is not a CA cannot issue either.
    make(d, "eeroot", "p256", None, "basicConstraints=critical,CA:FALSE", &["-sha256"]);
    make(d, "leaf_ee", "p256", Some("eeroot"), LEAF, &["-sha256"]);
    assert!(matches!(verify(d, "leaf_ee", &[], "eeroot"), Err(EkCertError::NotCa { .. })));
}

#[test]
fn path_length_constraint_is_enforced() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make(d, "root", "p256", None, CA, &["-sha256"]);
    make(
        d,
        "i0",
        "p256",
        Some("root"),
        &format!("{CA}\nbasicConstraints=critical,CA:TRUE,pathlen:0"),
        &["-sha256"],
    );
    make(d, "i1", "p256", Some("i0"), CA, &["-sha256"]);
    make(d, "leaf", "p256", Some("i1"), LEAF, &["-sha256"]);
    make(d, "leaf0", "p256", Some("i0"), LEAF, &["-sha256"]);
    assert_eq!(verify(d, "leaf0", &["i0"], "root").unwrap(), 3);
    let err = verify(d, "leaf", &["i1", "i0"], "root").unwrap_err();
    assert!(matches!(err, EkCertError::PathLenExceeded { path_len: 0, below: 1, .. }), "{err}");
}

#[test]
fn unknown_critical_extension_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make(d, "root", "p256", None, CA, &["-sha256"]);
    make(
        d,
        "crit",
        "p256",
        Some("root"),
        &format!("{LEAF}\n1.2.3.4=critical,ASN1:UTF8String:x"),
        &["-sha256"],
    );
    make(
        d,
        "noncrit",
        "p256",
        Some("root"),
        &format!("{LEAF}\n1.2.3.4=ASN1:UTF8String:x"),
        &["-sha256"],
    );
    let err = verify(d, "crit", &[], "root").unwrap_err();
    assert!(
        matches!(err, EkCertError::UnhandledCriticalExtension { ref oid, .. } if oid == "1.2.3.4"),
        "{err}"
    );
    assert_eq!(verify(d, "noncrit", &[], "root").unwrap(), 2);
    // Critical certificatePolicies and extendedKeyUsage, as on Intel's and
    // STMicro's EK CAs, are accepted.
    make(
        d,
        "policies",
        "p256",
        Some("root"),
        &format!("{LEAF}\ncertificatePolicies=critical,1.2.840.113741.1.5.2.1\nextendedKeyUsage=critical,2.23.133.8.1"),
        &["-sha256"],
    );
    assert_eq!(verify(d, "policies", &[], "root").unwrap(), 2);
}
