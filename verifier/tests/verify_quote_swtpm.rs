//! `tellus-verifier verify-quote` (and `verify-evidence`) on quotes made by
//! real tpm2-tools against a real swtpm: ECC P-256/ECDSA, RSA/RSASSA,
//! RSA/RSAPSS and ECC P-384 AKs, a wrong nonce, a tampered message, and a
//! tellus CEL launch log extended into PCR 13.
//!
//! Needs `swtpm` and tpm2-tools (scripts/setup.sh installs them). There is
//! no resource manager, so transient objects and sessions are flushed after
//! every tpm2-tools call.

use base64::Engine;
use std::path::Path;
use std::process::Command;
use tellus_measured_boot::cel;
use tellus_measured_boot::{Digest, HashAlg};
use tellus_verifier::tpm::attest::QuoteAttest;
use tellus_verifier::tpm::evidence::{
    verify_evidence, EvidenceError, QuotedPcrs, TpmEvidence, TpmQuote,
};
use tellus_verifier::tpm::pcrs::parse_pcrs_file;
use tellus_verifier::tpm::verify::VerifyError;

use swtpm_tests::Swtpm;

mod launch_support;
use launch_support::extend_launch_log;

/// `tpm2_createek` (RSA, in ek.ctx / ek.pub).
fn create_ek(tpm: &Swtpm) {
    tpm.tpm2("tpm2_createek", &["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
}

fn verifier(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tellus-verifier"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run tellus-verifier");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("$ tellus-verifier {}\n{text}", args.join(" "));
    (out.status.code().unwrap_or(-1), text)
}

/// `verify-quote` on `msg`/`sig`/`pcrs` in the TPM's directory.
fn verify_quote(tpm: &Swtpm, ak: &str, nonce: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "verify-quote",
        "--ak-pub",
        ak,
        "--quote",
        "msg",
        "--sig",
        "sig",
        "--pcrs",
        "pcrs",
        "--nonce",
        nonce,
    ];
    args.extend_from_slice(extra);
    verifier(tpm.dir.path(), &args)
}

fn quote(tpm: &Swtpm, ak_ctx: &str, pcrs: &str, nonce: &str, hash: &str, scheme: Option<&str>) {
    let mut args = vec![
        "-c", ak_ctx, "-l", pcrs, "-q", nonce, "-m", "msg", "-s", "sig", "-o", "pcrs", "-g", hash,
    ];
    if let Some(s) = scheme {
        args.extend_from_slice(&["--scheme", s]);
    }
    tpm.tpm2("tpm2_quote", &args);
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

#[test]
fn ecc_p256_ak_quote_and_wrong_nonce() {
    let tpm = Swtpm::start();
    create_ek(&tpm);
    tpm.tpm2(
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u",
            "ak.pub", "-f", "pem", "-n", "ak.name",
        ],
    );
    tpm.tpm2("tpm2_readpublic", &["-c", "ak.ctx", "-o", "ak.tpm2b"]);
    let m = Digest::of(HashAlg::Sha256, b"tellus launch");
    tpm.tpm2("tpm2_pcrextend", &[&format!("13:sha256={}", m.to_hex())]);
    let nonce = "5eed0fc0ffee0123456789abcdef";
    quote(&tpm, "ak.ctx", "sha256:13,14", nonce, "sha256", None);

    let (code, out) = verify_quote(&tpm, "ak.pub", nonce, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("verified:") && out.contains("ECC P-256") && out.contains("ECDSA-SHA256"),
        "{out}"
    );
    assert!(out.contains(&format!("nonce:            {nonce}")), "{out}");
    assert!(out.contains("sha256:13,14"), "{out}");
    let pcr13 = Digest::zero(HashAlg::Sha256).extend(m.as_bytes()).to_hex();
    assert!(out.contains(&pcr13), "PCR 13 = {pcr13}: {out}");
    assert!(out.contains("restricted signing key) were not checked"), "PEM AK: {out}");

    // The TPM2B_PUBLIC form: attributes checked, TPM name shown.
    let (code, out) = verify_quote(&tpm, "ak.tpm2b", nonce, &["--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["verified"], true);
    assert_eq!(j["ak_name"], hex::encode(std::fs::read(tpm.path("ak.name")).unwrap()));
    assert_eq!(j["pcrs"]["sha256"]["13"], pcr13);

    // Wrong nonce: failure naming the nonce.
    let wrong = "5eed0fc0ffee0123456789abcdee";
    let (code, out) = verify_quote(&tpm, "ak.pub", wrong, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("NOT verified: nonce mismatch"), "{out}");
    assert!(out.contains(nonce) && out.contains(wrong), "{out}");
    let (code, out) = verify_quote(&tpm, "ak.pub", "", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nonce mismatch") && out.contains("expected nonce is empty"), "{out}");

    // A tampered message, signature and PCR file.
    let msg = std::fs::read(tpm.path("msg")).unwrap();
    let mut bad = msg.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(tpm.path("msg"), &bad).unwrap();
    let (code, out) = verify_quote(&tpm, "ak.pub", nonce, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature invalid"), "{out}");
    std::fs::write(tpm.path("msg"), &msg).unwrap();
    let pcrs = std::fs::read(tpm.path("pcrs")).unwrap();
    let mut bad = pcrs.clone();
    bad[142] ^= 0x80; // inside the first PCR value
    std::fs::write(tpm.path("pcrs"), &bad).unwrap();
    let (code, out) = verify_quote(&tpm, "ak.pub", nonce, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PCR digest mismatch"), "{out}");
    std::fs::write(tpm.path("pcrs"), &pcrs).unwrap();
    // Unreadable input: exit 2.
    let (code, out) = verify_quote(&tpm, "missing.pub", nonce, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("missing.pub"), "{out}");
}

#[test]
fn rsa_and_p384_aks() {
    let tpm = Swtpm::start();
    create_ek(&tpm);
    let nonce = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff0011223344556677";
    tpm.tpm2("tpm2_pcrextend", &[&format!("14:sha256={}", "ab".repeat(32))]);

    // RSA-2048 RSASSA, AK as TPM2B_PUBLIC (tpm2_createak -u, tss format).
    tpm.tpm2(
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "rsa.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa", "-u",
            "rsa.pub", "-n", "rsa.name",
        ],
    );
    quote(&tpm, "rsa.ctx", "sha256:13,14", nonce, "sha256", None);
    let (code, out) = verify_quote(&tpm, "rsa.pub", nonce, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("RSA-2048") && out.contains("RSASSA-SHA256"), "{out}");
    assert!(
        out.contains(&hex::encode(std::fs::read(tpm.path("rsa.name")).unwrap())),
        "AK name: {out}"
    );
    let (code, out) = verify_quote(&tpm, "rsa.pub", &nonce.replace("77", "78"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nonce mismatch"), "{out}");

    // RSA-2048 RSAPSS.
    tpm.tpm2(
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "pss.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsapss", "-u",
            "pss.pub", "-f", "pem",
        ],
    );
    quote(&tpm, "pss.ctx", "sha256:14", nonce, "sha256", Some("rsapss"));
    let (code, out) = verify_quote(&tpm, "pss.pub", nonce, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("RSAPSS-SHA256"), "{out}");
    // The RSASSA key does not verify the RSAPSS quote.
    let (code, out) = verify_quote(&tpm, "rsa.pub", nonce, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature invalid"), "{out}");

    // ECC P-384 ECDSA-SHA384 over two banks, PCRs as raw values (-F values).
    tpm.tpm2(
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "p384.ctx", "-G", "ecc384", "-g", "sha384", "-s", "ecdsa", "-u",
            "p384.pub",
        ],
    );
    tpm.tpm2(
        "tpm2_quote",
        &[
            "-c",
            "p384.ctx",
            "-l",
            "sha256:13,14+sha384:13",
            "-q",
            nonce,
            "-m",
            "msg",
            "-s",
            "sig",
            "-o",
            "pcrs",
            "-g",
            "sha384",
            "-F",
            "values",
        ],
    );
    let (code, out) = verify_quote(&tpm, "p384.pub", nonce, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ECC P-384") && out.contains("ECDSA-SHA384"), "{out}");
    assert!(out.contains("sha256:13,14+sha384:13") && out.contains("raw PCR values"), "{out}");
}

#[test]
fn cel_launch_log_and_evidence() {
    let tpm = Swtpm::start();
    create_ek(&tpm);
    tpm.tpm2(
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u",
            "ak.pem", "-f", "pem",
        ],
    );
    tpm.tpm2("tpm2_readpublic", &["-c", "ak.ctx", "-o", "ak.tpm2b"]);

    // A tellus launch log, measured into PCR 13 of the SHA-256 bank.
    let records = extend_launch_log(&tpm, "console=ttyS0 tsc_early_khz=2000000");
    let log = cel::encode(&records);
    std::fs::write(tpm.path("launch.cel"), &log).unwrap();

    // The KBS binding as the nonce.
    let jwk =
        serde_json::json!({"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"eA","y":"eQ"});
    let binding = tellus_verifier::tpm::runtime_data_binding(&jwk, "bm9uY2U", "").unwrap();
    let nonce = hex::encode(binding);
    quote(&tpm, "ak.ctx", "sha256:13,14", &nonce, "sha256", None);

    let (code, out) = verify_quote(&tpm, "ak.tpm2b", &nonce, &["--eventlog", "launch.cel"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("event log:        CEL, 3 records"), "{out}");
    assert!(out.contains("replays to the quoted values of: sha256:13"), "{out}");
    assert!(out.contains("does not touch:                  sha256:14"), "{out}");
    // A log short of its last record does not replay to the quoted PCR 13.
    std::fs::write(tpm.path("short.cel"), cel::encode(&records[..2])).unwrap();
    let (code, out) = verify_quote(
        &tpm,
        "ak.tpm2b",
        &nonce,
        &["--eventlog", "short.cel", "--eventlog-format", "cel"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("event log does not match the quote") && out.contains("sha256:13"),
        "{out}"
    );

    // The same quote as tellus evidence.
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let read = |n: &str| std::fs::read(tpm.path(n)).unwrap();
    let attest = read("msg");
    let q = QuoteAttest::parse(&attest).unwrap();
    let (pcrs, _) = parse_pcrs_file(&read("pcrs"), &q.pcr_select).unwrap();
    let evidence = TpmEvidence {
        ak_public: b64(&pem_to_der(&String::from_utf8(read("ak.pem")).unwrap())),
        tpm_quote: TpmQuote {
            signature: b64(&read("sig")),
            message: b64(&attest),
            pcrs: [13, 14]
                .iter()
                .map(|&p| pcrs.get(HashAlg::Sha256, p).unwrap().to_hex())
                .collect(),
        },
        pcr_selection: Some(QuotedPcrs { bank: "sha256".into(), pcrs: vec![13, 14] }),
        ak_tpm_public: Some(b64(&read("ak.tpm2b"))),
        host_id: Some(Digest::of(HashAlg::Sha256, &read("ek.pub")).to_hex()),
        event_log: Some(b64(&log)),
        launch_ticket: None,
        launch_recnum: None,
    };
    let v = verify_evidence(&evidence, &binding).unwrap();
    assert_eq!(v.nonce, binding);
    let l = v.event_log.as_ref().unwrap();
    assert_eq!(l.checked, [(HashAlg::Sha256, 13)]);
    let json = serde_json::to_vec_pretty(&evidence).unwrap();
    std::fs::write(tpm.path("evidence.json"), &json).unwrap();
    let (code, out) = verifier(
        tpm.dir.path(),
        &["verify-evidence", "--evidence", "evidence.json", "--nonce", &nonce],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("CEL, 3 records"), "{out}");

    // Evidence failures, each named.
    let other = tellus_verifier::tpm::runtime_data_binding(&jwk, "bm9uY2V", "").unwrap();
    let e = verify_evidence(&evidence, &other).unwrap_err();
    assert!(matches!(e, EvidenceError::Verify(VerifyError::NonceMismatch { .. })), "{e}");
    let mut forged = records.clone();
    forged[0].content[0] ^= 1; // the content no longer hashes to its digest
    let mut ev = evidence.clone();
    ev.event_log = Some(b64(&cel::encode(&forged)));
    let e = verify_evidence(&ev, &binding).unwrap_err();
    assert!(
        matches!(e, EvidenceError::Verify(VerifyError::LogRecordDigest { recnum: 0, .. })),
        "{e}"
    );
    let mut ev = evidence.clone();
    ev.tpm_quote.pcrs.swap(0, 1);
    let e = verify_evidence(&ev, &binding).unwrap_err();
    assert!(matches!(e, EvidenceError::Verify(VerifyError::PcrDigestMismatch { .. })), "{e}");
    let mut ev = evidence.clone();
    ev.tpm_quote.pcrs.pop();
    let e = verify_evidence(&ev, &binding).unwrap_err();
    assert!(matches!(e, EvidenceError::PcrCount { got: 1, expected: 2, .. }), "{e}");
    let mut ev = evidence.clone();
    ev.pcr_selection = Some(QuotedPcrs { bank: "sha256".into(), pcrs: vec![13] });
    let e = verify_evidence(&ev, &binding).unwrap_err();
    assert!(matches!(e, EvidenceError::SelectionMismatch { .. }), "{e}");
    let mut ev = evidence.clone();
    ev.ak_tpm_public = Some(b64(&read("ek.pub")));
    let e = verify_evidence(&ev, &binding).unwrap_err();
    assert!(matches!(e, EvidenceError::AkMismatch { .. }), "{e}");
    let mut ev = evidence.clone();
    let mut sig = read("sig");
    let n = sig.len();
    sig[n - 1] ^= 1;
    ev.tpm_quote.signature = b64(&sig);
    let e = verify_evidence(&ev, &binding).unwrap_err();
    assert!(matches!(e, EvidenceError::Verify(VerifyError::SignatureInvalid { .. })), "{e}");
}
