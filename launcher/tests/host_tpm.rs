//! `tellus host init` and `tellus quote` against real swtpm instances (one
//! per test, provisioned by swtpm_setup with a private local CA where an EK
//! certificate is needed), checked with tpm2-tools and openssl.

mod common;
use base64::Engine;
use common::{tellus, Swtpm};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `tellus` with `args` against `tpm` and `state`.
fn tellus_on(tpm: &str, state: &Path, args: &[&str]) -> Output {
    let out =
        tellus().args(args).arg("--tpm").arg(tpm).arg("--state-dir").arg(state).output().unwrap();
    assert!(!text(&out.stderr).contains("panicked"), "panic:\n{}", text(&out.stderr));
    out
}

/// Runs `host init` and `quote` (evidence to `state/ev.json`) against the
/// TPM at `tpm` on `state`: each must exit 1, and `check` gets its arguments
/// and stderr; no evidence is written.
fn init_and_quote_refused(tpm: &str, state: &Path, check: impl Fn(&[&str], &str)) {
    let ev_file = state.join("ev.json");
    for args in [
        vec!["host", "init"],
        vec!["quote", "--nonce", "00", "--output", ev_file.to_str().unwrap()],
    ] {
        let out = tellus_on(tpm, state, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        check(&args, &text(&out.stderr));
    }
    assert!(!ev_file.exists());
}

fn host_init(tpm: &Swtpm, state: &Path) -> Value {
    let out = tellus_on(&tpm.addr(), state, &["host", "init", "--output", "json"]);
    assert!(out.status.success(), "host init failed:\n{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn quote(tpm: &Swtpm, state: &Path, nonce: &str, pcrs: &str, out_file: &Path) -> Value {
    let out = tellus_on(
        &tpm.addr(),
        state,
        &["quote", "--nonce", nonce, "--pcrs", pcrs, "--output", out_file.to_str().unwrap()],
    );
    assert!(out.status.success(), "quote failed:\n{}", text(&out.stderr));
    serde_json::from_slice(&std::fs::read(out_file).unwrap()).unwrap()
}

/// A tpm2-tools / openssl command; with `tpm`, pointed at that TPM.
fn tool(name: &str, tpm: Option<&Swtpm>) -> Command {
    let mut c = Command::new(name);
    if let Some(t) = tpm {
        let (k, v) = t.tcti_env();
        c.env(k, v);
    }
    c
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

fn sha256_file(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path)).split_whitespace().next().unwrap().to_string()
}

/// A SHA-256 PCR value, lower-case hex (tpm2_pcrread prints "  0 : 0x..").
fn pcr_value(tpm: &Swtpm, pcr: u32) -> String {
    let out = run_ok(tool("tpm2_pcrread", Some(tpm)).arg(format!("sha256:{pcr}")));
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == pcr.to_string()).then(|| v.trim().trim_start_matches("0x").to_lowercase())
        })
        .unwrap_or_else(|| panic!("no PCR {pcr} in: {out}"))
}

fn host_dir(state: &Path) -> PathBuf {
    state.join("host")
}

/// `tpm2_getcap handles-transient` is empty: every object was flushed.
fn assert_no_transient_objects(tpm: &Swtpm) {
    let left = run_ok(tool("tpm2_getcap", Some(tpm)).arg("handles-transient"));
    assert!(left.trim().is_empty(), "transient objects left in the TPM: {left}");
}

/// `openssl pkey` of a DER public key, as DER again (normalised).
fn pubkey_der_of_pem(pem: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "der", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    out.stdout
}

/// `tpm2_print -f pem` of a marshalled TPM2B_PUBLIC, into `pem`.
fn print_pem(tpm2b_public: &Path, pem: &Path) {
    let text = run_ok(
        tool("tpm2_print", None).args(["-t", "TPM2B_PUBLIC", "-f", "pem"]).arg(tpm2b_public),
    );
    std::fs::write(pem, text).unwrap();
}

#[test]
fn host_init_twice_reuses_the_ak_and_saves_the_ek_certificate() {
    let tpm = Swtpm::start_provisioned();
    let state = tempfile::tempdir().unwrap();
    let hd = host_dir(state.path());

    let first = host_init(&tpm, state.path());
    assert_eq!(first["ak_created"], true, "{first}");
    let ak_pub = std::fs::read(hd.join("ak.pub")).unwrap();
    let ak_priv = std::fs::read(hd.join("ak.priv")).unwrap();

    let second = host_init(&tpm, state.path());
    assert_eq!(second["ak_created"], false, "{second}");
    for k in ["host_id", "ak_name", "ak_public", "ek_algorithm"] {
        assert_eq!(first[k], second[k], "{k} changed between two host init runs");
    }
    assert_eq!(std::fs::read(hd.join("ak.pub")).unwrap(), ak_pub, "AK public changed");
    assert_eq!(std::fs::read(hd.join("ak.priv")).unwrap(), ak_priv, "AK private changed");
    assert_no_transient_objects(&tpm);

    // Host id = SHA-256 of the EK's TPM2B_PUBLIC, which is the EK swtpm_setup
    // made persistent at 0x81010001 (same template, same seed).
    let host_id = first["host_id"].as_str().unwrap();
    assert_eq!(host_id.len(), 64);
    assert_eq!(sha256_file(&hd.join("ek.pub")), host_id);
    assert_eq!(std::fs::read_to_string(hd.join("host-id")).unwrap().trim(), host_id);
    let persistent = state.path().join("ek-persistent.pub");
    run_ok(tool("tpm2_readpublic", Some(&tpm)).args(["-c", "0x81010001", "-o"]).arg(&persistent));
    assert_eq!(std::fs::read(&persistent).unwrap(), std::fs::read(hd.join("ek.pub")).unwrap());
    assert_eq!(first["ek_algorithm"], "rsa2048");

    // The EK certificate: saved, X.509, issued by this test's local CA, and
    // certifying this EK.
    assert_eq!(first["ek_cert"], true, "{first}");
    assert_eq!(first["ek_cert_nv_index"], "0x01c00002");
    let der = hd.join("ek-cert.der");
    assert_eq!(PathBuf::from(first["ek_cert_path"].as_str().unwrap()), der);
    let pem = state.path().join("ek-cert.pem");
    run_ok(
        Command::new("openssl")
            .args(["x509", "-inform", "der", "-in"])
            .arg(&der)
            .arg("-out")
            .arg(&pem),
    );
    let issuer =
        run_ok(Command::new("openssl").args(["x509", "-noout", "-issuer", "-in"]).arg(&pem));
    let ca_subject = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(tpm.local_ca().join("issuercert.pem")),
    );
    assert_eq!(
        issuer.trim().trim_start_matches("issuer="),
        ca_subject.trim().trim_start_matches("subject=")
    );
    let verified = run_ok(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(tpm.local_ca().join("swtpm-localca-rootca-cert.pem"))
            .arg("-untrusted")
            .arg(tpm.local_ca().join("issuercert.pem"))
            .arg(&pem),
    );
    assert!(verified.contains(": OK"), "{verified}");
    let cert_key = state.path().join("ek-cert-key.pem");
    run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(&cert_key),
    );
    let ek_pem = state.path().join("ek.pem");
    print_pem(&hd.join("ek.pub"), &ek_pem);
    assert_eq!(pubkey_der_of_pem(&cert_key), pubkey_der_of_pem(&ek_pem));

    // Modes: the directory 0700, the files 0600.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&hd), 0o700);
    for f in ["ak.pub", "ak.priv", "ek.pub", "ek-cert.der", "host-id"] {
        assert_eq!(mode(&hd.join(f)), 0o600, "{f}");
    }

    // The text summary says the same.
    let out = tellus_on(&tpm.addr(), state.path(), &["host", "init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.contains(&format!("host id:  {host_id}")), "{summary}");
    assert!(summary.contains("AK:       reused"), "{summary}");
    assert!(summary.contains("EK cert:  yes"), "{summary}");
}

#[test]
fn the_ak_is_a_restricted_p256_ecdsa_signing_key() {
    let tpm = Swtpm::start_provisioned();
    let state = tempfile::tempdir().unwrap();
    let init = host_init(&tpm, state.path());
    let ak_pub = host_dir(state.path()).join("ak.pub");

    let printed = run_ok(tool("tpm2_print", None).args(["-t", "TPM2B_PUBLIC"]).arg(&ak_pub));
    // tpm2_print's YAML: "attributes:\n  value: a|b|c" etc.
    let value_of = |key: &str| -> String {
        let mut lines = printed.lines();
        while let Some(l) = lines.next() {
            if l.trim_end() == format!("{key}:") {
                let v = lines.next().unwrap_or_default().trim();
                return v.strip_prefix("value: ").unwrap_or(v).to_string();
            }
            if let Some(v) = l.strip_prefix(&format!("{key}: ")) {
                return v.trim().to_string();
            }
        }
        panic!("no {key} in:\n{printed}");
    };
    let attrs = value_of("attributes");
    let set: Vec<&str> = attrs.split('|').collect();
    for a in
        ["fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "restricted", "sign"]
    {
        assert!(set.contains(&a), "AK lacks {a}: {attrs}");
    }
    assert!(!set.contains(&"decrypt"), "AK can decrypt: {attrs}");
    assert_eq!(set.len(), 6, "unexpected attributes: {attrs}");
    assert_eq!(value_of("type"), "ecc");
    assert_eq!(value_of("curve-id"), "NIST p256");
    assert_eq!(value_of("scheme"), "ecdsa");
    assert_eq!(value_of("scheme-halg"), "sha256");
    assert_eq!(value_of("name-alg"), "sha256");

    // `ak_public` (base64 DER SubjectPublicKeyInfo) is the same key.
    let pem = state.path().join("ak.pem");
    print_pem(&ak_pub, &pem);
    let der = B64.decode(init["ak_public"].as_str().unwrap()).unwrap();
    assert_eq!(pubkey_der_of_pem(&pem), der);

    // The AK name reported is the TPM's: load the public part and compare.
    let name_file = state.path().join("ak.name");
    run_ok(
        tool("tpm2_loadexternal", Some(&tpm))
            .args(["-C", "o", "-u"])
            .arg(&ak_pub)
            .arg("-c")
            .arg(state.path().join("ak.ctx"))
            .arg("-n")
            .arg(&name_file),
    );
    run_ok(tool("tpm2_flushcontext", Some(&tpm)).arg("-t"));
    assert_eq!(hex::encode(std::fs::read(&name_file).unwrap()), init["ak_name"].as_str().unwrap());
}

/// Minimal TPMS_ATTEST parse: (magic, type, extraData, pcrDigest of a quote).
fn parse_attest(m: &[u8]) -> (u32, u16, Vec<u8>, Vec<u8>) {
    let u16_at = |at: usize| usize::from(u16::from_be_bytes(m[at..at + 2].try_into().unwrap()));
    let magic = u32::from_be_bytes(m[0..4].try_into().unwrap());
    let typ = u16::from_be_bytes(m[4..6].try_into().unwrap());
    let at = 8 + u16_at(6); // qualifiedSigner
    let extra = m[at + 2..at + 2 + u16_at(at)].to_vec();
    let mut at = at + 2 + extra.len() + 17 + 8; // clockInfo, firmwareVersion
    let count = u32::from_be_bytes(m[at..at + 4].try_into().unwrap());
    at += 4;
    for _ in 0..count {
        at += 2 + 1 + usize::from(m[at + 2]); // hash, sizeofSelect, pcrSelect
    }
    let digest = m[at + 2..at + 2 + u16_at(at)].to_vec();
    (magic, typ, extra, digest)
}

/// Writes the evidence as tpm2-tools files in `dir`: (ak.pem, msg, sig, pcrs).
fn tpm2_tools_files(ev: &Value, dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let b = |v: &Value| B64.decode(v.as_str().unwrap()).unwrap();
    let (der, pem) = (dir.join("ak.der"), dir.join("ak.pem"));
    std::fs::write(&der, b(&ev["ak_public"])).unwrap();
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubin", "-inform", "der", "-in"])
            .arg(&der)
            .arg("-out")
            .arg(&pem),
    );
    let msg = dir.join("quote.msg");
    std::fs::write(&msg, b(&ev["tpm_quote"]["message"])).unwrap();
    let sig = dir.join("quote.sig");
    std::fs::write(&sig, b(&ev["tpm_quote"]["signature"])).unwrap();
    // tpm2_pcrread -o format: the digests back to back, in selection order.
    let pcrs = dir.join("quote.pcrs");
    let values: Vec<u8> = ev["tpm_quote"]["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| hex::decode(v.as_str().unwrap()).unwrap())
        .collect();
    std::fs::write(&pcrs, values).unwrap();
    (pem, msg, sig, pcrs)
}

fn checkquote(files: &(PathBuf, PathBuf, PathBuf, PathBuf), pcr_list: &str, nonce: &str) -> Output {
    let (pem, msg, sig, pcrs) = files;
    tool("tpm2_checkquote", None)
        .arg("-u")
        .arg(pem)
        .arg("-m")
        .arg(msg)
        .arg("-s")
        .arg(sig)
        .arg("-f")
        .arg(pcrs)
        .args(["-l", pcr_list, "-g", "sha256", "-q", nonce])
        .output()
        .unwrap()
}

#[test]
fn quote_verifies_with_tpm2_checkquote() {
    let tpm = Swtpm::start_provisioned();
    let state = tempfile::tempdir().unwrap();
    let init = host_init(&tpm, state.path());
    let digest = "a5".repeat(32);
    run_ok(tool("tpm2_pcrextend", Some(&tpm)).arg(format!("13:sha256={digest}")));
    let pcr13 = pcr_value(&tpm, 13);
    assert_ne!(pcr13, "00".repeat(32));

    // A 48-byte nonce, the size of the KBS binding (SHA-384).
    let nonce = "5e".repeat(47) + "01";
    let ev_file = state.path().join("evidence.json");
    let ev = quote(&tpm, state.path(), &nonce, "13", &ev_file);
    assert_no_transient_objects(&tpm);

    assert_eq!(ev["tpm_quote"]["pcrs"], serde_json::json!([pcr13]));
    assert_eq!(ev["pcr_selection"], serde_json::json!({"bank": "sha256", "pcrs": [13]}));
    assert_eq!(ev["ak_public"], init["ak_public"]);
    assert_eq!(ev["host_id"], init["host_id"]);
    assert_eq!(ev["event_log"], "");
    assert!(ev["launch_ticket"].is_null());
    let ak_tpm_public = B64.decode(ev["ak_tpm_public"].as_str().unwrap()).unwrap();
    assert_eq!(ak_tpm_public, std::fs::read(host_dir(state.path()).join("ak.pub")).unwrap());

    // The message is a TPMS_ATTEST of a quote carrying the nonce.
    let msg = B64.decode(ev["tpm_quote"]["message"].as_str().unwrap()).unwrap();
    let (magic, typ, extra, pcr_digest) = parse_attest(&msg);
    assert_eq!(magic, 0xff54_4347, "TPM_GENERATED_VALUE");
    assert_eq!(typ, 0x8018, "TPM_ST_ATTEST_QUOTE");
    assert_eq!(hex::encode(extra), nonce);
    assert_eq!(
        pcr_digest,
        ring::digest::digest(&ring::digest::SHA256, &hex::decode(&pcr13).unwrap()).as_ref()
    );
    // The signature is a TPMT_SIGNATURE: sigAlg ECDSA (0x0018), hash SHA-256 (0x000b).
    let sig = B64.decode(ev["tpm_quote"]["signature"].as_str().unwrap()).unwrap();
    assert_eq!(sig[0..4], [0x00, 0x18, 0x00, 0x0b]);

    let dir = tempfile::tempdir().unwrap();
    let files = tpm2_tools_files(&ev, dir.path());
    let ok = checkquote(&files, "sha256:13", &nonce);
    assert!(ok.status.success(), "tpm2_checkquote rejected the quote:\n{}", text(&ok.stderr));

    // Another nonce, another PCR value or another message must fail.
    let mut flipped = nonce.clone();
    flipped.replace_range(0..2, "5f");
    let bad = checkquote(&files, "sha256:13", &flipped);
    assert!(!bad.status.success(), "a flipped nonce passed:\n{}", text(&bad.stdout));
    let good_pcrs = std::fs::read(&files.3).unwrap();
    let mut wrong = good_pcrs.clone();
    wrong[0] ^= 1;
    std::fs::write(&files.3, &wrong).unwrap();
    let bad = checkquote(&files, "sha256:13", &nonce);
    assert!(!bad.status.success(), "a changed PCR value passed:\n{}", text(&bad.stdout));
    std::fs::write(&files.3, &good_pcrs).unwrap();
    let mut tampered = msg.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    std::fs::write(&files.1, &tampered).unwrap();
    let bad = checkquote(&files, "sha256:13", &nonce);
    assert!(!bad.status.success(), "a changed message passed:\n{}", text(&bad.stdout));
}

#[test]
fn quote_of_several_pcrs_and_the_launch_log() {
    let tpm = Swtpm::start_provisioned();
    let state = tempfile::tempdir().unwrap();
    host_init(&tpm, state.path());
    run_ok(tool("tpm2_pcrextend", Some(&tpm)).arg(format!("23:sha256={}", "11".repeat(32))));
    // quote does not interpret the log; it carries its bytes.
    let log = b"\x00\x00\x00\x00not a real log, only bytes to carry";
    std::fs::write(state.path().join("launch-log.cel"), log).unwrap();

    let nonce = "00112233445566778899aabbccddeeff";
    let ev_file = state.path().join("evidence.json");
    let ev = quote(&tpm, state.path(), nonce, "23,0,13,13", &ev_file);
    assert_eq!(ev["pcr_selection"]["pcrs"], serde_json::json!([0, 13, 23]));
    let pcrs = ev["tpm_quote"]["pcrs"].as_array().unwrap();
    assert_eq!(pcrs.len(), 3);
    for (v, p) in pcrs.iter().zip([0, 13, 23]) {
        assert_eq!(v.as_str().unwrap(), pcr_value(&tpm, p), "PCR {p}");
    }
    assert_eq!(B64.decode(ev["event_log"].as_str().unwrap()).unwrap(), log);

    let dir = tempfile::tempdir().unwrap();
    let files = tpm2_tools_files(&ev, dir.path());
    let ok = checkquote(&files, "sha256:0,13,23", nonce);
    assert!(ok.status.success(), "tpm2_checkquote rejected the quote:\n{}", text(&ok.stderr));

    // Trustee's shape: all 24 PCRs.
    let all: Vec<String> = (0..24).map(|p| p.to_string()).collect();
    let ev = quote(&tpm, state.path(), nonce, &all.join(","), &ev_file);
    assert_eq!(ev["tpm_quote"]["pcrs"].as_array().unwrap().len(), 24);
    // tpm2_checkquote 5.4 cannot read a values-only PCR file of more than 7
    // PCRs (its own tpm2_quote -F values output fails the same way), so the
    // PCR digest is checked here and the signature and nonce by the tool.
    let values: Vec<u8> = ev["tpm_quote"]["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(0..)
        .flat_map(|(v, p)| {
            assert_eq!(v.as_str().unwrap(), pcr_value(&tpm, p), "PCR {p}");
            hex::decode(v.as_str().unwrap()).unwrap()
        })
        .collect();
    let msg = B64.decode(ev["tpm_quote"]["message"].as_str().unwrap()).unwrap();
    let (_, _, extra, pcr_digest) = parse_attest(&msg);
    assert_eq!(hex::encode(extra), nonce);
    assert_eq!(pcr_digest, ring::digest::digest(&ring::digest::SHA256, &values).as_ref());
    let (pem, msg, sig, _) = tpm2_tools_files(&ev, dir.path());
    let ok = tool("tpm2_checkquote", None)
        .arg("-u")
        .arg(&pem)
        .arg("-m")
        .arg(&msg)
        .arg("-s")
        .arg(&sig)
        .args(["-g", "sha256", "-q", nonce])
        .output()
        .unwrap();
    assert!(ok.status.success(), "tpm2_checkquote rejected the quote:\n{}", text(&ok.stderr));
    assert_no_transient_objects(&tpm);
}

#[test]
fn host_init_without_an_ek_certificate_reports_it() {
    let tpm = Swtpm::start(); // unprovisioned: no EK certificate in NV
    let state = tempfile::tempdir().unwrap();
    let out = tellus_on(&tpm.addr(), state.path(), &["host", "init", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ek_cert"], false);
    assert!(v["ek_cert_path"].is_null());
    let err = text(&out.stderr);
    assert!(err.contains("no EK certificate at NV index 0x01c00002"), "{err}");
    assert!(!host_dir(state.path()).join("ek-cert.der").exists());
    let out = tellus_on(&tpm.addr(), state.path(), &["host", "init"]);
    assert!(text(&out.stdout).contains("EK cert:  no"), "{}", text(&out.stdout));
    // Quoting does not need the certificate.
    let ev = quote(&tpm, state.path(), "01", "13", &state.path().join("ev.json"));
    assert_eq!(ev["host_id"], v["host_id"]);
    assert_no_transient_objects(&tpm);
}

#[test]
fn quote_before_host_init_says_to_run_it() {
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let ev_file = state.path().join("ev.json");
    let out = tellus_on(
        &tpm.addr(),
        state.path(),
        &["quote", "--nonce", "00ff", "--output", ev_file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no attestation key") && err.contains("run `tellus host init`"), "{err}");
    assert!(!ev_file.exists());
}

#[test]
fn bad_nonces_and_pcrs_are_refused() {
    let state = tempfile::tempdir().unwrap();
    let ev_file = state.path().join("ev.json");
    // No TPM is contacted for these: the address does not matter.
    let tpm = "swtpm:host=127.0.0.1,port=9";
    let cases: [(&str, &str, &str); 5] = [
        ("xyz", "13", "the nonce is not hex"),
        (&"ab".repeat(65), "13", "the nonce is 65 bytes; TPM2_Quote takes at most 64 bytes"),
        ("", "13", "the nonce is empty"),
        ("abc", "13", "the nonce is not hex"),
        ("00", "24", "PCR 24 does not exist"),
    ];
    for (nonce, pcrs, needle) in cases {
        let out = tellus_on(
            tpm,
            state.path(),
            &["quote", "--nonce", nonce, "--pcrs", pcrs, "--output", ev_file.to_str().unwrap()],
        );
        assert!(!out.status.success(), "nonce {nonce:?} pcrs {pcrs} accepted");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
        assert!(!ev_file.exists());
    }
}

#[test]
fn a_tpm_that_is_not_running_is_a_clear_error() {
    let mut tpm = Swtpm::start_provisioned();
    let state = tempfile::tempdir().unwrap();
    host_init(&tpm, state.path());
    let addr = tpm.addr();
    tpm.kill();
    init_and_quote_refused(&addr, state.path(), |args, err| {
        assert!(
            err.contains(&format!("cannot reach the TPM at '{addr}'"))
                && err.contains("is the TPM (or swtpm) running?"),
            "{args:?}: {err}"
        );
    });
}

#[test]
fn another_tpm_is_not_taken_for_this_host() {
    let a = Swtpm::start();
    let b = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let id = host_init(&a, state.path());
    init_and_quote_refused(&b.addr(), state.path(), |args, err| {
        assert!(
            err.contains("endorsement key no longer matches")
                && err.contains(id["host_id"].as_str().unwrap()),
            "{args:?}: {err}"
        );
        assert_no_transient_objects(&b);
    });
    // The saved identity is untouched and still works with its own TPM.
    assert_eq!(host_init(&a, state.path())["host_id"], id["host_id"]);
}

#[test]
fn host_init_recovers_from_an_interrupted_run_and_refuses_a_damaged_state() {
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let hd = host_dir(state.path());
    let first = host_init(&tpm, state.path());

    // ak.pub is written last: without it, the next run makes a new AK.
    std::fs::remove_file(hd.join("ak.pub")).unwrap();
    let second = host_init(&tpm, state.path());
    assert_eq!(second["ak_created"], true);
    assert_eq!(second["host_id"], first["host_id"]);
    assert_ne!(second["ak_public"], first["ak_public"]);

    // Without ak.priv the AK is lost: say so, change nothing.
    std::fs::remove_file(hd.join("ak.priv")).unwrap();
    init_and_quote_refused(&tpm.addr(), state.path(), |_, err| {
        assert!(err.contains("has ak.pub but not ak.priv") && err.contains("move"), "{err}");
    });
    // A damaged blob is named as such.
    std::fs::write(hd.join("ak.priv"), b"\x00\x05abc").unwrap();
    let out = tellus_on(&tpm.addr(), state.path(), &["host", "init"]);
    assert!(
        text(&out.stderr).contains("is not a valid marshalled TPM2B_PRIVATE"),
        "{}",
        text(&out.stderr)
    );
    assert!(!state.path().join("ev.json").exists());
    assert_no_transient_objects(&tpm);
}
