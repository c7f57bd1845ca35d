//! The KBS runtime-data binding (KBS protocol 0.4.0, see
//! `shared/kbs-protocol.md`):
//!
//! ```text
//! H = SHA-384(JCS({"tee-pubkey": <JWK>, "nonce": <string>, "additional-evidence": <string>}))
//! ```
//!
//! JCS is the JSON Canonicalization Scheme (RFC 8785). In tee `tpm` mode H
//! is the quote's qualifyingData; in tee `snp` mode it fills REPORT_DATA.

use serde::Serialize;
use serde_json::{Map, Value};

/// Length of the binding (SHA-384).
pub const BINDING_LEN: usize = 48;

/// Why a binding could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error("runtime-data tee-pubkey must be a JWK (a JSON object), not {0}")]
    TeePubkeyNotObject(&'static str),
    #[error("cannot canonicalise the runtime data as JCS (RFC 8785): {0}")]
    Jcs(#[source] serde_json::Error),
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The RFC 8785 canonical form of `value`.
pub fn jcs<T: Serialize>(value: &T) -> Result<Vec<u8>, BindingError> {
    serde_json_canonicalizer::to_vec(value).map_err(BindingError::Jcs)
}

/// SHA-384 of the JCS form of `value`.
pub fn jcs_sha384<T: Serialize>(value: &T) -> Result<[u8; BINDING_LEN], BindingError> {
    let canonical = jcs(value)?;
    let d = ring::digest::digest(&ring::digest::SHA384, &canonical);
    let mut out = [0u8; BINDING_LEN];
    out.copy_from_slice(d.as_ref());
    Ok(out)
}

/// `SHA-384(JCS({"tee-pubkey", "nonce", "additional-evidence"}))`: the value
/// a tee `tpm` quote must carry as qualifyingData. `additional_evidence` is
/// the JSON *string* sent in `tee-evidence.additional_evidence` (`""` when
/// there is none).
pub fn runtime_data_binding(
    tee_pubkey: &Value,
    nonce: &str,
    additional_evidence: &str,
) -> Result<[u8; BINDING_LEN], BindingError> {
    if !tee_pubkey.is_object() {
        return Err(BindingError::TeePubkeyNotObject(kind(tee_pubkey)));
    }
    let mut m = Map::new();
    m.insert("tee-pubkey".into(), tee_pubkey.clone());
    m.insert("nonce".into(), Value::String(nonce.into()));
    m.insert("additional-evidence".into(), Value::String(additional_evidence.into()));
    jcs_sha384(&Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The vector of `shared/kbs-protocol.md`.
    #[test]
    fn kbs_protocol_vector() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":"test","c":{"d":"e"}}"#).unwrap();
        assert_eq!(jcs(&v).unwrap(), br#"{"a":"test","b":1,"c":{"d":"e"}}"#);
        assert_eq!(
            hex::encode(jcs_sha384(&v).unwrap()),
            "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3"
        );
    }

    #[test]
    fn binding_is_sha384_of_the_canonical_triple() {
        let jwk = json!({"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"AAA","y":"BBB"});
        let h = runtime_data_binding(&jwk, "bm9uY2U=", "").unwrap();
        let expected = concat!(
            r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":"#,
            r#"{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAA","y":"BBB"}}"#
        );
        let d = ring::digest::digest(&ring::digest::SHA384, expected.as_bytes());
        assert_eq!(h.as_slice(), d.as_ref());
        // Every input matters.
        assert_ne!(h, runtime_data_binding(&jwk, "bm9uY2U", "").unwrap());
        assert_ne!(h, runtime_data_binding(&jwk, "bm9uY2U=", "{}").unwrap());
        let e = runtime_data_binding(&json!("x"), "n", "").unwrap_err();
        assert!(e.to_string().contains("a string"), "{e}");
    }
}
