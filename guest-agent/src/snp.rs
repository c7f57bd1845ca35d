//! SEV-SNP evidence produced inside the guest: on the host's
//! `AttestChallenge` the agent computes the KBS binding itself from its own
//! tee key, the verifier's nonce and the host's `additional_evidence`, asks
//! the AMD-SP for a report with REPORT_DATA = the binding (zero-padded to 64
//! bytes) through `/dev/sev-guest`, and sends the report and the
//! certificates the host provided. The launcher only relays them; it cannot
//! forge a report, and a binding over another key would not match.
//!
//! The device is reached through the `sev` crate's guest firmware API
//! (`SNP_GET_EXT_REPORT`, falling back to `SNP_GET_REPORT`), built without
//! OpenSSL; it sits behind [`SnpDevice`] so the request path is testable
//! without SEV hardware.

use sev::firmware::guest::Firmware;
use sev::firmware::host::CertType;
use std::path::Path;
use tellus_protocol::{GuestMessage, MessageError, SnpCert, TeePubKey, SNP_REPORT_LEN};

/// The SEV-SNP guest device.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";
/// Offset of REPORT_DATA in the report (AMD SEV-SNP ABI, Table 22).
pub const REPORT_DATA_OFFSET: usize = 0x50;
/// Length of REPORT_DATA.
pub const REPORT_DATA_LEN: usize = 64;

/// Why no SNP evidence was produced; sent to the host as `SnpUnavailable`.
#[derive(Debug, thiserror::Error)]
pub enum SnpAgentError {
    #[error("{SEV_GUEST_DEVICE} does not exist: this guest is not an SEV-SNP guest (or the sev-guest module is not loaded)")]
    NoDevice,
    #[error("cannot open {SEV_GUEST_DEVICE}: {0}")]
    Open(std::io::Error),
    #[error("the AMD-SP refused the report request: {0}")]
    Firmware(String),
    #[error("the report is {0} bytes, not {SNP_REPORT_LEN}")]
    ReportSize(usize),
    #[error("the report's REPORT_DATA is not the binding that was asked for")]
    ReportDataMismatch,
    #[error("the evidence would not be accepted by the host: {0}")]
    Message(#[from] MessageError),
}

/// What the AMD-SP returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvidence {
    /// The report bytes.
    pub report: Vec<u8>,
    /// Certificates of the host's certificate table (ARK, ASK, VCEK, VLEK).
    pub certs: Vec<SnpCert>,
}

/// A source of SNP reports: `/dev/sev-guest`, or a fake in tests.
pub trait SnpDevice {
    /// A report with `report_data` in REPORT_DATA, and the host's certificates.
    fn report(&mut self, report_data: &[u8; REPORT_DATA_LEN])
        -> Result<RawEvidence, SnpAgentError>;
}

/// `/dev/sev-guest` through the `sev` crate.
pub struct SevGuest(Firmware);

impl SevGuest {
    /// Opens the device; [`SnpAgentError::NoDevice`] when it does not exist.
    pub fn open() -> Result<SevGuest, SnpAgentError> {
        if !Path::new(SEV_GUEST_DEVICE).exists() {
            return Err(SnpAgentError::NoDevice);
        }
        Firmware::open().map(SevGuest).map_err(SnpAgentError::Open)
    }
}

impl SnpDevice for SevGuest {
    fn report(
        &mut self,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<RawEvidence, SnpAgentError> {
        // VMPL 0: the guest kernel runs there without an SVSM; message
        // version 1 (the sev crate's default).
        match self.0.get_ext_report(None, Some(*report_data), Some(0)) {
            Ok((report, certs)) => {
                let certs = certs
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| {
                        let t = match c.cert_type {
                            CertType::ARK => "ARK",
                            CertType::ASK => "ASK",
                            CertType::VCEK => "VCEK",
                            CertType::VLEK => "VLEK",
                            // CRLs and vendor entries are not relayed.
                            _ => return None,
                        };
                        Some(SnpCert { cert_type: t.into(), data: c.data })
                    })
                    .collect();
                Ok(RawEvidence { report, certs })
            }
            // Hosts without a certificate table (or kernels without the
            // extended request) still answer the plain request; the verifier
            // then takes the VCEK from its store.
            Err(ext) => match self.0.get_report(None, Some(*report_data), Some(0)) {
                Ok(report) => Ok(RawEvidence { report, certs: Vec::new() }),
                Err(e) => Err(SnpAgentError::Firmware(format!("{e} (extended request: {ext})"))),
            },
        }
    }
}

/// The KBS runtime-data binding `SHA-384(JCS({"tee-pubkey": <JWK>, "nonce":
/// <nonce>, "additional-evidence": <string>}))`, computed in the guest.
///
/// The object has a fixed shape of string members only, so its JCS
/// (RFC 8785) form is written directly: members sorted by name, no
/// whitespace, strings escaped as JSON.stringify does (serde_json escapes
/// `"`, `\` and control characters the same way and leaves everything else
/// literal). A JCS crate would be a dependency of the static `/init` for
/// one fixed object.
pub fn binding(tee_pubkey: &TeePubKey, nonce: &str, additional_evidence: &str) -> [u8; 48] {
    let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let canonical = format!(
        r#"{{"additional-evidence":{},"nonce":{},"tee-pubkey":{{"alg":{},"crv":{},"kty":{},"x":{},"y":{}}}}}"#,
        s(additional_evidence),
        s(nonce),
        s(&tee_pubkey.alg),
        s(&tee_pubkey.crv),
        s(&tee_pubkey.kty),
        s(&tee_pubkey.x),
        s(&tee_pubkey.y),
    );
    let d = ring::digest::digest(&ring::digest::SHA384, canonical.as_bytes());
    let mut out = [0u8; 48];
    out.copy_from_slice(d.as_ref());
    out
}

/// REPORT_DATA for a binding: the 48 bytes, zero-padded to 64.
pub fn report_data(binding: &[u8; 48]) -> [u8; REPORT_DATA_LEN] {
    let mut rd = [0u8; REPORT_DATA_LEN];
    rd[..48].copy_from_slice(binding);
    rd
}

/// Answers the host's challenge: the report bound to this guest's key, the
/// nonce and the host's additional evidence, checked before it is sent.
pub fn answer_challenge(
    dev: &mut dyn SnpDevice,
    tee_pubkey: &TeePubKey,
    nonce: &str,
    additional_evidence: &str,
) -> Result<GuestMessage, SnpAgentError> {
    let rd = report_data(&binding(tee_pubkey, nonce, additional_evidence));
    let raw = dev.report(&rd)?;
    if raw.report.len() != SNP_REPORT_LEN {
        return Err(SnpAgentError::ReportSize(raw.report.len()));
    }
    if raw.report.get(REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + REPORT_DATA_LEN) != Some(&rd[..]) {
        return Err(SnpAgentError::ReportDataMismatch);
    }
    let msg = GuestMessage::SnpEvidence { report: raw.report, certs: raw.certs };
    msg.validate()?;
    Ok(msg)
}

/// The answer to a challenge on this machine: evidence, or why there is none.
pub fn answer_or_explain(
    open: impl FnOnce() -> Result<SevGuest, SnpAgentError>,
    tee_pubkey: &TeePubKey,
    nonce: &str,
    additional_evidence: &str,
) -> GuestMessage {
    let answer = open()
        .and_then(|mut dev| answer_challenge(&mut dev, tee_pubkey, nonce, additional_evidence));
    answer.unwrap_or_else(|e| GuestMessage::SnpUnavailable { reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn key() -> TeePubKey {
        TeePubKey {
            kty: "EC".into(),
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "A".repeat(43),
            y: "B".repeat(43),
        }
    }

    /// A device that signs nothing: it writes REPORT_DATA where the
    /// firmware puts it (or a wrong one / a short report when told to).
    struct Fake {
        asked: Vec<[u8; 64]>,
        corrupt: bool,
        len: usize,
    }

    impl SnpDevice for Fake {
        fn report(&mut self, rd: &[u8; 64]) -> Result<RawEvidence, SnpAgentError> {
            self.asked.push(*rd);
            let mut report = vec![0u8; self.len];
            if let Some(slot) = report.get_mut(REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 64) {
                slot.copy_from_slice(rd);
            }
            if self.corrupt {
                report[REPORT_DATA_OFFSET] ^= 1;
            }
            let certs = vec![SnpCert { cert_type: "VCEK".into(), data: vec![0x30, 0x82] }];
            Ok(RawEvidence { report, certs })
        }
    }

    /// Same bytes as the verifier's and the launcher's binding: the
    /// canonical triple of their test vector, hashed.
    #[test]
    fn binding_is_sha384_of_the_canonical_triple() {
        let k = TeePubKey { x: "AAA".into(), y: "BBB".into(), ..key() };
        let expected = concat!(
            r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":"#,
            r#"{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAA","y":"BBB"}}"#
        );
        let d = ring::digest::digest(&ring::digest::SHA384, expected.as_bytes());
        assert_eq!(binding(&k, "bm9uY2U=", "").as_slice(), d.as_ref());
        // Additional evidence with characters JSON must escape.
        let ae = "{\"tpm\":\"a\\b\"}\n\u{1}é";
        let expected = format!(
            r#"{{"additional-evidence":{},"nonce":"n","tee-pubkey":{{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAA","y":"BBB"}}}}"#,
            r#""{\"tpm\":\"a\\b\"}\n\u0001é""#
        );
        let d = ring::digest::digest(&ring::digest::SHA384, expected.as_bytes());
        assert_eq!(binding(&k, "n", ae).as_slice(), d.as_ref());
    }

    #[test]
    fn challenge_asks_for_the_padded_binding_and_checks_the_answer() {
        let mut dev = Fake { asked: vec![], corrupt: false, len: SNP_REPORT_LEN };
        let m = answer_challenge(&mut dev, &key(), "nonce", "{\"x\":1}").unwrap();
        let b = binding(&key(), "nonce", "{\"x\":1}");
        assert_eq!(&dev.asked[0][..48], &b[..]);
        assert_eq!(&dev.asked[0][48..], &[0u8; 16]);
        match m {
            GuestMessage::SnpEvidence { report, certs } => {
                assert_eq!(&report[0x50..0x50 + 48], &b[..]);
                assert_eq!(certs[0].cert_type, "VCEK");
            }
            other => panic!("{other:?}"),
        }
        let mut bad = Fake { asked: vec![], corrupt: true, len: SNP_REPORT_LEN };
        assert!(matches!(
            answer_challenge(&mut bad, &key(), "nonce", ""),
            Err(SnpAgentError::ReportDataMismatch)
        ));
        let mut short = Fake { asked: vec![], corrupt: false, len: 1000 };
        assert!(matches!(
            answer_challenge(&mut short, &key(), "nonce", ""),
            Err(SnpAgentError::ReportSize(1000))
        ));
    }

    /// Without `/dev/sev-guest` (as here) the agent says so instead of
    /// evidence.
    #[test]
    fn no_device_is_explained() {
        if Path::new(SEV_GUEST_DEVICE).exists() {
            swtpm_tests::skip("this is an SEV-SNP guest", "no_device_is_explained");
            return;
        }
        let m = answer_or_explain(SevGuest::open, &key(), "n", "");
        match m {
            GuestMessage::SnpUnavailable { reason } => {
                assert!(reason.contains("/dev/sev-guest does not exist"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// REPORT_DATA sits where the agent looks for it: a real report
    /// (Trustee's test report) whose REPORT_DATA is recorded.
    #[test]
    fn report_data_offset_in_a_real_report() {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/test-vectors/sev-snp/trustee/test-report.bin");
        let Ok(r) = std::fs::read(&p) else {
            swtpm_tests::skip("shared/test-vectors absent", "report_data_offset_in_a_real_report");
            return;
        };
        assert_eq!(r.len(), SNP_REPORT_LEN);
        // Trustee's test report (expected.json: decoded_from_fixed_layout).
        assert_eq!(
            hex::encode(&r[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 32]),
            "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2"
        );
        assert_eq!(&r[REPORT_DATA_OFFSET + 32..REPORT_DATA_OFFSET + 64], &[0u8; 32]);
    }
}
