//! TPM 2.0 marshalling (Part 1 §18, Part 2 §5): the bounds-checked
//! big-endian `Reader` every TPM structure parser of the verifier uses,
//! the size limits it enforces, and [`ParseError`].
//!
//! Every input is untrusted: reads are bounds-checked, `TPM2B_*` sizes are
//! capped at what a TPM can produce, and a structure must use up its input
//! exactly (`Reader::finish`), so nothing can be smuggled past a parser.

use super::alg;
use tellus_measured_boot::HashAlg;

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
/// offsets count from the start of the structure named. One type for every
/// parser of [`crate::tpm_types`], [`crate::tpm`] and [`crate::registrar`].
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
    #[error(
        "TPM2B_PUBLIC: its size field says {declared} bytes, but {actual} bytes follow it; the \
         file is corrupt or not a TPM2B_PUBLIC (a bare TPMT_PUBLIC has no size prefix)"
    )]
    SizeMismatch { declared: usize, actual: usize },
    #[error(
        "object Name of {len} byte(s) is malformed: {detail}; a key's Name is the 2-byte \
         nameAlg followed by that hash of its TPMT_PUBLIC (tpm2_readpublic -n writes it)"
    )]
    BadName { len: usize, detail: String },
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

/// A bounds-checked big-endian reader over one structure.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    pub(crate) structure: &'static str,
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

    /// Everything not read yet (the reader is then at the end).
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        s
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

    pub(crate) fn bad(
        &self,
        field: &'static str,
        offset: usize,
        value: u64,
        reason: &'static str,
    ) -> ParseError {
        ParseError::BadValue { structure: self.structure, field, offset, value, reason }
    }

    pub(crate) fn unsupported(
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
            name: alg::name(alg),
            supported,
        }
    }

    /// A hash `TPM_ALG_ID` that must be one we can compute.
    pub(crate) fn hash_alg(&mut self, field: &'static str) -> Result<HashAlg, ParseError> {
        let offset = self.pos;
        let alg = self.u16(field)?;
        HashAlg::from_tpm_alg_id(alg)
            .ok_or_else(|| self.unsupported(field, offset, alg, "SHA1, SHA256, SHA384, SHA512"))
    }
}
