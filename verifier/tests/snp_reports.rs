//! Real SEV-SNP reports from `shared/test-vectors/sev-snp` (Trustee,
//! virtee/sev, go-sev-guest, enarx/steward, Azure CVM HCL reports), read at
//! run time: each verifies against the built-in AMD roots with the verdict
//! and decoded fields its `expected.json` records, at a fixed validation
//! time; each recorded mutation (changed report byte, changed VCEK byte,
//! VCEK of another chip, wrong ASK, VLEK vs VCEK, expired VLEK, …) is
//! rejected with its own reason.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tellus_verifier::snp::{
    binding_report_data, certs, verify_evidence, verify_report, AmdRoots, AttestationReport,
    CertRole, CertStore, Product, ProductChain, SnpError, SnpEvidence, VerifyOptions,
};

fn dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/test-vectors/sev-snp");
    assert!(d.is_dir(), "test vectors not found at {}", d.display());
    d
}

fn read(rel: &str) -> Vec<u8> {
    let p = dir().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn expected() -> Value {
    serde_json::from_slice(&read("expected.json")).expect("expected.json")
}

/// 2025-06-01T00:00:00Z: inside every certificate's validity here except
/// go-sev-guest's, whose test pins 2022-09-24T01:00:00Z.
const JUNE_2025: i64 = 1_748_736_000;
const GO_SEV_GUEST_TIME: i64 = 1_663_981_200;

fn pem_first(rel: &str) -> Vec<u8> {
    certs::pem_certificates(&read(rel), CertRole::Vcek).expect("PEM").remove(0)
}

/// An Azure HCL report: the SNP report sits at 0x20..0x4C0.
fn hcl_snp(hcl: &[u8]) -> Vec<u8> {
    hcl[0x20..0x4C0].to_vec()
}

fn azure_evidence(rel: &str) -> (Vec<u8>, Vec<u8>) {
    let v: Value = serde_json::from_slice(&read(rel)).expect("json");
    let hcl: Vec<u8> = match (&v["report"], &v["hcl_report"]) {
        (Value::Array(a), _) => a.iter().map(|x| x.as_u64().unwrap() as u8).collect(),
        (_, Value::String(s)) => URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).expect("b64url"),
        _ => panic!("{rel}: no HCL report"),
    };
    let vcek = v["vcek"].as_str().expect("vcek");
    let vcek = if vcek.starts_with("-----") {
        certs::pem_certificates(vcek.as_bytes(), CertRole::Vcek).unwrap().remove(0)
    } else {
        URL_SAFE_NO_PAD.decode(vcek.trim_end_matches('=')).expect("vcek b64url")
    };
    (hcl_snp(&hcl), vcek)
}

/// (name in expected.json, report bytes, signing certificate, time).
fn real_reports() -> Vec<(&'static str, Vec<u8>, Vec<u8>, i64)> {
    let hex_report = String::from_utf8(read("virtee-sev/report_milan.hex")).unwrap();
    let mut v = vec![
        (
            "trustee/test-report.bin",
            read("trustee/test-report.bin"),
            read("trustee/test-vcek.der"),
            JUNE_2025,
        ),
        (
            "trustee/test-vlek-report.bin",
            read("trustee/test-vlek-report.bin"),
            read("trustee/test-vlek.der"),
            JUNE_2025,
        ),
        (
            "virtee-sev/report_milan.hex",
            hex::decode(hex_report.trim()).expect("hex"),
            read("virtee-sev/vcek_milan.der"),
            JUNE_2025,
        ),
        (
            "go-sev-guest/attestation.bin",
            read("go-sev-guest/attestation.bin"),
            read("go-sev-guest/vcek.testcer"),
            GO_SEV_GUEST_TIME,
        ),
        ("steward/milan.rprt", read("steward/milan.rprt"), read("steward/milan.vcek"), JUNE_2025),
        (
            "azure-snp-vtpm",
            hcl_snp(&read("azure-snp-vtpm/hcl-report.bin")),
            pem_first("azure-snp-vtpm/vcek.pem"),
            JUNE_2025,
        ),
    ];
    for f in ["evidence-v0.json", "evidence-v1.json", "evidence-v2.json", "evidence-genoa.json"] {
        let (r, c) = azure_evidence(&format!("azure-snp-vtpm/{f}"));
        v.push(("azure-snp-vtpm", r, c, JUNE_2025));
    }
    v
}

fn opts(roots: &AmdRoots, at: i64) -> VerifyOptions<'_> {
    VerifyOptions { roots, at, report_data: None }
}

#[test]
fn every_real_report_verifies() {
    let roots = AmdRoots::builtin().expect("built-in roots");
    let exp = expected();
    let mut n = 0;
    let mut products = std::collections::BTreeSet::new();
    for (name, bytes, cert, at) in real_reports() {
        let r = AttestationReport::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let v =
            verify_report(&r, &cert, &opts(roots, at)).unwrap_or_else(|e| panic!("{name}: {e}"));
        products.insert(v.leaf.product);
        // Fields against the decoded layout expected.json records.
        let d =
            exp[name].get("decoded_from_fixed_layout").or(exp[name].get("decoded_hcl_snp_report"));
        if let (Some(d), true) = (d, name != "azure-snp-vtpm" || n == 5) {
            let c = v.claims();
            for k in ["measurement", "report_data", "host_data", "chip_id", "family_id", "image_id"]
            {
                assert_eq!(c[k], d[k], "{name}: {k}");
            }
            assert_eq!(c["version"], d["version"], "{name}");
            assert_eq!(c["vmpl"], d["vmpl"], "{name}");
            assert_eq!(c["guest_svn"], d["guest_svn"], "{name}");
            assert_eq!(c["policy"]["raw"], d["policy_hex"], "{name}");
            assert_eq!(
                c["policy"]["debug"],
                Value::Bool(d["policy_decoded"]["debug"] == 1),
                "{name}"
            );
            for t in ["bootloader", "tee", "snp", "microcode"] {
                assert_eq!(c["reported_tcb"][t], d["reported_tcb"][t], "{name}: reported_tcb.{t}");
            }
            let vlek = d["flags_0x48_decoded"]["signing_key (0=VCEK,1=VLEK)"] == 1;
            assert_eq!(c["signing_key"], if vlek { "vlek" } else { "vcek" }, "{name}");
            assert_eq!(v.chip_id_checked, !vlek, "{name}");
        }
        n += 1;
    }
    eprintln!("{n} real reports verified ({products:?})");
    assert_eq!(n, 10);
    assert!(products.contains(&Product::Milan) && products.contains(&Product::Genoa));
}

#[test]
fn trustee_evidence_json_verifies_with_builtin_genoa_roots() {
    let roots = AmdRoots::builtin().unwrap();
    let v: Value = serde_json::from_slice(&read("trustee/e2e-evidence.json")).unwrap();
    let ev = SnpEvidence::from_json(&v).expect("evidence");
    assert_eq!(ev.report.version, 3);
    let ok = verify_evidence(&ev, &CertStore::none(), &opts(roots, JUNE_2025)).expect("verifies");
    assert_eq!(ok.leaf.product, Product::Genoa);
    assert_eq!(ok.claims()["cpuid"]["model"], 160);

    // A changed field in the serde form changes the signed bytes.
    let mut bad = v.clone();
    bad["attestation_report"]["measurement"][0] = Value::from(0);
    let ev = SnpEvidence::from_json(&bad).unwrap();
    assert!(matches!(
        verify_evidence(&ev, &CertStore::none(), &opts(roots, JUNE_2025)),
        Err(SnpError::SignatureInvalid { .. })
    ));
    // An ASK in the evidence that is not AMD's Genoa ASK.
    let mut bad = v.clone();
    let milan_ask = roots.chain(Product::Milan).unwrap().ask.clone();
    bad["cert_chain"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"cert_type": "ASK", "data": milan_ask}));
    let ev = SnpEvidence::from_json(&bad).unwrap();
    assert!(matches!(
        verify_evidence(&ev, &CertStore::none(), &opts(roots, JUNE_2025)),
        Err(SnpError::UntrustedCa { role: CertRole::Ask, product: Product::Genoa })
    ));
    // AMD's own Genoa ASK in the evidence is fine.
    let mut good = v.clone();
    let genoa_ask = roots.chain(Product::Genoa).unwrap().ask.clone();
    good["cert_chain"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"cert_type": "ASK", "data": genoa_ask}));
    let ev = SnpEvidence::from_json(&good).unwrap();
    verify_evidence(&ev, &CertStore::none(), &opts(roots, JUNE_2025)).unwrap();
    // Without the VCEK: rejected, saying where to fetch it.
    let mut none = v.clone();
    none["cert_chain"] = Value::Array(vec![]);
    let ev = SnpEvidence::from_json(&none).unwrap();
    match verify_evidence(&ev, &CertStore::none(), &opts(roots, JUNE_2025)) {
        Err(e @ SnpError::NoLeafCertificate { .. }) => {
            assert!(e.to_string().contains("https://kdsintf.amd.com/vcek/v1/Genoa/"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn vcek_from_an_offline_store() {
    let roots = AmdRoots::builtin().unwrap();
    let report = read("trustee/test-report.bin");
    let ev = SnpEvidence::from_json(
        &serde_json::json!({"attestation_report": STANDARD.encode(&report)}),
    )
    .unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = CertStore::dir(store_dir.path());
    assert!(matches!(
        verify_evidence(&ev, &store, &opts(roots, JUNE_2025)),
        Err(SnpError::NoLeafCertificate { role: CertRole::Vcek, .. })
    ));
    let name =
        format!("vcek-{}-{:016x}.der", hex::encode(ev.report.chip_id), ev.report.reported_tcb);
    std::fs::write(store_dir.path().join(name), read("trustee/test-vcek.der")).unwrap();
    verify_evidence(&ev, &store, &opts(roots, JUNE_2025)).expect("VCEK from the store");
}

/// The binding check: go-sev-guest's report carries REPORT_DATA
/// 01 02 03 04 05 then zeros, i.e. the 48-byte binding 0102030405 00…
/// zero-padded to 64.
#[test]
fn report_data_binding() {
    let roots = AmdRoots::builtin().unwrap();
    let r = AttestationReport::parse(&read("go-sev-guest/attestation.bin")).unwrap();
    let cert = read("go-sev-guest/vcek.testcer");
    let mut binding = [0u8; 48];
    binding[..5].copy_from_slice(&[1, 2, 3, 4, 5]);
    let mut o = opts(roots, GO_SEV_GUEST_TIME);
    o.report_data = Some(binding_report_data(&binding));
    let v = verify_report(&r, &cert, &o).expect("binding matches");
    assert!(v.report_data_checked);
    binding[47] = 1;
    o.report_data = Some(binding_report_data(&binding));
    assert!(matches!(verify_report(&r, &cert, &o), Err(SnpError::ReportDataMismatch { .. })));
}

/// Certificates of a DER PkiPath (SEQUENCE OF Certificate).
fn pkipath(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 4; // 30 82 LL LL
    while i + 4 <= bytes.len() {
        let len = 4 + usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        out.push(bytes[i..i + len].to_vec());
        i += len;
    }
    out
}

type Check = fn(&SnpError) -> bool;

#[test]
fn mutations_are_rejected_with_their_reason() {
    let roots = AmdRoots::builtin().unwrap();
    let milan = roots.chain(Product::Milan).unwrap().clone();
    let genoa = roots.chain(Product::Genoa).unwrap().clone();
    let report = read("trustee/test-report.bin");
    let vcek = read("trustee/test-vcek.der");
    let vlek_report = read("trustee/test-vlek-report.bin");
    let vlek = read("trustee/test-vlek.der");
    let virtee_report =
        hex::decode(String::from_utf8(read("virtee-sev/report_milan.hex")).unwrap().trim())
            .unwrap();
    let virtee_vcek = read("virtee-sev/vcek_milan.der");
    let hcl = read("azure-snp-vtpm/hcl-report.bin");
    let azure_vcek = pem_first("azure-snp-vtpm/vcek.pem");
    let (genoa_report, genoa_vcek) = azure_evidence("azure-snp-vtpm/evidence-genoa.json");
    let old_genoa_ask = pkipath(&read("steward/genoa.pkipath"))
        .into_iter()
        .find(|c| c[..] != genoa.ark[..])
        .expect("steward Genoa ASK");
    assert_ne!(old_genoa_ask, genoa.ask, "steward holds the older SEV-Genoa ASK");

    let with = |f: &dyn Fn(&mut Vec<u8>), b: &[u8]| {
        let mut b = b.to_vec();
        f(&mut b);
        b
    };
    let milan_with_asvk_as_ask = AmdRoots::from_chains(vec![ProductChain {
        ask: milan.asvk.clone().unwrap(),
        ..milan.clone()
    }]);
    let milan_with_genoa_ask =
        AmdRoots::from_chains(vec![ProductChain { ask: genoa.ask.clone(), ..milan.clone() }]);
    let genoa_with_old_ask =
        AmdRoots::from_chains(vec![ProductChain { ask: old_genoa_ask.clone(), ..genoa.clone() }]);

    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &AmdRoots, i64, Check)> = vec![
        (
            "trustee check_report_signature_failure: report[42] += 1",
            with(&|b| b[42] = b[42].wrapping_add(1), &report),
            vcek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::SignatureInvalid { role: CertRole::Vcek }),
        ),
        (
            "trustee check_report_tcb_failure: report[384] += 1 (reported bootloader)",
            with(&|b| b[384] = b[384].wrapping_add(1), &report),
            vcek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::TcbMismatch { component: "bootloader", .. }),
        ),
        (
            "trustee check_vcek_signature_failure: vcek[42] += 1",
            report.clone(),
            with(&|b| b[42] = b[42].wrapping_add(1), &vcek),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::NotSignedBy { role: CertRole::Vcek, issuer: CertRole::Ask, .. }),
        ),
        (
            "trustee check_vlek_report_signature_failure: vlek report[42] += 1",
            with(&|b| b[42] = b[42].wrapping_add(1), &vlek_report),
            vlek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::SignatureInvalid { role: CertRole::Vlek }),
        ),
        (
            "trustee check_vlek_report_tcb_failure: vlek report[384] += 1",
            with(&|b| b[384] = b[384].wrapping_add(1), &vlek_report),
            vlek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::TcbMismatch { component: "bootloader", .. }),
        ),
        (
            "trustee check_vlek_signature_failure: VCEK[42] += 1 offered for a VLEK report",
            vlek_report.clone(),
            with(&|b| b[42] = b[42].wrapping_add(1), &vcek),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::SigningKeyMismatch { report: CertRole::Vlek, cert: CertRole::Vcek }),
        ),
        (
            "trustee check_milan_chain_signature_failure: ASVK in the ASK's place",
            report.clone(),
            vcek.clone(),
            &milan_with_asvk_as_ask,
            JUNE_2025,
            |e| matches!(e, SnpError::NotSignedBy { role: CertRole::Vcek, issuer: CertRole::Ask, .. }),
        ),
        (
            "wrong ASK: Genoa's ASK in Milan's chain",
            report.clone(),
            vcek.clone(),
            &milan_with_genoa_ask,
            JUNE_2025,
            |e| matches!(e, SnpError::NotSignedBy { role: CertRole::Ask, issuer: CertRole::Ark, .. }),
        ),
        (
            "wrong ASK: the older SEV-Genoa ASK (steward genoa.pkipath) for a VCEK of the current one",
            genoa_report.clone(),
            genoa_vcek.clone(),
            &genoa_with_old_ask,
            JUNE_2025,
            |e| matches!(e, SnpError::NotSignedBy { role: CertRole::Vcek, issuer: CertRole::Ask, .. }),
        ),
        (
            "VCEK from another chip (virtee's Milan VCEK for Trustee's report)",
            report.clone(),
            virtee_vcek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::ChipIdMismatch { .. }),
        ),
        (
            "VCEK offered for a VLEK-signed report",
            vlek_report.clone(),
            vcek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::SigningKeyMismatch { report: CertRole::Vlek, cert: CertRole::Vcek }),
        ),
        (
            "expired VLEK (notAfter 2025-12-10) at 2026-01-01",
            vlek_report.clone(),
            vlek.clone(),
            roots,
            1_767_225_600,
            |e| matches!(e, SnpError::NotValidAt { role: CertRole::Vlek, .. }),
        ),
        (
            "VCEK not yet valid (go-sev-guest, an hour before its notBefore)",
            read("go-sev-guest/attestation.bin"),
            read("go-sev-guest/vcek.testcer"),
            roots,
            GO_SEV_GUEST_TIME - 3600,
            |e| matches!(e, SnpError::NotValidAt { role: CertRole::Vcek, .. }),
        ),
        (
            "virtee milan_chain_invalid: vcek[40] ^= 0xff",
            virtee_report.clone(),
            with(&|b| b[40] ^= 0xff, &virtee_vcek),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::NotSignedBy { role: CertRole::Vcek, issuer: CertRole::Ask, .. }),
        ),
        (
            "virtee milan_report_invalid: report[21] ^= 0x80",
            with(&|b| b[21] ^= 0x80, &virtee_report),
            virtee_vcek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::SignatureInvalid { .. }),
        ),
        (
            "trustee az-snp-vtpm: hcl[0x01a6] = 0 (reported SNP SVN)",
            with(&|b| b[0x1a6 - 0x20] = 0, &hcl_snp(&hcl)),
            azure_vcek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::TcbMismatch { component: "snp", .. }),
        ),
        (
            "changed measurement byte (Genoa report)",
            with(&|b| b[0x90] ^= 1, &genoa_report),
            genoa_vcek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::SignatureInvalid { .. }),
        ),
        (
            "report version 1",
            with(&|b| b[0] = 1, &report),
            vcek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::UnsupportedVersion(1)),
        ),
        (
            "report version 6 (unknown)",
            with(&|b| b[0] = 6, &report),
            vcek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::UnsupportedVersion(6)),
        ),
        (
            "truncated report",
            report[..1183].to_vec(),
            vcek.clone(),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::ReportLength { len: 1183, .. }),
        ),
        (
            "parse-only VCEK (trustee test-vcek-invalid-new): does not chain",
            report.clone(),
            read("trustee/test-vcek-invalid-new.der"),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::NotSignedBy { role: CertRole::Vcek, .. }),
        ),
        (
            "parse-only VCEK (trustee test-vcek-invalid-legacy): does not chain",
            report.clone(),
            read("trustee/test-vcek-invalid-legacy.der"),
            roots,
            JUNE_2025,
            |e| matches!(e, SnpError::NotSignedBy { role: CertRole::Vcek, .. }),
        ),
    ];
    let n = cases.len();
    for (name, report, cert, roots, at, check) in cases {
        let res = AttestationReport::parse(&report)
            .and_then(|r| verify_report(&r, &cert, &opts(roots, at)));
        match res {
            Err(e) => {
                assert!(check(&e), "{name}: rejected for the wrong reason: {e:?}");
                eprintln!("rejected as expected: {name}: {e}");
            }
            Ok(_) => panic!("{name}: accepted"),
        }
    }
    eprintln!("{n} mutations rejected, each with its reason");
}

#[test]
fn builtin_roots_are_amds() {
    let roots = AmdRoots::builtin().unwrap();
    for p in Product::ALL {
        let c = roots.chain(p).unwrap_or_else(|| panic!("{p:?}"));
        assert!(c.asvk.is_some(), "{p:?} ASVK");
        // The same ARK/ASK as every upstream in the collection.
        let pinned = certs::ARK_SHA256.iter().find(|(q, _)| *q == p).unwrap().1;
        assert_eq!(c.ark_sha256(), pinned);
    }
    let vt = |rel: &str| certs::pem_certificates(&read(rel), CertRole::Ark).unwrap().remove(0);
    for (p, dir) in
        [(Product::Milan, "milan"), (Product::Genoa, "genoa"), (Product::Turin, "turin")]
    {
        let c = roots.chain(p).unwrap();
        assert_eq!(c.ark, vt(&format!("virtee-sev/builtin/{dir}/ark.pem")), "{p:?} ARK");
        assert_eq!(c.ask, vt(&format!("virtee-sev/builtin/{dir}/ask.pem")), "{p:?} ASK");
    }
    // go-sev-guest's KDS bundles (ASK/ASVK first, then ARK) hold the same certificates.
    for (p, f) in [(Product::Milan, "milan"), (Product::Genoa, "genoa")] {
        let vcek_bundle =
            ProductChain::from_pem_bundle(p, &read(&format!("go-sev-guest/trust/ask_ark_{f}.pem")))
                .unwrap();
        assert_eq!(vcek_bundle.ark, roots.chain(p).unwrap().ark);
        assert_eq!(vcek_bundle.ask, roots.chain(p).unwrap().ask);
    }
    // The Turin VCEK (no Turin report exists in the collection) chains to the built-in Turin ASK.
    let turin = read("virtee-sev/vcek_turin.der");
    let leaf = x509_parser::parse_x509_certificate(&turin).unwrap().1;
    let info = certs::leaf_info(&leaf).unwrap();
    assert_eq!(info.product, Product::Turin);
    assert_eq!(info.hw_id.as_ref().map(Vec::len), Some(8));
    assert!(info.tcb.fmc.is_some());
    let ask =
        x509_parser::parse_x509_certificate(&roots.chain(Product::Turin).unwrap().ask).unwrap().1;
    certs::verify_pss_signed(&leaf, CertRole::Vcek, &ask, CertRole::Ask)
        .expect("Turin VCEK chains");
    // A chain whose ARK is not self-signed by ARK-<product> is refused.
    let genoa = roots.chain(Product::Genoa).unwrap();
    assert!(ProductChain::new(Product::Milan, genoa.ark.clone(), genoa.ask.clone(), None).is_err());
}

#[test]
fn parse_only_vceks_decode_their_extensions() {
    for (f, ucode) in
        [("trustee/test-vcek-invalid-legacy.der", 169u8), ("trustee/test-vcek-invalid-new.der", 30)]
    {
        let der = read(f);
        let c = x509_parser::parse_x509_certificate(&der).unwrap().1;
        let info = certs::leaf_info(&c).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(info.hw_id.as_ref().map(Vec::len), Some(64), "{f}");
        assert_eq!(info.tcb.microcode, ucode, "{f}");
    }
}
