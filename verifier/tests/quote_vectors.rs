//! Real TPM 2.0 quotes from `shared/test-vectors/tpm-quotes` (read at run
//! time, nothing copied): every one verifies with its key, nonce and PCR
//! values, and every single-byte change of its message, signature, nonce or
//! PCR values fails with the specific error for that part.
//!
//! | source | quotes | key | nonce | PCR values |
//! |---|---|---|---|---|
//! | keylime `quote.out` | 1 | `akpub.pem` and `ak.pub` (same key) | `rand.out` | `quotepcr.out` (tpm2-tools serialized) |
//! | go-attestation Windows GCP | 1 | `AK.Public` (TPMT_PUBLIC) | `Quote.Nonce` (empty) | `Log.PCRs` (SHA-1, 24) |
//! | GCE COS-85 | 6 | `ak_cert.der` and `ak_pub.tpmt_public.bin` | none / `9009` | `expected.json` |
//! | rust-keylime `test-quote.txt` | parse only: no AK exists | | | |

use base64::Engine;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tellus_measured_boot::{Digest, HashAlg, PcrBanks};
use tellus_verifier::tpm::attest::{AkPublic, AkSource, PublicKey, QuoteAttest, TpmSignature};
use tellus_verifier::tpm::pcrs::{parse_pcrs_file, PcrsFormat};
use tellus_verifier::tpm::verify::{self, EventLog, EventLogFormat, VerifyError};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/test-vectors/tpm-quotes")
}

fn read(rel: &str) -> Vec<u8> {
    let p = dir().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn expected() -> Value {
    serde_json::from_slice(&read("expected.json")).unwrap()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// One quote with everything needed to verify it.
struct Case {
    name: String,
    ak: AkPublic,
    attest: Vec<u8>,
    sig: Vec<u8>,
    nonce: Vec<u8>,
    pcrs: PcrBanks,
    log: Option<(Vec<u8>, EventLogFormat)>,
    /// Quoted PCRs the log must vouch for.
    log_checked: Vec<(HashAlg, u32)>,
}

fn keylime() -> Vec<Case> {
    let attest = read("keylime/quote.out");
    let quote = QuoteAttest::parse(&attest).unwrap();
    let (pcrs, format) = parse_pcrs_file(&read("keylime/quotepcr.out"), &quote.pcr_select).unwrap();
    assert_eq!(format, PcrsFormat::Serialized);
    // The PCR file agrees with the values expected.json decoded.
    let exp = &expected()["keylime"]["decoded_and_checked_locally"]["quotepcr.out_values"];
    for (pcr, hexv) in exp.as_object().unwrap() {
        let pcr: u32 = pcr.parse().unwrap();
        assert_eq!(pcrs.get(HashAlg::Sha256, pcr).unwrap().to_hex(), hexv.as_str().unwrap());
    }
    let pem = AkPublic::from_bytes(&read("keylime/akpub.pem")).unwrap();
    let tpm = AkPublic::from_bytes(&read("keylime/ak.pub")).unwrap();
    assert_eq!(pem.source, AkSource::Spki);
    assert_eq!(tpm.source, AkSource::Tpm2bPublic);
    assert_eq!(pem.key, tpm.key, "akpub.pem and ak.pub are the same key");
    // ak.name is the TPM name of ak.pub.
    assert_eq!(tpm.tpm.as_ref().unwrap().name(), read("keylime/ak.name"));
    let nonce = read("keylime/rand.out");
    [("keylime quote.out / akpub.pem", pem), ("keylime quote.out / ak.pub", tpm)]
        .into_iter()
        .map(|(name, ak)| Case {
            name: name.into(),
            ak,
            attest: attest.clone(),
            sig: read("keylime/quotesig.out"),
            nonce: nonce.clone(),
            pcrs: pcrs.clone(),
            log: None,
            log_checked: vec![],
        })
        .collect()
}

fn windows() -> Case {
    let d: Value =
        serde_json::from_slice(&read("go-attestation/windows_gcp_shielded_vm.json")).unwrap();
    let ak = AkPublic::from_bytes(&b64(d["AK"]["Public"].as_str().unwrap())).unwrap();
    assert_eq!(ak.source, AkSource::TpmtPublic);
    let mut pcrs = PcrBanks::new();
    for p in d["Log"]["PCRs"].as_array().unwrap() {
        assert_eq!(p["DigestAlg"], 3, "Go's crypto.SHA1");
        let v = Digest::new(HashAlg::Sha1, b64(p["Digest"].as_str().unwrap())).unwrap();
        pcrs.init(p["Index"].as_u64().unwrap() as u32, v).unwrap();
    }
    assert_eq!(pcrs.bank(HashAlg::Sha1).count(), 24);
    Case {
        name: "go-attestation windows_gcp_shielded_vm.json".into(),
        ak,
        attest: b64(d["Quote"]["Quote"].as_str().unwrap()),
        sig: b64(d["Quote"]["Signature"].as_str().unwrap()),
        nonce: b64(d["Quote"]["Nonce"].as_str().unwrap()),
        pcrs,
        log: Some((b64(d["Log"]["Raw"].as_str().unwrap()), EventLogFormat::PcClient)),
        log_checked: [0, 4, 5, 7, 11, 12, 13, 14].iter().map(|&p| (HashAlg::Sha1, p)).collect(),
    }
}

fn gce() -> Vec<Case> {
    let exp = expected();
    let cert = AkPublic::from_bytes(&read("gce-cos85/ak_cert.der")).unwrap();
    let tpmt = AkPublic::from_bytes(&read("gce-cos85/ak_pub.tpmt_public.bin")).unwrap();
    assert_eq!(cert.source, AkSource::Certificate);
    assert_eq!(tpmt.source, AkSource::TpmtPublic);
    assert_eq!(cert.key, tpmt.key, "the AK certificate certifies ak_pub");
    let ak_name = exp["gce-cos85"]["ak_name"].as_str().unwrap();
    assert_eq!(hex::encode(tpmt.tpm.as_ref().unwrap().name()), ak_name);
    let log = read("gce-cos85/event_log.bin");
    let mut out = vec![];
    for (which, att) in exp["gce-cos85"]["attestations"].as_object().unwrap() {
        let nonce = att["nonce_hex"].as_str().map(|h| hex::decode(h).unwrap()).unwrap_or_default();
        for (bank, q) in att["quotes"].as_object().unwrap() {
            let alg = HashAlg::from_name(bank).unwrap();
            let mut pcrs = PcrBanks::new();
            for (pcr, v) in q["pcrs"].as_object().unwrap() {
                let d = Digest::new(alg, hex::decode(v.as_str().unwrap()).unwrap()).unwrap();
                pcrs.init(pcr.parse().unwrap(), d).unwrap();
            }
            // Alternate the key encodings: each verifies half the quotes.
            let ak = if out.len() % 2 == 0 { cert.clone() } else { tpmt.clone() };
            out.push(Case {
                name: format!("gce-cos85 {which} {bank} (AK from {:?})", ak.source),
                ak,
                attest: read(q["attest"].as_str().unwrap()),
                sig: read(q["signature"].as_str().unwrap()),
                nonce: nonce.clone(),
                pcrs,
                log: Some((log.clone(), EventLogFormat::Auto)),
                log_checked: (0..=9).map(|p| (alg, p)).collect(),
            });
        }
    }
    assert_eq!(out.len(), 6);
    out
}

fn all_cases() -> Vec<Case> {
    let mut v = keylime();
    v.push(windows());
    v.extend(gce());
    v
}

fn verify(
    c: &Case,
    attest: &[u8],
    sig: &[u8],
    nonce: &[u8],
    pcrs: &PcrBanks,
) -> Result<(), VerifyError> {
    verify::verify_quote(&c.ak, attest, sig, nonce, pcrs, None).map(|_| ())
}

#[test]
fn every_real_quote_verifies() {
    let exp = expected();
    let mut verified = 0;
    let mut quotes = std::collections::BTreeSet::new();
    for c in all_cases() {
        let log = c.log.as_ref().map(|(b, f)| EventLog::parse(b, *f).unwrap());
        let v = verify::verify_quote(&c.ak, &c.attest, &c.sig, &c.nonce, &c.pcrs, log)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(v.nonce, c.nonce, "{}", c.name);
        assert_eq!(v.pcrs, c.pcrs, "{}", c.name);
        match &v.event_log {
            Some(l) => {
                assert_eq!(l.checked, c.log_checked, "{}: PCRs the log vouches for", c.name);
                assert!(l.log.format_name() == "TCG PC Client", "{}", c.name);
            }
            None => assert!(c.log_checked.is_empty()),
        }
        eprintln!(
            "verified: {} ({}-{}, {} PCRs, clock {}, log checks {})",
            c.name,
            v.scheme,
            v.hash,
            c.pcrs.algorithms().map(|a| c.pcrs.bank(a).count()).sum::<usize>(),
            v.clock_info.clock,
            v.event_log.as_ref().map_or(0, |l| l.checked.len())
        );
        verified += 1;
        quotes.insert(c.attest.clone());
        // Facts match what the collection decoded.
        if c.name.starts_with("gce") {
            let (which, bank) = {
                let mut w = c.name.split(' ');
                w.next();
                (w.next().unwrap().to_string(), w.next().unwrap().to_string())
            };
            let d = &exp["gce-cos85"]["attestations"][&which]["quotes"][&bank]["decoded_attest"];
            assert_eq!(v.clock_info.clock, d["clock"].as_u64().unwrap());
            assert_eq!(u64::from(v.clock_info.reset_count), d["resetCount"].as_u64().unwrap());
            assert_eq!(hex::encode(&v.qualified_signer), d["qualifiedSigner"].as_str().unwrap());
            assert_eq!(hex::encode(&v.pcr_digest), d["pcrDigest"].as_str().unwrap());
            assert_eq!(
                format!("0x{:x}", v.firmware_version),
                d["firmwareVersion"].as_str().unwrap()
            );
            // Finding 4: SHA-256 digests and signatures for every bank.
            assert_eq!(v.hash, HashAlg::Sha256);
        }
        if c.name.starts_with("go-attestation") {
            assert_eq!((v.scheme, v.hash), ("RSASSA", HashAlg::Sha1));
            assert!(v.nonce.is_empty());
        }
    }
    // 2 key encodings for keylime's one quote, 1 Windows quote, 6 GCE quotes.
    assert_eq!(verified, 9, "verifications");
    assert_eq!(quotes.len(), 8, "distinct real quotes verified");
}

#[derive(Default)]
struct Tally(BTreeMap<String, usize>);

impl Tally {
    fn add(&mut self, what: &str, e: &VerifyError) {
        let kind = format!("{e:?}");
        let kind = kind.split([' ', '(', '{']).next().unwrap_or("").to_string();
        *self.0.entry(format!("{what}: {kind}")).or_default() += 1;
    }
}

/// Every byte of message, signature, nonce and PCR values, XOR 0x01 and
/// XOR 0xff: never Ok, never a panic, always the part's specific error.
#[test]
fn every_single_byte_change_is_caught() {
    let mut tally = Tally::default();
    let mut flips = 0usize;
    for c in all_cases() {
        verify(&c, &c.attest, &c.sig, &c.nonce, &c.pcrs).unwrap();
        for mask in [0x01u8, 0xff] {
            for i in 0..c.attest.len() {
                let mut m = c.attest.clone();
                m[i] ^= mask;
                let e = verify(&c, &m, &c.sig, &c.nonce, &c.pcrs).expect_err(&c.name);
                assert!(
                    matches!(e, VerifyError::SignatureInvalid { .. }),
                    "{} message[{i}]^{mask:#x}: {e}",
                    c.name
                );
                tally.add("message", &e);
                flips += 1;
            }
            for i in 0..c.sig.len() {
                let mut s = c.sig.clone();
                s[i] ^= mask;
                let e = verify(&c, &c.attest, &s, &c.nonce, &c.pcrs).expect_err(&c.name);
                assert!(
                    matches!(
                        e,
                        VerifyError::SignatureInvalid { .. }
                            | VerifyError::MalformedSignature(_)
                            | VerifyError::UnsupportedScheme { .. }
                            | VerifyError::KeySchemeMismatch { .. }
                    ),
                    "{} signature[{i}]^{mask:#x}: {e}",
                    c.name
                );
                // The signature value itself (after sigAlg, hash, size).
                if i >= 6 && matches!(TpmSignature::parse(&c.sig), Ok(TpmSignature::Rsassa { .. }))
                {
                    assert!(
                        matches!(e, VerifyError::SignatureInvalid { .. }),
                        "{} signature[{i}]: {e}",
                        c.name
                    );
                }
                tally.add("signature", &e);
                flips += 1;
            }
            for i in 0..c.nonce.len() {
                let mut n = c.nonce.clone();
                n[i] ^= mask;
                let e = verify(&c, &c.attest, &c.sig, &n, &c.pcrs).expect_err(&c.name);
                assert!(
                    matches!(e, VerifyError::NonceMismatch { .. }),
                    "{} nonce[{i}]: {e}",
                    c.name
                );
                tally.add("nonce", &e);
                flips += 1;
            }
            for bank in c.pcrs.algorithms().collect::<Vec<_>>() {
                for (pcr, value) in
                    c.pcrs.bank(bank).map(|(p, v)| (p, v.clone())).collect::<Vec<_>>()
                {
                    for i in 0..value.as_bytes().len() {
                        let mut b = value.as_bytes().to_vec();
                        b[i] ^= mask;
                        let mut pcrs = c.pcrs.clone();
                        pcrs.init(pcr, Digest::new(bank, b).unwrap()).unwrap();
                        let e = verify(&c, &c.attest, &c.sig, &c.nonce, &pcrs).expect_err(&c.name);
                        assert!(
                            matches!(e, VerifyError::PcrDigestMismatch { .. }),
                            "{} PCR {bank}:{pcr}[{i}]: {e}",
                            c.name
                        );
                        tally.add("pcr", &e);
                        flips += 1;
                    }
                }
            }
        }
        // Longer, shorter and (for empty nonces) present nonces.
        let mut longer = c.nonce.clone();
        longer.push(0);
        let e = verify(&c, &c.attest, &c.sig, &longer, &c.pcrs).unwrap_err();
        assert!(matches!(e, VerifyError::NonceMismatch { .. }), "{e}");
        if let Some((_, shorter)) = c.nonce.split_last() {
            let e = verify(&c, &c.attest, &c.sig, shorter, &c.pcrs).unwrap_err();
            assert!(matches!(e, VerifyError::NonceMismatch { .. }), "{e}");
        }
        // A missing and an extra PCR value.
        let bank = c.pcrs.algorithms().next().unwrap();
        let (first, _) = c.pcrs.bank(bank).next().unwrap();
        let mut fewer = PcrBanks::new();
        for (p, v) in c.pcrs.bank(bank).filter(|(p, _)| *p != first) {
            fewer.init(p, v.clone()).unwrap();
        }
        let e = verify(&c, &c.attest, &c.sig, &c.nonce, &fewer).unwrap_err();
        assert!(matches!(e, VerifyError::MissingPcrValue { pcr, .. } if pcr == first), "{e}");
        let other = if bank == HashAlg::Sha512 { HashAlg::Sha1 } else { HashAlg::Sha512 };
        let mut more = c.pcrs.clone();
        more.init(0, Digest::zero(other)).unwrap();
        let e = verify(&c, &c.attest, &c.sig, &c.nonce, &more).unwrap_err();
        assert!(matches!(e, VerifyError::ExtraPcrValue { .. }), "{e}");
    }
    for (k, n) in &tally.0 {
        eprintln!("{n:6} × {k}");
    }
    eprintln!("{flips} single-byte changes, all rejected");
    // 9 verifications × 2 masks × (message + signature + nonce + PCR bytes):
    // 2102 message, 4716 signature, 92 nonce and 10944 PCR-value changes.
    assert_eq!(flips, 17_854);
}

#[test]
fn quotes_do_not_verify_with_other_keys() {
    let cases = all_cases();
    let ek = AkPublic::from_bytes(&read("keylime/ek.pub")).unwrap();
    let ekpem = AkPublic::from_bytes(&read("keylime/ekpub.pem")).unwrap();
    assert_eq!(ek.key, ekpem.key);
    let mut checked = 0;
    for c in &cases {
        for other in cases.iter().map(|o| &o.ak).chain([&ekpem]) {
            if other.key == c.ak.key {
                continue;
            }
            // The EK's TPM public is not a restricted signing key: use the PEM form.
            let e = verify::verify_quote(other, &c.attest, &c.sig, &c.nonce, &c.pcrs, None)
                .unwrap_err();
            assert!(
                matches!(e, VerifyError::SignatureInvalid { .. }),
                "{} with another key: {e}",
                c.name
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
    // The EK's TPM2B_PUBLIC is a restricted *decryption* key.
    let c = &cases[0];
    let e = verify::verify_quote(&ek, &c.attest, &c.sig, &c.nonce, &c.pcrs, None).unwrap_err();
    assert!(matches!(e, VerifyError::AkNotRestricted { missing: "sign", .. }), "{e}");
}

#[test]
fn event_log_that_disagrees_is_caught() {
    // The GCE log replays PCR 0-9; quote the Windows PCRs against it.
    let w = windows();
    let gce_log =
        EventLog::parse(&read("gce-cos85/event_log.bin"), EventLogFormat::PcClient).unwrap();
    let e = verify::verify_quote(&w.ak, &w.attest, &w.sig, &w.nonce, &w.pcrs, Some(gce_log))
        .unwrap_err();
    assert!(matches!(e, VerifyError::LogPcrMismatch { bank: HashAlg::Sha1, pcr: 0, .. }), "{e}");
    // A log that is neither CEL nor PC Client.
    let e = EventLog::parse(b"\x01\x02\x03", EventLogFormat::Auto).unwrap_err();
    assert!(matches!(e, VerifyError::LogFormat { .. }), "{e}");
}

/// rust-keylime's quote string has no AK anywhere: only parsing and the PCR
/// digest can be checked.
#[test]
fn rust_keylime_quote_string_parses() {
    let text = String::from_utf8(read("rust-keylime/test-quote.txt")).unwrap();
    let body = text.trim().strip_prefix('r').unwrap();
    let parts: Vec<&str> = body.split(':').collect();
    assert_eq!(parts.len(), 3);
    let quote = QuoteAttest::parse(&b64(parts[0])).unwrap();
    let sig = TpmSignature::parse(&b64(parts[1])).unwrap();
    let pcrs_file = b64(parts[2]);
    assert_eq!(pcrs_file.len(), 668);
    let (pcrs, format) = parse_pcrs_file(&pcrs_file, &quote.pcr_select).unwrap();
    assert_eq!(format, PcrsFormat::Serialized);
    assert_eq!(quote.extra_data, b"TEST");
    assert_eq!(tellus_verifier::tpm::attest::describe_selection(&quote.pcr_select), "sha1:16");
    match &sig {
        TpmSignature::Rsassa { hash, sig } => {
            assert_eq!(*hash, HashAlg::Sha1);
            assert_eq!(sig.len(), 256);
        }
        other => panic!("{other:?}"),
    }
    // pcrDigest = SHA-1 (the signing hash) of the PCR 16 value in the file.
    verify::check_pcr_digest(&quote, sig.hash_alg(), &pcrs).unwrap();
    let e = verify::check_pcr_digest(&quote, HashAlg::Sha256, &pcrs).unwrap_err();
    assert!(matches!(e, VerifyError::PcrDigestMismatch { .. }), "{e}");
}

/// The README's table of nonces and selections agrees with the parsed quotes.
#[test]
fn selections_match_the_readme() {
    use tellus_verifier::tpm::attest::describe_selection;
    let all24 = |b: &str| {
        format!("{b}:{}", (0..24).map(|i: u32| i.to_string()).collect::<Vec<_>>().join(","))
    };
    let k = QuoteAttest::parse(&read("keylime/quote.out")).unwrap();
    assert_eq!(describe_selection(&k.pcr_select), "sha256:15,16,22");
    assert_eq!(hex::encode(&k.extra_data), "db1db298db6d60e6385b7231743e9c3056a18003");
    let w = windows();
    let wq = QuoteAttest::parse(&w.attest).unwrap();
    assert_eq!(describe_selection(&wq.pcr_select), all24("sha1"));
    for c in gce() {
        let q = QuoteAttest::parse(&c.attest).unwrap();
        let bank = c.pcrs.algorithms().next().unwrap();
        assert_eq!(describe_selection(&q.pcr_select), all24(bank.name()), "{}", c.name);
        assert!(matches!(c.ak.key, PublicKey::Rsa { .. }));
    }
}

/// A small deterministic generator (xorshift64*), for reproducible mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every parser, on every prefix of every real input and on 300 random
/// mutations of each (1-4 bytes changed, or bytes inserted/removed), returns
/// a result: no panic. Truncated quotes never verify.
#[test]
fn parsers_survive_truncation_and_mutation() {
    let mut inputs: Vec<Vec<u8>> = vec![];
    for c in all_cases() {
        inputs.push(c.attest.clone());
        inputs.push(c.sig.clone());
        for n in 0..c.attest.len() {
            let e = verify(&c, &c.attest[..n], &c.sig, &c.nonce, &c.pcrs).unwrap_err();
            assert!(
                matches!(e, VerifyError::SignatureInvalid { .. }),
                "{}: prefix {n}: {e}",
                c.name
            );
        }
    }
    for f in [
        "keylime/ak.pub",
        "keylime/akpub.pem",
        "keylime/ek.pub",
        "keylime/quotepcr.out",
        "gce-cos85/ak_cert.der",
        "gce-cos85/ak_pub.tpmt_public.bin",
    ] {
        inputs.push(read(f));
    }
    let selection = QuoteAttest::parse(&read("keylime/quote.out")).unwrap().pcr_select;
    let exercise = |b: &[u8]| {
        let _ = QuoteAttest::parse(b);
        let _ = TpmSignature::parse(b);
        let _ = AkPublic::from_bytes(b);
        let _ = parse_pcrs_file(b, &selection);
    };
    let mut rng = Rng(0x7e11_05ee_d000_0001);
    let mut runs = 0;
    for input in &inputs {
        for n in 0..=input.len() {
            exercise(&input[..n]);
            runs += 1;
        }
        for _ in 0..300 {
            let mut m = input.clone();
            match rng.below(4) {
                0 => {
                    let at = rng.below(m.len() + 1);
                    m.insert(at, rng.next() as u8);
                }
                1 if !m.is_empty() => {
                    let at = rng.below(m.len());
                    m.remove(at);
                }
                _ => {
                    for _ in 0..=rng.below(4) {
                        let at = rng.below(m.len());
                        m[at] = rng.next() as u8;
                    }
                }
            }
            exercise(&m);
            runs += 1;
        }
    }
    eprintln!("{runs} parser runs on {} inputs", inputs.len());
}
