//! Parsers for the TPM 2.0 structures of a quote (TPM 2.0 Library Part 2):
//! `TPMS_ATTEST` (of type `TPM_ST_ATTEST_QUOTE`), `TPMT_SIGNATURE`,
//! `TPM2B_PUBLIC` / `TPMT_PUBLIC`, and the other encodings an AK public key
//! comes in (PEM or DER SubjectPublicKeyInfo, an X.509 certificate).
//!
//! Every input is untrusted: reads are bounds-checked, sizes are capped at
//! what a TPM can produce, and a structure must use up its input exactly.
//! Nothing here checks a signature; see [`super::verify`].

use tellus_measured_boot::HashAlg;
use x509_parser::prelude::FromDer;

/// `TPM_GENERATED_VALUE`: the magic of every structure a TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// `TPM_ALG_RSA`.
pub const TPM_ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_ECC`.
pub const TPM_ALG_ECC: u16 = 0x0023;
/// `TPM_ALG_NULL`.
pub const TPM_ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_RSASSA` (PKCS#1 v1.5 signatures).
pub const TPM_ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAPSS`.
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ALG_ECDSA`.
pub const TPM_ALG_ECDSA: u16 = 0x0018;
/// `TPM_ALG_ECDAA` (its scheme details carry a counter too).
pub const TPM_ALG_ECDAA: u16 = 0x001a;
/// `TPM_ALG_RSAES` (its scheme details are empty).
pub const TPM_ALG_RSAES: u16 = 0x0015;
/// `TPM_ECC_NIST_P256`.
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
/// `TPM_ECC_NIST_P384`.
pub const TPM_ECC_NIST_P384: u16 = 0x0004;

/// Most PCR banks in a `TPML_PCR_SELECTION` (`HASH_COUNT` is at most 16;
/// tpm2-tools' `TPM2_NUM_PCR_BANKS`).
pub const MAX_PCR_BANKS: u32 = 16;
/// Largest `sizeofSelect` (`PCR_SELECT_MAX` of a 32-PCR TPM; PC Client TPMs
/// have 24 PCRs and use 3).
pub const MAX_SIZEOF_SELECT: u8 = 4;
/// Largest digest (`sizeof(TPMU_HA)`, SHA-512).
pub const MAX_DIGEST: usize = 64;
/// Largest `TPM2B_NAME` buffer (`sizeof(TPMU_NAME)`: a `TPMT_HA`).
pub const MAX_NAME: usize = 2 + MAX_DIGEST;
/// Largest `TPM2B_DATA` buffer (`sizeof(TPMT_HA)`).
pub const MAX_DATA: usize = 2 + MAX_DIGEST;
/// Largest RSA modulus or signature accepted (8192 bits, ring's limit).
pub const MAX_RSA_BYTES: usize = 1024;
/// Largest ECC coordinate or signature half accepted (P-521 needs 66).
pub const MAX_ECC_BYTES: usize = 128;
/// Largest `TPM2B_PUBLIC` accepted (the TPM's own limit is far lower).
pub const MAX_PUBLIC: usize = 4096;

/// What is wrong with a TPM structure or key encoding, and where. Byte
/// offsets count from the start of the structure named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "{structure}: truncated at byte {offset} in {field}: it needs {need} bytes, {have} left"
    )]
    Truncated {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error(
        "{structure}: {field} at byte {offset} declares {size} bytes, more than the {max} a TPM \
         produces"
    )]
    SizeTooLarge {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        size: usize,
        max: usize,
    },
    #[error(
        "{structure}: {count} unexpected trailing bytes after the structure ends at byte {offset}"
    )]
    TrailingBytes { structure: &'static str, offset: usize, count: usize },
    #[error(
        "{structure}: {field} at byte {offset} counts {count} entries, at most {max} are possible"
    )]
    TooManyEntries {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        count: u32,
        max: u32,
    },
    #[error(
        "TPMS_ATTEST: magic is 0x{found:08x}, not TPM_GENERATED_VALUE (0xff544347): a TPM did not \
         produce this structure"
    )]
    BadMagic { found: u32 },
    #[error("TPMS_ATTEST: type is 0x{found:04x} ({name}), not TPM_ST_ATTEST_QUOTE (0x8018)")]
    NotAQuote { found: u16, name: &'static str },
    #[error("{structure}: {field} at byte {offset} is {value}: {reason}")]
    BadValue {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        value: u64,
        reason: &'static str,
    },
    #[error("{structure}: {field} 0x{alg:04x} ({name}) at byte {offset} is not supported; supported: {supported}")]
    Unsupported {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        alg: u16,
        name: &'static str,
        supported: &'static str,
    },
    #[error("TPM2B_PUBLIC: its size field says {declared} bytes, but {actual} bytes follow it")]
    SizeMismatch { declared: usize, actual: usize },
    #[error("PEM: {0}")]
    Pem(String),
    #[error(
        "PEM: the block is labelled \"{0}\"; an AK public key is a PUBLIC KEY or a CERTIFICATE"
    )]
    PemLabel(String),
    #[error("SubjectPublicKeyInfo: {0}")]
    Spki(String),
    #[error("X.509 certificate: {0}")]
    Certificate(String),
    #[error("{context}: key algorithm {oid} is neither rsaEncryption nor id-ecPublicKey")]
    KeyAlgorithm { context: &'static str, oid: String },
    #[error("{context}: elliptic curve {curve} is not NIST P-256 (1.2.840.10045.3.1.7) or P-384 (1.3.132.0.34)")]
    Curve { context: &'static str, curve: String },
    #[error("{context}: {reason}")]
    Key { context: &'static str, reason: String },
    #[error(
        "unrecognised AK public key encoding ({len} bytes, starting {head}): expected PEM, a \
         TPM2B_PUBLIC (tpm2_createak -u), a TPMT_PUBLIC, or a DER SubjectPublicKeyInfo or \
         certificate"
    )]
    UnknownKeyFormat { len: usize, head: String },
}

/// The name of a `TPM_ALG_ID`, for messages.
pub fn alg_name(alg: u16) -> &'static str {
    match alg {
        0x0001 => "RSA",
        0x0004 => "SHA1",
        0x0005 => "HMAC",
        0x0006 => "AES",
        0x0008 => "KEYEDHASH",
        0x000b => "SHA256",
        0x000c => "SHA384",
        0x000d => "SHA512",
        0x0010 => "NULL",
        0x0012 => "SM3_256",
        0x0014 => "RSASSA",
        0x0015 => "RSAES",
        0x0016 => "RSAPSS",
        0x0017 => "OAEP",
        0x0018 => "ECDSA",
        0x0019 => "ECDH",
        0x001a => "ECDAA",
        0x001b => "SM2",
        0x001c => "ECSCHNORR",
        0x001d => "ECMQV",
        0x0023 => "ECC",
        0x0025 => "SYMCIPHER",
        0x0027 => "SHA3_256",
        0x0028 => "SHA3_384",
        0x0029 => "SHA3_512",
        _ => "unknown",
    }
}

fn attest_type_name(t: u16) -> &'static str {
    match t {
        0x8014 => "TPM_ST_ATTEST_NV",
        0x8015 => "TPM_ST_ATTEST_COMMAND_AUDIT",
        0x8016 => "TPM_ST_ATTEST_SESSION_AUDIT",
        0x8017 => "TPM_ST_ATTEST_CERTIFY",
        0x8018 => "TPM_ST_ATTEST_QUOTE",
        0x8019 => "TPM_ST_ATTEST_TIME",
        0x801a => "TPM_ST_ATTEST_CREATION",
        0x801c => "TPM_ST_ATTEST_NV_DIGEST",
        _ => "not an attestation type",
    }
}

/// A bounds-checked big-endian reader over one structure.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    structure: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], structure: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, structure }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ParseError> {
        let have = self.remaining();
        let out = self.pos.checked_add(n).and_then(|end| self.buf.get(self.pos..end)).ok_or(
            ParseError::Truncated {
                structure: self.structure,
                field,
                offset: self.pos,
                need: n,
                have,
            },
        )?;
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ParseError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ParseError> {
        let [b] = self.array(field)?;
        Ok(b)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ParseError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A `TPM2B_*`: a u16 size, then that many bytes (at most `max`).
    pub(crate) fn tpm2b(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], ParseError> {
        let offset = self.pos;
        let size = usize::from(self.u16(field)?);
        if size > max {
            return Err(ParseError::SizeTooLarge {
                structure: self.structure,
                field,
                offset,
                size,
                max,
            });
        }
        self.take(size, field)
    }

    /// Errors unless every byte was read.
    pub(crate) fn finish(&self) -> Result<(), ParseError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(ParseError::TrailingBytes {
                structure: self.structure,
                offset: self.pos,
                count,
            }),
        }
    }

    fn bad(
        &self,
        field: &'static str,
        offset: usize,
        value: u64,
        reason: &'static str,
    ) -> ParseError {
        ParseError::BadValue { structure: self.structure, field, offset, value, reason }
    }

    fn unsupported(
        &self,
        field: &'static str,
        offset: usize,
        alg: u16,
        supported: &'static str,
    ) -> ParseError {
        ParseError::Unsupported {
            structure: self.structure,
            field,
            offset,
            alg,
            name: alg_name(alg),
            supported,
        }
    }

    /// A hash `TPM_ALG_ID` that must be one we can compute.
    fn hash_alg(&mut self, field: &'static str) -> Result<HashAlg, ParseError> {
        let offset = self.pos;
        let alg = self.u16(field)?;
        HashAlg::from_tpm_alg_id(alg)
            .ok_or_else(|| self.unsupported(field, offset, alg, "SHA1, SHA256, SHA384, SHA512"))
    }
}

/// `TPMS_CLOCK_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since it was made (or cleared).
    pub clock: u64,
    /// TPM resets (power cycles) since the last TPM2_Clear.
    pub reset_count: u32,
    /// TPM restarts (resume from hibernate) since the last reset.
    pub restart_count: u32,
    /// No clock value this or a higher value was reported before.
    pub safe: bool,
}

/// One `TPMS_PCR_SELECTION`: a bank and the PCRs selected in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// The bank's hash `TPM_ALG_ID` (kept raw: a quote may select a bank we
    /// cannot hash, which [`super::verify`] then refuses).
    pub hash: u16,
    /// `sizeofSelect` as encoded.
    pub size_of_select: u8,
    /// Selected PCR indexes, ascending.
    pub pcrs: Vec<u32>,
}

impl PcrSelection {
    /// The bank as a [`HashAlg`], when it is one we can hash.
    pub fn bank(&self) -> Option<HashAlg> {
        HashAlg::from_tpm_alg_id(self.hash)
    }

    /// `sha256:13,14` (or `0x0012:…` for a bank we do not know).
    pub fn describe(&self) -> String {
        let bank = match self.bank() {
            Some(b) => b.name().to_string(),
            None => format!("0x{:04x}", self.hash),
        };
        let pcrs: Vec<String> = self.pcrs.iter().map(u32::to_string).collect();
        format!("{bank}:{}", pcrs.join(","))
    }
}

/// A PCR selection list as text, `sha1:0,1+sha256:13`.
pub fn describe_selection(sel: &[PcrSelection]) -> String {
    if sel.is_empty() {
        return "(no PCRs)".into();
    }
    sel.iter().map(PcrSelection::describe).collect::<Vec<_>>().join("+")
}

/// Reads a `TPML_PCR_SELECTION` (big-endian, as a TPM marshals it).
pub(crate) fn read_pcr_selection(r: &mut Reader<'_>) -> Result<Vec<PcrSelection>, ParseError> {
    let offset = r.pos();
    let count = r.u32("pcrSelect.count")?;
    if count > MAX_PCR_BANKS {
        return Err(ParseError::TooManyEntries {
            structure: r.structure,
            field: "pcrSelect.count",
            offset,
            count,
            max: MAX_PCR_BANKS,
        });
    }
    let mut out = Vec::new();
    for _ in 0..count {
        let hash = r.u16("pcrSelections[].hash")?;
        let size_offset = r.pos();
        let size_of_select = r.u8("pcrSelections[].sizeofSelect")?;
        if size_of_select > MAX_SIZEOF_SELECT {
            return Err(r.bad(
                "pcrSelections[].sizeofSelect",
                size_offset,
                u64::from(size_of_select),
                "at most 4 bytes of PCR bitmap (32 PCRs) exist",
            ));
        }
        let bitmap = r.take(usize::from(size_of_select), "pcrSelections[].pcrSelect")?;
        out.push(PcrSelection { hash, size_of_select, pcrs: bitmap_pcrs(bitmap) });
    }
    Ok(out)
}

/// PCR indexes set in a `pcrSelect` bitmap (bit `i` of byte `j` is PCR
/// `8j + i`), ascending.
pub(crate) fn bitmap_pcrs(bitmap: &[u8]) -> Vec<u32> {
    let mut pcrs = Vec::new();
    for (j, byte) in (0u32..).zip(bitmap) {
        for i in 0..8u32 {
            if byte & (1 << i) != 0 {
                pcrs.push(j * 8 + i);
            }
        }
    }
    pcrs
}

/// A parsed `TPMS_ATTEST` of type `TPM_ST_ATTEST_QUOTE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteAttest {
    /// `qualifiedSigner`: the qualified name of the key that signed.
    pub qualified_signer: Vec<u8>,
    /// `extraData`: the caller's `qualifyingData` (the nonce).
    pub extra_data: Vec<u8>,
    pub clock_info: ClockInfo,
    /// Vendor-specific firmware version.
    pub firmware_version: u64,
    /// `attested.quote.pcrSelect`: banks in list order, PCRs ascending.
    pub pcr_select: Vec<PcrSelection>,
    /// `attested.quote.pcrDigest`.
    pub pcr_digest: Vec<u8>,
}

impl QuoteAttest {
    /// Parses a marshalled `TPMS_ATTEST` (`tpm2_quote -m`), which must be a
    /// quote and nothing more.
    pub fn parse(bytes: &[u8]) -> Result<QuoteAttest, ParseError> {
        let mut r = Reader::new(bytes, "TPMS_ATTEST");
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(ParseError::BadMagic { found: magic });
        }
        let st = r.u16("type")?;
        if st != TPM_ST_ATTEST_QUOTE {
            return Err(ParseError::NotAQuote { found: st, name: attest_type_name(st) });
        }
        let qualified_signer = r.tpm2b("qualifiedSigner", MAX_NAME)?.to_vec();
        let extra_data = r.tpm2b("extraData", MAX_DATA)?.to_vec();
        let clock = r.u64("clockInfo.clock")?;
        let reset_count = r.u32("clockInfo.resetCount")?;
        let restart_count = r.u32("clockInfo.restartCount")?;
        let safe_offset = r.pos();
        let safe = match r.u8("clockInfo.safe")? {
            0 => false,
            1 => true,
            v => {
                return Err(r.bad(
                    "clockInfo.safe",
                    safe_offset,
                    u64::from(v),
                    "a TPMI_YES_NO is 0 or 1",
                ))
            }
        };
        let firmware_version = r.u64("firmwareVersion")?;
        let pcr_select = read_pcr_selection(&mut r)?;
        let pcr_digest = r.tpm2b("pcrDigest", MAX_DIGEST)?.to_vec();
        r.finish()?;
        Ok(QuoteAttest {
            qualified_signer,
            extra_data,
            clock_info: ClockInfo { clock, reset_count, restart_count, safe },
            firmware_version,
            pcr_select,
            pcr_digest,
        })
    }
}

/// A parsed `TPMT_SIGNATURE` of a scheme tellus verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmSignature {
    /// RSASSA-PKCS1-v1_5.
    Rsassa { hash: HashAlg, sig: Vec<u8> },
    /// RSASSA-PSS.
    Rsapss { hash: HashAlg, sig: Vec<u8> },
    /// ECDSA; `r` and `s` as the TPM encoded them (big-endian).
    Ecdsa { hash: HashAlg, r: Vec<u8>, s: Vec<u8> },
}

impl TpmSignature {
    /// Parses a marshalled `TPMT_SIGNATURE` (`tpm2_quote -s`).
    pub fn parse(bytes: &[u8]) -> Result<TpmSignature, ParseError> {
        let mut r = Reader::new(bytes, "TPMT_SIGNATURE");
        let offset = r.pos();
        let sig_alg = r.u16("sigAlg")?;
        let sig = match sig_alg {
            TPM_ALG_RSASSA | TPM_ALG_RSAPSS => {
                let hash = r.hash_alg("signature.hash")?;
                let sig = r.tpm2b("signature.sig", MAX_RSA_BYTES)?.to_vec();
                if sig_alg == TPM_ALG_RSASSA {
                    TpmSignature::Rsassa { hash, sig }
                } else {
                    TpmSignature::Rsapss { hash, sig }
                }
            }
            TPM_ALG_ECDSA => {
                let hash = r.hash_alg("signature.hash")?;
                let rr = r.tpm2b("signature.signatureR", MAX_ECC_BYTES)?.to_vec();
                let s = r.tpm2b("signature.signatureS", MAX_ECC_BYTES)?.to_vec();
                TpmSignature::Ecdsa { hash, r: rr, s }
            }
            other => {
                return Err(r.unsupported(
                    "sigAlg",
                    offset,
                    other,
                    "RSASSA (0x0014), RSAPSS (0x0016), ECDSA (0x0018)",
                ))
            }
        };
        r.finish()?;
        Ok(sig)
    }

    /// The signing scheme's hash: the TPM hashed the `TPMS_ATTEST` with it,
    /// and it is also the hash of the quote's `pcrDigest`.
    pub fn hash_alg(&self) -> HashAlg {
        match self {
            TpmSignature::Rsassa { hash, .. }
            | TpmSignature::Rsapss { hash, .. }
            | TpmSignature::Ecdsa { hash, .. } => *hash,
        }
    }

    /// `RSASSA`, `RSAPSS` or `ECDSA`.
    pub fn scheme_name(&self) -> &'static str {
        match self {
            TpmSignature::Rsassa { .. } => "RSASSA",
            TpmSignature::Rsapss { .. } => "RSAPSS",
            TpmSignature::Ecdsa { .. } => "ECDSA",
        }
    }

    /// `RSASSA-SHA256` and the like.
    pub fn describe(&self) -> String {
        format!("{}-{}", self.scheme_name(), self.hash_alg().name().to_uppercase())
    }
}

/// A NIST curve tellus verifies ECDSA signatures on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EccCurve {
    P256,
    P384,
}

impl EccCurve {
    /// Bytes of a field element (and of `r`, `s`).
    pub fn field_len(self) -> usize {
        match self {
            EccCurve::P256 => 32,
            EccCurve::P384 => 48,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EccCurve::P256 => "P-256",
            EccCurve::P384 => "P-384",
        }
    }

    /// The `TPM_ECC_CURVE` of the curve.
    pub fn tpm_curve_id(self) -> u16 {
        match self {
            EccCurve::P256 => TPM_ECC_NIST_P256,
            EccCurve::P384 => TPM_ECC_NIST_P384,
        }
    }
}

/// An AK's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// `modulus` big-endian without leading zero bytes; `exponent` as a
    /// number (a TPM's exponent 0 already replaced by 65537).
    Rsa { modulus: Vec<u8>, exponent: u64 },
    /// `x`, `y` big-endian, left-padded to the curve's field length.
    Ecc { curve: EccCurve, x: Vec<u8>, y: Vec<u8> },
}

impl PublicKey {
    /// Builds an RSA key, normalising the encoding and checking sanity.
    pub fn rsa(
        context: &'static str,
        modulus: &[u8],
        exponent: u64,
    ) -> Result<PublicKey, ParseError> {
        let start = modulus.iter().position(|&b| b != 0).unwrap_or(modulus.len());
        let modulus = modulus.get(start..).unwrap_or_default();
        if modulus.is_empty() {
            return Err(ParseError::Key { context, reason: "the RSA modulus is zero".into() });
        }
        if modulus.len() > MAX_RSA_BYTES {
            return Err(ParseError::Key {
                context,
                reason: format!(
                    "the RSA modulus is {} bytes, more than {MAX_RSA_BYTES}",
                    modulus.len()
                ),
            });
        }
        if exponent < 3 || exponent % 2 == 0 {
            return Err(ParseError::Key {
                context,
                reason: format!("the RSA public exponent {exponent} is not an odd number >= 3"),
            });
        }
        Ok(PublicKey::Rsa { modulus: modulus.to_vec(), exponent })
    }

    /// Builds an ECC key; `x` and `y` may lack leading zero bytes.
    pub fn ecc(
        context: &'static str,
        curve: EccCurve,
        x: &[u8],
        y: &[u8],
    ) -> Result<PublicKey, ParseError> {
        let pad = |v: &[u8], what: &str| -> Result<Vec<u8>, ParseError> {
            let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
            let v = v.get(start..).unwrap_or_default();
            let n = curve.field_len();
            if v.len() > n {
                return Err(ParseError::Key {
                    context,
                    reason: format!(
                        "the {what} coordinate is {} bytes, a {} coordinate has {n}",
                        v.len(),
                        curve.name()
                    ),
                });
            }
            let mut out = vec![0u8; n - v.len()];
            out.extend_from_slice(v);
            Ok(out)
        };
        Ok(PublicKey::Ecc { curve, x: pad(x, "x")?, y: pad(y, "y")? })
    }

    /// `RSA-2048` or `ECC P-256`.
    pub fn describe(&self) -> String {
        match self {
            PublicKey::Rsa { modulus, .. } => format!("RSA-{}", modulus_bits(modulus)),
            PublicKey::Ecc { curve, .. } => format!("ECC {}", curve.name()),
        }
    }
}

/// Bit length of a big-endian modulus without leading zero bytes.
pub(crate) fn modulus_bits(modulus: &[u8]) -> usize {
    match modulus.first() {
        Some(&top) => (modulus.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    }
}

/// `TPMA_OBJECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectAttributes(pub u32);

impl ObjectAttributes {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;

    pub fn fixed_tpm(self) -> bool {
        self.0 & Self::FIXED_TPM != 0
    }
    pub fn restricted(self) -> bool {
        self.0 & Self::RESTRICTED != 0
    }
    pub fn sign(self) -> bool {
        self.0 & Self::SIGN != 0
    }
    pub fn decrypt(self) -> bool {
        self.0 & Self::DECRYPT != 0
    }
}

/// A parsed `TPMT_PUBLIC` of an RSA or ECC key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmPublic {
    /// `type`: [`TPM_ALG_RSA`] or [`TPM_ALG_ECC`].
    pub object_type: u16,
    /// `nameAlg`.
    pub name_alg: u16,
    pub attributes: ObjectAttributes,
    pub auth_policy: Vec<u8>,
    /// The key's signing scheme (`TPM_ALG_NULL` when any) and its hash.
    pub scheme: u16,
    pub scheme_hash: Option<u16>,
    pub key: PublicKey,
    /// The marshalled `TPMT_PUBLIC` (without a TPM2B size).
    pub marshalled: Vec<u8>,
}

impl TpmPublic {
    /// The key's TPM name, `nameAlg || H_nameAlg(TPMT_PUBLIC)`, when the
    /// name algorithm is one we can hash.
    pub fn name(&self) -> Option<Vec<u8>> {
        let alg = HashAlg::from_tpm_alg_id(self.name_alg)?;
        let mut name = self.name_alg.to_be_bytes().to_vec();
        name.extend_from_slice(tellus_measured_boot::Digest::of(alg, &self.marshalled).as_bytes());
        Some(name)
    }

    /// Parses a `TPM2B_PUBLIC` (`tpm2_createak -u` in tpm2-tools' default
    /// "tss" format).
    pub fn parse_tpm2b(bytes: &[u8]) -> Result<TpmPublic, ParseError> {
        let mut r = Reader::new(bytes, "TPM2B_PUBLIC");
        let size = usize::from(r.u16("size")?);
        if size > MAX_PUBLIC {
            return Err(ParseError::SizeTooLarge {
                structure: "TPM2B_PUBLIC",
                field: "size",
                offset: 0,
                size,
                max: MAX_PUBLIC,
            });
        }
        if size != r.remaining() {
            return Err(ParseError::SizeMismatch { declared: size, actual: r.remaining() });
        }
        let inner = r.take(size, "publicArea")?;
        TpmPublic::parse_tpmt(inner)
    }

    /// Parses a bare `TPMT_PUBLIC`.
    pub fn parse_tpmt(bytes: &[u8]) -> Result<TpmPublic, ParseError> {
        let mut r = Reader::new(bytes, "TPMT_PUBLIC");
        let type_offset = r.pos();
        let object_type = r.u16("type")?;
        if object_type != TPM_ALG_RSA && object_type != TPM_ALG_ECC {
            return Err(r.unsupported(
                "type",
                type_offset,
                object_type,
                "RSA (0x0001), ECC (0x0023)",
            ));
        }
        let name_alg = r.u16("nameAlg")?;
        let attributes = ObjectAttributes(r.u32("objectAttributes")?);
        let auth_policy = r.tpm2b("authPolicy", MAX_DIGEST)?.to_vec();
        // parameters.*.symmetric: TPMT_SYM_DEF_OBJECT
        let sym = r.u16("parameters.symmetric.algorithm")?;
        if sym != TPM_ALG_NULL {
            r.u16("parameters.symmetric.keyBits")?;
            r.u16("parameters.symmetric.mode")?;
        }
        // parameters.*.scheme: TPMT_{RSA,ECC}_SCHEME
        let scheme = r.u16("parameters.scheme.scheme")?;
        let scheme_hash = match scheme {
            TPM_ALG_NULL | TPM_ALG_RSAES => None,
            TPM_ALG_ECDAA => {
                let h = r.u16("parameters.scheme.details.hashAlg")?;
                r.u16("parameters.scheme.details.count")?;
                Some(h)
            }
            _ => Some(r.u16("parameters.scheme.details.hashAlg")?),
        };
        let key = if object_type == TPM_ALG_RSA {
            let bits_offset = r.pos();
            let key_bits = r.u16("parameters.rsaDetail.keyBits")?;
            let exponent = match r.u32("parameters.rsaDetail.exponent")? {
                0 => 65537,
                e => u64::from(e),
            };
            let modulus = r.tpm2b("unique.rsa", MAX_RSA_BYTES)?;
            if modulus.len() * 8 != usize::from(key_bits) {
                return Err(r.bad(
                    "parameters.rsaDetail.keyBits",
                    bits_offset,
                    u64::from(key_bits),
                    "it does not match the length of unique.rsa (the modulus)",
                ));
            }
            PublicKey::rsa("TPMT_PUBLIC", modulus, exponent)?
        } else {
            let curve_offset = r.pos();
            let curve_id = r.u16("parameters.eccDetail.curveID")?;
            let curve = match curve_id {
                TPM_ECC_NIST_P256 => EccCurve::P256,
                TPM_ECC_NIST_P384 => EccCurve::P384,
                other => {
                    return Err(ParseError::Unsupported {
                        structure: "TPMT_PUBLIC",
                        field: "parameters.eccDetail.curveID",
                        offset: curve_offset,
                        alg: other,
                        name: "curve",
                        supported: "NIST P-256 (0x0003), NIST P-384 (0x0004)",
                    })
                }
            };
            let kdf = r.u16("parameters.eccDetail.kdf.scheme")?;
            if kdf != TPM_ALG_NULL {
                r.u16("parameters.eccDetail.kdf.details.hashAlg")?;
            }
            let x = r.tpm2b("unique.ecc.x", MAX_ECC_BYTES)?;
            let y = r.tpm2b("unique.ecc.y", MAX_ECC_BYTES)?;
            PublicKey::ecc("TPMT_PUBLIC", curve, x, y)?
        };
        r.finish()?;
        Ok(TpmPublic {
            object_type,
            name_alg,
            attributes,
            auth_policy,
            scheme,
            scheme_hash,
            key,
            marshalled: bytes.to_vec(),
        })
    }
}

/// Where an [`AkPublic`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AkSource {
    /// PEM or DER SubjectPublicKeyInfo.
    Spki,
    /// An X.509 certificate (PEM or DER) for the AK.
    Certificate,
    /// A `TPM2B_PUBLIC`.
    Tpm2bPublic,
    /// A bare `TPMT_PUBLIC`.
    TpmtPublic,
}

/// An attestation key's public part: the key, and its TPM public area when
/// the input had one (then its attributes can be checked and its name
/// computed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkPublic {
    pub key: PublicKey,
    pub tpm: Option<TpmPublic>,
    pub source: AkSource,
}

impl AkPublic {
    /// Reads any supported encoding: PEM (`PUBLIC KEY` or `CERTIFICATE`),
    /// `TPM2B_PUBLIC`, DER SubjectPublicKeyInfo or certificate, or a bare
    /// `TPMT_PUBLIC`, tried in that order.
    pub fn from_bytes(bytes: &[u8]) -> Result<AkPublic, ParseError> {
        let trimmed = trim_ascii_start(bytes);
        if trimmed.starts_with(b"-----BEGIN") {
            return AkPublic::from_pem(trimmed);
        }
        let mut tpm2b_err = None;
        if let [hi, lo, rest @ ..] = bytes {
            if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() {
                match AkPublic::from_tpm2b_public(bytes) {
                    Ok(ak) => return Ok(ak),
                    Err(e) => tpm2b_err = Some(e),
                }
            }
        }
        if bytes.first() == Some(&0x30) {
            // DER SEQUENCE: a SubjectPublicKeyInfo or a certificate.
            return match AkPublic::from_spki_der(bytes) {
                Ok(ak) => Ok(ak),
                Err(spki_err) => AkPublic::from_certificate_der(bytes).map_err(|_| spki_err),
            };
        }
        if let Some(e) = tpm2b_err {
            return Err(e);
        }
        if let [0x00, 0x01 | 0x23, ..] = bytes {
            return AkPublic::from_tpmt_public(bytes);
        }
        let head: String = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Err(ParseError::UnknownKeyFormat { len: bytes.len(), head })
    }

    /// A `TPM2B_PUBLIC`.
    pub fn from_tpm2b_public(bytes: &[u8]) -> Result<AkPublic, ParseError> {
        let tpm = TpmPublic::parse_tpm2b(bytes)?;
        Ok(AkPublic { key: tpm.key.clone(), tpm: Some(tpm), source: AkSource::Tpm2bPublic })
    }

    /// A bare `TPMT_PUBLIC`.
    pub fn from_tpmt_public(bytes: &[u8]) -> Result<AkPublic, ParseError> {
        let tpm = TpmPublic::parse_tpmt(bytes)?;
        Ok(AkPublic { key: tpm.key.clone(), tpm: Some(tpm), source: AkSource::TpmtPublic })
    }

    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or `CERTIFICATE`.
    pub fn from_pem(text: &[u8]) -> Result<AkPublic, ParseError> {
        let (rest, pem) = x509_parser::pem::parse_x509_pem(text)
            .map_err(|e| ParseError::Pem(format!("cannot decode the PEM block: {e}")))?;
        if !trim_ascii_start(rest).is_empty() {
            return Err(ParseError::Pem(format!(
                "{} bytes follow the first PEM block; give one key",
                rest.len()
            )));
        }
        match pem.label.as_str() {
            "PUBLIC KEY" => AkPublic::from_spki_der(&pem.contents),
            "CERTIFICATE" => AkPublic::from_certificate_der(&pem.contents),
            other => Err(ParseError::PemLabel(other.to_string())),
        }
    }

    /// A DER SubjectPublicKeyInfo (`openssl pkey -pubout -outform der`).
    pub fn from_spki_der(der: &[u8]) -> Result<AkPublic, ParseError> {
        let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| ParseError::Spki(format!("not DER: {e}")))?;
        if !rest.is_empty() {
            return Err(ParseError::Spki(format!("{} trailing bytes after the DER", rest.len())));
        }
        Ok(AkPublic {
            key: spki_key("SubjectPublicKeyInfo", &spki)?,
            tpm: None,
            source: AkSource::Spki,
        })
    }

    /// The subject key of a DER X.509 certificate (an AK certificate). The
    /// certificate itself is not validated here.
    pub fn from_certificate_der(der: &[u8]) -> Result<AkPublic, ParseError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| ParseError::Certificate(format!("cannot parse: {e}")))?;
        if !rest.is_empty() {
            return Err(ParseError::Certificate(format!(
                "{} trailing bytes after the DER",
                rest.len()
            )));
        }
        let key = spki_key("certificate subjectPublicKeyInfo", cert.public_key())?;
        Ok(AkPublic { key, tpm: None, source: AkSource::Certificate })
    }
}

fn trim_ascii_start(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}

fn spki_key(
    context: &'static str,
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<PublicKey, ParseError> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384};
    use x509_parser::public_key::PublicKey as X509Key;
    let parsed = spki.parsed().map_err(|e| ParseError::Key { context, reason: format!("{e}") })?;
    match parsed {
        X509Key::RSA(rsa) => {
            let exponent = rsa.try_exponent().map_err(|e| ParseError::Key {
                context,
                reason: format!("the RSA exponent is not a usable number: {e}"),
            })?;
            PublicKey::rsa(context, rsa.modulus, exponent)
        }
        X509Key::EC(point) => {
            let curve_oid =
                spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).ok_or_else(
                    || ParseError::Key {
                        context,
                        reason: "the EC key names no curve (namedCurve parameters missing)".into(),
                    },
                )?;
            let curve = if curve_oid == OID_EC_P256 {
                EccCurve::P256
            } else if curve_oid == OID_NIST_EC_P384 {
                EccCurve::P384
            } else {
                return Err(ParseError::Curve { context, curve: curve_oid.to_id_string() });
            };
            let n = curve.field_len();
            let data = point.data();
            match data.split_first() {
                Some((0x04, xy)) if xy.len() == 2 * n => {
                    let (x, y) = xy.split_at(n);
                    PublicKey::ecc(context, curve, x, y)
                }
                Some((first, _)) => Err(ParseError::Key {
                    context,
                    reason: format!(
                        "the EC point is {} bytes starting 0x{first:02x}; an uncompressed {} point \
                         is 0x04 and {} bytes",
                        data.len(),
                        curve.name(),
                        2 * n
                    ),
                }),
                None => Err(ParseError::Key { context, reason: "the EC point is empty".into() }),
            }
        }
        _ => {
            Err(ParseError::KeyAlgorithm { context, oid: spki.algorithm.algorithm.to_id_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote_bytes() -> Vec<u8> {
        let mut b = vec![];
        b.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        b.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        b.extend_from_slice(&[0, 2, 0xaa, 0xbb]); // qualifiedSigner
        b.extend_from_slice(&[0, 1, 0x42]); // extraData
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.push(1);
        b.extend_from_slice(&9u64.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&[0x00, 0x0b, 3, 0x00, 0x60, 0x00]); // sha256:13,14
        b.extend_from_slice(&[0, 32]);
        b.extend_from_slice(&[0x11; 32]);
        b
    }

    #[test]
    fn parses_a_quote() {
        let q = QuoteAttest::parse(&quote_bytes()).unwrap();
        assert_eq!(q.extra_data, [0x42]);
        assert_eq!(
            q.clock_info,
            ClockInfo { clock: 7, reset_count: 1, restart_count: 2, safe: true }
        );
        assert_eq!(q.firmware_version, 9);
        assert_eq!(q.pcr_select.len(), 1);
        assert_eq!(q.pcr_select[0].pcrs, [13, 14]);
        assert_eq!(describe_selection(&q.pcr_select), "sha256:13,14");
    }

    #[test]
    fn rejects_bad_quotes() {
        let good = quote_bytes();
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(QuoteAttest::parse(&b), Err(ParseError::TrailingBytes { count: 1, .. })));
        for n in 0..good.len() {
            assert!(
                matches!(
                    QuoteAttest::parse(&good[..n]),
                    Err(ParseError::Truncated { .. }) | Err(ParseError::BadMagic { .. })
                ),
                "prefix {n}"
            );
        }
        let mut b = good.clone();
        b[5] = 0x17;
        assert!(matches!(QuoteAttest::parse(&b), Err(ParseError::NotAQuote { found: 0x8017, .. })));
        let mut b = good.clone();
        b[0] = 0;
        assert!(matches!(QuoteAttest::parse(&b), Err(ParseError::BadMagic { .. })));
        // absurd bank count
        let mut b = good.clone();
        let count_at = 4 + 2 + 4 + 3 + 17 + 8;
        b[count_at..count_at + 4].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        let e = QuoteAttest::parse(&b).unwrap_err();
        assert!(matches!(e, ParseError::TooManyEntries { .. }), "{e}");
        // safe must be 0/1
        let mut b = good;
        b[4 + 2 + 4 + 3 + 16] = 2;
        assert!(matches!(
            QuoteAttest::parse(&b),
            Err(ParseError::BadValue { field: "clockInfo.safe", .. })
        ));
    }

    #[test]
    fn signatures() {
        let mut b = vec![0x00, 0x18, 0x00, 0x0b, 0, 2, 1, 2, 0, 1, 3];
        let s = TpmSignature::parse(&b).unwrap();
        assert_eq!(s, TpmSignature::Ecdsa { hash: HashAlg::Sha256, r: vec![1, 2], s: vec![3] });
        assert_eq!(s.describe(), "ECDSA-SHA256");
        b[1] = 0x1a;
        let e = TpmSignature::parse(&b).unwrap_err();
        assert!(e.to_string().contains("ECDAA"), "{e}");
        let b = [0x00, 0x14, 0x00, 0x12, 0, 0];
        let e = TpmSignature::parse(&b).unwrap_err();
        assert!(e.to_string().contains("SM3_256"), "{e}");
    }

    #[test]
    fn bitmaps() {
        assert_eq!(bitmap_pcrs(&[0x00, 0x80, 0x41]), [15, 16, 22]);
        assert_eq!(bitmap_pcrs(&[0xff, 0xff, 0xff]), (0..24).collect::<Vec<_>>());
        assert_eq!(bitmap_pcrs(&[]), Vec::<u32>::new());
    }

    #[test]
    fn unknown_key_format() {
        let e = AkPublic::from_bytes(b"\x01\x02\x03").unwrap_err();
        assert!(matches!(e, ParseError::UnknownKeyFormat { len: 3, .. }), "{e}");
        let e =
            AkPublic::from_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(matches!(e, ParseError::PemLabel(_)), "{e}");
    }
}
