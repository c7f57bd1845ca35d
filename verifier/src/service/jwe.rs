//! Resources leave the verifier as a flattened JWE to the tee public key
//! (KBS protocol 0.4.0, `shared/kbs-protocol.md` §3):
//!
//! - EC P-256 keys: `ECDH-ES+A256KW` (RFC 7518 §4.6): an ephemeral P-256
//!   key (ring agreement), Concat KDF with SHA-256, AlgorithmID
//!   `"ECDH-ES+A256KW"`, empty PartyUInfo/PartyVInfo, keydatalen 256; the
//!   32-byte content key wrapped with AES key wrap (RFC 3394, `aes-kw`);
//! - RSA keys (`RSA-OAEP-256`, RFC 7518 §4.3): the content key encrypted
//!   with RSAES-OAEP, SHA-256 and MGF1-SHA-256, no label (`rsa` crate:
//!   ring has no RSA encryption); moduli of 2048 to 4096 bits;
//! - content: `A256GCM`, 12-byte IV, AAD = the ASCII of the base64url
//!   protected header.
//!
//! AKP (post-quantum) tee keys are refused.

use crate::registrar::make_credential::RingRng;
use aes_kw::KekAes256;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use kbs_types::{ProtectedHeader, Response, TeePubKey};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256};
use ring::rand::{SecureRandom, SystemRandom};
use rsa::{BigUint, Oaep, RsaPublicKey};
use serde_json::{json, Map};
use sha2::Sha256;

/// `alg` for EC tee keys.
pub const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
/// `alg` for RSA tee keys.
pub const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";
/// Smallest RSA modulus accepted (bits).
pub const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted (bits).
pub const RSA_MAX_BITS: usize = 4096;
/// `enc` of every JWE.
pub const ENC_A256GCM: &str = "A256GCM";

/// Why a resource could not be encrypted to the tee key.
#[derive(Debug, thiserror::Error)]
pub enum JweError {
    #[error("tee-pubkey alg {0:?} is not supported for RSA keys; use RSA-OAEP-256")]
    RsaAlg(String),
    #[error(
        "the RSA tee-pubkey is not usable: {0}; send `n` and `e` as unpadded base64url of a {RSA_MIN_BITS}..={RSA_MAX_BITS}-bit modulus and its public exponent"
    )]
    RsaKey(String),
    #[error("tee-pubkey of kty {0} is not supported; send an EC P-256 tee-pubkey with alg ECDH-ES+A256KW")]
    KtyUnsupported(&'static str),
    #[error("tee-pubkey curve {0:?} is not supported; use P-256")]
    Curve(String),
    #[error("tee-pubkey alg {0:?} is not supported for EC keys; use ECDH-ES+A256KW")]
    Alg(String),
    #[error(
        "tee-pubkey x/y must each be 32 bytes of unpadded base64url and name a point on P-256"
    )]
    BadPoint,
    #[error("the system random number generator failed; retry")]
    Random,
    #[error("encrypting the resource failed; retry")]
    Crypto,
}

/// Concat KDF (NIST SP 800-56A, as RFC 7518 §4.6.2 uses it) for a 256-bit
/// key with SHA-256: one round.
pub fn concat_kdf_sha256(z: &[u8], alg: &str) -> [u8; 32] {
    let mut input = Vec::with_capacity(4 + z.len() + 4 + alg.len() + 12);
    input.extend_from_slice(&1u32.to_be_bytes()); // round counter
    input.extend_from_slice(z);
    input.extend_from_slice(&(alg.len() as u32).to_be_bytes());
    input.extend_from_slice(alg.as_bytes());
    input.extend_from_slice(&0u32.to_be_bytes()); // PartyUInfo: empty
    input.extend_from_slice(&0u32.to_be_bytes()); // PartyVInfo: empty
    input.extend_from_slice(&256u32.to_be_bytes()); // SuppPubInfo: keydatalen
    let d = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The uncompressed SEC1 point of an EC P-256 JWK.
fn p256_point(crv: &str, alg: &str, x: &str, y: &str) -> Result<Vec<u8>, JweError> {
    if crv != "P-256" {
        return Err(JweError::Curve(crv.chars().take(32).collect()));
    }
    if alg != ALG_ECDH_ES_A256KW {
        return Err(JweError::Alg(alg.chars().take(32).collect()));
    }
    if x.len() > 64 || y.len() > 64 {
        return Err(JweError::BadPoint);
    }
    let x = B64URL.decode(x).map_err(|_| JweError::BadPoint)?;
    let y = B64URL.decode(y).map_err(|_| JweError::BadPoint)?;
    if x.len() != 32 || y.len() != 32 {
        return Err(JweError::BadPoint);
    }
    let mut point = Vec::with_capacity(65);
    point.push(4);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(point)
}

/// The RSA public key of an RSA JWK, with its size bounded.
fn rsa_key(alg: &str, n: &str, e: &str) -> Result<RsaPublicKey, JweError> {
    if alg != ALG_RSA_OAEP_256 {
        return Err(JweError::RsaAlg(alg.chars().take(32).collect()));
    }
    // 4096 bits = 512 bytes = 683 base64url characters; exponents are short.
    if n.len() > 684 || e.len() > 12 {
        return Err(JweError::RsaKey("`n` or `e` is too long".into()));
    }
    let n = B64URL.decode(n).map_err(|_| JweError::RsaKey("`n` is not base64url".into()))?;
    let e = B64URL.decode(e).map_err(|_| JweError::RsaKey("`e` is not base64url".into()))?;
    let n = BigUint::from_bytes_be(&n);
    let bits = n.bits();
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(JweError::RsaKey(format!("the modulus has {bits} bits")));
    }
    RsaPublicKey::new(n, BigUint::from_bytes_be(&e)).map_err(|e| JweError::RsaKey(e.to_string()))
}

/// Checks that the tee key is one resources can be encrypted to.
pub fn check_tee_pubkey(key: &TeePubKey) -> Result<(), JweError> {
    match key {
        TeePubKey::EC { crv, alg, x, y } => p256_point(crv, alg, x, y).map(|_| ()),
        TeePubKey::RSA { alg, k_mod, k_exp } => rsa_key(alg, k_mod, k_exp).map(|_| ()),
        TeePubKey::AKP { .. } => Err(JweError::KtyUnsupported("AKP")),
    }
}

/// Encrypts `plaintext` to the tee key.
pub fn encrypt(
    key: &TeePubKey,
    plaintext: &[u8],
    rng: &SystemRandom,
) -> Result<Response, JweError> {
    let mut cek = [0u8; 32];
    rng.fill(&mut cek).map_err(|_| JweError::Random)?;
    let (protected, encrypted_key) = match key {
        TeePubKey::EC { crv, alg, x, y } => ecdh_es_a256kw(crv, alg, x, y, &cek, rng)?,
        TeePubKey::RSA { alg, k_mod, k_exp } => rsa_oaep_256(alg, k_mod, k_exp, &cek, rng)?,
        TeePubKey::AKP { .. } => return Err(JweError::KtyUnsupported("AKP")),
    };
    seal(protected, encrypted_key, &cek, plaintext, rng)
}

/// `RSA-OAEP-256`: the content key encrypted to the RSA key.
fn rsa_oaep_256(
    alg: &str,
    n: &str,
    e: &str,
    cek: &[u8; 32],
    rng: &SystemRandom,
) -> Result<(ProtectedHeader, Vec<u8>), JweError> {
    let key = rsa_key(alg, n, e)?;
    let mut oaep_rng = RingRng { rng, failed: false };
    let encrypted_key =
        key.encrypt(&mut oaep_rng, Oaep::new::<Sha256>(), cek).map_err(|_| JweError::Crypto)?;
    if oaep_rng.failed {
        return Err(JweError::Random);
    }
    let protected = ProtectedHeader {
        alg: ALG_RSA_OAEP_256.into(),
        enc: ENC_A256GCM.into(),
        other_fields: Map::new(),
    };
    Ok((protected, encrypted_key))
}

/// `ECDH-ES+A256KW`: an ephemeral P-256 agreement, the content key wrapped
/// with the derived key; the ephemeral public key goes in the header.
fn ecdh_es_a256kw(
    crv: &str,
    alg: &str,
    x: &str,
    y: &str,
    cek: &[u8; 32],
    rng: &SystemRandom,
) -> Result<(ProtectedHeader, Vec<u8>), JweError> {
    let peer_point = p256_point(crv, alg, x, y)?;

    let eph = EphemeralPrivateKey::generate(&ECDH_P256, rng).map_err(|_| JweError::Random)?;
    let eph_pub = eph.compute_public_key().map_err(|_| JweError::Crypto)?;
    let eph_pub = eph_pub.as_ref();
    if eph_pub.len() != 65 {
        return Err(JweError::Crypto);
    }
    let peer = UnparsedPublicKey::new(&ECDH_P256, &peer_point);
    // ring rejects points not on the curve here.
    let kek = agreement::agree_ephemeral(eph, &peer, |z| concat_kdf_sha256(z, ALG_ECDH_ES_A256KW))
        .map_err(|_| JweError::BadPoint)?;

    let mut encrypted_key = vec![0u8; 40];
    KekAes256::from(kek).wrap(cek, &mut encrypted_key).map_err(|_| JweError::Crypto)?;

    let mut other = Map::new();
    other.insert(
        "epk".into(),
        json!({
            "crv": "P-256", "kty": "EC",
            "x": B64URL.encode(&eph_pub[1..33]),
            "y": B64URL.encode(&eph_pub[33..65]),
        }),
    );
    let protected = ProtectedHeader {
        alg: ALG_ECDH_ES_A256KW.into(),
        enc: ENC_A256GCM.into(),
        other_fields: other,
    };
    Ok((protected, encrypted_key))
}

/// Encrypts `plaintext` with the content key under `protected`.
fn seal(
    protected: ProtectedHeader,
    encrypted_key: Vec<u8>,
    cek: &[u8; 32],
    plaintext: &[u8],
    rng: &SystemRandom,
) -> Result<Response, JweError> {
    // kbs-types serialises `protected` the same way when the response is
    // written, so this AAD is the ASCII of the header the client sees.
    let aad = protected.generate_aad().map_err(|_| JweError::Crypto)?;

    let mut iv = [0u8; 12];
    rng.fill(&mut iv).map_err(|_| JweError::Random)?;
    let content_key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, cek).map_err(|_| JweError::Crypto)?);
    let mut ciphertext = plaintext.to_vec();
    let tag = content_key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(aad.as_slice()),
            &mut ciphertext,
        )
        .map_err(|_| JweError::Crypto)?;

    Ok(Response {
        protected,
        encrypted_key,
        aad: None,
        iv: iv.to_vec(),
        ciphertext,
        tag: tag.as_ref().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_kw::KekAes256;

    /// RFC 3394 §4.6: 256 bits of key data with a 256-bit KEK.
    #[test]
    fn aes_kw_rfc3394_4_6() {
        let kek: [u8; 32] =
            hex::decode("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
                .unwrap()
                .try_into()
                .unwrap();
        let data = hex::decode("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
            .unwrap();
        let mut out = [0u8; 40];
        KekAes256::from(kek).wrap(&data, &mut out).unwrap();
        assert_eq!(
            hex::encode_upper(out),
            "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"
        );
    }

    /// RFC 7518 Appendix C (ECDH-ES, A128GCM) checks the Concat KDF
    /// construction; here the same construction for A256KW must differ from
    /// it only in AlgorithmID and keydatalen, so check the layout directly.
    #[test]
    fn concat_kdf_layout() {
        let z = [0xAAu8; 32];
        let mut expected = vec![0, 0, 0, 1];
        expected.extend_from_slice(&z);
        expected.extend_from_slice(&[0, 0, 0, 14]);
        expected.extend_from_slice(b"ECDH-ES+A256KW");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let d = ring::digest::digest(&ring::digest::SHA256, &expected);
        assert_eq!(concat_kdf_sha256(&z, "ECDH-ES+A256KW").as_slice(), d.as_ref());
    }

    #[test]
    fn refuses_unsupported_keys() {
        let rng = SystemRandom::new();
        let rsa = TeePubKey::RSA {
            alg: "RSA-OAEP-256".into(),
            k_mod: "AQAB".into(),
            k_exp: "AQAB".into(),
        };
        let e = encrypt(&rsa, b"x", &rng).unwrap_err();
        assert!(matches!(e, JweError::RsaKey(_)) && e.to_string().contains("17 bits"), "{e}");
        let (n, e) = test_rsa_public();
        let rsa1_5 = TeePubKey::RSA { alg: "RSA1_5".into(), k_mod: n.clone(), k_exp: e.clone() };
        assert!(matches!(encrypt(&rsa1_5, b"x", &rng), Err(JweError::RsaAlg(_))));
        let huge =
            TeePubKey::RSA { alg: ALG_RSA_OAEP_256.into(), k_mod: "A".repeat(700), k_exp: e };
        assert!(matches!(encrypt(&huge, b"x", &rng), Err(JweError::RsaKey(_))));
        let akp = TeePubKey::AKP { alg: "ML-KEM-768".into(), public_key: "AA".into() };
        assert!(matches!(encrypt(&akp, b"x", &rng), Err(JweError::KtyUnsupported("AKP"))));
        let p384 = TeePubKey::EC {
            crv: "P-384".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: "".into(),
            y: "".into(),
        };
        assert!(matches!(encrypt(&p384, b"x", &rng), Err(JweError::Curve(_))));
        let off = TeePubKey::EC {
            crv: "P-256".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: B64URL.encode([1u8; 32]),
            y: B64URL.encode([2u8; 32]),
        };
        assert!(matches!(encrypt(&off, b"x", &rng), Err(JweError::BadPoint)));
    }

    /// A 2048-bit RSA key made with `openssl genpkey` for these tests only.
    const TEST_RSA_KEY: &str = include_str!("testdata/rsa2048-test-key.pem");

    fn test_rsa_private() -> rsa::RsaPrivateKey {
        use rsa::pkcs8::DecodePrivateKey;
        rsa::RsaPrivateKey::from_pkcs8_pem(TEST_RSA_KEY).unwrap()
    }

    fn test_rsa_public() -> (String, String) {
        use rsa::traits::PublicKeyParts;
        let k = test_rsa_private();
        (B64URL.encode(k.n().to_bytes_be()), B64URL.encode(k.e().to_bytes_be()))
    }

    /// RSA-OAEP-256 round trip: the JWE as a client sees it (serialised and
    /// parsed back) opens with the private key, and a changed ciphertext or
    /// header does not.
    #[test]
    fn rsa_oaep_256_round_trip() {
        let rng = SystemRandom::new();
        let (n, e) = test_rsa_public();
        let key = TeePubKey::RSA { alg: ALG_RSA_OAEP_256.into(), k_mod: n, k_exp: e };
        check_tee_pubkey(&key).unwrap();
        let jwe = encrypt(&key, b"the secret", &rng).unwrap();
        let wire: Response = serde_json::from_slice(&serde_json::to_vec(&jwe).unwrap()).unwrap();
        assert_eq!(wire.protected.alg, ALG_RSA_OAEP_256);
        assert_eq!(wire.protected.enc, ENC_A256GCM);
        assert_eq!(wire.encrypted_key.len(), 256);

        let open = |r: &Response| -> Option<Vec<u8>> {
            let cek = test_rsa_private().decrypt(Oaep::new::<Sha256>(), &r.encrypted_key).ok()?;
            let aad = r.protected.generate_aad().ok()?;
            let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).ok()?);
            let mut buf = [r.ciphertext.clone(), r.tag.clone()].concat();
            let iv: [u8; 12] = r.iv.clone().try_into().ok()?;
            let n = Nonce::assume_unique_for_key(iv);
            k.open_in_place(n, Aad::from(aad.as_slice()), &mut buf).ok().map(|p| p.to_vec())
        };
        assert_eq!(open(&wire).as_deref(), Some(&b"the secret"[..]));
        let mut bad = wire.clone();
        bad.ciphertext[0] ^= 1;
        assert_eq!(open(&bad), None);
        let mut bad = wire.clone();
        bad.protected.other_fields.insert("kid".into(), json!("x"));
        assert_eq!(open(&bad), None);
        let mut bad = wire;
        bad.encrypted_key[5] ^= 1;
        assert_eq!(open(&bad), None);
    }
}
