//! Attestation tokens: EARs (IETF RATS "EAT Attestation Results") built
//! with Veraison's `ear` crate, signed as ES256 JWTs with ring (P-256), and
//! the JWK Set that publishes the public key.
//!
//! The `ear` crate is used without its `jwt` and `cose` features (they
//! bring `jsonwebtoken` with aws-lc-rs, and OpenSSL): it builds, validates,
//! serialises and parses the claims set; the JWS around it is ring's ES256
//! over the crate's JSON.
//!
//! Claim names: `ear` 0.6 writes the draft-ietf-rats-ear-04 names
//! (`ear_verifier_id`, `ear_status`, `ear_trustworthiness_vector`,
//! `ear_appraisal_policy_ids`), while the KBS protocol (Trustee's tokens,
//! its resource policies, `tee-pubkey` at
//! `/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey`)
//! uses the earlier dotted names. The dotted claims are carried as
//! extensions of this profile (registered with the crate, so parsing checks
//! their kinds), and a token whose dotted status or trust vector disagrees
//! with the typed ones is refused.

use super::policy::Appraisal;
use super::verifier::Claims;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ear::{Ear, Nonce, Profile, RawValue, RawValueKind, TrustTier, TrustVector, VerifierID};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

/// EAR profile of the claims.
pub const EAR_PROFILE: &str = "tag:github.com,2023:veraison/ear";
/// The one submodule a tellus token appraises.
pub const SUBMOD: &str = "cpu0";
/// Longest token accepted (tokens carry the launch claims and, when the
/// result is not affirming, the policy's reasons).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Most policy reasons a token carries.
pub const MAX_TOKEN_REASONS: usize = 16;

/// Top-level extension: the verifier id under its dotted name.
const EXT_VERIFIER_ID: &str = "ear.verifier-id";
/// Appraisal extension: the status under its dotted name.
const EXT_STATUS: &str = "ear.status";
/// Appraisal extension: the trust vector under its dotted name.
const EXT_TRUST_VECTOR: &str = "ear.trustworthiness-vector";
/// Appraisal extension: the policy id under its dotted name.
const EXT_POLICY_ID: &str = "ear.appraisal-policy-id";
/// Appraisal extension: the claims the policy saw, and the tee-pubkey.
const EXT_ANNOTATED: &str = "ear.veraison.annotated-evidence";
/// Appraisal extension: the tee whose evidence was appraised.
const EXT_TEE: &str = "tellus.tee";
/// Appraisal extension: why the policy did not allow.
const EXT_REASONS: &str = "tellus.reasons";

/// The extensions of [`EAR_PROFILE`]: (name, CBOR key, kind). The keys are
/// private-use negative integers, outside those the `ear` crate and
/// Veraison use (-70000 and up).
const EAR_EXTENSIONS: [(&str, i32, RawValueKind); 1] =
    [(EXT_VERIFIER_ID, -80_001, RawValueKind::Map)];
const APPRAISAL_EXTENSIONS: [(&str, i32, RawValueKind); 6] = [
    (EXT_STATUS, -80_101, RawValueKind::String),
    (EXT_TRUST_VECTOR, -80_102, RawValueKind::Map),
    (EXT_POLICY_ID, -80_103, RawValueKind::String),
    (EXT_ANNOTATED, -80_104, RawValueKind::Map),
    (EXT_TEE, -80_105, RawValueKind::String),
    (EXT_REASONS, -80_106, RawValueKind::Array),
];

/// Why a token could not be made or was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token-signing key is not a P-256 PKCS#8 key; move token-signing-key.p8 away to generate a new one")]
    BadKey,
    #[error("signing the token failed; retry")]
    Sign,
    #[error("the attestation result cannot be expressed as an EAR: {0}; check the attestation policy's trust_vector (AR4SI claim names such as `executables`, tiers -128..127)")]
    BuildEar(String),
    #[error("the token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("the token is not a JWS compact serialisation (header.payload.signature in base64url); send the token /kbs/v0/attest returned")]
    Malformed,
    #[error("the token's algorithm is not ES256 or its key id is not this verifier's; send a token this verifier issued")]
    WrongAlgOrKey,
    #[error(
        "the token's signature does not verify; send a token this verifier issued, unmodified"
    )]
    BadSignature,
    #[error("the token has expired; attest again (POST /kbs/v0/auth, then /kbs/v0/attest)")]
    Expired,
    #[error(
        "the token's claims are not a valid EAR ({0}); send the token /kbs/v0/attest returned"
    )]
    NotEar(String),
}

/// Registers [`EAR_PROFILE`]'s extensions with the `ear` crate (once per
/// process), so that building and parsing tokens know them.
fn profile() -> Result<(), TokenError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let mut p = Profile::new(EAR_PROFILE);
            for (name, key, kind) in EAR_EXTENSIONS {
                p.register_ear_extension(name, key, kind).map_err(|e| e.to_string())?;
            }
            for (name, key, kind) in APPRAISAL_EXTENSIONS {
                p.register_appraisal_extension(name, key, kind).map_err(|e| e.to_string())?;
            }
            // Another registration of this id (none in this crate) would
            // make parsing use it; the extensions checked below still are
            // these.
            match ear::register_profile(&p) {
                Ok(()) => Ok(()),
                Err(_) if ear::get_profile(EAR_PROFILE).is_some() => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
        .clone()
        .map_err(TokenError::BuildEar)
}

/// Signs and verifies the verifier's tokens.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    kid: String,
    x: String,
    y: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("kid", &self.kid).finish()
    }
}

impl TokenSigner {
    /// A signer from a PKCS#8 P-256 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<TokenSigner, TokenError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| TokenError::BadKey)?;
        let public = key.public_key().as_ref();
        if public.len() != 65 || public[0] != 4 {
            return Err(TokenError::BadKey);
        }
        let x = B64URL.encode(&public[1..33]);
        let y = B64URL.encode(&public[33..65]);
        // RFC 7638 thumbprint: SHA-256 of the required members in order.
        let thumb = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64URL.encode(ring::digest::digest(&ring::digest::SHA256, thumb.as_bytes()));
        Ok(TokenSigner { key, kid, x, y, rng })
    }

    /// The key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK Set (`GET /tellus/v1/jwks`).
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "alg": "ES256", "use": "sig", "kid": self.kid,
        }]})
    }

    /// Validates `ear` and signs its JSON serialisation as a compact JWS
    /// (header `{"alg":"ES256","typ":"JWT","kid":…}`).
    pub fn sign(&self, ear: &Ear) -> Result<String, TokenError> {
        ear.validate().map_err(|e| TokenError::BuildEar(e.to_string()))?;
        let payload = serde_json::to_vec(ear).map_err(|e| TokenError::BuildEar(e.to_string()))?;
        self.sign_payload(&payload)
    }

    /// A compact JWS over `payload`.
    fn sign_payload(&self, payload: &[u8]) -> Result<String, TokenError> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let h = B64URL.encode(serde_json::to_vec(&header).map_err(|_| TokenError::Sign)?);
        let input = format!("{h}.{}", B64URL.encode(payload));
        let sig = self.key.sign(&self.rng, input.as_bytes()).map_err(|_| TokenError::Sign)?;
        Ok(format!("{input}.{}", B64URL.encode(sig.as_ref())))
    }

    /// Verifies a token this signer issued and returns its claims;
    /// `now` is Unix time in seconds. After the signature and expiry, the
    /// claims must parse and validate as an EAR of [`EAR_PROFILE`] with a
    /// `cpu0` appraisal whose dotted status and trust vector agree with
    /// the typed ones.
    pub fn verify(&self, token: &str, now: i64) -> Result<Map<String, Value>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Map<String, Value> = B64URL
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(TokenError::WrongAlgOrKey);
        }
        match header.get("kid") {
            None => {}
            Some(Value::String(k)) if k == &self.kid => {}
            Some(_) => return Err(TokenError::WrongAlgOrKey),
        }
        let sig = B64URL.decode(s).map_err(|_| TokenError::Malformed)?;
        let public =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref());
        let signed_len = h.len() + 1 + p.len();
        public
            .verify(&token.as_bytes()[..signed_len], &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = B64URL.decode(p).map_err(|_| TokenError::Malformed)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        match claims.get("exp").and_then(Value::as_i64) {
            Some(exp) if exp > now => {}
            _ => return Err(TokenError::Expired),
        }
        parse_ear(&payload)?;
        Ok(claims)
    }
}

/// Parses and validates the JSON claims of a token as an EAR of
/// [`EAR_PROFILE`] with a consistent `cpu0` appraisal.
pub fn parse_ear(payload: &[u8]) -> Result<Ear, TokenError> {
    profile()?;
    // `Ear`'s deserializer validates (profile, iat, verifier id, submods,
    // expiry against the system clock).
    let ear: Ear =
        serde_json::from_slice(payload).map_err(|e| TokenError::NotEar(e.to_string()))?;
    if ear.profile != EAR_PROFILE {
        return Err(TokenError::NotEar(format!("profile {:?}, not {EAR_PROFILE}", ear.profile)));
    }
    if ear.exp.is_none() {
        return Err(TokenError::NotEar("no exp".into()));
    }
    let a = ear
        .submods
        .get(SUBMOD)
        .ok_or_else(|| TokenError::NotEar(format!("no {SUBMOD} appraisal")))?;
    if a.extensions.get_by_name(EXT_STATUS) != Some(RawValue::String(a.status.to_string())) {
        return Err(TokenError::NotEar(format!("{EXT_STATUS} differs from ear_status")));
    }
    let typed_tv = if a.trust_vector.any_set() {
        serde_json::to_value(a.trust_vector)
            .and_then(serde_json::from_value)
            .map_err(|e| TokenError::NotEar(e.to_string()))?
    } else {
        RawValue::Null
    };
    let dotted_tv = a.extensions.get_by_name(EXT_TRUST_VECTOR).unwrap_or(RawValue::Null);
    if !same_map(&typed_tv, &dotted_tv) {
        return Err(TokenError::NotEar(format!(
            "{EXT_TRUST_VECTOR} differs from ear_trustworthiness_vector"
        )));
    }
    Ok(ear)
}

/// Whether two raw maps hold the same entries, in any order (an empty map
/// and no map are the same).
fn same_map(a: &RawValue, b: &RawValue) -> bool {
    let entries = |v: &RawValue| -> Option<Vec<(String, RawValue)>> {
        let mut out = match v {
            RawValue::Null => Vec::new(),
            RawValue::Map(m) => m
                .iter()
                .map(|(k, v)| match k {
                    RawValue::String(k) => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
            _ => return None,
        };
        out.sort_by(|x, y| x.0.cmp(&y.0));
        Some(out)
    };
    matches!((entries(a), entries(b)), (Some(x), Some(y)) if x == y)
}

/// A JSON value as an `ear` raw value.
fn raw(v: &Value) -> Result<RawValue, TokenError> {
    RawValue::deserialize(v).map_err(|e| TokenError::BuildEar(e.to_string()))
}

/// The tier of an appraisal status (`none`, `affirming`, `warning`,
/// `contraindicated`).
pub fn tier_of(status: &str) -> Result<TrustTier, TokenError> {
    TrustTier::try_from(status).map_err(|_| {
        TokenError::BuildEar(format!(
            "status {status:?} is not none, affirming, warning or contraindicated"
        ))
    })
}

/// An AR4SI trustworthiness vector from the policy's (or the tee
/// verifier's) `claim name → tier` map.
pub fn trust_vector_of(tv: &Map<String, Value>) -> Result<TrustVector, TokenError> {
    let mut out = TrustVector::new();
    for (name, v) in tv {
        let value = v.as_i64().and_then(|t| i8::try_from(t).ok()).ok_or_else(|| {
            TokenError::BuildEar(format!("trust vector claim {name} is {v}, not a tier -128..127"))
        })?;
        out.mut_by_name(name)
            .map_err(|_| {
                TokenError::BuildEar(format!(
                    "{name} is not an AR4SI trustworthiness claim (instance-identity, configuration, executables, file-system, hardware, runtime-opaque, storage-opaque, sourced-data)"
                ))
            })?
            .set(value);
    }
    Ok(out)
}

/// The EAR of one appraisal, validated.
///
/// - `iat`, `exp` (`now` + `lifetime_secs`), `ear_verifier_id` (and
///   `ear.verifier-id`): developer `tellus`, build `tellus-verifier <version>`;
/// - `eat_nonce`: the session nonce (EAT nonces are 8 to 64 bytes);
/// - `submods.cpu0`: `ear_status` and `ear.status` (the attestation
///   policy's verdict), `ear_trustworthiness_vector` and
///   `ear.trustworthiness-vector` (the policy's trust vector, what it
///   actually checked, else the tee verifier's), `ear_appraisal_policy_ids`
///   and `ear.appraisal-policy-id`;
/// - `submods.cpu0.ear.veraison.annotated-evidence`: the claims the policy
///   saw, under the tee's name, and `runtime_data_claims.tee-pubkey`, the
///   key resources are encrypted to;
/// - `submods.cpu0.tellus.tee`, and `submods.cpu0.tellus.reasons`: why the
///   policy did not allow (at most [`MAX_TOKEN_REASONS`]), so a resource
///   request with this token can be denied with the same explanation.
pub fn ear_claims(
    now: i64,
    lifetime_secs: i64,
    nonce: &[u8],
    tee: &str,
    claims: &Claims,
    appraisal: &Appraisal,
    tee_pubkey: &Value,
) -> Result<Ear, TokenError> {
    profile()?;
    let built = |e: ear::Error| TokenError::BuildEar(e.to_string());
    let mut annotated = match &claims.annotated_evidence {
        Value::Object(m) => m.clone(),
        other => {
            let mut m = Map::new();
            m.insert(tee.to_owned(), other.clone());
            m
        }
    };
    annotated.insert("runtime_data_claims".into(), json!({"tee-pubkey": tee_pubkey}));
    let reasons: Vec<&crate::service::policy::Reason> =
        appraisal.reasons.iter().take(MAX_TOKEN_REASONS).collect();
    let reasons = serde_json::to_value(reasons).map_err(|e| TokenError::BuildEar(e.to_string()))?;

    let mut a = ear::Appraisal::new_with_profile(EAR_PROFILE).map_err(built)?;
    a.status = tier_of(appraisal.status)?;
    a.trust_vector = trust_vector_of(&appraisal.trust_vector)?;
    a.policy_ids = vec![appraisal.policy_id.clone()];
    let ext = &mut a.extensions;
    ext.set_by_name(EXT_STATUS, RawValue::String(a.status.to_string())).map_err(built)?;
    ext.set_by_name(EXT_TRUST_VECTOR, raw(&Value::Object(appraisal.trust_vector.clone()))?)
        .map_err(built)?;
    ext.set_by_name(EXT_POLICY_ID, RawValue::String(appraisal.policy_id.clone())).map_err(built)?;
    ext.set_by_name(EXT_ANNOTATED, raw(&Value::Object(annotated))?).map_err(built)?;
    ext.set_by_name(EXT_TEE, RawValue::String(tee.to_owned())).map_err(built)?;
    ext.set_by_name(EXT_REASONS, raw(&reasons)?).map_err(built)?;

    let mut ear = Ear::new_with_profile(EAR_PROFILE).map_err(built)?;
    ear.iat = now;
    ear.exp = Some(now.saturating_add(lifetime_secs));
    ear.vid = VerifierID {
        developer: "tellus".into(),
        build: concat!("tellus-verifier ", env!("CARGO_PKG_VERSION")).into(),
    };
    ear.extensions
        .set_by_name(
            EXT_VERIFIER_ID,
            raw(&json!({"developer": ear.vid.developer, "build": ear.vid.build}))?,
        )
        .map_err(built)?;
    if !nonce.is_empty() {
        ear.nonce = Some(Nonce::try_from(nonce).map_err(built)?);
    }
    ear.submods.insert(SUBMOD.into(), a);
    ear.validate().map_err(built)?;
    Ok(ear)
}

/// The decoded payload of a token this verifier issued, without checking
/// its signature or expiry: only for tokens read back from the verifier's
/// own store (a session's token).
pub fn payload_unchecked(token: &str) -> Option<Map<String, Value>> {
    let p = token.split('.').nth(1)?;
    B64URL.decode(p).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// `submods.cpu0` of a token's claims.
pub fn submod(claims: &Map<String, Value>) -> Option<&Value> {
    claims.get("submods")?.get(SUBMOD)
}

/// The tee public key a token carries.
pub fn tee_pubkey_of(claims: &Map<String, Value>) -> Option<&Value> {
    submod(claims)?.get(EXT_ANNOTATED)?.get("runtime_data_claims")?.get("tee-pubkey")
}

impl TokenSigner {
    /// A raw ES256 signature (fixed-length r‖s) over `message`, for callers
    /// that sign something other than a JWT (the audit log).
    pub fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, TokenError> {
        let sig = self.key.sign(&self.rng, message).map_err(|_| TokenError::Sign)?;
        Ok(sig.as_ref().to_vec())
    }
}

/// Audit entries are signed with the token-signing key, so the JWK Set at
/// `/tellus/v1/jwks` verifies both.
impl crate::audit::AuditSigner for TokenSigner {
    fn kid(&self) -> &str {
        &self.kid
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, crate::audit::AuditError> {
        self.sign_bytes(message).map_err(|_| crate::audit::AuditError::Sign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::policy::Reason;

    fn signer() -> TokenSigner {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        TokenSigner::from_pkcs8(doc.as_ref()).unwrap()
    }

    fn now() -> i64 {
        crate::service::now_ms() / 1000
    }

    fn claims() -> Claims {
        Claims {
            trust_vector: Map::new(),
            annotated_evidence: json!({"tpm": {"host": {"id": "h1"}, "clock": 7}}),
            policy_id: "tellus:tpm".into(),
            tpm_clock: None,
        }
    }

    fn appraisal(status: &'static str, tv: Value, reasons: Vec<Reason>) -> Appraisal {
        let Value::Object(trust_vector) = tv else { panic!("trust vector must be an object") };
        Appraisal { status, trust_vector, reasons, policy_id: "tellus:tpm-launch.rego".into() }
    }

    fn jwk() -> Value {
        json!({"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "eA", "y": "eQ"})
    }

    fn token(s: &TokenSigner, a: &Appraisal, t: i64) -> String {
        let ear = ear_claims(t, 300, &[7; 32], "tpm", &claims(), a, &jwk()).unwrap();
        s.sign(&ear).unwrap()
    }

    #[test]
    fn token_round_trips_through_ear() {
        let s = signer();
        let t = now();
        let tv = json!({"instance-identity": 2, "executables": 2, "configuration": 2});
        let tok = token(&s, &appraisal("affirming", tv.clone(), vec![]), t);
        let claims = s.verify(&tok, t).unwrap();

        // ear's own deserializer, on the signed payload.
        let payload = B64URL.decode(tok.split('.').nth(1).unwrap()).unwrap();
        let ear: Ear = serde_json::from_slice(&payload).unwrap();
        assert_eq!(ear.profile, EAR_PROFILE);
        assert_eq!((ear.iat, ear.exp), (t, Some(t + 300)));
        assert_eq!(ear.vid.developer, "tellus");
        assert_eq!(ear.nonce.unwrap(), &[7u8; 32][..]);
        let a = &ear.submods[SUBMOD];
        assert_eq!(a.status, TrustTier::Affirming);
        assert_eq!(a.trust_vector.instance_identity.get(), 2);
        assert_eq!(a.trust_vector.executables.get(), 2);
        assert_eq!(a.trust_vector.configuration.get(), 2);
        assert!(!a.trust_vector.hardware.is_set());
        assert_eq!(a.policy_ids, vec!["tellus:tpm-launch.rego".to_string()]);

        // The dotted names the KBS protocol and resource policies read.
        let sub = submod(&claims).unwrap();
        assert_eq!(sub["ear.status"], "affirming");
        assert_eq!(sub["ear_status"], "affirming");
        assert_eq!(sub["ear.trustworthiness-vector"], tv);
        assert_eq!(sub["ear_trustworthiness_vector"], tv);
        assert_eq!(sub["ear.appraisal-policy-id"], "tellus:tpm-launch.rego");
        assert_eq!(sub["tellus.tee"], "tpm");
        assert_eq!(sub["tellus.reasons"], json!([]));
        assert_eq!(sub["ear.veraison.annotated-evidence"]["tpm"]["clock"], 7);
        assert_eq!(tee_pubkey_of(&claims), Some(&jwk()));
        assert_eq!(claims["ear.verifier-id"], claims["ear_verifier_id"]);
        assert_eq!(claims["eat_nonce"], B64URL.encode([7u8; 32]));
        assert_eq!(claims["exp"], t + 300);
    }

    #[test]
    fn tiers_map_from_status_and_trust_vector() {
        for (s, tier) in [
            ("none", TrustTier::None),
            ("affirming", TrustTier::Affirming),
            ("warning", TrustTier::Warning),
            ("contraindicated", TrustTier::Contraindicated),
        ] {
            assert_eq!(tier_of(s).unwrap(), tier);
        }
        assert!(matches!(tier_of("allowed"), Err(TokenError::BuildEar(_))));

        // AR4SI values: 0 no claim, 2..31 affirming, 32..95 warning,
        // 96..127 contraindicated.
        let tv =
            json!({"hardware": 0, "instance-identity": 2, "executables": 33, "file-system": 96});
        let reason = Reason {
            rule: "kernel".into(),
            claim: "launch.records[kernel].file".into(),
            expected: json!(["ab"]),
            found: json!("cd"),
            message: "kernel not in the reference values".into(),
        };
        let s = signer();
        let t = now();
        for status in ["none", "affirming", "warning", "contraindicated"] {
            let tok = token(&s, &appraisal(status, tv.clone(), vec![reason.clone()]), t);
            let claims = s.verify(&tok, t).unwrap();
            let payload = B64URL.decode(tok.split('.').nth(1).unwrap()).unwrap();
            let a = &parse_ear(&payload).unwrap().submods[SUBMOD];
            assert_eq!(a.status, tier_of(status).unwrap());
            assert_eq!(submod(&claims).unwrap()["ear.status"], status);
            let v = &a.trust_vector;
            assert_eq!(v.hardware.tier(), TrustTier::None);
            assert_eq!(v.instance_identity.tier(), TrustTier::Affirming);
            assert_eq!(v.executables.tier(), TrustTier::Warning);
            assert_eq!(v.file_system.tier(), TrustTier::Contraindicated);
            assert_eq!(submod(&claims).unwrap()["tellus.reasons"][0]["rule"], "kernel");
        }

        // Trust vectors that are not AR4SI are refused when building.
        for bad in [json!({"kernel": 2}), json!({"executables": 300}), json!({"hardware": "2"})] {
            let r = ear_claims(
                t,
                300,
                &[7; 32],
                "tpm",
                &claims(),
                &appraisal("affirming", bad, vec![]),
                &jwk(),
            );
            assert!(matches!(r, Err(TokenError::BuildEar(_))), "{r:?}");
        }
    }

    #[test]
    fn signed_jwt_that_is_not_an_ear_is_refused() {
        let s = signer();
        let t = now();
        let not_ear = |v: Value| s.sign_payload(&serde_json::to_vec(&v).unwrap()).unwrap();
        let good = token(&s, &appraisal("affirming", json!({"executables": 2}), vec![]), t);
        let payload = B64URL.decode(good.split('.').nth(1).unwrap()).unwrap();
        let good_claims: Value = serde_json::from_slice(&payload).unwrap();

        // A plain JWT with a valid signature and expiry.
        let e = s.verify(&not_ear(json!({"exp": t + 60, "sub": "x"})), t).unwrap_err();
        assert!(matches!(e, TokenError::NotEar(_)), "{e}");
        // Another profile, no submods, no cpu0, iat 0, a bad status value.
        let mut other_profile = good_claims.clone();
        other_profile["eat_profile"] = json!("tag:ietf.org,2026:rats/ear#04");
        let mut no_submods = good_claims.clone();
        no_submods["submods"] = json!({});
        let mut no_cpu0 = good_claims.clone();
        no_cpu0["submods"] = json!({"gpu0": good_claims["submods"]["cpu0"].clone()});
        let mut no_iat = good_claims.clone();
        no_iat["iat"] = json!(0);
        let mut bad_status = good_claims.clone();
        bad_status["submods"]["cpu0"]["ear_status"] = json!("great");
        // Dotted claims that disagree with the typed ones, or of the wrong kind.
        let mut status_mismatch = good_claims.clone();
        status_mismatch["submods"]["cpu0"]["ear.status"] = json!("contraindicated");
        let mut tv_mismatch = good_claims.clone();
        tv_mismatch["submods"]["cpu0"]["ear.trustworthiness-vector"] = json!({"executables": 33});
        let mut annotated_kind = good_claims.clone();
        annotated_kind["submods"]["cpu0"]["ear.veraison.annotated-evidence"] = json!("x");
        for (what, v) in [
            ("other profile", other_profile),
            ("no submods", no_submods),
            ("no cpu0", no_cpu0),
            ("iat 0", no_iat),
            ("bad status", bad_status),
            ("status mismatch", status_mismatch),
            ("trust vector mismatch", tv_mismatch),
            ("annotated evidence kind", annotated_kind),
        ] {
            let e = s.verify(&not_ear(v), t).unwrap_err();
            assert!(matches!(e, TokenError::NotEar(_)), "{what}: {e}");
        }
        // The unmodified claims, re-signed, still verify.
        assert!(s.verify(&not_ear(good_claims), t).is_ok());
    }

    #[test]
    fn sign_verify_expiry_and_tamper() {
        let s = signer();
        let t0 = now();
        let t = token(&s, &appraisal("affirming", json!({}), vec![]), t0);
        assert_eq!(s.verify(&t, t0 + 299).unwrap()["iat"], t0);
        assert!(matches!(s.verify(&t, t0 + 300), Err(TokenError::Expired)));
        let other = signer();
        assert!(matches!(other.verify(&t, t0), Err(TokenError::WrongAlgOrKey)));
        let mut parts: Vec<&str> = t.split('.').collect();
        let payload = B64URL.decode(parts[1]).unwrap();
        let mut claims: Value = serde_json::from_slice(&payload).unwrap();
        claims["submods"]["cpu0"]["ear.status"] = json!("contraindicated");
        let forged = B64URL.encode(serde_json::to_vec(&claims).unwrap());
        parts[1] = &forged;
        assert!(matches!(s.verify(&parts.join("."), t0), Err(TokenError::BadSignature)));
        assert!(matches!(s.verify("a.b", 0), Err(TokenError::Malformed)));
        assert!(matches!(s.verify(&"a".repeat(MAX_TOKEN_LEN + 1), 0), Err(TokenError::TooLong)));
        let none_alg = format!("{}.{}.", B64URL.encode(br#"{"alg":"none"}"#), parts[1]);
        assert!(matches!(s.verify(&none_alg, 0), Err(TokenError::WrongAlgOrKey)));
        // A signed token without exp is expired, whatever else it holds.
        let no_exp = s.sign_payload(br#"{"x":1}"#).unwrap();
        assert!(matches!(s.verify(&no_exp, 0), Err(TokenError::Expired)));
        assert_eq!(s.jwks()["keys"][0]["kid"], s.kid());
    }
}
