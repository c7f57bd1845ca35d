//! TPM 2.0 public areas (`TPMT_PUBLIC`, `TPM2B_PUBLIC`) and object Names.
//!
//! The parser follows TPM 2.0 Library Part 2 (Structures) §12.2: every field
//! is read through the bounds-checked `Reader`, every union is selected by
//! the tag that precedes it (an unknown tag is an error, never skipped),
//! `TPM2B` sizes are capped at what a TPM produces, an RSA key's `keyBits`
//! must match its modulus, and trailing bytes are an error, so a host
//! cannot smuggle data past the verifier. A key's Name is `nameAlg ||
//! H_nameAlg(the marshalled TPMT_PUBLIC)` (Part 1 §16), computed over the
//! bytes exactly as received.
//!
//! This is the TPM's view of a key (raw `unique` and parameters, any curve
//! id): [`crate::registrar`] uses it for EKs; [`crate::tpm::AkPublic`] turns
//! it into a key it can verify signatures with ([`crate::tpm::PublicKey`]).

use super::alg;
use super::marshal::{ParseError, Reader, MAX_DIGEST, MAX_ECC_BYTES, MAX_PUBLIC, MAX_RSA_BYTES};
use tellus_measured_boot::{Digest, HashAlg};

/// `TPMA_OBJECT` (Part 2 §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectAttributes(pub u32);

impl ObjectAttributes {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN_ENCRYPT: u32 = 1 << 18;

    pub fn fixed_tpm(self) -> bool {
        self.0 & Self::FIXED_TPM != 0
    }
    pub fn restricted(self) -> bool {
        self.0 & Self::RESTRICTED != 0
    }
    /// `sign` (the `SIGN_ENCRYPT` bit).
    pub fn sign(self) -> bool {
        self.0 & Self::SIGN_ENCRYPT != 0
    }
    pub fn decrypt(self) -> bool {
        self.0 & Self::DECRYPT != 0
    }
}

/// `TPMT_SYM_DEF_OBJECT` when its algorithm is not `TPM_ALG_NULL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymDef {
    pub algorithm: u16,
    pub key_bits: u16,
    pub mode: u16,
}

/// The type-specific part of a public area, as the TPM marshalled it. (Not
/// to be confused with [`crate::tpm::PublicKey`], an AK's normalised
/// signature-verification key.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA: `exponent` is the effective public exponent (the marshalled 0 is
    /// replaced by the default 65537); `modulus` is `unique.rsa` as given
    /// (`keyBits / 8` bytes).
    Rsa { key_bits: u16, exponent: u32, modulus: Vec<u8> },
    /// ECC: `curve` is a `TPM_ECC_CURVE` (see [`super::curve`]); `kdf` the
    /// KDF scheme; `x`, `y` are `unique.ecc` as given.
    Ecc { curve: u16, kdf: u16, x: Vec<u8>, y: Vec<u8> },
    /// Keyed hash object: `unique.keyedHash`.
    KeyedHash { unique: Vec<u8> },
    /// Symmetric cipher object: `unique.sym`.
    SymCipher { unique: Vec<u8> },
}

/// A parsed `TPMT_PUBLIC`, keeping its exact marshalled bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmPublic {
    /// `type` (`TPMI_ALG_PUBLIC`): [`alg::RSA`], [`alg::ECC`],
    /// [`alg::KEYEDHASH`] or [`alg::SYMCIPHER`].
    pub object_type: u16,
    /// `nameAlg`; one we can hash, so the Name is always computable.
    pub name_alg: HashAlg,
    pub object_attributes: ObjectAttributes,
    pub auth_policy: Vec<u8>,
    /// The symmetric algorithm of a storage key (an EK's is AES-128-CFB in
    /// the low-range templates); `None` when it is `TPM_ALG_NULL` or the type
    /// has none (keyed hash).
    pub symmetric: Option<SymDef>,
    /// The signing/decryption scheme (`TPM_ALG_NULL` for an EK, or when any
    /// scheme may be used).
    pub scheme: u16,
    /// The scheme's hash algorithm, where the scheme has one.
    pub scheme_hash: Option<u16>,
    pub key: PublicKey,
    tpmt: Vec<u8>,
}

impl TpmPublic {
    /// Parses a `TPM2B_PUBLIC` (u16 big-endian size, then `TPMT_PUBLIC`), the
    /// format of `tpm2_createek -u`, `tpm2_createak -u`, `tpm2_readpublic -o`
    /// (tpm2-tools' default "tss" format).
    pub fn from_tpm2b_public(bytes: &[u8]) -> Result<TpmPublic, ParseError> {
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
        TpmPublic::from_tpmt_public(r.take(size, "publicArea")?)
    }

    /// Parses a bare `TPMT_PUBLIC`.
    pub fn from_tpmt_public(bytes: &[u8]) -> Result<TpmPublic, ParseError> {
        if bytes.len() > MAX_PUBLIC {
            return Err(ParseError::SizeTooLarge {
                structure: "TPMT_PUBLIC",
                field: "(whole structure)",
                offset: 0,
                size: bytes.len(),
                max: MAX_PUBLIC,
            });
        }
        let mut r = Reader::new(bytes, "TPMT_PUBLIC");
        let type_offset = r.pos();
        let object_type = r.u16("type")?;
        if !matches!(object_type, alg::RSA | alg::ECC | alg::KEYEDHASH | alg::SYMCIPHER) {
            return Err(r.unsupported(
                "type",
                type_offset,
                object_type,
                "RSA (0x0001), ECC (0x0023), KEYEDHASH (0x0008), SYMCIPHER (0x0025)",
            ));
        }
        let name_alg = r.hash_alg("nameAlg")?;
        let object_attributes = ObjectAttributes(r.u32("objectAttributes")?);
        let auth_policy = r.tpm2b("authPolicy", MAX_DIGEST)?.to_vec();
        let (symmetric, scheme, scheme_hash, key) = match object_type {
            alg::RSA => {
                let symmetric = read_sym_def_object(&mut r)?;
                let (scheme, scheme_hash) = read_asym_scheme(&mut r)?;
                let bits_offset = r.pos();
                let key_bits = r.u16("parameters.rsaDetail.keyBits")?;
                let exponent = match r.u32("parameters.rsaDetail.exponent")? {
                    0 => 65537,
                    e => e,
                };
                let modulus = r.tpm2b("unique.rsa", MAX_RSA_BYTES)?.to_vec();
                if modulus.len() * 8 != usize::from(key_bits) {
                    return Err(r.bad(
                        "parameters.rsaDetail.keyBits",
                        bits_offset,
                        u64::from(key_bits),
                        "it does not match the length of unique.rsa (the modulus)",
                    ));
                }
                (symmetric, scheme, scheme_hash, PublicKey::Rsa { key_bits, exponent, modulus })
            }
            alg::ECC => {
                let symmetric = read_sym_def_object(&mut r)?;
                let (scheme, scheme_hash) = read_asym_scheme(&mut r)?;
                let curve = r.u16("parameters.eccDetail.curveID")?;
                let kdf_offset = r.pos();
                let kdf = r.u16("parameters.eccDetail.kdf.scheme")?;
                match kdf {
                    alg::NULL => {}
                    alg::MGF1 | alg::KDF1_SP800_56A | alg::KDF2 | alg::KDF1_SP800_108 => {
                        r.u16("parameters.eccDetail.kdf.details.hashAlg")?;
                    }
                    other => {
                        return Err(r.unsupported(
                            "parameters.eccDetail.kdf.scheme",
                            kdf_offset,
                            other,
                            "NULL, MGF1, KDF1_SP800_56A, KDF2, KDF1_SP800_108",
                        ))
                    }
                }
                let x = r.tpm2b("unique.ecc.x", MAX_ECC_BYTES)?.to_vec();
                let y = r.tpm2b("unique.ecc.y", MAX_ECC_BYTES)?.to_vec();
                (symmetric, scheme, scheme_hash, PublicKey::Ecc { curve, kdf, x, y })
            }
            alg::KEYEDHASH => {
                let scheme_offset = r.pos();
                let scheme = r.u16("parameters.keyedHashDetail.scheme.scheme")?;
                let scheme_hash = match scheme {
                    alg::NULL => None,
                    alg::HMAC => Some(r.u16("parameters.keyedHashDetail.scheme.details.hashAlg")?),
                    alg::XOR => {
                        let h = r.u16("parameters.keyedHashDetail.scheme.details.hashAlg")?;
                        r.u16("parameters.keyedHashDetail.scheme.details.kdf")?;
                        Some(h)
                    }
                    other => {
                        return Err(r.unsupported(
                            "parameters.keyedHashDetail.scheme.scheme",
                            scheme_offset,
                            other,
                            "NULL, HMAC, XOR",
                        ))
                    }
                };
                let unique = r.tpm2b("unique.keyedHash", MAX_DIGEST)?.to_vec();
                (None, scheme, scheme_hash, PublicKey::KeyedHash { unique })
            }
            _ => {
                // alg::SYMCIPHER, the last type let through above.
                let symmetric = read_sym_def_object(&mut r)?;
                let unique = r.tpm2b("unique.sym", MAX_DIGEST)?.to_vec();
                (symmetric, alg::NULL, None, PublicKey::SymCipher { unique })
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

    /// The marshalled `TPMT_PUBLIC` (without a TPM2B size), exactly as parsed.
    pub fn tpmt_public(&self) -> &[u8] {
        &self.tpmt
    }

    /// The marshalled `TPM2B_PUBLIC`.
    pub fn to_tpm2b_public(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.tpmt.len() + 2);
        // from_tpmt_public rejects anything longer than MAX_PUBLIC bytes.
        out.extend_from_slice(&(self.tpmt.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.tpmt);
        out
    }

    /// The object's Name: `nameAlg (u16 BE) || H_nameAlg(TPMT_PUBLIC)`.
    pub fn name(&self) -> Vec<u8> {
        let mut name = self.name_alg.tpm_alg_id().to_be_bytes().to_vec();
        name.extend_from_slice(Digest::of(self.name_alg, &self.tpmt).as_bytes());
        name
    }

    /// Whether the object is a restricted decryption ("storage") key, the
    /// kind `TPM2_MakeCredential`/`TPM2_ActivateCredential` accept as EK.
    pub fn is_storage_key(&self) -> bool {
        let a = self.object_attributes;
        a.restricted() && a.decrypt() && !a.sign()
    }

    /// For an ECC key, the byte offset of `parameters.eccDetail.curveID` in
    /// the `TPMT_PUBLIC` (for messages about the curve).
    pub fn ecc_curve_offset(&self) -> Option<usize> {
        let PublicKey::Ecc { kdf, x, y, .. } = &self.key else {
            return None;
        };
        // curveID, kdf.scheme [, kdf.details.hashAlg], unique.ecc.x, .y: the end.
        let kdf_len = if *kdf == alg::NULL { 2 } else { 4 };
        Some(self.tpmt.len() - (2 + y.len()) - (2 + x.len()) - kdf_len - 2)
    }
}

/// The Name of the object whose marshalled `TPMT_PUBLIC` is `bytes`.
pub fn name_from_tpmt_public(bytes: &[u8]) -> Result<Vec<u8>, ParseError> {
    Ok(TpmPublic::from_tpmt_public(bytes)?.name())
}

/// The Name of the object whose marshalled `TPM2B_PUBLIC` is `bytes`.
pub fn name_from_tpm2b_public(bytes: &[u8]) -> Result<Vec<u8>, ParseError> {
    Ok(TpmPublic::from_tpm2b_public(bytes)?.name())
}

/// Checks that `name` is a key's Name (`nameAlg || digest`, the digest as
/// long as that algorithm's) and returns its algorithm. Handles' 4-byte
/// Names (PCRs, sessions, permanent handles) are rejected: only loaded
/// objects can be credential targets.
pub fn parse_object_name(name: &[u8]) -> Result<HashAlg, ParseError> {
    let bad = |detail: String| ParseError::BadName { len: name.len(), detail };
    let (id, digest) = match name {
        [a, b, digest @ ..] => (u16::from_be_bytes([*a, *b]), digest),
        _ => return Err(bad("shorter than the 2-byte algorithm identifier".into())),
    };
    let hash = HashAlg::from_tpm_alg_id(id)
        .ok_or_else(|| bad(format!("0x{id:04x} is not a supported name algorithm")))?;
    if digest.len() != hash.size() {
        return Err(bad(format!(
            "{hash:?} digest must be {} byte(s), got {}",
            hash.size(),
            digest.len()
        )));
    }
    Ok(hash)
}

/// `TPMT_SYM_DEF_OBJECT`.
fn read_sym_def_object(r: &mut Reader<'_>) -> Result<Option<SymDef>, ParseError> {
    let offset = r.pos();
    let algorithm = r.u16("parameters.symmetric.algorithm")?;
    match algorithm {
        alg::NULL => Ok(None),
        alg::AES | alg::SM4 | alg::CAMELLIA => {
            let key_bits = r.u16("parameters.symmetric.keyBits")?;
            let mode = r.u16("parameters.symmetric.mode")?;
            Ok(Some(SymDef { algorithm, key_bits, mode }))
        }
        other => Err(r.unsupported(
            "parameters.symmetric.algorithm",
            offset,
            other,
            "NULL, AES, SM4, CAMELLIA",
        )),
    }
}

/// `TPMT_RSA_SCHEME` / `TPMT_ECC_SCHEME`: the scheme and, where the union
/// member has one, its hash algorithm.
fn read_asym_scheme(r: &mut Reader<'_>) -> Result<(u16, Option<u16>), ParseError> {
    let offset = r.pos();
    let scheme = r.u16("parameters.scheme.scheme")?;
    let hash = match scheme {
        alg::NULL | alg::RSAES => None,
        alg::RSASSA
        | alg::RSAPSS
        | alg::OAEP
        | alg::ECDSA
        | alg::ECDH
        | alg::SM2
        | alg::ECSCHNORR
        | alg::ECMQV => Some(r.u16("parameters.scheme.details.hashAlg")?),
        alg::ECDAA => {
            let h = r.u16("parameters.scheme.details.hashAlg")?;
            r.u16("parameters.scheme.details.count")?;
            Some(h)
        }
        other => {
            return Err(r.unsupported(
                "parameters.scheme.scheme",
                offset,
                other,
                "NULL, RSASSA, RSAES, RSAPSS, OAEP, ECDSA, ECDH, ECDAA, SM2, ECSCHNORR, ECMQV",
            ))
        }
    };
    Ok((scheme, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::digest;

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

    /// An ECC signing key TPMT_PUBLIC on `curve`, with `kdf`.
    fn ecc_tpmt(curve: u16, kdf: Option<u16>) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&alg::ECC.to_be_bytes());
        v.extend_from_slice(&alg::SHA256.to_be_bytes());
        v.extend_from_slice(&0x00050072u32.to_be_bytes());
        v.extend_from_slice(&[0, 0]); // empty authPolicy
        v.extend_from_slice(&alg::NULL.to_be_bytes()); // symmetric
        v.extend_from_slice(&alg::ECDSA.to_be_bytes());
        v.extend_from_slice(&alg::SHA256.to_be_bytes());
        v.extend_from_slice(&curve.to_be_bytes());
        match kdf {
            None => v.extend_from_slice(&alg::NULL.to_be_bytes()),
            Some(k) => {
                v.extend_from_slice(&k.to_be_bytes());
                v.extend_from_slice(&alg::SHA256.to_be_bytes());
            }
        }
        for c in [1u8, 2] {
            v.extend_from_slice(&32u16.to_be_bytes());
            v.extend_from_slice(&[c; 32]);
        }
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
        assert_eq!(p.ecc_curve_offset(), None);
    }

    #[test]
    fn rejects_truncation_trailing_and_size_mismatch() {
        let t = rsa_tpmt(256);
        for cut in 0..t.len() {
            assert!(
                matches!(TpmPublic::from_tpmt_public(&t[..cut]), Err(ParseError::Truncated { .. })),
                "cut at {cut}"
            );
        }
        let mut long = t.clone();
        long.push(0);
        assert!(matches!(
            TpmPublic::from_tpmt_public(&long),
            Err(ParseError::TrailingBytes { count: 1, .. })
        ));
        let mut b = ((t.len() + 1) as u16).to_be_bytes().to_vec();
        b.extend_from_slice(&t);
        assert!(matches!(TpmPublic::from_tpm2b_public(&b), Err(ParseError::SizeMismatch { .. })));
    }

    #[test]
    fn rejects_inconsistent_or_unsupported_fields() {
        // keyBits 2048 with a 255-byte modulus.
        let e = TpmPublic::from_tpmt_public(&rsa_tpmt(255)).unwrap_err();
        assert!(
            matches!(e, ParseError::BadValue { field: "parameters.rsaDetail.keyBits", .. }),
            "{e}"
        );
        // A modulus larger than any RSA key ring verifies.
        let mut big = rsa_tpmt(0);
        let n = big.len();
        big[n - 2..].copy_from_slice(&1025u16.to_be_bytes());
        big.extend(std::iter::repeat(0xab).take(1025));
        let e = TpmPublic::from_tpmt_public(&big).unwrap_err();
        assert!(matches!(e, ParseError::SizeTooLarge { field: "unique.rsa", .. }), "{e}");
        // nameAlg SM3_256: no Name can be computed.
        let mut t = rsa_tpmt(256);
        t[2..4].copy_from_slice(&alg::SM3_256.to_be_bytes());
        let e = TpmPublic::from_tpmt_public(&t).unwrap_err();
        assert!(matches!(e, ParseError::Unsupported { field: "nameAlg", .. }), "{e}");
        // An unknown object type.
        let mut t = rsa_tpmt(256);
        t[0..2].copy_from_slice(&0x7777u16.to_be_bytes());
        let e = TpmPublic::from_tpmt_public(&t).unwrap_err();
        assert!(matches!(e, ParseError::Unsupported { field: "type", offset: 0, .. }), "{e}");
        // A symmetric algorithm that cannot protect a storage key (XOR).
        let mut t = rsa_tpmt(256);
        t[10..12].copy_from_slice(&alg::XOR.to_be_bytes());
        let e = TpmPublic::from_tpmt_public(&t).unwrap_err();
        assert!(
            matches!(e, ParseError::Unsupported { field: "parameters.symmetric.algorithm", .. }),
            "{e}"
        );
        // An unknown ECC KDF.
        let e = TpmPublic::from_tpmt_public(&ecc_tpmt(0x0003, Some(0x7777))).unwrap_err();
        assert!(
            matches!(e, ParseError::Unsupported { field: "parameters.eccDetail.kdf.scheme", .. }),
            "{e}"
        );
        // An oversized TPM2B_PUBLIC.
        let mut b = 4097u16.to_be_bytes().to_vec();
        b.extend(std::iter::repeat(0).take(4097));
        let e = TpmPublic::from_tpm2b_public(&b).unwrap_err();
        assert!(matches!(e, ParseError::SizeTooLarge { field: "size", .. }), "{e}");
    }

    #[test]
    fn ecc_keys_keep_any_curve_and_their_curve_offset() {
        for kdf in [None, Some(alg::KDF1_SP800_56A)] {
            // P-521: not one the quote verifier takes, but an EK may use it.
            let t = ecc_tpmt(0x0005, kdf);
            let p = TpmPublic::from_tpmt_public(&t).unwrap();
            assert!(matches!(p.key, PublicKey::Ecc { curve: 0x0005, .. }));
            assert!(p.object_attributes.sign() && !p.is_storage_key());
            assert_eq!((p.scheme, p.scheme_hash), (alg::ECDSA, Some(alg::SHA256)));
            let at = p.ecc_curve_offset().unwrap();
            assert_eq!(&t[at..at + 2], &[0x00, 0x05]);
        }
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
