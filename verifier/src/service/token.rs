//! Attestation tokens: ES256 JWTs (ring, P-256) whose claims are shaped
//! like an EAR (IETF RATS "EAT Attestation Results", Veraison's profile),
//! and the JWK Set that publishes the public key.
//!
//! The `ear` crate is not used: its JWT support brings `jsonwebtoken` and,
//! with default features, COSE via OpenSSL; the claims set here is small
//! and built with `serde_json`.

use super::policy::Appraisal;
use super::verifier::Claims;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Map, Value};

/// EAR profile of the claims.
pub const EAR_PROFILE: &str = "tag:github.com,2023:veraison/ear";
/// Longest token accepted (tokens carry the launch claims and, when the
/// result is not affirming, the policy's reasons).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Most policy reasons a token carries.
pub const MAX_TOKEN_REASONS: usize = 16;

/// Why a token could not be made or was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token-signing key is not a P-256 PKCS#8 key; move token-signing-key.p8 away to generate a new one")]
    BadKey,
    #[error("signing the token failed; retry")]
    Sign,
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

    /// Signs `claims` as a compact JWS.
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let h = B64URL.encode(serde_json::to_vec(&header).map_err(|_| TokenError::Sign)?);
        let p = B64URL.encode(serde_json::to_vec(claims).map_err(|_| TokenError::Sign)?);
        let input = format!("{h}.{p}");
        let sig = self.key.sign(&self.rng, input.as_bytes()).map_err(|_| TokenError::Sign)?;
        Ok(format!("{input}.{}", B64URL.encode(sig.as_ref())))
    }

    /// Verifies a token this signer issued and returns its claims;
    /// `now` is Unix time in seconds.
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
        let claims: Map<String, Value> = B64URL
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        match claims.get("exp").and_then(Value::as_i64) {
            Some(exp) if exp > now => Ok(claims),
            _ => Err(TokenError::Expired),
        }
    }
}

/// The EAR claims set of one appraisal.
///
/// - `eat_nonce`: the session nonce re-encoded as base64url (EAT nonces
///   are 8 to 64 bytes);
/// - `submods.cpu0.ear.status`: the attestation policy's verdict
///   (`affirming` or `contraindicated`);
/// - `submods.cpu0.ear.trustworthiness-vector`: the policy's trust vector
///   (what it actually checked), else the tee verifier's;
/// - `submods.cpu0.ear.veraison.annotated-evidence`: the claims the policy
///   saw, under the tee's name, and
///   `runtime_data_claims.tee-pubkey`, the key resources are encrypted to;
/// - `submods.cpu0.tellus.reasons`: why the policy did not allow (at most
///   [`MAX_TOKEN_REASONS`]), so a resource request with this token can be
///   denied with the same explanation.
pub fn ear_claims(
    now: i64,
    lifetime_secs: i64,
    nonce: &[u8],
    tee: &str,
    claims: &Claims,
    appraisal: &Appraisal,
    tee_pubkey: &Value,
) -> Value {
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
    json!({
        "eat_profile": EAR_PROFILE,
        "iat": now,
        "exp": now.saturating_add(lifetime_secs),
        "ear.verifier-id": {
            "developer": "tellus",
            "build": concat!("tellus-verifier ", env!("CARGO_PKG_VERSION")),
        },
        "eat_nonce": B64URL.encode(nonce),
        "submods": {
            "cpu0": {
                "ear.status": appraisal.status,
                "ear.trustworthiness-vector": Value::Object(appraisal.trust_vector.clone()),
                "ear.appraisal-policy-id": appraisal.policy_id,
                "ear.veraison.annotated-evidence": Value::Object(annotated),
                "tellus.tee": tee,
                "tellus.reasons": reasons,
            }
        }
    })
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
    claims.get("submods")?.get("cpu0")
}

/// The tee public key a token carries.
pub fn tee_pubkey_of(claims: &Map<String, Value>) -> Option<&Value> {
    claims
        .get("submods")?
        .get("cpu0")?
        .get("ear.veraison.annotated-evidence")?
        .get("runtime_data_claims")?
        .get("tee-pubkey")
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

    fn signer() -> TokenSigner {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        TokenSigner::from_pkcs8(doc.as_ref()).unwrap()
    }

    #[test]
    fn sign_verify_expiry_and_tamper() {
        let s = signer();
        let t = s.sign(&json!({"exp": 100, "x": 1})).unwrap();
        assert_eq!(s.verify(&t, 99).unwrap()["x"], 1);
        assert!(matches!(s.verify(&t, 100), Err(TokenError::Expired)));
        let other = signer();
        assert!(other.verify(&t, 0).is_err());
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64URL.encode(br#"{"exp":100,"x":2}"#);
        parts[1] = &forged;
        assert!(matches!(s.verify(&parts.join("."), 0), Err(TokenError::BadSignature)));
        assert!(matches!(s.verify("a.b", 0), Err(TokenError::Malformed)));
        assert!(matches!(s.verify(&"a".repeat(MAX_TOKEN_LEN + 1), 0), Err(TokenError::TooLong)));
        let none_alg = format!("{}.{}.", B64URL.encode(br#"{"alg":"none"}"#), parts[1]);
        assert!(matches!(s.verify(&none_alg, 0), Err(TokenError::WrongAlgOrKey)));
        assert_eq!(s.jwks()["keys"][0]["kid"], s.kid());
    }
}
