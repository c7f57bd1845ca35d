//! `TPM2_MakeCredential` computed in software.
//!
//! The verifier has no TPM, and it must not trust the host's TPM to make
//! the credential, so it does what the TPM would do (TPM 2.0 Library
//! Part 1 §24 "Credential Protection", Part 3 §12.6 MakeCredential):
//!
//! 1. a seed is shared with the EK (Part 1 Annex B, RSA, and Annex C, ECC,
//!    "secret sharing"):
//!    - RSA EK: `seed` = nameAlg-sized random bytes, `secret` =
//!      RSA-OAEP(EK, hash = nameAlg, label = `"IDENTITY\0"`, seed);
//!    - ECC EK: an ephemeral key `(d_e, Q_eU)` on the EK's curve,
//!      `Z` = x(d_e · Q_sV), `seed` = KDFe(nameAlg, Z, `"IDENTITY"`, x(Q_eU),
//!      x(Q_sV), nameAlg bits), `secret` = TPMS_ECC_POINT(Q_eU);
//! 2. `symKey` = KDFa(nameAlg, seed, `"STORAGE"`, Name(AK), ∅, EK symmetric
//!    key bits); `encIdentity` = AES-CFB(symKey, IV = 0,
//!    TPM2B_DIGEST(credential));
//! 3. `HMACkey` = KDFa(nameAlg, seed, `"INTEGRITY"`, ∅, ∅, nameAlg bits);
//!    `integrityHMAC` = HMAC_nameAlg(HMACkey, encIdentity || Name(AK));
//! 4. `credentialBlob` = TPM2B_ID_OBJECT(TPM2B_DIGEST(integrityHMAC) ||
//!    encIdentity), `secret` = TPM2B_ENCRYPTED_SECRET.
//!
//! `TPM2_ActivateCredential` on the host recomputes the HMAC with the Name
//! of the key it is given, so the credential comes back only from the TPM
//! that holds the EK's private key *and* has the named AK loaded.
//!
//! Written by hand: no maintained Rust crate implements MakeCredential
//! (tss-esapi only wraps the TPM command and needs a TPM). The labels
//! include their terminating NUL octet, as the reference implementation and
//! tpm2-tools (`lib/tpm2_identity_util.c`, `lib/tpm2_kdfe.c`) do; the tests
//! check the result against a real `TPM2_ActivateCredential` on swtpm.
//!
//! Cryptography: `rsa` for OAEP encryption (ring cannot encrypt with RSA),
//! ring for ECDH, SHA and randomness, `aes` + `cfb-mode` for AES-CFB,
//! `hmac` + `sha2` for HMAC and KDFa.

use aes::{Aes128, Aes256};
use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use ring::agreement;
use ring::rand::{SecureRandom, SystemRandom};
use rsa::rand_core::{CryptoRng, RngCore};
use rsa::{BigUint, Oaep, RsaPublicKey};
use sha2::{Sha256, Sha384, Sha512};
use tellus_measured_boot::{Digest, HashAlg};
use thiserror::Error;

use crate::tpm_types::marshal::Reader;
use crate::tpm_types::{alg, curve, parse_object_name, ParseError, PublicKey, TpmPublic};

/// The label of credential protection (used with its terminating NUL).
pub const IDENTITY_LABEL: &str = "IDENTITY";

/// Magic number of tpm2-tools data files (`lib/files.c`).
pub const TPM2_TOOLS_MAGIC: u32 = 0xBADC_C0DE;

/// Version of the tpm2-tools credential file (`tpm2_makecredential -o`,
/// `tpm2_activatecredential -i`).
pub const TPM2_TOOLS_CREDENTIAL_VERSION: u32 = 1;

/// `sizeof(TPMS_ID_OBJECT)`: two TPM2B_DIGESTs of at most 64 bytes.
pub const MAX_ID_OBJECT_LEN: usize = 2 + 64 + 2 + 64;

/// `sizeof(TPMU_ENCRYPTED_SECRET)` for TPMs with 4096-bit RSA (the largest
/// member); TPMs with 2048-bit RSA use at most 256.
pub const MAX_ENCRYPTED_SECRET_LEN: usize = 512;

/// Errors from MakeCredential and its file format.
#[derive(Debug, Error)]
pub enum MakeCredentialError {
    #[error(
        "credential of {len} byte(s) is too long: TPM2_MakeCredential accepts at most the \
         digest size of the EK's nameAlg ({max} bytes); use a shorter secret (e.g. a \
         {max}-byte random value)"
    )]
    CredentialTooLong { len: usize, max: usize },
    #[error("the credential is empty; pass the random secret the host must prove it can recover")]
    EmptyCredential,
    #[error(
        "the EK public area is not a restricted decryption key (objectAttributes \
         0x{attributes:08x}); MakeCredential needs the TPM's endorsement key, not a signing key \
         (tpm2_createek -u writes it)"
    )]
    NotStorageKey { attributes: u32 },
    #[error("EK symmetric algorithm is not supported: {detail}; the TCG EK templates use AES-CFB")]
    UnsupportedSymmetric { detail: String },
    #[error("EK key is not supported: {detail}; use an RSA (2048-4096) or ECC P-256/P-384 EK")]
    UnsupportedKey { detail: String },
    #[error(
        "EK nameAlg {0:?} is not supported for credential protection; the TCG EK templates \
         use SHA-256 or SHA-384"
    )]
    UnsupportedNameAlg(HashAlg),
    #[error("KDFa of {bits} bit(s) requested: {detail}")]
    BadKdfLength { bits: u32, detail: &'static str },
    #[error("object Name or public area rejected: {0}")]
    Public(#[from] ParseError),
    #[error("RSA-OAEP encryption of the seed to the EK failed: {0}; check the EK public key")]
    Rsa(String),
    #[error("ECDH with the EK failed: {0}; check that the EK point is on its curve")]
    Ecdh(&'static str),
    #[error("the system random number generator failed; retry, and check the host's entropy")]
    Random,
    #[error("{0}")]
    Crypto(&'static str),
    #[error("not a tpm2-tools credential file: {detail}; expect `tpm2_makecredential -o` output")]
    BadFile { detail: String },
}

/// `TPMS_ID_OBJECT`: the encrypted credential and its integrity HMAC.
/// Built only by [`make_credential`] or by parsing, which keep both within
/// the structure's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdObject {
    integrity_hmac: Vec<u8>,
    enc_identity: Vec<u8>,
}

impl IdObject {
    /// `integrityHMAC` (a nameAlg digest).
    pub fn integrity_hmac(&self) -> &[u8] {
        &self.integrity_hmac
    }

    /// `encIdentity`: the AES-CFB-encrypted marshalled TPM2B_DIGEST of the
    /// credential (its size octets are encrypted too).
    pub fn enc_identity(&self) -> &[u8] {
        &self.enc_identity
    }

    /// The contents of a `TPM2B_ID_OBJECT` (without its own size):
    /// `TPM2B_DIGEST(integrityHMAC) || encIdentity`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(2 + self.integrity_hmac.len() + self.enc_identity.len());
        v.extend_from_slice(&(self.integrity_hmac.len() as u16).to_be_bytes());
        v.extend_from_slice(&self.integrity_hmac);
        v.extend_from_slice(&self.enc_identity);
        v
    }

    /// The marshalled `TPM2B_ID_OBJECT`.
    pub fn marshal(&self) -> Vec<u8> {
        let body = self.to_bytes();
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(&body);
        v
    }

    /// Parses the contents of a `TPM2B_ID_OBJECT` (without its size).
    pub fn from_bytes(bytes: &[u8]) -> Result<IdObject, MakeCredentialError> {
        if bytes.len() > MAX_ID_OBJECT_LEN {
            return Err(bad_file(format!(
                "credential blob of {} bytes exceeds TPMS_ID_OBJECT's {MAX_ID_OBJECT_LEN}",
                bytes.len()
            )));
        }
        let mut r = Reader::new(bytes, "TPM2B_ID_OBJECT");
        // Any TPM2B size is read; the bound is checked below.
        let integrity_hmac = r.tpm2b("integrityHMAC", usize::from(u16::MAX))?.to_vec();
        if integrity_hmac.len() > 64 {
            return Err(bad_file(format!(
                "integrityHMAC of {} bytes is longer than any digest",
                integrity_hmac.len()
            )));
        }
        let enc_identity = r.rest().to_vec();
        Ok(IdObject { integrity_hmac, enc_identity })
    }
}

/// The outputs of `TPM2_MakeCredential`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MakeCredentialOutput {
    credential_blob: IdObject,
    secret: Vec<u8>,
}

impl MakeCredentialOutput {
    /// `credentialBlob` (`TPM2B_ID_OBJECT`).
    pub fn credential_blob(&self) -> &IdObject {
        &self.credential_blob
    }

    /// The contents of `secret` (`TPM2B_ENCRYPTED_SECRET`, without its
    /// size): the OAEP ciphertext (RSA EK) or the marshalled ephemeral
    /// `TPMS_ECC_POINT` (ECC EK).
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The marshalled `TPM2B_ID_OBJECT`.
    pub fn id_object(&self) -> Vec<u8> {
        self.credential_blob.marshal()
    }

    /// The marshalled `TPM2B_ENCRYPTED_SECRET`.
    pub fn encrypted_secret(&self) -> Vec<u8> {
        let mut v = (self.secret.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(&self.secret);
        v
    }

    /// The tpm2-tools credential file (`tpm2_makecredential -o`, read by
    /// `tpm2_activatecredential -i`): magic `0xBADCC0DE` and version 1 as
    /// big-endian u32s, then the marshalled `TPM2B_ID_OBJECT` and
    /// `TPM2B_ENCRYPTED_SECRET`.
    pub fn to_tpm2_tools_file(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&TPM2_TOOLS_MAGIC.to_be_bytes());
        v.extend_from_slice(&TPM2_TOOLS_CREDENTIAL_VERSION.to_be_bytes());
        v.extend_from_slice(&self.id_object());
        v.extend_from_slice(&self.encrypted_secret());
        v
    }

    /// Parses a tpm2-tools credential file (see [`Self::to_tpm2_tools_file`]);
    /// trailing bytes are rejected.
    pub fn from_tpm2_tools_file(bytes: &[u8]) -> Result<MakeCredentialOutput, MakeCredentialError> {
        let mut r = Reader::new(bytes, "tpm2-tools credential file");
        let magic = r.u32("magic")?;
        if magic != TPM2_TOOLS_MAGIC {
            return Err(bad_file(format!(
                "magic 0x{magic:08x}, expected 0x{TPM2_TOOLS_MAGIC:08X}"
            )));
        }
        let version = r.u32("version")?;
        if version != TPM2_TOOLS_CREDENTIAL_VERSION {
            return Err(bad_file(format!(
                "version {version}, expected {TPM2_TOOLS_CREDENTIAL_VERSION}"
            )));
        }
        // Any TPM2B sizes are read; the bounds are checked below.
        let credential_blob =
            IdObject::from_bytes(r.tpm2b("credentialBlob", usize::from(u16::MAX))?)?;
        let secret = r.tpm2b("secret", usize::from(u16::MAX))?.to_vec();
        if secret.len() > MAX_ENCRYPTED_SECRET_LEN {
            return Err(bad_file(format!(
                "encrypted secret of {} bytes exceeds {MAX_ENCRYPTED_SECRET_LEN}",
                secret.len()
            )));
        }
        r.finish()?;
        Ok(MakeCredentialOutput { credential_blob, secret })
    }
}

fn bad_file(detail: String) -> MakeCredentialError {
    MakeCredentialError::BadFile { detail }
}

/// `TPM2_MakeCredential(ek, credential, object_name)` in software.
///
/// - `ek`: the EK public area (e.g. parsed from the `TPM2B_PUBLIC` the host
///   sent, after its certificate was checked with
///   [`super::ek_cert::ek_public_matches_cert`]);
/// - `object_name`: the AK's Name (`nameAlg || H(TPMT_PUBLIC)`), as
///   computed by the verifier from the AK public area
///   ([`TpmPublic::name`]), never as claimed by the host;
/// - `credential`: the secret, 1 to nameAlg-digest-size bytes (32 for the
///   low-range EK templates).
pub fn make_credential(
    ek: &TpmPublic,
    object_name: &[u8],
    credential: &[u8],
) -> Result<MakeCredentialOutput, MakeCredentialError> {
    make_credential_with_rng(ek, object_name, credential, &SystemRandom::new())
}

fn make_credential_with_rng(
    ek: &TpmPublic,
    object_name: &[u8],
    credential: &[u8],
    rng: &dyn SecureRandom,
) -> Result<MakeCredentialOutput, MakeCredentialError> {
    parse_object_name(object_name)?;
    if !ek.is_storage_key() {
        return Err(MakeCredentialError::NotStorageKey { attributes: ek.object_attributes.0 });
    }
    let name_alg = ek.name_alg;
    if name_alg == HashAlg::Sha1 {
        return Err(MakeCredentialError::UnsupportedNameAlg(name_alg));
    }
    let max = name_alg.size();
    if credential.is_empty() {
        return Err(MakeCredentialError::EmptyCredential);
    }
    if credential.len() > max {
        return Err(MakeCredentialError::CredentialTooLong { len: credential.len(), max });
    }
    let sym = ek.symmetric.ok_or_else(|| MakeCredentialError::UnsupportedSymmetric {
        detail: "TPM_ALG_NULL (not a storage key)".into(),
    })?;
    if sym.algorithm != alg::AES || sym.mode != alg::CFB || !matches!(sym.key_bits, 128 | 256) {
        return Err(MakeCredentialError::UnsupportedSymmetric {
            detail: format!(
                "algorithm 0x{:04x}, {} bits, mode 0x{:04x}",
                sym.algorithm, sym.key_bits, sym.mode
            ),
        });
    }

    let (seed, secret) = match &ek.key {
        PublicKey::Rsa { key_bits, exponent, modulus } => {
            rsa_share_seed(name_alg, *key_bits, *exponent, modulus, rng)?
        }
        PublicKey::Ecc { curve, x, y, .. } => ecc_share_seed(name_alg, *curve, x, y, rng)?,
        PublicKey::KeyedHash { .. } | PublicKey::SymCipher { .. } => {
            return Err(MakeCredentialError::UnsupportedKey {
                detail: format!("object type 0x{:04x} is not asymmetric", ek.object_type),
            })
        }
    };

    let sym_key = kdfa(name_alg, &seed, "STORAGE", object_name, &[], u32::from(sym.key_bits))?;
    let mut enc_identity = Vec::with_capacity(2 + credential.len());
    enc_identity.extend_from_slice(&(credential.len() as u16).to_be_bytes());
    enc_identity.extend_from_slice(credential);
    aes_cfb_encrypt_zero_iv(&sym_key, &mut enc_identity)?;

    let hmac_key = kdfa(name_alg, &seed, "INTEGRITY", &[], &[], (name_alg.size() * 8) as u32)?;
    let integrity_hmac = hmac(name_alg, &hmac_key, &[&enc_identity, object_name])?;

    Ok(MakeCredentialOutput { credential_blob: IdObject { integrity_hmac, enc_identity }, secret })
}

/// RSA secret sharing (Part 1 Annex B): a random nameAlg-sized seed,
/// OAEP-encrypted with hash and MGF1 = nameAlg and label "IDENTITY\0".
fn rsa_share_seed(
    name_alg: HashAlg,
    key_bits: u16,
    exponent: u32,
    modulus: &[u8],
    rng: &dyn SecureRandom,
) -> Result<(Vec<u8>, Vec<u8>), MakeCredentialError> {
    let n = strip_leading_zeros(modulus);
    let bits = match n.first() {
        None => 0,
        Some(b) => n.len() * 8 - b.leading_zeros() as usize,
    };
    if bits != usize::from(key_bits) || !matches!(key_bits, 2048 | 3072 | 4096) {
        return Err(MakeCredentialError::UnsupportedKey {
            detail: format!("RSA keyBits {key_bits} with a {bits}-bit modulus"),
        });
    }
    let key = RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from(exponent))
        .map_err(|e| MakeCredentialError::Rsa(e.to_string()))?;
    let mut seed = vec![0u8; name_alg.size()];
    rng.fill(&mut seed).map_err(|_| MakeCredentialError::Random)?;
    let label = format!("{IDENTITY_LABEL}\0");
    let padding = match name_alg {
        HashAlg::Sha256 => Oaep::new_with_label::<Sha256, _>(label),
        HashAlg::Sha384 => Oaep::new_with_label::<Sha384, _>(label),
        HashAlg::Sha512 => Oaep::new_with_label::<Sha512, _>(label),
        HashAlg::Sha1 => return Err(MakeCredentialError::UnsupportedNameAlg(name_alg)),
    };
    let mut oaep_rng = RingRng { rng, failed: false };
    let secret = key
        .encrypt(&mut oaep_rng, padding, &seed)
        .map_err(|e| MakeCredentialError::Rsa(e.to_string()))?;
    if oaep_rng.failed {
        return Err(MakeCredentialError::Random);
    }
    Ok((seed, secret))
}

/// ECC secret sharing (Part 1 Annex C, one-pass Diffie-Hellman): an
/// ephemeral key on the EK's curve; the seed is KDFe over the shared x.
fn ecc_share_seed(
    name_alg: HashAlg,
    curve_id: u16,
    ek_x: &[u8],
    ek_y: &[u8],
    rng: &dyn SecureRandom,
) -> Result<(Vec<u8>, Vec<u8>), MakeCredentialError> {
    let (algorithm, field_len) = match curve_id {
        curve::NIST_P256 => (&agreement::ECDH_P256, 32),
        curve::NIST_P384 => (&agreement::ECDH_P384, 48),
        other => {
            return Err(MakeCredentialError::UnsupportedKey {
                detail: format!("ECC curve 0x{other:04x}"),
            })
        }
    };
    let mut peer = Vec::with_capacity(1 + 2 * field_len);
    peer.push(0x04);
    peer.extend_from_slice(&left_pad(ek_x, field_len)?);
    peer.extend_from_slice(&left_pad(ek_y, field_len)?);
    let ephemeral = agreement::EphemeralPrivateKey::generate(algorithm, rng)
        .map_err(|_| MakeCredentialError::Random)?;
    let q_eu = ephemeral
        .compute_public_key()
        .map_err(|_| MakeCredentialError::Ecdh("cannot compute the ephemeral public key"))?;
    let q_eu = q_eu.as_ref();
    if q_eu.len() != 1 + 2 * field_len || q_eu[0] != 0x04 {
        return Err(MakeCredentialError::Ecdh("unexpected ephemeral public key encoding"));
    }
    let (qx, qy) = q_eu[1..].split_at(field_len);
    let z = agreement::agree_ephemeral(
        ephemeral,
        &agreement::UnparsedPublicKey::new(algorithm, &peer),
        |z| z.to_vec(),
    )
    .map_err(|_| MakeCredentialError::Ecdh("the EK point is not a valid public key"))?;
    // partyVInfo is the EK's x exactly as in its public area, which is what
    // the TPM uses in TPM2_ActivateCredential.
    let seed = kdfe(name_alg, &z, IDENTITY_LABEL, qx, ek_x, (name_alg.size() * 8) as u32);
    let mut secret = Vec::with_capacity(4 + 2 * field_len);
    secret.extend_from_slice(&(field_len as u16).to_be_bytes());
    secret.extend_from_slice(qx);
    secret.extend_from_slice(&(field_len as u16).to_be_bytes());
    secret.extend_from_slice(qy);
    Ok((seed, secret))
}

/// KDFa (Part 1 §11.4.10.2, SP 800-108 counter mode with HMAC):
/// `K(i) = HMAC(key, [i]_32 || label || 0x00 || context_u || context_v ||
/// [bits]_32)`, concatenated and truncated to `bits` (excess high-order
/// bits of the first octet cleared). `label` is given without its NUL.
pub fn kdfa(
    hash: HashAlg,
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Result<Vec<u8>, MakeCredentialError> {
    if bits == 0 || bits > 8 * 1024 * 8 {
        return Err(MakeCredentialError::BadKdfLength { bits, detail: "must be 1 to 65536" });
    }
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + hash.size());
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let block = hmac(
            hash,
            key,
            &[
                &counter.to_be_bytes(),
                label.as_bytes(),
                &[0],
                context_u,
                context_v,
                &bits.to_be_bytes(),
            ],
        )?;
        out.extend_from_slice(&block);
        counter += 1;
    }
    out.truncate(bytes);
    if bits % 8 != 0 {
        out[0] &= 0xff >> (8 - bits % 8);
    }
    Ok(out)
}

/// KDFe (Part 1 §11.4.10.3, SP 800-56A concatenation KDF):
/// `K(i) = H([i]_32 || Z || label || 0x00 || party_u || party_v)`,
/// concatenated and truncated to `bits` (rounded up to whole octets, excess
/// high-order bits cleared). `label` is given without its NUL.
pub fn kdfe(
    hash: HashAlg,
    z: &[u8],
    label: &str,
    party_u: &[u8],
    party_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + hash.size());
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let input =
            [&counter.to_be_bytes()[..], z, label.as_bytes(), &[0], party_u, party_v].concat();
        out.extend_from_slice(Digest::of(hash, &input).as_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    if bits % 8 != 0 && !out.is_empty() {
        out[0] &= 0xff >> (8 - bits % 8);
    }
    out
}

/// HMAC over the concatenation of `parts`.
fn hmac(hash: HashAlg, key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, MakeCredentialError> {
    fn run<M: Mac + hmac::digest::KeyInit>(
        key: &[u8],
        parts: &[&[u8]],
    ) -> Result<Vec<u8>, MakeCredentialError> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
            .map_err(|_| MakeCredentialError::Crypto("HMAC rejected its key"))?;
        for p in parts {
            mac.update(p);
        }
        Ok(mac.finalize().into_bytes().to_vec())
    }
    match hash {
        HashAlg::Sha256 => run::<Hmac<Sha256>>(key, parts),
        HashAlg::Sha384 => run::<Hmac<Sha384>>(key, parts),
        HashAlg::Sha512 => run::<Hmac<Sha512>>(key, parts),
        HashAlg::Sha1 => Err(MakeCredentialError::UnsupportedNameAlg(hash)),
    }
}

/// AES-CFB (full-block feedback) with an all-zero IV, in place, as the TPM
/// encrypts `encIdentity` (Part 1 §24: the IV is zero because the key is
/// used once).
fn aes_cfb_encrypt_zero_iv(key: &[u8], data: &mut [u8]) -> Result<(), MakeCredentialError> {
    let iv = [0u8; 16];
    let bad = |_| MakeCredentialError::Crypto("AES-CFB rejected the derived key length");
    match key.len() {
        16 => cfb_mode::Encryptor::<Aes128>::new_from_slices(key, &iv).map_err(bad)?.encrypt(data),
        32 => cfb_mode::Encryptor::<Aes256>::new_from_slices(key, &iv).map_err(bad)?.encrypt(data),
        _ => return Err(MakeCredentialError::Crypto("AES key must be 128 or 256 bits")),
    }
    Ok(())
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

/// A big-endian coordinate as exactly `len` bytes.
fn left_pad(b: &[u8], len: usize) -> Result<Vec<u8>, MakeCredentialError> {
    let b = strip_leading_zeros(b);
    if b.len() > len {
        return Err(MakeCredentialError::UnsupportedKey {
            detail: format!("ECC coordinate of {} bytes for a {len}-byte field", b.len()),
        });
    }
    let mut v = vec![0u8; len - b.len()];
    v.extend_from_slice(b);
    Ok(v)
}

/// `rsa`'s OAEP needs a `rand_core` RNG; this one draws from ring. `fill_bytes`
/// cannot fail, so a failure is recorded in `failed` and the caller must
/// discard the result when it is set.
pub(crate) struct RingRng<'a> {
    pub(crate) rng: &'a dyn SecureRandom,
    pub(crate) failed: bool,
}

impl RngCore for RingRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if self.rng.fill(dest).is_err() {
            self.failed = true;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for RingRng<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// KDFa known answers: the self-test vector of the TPM reference
    /// implementation (libtpms `KdfTestData.h`): key, label
    /// "KDFSELFTESTLABEL" (with its NUL), contextU, contextV, 160 bits.
    #[test]
    fn kdfa_matches_tpm_self_test_vectors() {
        let key = hex::decode("271FA08BBDC5060EC3DFA928FF9B73123A12DA0C").unwrap();
        let u = hex::decode("CE244F395DCA7391").unwrap();
        let v = hex::decode("DA504031DDF12E83").unwrap();
        for (hash, want) in [
            (HashAlg::Sha256, "bb0259e1c8ba607e6a2cd704b69a902e9ade84c4"),
            (HashAlg::Sha384, "1dce70c9113eb2dba47bd9cfc72bf46f45b09312"),
            (HashAlg::Sha512, "8be2c1b85b78569b9fa759f5857c56d684810fd3"),
        ] {
            let got = kdfa(hash, &key, "KDFSELFTESTLABEL", &u, &v, 160).unwrap();
            assert_eq!(hex::encode(got), want, "{hash:?}");
        }
    }

    #[test]
    fn kdfa_lengths() {
        let k = kdfa(HashAlg::Sha256, b"k", "STORAGE", b"n", &[], 128).unwrap();
        assert_eq!(k.len(), 16);
        let long = kdfa(HashAlg::Sha256, b"k", "X", &[], &[], 512).unwrap();
        assert_eq!(long.len(), 64);
        // The first block does not depend on how many follow, except through
        // the [bits] input, so two lengths give different prefixes.
        assert_ne!(&long[..16], &k[..]);
        let odd = kdfa(HashAlg::Sha256, b"k", "X", &[], &[], 12).unwrap();
        assert_eq!(odd.len(), 2);
        assert_eq!(odd[0] & 0xf0, 0);
        assert!(kdfa(HashAlg::Sha256, b"k", "X", &[], &[], 0).is_err());
        assert!(kdfa(HashAlg::Sha1, b"k", "X", &[], &[], 8).is_err());
    }

    #[test]
    fn kdfe_is_counter_hash() {
        let z = [1u8; 32];
        let got = kdfe(HashAlg::Sha256, &z, "IDENTITY", &[2; 32], &[3; 32], 256);
        let mut input = vec![0, 0, 0, 1];
        input.extend_from_slice(&z);
        input.extend_from_slice(b"IDENTITY\0");
        input.extend_from_slice(&[2; 32]);
        input.extend_from_slice(&[3; 32]);
        assert_eq!(got, Digest::of(HashAlg::Sha256, &input).as_bytes());
        assert_eq!(kdfe(HashAlg::Sha256, &z, "IDENTITY", &[], &[], 384).len(), 48);
    }

    #[test]
    fn file_round_trip_and_rejections() {
        let out = MakeCredentialOutput {
            credential_blob: IdObject { integrity_hmac: vec![7; 32], enc_identity: vec![9; 34] },
            secret: vec![5; 256],
        };
        let f = out.to_tpm2_tools_file();
        assert_eq!(&f[..8], &[0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1]);
        assert_eq!(f.len(), 8 + 2 + 2 + 32 + 34 + 2 + 256);
        assert_eq!(MakeCredentialOutput::from_tpm2_tools_file(&f).unwrap(), out);
        for cut in 0..f.len() {
            assert!(MakeCredentialOutput::from_tpm2_tools_file(&f[..cut]).is_err(), "{cut}");
        }
        let mut long = f.clone();
        long.push(0);
        assert!(MakeCredentialOutput::from_tpm2_tools_file(&long).is_err());
        let mut bad_magic = f.clone();
        bad_magic[0] = 0;
        assert!(MakeCredentialOutput::from_tpm2_tools_file(&bad_magic).is_err());
        let mut bad_version = f;
        bad_version[7] = 2;
        assert!(MakeCredentialOutput::from_tpm2_tools_file(&bad_version).is_err());
    }
}
