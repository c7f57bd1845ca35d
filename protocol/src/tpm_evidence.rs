//! TPM evidence (KBS tee `tpm`): the JSON `tellus quote` (launcher) writes
//! and the verifier checks.
//!
//! The shape is a superset of Trustee's TPM evidence: the field names and
//! encodings of `ak_public` and `tpm_quote {signature, message, pcrs}` are
//! those of guest-components' `attestation-agent/attester/src/tpm/{mod,utils}.rs`
//! (the attester) and trustee's `deps/verifier/src/tpm/mod.rs` (the
//! verifier), read at guest-components 8246e5e and trustee 78962cd. tellus
//! adds `pcr_selection`, `ak_tpm_public`, `host_id`, `event_log` and
//! `launch_ticket`.
//!
//! The tellus fields are optional so that Trustee-shaped evidence (which has
//! none of them) decodes too; `tellus quote` always sets all of them. When
//! serialising, an absent field is left out, except `launch_ticket`, which
//! is always written (`null` until tickets exist), so the launcher's output
//! keeps its shape. Which fields a policy requires is the verifier's
//! business.
//!
//! Encodings: "base64" is the standard alphabet with padding (RFC 4648
//! §4); "hex" is lower-case, without a prefix; "marshalled" is the TPM 2.0
//! big-endian wire form (TPM 2.0 Library Part 1 §18), as tpm2-tools' "tss"
//! format writes it.

use serde::{Deserialize, Serialize};

/// TPM evidence: Trustee's TPM evidence plus tellus' fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmEvidence {
    /// The AK public key: base64 of its DER SubjectPublicKeyInfo
    /// (`openssl pkey -pubin -inform der`). Trustee: same name and
    /// encoding. The verifier also accepts a PEM text here.
    pub ak_public: String,
    /// The quote. Trustee: same name and shape.
    pub tpm_quote: TpmQuote,
    /// tellus: which PCRs of which bank `tpm_quote` covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr_selection: Option<QuotedPcrs>,
    /// tellus: the AK's public area, base64 of the marshalled `TPM2B_PUBLIC`
    /// (`tpm2_print -t TPM2B_PUBLIC`): its TPM Name, which enrollment
    /// certified, and its attributes (restricted, fixedTPM). Must hold the
    /// same key as `ak_public`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak_tpm_public: Option<String>,
    /// tellus: the host id, hex SHA-256 of the EK's marshalled
    /// `TPM2B_PUBLIC` (64 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// tellus: the host launch log `<state-dir>/launch-log.cel` (TCG
    /// Canonical Event Log, TLV form), base64; `""` when the host has no log
    /// yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log: Option<String>,
    /// tellus: the launch ticket the verifier issued for this launch; `null`
    /// until tickets exist.
    #[serde(default)]
    pub launch_ticket: Option<String>,
    /// tellus: the record number of the first record (`launcher-binary`)
    /// of the launch this evidence speaks for. The host log holds every
    /// launch since the TPM was reset; this picks the one whose records
    /// describe the attesting VM. Absent: the last launch in the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_recnum: Option<u64>,
}

/// `tpm_quote` (Trustee's `TpmQuote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmQuote {
    /// base64 of the marshalled `TPMT_SIGNATURE` (`tpm2_quote -s`,
    /// `tpm2_checkquote -s`).
    pub signature: String,
    /// base64 of the marshalled `TPMS_ATTEST` the TPM signed
    /// (`tpm2_quote -m`); its `extraData` is the nonce.
    pub message: String,
    /// The values of the quoted PCRs, hex, in the order the TPM hashed them
    /// into the quote's `pcrDigest`: banks in the order of the quote's PCR
    /// selection, PCRs ascending within a bank. tellus quotes one bank, so
    /// this is the order of `pcr_selection.pcrs`; Trustee quotes all 24
    /// SHA-256 PCRs.
    pub pcrs: Vec<String>,
}

/// `pcr_selection`: the bank and PCRs a tellus quote covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotedPcrs {
    /// The bank, lower-case: `"sha256"` for `tellus quote`.
    pub bank: String,
    /// PCR indices, ascending, no duplicates.
    pub pcrs: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launcher_shaped() -> TpmEvidence {
        TpmEvidence {
            ak_public: "a".into(),
            tpm_quote: TpmQuote { signature: "s".into(), message: "m".into(), pcrs: vec![] },
            pcr_selection: Some(QuotedPcrs { bank: "sha256".into(), pcrs: vec![13] }),
            ak_tpm_public: Some("t".into()),
            host_id: Some("h".into()),
            event_log: Some(String::new()),
            launch_ticket: None,
            launch_recnum: None,
        }
    }

    #[test]
    fn evidence_field_names_are_trustees() {
        let v = serde_json::to_value(launcher_shaped()).unwrap();
        for k in ["ak_public", "tpm_quote", "pcr_selection", "host_id", "event_log"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v["launch_ticket"].is_null());
        for k in ["signature", "message", "pcrs"] {
            assert!(v["tpm_quote"].get(k).is_some(), "{k}");
        }
    }

    /// What `tellus quote` writes (`serde_json::to_string_pretty`), byte for
    /// byte: every field, in this order, `launch_ticket` as `null`.
    #[test]
    fn launcher_output_is_unchanged() {
        let text = serde_json::to_string_pretty(&launcher_shaped()).unwrap();
        let want = r#"{
  "ak_public": "a",
  "tpm_quote": {
    "signature": "s",
    "message": "m",
    "pcrs": []
  },
  "pcr_selection": {
    "bank": "sha256",
    "pcrs": [
      13
    ]
  },
  "ak_tpm_public": "t",
  "host_id": "h",
  "event_log": "",
  "launch_ticket": null
}"#;
        assert_eq!(text, want);
        let back: TpmEvidence = serde_json::from_str(&text).unwrap();
        assert_eq!(back, launcher_shaped());
    }

    #[test]
    fn trustee_shape_decodes_and_stays_trustee_shaped() {
        let trustee =
            r#"{"ak_public":"QUJD","tpm_quote":{"signature":"cw==","message":"bQ==","pcrs":[]}}"#;
        let e: TpmEvidence = serde_json::from_str(trustee).unwrap();
        assert!(e.pcr_selection.is_none() && e.ak_tpm_public.is_none() && e.host_id.is_none());
        assert!(e.event_log.is_none() && e.launch_ticket.is_none());
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"ak_public":"QUJD","tpm_quote":{"signature":"cw==","message":"bQ==","pcrs":[]},"launch_ticket":null}"#
        );
        assert!(serde_json::from_str::<TpmEvidence>("{}").is_err());
    }
}
