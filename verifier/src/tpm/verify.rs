//! Quote verification: the AK's signature over the `TPMS_ATTEST` bytes (with
//! ring), the nonce, the PCR values against the quote's `pcrDigest`, and
//! optionally an event log replayed against the quoted PCR values.
//!
//! The checks run in this order, so that each failure has one precise cause:
//!
//! 1. parse the `TPMT_SIGNATURE`; check the AK is a restricted signing key
//!    (when its TPM public area is known);
//! 2. verify the signature over the raw `TPMS_ATTEST` bytes: any change to
//!    the quote message fails here, before its contents are believed;
//! 3. parse the (now authenticated) `TPMS_ATTEST`: it must be a quote;
//! 4. `extraData` must equal the expected nonce;
//! 5. the supplied PCR values must cover the quote's selection exactly, and
//!    the signing scheme's hash of their concatenation (banks in selection
//!    order, PCRs ascending) must equal `pcrDigest` (TPM 2.0 Part 3,
//!    TPM2_Quote: the digest uses the signing scheme's hash, not the bank's);
//! 6. an event log, when given, is replayed, and every quoted PCR it touches
//!    must have the quoted value.

use super::attest::{
    describe_selection, modulus_bits, AkPublic, ClockInfo, EccCurve, PcrSelection, PublicKey,
    QuoteAttest, TpmSignature,
};
use crate::tpm_types::{alg, ParseError, TpmPublic};
use serde_json::{json, Value};
use tellus_measured_boot::cel::{self, CelError, CelRecord};
use tellus_measured_boot::pcclient::{self, PcClientError, PcClientLog};
use tellus_measured_boot::pcr::PcrError;
use tellus_measured_boot::{Digest, HashAlg, PcrBanks};

/// Why a quote did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed quote signature: {0}")]
    MalformedSignature(#[source] ParseError),
    #[error("malformed quote message: {0}")]
    MalformedAttest(#[source] ParseError),
    #[error(
        "signature invalid: the {scheme} signature does not verify over the {len}-byte quote \
         message with the {key} AK (the message or signature was altered, or another key signed)"
    )]
    SignatureInvalid { scheme: String, key: String, len: usize },
    #[error("unsupported signature scheme: {scheme} with an {key} AK: {reason}")]
    UnsupportedScheme { scheme: String, key: String, reason: &'static str },
    #[error("the signature is {scheme}, which an {key} AK cannot make")]
    KeySchemeMismatch { scheme: String, key: String },
    #[error(
        "the AK is not a restricted signing key (objectAttributes 0x{attributes:08x} lacks \
         {missing}): such a key signs any data it is given, so its \"quote\" proves nothing"
    )]
    AkNotRestricted { attributes: u32, missing: &'static str },
    #[error(
        "nonce mismatch: the quote's qualifyingData (extraData) is {found} ({found_len} bytes), \
         the expected nonce is {expected} ({expected_len} bytes)"
    )]
    NonceMismatch { expected: String, expected_len: usize, found: String, found_len: usize },
    #[error("the quote selects PCR bank 0x{alg:04x} ({name}), which cannot be hashed here")]
    UnsupportedBank { alg: u16, name: &'static str },
    #[error("the quote's PCR selection lists the {bank} bank twice")]
    DuplicateBank { bank: HashAlg },
    #[error("PCR {bank}:{pcr} is quoted, but no value was supplied for it")]
    MissingPcrValue { bank: HashAlg, pcr: u32 },
    #[error(
        "a value was supplied for PCR {bank}:{pcr}, which the quote does not select ({selection})"
    )]
    ExtraPcrValue { bank: HashAlg, pcr: u32, selection: String },
    #[error(
        "PCR digest mismatch: the {hash} digest of the {count} supplied PCR values ({selection}) \
         is {computed}, the quote's pcrDigest is {quoted}"
    )]
    PcrDigestMismatch {
        hash: HashAlg,
        count: usize,
        selection: String,
        computed: String,
        quoted: String,
    },
    #[error("event log (CEL): {0}")]
    Cel(#[source] CelError),
    #[error("event log (TCG PC Client): {0}")]
    PcClient(#[source] PcClientError),
    #[error(
        "event log: not a TCG Canonical Event Log ({cel}) nor a TCG PC Client log ({pcclient})"
    )]
    LogFormat { cel: CelError, pcclient: PcClientError },
    #[error("event log replay: {0}")]
    Replay(#[source] PcrError),
    #[error(
        "event log record {recnum} (PCR {pcr}): its {alg} digest is not the hash of its content, \
         so the content is not what was measured"
    )]
    LogRecordDigest { recnum: u64, pcr: u32, alg: String },
    #[error(
        "event log does not match the quote: replaying it gives PCR {bank}:{pcr} = {replayed}, \
         the quoted value is {quoted}"
    )]
    LogPcrMismatch { bank: HashAlg, pcr: u32, replayed: String, quoted: String },
}

/// Which event-log format to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventLogFormat {
    /// CEL-TLV first, then TCG PC Client.
    Auto,
    /// TCG Canonical Event Log, TLV form (tellus' launch log).
    Cel,
    /// TCG PC Client (firmware) event log, SHA-1 or crypto-agile
    /// (`/sys/kernel/security/tpm0/binary_bios_measurements`).
    PcClient,
}

/// A decoded event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventLog {
    Cel(Vec<CelRecord>),
    PcClient(PcClientLog),
}

impl EventLog {
    /// Decodes `bytes` in `format`.
    pub fn parse(bytes: &[u8], format: EventLogFormat) -> Result<EventLog, VerifyError> {
        match format {
            EventLogFormat::Cel => cel::decode(bytes).map(EventLog::Cel).map_err(VerifyError::Cel),
            EventLogFormat::PcClient => {
                pcclient::parse(bytes).map(EventLog::PcClient).map_err(VerifyError::PcClient)
            }
            EventLogFormat::Auto => match cel::decode(bytes) {
                Ok(records) => Ok(EventLog::Cel(records)),
                Err(cel) => match pcclient::parse(bytes) {
                    Ok(log) => Ok(EventLog::PcClient(log)),
                    Err(pcclient) => Err(VerifyError::LogFormat { cel, pcclient }),
                },
            },
        }
    }

    /// `CEL` or `TCG PC Client`.
    pub fn format_name(&self) -> &'static str {
        match self {
            EventLog::Cel(_) => "CEL",
            EventLog::PcClient(_) => "TCG PC Client",
        }
    }

    /// Number of records (events).
    pub fn len(&self) -> usize {
        match self {
            EventLog::Cel(r) => r.len(),
            EventLog::PcClient(l) => l.events.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replays the log. A tellus CEL record whose digest is not the hash
    /// of its content is an error (tellus writes those records itself);
    /// for a PC Client log such events are counted (firmware logs often
    /// have them, and only the logged digests enter the PCRs).
    fn replay(&self) -> Result<(PcrBanks, usize), VerifyError> {
        match self {
            EventLog::Cel(records) => {
                for r in records {
                    if let Some(&alg) = r.digest_mismatches().first() {
                        let pcr = match r.handle {
                            cel::Handle::Pcr(p)
                            | cel::Handle::NvIndex(p)
                            | cel::Handle::Ccmr(p) => p,
                        };
                        let alg = HashAlg::from_tpm_alg_id(u16::from(alg))
                            .map(|a| a.name().to_string())
                            .unwrap_or_else(|| format!("0x{alg:02x}"));
                        return Err(VerifyError::LogRecordDigest { recnum: r.recnum, pcr, alg });
                    }
                }
                Ok((cel::replay(records).map_err(VerifyError::Replay)?, 0))
            }
            EventLog::PcClient(log) => {
                let replay = log.replay().map_err(VerifyError::PcClient)?;
                Ok((replay.pcrs, replay.mismatches.len()))
            }
        }
    }
}

/// What an event-log check established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogVerdict {
    /// The decoded log, for claims drawn from its records later.
    pub log: EventLog,
    /// Quoted PCRs the log touches: their replayed value equals the quoted one.
    pub checked: Vec<(HashAlg, u32)>,
    /// Quoted PCRs the log does not touch (not vouched for by the log).
    pub unchecked: Vec<(HashAlg, u32)>,
    /// PC Client events whose logged digest is not the hash of their data.
    pub content_mismatches: usize,
}

/// The facts of a verified quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedQuote {
    /// `RSASSA`, `RSAPSS` or `ECDSA`.
    pub scheme: &'static str,
    /// The signing scheme's hash (also the `pcrDigest` hash).
    pub hash: HashAlg,
    /// The AK, e.g. `RSA-2048`, `ECC P-256`.
    pub ak_key: String,
    /// The AK's TPM name, when its public area was given.
    pub ak_name: Option<Vec<u8>>,
    pub qualified_signer: Vec<u8>,
    /// The quote's qualifyingData, equal to the expected nonce.
    pub nonce: Vec<u8>,
    pub clock_info: ClockInfo,
    pub firmware_version: u64,
    pub selection: Vec<PcrSelection>,
    /// The quoted PCR values (exactly the selection).
    pub pcrs: PcrBanks,
    pub pcr_digest: Vec<u8>,
    pub event_log: Option<LogVerdict>,
}

fn pcr_ref_json(list: &[(HashAlg, u32)]) -> Vec<String> {
    list.iter().map(|(b, p)| format!("{b}:{p}")).collect()
}

impl VerifiedQuote {
    /// The facts as JSON (hex for bytes).
    pub fn to_json(&self) -> Value {
        let mut pcrs = serde_json::Map::new();
        for sel in &self.selection {
            if let Some(bank) = sel.bank() {
                let values: serde_json::Map<String, Value> = sel
                    .pcrs
                    .iter()
                    .filter_map(|&p| Some((p.to_string(), json!(self.pcrs.get(bank, p)?.to_hex()))))
                    .collect();
                pcrs.insert(bank.name().into(), Value::Object(values));
            }
        }
        json!({
            "signature": format!("{}-{}", self.scheme, self.hash.name().to_uppercase()),
            "ak": self.ak_key,
            "ak_name": self.ak_name.as_ref().map(hex::encode),
            "qualified_signer": hex::encode(&self.qualified_signer),
            "nonce": hex::encode(&self.nonce),
            "clock_info": self.clock_info,
            "firmware_version": format!("0x{:016x}", self.firmware_version),
            "pcr_selection": describe_selection(&self.selection),
            "pcr_digest": hex::encode(&self.pcr_digest),
            "pcrs": pcrs,
            "event_log": self.event_log.as_ref().map(|l| json!({
                "format": l.log.format_name(),
                "records": l.log.len(),
                "checked": pcr_ref_json(&l.checked),
                "unchecked": pcr_ref_json(&l.unchecked),
                "content_mismatches": l.content_mismatches,
            })),
        })
    }
}

fn hex_or_empty(b: &[u8]) -> String {
    if b.is_empty() {
        "empty".into()
    } else {
        hex::encode(b)
    }
}

/// Verifies a quote: `attest` is the marshalled `TPMS_ATTEST`, `signature`
/// the marshalled `TPMT_SIGNATURE`, `nonce` the expected qualifyingData
/// (empty: the quote must carry none), `pcrs` the values of exactly the
/// quoted PCRs. See the module docs for the checks and their order.
pub fn verify_quote(
    ak: &AkPublic,
    attest: &[u8],
    signature: &[u8],
    nonce: &[u8],
    pcrs: &PcrBanks,
    log: Option<EventLog>,
) -> Result<VerifiedQuote, VerifyError> {
    let (quote, sig) = authenticate(ak, attest, signature)?;
    check_quote(ak, quote, &sig, nonce, pcrs, log)
}

/// Steps 1-3: parses the signature, checks the AK's attributes (when
/// known), verifies the signature over `attest`, and only then parses it.
pub fn authenticate(
    ak: &AkPublic,
    attest: &[u8],
    signature: &[u8],
) -> Result<(QuoteAttest, TpmSignature), VerifyError> {
    let sig = TpmSignature::parse(signature).map_err(VerifyError::MalformedSignature)?;
    if let Some(tpm) = &ak.tpm {
        let a = tpm.object_attributes;
        let missing = match (a.restricted(), a.sign()) {
            (true, true) => None,
            (false, true) => Some("restricted"),
            (true, false) => Some("sign"),
            (false, false) => Some("restricted and sign"),
        };
        if let Some(missing) = missing {
            return Err(VerifyError::AkNotRestricted { attributes: a.0, missing });
        }
    }
    verify_signature(&ak.key, attest, &sig)?;
    let quote = QuoteAttest::parse(attest).map_err(VerifyError::MalformedAttest)?;
    Ok((quote, sig))
}

/// Steps 4-6 on an authenticated quote.
pub fn check_quote(
    ak: &AkPublic,
    quote: QuoteAttest,
    sig: &TpmSignature,
    nonce: &[u8],
    pcrs: &PcrBanks,
    log: Option<EventLog>,
) -> Result<VerifiedQuote, VerifyError> {
    if quote.extra_data != nonce {
        return Err(VerifyError::NonceMismatch {
            expected: hex_or_empty(nonce),
            expected_len: nonce.len(),
            found: hex_or_empty(&quote.extra_data),
            found_len: quote.extra_data.len(),
        });
    }
    check_pcr_digest(&quote, sig.hash_alg(), pcrs)?;
    let event_log = match log {
        Some(log) => Some(check_log(log, &quote.pcr_select, pcrs)?),
        None => None,
    };
    Ok(VerifiedQuote {
        scheme: sig.scheme_name(),
        hash: sig.hash_alg(),
        ak_key: ak.key.describe(),
        ak_name: ak.tpm.as_ref().map(TpmPublic::name),
        qualified_signer: quote.qualified_signer,
        nonce: quote.extra_data,
        clock_info: quote.clock_info,
        firmware_version: quote.firmware_version,
        selection: quote.pcr_select,
        pcrs: pcrs.clone(),
        pcr_digest: quote.pcr_digest,
        event_log,
    })
}

/// The (bank, PCR) pairs a selection names, in digest order, rejecting
/// banks we cannot hash and banks listed twice.
pub fn selected_pcrs(selection: &[PcrSelection]) -> Result<Vec<(HashAlg, u32)>, VerifyError> {
    let mut out = Vec::new();
    let mut seen: Vec<HashAlg> = Vec::new();
    for sel in selection {
        let bank = sel
            .bank()
            .ok_or(VerifyError::UnsupportedBank { alg: sel.hash, name: alg::name(sel.hash) })?;
        if seen.contains(&bank) {
            return Err(VerifyError::DuplicateBank { bank });
        }
        seen.push(bank);
        out.extend(sel.pcrs.iter().map(|&p| (bank, p)));
    }
    Ok(out)
}

/// Step 5: `pcrs` covers the quote's selection exactly, and `hash` of the
/// selected values in order equals the quote's `pcrDigest`.
pub fn check_pcr_digest(
    quote: &QuoteAttest,
    hash: HashAlg,
    pcrs: &PcrBanks,
) -> Result<(), VerifyError> {
    let selected = selected_pcrs(&quote.pcr_select)?;
    for bank in pcrs.algorithms() {
        for (pcr, _) in pcrs.bank(bank) {
            if !selected.contains(&(bank, pcr)) {
                return Err(VerifyError::ExtraPcrValue {
                    bank,
                    pcr,
                    selection: describe_selection(&quote.pcr_select),
                });
            }
        }
    }
    let mut concat = Vec::new();
    for &(bank, pcr) in &selected {
        let value = pcrs.get(bank, pcr).ok_or(VerifyError::MissingPcrValue { bank, pcr })?;
        concat.extend_from_slice(value.as_bytes());
    }
    let computed = Digest::of(hash, &concat);
    if computed.as_bytes() != quote.pcr_digest.as_slice() {
        return Err(VerifyError::PcrDigestMismatch {
            hash,
            count: selected.len(),
            selection: describe_selection(&quote.pcr_select),
            computed: computed.to_hex(),
            quoted: hex_or_empty(&quote.pcr_digest),
        });
    }
    Ok(())
}

/// Step 6.
fn check_log(
    log: EventLog,
    selection: &[PcrSelection],
    pcrs: &PcrBanks,
) -> Result<LogVerdict, VerifyError> {
    let (replayed, content_mismatches) = log.replay()?;
    let mut checked = Vec::new();
    let mut unchecked = Vec::new();
    for (bank, pcr) in selected_pcrs(selection)? {
        let quoted = pcrs.get(bank, pcr).ok_or(VerifyError::MissingPcrValue { bank, pcr })?;
        match replayed.get(bank, pcr) {
            Some(r) if r == quoted => checked.push((bank, pcr)),
            Some(r) => {
                return Err(VerifyError::LogPcrMismatch {
                    bank,
                    pcr,
                    replayed: r.to_hex(),
                    quoted: quoted.to_hex(),
                })
            }
            None => unchecked.push((bank, pcr)),
        }
    }
    Ok(LogVerdict { log, checked, unchecked, content_mismatches })
}

/// DER `SEQUENCE { INTEGER r, INTEGER s }` for ring's `*_ASN1` algorithms.
fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn int(out: &mut Vec<u8>, v: &[u8]) {
        let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
        let v = v.get(start..).unwrap_or_default();
        let pad = v.first().map_or(true, |&b| b & 0x80 != 0);
        out.push(0x02);
        der_len(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    fn der_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len() - 1);
            let bytes = bytes.get(start..).unwrap_or_default();
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(bytes);
        }
    }
    let mut body = Vec::new();
    int(&mut body, r);
    int(&mut body, s);
    let mut out = vec![0x30];
    der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Verifies `sig` over `message` with `key` (ring). TPM signatures are over
/// the scheme hash of the message, which ring computes itself.
pub fn verify_signature(
    key: &PublicKey,
    message: &[u8],
    sig: &TpmSignature,
) -> Result<(), VerifyError> {
    use ring::signature as rs;
    let scheme = sig.describe();
    let key_name = key.describe();
    let unsupported = |reason| VerifyError::UnsupportedScheme {
        scheme: scheme.clone(),
        key: key_name.clone(),
        reason,
    };
    let invalid = || VerifyError::SignatureInvalid {
        scheme: scheme.clone(),
        key: key_name.clone(),
        len: message.len(),
    };
    match (key, sig) {
        (
            PublicKey::Rsa { modulus, exponent },
            TpmSignature::Rsassa { hash, sig: s } | TpmSignature::Rsapss { hash, sig: s },
        ) => {
            let bits = modulus_bits(modulus);
            if !(2048..=8192).contains(&bits) {
                return Err(unsupported("ring verifies RSA keys of 2048 to 8192 bits only"));
            }
            let pss = matches!(sig, TpmSignature::Rsapss { .. });
            let params: &rs::RsaParameters = match (pss, hash) {
                (false, HashAlg::Sha1) => &rs::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                (false, HashAlg::Sha256) => &rs::RSA_PKCS1_2048_8192_SHA256,
                (false, HashAlg::Sha384) => &rs::RSA_PKCS1_2048_8192_SHA384,
                (false, HashAlg::Sha512) => &rs::RSA_PKCS1_2048_8192_SHA512,
                (true, HashAlg::Sha1) => return Err(unsupported("ring has no RSA-PSS with SHA-1")),
                (true, HashAlg::Sha256) => &rs::RSA_PSS_2048_8192_SHA256,
                (true, HashAlg::Sha384) => &rs::RSA_PSS_2048_8192_SHA384,
                (true, HashAlg::Sha512) => &rs::RSA_PSS_2048_8192_SHA512,
            };
            let e = exponent.to_be_bytes();
            let start = e.iter().position(|&b| b != 0).unwrap_or(e.len() - 1);
            let e = e.get(start..).unwrap_or_default();
            rs::RsaPublicKeyComponents { n: modulus.as_slice(), e }
                .verify(params, message, s)
                .map_err(|_| invalid())
        }
        (PublicKey::Ecc { curve, x, y }, TpmSignature::Ecdsa { hash, r, s }) => {
            let alg: &rs::EcdsaVerificationAlgorithm = match (curve, hash) {
                (EccCurve::P256, HashAlg::Sha256) => &rs::ECDSA_P256_SHA256_ASN1,
                (EccCurve::P256, HashAlg::Sha384) => &rs::ECDSA_P256_SHA384_ASN1,
                (EccCurve::P384, HashAlg::Sha256) => &rs::ECDSA_P384_SHA256_ASN1,
                (EccCurve::P384, HashAlg::Sha384) => &rs::ECDSA_P384_SHA384_ASN1,
                (_, HashAlg::Sha1) => return Err(unsupported("ring has no ECDSA with SHA-1")),
                (_, HashAlg::Sha512) => return Err(unsupported("ring has no ECDSA with SHA-512")),
            };
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(0x04);
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            rs::UnparsedPublicKey::new(alg, &point)
                .verify(message, &ecdsa_der(r, s))
                .map_err(|_| invalid())
        }
        _ => Err(VerifyError::KeySchemeMismatch { scheme, key: key_name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_encoding() {
        assert_eq!(
            ecdsa_der(&[0x01], &[0x80]),
            [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80]
        );
        assert_eq!(ecdsa_der(&[0, 0, 0x7f], &[]), [0x30, 0x06, 0x02, 0x01, 0x7f, 0x02, 0x01, 0x00]);
        let big = ecdsa_der(&[0xff; 100], &[0xff; 100]);
        assert_eq!(&big[..3], &[0x30, 0x81, 206]);
        assert_eq!(big.len(), 3 + 206);
    }

    #[test]
    fn ecdsa_roundtrip_with_ring() {
        use ring::rand::SystemRandom;
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let pub_point = kp.public_key().as_ref();
        let key =
            PublicKey::ecc("test", EccCurve::P256, &pub_point[1..33], &pub_point[33..]).unwrap();
        let msg = b"message";
        let sig = kp.sign(&rng, msg).unwrap();
        let (r, s) = sig.as_ref().split_at(32);
        let tsig = TpmSignature::Ecdsa { hash: HashAlg::Sha256, r: r.to_vec(), s: s.to_vec() };
        verify_signature(&key, msg, &tsig).unwrap();
        assert!(matches!(
            verify_signature(&key, b"other", &tsig),
            Err(VerifyError::SignatureInvalid { .. })
        ));
        let sha1 = TpmSignature::Ecdsa { hash: HashAlg::Sha1, r: r.to_vec(), s: s.to_vec() };
        assert!(matches!(
            verify_signature(&key, msg, &sha1),
            Err(VerifyError::UnsupportedScheme { .. })
        ));
        let rsa = TpmSignature::Rsassa { hash: HashAlg::Sha256, sig: vec![0; 256] };
        assert!(matches!(
            verify_signature(&key, msg, &rsa),
            Err(VerifyError::KeySchemeMismatch { .. })
        ));
    }
}
