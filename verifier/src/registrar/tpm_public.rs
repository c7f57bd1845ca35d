//! TPM 2.0 public areas (`TPMT_PUBLIC`, `TPM2B_PUBLIC`) and object Names.
//!
//! The parser follows TPM 2.0 Library Part 2 (Structures) §12.2: every field
//! is read through a bounds-checked cursor, every union is selected by the
//! tag that precedes it, and trailing bytes are an error, so a host cannot
//! smuggle data past the verifier. A key's Name is `nameAlg || H_nameAlg(the
//! marshalled TPMT_PUBLIC)` (Part 1 §16), computed over the bytes exactly as
//! received.

use ring::digest;
use thiserror::Error;

/// `TPM_ALG_ID` values used here (Part 2 §6.3).
pub mod alg {
    pub const RSA: u16 = 0x0001;
    pub const SHA1: u16 = 0x0004;
    pub const HMAC: u16 = 0x0005;
    pub const AES: u16 = 0x0006;
    pub const MGF1: u16 = 0x0007;
    pub const KEYEDHASH: u16 = 0x0008;
    pub const XOR: u16 = 0x000A;
    pub const SHA256: u16 = 0x000B;
    pub const SHA384: u16 = 0x000C;
    pub const SHA512: u16 = 0x000D;
    pub const NULL: u16 = 0x0010;
    pub const SM3_256: u16 = 0x0012;
    pub const SM4: u16 = 0x0013;
    pub const RSASSA: u16 = 0x0014;
    pub const RSAES: u16 = 0x0015;
    pub const RSAPSS: u16 = 0x0016;
    pub const OAEP: u16 = 0x0017;
    pub const ECDSA: u16 = 0x0018;
    pub const ECDH: u16 = 0x0019;
    pub const ECDAA: u16 = 0x001A;
    pub const SM2: u16 = 0x001B;
    pub const ECSCHNORR: u16 = 0x001C;
    pub const ECMQV: u16 = 0x001D;
    pub const KDF1_SP800_56A: u16 = 0x0020;
    pub const KDF2: u16 = 0x0021;
    pub const KDF1_SP800_108: u16 = 0x0022;
    pub const ECC: u16 = 0x0023;
    pub const SYMCIPHER: u16 = 0x0025;
    pub const CAMELLIA: u16 = 0x0026;
    pub const CFB: u16 = 0x0043;
}

/// `TPM_ECC_CURVE` values (Part 2 §6.4).
pub mod curve {
    pub const NIST_P256: u16 = 0x0003;
    pub const NIST_P384: u16 = 0x0004;
    pub const NIST_P521: u16 = 0x0005;
}

/// `TPMA_OBJECT` bits (Part 2 §8.3).
pub mod attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN_ENCRYPT: u32 = 1 << 18;
}

/// Errors from parsing TPM public areas and Names.
#[derive(Debug, Error)]
pub enum TpmPublicError {
    #[error(
        "{what} is truncated at byte {offset}: needs {need} more byte(s), {have} left; \
         send the complete marshalled structure (as tpm2_readpublic -o / tpm2_createek -u write it)"
    )]
    Truncated { what: &'static str, offset: usize, need: usize, have: usize },
    #[error(
        "{count} unexpected trailing byte(s) after {what}; send exactly one marshalled \
         structure, with nothing appended"
    )]
    TrailingBytes { what: &'static str, count: usize },
    #[error(
        "TPM2B_PUBLIC size field says {declared} byte(s) but {actual} follow; the file is \
         corrupt or not a TPM2B_PUBLIC (a bare TPMT_PUBLIC has no size prefix)"
    )]
    SizeMismatch { declared: usize, actual: usize },
    #[error(
        "TPMT_PUBLIC of {len} bytes cannot be a TPM public area (at most 65535 bytes); \
         check that the right file was sent"
    )]
    TooLarge { len: usize },
    #[error(
        "unsupported {what} algorithm 0x{alg:04x}; only the algorithms of TCG EK/AK \
         templates are accepted (RSA, ECC, keyed hash, symmetric cipher; SHA-1/256/384/512)"
    )]
    UnsupportedAlgorithm { what: &'static str, alg: u16 },
    #[error(
        "object Name of {len} byte(s) is malformed: {detail}; a key's Name is the 2-byte \
         nameAlg followed by that hash of its TPMT_PUBLIC (tpm2_readpublic -n writes it)"
    )]
    BadName { len: usize, detail: String },
}

/// Hash algorithms that can be an object's `nameAlg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// The algorithm for a `TPM_ALG_ID`, if it is a supported hash.
    pub fn from_tpm_alg(id: u16) -> Option<HashAlg> {
        match id {
            alg::SHA1 => Some(HashAlg::Sha1),
            alg::SHA256 => Some(HashAlg::Sha256),
            alg::SHA384 => Some(HashAlg::Sha384),
            alg::SHA512 => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    /// The `TPM_ALG_ID`.
    pub fn tpm_alg(self) -> u16 {
        match self {
            HashAlg::Sha1 => alg::SHA1,
            HashAlg::Sha256 => alg::SHA256,
            HashAlg::Sha384 => alg::SHA384,
            HashAlg::Sha512 => alg::SHA512,
        }
    }

    /// Digest size in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The digest of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        let algorithm = match self {
            HashAlg::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &digest::SHA256,
            HashAlg::Sha384 => &digest::SHA384,
            HashAlg::Sha512 => &digest::SHA512,
        };
        let mut ctx = digest::Context::new(algorithm);
        for p in parts {
            ctx.update(p);
        }
        ctx.finish().as_ref().to_vec()
    }
}

/// `TPMT_SYM_DEF_OBJECT` when its algorithm is not `TPM_ALG_NULL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymDef {
    pub algorithm: u16,
    pub key_bits: u16,
    pub mode: u16,
}

/// The type-specific part of a public area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA: `exponent` is the effective public exponent (the marshalled 0 is
    /// replaced by the default 65537); `modulus` is `unique.rsa` as given.
    Rsa { key_bits: u16, exponent: u32, modulus: Vec<u8> },
    /// ECC: `curve` is a `TPM_ECC_CURVE`; `x`, `y` are `unique.ecc` as given.
    Ecc { curve: u16, kdf: u16, x: Vec<u8>, y: Vec<u8> },
    /// Keyed hash object: `unique.keyedHash`.
    KeyedHash { unique: Vec<u8> },
    /// Symmetric cipher object: `unique.sym`.
    SymCipher { unique: Vec<u8> },
}

/// A parsed `TPMT_PUBLIC`, keeping its exact marshalled bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmPublic {
    /// `TPMI_ALG_PUBLIC`: [`alg::RSA`], [`alg::ECC`], [`alg::KEYEDHASH`] or
    /// [`alg::SYMCIPHER`].
    pub object_type: u16,
    pub name_alg: HashAlg,
    /// `TPMA_OBJECT` bits (see [`attr`]).
    pub object_attributes: u32,
    pub auth_policy: Vec<u8>,
    /// The symmetric algorithm of a storage key (an EK's is AES-128-CFB in
    /// the low-range templates); `None` when it is `TPM_ALG_NULL` or the type
    /// has none (keyed hash).
    pub symmetric: Option<SymDef>,
    /// The signing/decryption scheme (`TPM_ALG_NULL` for an EK).
    pub scheme: u16,
    /// The scheme's hash algorithm, where the scheme has one.
    pub scheme_hash: Option<u16>,
    pub key: PublicKey,
    tpmt: Vec<u8>,
}

impl TpmPublic {
    /// Parses a `TPM2B_PUBLIC` (u16 big-endian size, then `TPMT_PUBLIC`), the
    /// format of `tpm2_createek -u`, `tpm2_createak -u`, `tpm2_readpublic -o`.
    pub fn from_tpm2b_public(bytes: &[u8]) -> Result<TpmPublic, TpmPublicError> {
        let mut r = Reader::new(bytes, "TPM2B_PUBLIC");
        let size = usize::from(r.u16()?);
        let rest = r.rest();
        if size != rest.len() {
            return Err(TpmPublicError::SizeMismatch { declared: size, actual: rest.len() });
        }
        TpmPublic::from_tpmt_public(rest)
    }

    /// Parses a bare `TPMT_PUBLIC`.
    pub fn from_tpmt_public(bytes: &[u8]) -> Result<TpmPublic, TpmPublicError> {
        if bytes.len() > usize::from(u16::MAX) {
            return Err(TpmPublicError::TooLarge { len: bytes.len() });
        }
        let mut r = Reader::new(bytes, "TPMT_PUBLIC");
        let object_type = r.u16()?;
        let name_alg_id = r.u16()?;
        let name_alg = HashAlg::from_tpm_alg(name_alg_id)
            .ok_or(TpmPublicError::UnsupportedAlgorithm { what: "nameAlg", alg: name_alg_id })?;
        let object_attributes = r.u32()?;
        let auth_policy = r.tpm2b()?.to_vec();
        let (symmetric, scheme, scheme_hash, key) = match object_type {
            alg::RSA => {
                let symmetric = read_sym_def_object(&mut r)?;
                let (scheme, scheme_hash) = read_asym_scheme(&mut r)?;
                let key_bits = r.u16()?;
                let exponent = match r.u32()? {
                    0 => 65537,
                    e => e,
                };
                let modulus = r.tpm2b()?.to_vec();
                (symmetric, scheme, scheme_hash, PublicKey::Rsa { key_bits, exponent, modulus })
            }
            alg::ECC => {
                let symmetric = read_sym_def_object(&mut r)?;
                let (scheme, scheme_hash) = read_asym_scheme(&mut r)?;
                let curve = r.u16()?;
                let kdf = r.u16()?;
                match kdf {
                    alg::NULL => {}
                    alg::MGF1 | alg::KDF1_SP800_56A | alg::KDF2 | alg::KDF1_SP800_108 => {
                        r.u16()?;
                    }
                    other => {
                        return Err(TpmPublicError::UnsupportedAlgorithm {
                            what: "KDF",
                            alg: other,
                        })
                    }
                }
                let x = r.tpm2b()?.to_vec();
                let y = r.tpm2b()?.to_vec();
                (symmetric, scheme, scheme_hash, PublicKey::Ecc { curve, kdf, x, y })
            }
            alg::KEYEDHASH => {
                let scheme = r.u16()?;
                let scheme_hash = match scheme {
                    alg::NULL => None,
                    alg::HMAC => Some(r.u16()?),
                    alg::XOR => {
                        let h = r.u16()?;
                        r.u16()?; // kdf
                        Some(h)
                    }
                    other => {
                        return Err(TpmPublicError::UnsupportedAlgorithm {
                            what: "keyed-hash scheme",
                            alg: other,
                        })
                    }
                };
                let unique = r.tpm2b()?.to_vec();
                (None, scheme, scheme_hash, PublicKey::KeyedHash { unique })
            }
            alg::SYMCIPHER => {
                let symmetric = read_sym_def_object(&mut r)?;
                let unique = r.tpm2b()?.to_vec();
                (symmetric, alg::NULL, None, PublicKey::SymCipher { unique })
            }
            other => {
                return Err(TpmPublicError::UnsupportedAlgorithm {
                    what: "object type",
                    alg: other,
                })
            }
        };
        r.finish()?;
        Ok(TpmPublic {
            object_type,
            name_alg,
            object_attributes,
            auth_policy,
            symmetric,
            scheme,
            scheme_hash,
            key,
            tpmt: bytes.to_vec(),
        })
    }

    /// The marshalled `TPMT_PUBLIC`, exactly as parsed.
    pub fn tpmt_public(&self) -> &[u8] {
        &self.tpmt
    }

    /// The marshalled `TPM2B_PUBLIC`.
    pub fn to_tpm2b_public(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.tpmt.len() + 2);
        // from_tpmt_public rejects anything longer than u16::MAX bytes.
        out.extend_from_slice(&(self.tpmt.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.tpmt);
        out
    }

    /// The object's Name: `nameAlg (u16 BE) || H_nameAlg(TPMT_PUBLIC)`.
    pub fn name(&self) -> Vec<u8> {
        let mut name = self.name_alg.tpm_alg().to_be_bytes().to_vec();
        name.extend_from_slice(&self.name_alg.digest(&[&self.tpmt]));
        name
    }

    /// Whether the object is a restricted decryption ("storage") key, the
    /// kind `TPM2_MakeCredential`/`TPM2_ActivateCredential` accept as EK.
    pub fn is_storage_key(&self) -> bool {
        let want = attr::RESTRICTED | attr::DECRYPT;
        self.object_attributes & want == want && self.object_attributes & attr::SIGN_ENCRYPT == 0
    }
}

/// The Name of the object whose marshalled `TPMT_PUBLIC` is `bytes`.
pub fn name_from_tpmt_public(bytes: &[u8]) -> Result<Vec<u8>, TpmPublicError> {
    Ok(TpmPublic::from_tpmt_public(bytes)?.name())
}

/// The Name of the object whose marshalled `TPM2B_PUBLIC` is `bytes`.
pub fn name_from_tpm2b_public(bytes: &[u8]) -> Result<Vec<u8>, TpmPublicError> {
    Ok(TpmPublic::from_tpm2b_public(bytes)?.name())
}

/// Checks that `name` is a key's Name (`nameAlg || digest`, the digest as
/// long as that algorithm's) and returns its algorithm. Handles' 4-byte
/// Names (PCRs, sessions, permanent handles) are rejected: only loaded
/// objects can be credential targets.
pub fn parse_object_name(name: &[u8]) -> Result<HashAlg, TpmPublicError> {
    let bad = |detail: String| TpmPublicError::BadName { len: name.len(), detail };
    let (id, digest) = match name {
        [a, b, digest @ ..] => (u16::from_be_bytes([*a, *b]), digest),
        _ => return Err(bad("shorter than the 2-byte algorithm identifier".into())),
    };
    let hash = HashAlg::from_tpm_alg(id)
        .ok_or_else(|| bad(format!("0x{id:04x} is not a supported name algorithm")))?;
    if digest.len() != hash.digest_len() {
        return Err(bad(format!(
            "{hash:?} digest must be {} byte(s), got {}",
            hash.digest_len(),
            digest.len()
        )));
    }
    Ok(hash)
}

fn read_sym_def_object(r: &mut Reader<'_>) -> Result<Option<SymDef>, TpmPublicError> {
    let algorithm = r.u16()?;
    match algorithm {
        alg::NULL => Ok(None),
        alg::AES | alg::SM4 | alg::CAMELLIA => {
            let key_bits = r.u16()?;
            let mode = r.u16()?;
            Ok(Some(SymDef { algorithm, key_bits, mode }))
        }
        other => Err(TpmPublicError::UnsupportedAlgorithm { what: "symmetric", alg: other }),
    }
}

/// `TPMT_RSA_SCHEME` / `TPMT_ECC_SCHEME`: the scheme and, where the union
/// member has one, its hash algorithm.
fn read_asym_scheme(r: &mut Reader<'_>) -> Result<(u16, Option<u16>), TpmPublicError> {
    let scheme = r.u16()?;
    let hash = match scheme {
        alg::NULL | alg::RSAES => None,
        alg::RSASSA
        | alg::RSAPSS
        | alg::OAEP
        | alg::ECDSA
        | alg::ECDH
        | alg::SM2
        | alg::ECSCHNORR
        | alg::ECMQV => Some(r.u16()?),
        alg::ECDAA => {
            let h = r.u16()?;
            r.u16()?; // count
            Some(h)
        }
        other => return Err(TpmPublicError::UnsupportedAlgorithm { what: "scheme", alg: other }),
    };
    Ok((scheme, hash))
}

/// A bounds-checked big-endian cursor.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], TpmPublicError> {
        let have = self.buf.len() - self.pos;
        if n > have {
            return Err(TpmPublicError::Truncated {
                what: self.what,
                offset: self.pos,
                need: n,
                have,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, TpmPublicError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, TpmPublicError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A TPM2B: u16 size, then that many bytes.
    pub(crate) fn tpm2b(&mut self) -> Result<&'a [u8], TpmPublicError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub(crate) fn finish(&self) -> Result<(), TpmPublicError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            count => Err(TpmPublicError::TrailingBytes { what: self.what, count }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal RSA storage key TPMT_PUBLIC (EK template L-1 shape).
    fn rsa_tpmt(modulus_len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&alg::RSA.to_be_bytes());
        v.extend_from_slice(&alg::SHA256.to_be_bytes());
        v.extend_from_slice(&0x000300b2u32.to_be_bytes());
        v.extend_from_slice(&[0, 0]); // empty authPolicy
        v.extend_from_slice(&alg::AES.to_be_bytes());
        v.extend_from_slice(&128u16.to_be_bytes());
        v.extend_from_slice(&alg::CFB.to_be_bytes());
        v.extend_from_slice(&alg::NULL.to_be_bytes());
        v.extend_from_slice(&2048u16.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&(modulus_len as u16).to_be_bytes());
        v.extend(std::iter::repeat(0xab).take(modulus_len));
        v
    }

    #[test]
    fn parses_rsa_and_computes_name() {
        let t = rsa_tpmt(256);
        let p = TpmPublic::from_tpmt_public(&t).unwrap();
        assert_eq!(p.object_type, alg::RSA);
        assert!(p.is_storage_key());
        assert_eq!(
            p.symmetric,
            Some(SymDef { algorithm: alg::AES, key_bits: 128, mode: alg::CFB })
        );
        match &p.key {
            PublicKey::Rsa { key_bits, exponent, modulus } => {
                assert_eq!((*key_bits, *exponent, modulus.len()), (2048, 65537, 256));
            }
            other => panic!("{other:?}"),
        }
        let name = p.name();
        assert_eq!(&name[..2], &[0x00, 0x0b]);
        assert_eq!(&name[2..], digest::digest(&digest::SHA256, &t).as_ref());
        assert_eq!(parse_object_name(&name).unwrap(), HashAlg::Sha256);
        let b = p.to_tpm2b_public();
        assert_eq!(TpmPublic::from_tpm2b_public(&b).unwrap(), p);
    }

    #[test]
    fn rejects_truncation_trailing_and_size_mismatch() {
        let t = rsa_tpmt(256);
        for cut in 0..t.len() {
            assert!(
                matches!(
                    TpmPublic::from_tpmt_public(&t[..cut]),
                    Err(TpmPublicError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut long = t.clone();
        long.push(0);
        assert!(matches!(
            TpmPublic::from_tpmt_public(&long),
            Err(TpmPublicError::TrailingBytes { count: 1, .. })
        ));
        let mut b = ((t.len() + 1) as u16).to_be_bytes().to_vec();
        b.extend_from_slice(&t);
        assert!(matches!(
            TpmPublic::from_tpm2b_public(&b),
            Err(TpmPublicError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn rejects_bad_names() {
        assert!(parse_object_name(&[]).is_err());
        assert!(parse_object_name(&[0x40, 0x00, 0x00, 0x01]).is_err()); // a handle
        assert!(parse_object_name(&[0x00, 0x0b, 1, 2, 3]).is_err());
        let mut ok = vec![0x00, 0x0c];
        ok.extend_from_slice(&[7; 48]);
        assert_eq!(parse_object_name(&ok).unwrap(), HashAlg::Sha384);
    }
}
