//! Host enrollment messages (design.md, "Attestation and key release" →
//! host enrollment): the launcher proves to the verifier that its attestation
//! key (AK) lives in the same TPM as an endorsement key (EK) certified by a
//! trusted TPM manufacturer, by TPM2_MakeCredential / TPM2_ActivateCredential.
//!
//! ```text
//! launcher                                   verifier
//!   EnrollRequest  ───────────────────────▶  check EK cert chain, EK/AK publics,
//!                                            host id; MakeCredential(EK, Name(AK), secret)
//!                  ◀───────────────────────  EnrollChallenge
//!   TPM2_ActivateCredential(AK, EK)
//!   ActivationProof ──────────────────────▶  SHA-256(secret) matches?
//!                  ◀───────────────────────  EnrollResult
//! ```
//!
//! Encodings (JSON field values are plain strings, so this crate needs no
//! base64 or hex dependency):
//! - **base64**: RFC 4648 §4, standard alphabet, with `=` padding;
//! - **hex**: lower-case (upper case is accepted on input);
//! - **`TPM2B_PUBLIC`**: the marshalled structure, a big-endian u16 size
//!   followed by that many bytes of `TPMT_PUBLIC` (what `tpm2_readpublic -o`
//!   and `tellus host init` write to `ek.pub` / `ak.pub`);
//! - **`TPM2B_ID_OBJECT`**, **`TPM2B_ENCRYPTED_SECRET`**: likewise, a
//!   big-endian u16 size then the contents, exactly as passed to
//!   `TPM2_ActivateCredential`;
//! - **host id**: hex SHA-256 of the EK's `TPM2B_PUBLIC` bytes (the same
//!   bytes as `ek_public`), i.e. `sha256sum ek.pub`;
//! - **object Name**: `nameAlg` (big-endian u16) followed by
//!   `H_nameAlg(TPMT_PUBLIC)`, hex.
//!
//! Everything here arrives from the other side of a network: receivers bound
//! and check every field before use.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Launcher → verifier: "enroll this host" (`tellus host enroll-request`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// Hex SHA-256 of the EK `TPM2B_PUBLIC` bytes in `ek_public`.
    pub host_id: String,
    /// The EK public area, base64 of the marshalled `TPM2B_PUBLIC`.
    pub ek_public: String,
    /// The EK certificate, base64 of its DER (as read from the TPM's NV
    /// index, so it may carry the TCG NV header or trailing padding); absent
    /// when the TPM has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_cert: Option<String>,
    /// The AK public area, base64 of the marshalled `TPM2B_PUBLIC`.
    pub ak_public: String,
    /// The AK's Name as the host's TPM reports it, hex. The verifier
    /// recomputes it from `ak_public` and refuses a mismatch.
    pub ak_name: String,
}

/// Verifier → launcher: the credential only the host's TPM can activate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollChallenge {
    /// Opaque id of the pending enrollment, echoed in [`ActivationProof`].
    pub enrollment_id: String,
    /// `credentialBlob`: base64 of the marshalled `TPM2B_ID_OBJECT`.
    pub credential_blob: String,
    /// `secret`: base64 of the marshalled `TPM2B_ENCRYPTED_SECRET`.
    pub encrypted_secret: String,
}

/// Launcher → verifier: the secret recovered by `TPM2_ActivateCredential`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationProof {
    /// The challenge's `enrollment_id`.
    pub enrollment_id: String,
    /// The recovered credential (`certInfo`), base64 of the raw bytes
    /// (without the `TPM2B_DIGEST` size).
    pub secret: String,
}

/// Verifier → launcher: the outcome of enrollment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResult {
    /// The enrolled host's id (see [`EnrollRequest::host_id`]).
    pub host_id: String,
    /// True once the proof matched: the verifier now trusts quotes signed by
    /// the enrolled AK.
    pub activated: bool,
    /// Labels the verifier attached to the host (e.g. location), which
    /// policies can require (design.md, location-boundedness).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(v: &T) -> (T, ciborium::Value) {
        let mut bytes = Vec::new();
        ciborium::into_writer(v, &mut bytes).unwrap();
        let value: ciborium::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
        (ciborium::from_reader(bytes.as_slice()).unwrap(), value)
    }

    fn keys(v: &ciborium::Value) -> Vec<String> {
        v.as_map().unwrap().iter().map(|(k, _)| k.as_text().unwrap().to_string()).collect()
    }

    #[test]
    fn optional_fields() {
        let r = EnrollRequest {
            host_id: "ab".into(),
            ek_public: "AA==".into(),
            ek_cert: None,
            ak_public: "AA==".into(),
            ak_name: "000b".into(),
        };
        let (back, value) = round_trip(&r);
        assert_eq!(back, r);
        assert_eq!(keys(&value), ["host_id", "ek_public", "ak_public", "ak_name"]);
        let with_cert = EnrollRequest { ek_cert: Some("MA==".into()), ..r };
        assert_eq!(round_trip(&with_cert).0, with_cert);

        // `labels` may be left out.
        let v = ciborium::Value::Map(vec![
            ("host_id".into(), "ab".into()),
            ("activated".into(), true.into()),
        ]);
        let res: EnrollResult = v.deserialized().unwrap();
        assert!(res.activated && res.labels.is_empty());
    }

    #[test]
    fn round_trips() {
        let c = EnrollChallenge {
            enrollment_id: "e1".into(),
            credential_blob: "AAE=".into(),
            encrypted_secret: "AAI=".into(),
        };
        assert_eq!(round_trip(&c).0, c);
        let p = ActivationProof { enrollment_id: "e1".into(), secret: "AA==".into() };
        assert_eq!(round_trip(&p).0, p);
        let mut labels = BTreeMap::new();
        labels.insert("site".to_string(), "eu-1".to_string());
        let r = EnrollResult { host_id: "ab".into(), activated: true, labels };
        assert_eq!(round_trip(&r).0, r);
    }
}
