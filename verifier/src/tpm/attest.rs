//! Parsers for the TPM 2.0 structures of a quote (TPM 2.0 Library Part 2):
//! `TPMS_ATTEST` (of type `TPM_ST_ATTEST_QUOTE`), `TPMT_SIGNATURE` and
//! `TPML_PCR_SELECTION`, and an AK public key from any encoding it comes in
//! (a `TPM2B_PUBLIC` / `TPMT_PUBLIC`, parsed by [`crate::tpm_types`]; PEM or
//! DER SubjectPublicKeyInfo; an X.509 certificate).
//!
//! Every input is untrusted: reads are bounds-checked, sizes are capped at
//! what a TPM can produce, and a structure must use up its input exactly
//! (see [`crate::tpm_types::marshal`]). Nothing here checks a signature; see
//! [`super::verify`].

use crate::tpm_types::marshal::{
    Reader, MAX_DATA, MAX_DIGEST, MAX_ECC_BYTES, MAX_NAME, MAX_RSA_BYTES,
};
use crate::tpm_types::{self, alg, curve, ParseError, TpmPublic};
use tellus_measured_boot::HashAlg;
use x509_parser::prelude::FromDer;

/// `TPM_GENERATED_VALUE`: the magic of every structure a TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// Most PCR banks in a `TPML_PCR_SELECTION` (`HASH_COUNT` is at most 16;
/// tpm2-tools' `TPM2_NUM_PCR_BANKS`).
pub const MAX_PCR_BANKS: u32 = 16;
/// Largest `sizeofSelect` (`PCR_SELECT_MAX` of a 32-PCR TPM; PC Client TPMs
/// have 24 PCRs and use 3).
pub const MAX_SIZEOF_SELECT: u8 = 4;

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

impl From<&ClockInfo> for crate::storage::TpmClock {
    fn from(c: &ClockInfo) -> Self {
        crate::storage::TpmClock {
            reset_count: c.reset_count,
            restart_count: c.restart_count,
            clock: c.clock,
        }
    }
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
            alg::RSASSA | alg::RSAPSS => {
                let hash = r.hash_alg("signature.hash")?;
                let sig = r.tpm2b("signature.sig", MAX_RSA_BYTES)?.to_vec();
                if sig_alg == alg::RSASSA {
                    TpmSignature::Rsassa { hash, sig }
                } else {
                    TpmSignature::Rsapss { hash, sig }
                }
            }
            alg::ECDSA => {
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
            EccCurve::P256 => curve::NIST_P256,
            EccCurve::P384 => curve::NIST_P384,
        }
    }

    /// The curve of a `TPM_ECC_CURVE`, if it is one tellus verifies.
    pub fn from_tpm_curve_id(id: u16) -> Option<EccCurve> {
        match id {
            curve::NIST_P256 => Some(EccCurve::P256),
            curve::NIST_P384 => Some(EccCurve::P384),
            _ => None,
        }
    }
}

/// An AK's public key, normalised for signature verification. (Not to be
/// confused with [`tpm_types::PublicKey`], the raw fields of a TPM public
/// area.)
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
        AkPublic::from_tpm(TpmPublic::from_tpm2b_public(bytes)?, AkSource::Tpm2bPublic)
    }

    /// A bare `TPMT_PUBLIC`.
    pub fn from_tpmt_public(bytes: &[u8]) -> Result<AkPublic, ParseError> {
        AkPublic::from_tpm(TpmPublic::from_tpmt_public(bytes)?, AkSource::TpmtPublic)
    }

    /// A parsed public area, which must be an RSA key or an ECC key on a
    /// curve tellus verifies ([`EccCurve`]).
    pub fn from_tpm(tpm: TpmPublic, source: AkSource) -> Result<AkPublic, ParseError> {
        let key = match &tpm.key {
            tpm_types::PublicKey::Rsa { modulus, exponent, .. } => {
                PublicKey::rsa("TPMT_PUBLIC", modulus, u64::from(*exponent))?
            }
            tpm_types::PublicKey::Ecc { curve: id, x, y, .. } => {
                let Some(curve) = EccCurve::from_tpm_curve_id(*id) else {
                    return Err(ParseError::Unsupported {
                        structure: "TPMT_PUBLIC",
                        field: "parameters.eccDetail.curveID",
                        offset: tpm.ecc_curve_offset().unwrap_or_default(),
                        alg: *id,
                        name: "curve",
                        supported: "NIST P-256 (0x0003), NIST P-384 (0x0004)",
                    });
                };
                PublicKey::ecc("TPMT_PUBLIC", curve, x, y)?
            }
            tpm_types::PublicKey::KeyedHash { .. } | tpm_types::PublicKey::SymCipher { .. } => {
                return Err(ParseError::Unsupported {
                    structure: "TPMT_PUBLIC",
                    field: "type",
                    offset: 0,
                    alg: tpm.object_type,
                    name: alg::name(tpm.object_type),
                    supported: "RSA (0x0001), ECC (0x0023)",
                })
            }
        };
        Ok(AkPublic { key, tpm: Some(tpm), source })
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
    fn ak_public_areas_must_be_keys_tellus_verifies() {
        // ECC P-521: a valid public area (an EK may use the curve), but not
        // one ring verifies signatures on.
        let mut t = vec![];
        t.extend_from_slice(&alg::ECC.to_be_bytes());
        t.extend_from_slice(&alg::SHA256.to_be_bytes());
        t.extend_from_slice(&0x0005_0072u32.to_be_bytes());
        t.extend_from_slice(&[0, 0]); // authPolicy
        t.extend_from_slice(&alg::NULL.to_be_bytes()); // symmetric
        t.extend_from_slice(&alg::ECDSA.to_be_bytes());
        t.extend_from_slice(&alg::SHA512.to_be_bytes());
        t.extend_from_slice(&curve::NIST_P521.to_be_bytes()); // at byte 16
        t.extend_from_slice(&alg::NULL.to_be_bytes()); // kdf
        for c in [1u8, 2] {
            t.extend_from_slice(&66u16.to_be_bytes());
            t.extend_from_slice(&[c; 66]);
        }
        assert!(TpmPublic::from_tpmt_public(&t).is_ok());
        let e = AkPublic::from_tpmt_public(&t).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::Unsupported {
                    field: "parameters.eccDetail.curveID",
                    offset: 16,
                    alg: 0x0005,
                    ..
                }
            ),
            "{e}"
        );
        // A keyed-hash object is no signing key at all.
        let mut k = vec![];
        k.extend_from_slice(&alg::KEYEDHASH.to_be_bytes());
        k.extend_from_slice(&alg::SHA256.to_be_bytes());
        k.extend_from_slice(&0x0004_0072u32.to_be_bytes());
        k.extend_from_slice(&[0, 0]); // authPolicy
        k.extend_from_slice(&alg::HMAC.to_be_bytes());
        k.extend_from_slice(&alg::SHA256.to_be_bytes());
        k.extend_from_slice(&[0, 32]);
        k.extend_from_slice(&[9; 32]);
        assert!(TpmPublic::from_tpmt_public(&k).is_ok());
        let e = AkPublic::from_tpmt_public(&k).unwrap_err();
        assert!(
            matches!(e, ParseError::Unsupported { field: "type", offset: 0, alg: 0x0008, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("KEYEDHASH"), "{e}");
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
