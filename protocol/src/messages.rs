//! Messages exchanged over the agent channel.
//!
//! Each direction has its own enum, so a frame that is valid in one direction
//! cannot be confused with one of the other. Both are encoded as CBOR with
//! serde's externally tagged representation (`{"Ready": {...}}` or `"PowerOff"`).
//!
//! The frame decoder only checks that a payload is well-formed CBOR of the
//! right shape; the receiver then calls `validate()` ([`GuestMessage::validate`],
//! [`HostMessage::validate`]), which bounds every count and length and checks
//! every field's syntax. A message that fails it is dropped, nothing else
//! happens.

use serde::{Deserialize, Serialize};

/// Most resources one `AttestRequest` may name.
pub const MAX_RESOURCES: usize = 16;
/// Longest segment of a resource path (`repo`, `type` or `tag`), as the
/// verifier allows.
pub const MAX_SEGMENT_LEN: usize = 128;
/// Longest released JWE (flattened JSON serialisation) relayed to the guest.
/// All JWEs of one result must also fit one frame together
/// ([`crate::MAX_FRAME_LEN`]), so a secret can be up to about 40 KiB.
pub const MAX_JWE_LEN: usize = 60 * 1024;
/// Longest denial reason the host sends (longer ones are cut by the sender).
pub const MAX_REASON_LEN: usize = 2048;
/// Longest agent version string.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest KBS nonce relayed to the guest (the verifier's is 44 characters).
pub const MAX_NONCE_LEN: usize = 512;
/// Longest `additional_evidence` string relayed to an SEV-SNP guest (the
/// host's TPM evidence, which the guest's REPORT_DATA binds).
pub const MAX_ADDITIONAL_EVIDENCE_LEN: usize = 40 * 1024;
/// Size of an SEV-SNP attestation report (versions 2 and later).
pub const SNP_REPORT_LEN: usize = 1184;
/// Most certificates an SEV-SNP guest relays with its report.
pub const MAX_SNP_CERTS: usize = 3;
/// Largest DER certificate relayed (AMD's ARK, ASK and VCEK are under 2 KiB).
pub const MAX_SNP_CERT_LEN: usize = 4096;
/// Certificate types an SEV-SNP guest may relay (the `sev` crate's and
/// Trustee's names).
pub const SNP_CERT_TYPES: [&str; 4] = ["ARK", "ASK", "VCEK", "VLEK"];

/// The only `kty` of a tee key.
pub const JWK_KTY_EC: &str = "EC";
/// The only `crv` of a tee key.
pub const JWK_CRV_P256: &str = "P-256";
/// The only `alg` of a tee key: the JWE key management the verifier uses.
pub const JWK_ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";

/// Why a decoded message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("{field} is {len} long; at most {max} allowed")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("the request names no resource; name 1..={MAX_RESOURCES} of them")]
    NoResources,
    #[error("resource path {0:?} is not repo/type/tag of [A-Za-z0-9._-] segments (not . or ..)")]
    BadResourcePath(String),
    #[error("resource {0} is named twice")]
    DuplicateResource(String),
    #[error("the tee key must be an EC P-256 JWK with alg ECDH-ES+A256KW and 43-character base64url x and y; {0}")]
    BadTeeKey(&'static str),
    #[error("sha256 of {0} is not 64 lower-case hex digits")]
    BadDigest(String),
    #[error("the nonce is empty or not printable ASCII")]
    BadNonce,
    #[error("an SEV-SNP report is {SNP_REPORT_LEN} bytes, not {0}")]
    BadSnpReport(usize),
    #[error("certificate type {0:?} is not one of ARK, ASK, VCEK, VLEK")]
    BadCertType(String),
    #[error("a relayed certificate is empty")]
    EmptyCert,
}

fn bounded(field: &'static str, s: &str, max: usize) -> Result<(), MessageError> {
    if s.len() > max {
        Err(MessageError::TooLong { field, len: s.len(), max })
    } else {
        Ok(())
    }
}

/// A shortened copy of untrusted text for an error message.
fn excerpt(s: &str) -> String {
    let mut e: String = s.chars().take(64).collect();
    if e.len() < s.len() {
        e.push('…');
    }
    e
}

/// A KBS resource path `repo/type/tag`, checked: three segments of 1 to
/// [`MAX_SEGMENT_LEN`] bytes of `[A-Za-z0-9._-]`, none `.` or `..` (the
/// verifier's rule; the agent also uses it as a relative file path, so
/// the rule is what keeps a path inside the secrets directory).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourcePath {
    segments: [String; 3],
}

impl ResourcePath {
    /// Parses and checks `repo/type/tag`.
    pub fn parse(s: &str) -> Result<ResourcePath, MessageError> {
        let bad = || MessageError::BadResourcePath(excerpt(s));
        if s.len() > 3 * MAX_SEGMENT_LEN + 2 {
            return Err(bad());
        }
        let mut parts = s.split('/');
        let mut segments: [String; 3] = Default::default();
        for seg in segments.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            let ok = !p.is_empty()
                && p.len() <= MAX_SEGMENT_LEN
                && p != "."
                && p != ".."
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(bad());
            }
            *seg = p.to_owned();
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(ResourcePath { segments })
    }

    /// `[repo, type, tag]`.
    pub fn segments(&self) -> [&str; 3] {
        [&self.segments[0], &self.segments[1], &self.segments[2]]
    }
}

impl std::fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.segments[0], self.segments[1], self.segments[2])
    }
}

/// The guest's public key for the KBS `runtime-data.tee-pubkey`: an EC
/// P-256 JWK (RFC 7518 §6.2.1) with `alg` `ECDH-ES+A256KW`, the shape
/// `kbs_types::TeePubKey::EC` serialises to. The launcher puts exactly
/// these five members into the KBS attest request; the runtime-data
/// binding covers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeePubKey {
    /// `"EC"`.
    pub kty: String,
    /// `"P-256"`.
    pub crv: String,
    /// `"ECDH-ES+A256KW"`.
    pub alg: String,
    /// The point's x coordinate: 32 bytes, unpadded base64url (43 characters).
    pub x: String,
    /// The point's y coordinate: 32 bytes, unpadded base64url (43 characters).
    pub y: String,
}

impl TeePubKey {
    /// Checks the key's shape (not that the point is on the curve: the
    /// verifier checks that when it encrypts to it).
    pub fn validate(&self) -> Result<(), MessageError> {
        if self.kty != JWK_KTY_EC {
            return Err(MessageError::BadTeeKey("kty is not EC"));
        }
        if self.crv != JWK_CRV_P256 {
            return Err(MessageError::BadTeeKey("crv is not P-256"));
        }
        if self.alg != JWK_ALG_ECDH_ES_A256KW {
            return Err(MessageError::BadTeeKey("alg is not ECDH-ES+A256KW"));
        }
        let coord = |c: &str| {
            c.len() == 43 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !coord(&self.x) || !coord(&self.y) {
            return Err(MessageError::BadTeeKey("x or y is not 43 base64url characters"));
        }
        Ok(())
    }
}

/// One secret the agent stored: the resource and the SHA-256 of its bytes
/// (the secret itself never leaves the guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// `repo/type/tag`.
    pub resource: String,
    /// SHA-256 of the plaintext, 64 lower-case hex digits.
    pub sha256: String,
}

/// A certificate an SEV-SNP guest got with its report (from the host's
/// certificate table through `SNP_GET_EXT_REPORT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpCert {
    /// One of [`SNP_CERT_TYPES`].
    pub cert_type: String,
    /// DER, 1..=[`MAX_SNP_CERT_LEN`] bytes.
    pub data: Vec<u8>,
}

/// A released resource the agent could not decrypt or store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedSecret {
    /// `repo/type/tag`.
    pub resource: String,
    /// What went wrong.
    pub reason: String,
}

/// Guest → launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMessage {
    /// The agent is up and listening on the channel.
    Ready {
        /// `CARGO_PKG_VERSION` of the agent that sent it.
        agent_version: String,
        /// Time since the guest kernel booted (CLOCK_BOOTTIME), in milliseconds.
        uptime_ms: u64,
    },
    /// Asks the launcher to attest this VM to the verifier (KBS protocol,
    /// tee `tpm`; for an SEV-SNP guest tee `snp`, after an
    /// [`HostMessage::AttestChallenge`]) and fetch `resources`, encrypted to
    /// `tee_pubkey`, whose private key only the guest holds.
    AttestRequest {
        /// KBS resource paths `repo/type/tag`, 1..=[`MAX_RESOURCES`], distinct.
        resources: Vec<String>,
        /// The guest's ephemeral public key.
        tee_pubkey: TeePubKey,
    },
    /// What the agent did with an [`AttestResult`]: which secrets it stored
    /// (with their SHA-256) and which it could not.
    SecretsStored {
        /// Stored under `/run/tellus/secrets/<repo>/<type>/<tag>`.
        stored: Vec<StoredSecret>,
        /// Released but not decrypted or not written.
        failed: Vec<FailedSecret>,
    },
    /// An SEV-SNP guest's answer to [`HostMessage::AttestChallenge`]: its
    /// attestation report, requested from the AMD-SP through
    /// `/dev/sev-guest` with REPORT_DATA = the KBS binding, and the
    /// certificates the host provided. The launcher only relays it.
    SnpEvidence {
        /// The raw report, [`SNP_REPORT_LEN`] bytes.
        report: Vec<u8>,
        /// At most [`MAX_SNP_CERTS`].
        certs: Vec<SnpCert>,
    },
    /// The guest could not produce SNP evidence (no `/dev/sev-guest`, or
    /// the AMD-SP refused); the launcher denies the attestation with it.
    SnpUnavailable {
        /// Why, at most [`MAX_REASON_LEN`] bytes.
        reason: String,
    },
}

impl GuestMessage {
    /// Bounds and checks every field; a message that fails is ignored.
    pub fn validate(&self) -> Result<(), MessageError> {
        match self {
            GuestMessage::Ready { agent_version, .. } => {
                bounded("agent_version", agent_version, MAX_VERSION_LEN)
            }
            GuestMessage::AttestRequest { resources, tee_pubkey } => {
                tee_pubkey.validate()?;
                check_resource_list(resources.iter())
            }
            GuestMessage::SecretsStored { stored, failed } => {
                if stored.len() + failed.len() > MAX_RESOURCES {
                    return Err(MessageError::TooLong {
                        field: "stored + failed",
                        len: stored.len() + failed.len(),
                        max: MAX_RESOURCES,
                    });
                }
                for s in stored {
                    ResourcePath::parse(&s.resource)?;
                    if s.sha256.len() != 64
                        || !s
                            .sha256
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    {
                        return Err(MessageError::BadDigest(s.resource.clone()));
                    }
                }
                for f in failed {
                    ResourcePath::parse(&f.resource)?;
                    bounded("failed.reason", &f.reason, MAX_REASON_LEN)?;
                }
                Ok(())
            }
            GuestMessage::SnpEvidence { report, certs } => {
                if report.len() != SNP_REPORT_LEN {
                    return Err(MessageError::BadSnpReport(report.len()));
                }
                if certs.len() > MAX_SNP_CERTS {
                    return Err(MessageError::TooLong {
                        field: "certs",
                        len: certs.len(),
                        max: MAX_SNP_CERTS,
                    });
                }
                for c in certs {
                    if !SNP_CERT_TYPES.contains(&c.cert_type.as_str()) {
                        return Err(MessageError::BadCertType(excerpt(&c.cert_type)));
                    }
                    if c.data.is_empty() {
                        return Err(MessageError::EmptyCert);
                    }
                    if c.data.len() > MAX_SNP_CERT_LEN {
                        return Err(MessageError::TooLong {
                            field: "cert",
                            len: c.data.len(),
                            max: MAX_SNP_CERT_LEN,
                        });
                    }
                }
                Ok(())
            }
            GuestMessage::SnpUnavailable { reason } => bounded("reason", reason, MAX_REASON_LEN),
        }
    }
}

fn check_resource_list<'a>(paths: impl Iterator<Item = &'a String>) -> Result<(), MessageError> {
    let mut seen = std::collections::HashSet::new();
    for p in paths {
        if seen.len() == MAX_RESOURCES {
            return Err(MessageError::TooLong {
                field: "resources",
                len: MAX_RESOURCES + 1,
                max: MAX_RESOURCES,
            });
        }
        let path = ResourcePath::parse(p)?;
        if !seen.insert(path) {
            return Err(MessageError::DuplicateResource(excerpt(p)));
        }
    }
    if seen.is_empty() {
        return Err(MessageError::NoResources);
    }
    Ok(())
}

/// One resource the verifier released: its path and the flattened JWE JSON
/// (`{"protected", "encrypted_key", "iv", "ciphertext", "tag"}`) exactly as
/// the verifier sent it. The launcher cannot read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedResource {
    /// `repo/type/tag`.
    pub resource: String,
    /// The verifier's JWE, at most [`MAX_JWE_LEN`] bytes.
    pub jwe: String,
}

/// The verifier's verdict on an [`GuestMessage::AttestRequest`], relayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttestResult {
    /// Attested; every requested resource, encrypted to the guest's key.
    Released {
        /// In the order requested.
        resources: Vec<ReleasedResource>,
    },
    /// Not attested, or a resource was refused: no secret is released.
    Denied {
        /// The verifier's explanation (its error `detail`), or why the
        /// launcher could not ask.
        reason: String,
    },
}

/// Launcher → guest. The host can ask only for availability functions and
/// relay the verifier's answer; there is deliberately no message that
/// carries a command, a path to run or code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// Flush file systems and power the VM off.
    PowerOff,
    /// Flush file systems and reboot the VM.
    Reboot,
    /// The answer to the guest's `AttestRequest`.
    AttestResult(AttestResult),
    /// SEV-SNP: the verifier's KBS nonce for the guest's `AttestRequest`
    /// and the host's TPM evidence (`additional_evidence`), so the guest can
    /// compute the binding `SHA-384(JCS({tee-pubkey, nonce,
    /// additional-evidence}))` itself and put it into its report's
    /// REPORT_DATA. Answered with `SnpEvidence` or `SnpUnavailable`.
    AttestChallenge {
        /// The KBS nonce, 1..=[`MAX_NONCE_LEN`] printable ASCII characters.
        nonce: String,
        /// The `additional_evidence` string sent to the verifier, at most
        /// [`MAX_ADDITIONAL_EVIDENCE_LEN`] bytes (`""` for none).
        additional_evidence: String,
    },
}

impl HostMessage {
    /// Bounds and checks every field; a message that fails is ignored.
    pub fn validate(&self) -> Result<(), MessageError> {
        match self {
            HostMessage::PowerOff | HostMessage::Reboot => Ok(()),
            HostMessage::AttestChallenge { nonce, additional_evidence } => {
                bounded("nonce", nonce, MAX_NONCE_LEN)?;
                if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(MessageError::BadNonce);
                }
                bounded("additional_evidence", additional_evidence, MAX_ADDITIONAL_EVIDENCE_LEN)
            }
            HostMessage::AttestResult(AttestResult::Denied { reason }) => {
                bounded("reason", reason, MAX_REASON_LEN)
            }
            HostMessage::AttestResult(AttestResult::Released { resources }) => {
                check_resource_list(resources.iter().map(|r| &r.resource))?;
                for r in resources {
                    bounded("jwe", &r.jwe, MAX_JWE_LEN)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TeePubKey {
        TeePubKey {
            kty: "EC".into(),
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "A".repeat(43),
            y: "B".repeat(43),
        }
    }

    #[test]
    fn resource_paths() {
        let p = ResourcePath::parse("default/key/disk-1.v2").unwrap();
        assert_eq!(p.segments(), ["default", "key", "disk-1.v2"]);
        assert_eq!(p.to_string(), "default/key/disk-1.v2");
        for bad in [
            "", "a/b", "a/b/c/d", "a//c", "../b/c", "a/./c", "a/b/..", "/a/b", "a/b/c/", "a b/c/d",
            "a/b/c\0", "ä/b/c",
        ] {
            assert!(ResourcePath::parse(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(MAX_SEGMENT_LEN + 1);
        assert!(ResourcePath::parse(&format!("a/b/{long}")).is_err());
        assert!(ResourcePath::parse(&format!("a/b/{}", &long[1..])).is_ok());
    }

    #[test]
    fn attest_request_bounds() {
        let req = |resources: Vec<String>, tee_pubkey| GuestMessage::AttestRequest {
            resources,
            tee_pubkey,
        };
        assert!(req(vec!["a/b/c".into()], key()).validate().is_ok());
        assert_eq!(req(vec![], key()).validate(), Err(MessageError::NoResources));
        let many: Vec<String> = (0..=MAX_RESOURCES).map(|i| format!("a/b/{i}")).collect();
        assert!(matches!(req(many, key()).validate(), Err(MessageError::TooLong { .. })));
        assert!(matches!(
            req(vec!["a/b/c".into(), "a/b/c".into()], key()).validate(),
            Err(MessageError::DuplicateResource(_))
        ));
        for k in [
            TeePubKey { kty: "RSA".into(), ..key() },
            TeePubKey { crv: "P-384".into(), ..key() },
            TeePubKey { alg: "ECDH-ES".into(), ..key() },
            TeePubKey { x: "A".repeat(44), ..key() },
            TeePubKey { y: format!("{}=", "B".repeat(42)), ..key() },
        ] {
            assert!(matches!(
                req(vec!["a/b/c".into()], k).validate(),
                Err(MessageError::BadTeeKey(_))
            ));
        }
    }

    #[test]
    fn host_message_bounds() {
        let ok = HostMessage::AttestResult(AttestResult::Released {
            resources: vec![ReleasedResource { resource: "a/b/c".into(), jwe: "{}".into() }],
        });
        assert!(ok.validate().is_ok());
        let big = HostMessage::AttestResult(AttestResult::Released {
            resources: vec![ReleasedResource {
                resource: "a/b/c".into(),
                jwe: "x".repeat(MAX_JWE_LEN + 1),
            }],
        });
        assert!(matches!(big.validate(), Err(MessageError::TooLong { field: "jwe", .. })));
        let evil = HostMessage::AttestResult(AttestResult::Released {
            resources: vec![ReleasedResource {
                resource: "../../etc/passwd".into(),
                jwe: "{}".into(),
            }],
        });
        assert!(matches!(evil.validate(), Err(MessageError::BadResourcePath(_))));
        let long = HostMessage::AttestResult(AttestResult::Denied { reason: "r".repeat(5000) });
        assert!(long.validate().is_err());
    }

    #[test]
    fn secrets_stored_bounds() {
        let m = |sha256: &str| GuestMessage::SecretsStored {
            stored: vec![StoredSecret { resource: "a/b/c".into(), sha256: sha256.into() }],
            failed: vec![],
        };
        assert!(m(&"0a".repeat(32)).validate().is_ok());
        assert!(m(&"0A".repeat(32)).validate().is_err());
        assert!(m("00").validate().is_err());
    }

    /// The JWK serialises to exactly the members a KBS tee-pubkey has.
    #[test]
    fn tee_pubkey_json_shape() {
        let v = serde_json::to_value(key()).unwrap();
        let mut names: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["alg", "crv", "kty", "x", "y"]);
    }

    /// SEV-SNP messages: exact report size, bounded certificates of known
    /// types, a bounded printable nonce; every one fits a frame at its limits.
    #[test]
    fn snp_messages_bounds() {
        let cert = |t: &str, n: usize| SnpCert { cert_type: t.into(), data: vec![0x30; n] };
        let ev = |report: usize, certs: Vec<SnpCert>| GuestMessage::SnpEvidence {
            report: vec![0xff; report],
            certs,
        };
        assert!(ev(SNP_REPORT_LEN, vec![]).validate().is_ok());
        let biggest = ev(
            SNP_REPORT_LEN,
            vec![
                cert("VCEK", MAX_SNP_CERT_LEN),
                cert("ASK", MAX_SNP_CERT_LEN),
                cert("ARK", MAX_SNP_CERT_LEN),
            ],
        );
        assert!(biggest.validate().is_ok());
        // At its limits it still fits one frame (bytes are CBOR arrays here).
        assert!(crate::encode_frame(&biggest).is_ok());
        assert_eq!(ev(1183, vec![]).validate(), Err(MessageError::BadSnpReport(1183)));
        assert_eq!(ev(0, vec![]).validate(), Err(MessageError::BadSnpReport(0)));
        assert!(matches!(
            ev(SNP_REPORT_LEN, vec![cert("VCEK", 1); 4]).validate(),
            Err(MessageError::TooLong { field: "certs", .. })
        ));
        assert!(matches!(
            ev(SNP_REPORT_LEN, vec![cert("VCEK", MAX_SNP_CERT_LEN + 1)]).validate(),
            Err(MessageError::TooLong { field: "cert", .. })
        ));
        assert_eq!(
            ev(SNP_REPORT_LEN, vec![cert("CRL", 10)]).validate(),
            Err(MessageError::BadCertType("CRL".into()))
        );
        assert_eq!(
            ev(SNP_REPORT_LEN, vec![cert("VLEK", 0)]).validate(),
            Err(MessageError::EmptyCert)
        );
        let un = |n: usize| GuestMessage::SnpUnavailable { reason: "r".repeat(n) };
        assert!(un(MAX_REASON_LEN).validate().is_ok());
        assert!(un(MAX_REASON_LEN + 1).validate().is_err());

        let ch = |nonce: &str, ae: usize| HostMessage::AttestChallenge {
            nonce: nonce.into(),
            additional_evidence: "e".repeat(ae),
        };
        assert!(ch("bm9uY2U=", 0).validate().is_ok());
        let biggest = ch(&"n".repeat(MAX_NONCE_LEN), MAX_ADDITIONAL_EVIDENCE_LEN);
        assert!(biggest.validate().is_ok());
        assert!(crate::encode_frame(&biggest).is_ok());
        assert_eq!(ch("", 0).validate(), Err(MessageError::BadNonce));
        assert_eq!(ch("a b", 0).validate(), Err(MessageError::BadNonce));
        assert_eq!(ch("a\n", 0).validate(), Err(MessageError::BadNonce));
        assert!(matches!(
            ch(&"n".repeat(MAX_NONCE_LEN + 1), 0).validate(),
            Err(MessageError::TooLong { field: "nonce", .. })
        ));
        assert!(matches!(
            ch("n", MAX_ADDITIONAL_EVIDENCE_LEN + 1).validate(),
            Err(MessageError::TooLong { field: "additional_evidence", .. })
        ));
        // Round trip through a frame.
        let m = ev(SNP_REPORT_LEN, vec![cert("VCEK", 1300)]);
        let frame = crate::encode_frame(&m).unwrap();
        let mut d = crate::FrameDecoder::<GuestMessage>::new();
        d.push(&frame);
        assert!(matches!(d.next(), Some(crate::Decoded::Message(x)) if x == m));
    }
}
