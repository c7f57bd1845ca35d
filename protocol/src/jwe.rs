//! The guest's side of resource release (cargo feature `jwe`): an
//! ephemeral EC P-256 key whose public half goes into the KBS
//! `runtime-data.tee-pubkey`, and decryption of the flattened JWEs the
//! verifier encrypts to it (KBS protocol 0.4.0, `shared/kbs-protocol.md` §3):
//!
//! - key management `ECDH-ES+A256KW` (RFC 7518 §4.6): ECDH between the
//!   guest key and the JWE's `epk`, Concat KDF (NIST SP 800-56A §5.8.1 as
//!   RFC 7518 §4.6.2 uses it) with SHA-256, AlgorithmID `"ECDH-ES+A256KW"`,
//!   PartyUInfo/PartyVInfo from `apu`/`apv` (empty when absent),
//!   keydatalen 256; the result unwraps the 40-byte `encrypted_key` with
//!   AES key wrap (RFC 3394);
//! - content encryption `A256GCM`: 12-byte IV, 16-byte tag, AAD = the
//!   ASCII of the `protected` member exactly as received (RFC 7516 §5.2
//!   step 14), so a re-serialised header cannot change it.
//!
//! Crates: `p256` for the key and ECDH (ring's ECDH keys are single-use,
//! and one key must open every JWE of a session), `aes-kw` for RFC 3394,
//! ring for SHA-256 and AES-GCM. The Concat KDF is one hash call, written
//! here.
//!
//! Every JWE is untrusted input: lengths are bounded before anything is
//! decoded, every member is checked, and any failure is a [`JweError`]
//! that releases no plaintext.

use crate::messages::{TeePubKey, JWK_ALG_ECDH_ES_A256KW, JWK_CRV_P256, JWK_KTY_EC, MAX_JWE_LEN};
use aes_kw::KekAes256;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

/// `enc` of every JWE the verifier makes.
pub const ENC_A256GCM: &str = "A256GCM";
/// Longest `protected` header accepted (base64url).
const MAX_PROTECTED_LEN: usize = 2048;
/// Longest `apu`/`apv` accepted (base64url).
const MAX_PARTY_INFO_LEN: usize = 256;

/// Why a JWE could not be decrypted, or no key made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JweError {
    #[error("the JWE is {0} bytes; at most {MAX_JWE_LEN} accepted")]
    TooLong(usize),
    #[error("the JWE is not flattened JWE JSON: {0}")]
    Json(String),
    #[error("JWE member `{0}` is not valid unpadded base64url or has the wrong length")]
    Member(&'static str),
    #[error("the JWE's protected header is not valid: {0}")]
    Header(String),
    #[error("unsupported JWE: {0}")]
    Unsupported(String),
    #[error("the JWE's epk is not a point on P-256")]
    BadEpk,
    #[error("the content key does not unwrap: the JWE was not encrypted to this guest's key, or was altered")]
    Unwrap,
    #[error("the content does not decrypt: the JWE was altered")]
    Decrypt,
    #[error("the system random number generator failed; retry")]
    Random,
}

/// A parsed flattened JWE, every member decoded and length-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwe {
    /// The `protected` member as received: the AAD.
    pub protected_b64: String,
    /// The sender's ephemeral public key, SEC1 uncompressed (65 bytes).
    pub epk: Vec<u8>,
    /// PartyUInfo (`apu`), decoded; empty when absent.
    pub apu: Vec<u8>,
    /// PartyVInfo (`apv`), decoded; empty when absent.
    pub apv: Vec<u8>,
    /// The wrapped content key (40 bytes).
    pub encrypted_key: Vec<u8>,
    /// 12 bytes.
    pub iv: Vec<u8>,
    /// The encrypted content.
    pub ciphertext: Vec<u8>,
    /// 16 bytes.
    pub tag: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatJwe {
    protected: String,
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
    // `aad`, `header`, `unprotected` and `recipients` are refused
    // (deny_unknown_fields): the verifier never sends them.
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    enc: String,
    epk: Epk,
    #[serde(default)]
    apu: Option<String>,
    #[serde(default)]
    apv: Option<String>,
    #[serde(default)]
    zip: Option<serde_json::Value>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Epk {
    kty: String,
    crv: String,
    x: String,
    y: String,
}

fn b64(member: &'static str, s: &str, max_decoded: usize) -> Result<Vec<u8>, JweError> {
    if s.len() > max_decoded.div_ceil(3) * 4 {
        return Err(JweError::Member(member));
    }
    B64URL.decode(s).map_err(|_| JweError::Member(member))
}

fn exact(member: &'static str, s: &str, len: usize) -> Result<Vec<u8>, JweError> {
    let v = b64(member, s, len)?;
    if v.len() != len {
        return Err(JweError::Member(member));
    }
    Ok(v)
}

fn short(s: &str) -> String {
    s.chars().take(32).collect()
}

/// Parses and checks a flattened JWE (no decryption).
pub fn parse(text: &str) -> Result<Jwe, JweError> {
    if text.len() > MAX_JWE_LEN {
        return Err(JweError::TooLong(text.len()));
    }
    let flat: FlatJwe = serde_json::from_str(text).map_err(|e| JweError::Json(e.to_string()))?;
    if flat.protected.len() > MAX_PROTECTED_LEN {
        return Err(JweError::Header(format!("longer than {MAX_PROTECTED_LEN} bytes")));
    }
    let header_bytes = b64("protected", &flat.protected, MAX_PROTECTED_LEN)?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|e| JweError::Header(format!("not a JWE header ({e})")))?;
    if header.alg != JWK_ALG_ECDH_ES_A256KW {
        return Err(JweError::Unsupported(format!("alg {:?}", short(&header.alg))));
    }
    if header.enc != ENC_A256GCM {
        return Err(JweError::Unsupported(format!("enc {:?}", short(&header.enc))));
    }
    if header.zip.is_some() {
        return Err(JweError::Unsupported("compressed content (zip)".into()));
    }
    if header.crit.is_some() {
        return Err(JweError::Unsupported("critical header extensions (crit)".into()));
    }
    if header.epk.kty != JWK_KTY_EC || header.epk.crv != JWK_CRV_P256 {
        return Err(JweError::Unsupported(format!(
            "epk {} {}",
            short(&header.epk.kty),
            short(&header.epk.crv)
        )));
    }
    let mut epk = Vec::with_capacity(65);
    epk.push(4);
    epk.extend(exact("epk.x", &header.epk.x, 32)?);
    epk.extend(exact("epk.y", &header.epk.y, 32)?);
    let party = |member, v: &Option<String>| match v {
        Some(s) => b64(member, s, MAX_PARTY_INFO_LEN),
        None => Ok(Vec::new()),
    };
    let apu = party("apu", &header.apu)?;
    let apv = party("apv", &header.apv)?;
    Ok(Jwe {
        protected_b64: flat.protected,
        epk,
        apu,
        apv,
        encrypted_key: exact("encrypted_key", &flat.encrypted_key, 40)?,
        iv: exact("iv", &flat.iv, 12)?,
        ciphertext: b64("ciphertext", &flat.ciphertext, MAX_JWE_LEN)?,
        tag: exact("tag", &flat.tag, 16)?,
    })
}

/// Concat KDF (NIST SP 800-56A §5.8.1, RFC 7518 §4.6.2) with SHA-256 for
/// keys of up to 256 bits: one round, `keydatalen` bits of output.
pub fn concat_kdf_sha256(z: &[u8], alg_id: &str, apu: &[u8], apv: &[u8], bits: u32) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&1u32.to_be_bytes()); // round counter
    ctx.update(z);
    for field in [alg_id.as_bytes(), apu, apv] {
        ctx.update(&(field.len() as u32).to_be_bytes());
        ctx.update(field);
    }
    ctx.update(&bits.to_be_bytes()); // SuppPubInfo: keydatalen
    let d = ctx.finish();
    let n = (bits as usize / 8).min(32);
    d.as_ref()[..n].to_vec()
}

/// The guest's ephemeral EC P-256 key. The private half lives only in this
/// value (zeroised on drop by `p256`); nothing serialises it.
pub struct TeeKey {
    secret: p256::SecretKey,
    public: TeePubKey,
}

impl std::fmt::Debug for TeeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl TeeKey {
    /// A fresh key from the system's random number generator.
    pub fn generate() -> Result<TeeKey, JweError> {
        let rng = SystemRandom::new();
        // A uniformly random 32-byte string is a valid scalar except with
        // probability ~2^-32; draw again in that case.
        for _ in 0..8 {
            let mut bytes = [0u8; 32];
            rng.fill(&mut bytes).map_err(|_| JweError::Random)?;
            let key = p256::SecretKey::from_slice(&bytes);
            bytes.fill(0);
            if let Ok(secret) = key {
                return Ok(TeeKey::from_secret(secret));
            }
        }
        Err(JweError::Random)
    }

    fn from_secret(secret: p256::SecretKey) -> TeeKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let point = secret.public_key().to_encoded_point(false);
        let (x, y) = match (point.x(), point.y()) {
            (Some(x), Some(y)) => (B64URL.encode(x), B64URL.encode(y)),
            // An uncompressed encoding of a non-identity point has both.
            _ => (String::new(), String::new()),
        };
        let public = TeePubKey {
            kty: JWK_KTY_EC.into(),
            crv: JWK_CRV_P256.into(),
            alg: JWK_ALG_ECDH_ES_A256KW.into(),
            x,
            y,
        };
        TeeKey { secret, public }
    }

    /// The public key as the KBS `tee-pubkey` JWK.
    pub fn public_jwk(&self) -> &TeePubKey {
        &self.public
    }

    /// The raw ECDH shared secret (the x coordinate) with `peer` (SEC1).
    fn agree(&self, peer: &[u8]) -> Result<[u8; 32], JweError> {
        let peer = p256::PublicKey::from_sec1_bytes(peer).map_err(|_| JweError::BadEpk)?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        let mut z = [0u8; 32];
        z.copy_from_slice(shared.raw_secret_bytes());
        Ok(z)
    }

    /// Parses and decrypts a flattened JWE encrypted to this key.
    pub fn decrypt(&self, text: &str) -> Result<Vec<u8>, JweError> {
        let jwe = parse(text)?;
        let mut z = self.agree(&jwe.epk)?;
        let kek = concat_kdf_sha256(&z, JWK_ALG_ECDH_ES_A256KW, &jwe.apu, &jwe.apv, 256);
        z.fill(0);
        let mut kek_bytes = [0u8; 32];
        kek_bytes.copy_from_slice(&kek);
        let mut cek = [0u8; 32];
        let unwrapped = KekAes256::from(kek_bytes).unwrap(&jwe.encrypted_key, &mut cek);
        kek_bytes.fill(0);
        unwrapped.map_err(|_| JweError::Unwrap)?;
        let key = UnboundKey::new(&AES_256_GCM, &cek).map_err(|_| JweError::Decrypt);
        cek.fill(0);
        let key = LessSafeKey::new(key?);
        let nonce =
            Nonce::try_assume_unique_for_key(&jwe.iv).map_err(|_| JweError::Member("iv"))?;
        let mut buf = jwe.ciphertext;
        buf.extend_from_slice(&jwe.tag);
        let plain_len = key
            .open_in_place(nonce, Aad::from(jwe.protected_b64.as_bytes()), &mut buf)
            .map_err(|_| JweError::Decrypt)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// Test support: encrypts `plaintext` to `to` the way the verifier does
/// (ephemeral ring key, empty PartyU/PartyV), so tests and benchmarks can
/// make JWEs without a verifier. Not used by the agent.
pub fn encrypt_for_tests(to: &TeePubKey, plaintext: &[u8]) -> Result<String, JweError> {
    use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256};
    let rng = SystemRandom::new();
    let mut peer = vec![4u8];
    peer.extend(exact("x", &to.x, 32)?);
    peer.extend(exact("y", &to.y, 32)?);
    let eph = EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| JweError::Random)?;
    let eph_pub = eph.compute_public_key().map_err(|_| JweError::Random)?;
    let kek = agree_ephemeral(eph, &UnparsedPublicKey::new(&ECDH_P256, &peer), |z| {
        concat_kdf_sha256(z, JWK_ALG_ECDH_ES_A256KW, &[], &[], 256)
    })
    .map_err(|_| JweError::BadEpk)?;
    let mut kek_bytes = [0u8; 32];
    kek_bytes.copy_from_slice(&kek);
    let mut cek = [0u8; 32];
    rng.fill(&mut cek).map_err(|_| JweError::Random)?;
    let mut wrapped = [0u8; 40];
    KekAes256::from(kek_bytes).wrap(&cek, &mut wrapped).map_err(|_| JweError::Unwrap)?;
    let p = eph_pub.as_ref();
    let header = serde_json::json!({
        "alg": JWK_ALG_ECDH_ES_A256KW, "enc": ENC_A256GCM,
        "epk": {"crv": "P-256", "kty": "EC", "x": B64URL.encode(&p[1..33]), "y": B64URL.encode(&p[33..65])},
    });
    let protected = B64URL.encode(header.to_string());
    let mut iv = [0u8; 12];
    rng.fill(&mut iv).map_err(|_| JweError::Random)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).map_err(|_| JweError::Decrypt)?);
    let mut ct = plaintext.to_vec();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(protected.as_bytes()),
            &mut ct,
        )
        .map_err(|_| JweError::Decrypt)?;
    Ok(serde_json::json!({
        "protected": protected,
        "encrypted_key": B64URL.encode(wrapped),
        "iv": B64URL.encode(iv),
        "ciphertext": B64URL.encode(&ct),
        "tag": B64URL.encode(tag.as_ref()),
    })
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// RFC 7518 Appendix C: ECDH-ES key agreement between Alice's ephemeral
    /// and Bob's static P-256 keys, Concat KDF for A128GCM with PartyU
    /// "Alice", PartyV "Bob".
    #[test]
    fn rfc7518_appendix_c() {
        let d = B64URL.decode("VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw").unwrap();
        let bob = TeeKey::from_secret(p256::SecretKey::from_slice(&d).unwrap());
        assert_eq!(bob.public.x, "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ");
        assert_eq!(bob.public.y, "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck");
        let mut alice = vec![4u8];
        alice.extend(B64URL.decode("gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0").unwrap());
        alice.extend(B64URL.decode("SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps").unwrap());
        let z = bob.agree(&alice).unwrap();
        assert_eq!(
            z,
            [
                158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
                110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196
            ]
        );
        let k = concat_kdf_sha256(&z, "A128GCM", b"Alice", b"Bob", 128);
        assert_eq!(B64URL.encode(k), "VqqN6vgjbSBcIijNcacQGg");
    }

    #[test]
    fn round_trip_and_every_member_matters() {
        let key = TeeKey::generate().unwrap();
        key.public_jwk().clone().validate_for_tests();
        let jwe = encrypt_for_tests(key.public_jwk(), b"the disk key").unwrap();
        assert_eq!(key.decrypt(&jwe).unwrap(), b"the disk key");
        let empty = encrypt_for_tests(key.public_jwk(), b"").unwrap();
        assert_eq!(key.decrypt(&empty).unwrap(), b"");

        // Another key cannot open it.
        let other = TeeKey::generate().unwrap();
        assert_eq!(other.decrypt(&jwe), Err(JweError::Unwrap));

        // Flip one bit of each member's first decoded byte.
        let v: Value = serde_json::from_str(&jwe).unwrap();
        for member in ["encrypted_key", "iv", "ciphertext", "tag"] {
            let mut bytes = B64URL.decode(v[member].as_str().unwrap()).unwrap();
            bytes[0] ^= 1;
            let mut w = v.clone();
            w[member] = Value::String(B64URL.encode(&bytes));
            let e = key.decrypt(&w.to_string()).unwrap_err();
            assert!(matches!(e, JweError::Unwrap | JweError::Decrypt), "{member}: {e}");
        }
        // The AAD is the protected member as sent: an equivalent
        // re-encoding of the header is a different AAD.
        let header = B64URL.decode(v["protected"].as_str().unwrap()).unwrap();
        let reparsed: Value = serde_json::from_slice(&header).unwrap();
        let pretty = serde_json::to_string_pretty(&reparsed).unwrap();
        let mut w = v.clone();
        w["protected"] = Value::String(B64URL.encode(pretty));
        assert_eq!(key.decrypt(&w.to_string()), Err(JweError::Decrypt));
    }

    #[test]
    fn refuses_malformed_and_unsupported() {
        let key = TeeKey::generate().unwrap();
        let jwe = encrypt_for_tests(key.public_jwk(), b"s").unwrap();
        let v: Value = serde_json::from_str(&jwe).unwrap();
        let with_header = |h: Value| {
            let mut w = v.clone();
            w["protected"] = Value::String(B64URL.encode(h.to_string()));
            w.to_string()
        };
        let header: Value =
            serde_json::from_slice(&B64URL.decode(v["protected"].as_str().unwrap()).unwrap())
                .unwrap();
        let mut h = header.clone();
        h["alg"] = "RSA-OAEP-256".into();
        assert!(matches!(parse(&with_header(h)), Err(JweError::Unsupported(_))));
        let mut h = header.clone();
        h["enc"] = "A128CBC-HS256".into();
        assert!(matches!(parse(&with_header(h)), Err(JweError::Unsupported(_))));
        let mut h = header.clone();
        h["zip"] = "DEF".into();
        assert!(matches!(parse(&with_header(h)), Err(JweError::Unsupported(_))));
        let mut h = header.clone();
        h["crit"] = serde_json::json!(["exp"]);
        assert!(matches!(parse(&with_header(h)), Err(JweError::Unsupported(_))));
        let mut h = header.clone();
        h["epk"]["x"] = B64URL.encode([1u8; 32]).into();
        assert_eq!(key.decrypt(&with_header(h)), Err(JweError::BadEpk));
        let mut h = header.clone();
        h["epk"]["y"] = "short".into();
        assert!(matches!(parse(&with_header(h)), Err(JweError::Member("epk.y"))));

        let mut w = v.clone();
        w["aad"] = "eA".into();
        assert!(matches!(parse(&w.to_string()), Err(JweError::Json(_))));
        let mut w = v.clone();
        w["iv"] = "AAAA".into();
        assert!(matches!(parse(&w.to_string()), Err(JweError::Member("iv"))));
        let mut w = v.clone();
        w["tag"] = "!!!".into();
        assert!(matches!(parse(&w.to_string()), Err(JweError::Member("tag"))));
        assert!(matches!(parse("[]"), Err(JweError::Json(_))));
        assert!(matches!(parse(""), Err(JweError::Json(_))));
        let huge = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_JWE_LEN));
        assert!(matches!(parse(&huge), Err(JweError::TooLong(_))));
    }

    impl TeePubKey {
        fn validate_for_tests(self) {
            self.validate().unwrap();
        }
    }
}
