//! Host enrollment (design.md, "Trust model" and "Attestation and key
//! release" → host enrollment): the verifier trusts a host only after EK
//! certificate validation and AK credential activation.
//!
//! [`begin`] checks an [`EnrollRequest`]:
//! 1. the EK and AK publics decode (base64, bounded) and parse as
//!    `TPM2B_PUBLIC`s ([`TpmPublic::from_tpm2b_public`]: bounds-checked, no
//!    trailing bytes);
//! 2. `host_id` is hex SHA-256 of the EK `TPM2B_PUBLIC` bytes (the
//!    launcher's definition, `tellus host init`);
//! 3. the EK certificate chains to the configured EK CA trust anchors and
//!    certifies this EK. A request without a certificate is refused
//!    ([`EnrollError::EkCertificateMissing`]) unless
//!    [`EnrollOptions::allow_uncertified_ek`] is set (tests, TPMs enrolled
//!    by an operator who checked the EK out of band);
//! 4. the AK is a restricted signing key that cannot leave its TPM
//!    (restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin, not
//!    decrypt), so quotes it signs were made by the TPM itself about its own
//!    PCRs, and `ak_name` equals the Name computed from `ak_public`;
//! 5. `TPM2_MakeCredential(EK, Name(AK), secret)` in software with a fresh
//!    random 32-byte secret.
//!
//! It returns the [`EnrollChallenge`] for the host and a
//! [`PendingEnrollment`] for the verifier to keep (it holds only
//! SHA-256(secret), never the secret). [`finish`] compares the secret the
//! host recovered with `TPM2_ActivateCredential` against it in constant
//! time: only the TPM that holds the certified EK's private key *and* has
//! the named AK loaded can recover it, so a match binds the AK to the EK.
//!
//! What this module does not do (the service's job): keep pending
//! enrollments, expire them ([`PendingEnrollment::is_expired`] helps), use
//! each at most once, audit the outcome and attach labels.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::digest::{digest, SHA256};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use tellus_protocol::enrollment::{ActivationProof, EnrollChallenge, EnrollRequest};
use thiserror::Error;

pub use super::ek_cert::ValidationTime;
use super::ek_cert::{ek_public_matches_cert, verify_ek_chain, EkCertError, TrustAnchors};
use super::make_credential::{make_credential, MakeCredentialError};
use crate::tpm_types::{alg, ObjectAttributes, ParseError, TpmPublic};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Largest `TPM2B_PUBLIC` accepted (an RSA-4096 EK with a SHA-512 policy is
/// about 600 bytes).
pub const MAX_PUBLIC_LEN: usize = 2048;
/// Largest EK certificate accepted (real ones are 1 to 2 KiB).
pub const MAX_EK_CERT_LEN: usize = 16 * 1024;
/// Length of the credential secret (the SHA-256 digest size, which every
/// EK name algorithm accepted by MakeCredential can carry).
pub const SECRET_LEN: usize = 32;
/// Length of an enrollment id in random bytes (hex in messages).
pub const ENROLLMENT_ID_LEN: usize = 16;
/// Longest object Name: 2-byte algorithm + SHA-512 digest.
const MAX_NAME_LEN: usize = 2 + 64;
/// Longest secret a proof may carry (a `TPM2B_DIGEST` holds at most 64).
const MAX_SECRET_LEN: usize = 64;

/// AK attributes that must be set.
const AK_REQUIRED: [(u32, &str); 5] = [
    (ObjectAttributes::RESTRICTED, "restricted"),
    (ObjectAttributes::SIGN_ENCRYPT, "sign"),
    (ObjectAttributes::FIXED_TPM, "fixedTPM"),
    (ObjectAttributes::FIXED_PARENT, "fixedParent"),
    (ObjectAttributes::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
];

/// Why enrollment was refused.
#[derive(Debug, Error)]
pub enum EnrollError {
    #[error(
        "{field} is not valid {encoding}: {reason}; send what `tellus host enroll-request` \
         prints, unchanged"
    )]
    Encoding { field: &'static str, encoding: &'static str, reason: String },
    #[error("{field} is {len} bytes, more than the {max} accepted; send the right file")]
    TooLarge { field: &'static str, len: usize, max: usize },
    #[error("{field} is not a valid TPM public area: {source}")]
    Public {
        field: &'static str,
        #[source]
        source: ParseError,
    },
    #[error(
        "host_id {claimed} is not the host id of this EK ({computed}, hex SHA-256 of the EK \
         TPM2B_PUBLIC); the request is inconsistent: run `tellus host enroll-request` again"
    )]
    HostIdMismatch { claimed: String, computed: String },
    #[error(
        "the request has no EK certificate, and this verifier does not enroll TPMs without one \
         (allow_uncertified_ek is off); provision the TPM's EK certificate (NV index \
         0x01c00002) and run `tellus host init` again"
    )]
    EkCertificateMissing,
    #[error("the EK certificate is not trusted: {0}")]
    EkCertificate(#[source] EkCertError),
    #[error(
        "the EK is not a restricted decryption key (objectAttributes 0x{attributes:08x}); \
         send the TPM's endorsement key as ek_public"
    )]
    EkNotStorageKey { attributes: u32 },
    #[error(
        "the AK is not a key that signs only TPM-generated data from inside its TPM \
         (objectAttributes 0x{attributes:08x}: {problem}); create it with `tellus host init`"
    )]
    AkAttributes { attributes: u32, problem: String },
    #[error(
        "the AK is not a signing key (object type 0x{object_type:04x}); create it with \
         `tellus host init`"
    )]
    AkType { object_type: u16 },
    #[error(
        "ak_name {claimed} is not the Name of ak_public ({computed}); the request is \
         inconsistent: run `tellus host enroll-request` again"
    )]
    AkNameMismatch { claimed: String, computed: String },
    #[error("MakeCredential failed: {0}")]
    MakeCredential(#[from] MakeCredentialError),
    #[error("the system random number generator failed; retry, and check the host's entropy")]
    Random,
    #[error(
        "the proof is for enrollment {got}, not {want}; send the proof for the challenge of \
         this enrollment"
    )]
    EnrollmentIdMismatch { want: String, got: String },
    #[error(
        "activation failed: the secret does not match the credential; the AK and EK are not \
         in the same TPM, or the proof is not from the host that asked to enroll. Start \
         enrollment again"
    )]
    ActivationFailed,
}

/// Options of [`begin_with_options`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrollOptions {
    /// Enroll hosts whose request has no EK certificate (the EK is then
    /// trusted on first use). Off by default.
    pub allow_uncertified_ek: bool,
}

/// An enrollment waiting for its [`ActivationProof`]; serde, to be stored
/// by the service. It holds no secret: only SHA-256 of the credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEnrollment {
    /// Random, hex; the challenge's `enrollment_id`.
    pub enrollment_id: String,
    /// Hex SHA-256 of `ek_public` (lower case).
    pub host_id: String,
    /// Base64 of the EK `TPM2B_PUBLIC`.
    pub ek_public: String,
    /// Base64 of the EK certificate DER, as sent; `None` when enrolled
    /// without one ([`EnrollOptions::allow_uncertified_ek`]).
    pub ek_cert: Option<String>,
    /// The trust anchor the EK certificate chained to (its source, e.g. the
    /// file it was loaded from).
    pub ek_anchor: Option<String>,
    /// Base64 of the AK `TPM2B_PUBLIC`.
    pub ak_public: String,
    /// The AK's Name computed by the verifier, hex.
    pub ak_name: String,
    /// Hex SHA-256 of the credential secret.
    pub secret_sha256: String,
    /// Seconds since the Unix epoch when the challenge was made.
    pub created_at: u64,
}

impl PendingEnrollment {
    /// Whether the challenge is older than `ttl_secs` at `now` (seconds
    /// since the Unix epoch). A clock that went backwards counts as expired.
    pub fn is_expired(&self, now: u64, ttl_secs: u64) -> bool {
        now < self.created_at || now - self.created_at > ttl_secs
    }
}

/// A host whose AK was activated: what the verifier stores to trust its
/// quotes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledHost {
    pub host_id: String,
    pub ek_public: String,
    pub ek_cert: Option<String>,
    pub ek_anchor: Option<String>,
    pub ak_public: String,
    pub ak_name: String,
    /// When the enrollment began (seconds since the Unix epoch).
    pub created_at: u64,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Decodes the base64 `text` of a field of at most `max` bytes, checking the
/// length before decoding.
fn b64_field(field: &'static str, text: &str, max: usize) -> Result<Vec<u8>, EnrollError> {
    // 4 characters per 3 bytes, padded.
    let max_chars = max.div_ceil(3) * 4;
    if text.len() > max_chars {
        return Err(EnrollError::TooLarge { field, len: text.len() / 4 * 3, max });
    }
    let bytes = B64.decode(text).map_err(|e| EnrollError::Encoding {
        field,
        encoding: "base64",
        reason: e.to_string(),
    })?;
    if bytes.len() > max {
        return Err(EnrollError::TooLarge { field, len: bytes.len(), max });
    }
    Ok(bytes)
}

/// Decodes the hex `text` of a field of at most `max` bytes.
fn hex_field(field: &'static str, text: &str, max: usize) -> Result<Vec<u8>, EnrollError> {
    if text.len() > 2 * max {
        return Err(EnrollError::TooLarge { field, len: text.len() / 2, max });
    }
    hex::decode(text).map_err(|e| EnrollError::Encoding {
        field,
        encoding: "hex",
        reason: e.to_string(),
    })
}

fn parse_public(field: &'static str, bytes: &[u8]) -> Result<TpmPublic, EnrollError> {
    TpmPublic::from_tpm2b_public(bytes).map_err(|source| EnrollError::Public { field, source })
}

/// Checks that `ak` is a restricted signing key fixed to its TPM.
pub fn check_ak_attributes(ak: &TpmPublic) -> Result<(), EnrollError> {
    if !matches!(ak.object_type, alg::RSA | alg::ECC) {
        return Err(EnrollError::AkType { object_type: ak.object_type });
    }
    let a = ak.object_attributes.0;
    let missing: Vec<&str> =
        AK_REQUIRED.iter().filter(|(bit, _)| a & bit == 0).map(|(_, name)| *name).collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing {}", missing.join(", ")));
    }
    if a & ObjectAttributes::DECRYPT != 0 {
        problems.push("it can decrypt".to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(EnrollError::AkAttributes { attributes: a, problem: problems.join("; ") })
    }
}

/// [`begin_with_options`] with the default options (an EK certificate is
/// required).
pub fn begin(
    req: &EnrollRequest,
    anchors: &TrustAnchors,
    time: ValidationTime,
    rng: &dyn SecureRandom,
) -> Result<(EnrollChallenge, PendingEnrollment), EnrollError> {
    begin_with_options(req, anchors, time, EnrollOptions::default(), rng)
}

/// Checks an enrollment request and makes its credential challenge (see the
/// module documentation for the checks, in order).
pub fn begin_with_options(
    req: &EnrollRequest,
    anchors: &TrustAnchors,
    time: ValidationTime,
    options: EnrollOptions,
    rng: &dyn SecureRandom,
) -> Result<(EnrollChallenge, PendingEnrollment), EnrollError> {
    let ek_bytes = b64_field("ek_public", &req.ek_public, MAX_PUBLIC_LEN)?;
    let ek = parse_public("ek_public", &ek_bytes)?;
    let ak_bytes = b64_field("ak_public", &req.ak_public, MAX_PUBLIC_LEN)?;
    let ak = parse_public("ak_public", &ak_bytes)?;

    let host_id = hex::encode(digest(&SHA256, &ek_bytes));
    if !req.host_id.eq_ignore_ascii_case(&host_id) {
        return Err(EnrollError::HostIdMismatch {
            claimed: req.host_id.chars().take(80).collect(),
            computed: host_id,
        });
    }
    if !ek.is_storage_key() {
        return Err(EnrollError::EkNotStorageKey { attributes: ek.object_attributes.0 });
    }

    let ek_anchor = match &req.ek_cert {
        Some(text) => {
            let der = b64_field("ek_cert", text, MAX_EK_CERT_LEN)?;
            let chain = verify_ek_chain::<&[u8]>(&der, &[], anchors, time)
                .map_err(EnrollError::EkCertificate)?;
            ek_public_matches_cert(&ek, &der).map_err(EnrollError::EkCertificate)?;
            chain.anchor().map(|a| a.source.clone())
        }
        None if options.allow_uncertified_ek => None,
        None => return Err(EnrollError::EkCertificateMissing),
    };

    check_ak_attributes(&ak)?;
    let claimed_name = hex_field("ak_name", &req.ak_name, MAX_NAME_LEN)?;
    let ak_name = ak.name();
    if claimed_name != ak_name {
        return Err(EnrollError::AkNameMismatch {
            claimed: req.ak_name.to_ascii_lowercase(),
            computed: hex::encode(&ak_name),
        });
    }

    let mut secret = [0u8; SECRET_LEN];
    rng.fill(&mut secret).map_err(|_| EnrollError::Random)?;
    let mut id = [0u8; ENROLLMENT_ID_LEN];
    rng.fill(&mut id).map_err(|_| EnrollError::Random)?;
    let enrollment_id = hex::encode(id);

    let cred = make_credential(&ek, &ak_name, &secret)?;
    let challenge = EnrollChallenge {
        enrollment_id: enrollment_id.clone(),
        credential_blob: B64.encode(cred.id_object()),
        encrypted_secret: B64.encode(cred.encrypted_secret()),
    };
    let pending = PendingEnrollment {
        enrollment_id,
        host_id,
        ek_public: B64.encode(&ek_bytes),
        ek_cert: req.ek_cert.clone(),
        ek_anchor,
        ak_public: B64.encode(&ak_bytes),
        ak_name: hex::encode(&ak_name),
        secret_sha256: hex::encode(digest(&SHA256, &secret)),
        created_at: unix_now(),
    };
    Ok((challenge, pending))
}

/// Constant-time equality of two byte strings (the lengths are not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the host's [`ActivationProof`] against its pending enrollment.
pub fn finish(
    pending: &PendingEnrollment,
    proof: &ActivationProof,
) -> Result<EnrolledHost, EnrollError> {
    if proof.enrollment_id != pending.enrollment_id {
        return Err(EnrollError::EnrollmentIdMismatch {
            want: pending.enrollment_id.clone(),
            got: proof.enrollment_id.chars().take(80).collect(),
        });
    }
    // A secret of the wrong size (or not even base64) is a failed
    // activation like any other wrong secret.
    let secret = b64_field("secret", &proof.secret, MAX_SECRET_LEN)
        .map_err(|_| EnrollError::ActivationFailed)?;
    let want = hex::decode(&pending.secret_sha256).map_err(|_| EnrollError::ActivationFailed)?;
    let got = digest(&SHA256, &secret);
    if !ct_eq(got.as_ref(), &want) {
        return Err(EnrollError::ActivationFailed);
    }
    Ok(EnrolledHost {
        host_id: pending.host_id.clone(),
        ek_public: pending.ek_public.clone(),
        ek_cert: pending.ek_cert.clone(),
        ek_anchor: pending.ek_anchor.clone(),
        ak_public: pending.ak_public.clone(),
        ak_name: pending.ak_name.clone(),
        created_at: pending.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    /// Policy A (SHA-256) of the TCG EK templates.
    const POLICY_A: [u8; 32] = [
        0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7,
        0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14,
        0x69, 0xaa,
    ];
    const EK_ATTRS: u32 = ObjectAttributes::FIXED_TPM
        | ObjectAttributes::FIXED_PARENT
        | ObjectAttributes::SENSITIVE_DATA_ORIGIN
        | ObjectAttributes::ADMIN_WITH_POLICY
        | ObjectAttributes::RESTRICTED
        | ObjectAttributes::DECRYPT;
    const AK_ATTRS: u32 = ObjectAttributes::FIXED_TPM
        | ObjectAttributes::FIXED_PARENT
        | ObjectAttributes::SENSITIVE_DATA_ORIGIN
        | ObjectAttributes::USER_WITH_AUTH
        | ObjectAttributes::RESTRICTED
        | ObjectAttributes::SIGN_ENCRYPT;

    fn tpm2b(v: &[u8]) -> Vec<u8> {
        let mut out = (v.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(v);
        out
    }

    /// A P-256 `TPM2B_PUBLIC` for the uncompressed `point`: an EK (AES-128
    /// CFB, no scheme) when `ek`, else an ECDSA/SHA-256 AK.
    fn ecc_public(point: &[u8], ek: bool, attrs: u32) -> Vec<u8> {
        let (x, y) = point[1..].split_at(32);
        let mut t = Vec::new();
        t.extend_from_slice(&alg::ECC.to_be_bytes());
        t.extend_from_slice(&alg::SHA256.to_be_bytes());
        t.extend_from_slice(&attrs.to_be_bytes());
        if ek {
            t.extend(tpm2b(&POLICY_A));
            t.extend_from_slice(&alg::AES.to_be_bytes());
            t.extend_from_slice(&128u16.to_be_bytes());
            t.extend_from_slice(&alg::CFB.to_be_bytes());
            t.extend_from_slice(&alg::NULL.to_be_bytes()); // scheme
        } else {
            t.extend(tpm2b(&[]));
            t.extend_from_slice(&alg::NULL.to_be_bytes()); // symmetric
            t.extend_from_slice(&alg::ECDSA.to_be_bytes());
            t.extend_from_slice(&alg::SHA256.to_be_bytes());
        }
        t.extend_from_slice(&0x0003u16.to_be_bytes()); // NIST P-256
        t.extend_from_slice(&alg::NULL.to_be_bytes()); // kdf
        t.extend(tpm2b(x));
        t.extend(tpm2b(y));
        tpm2b(&t)
    }

    struct Fixture {
        req: EnrollRequest,
        anchors: TrustAnchors,
    }

    /// A synthetic host: a CA, an ECC EK certified by it, an ECC AK.
    fn fixture() -> Fixture {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test EK CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);

        let ek_key = KeyPair::generate().unwrap();
        let mut ek_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ek_params.distinguished_name.push(rcgen::DnType::CommonName, "test EK");
        let ek_cert = ek_params.signed_by(&ek_key, &issuer).unwrap();
        let ek_public = ecc_public(ek_key.public_key_raw(), true, EK_ATTRS);

        let ak_key = KeyPair::generate().unwrap();
        let ak_public = ecc_public(ak_key.public_key_raw(), false, AK_ATTRS);
        let ak_name = TpmPublic::from_tpm2b_public(&ak_public).unwrap().name();

        let mut anchors = TrustAnchors::new();
        anchors.add_der(ca_cert.der(), "test-ca").unwrap();
        Fixture {
            req: EnrollRequest {
                host_id: hex::encode(digest(&SHA256, &ek_public)),
                ek_public: B64.encode(&ek_public),
                ek_cert: Some(B64.encode(ek_cert.der())),
                ak_public: B64.encode(&ak_public),
                ak_name: hex::encode(ak_name),
            },
            anchors,
        }
    }

    fn start(f: &Fixture, req: &EnrollRequest) -> Result<PendingEnrollment, EnrollError> {
        begin(req, &f.anchors, ValidationTime::Now, &SystemRandom::new()).map(|(c, p)| {
            assert_eq!(c.enrollment_id, p.enrollment_id);
            p
        })
    }

    #[test]
    fn begin_accepts_a_consistent_request() {
        let f = fixture();
        let (c, p) = begin(&f.req, &f.anchors, ValidationTime::Now, &SystemRandom::new()).unwrap();
        assert_eq!(p.host_id, f.req.host_id);
        assert_eq!(p.ak_name, f.req.ak_name);
        assert_eq!(p.ek_anchor.as_deref(), Some("test-ca"));
        assert_eq!(p.enrollment_id.len(), 2 * ENROLLMENT_ID_LEN);
        // TPM2B_ID_OBJECT: size, TPM2B_DIGEST(HMAC-SHA-256), encIdentity (2 + 32).
        let blob = B64.decode(&c.credential_blob).unwrap();
        assert_eq!(blob.len(), 2 + 2 + 32 + 2 + 32);
        // TPM2B_ENCRYPTED_SECRET of an ECC EK: a TPMS_ECC_POINT (2 + 32 + 2 + 32).
        let secret = B64.decode(&c.encrypted_secret).unwrap();
        assert_eq!(&secret[..2], &68u16.to_be_bytes());
        // Storable.
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<PendingEnrollment>(&text).unwrap(), p);
        assert!(!p.is_expired(p.created_at + 10, 300));
        assert!(p.is_expired(p.created_at + 301, 300));
        assert!(p.is_expired(p.created_at.saturating_sub(1), 300) || p.created_at == 0);
    }

    #[test]
    fn begin_refuses() {
        let f = fixture();
        let mut r = f.req.clone();
        r.host_id = "00".repeat(32);
        assert!(matches!(start(&f, &r), Err(EnrollError::HostIdMismatch { .. })));

        let mut r = f.req.clone();
        r.ek_cert = None;
        assert!(matches!(start(&f, &r), Err(EnrollError::EkCertificateMissing)));
        let opts = EnrollOptions { allow_uncertified_ek: true };
        let (_, p) =
            begin_with_options(&r, &f.anchors, ValidationTime::Now, opts, &SystemRandom::new())
                .unwrap();
        assert_eq!(p.ek_anchor, None);

        let e = begin(&f.req, &TrustAnchors::new(), ValidationTime::Now, &SystemRandom::new())
            .unwrap_err();
        assert!(
            matches!(e, EnrollError::EkCertificate(EkCertError::UntrustedIssuer { .. })),
            "{e}"
        );

        // The certificate of another EK.
        let other = fixture();
        let mut r = f.req.clone();
        r.ek_cert = other.req.ek_cert.clone();
        let e = begin(&r, &other.anchors, ValidationTime::Now, &SystemRandom::new()).unwrap_err();
        assert!(matches!(e, EnrollError::EkCertificate(EkCertError::KeyMismatch { .. })), "{e}");

        // Not restricted (with the Name recomputed, or not).
        let mut ak = B64.decode(&f.req.ak_public).unwrap();
        ak[7] ^= 0x01; // TPMA_OBJECT bit 16 (restricted), big-endian at 6..10
        let mut r = f.req.clone();
        r.ak_public = B64.encode(&ak);
        let e = start(&f, &r).unwrap_err();
        assert!(
            matches!(&e, EnrollError::AkAttributes { problem, .. } if problem.contains("restricted")),
            "{e}"
        );
        r.ak_name = hex::encode(TpmPublic::from_tpm2b_public(&ak).unwrap().name());
        assert!(matches!(start(&f, &r), Err(EnrollError::AkAttributes { .. })));

        // Name of another key.
        let mut r = f.req.clone();
        r.ak_name = other.req.ak_name.clone();
        assert!(matches!(start(&f, &r), Err(EnrollError::AkNameMismatch { .. })));

        // The EK as AK: a decryption key.
        let mut r = f.req.clone();
        r.ak_public = f.req.ek_public.clone();
        let e = start(&f, &r).unwrap_err();
        assert!(
            matches!(&e, EnrollError::AkAttributes { problem, .. } if problem.contains("decrypt")),
            "{e}"
        );

        // Bounded, strict decoding.
        let mut r = f.req.clone();
        r.ak_public = "A".repeat(4 * MAX_PUBLIC_LEN);
        assert!(matches!(start(&f, &r), Err(EnrollError::TooLarge { field: "ak_public", .. })));
        r.ak_public = "not base64!".into();
        assert!(matches!(start(&f, &r), Err(EnrollError::Encoding { field: "ak_public", .. })));
        let mut ak = B64.decode(&f.req.ak_public).unwrap();
        ak.push(0);
        r.ak_public = B64.encode(&ak);
        assert!(matches!(start(&f, &r), Err(EnrollError::Public { field: "ak_public", .. })));
    }

    fn pending_for(secret: &[u8]) -> PendingEnrollment {
        PendingEnrollment {
            enrollment_id: "e1".into(),
            host_id: "ab".repeat(32),
            ek_public: String::new(),
            ek_cert: None,
            ek_anchor: None,
            ak_public: String::new(),
            ak_name: "000b".into(),
            secret_sha256: hex::encode(digest(&SHA256, secret)),
            created_at: 1,
        }
    }

    #[test]
    fn finish_checks_the_secret() {
        let secret = [7u8; SECRET_LEN];
        let p = pending_for(&secret);
        let ok = ActivationProof { enrollment_id: "e1".into(), secret: B64.encode(secret) };
        let host = finish(&p, &ok).unwrap();
        assert_eq!(host.host_id, p.host_id);

        let mut bad = secret;
        bad[31] ^= 1;
        for s in [B64.encode(bad), B64.encode(&secret[..31]), "%%".into(), "A".repeat(10_000)] {
            let proof = ActivationProof { enrollment_id: "e1".into(), secret: s };
            assert!(matches!(finish(&p, &proof), Err(EnrollError::ActivationFailed)));
        }
        let proof = ActivationProof { enrollment_id: "e2".into(), ..ok };
        assert!(matches!(finish(&p, &proof), Err(EnrollError::EnrollmentIdMismatch { .. })));
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
