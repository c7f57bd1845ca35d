//! EK certificate chains: a TPM's endorsement key certificate, checked
//! against the EK CA certificates the verifier is configured to trust.
//!
//! Path building: from the leaf, candidate issuers are the trust anchors and
//! the (untrusted) intermediates the host supplied whose subject equals the
//! certificate's issuer, byte for byte as Go's `crypto/x509` compares them;
//! candidates whose Subject Key Identifier matches the Authority Key
//! Identifier are tried first, others after (some TPM CAs compute key
//! identifiers oddly, and the signature is the real check). The search backs
//! off and tries the next candidate on any failure, and reports the most
//! specific failure if none succeeds. Every certificate in the path, the
//! anchor included, must be within its validity period at the validation
//! time (pinnable, for old vectors); every issuer must be a CA
//! (basicConstraints CA=true), allowed to sign certificates (keyUsage
//! keyCertSign where keyUsage is present) and within its pathLenConstraint.
//! Signatures are verified with ring: RSA PKCS#1 v1.5 with SHA-1 (legacy
//! TPM vendor roots, e.g. Nuvoton NTC2), SHA-256/384/512, RSA-PSS with
//! SHA-256/384/512, ECDSA P-256/P-384 with SHA-256/384.
//!
//! Leniencies for real TPM EK certificates, each as Keylime or go-attestation
//! handles it:
//! - **NV storage header**: certificates read from NV may carry the TCG PC
//!   Client header `10 01 00 <u16 length>` and trailing padding; the header
//!   is removed and bytes after the certificate's DER are ignored (leaf
//!   only), as go-attestation's `attest.ParseEKCertificate` does.
//! - **Empty subject, critical subjectAltName** holding the TPM
//!   manufacturer/model/version directory name (TCG EK Credential Profile
//!   §3.2.9): accepted; the SAN is a handled critical extension, as
//!   go-attestation's `x509ext.ToEKCertificate` removes it from Go's
//!   unhandled critical extensions. [`tpm_device_info`] decodes it.
//! - **Critical certificatePolicies / extendedKeyUsage** on TPM CA
//!   certificates (Intel's EK intermediate, STMicro's): handled as Go's
//!   `crypto/x509` handles them when no policy or usage is requested,
//!   i.e. recognised but not enforced. Any other critical extension that is
//!   not understood here (e.g. nameConstraints, policyConstraints) fails
//!   the chain, as in Go.
//! - **RSAES-OAEP public keys** (`id-RSAES-OAEP`, used by some older EK
//!   certificates, which Go cannot parse): accepted by
//!   [`ek_public_matches_cert`] for the EK key comparison.
//! - Keylime additionally re-encodes certificates that python-cryptography
//!   rejects as malformed (some Nuvoton EK certificates, keylime issue
//!   #944); x509-parser parses BER-ish encodings itself, and signatures are
//!   always checked over the TBS bytes as received, so no re-encoding is
//!   done. Not exercised by the vectors (no such certificate is in them).
//!
//! Not checked: revocation (no CRL/OCSP fetching), certificate policies,
//! extended key usage, the EK Credential Profile's required fields; name
//! comparison is byte equality (as Go), not RFC 5280 §7.1 normalisation.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use thiserror::Error;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA,
    OID_PKCS1_SHA512WITHRSA, OID_SHA1_WITH_RSA, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::signature_algorithm::RsaSsaPssParams;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::tpm_types::{curve, PublicKey, TpmPublic};

/// Most intermediates a chain may have.
pub const MAX_INTERMEDIATES: usize = 8;

/// Critical extensions this module understands (dotted OID, name).
const HANDLED_CRITICAL_EXTENSIONS: &[(&str, &str)] = &[
    ("2.5.29.19", "basicConstraints"),
    ("2.5.29.15", "keyUsage"),
    ("2.5.29.14", "subjectKeyIdentifier"),
    ("2.5.29.35", "authorityKeyIdentifier"),
    // TPM EK certificates: TPM manufacturer/model/version (see module docs).
    ("2.5.29.17", "subjectAltName"),
    // Recognised, not enforced (see module docs).
    ("2.5.29.32", "certificatePolicies"),
    ("2.5.29.37", "extendedKeyUsage"),
    // TCG TPM specification attributes; informational.
    ("2.5.29.9", "subjectDirectoryAttributes"),
    ("2.5.29.31", "cRLDistributionPoints"),
    ("1.3.6.1.5.5.7.1.1", "authorityInfoAccess"),
];

/// `id-RSAES-OAEP` (RFC 8017), the SPKI algorithm of some older EK certs.
const OID_RSAES_OAEP: &str = "1.2.840.113549.1.1.7";

/// TCG attribute OIDs in an EK certificate's subjectAltName directory name.
const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
const OID_TPM_MODEL: &str = "2.23.133.2.2";
const OID_TPM_VERSION: &str = "2.23.133.2.3";

/// Errors from EK certificate handling.
#[derive(Debug, Error)]
pub enum EkCertError {
    #[error("cannot read {path}: {source}; check the EK CA path and its permissions")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot parse {what}: {detail}; supply a DER or PEM X.509 certificate")]
    Parse { what: String, detail: String },
    #[error(
        "no EK CA certificate found in {dir}; put the TPM manufacturers' CA certificates \
         there (*.pem, *.crt, *.cer, *.der)"
    )]
    NoTrustAnchors { dir: PathBuf },
    #[error(
        "untrusted issuer: no trusted EK CA certificate or supplied intermediate issued \
         {subject} (issuer {issuer}); add that CA to the trusted EK CA certificates or supply \
         the missing intermediate"
    )]
    UntrustedIssuer { subject: String, issuer: String },
    #[error(
        "bad signature: {subject} is not validly signed by {issuer} ({detail}); the \
         certificate is corrupt or forged"
    )]
    BadSignature { subject: String, issuer: String, detail: String },
    #[error(
        "unsupported signature algorithm {algorithm} on {subject}; supported: RSA PKCS#1 \
         SHA-1/256/384/512, RSA-PSS SHA-256/384/512, ECDSA P-256/P-384 SHA-256/384"
    )]
    UnsupportedSignatureAlgorithm { subject: String, algorithm: String },
    #[error(
        "{subject} expired at {not_after} (unix time), before the validation time {at}; \
         renew the certificate, or pin the validation time if checking an archived chain"
    )]
    Expired { subject: String, not_after: i64, at: i64 },
    #[error(
        "{subject} is not valid before {not_before} (unix time), after the validation time \
         {at}; check the verifier's clock"
    )]
    NotYetValid { subject: String, not_before: i64, at: i64 },
    #[error(
        "{subject} is not a CA (basicConstraints CA=true missing) but would issue {child}; \
         only CA certificates may be trust anchors or intermediates"
    )]
    NotCa { subject: String, child: String },
    #[error("{subject} has keyUsage without keyCertSign, so it may not issue {child}")]
    NotCertSigner { subject: String, child: String },
    #[error(
        "{subject} allows {path_len} intermediate CA(s) below it (pathLenConstraint) but the \
         chain has {below}"
    )]
    PathLenExceeded { subject: String, path_len: u32, below: usize },
    #[error(
        "{subject} has a critical extension {oid} that is not handled; such a certificate \
         must not be accepted (RFC 5280 §4.2)"
    )]
    UnhandledCriticalExtension { subject: String, oid: String },
    #[error("chain from {subject} needs more than {max} intermediates; supply a shorter chain")]
    ChainTooLong { subject: String, max: usize },
    #[error("unsupported public key in {what}: {detail}")]
    UnsupportedKey { what: String, detail: String },
    #[error(
        "the EK certificate does not certify this EK: {detail}; the host sent a certificate \
         for a different key"
    )]
    KeyMismatch { detail: String },
    #[error("validation time {0} is out of range; pass a unix time within the years 1 to 9999")]
    BadTime(i64),
}

/// When to check validity periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidationTime {
    /// The system clock.
    Now,
    /// A pinned time in seconds since the Unix epoch (e.g. for archived
    /// test vectors whose certificates have since expired).
    At(i64),
}

impl ValidationTime {
    fn unix(self) -> i64 {
        match self {
            ValidationTime::At(t) => t,
            ValidationTime::Now => match SystemTime::now().duration_since(UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                Err(_) => 0,
            },
        }
    }
}

/// A trusted certificate and where it came from.
#[derive(Clone, Debug)]
struct Anchor {
    der: Vec<u8>,
    source: String,
}

/// The EK CA certificates the verifier trusts. Every certificate added is a
/// trust anchor, root or intermediate, as in Keylime's `tpm_cert_store`.
#[derive(Clone, Debug, Default)]
pub struct TrustAnchors {
    anchors: Vec<Anchor>,
}

impl TrustAnchors {
    /// An empty set.
    pub fn new() -> TrustAnchors {
        TrustAnchors::default()
    }

    /// Loads every `*.pem`, `*.crt`, `*.cer` and `*.der` file (any case) in
    /// `dir` (not recursively; dot files skipped); each may hold one DER
    /// certificate or any number of PEM certificates. Fails on the first
    /// file that cannot be read or parsed, and when none is found.
    pub fn from_dir(dir: &Path) -> Result<TrustAnchors, EkCertError> {
        let io = |source| EkCertError::Io { path: dir.to_path_buf(), source };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
            if !name.starts_with('.')
                && matches!(ext.as_str(), "pem" | "crt" | "cer" | "der")
                && path.is_file()
            {
                paths.push(path);
            }
        }
        paths.sort();
        let mut t = TrustAnchors::new();
        for p in &paths {
            t.add_file(p)?;
        }
        if t.is_empty() {
            return Err(EkCertError::NoTrustAnchors { dir: dir.to_path_buf() });
        }
        Ok(t)
    }

    /// Loads the given certificate files (DER or PEM).
    pub fn from_files<P: AsRef<Path>>(paths: &[P]) -> Result<TrustAnchors, EkCertError> {
        let mut t = TrustAnchors::new();
        for p in paths {
            t.add_file(p.as_ref())?;
        }
        Ok(t)
    }

    /// Adds the certificates of one file; returns how many.
    pub fn add_file(&mut self, path: &Path) -> Result<usize, EkCertError> {
        let bytes = std::fs::read(path)
            .map_err(|source| EkCertError::Io { path: path.to_path_buf(), source })?;
        let source = path.display().to_string();
        let ders = load_certificates(&bytes, &source)?;
        let n = ders.len();
        for der in ders {
            self.anchors.push(Anchor { der, source: source.clone() });
        }
        Ok(n)
    }

    /// Adds one DER certificate; `source` names it in errors and results.
    pub fn add_der(&mut self, der: &[u8], source: &str) -> Result<(), EkCertError> {
        parse_exact(der, &format!("trust anchor {source}"))?;
        self.anchors.push(Anchor { der: der.to_vec(), source: source.to_string() });
        Ok(())
    }

    /// How many certificates are trusted.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Where each trusted certificate came from, in order.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.anchors.iter().map(|a| a.source.as_str())
    }
}

/// Certificates in `bytes`: every `CERTIFICATE` block if it is PEM (other
/// blocks ignored; none is an error), else one DER certificate with nothing
/// after it. Each is checked to parse.
pub fn load_certificates(bytes: &[u8], source: &str) -> Result<Vec<Vec<u8>>, EkCertError> {
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if !is_pem {
        parse_exact(bytes, source)?;
        return Ok(vec![bytes.to_vec()]);
    }
    let mut out = Vec::new();
    for (i, pem) in x509_parser::pem::Pem::iter_from_buffer(bytes).enumerate() {
        let pem = pem.map_err(|e| EkCertError::Parse {
            what: format!("{source} (PEM block {})", i + 1),
            detail: e.to_string(),
        })?;
        if !matches!(pem.label.as_str(), "CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE")
        {
            continue;
        }
        parse_exact(&pem.contents, &format!("{source} (PEM block {})", i + 1))?;
        out.push(pem.contents);
    }
    if out.is_empty() {
        return Err(EkCertError::Parse {
            what: source.to_string(),
            detail: "PEM without any CERTIFICATE block".into(),
        });
    }
    Ok(out)
}

/// The DER certificate in an EK certificate as stored in TPM NV: without
/// the TCG PC Client NV header (`10 01 00` + u16 length) if present, and
/// without bytes after the certificate's DER (NV indexes may be padded).
pub fn ek_cert_der(bytes: &[u8]) -> Result<&[u8], EkCertError> {
    let body = match bytes {
        [0x10, 0x01, 0x00, hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            rest.get(..len).ok_or_else(|| EkCertError::Parse {
                what: "EK certificate".into(),
                detail: format!("NV header declares {len} bytes but {} follow", rest.len()),
            })?
        }
        _ => bytes,
    };
    let (_, cert) = X509Certificate::from_der(body)
        .map_err(|e| EkCertError::Parse { what: "EK certificate".into(), detail: e.to_string() })?;
    Ok(cert.as_raw())
}

/// One certificate of a verified chain.
#[derive(Clone, Debug)]
pub struct ChainCert {
    /// The subject, quoted; for EK certificates with an empty subject, their
    /// serial number and subjectAltName.
    pub subject: String,
    /// `"leaf"`, `"intermediate #i"` (index into the supplied list), or the
    /// trust anchor's source (its file).
    pub source: String,
    pub der: Vec<u8>,
}

/// A chain that verified: the leaf first, the trust anchor last.
#[derive(Clone, Debug)]
pub struct VerifiedChain {
    pub certs: Vec<ChainCert>,
}

impl VerifiedChain {
    /// The trust anchor that ended the chain.
    pub fn anchor(&self) -> Option<&ChainCert> {
        self.certs.last()
    }
}

/// Verifies `leaf` (DER, or as read from NV; see [`ek_cert_der`]) up to one
/// of `anchors`, using `intermediates` (DER, untrusted) as needed, at
/// `time`. See the module documentation for what is checked.
pub fn verify_ek_chain<I: AsRef<[u8]>>(
    leaf: &[u8],
    intermediates: &[I],
    anchors: &TrustAnchors,
    time: ValidationTime,
) -> Result<VerifiedChain, EkCertError> {
    let at = time.unix();
    if !(-62_135_596_800..=253_402_300_799).contains(&at) {
        return Err(EkCertError::BadTime(at));
    }
    let leaf_der = ek_cert_der(leaf)?;
    let leaf_cert = parse_exact(leaf_der, "leaf certificate")?;
    check_certificate(&leaf_cert, at)?;

    let inters = intermediates
        .iter()
        .enumerate()
        .map(|(i, der)| {
            let what = format!("intermediate #{i}");
            parse_exact(der.as_ref(), &what).map(|c| (c, what))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let roots = anchors
        .anchors
        .iter()
        .map(|a| parse_exact(&a.der, &format!("trust anchor {}", a.source)).map(|c| (c, a)))
        .collect::<Result<Vec<_>, _>>()?;

    let mut path = Vec::new();
    let anchor = build(&leaf_cert, &inters, &roots, &mut path, at)?;
    let mut certs = vec![ChainCert {
        subject: describe(&leaf_cert),
        source: "leaf".into(),
        der: leaf_der.to_vec(),
    }];
    for &i in &path {
        let (c, what) = &inters[i];
        certs.push(ChainCert {
            subject: describe(c),
            source: what.clone(),
            der: c.as_raw().to_vec(),
        });
    }
    let (c, a) = &roots[anchor];
    certs.push(ChainCert { subject: describe(c), source: a.source.clone(), der: a.der.clone() });
    Ok(VerifiedChain { certs })
}

/// Depth-first path search from `current`; `path` holds the indices of the
/// intermediates chosen so far (leaf side first). Returns the anchor index.
fn build(
    current: &X509Certificate<'_>,
    inters: &[(X509Certificate<'_>, String)],
    roots: &[(X509Certificate<'_>, &Anchor)],
    path: &mut Vec<usize>,
    at: i64,
) -> Result<usize, EkCertError> {
    let mut best: Option<EkCertError> = None;

    for i in candidates(current, roots.iter().map(|(c, _)| c)) {
        match check_issued_by(current, &roots[i].0, path.len(), at) {
            Ok(()) => return Ok(i),
            Err(e) => note(e, &mut best),
        }
    }
    for i in candidates(current, inters.iter().map(|(c, _)| c)) {
        let candidate = &inters[i].0;
        if path.contains(&i) || candidate.as_raw() == current.as_raw() {
            continue;
        }
        if path.len() >= MAX_INTERMEDIATES {
            note(
                EkCertError::ChainTooLong { subject: describe(current), max: MAX_INTERMEDIATES },
                &mut best,
            );
            continue;
        }
        if let Err(e) = check_issued_by(current, candidate, path.len(), at) {
            note(e, &mut best);
            continue;
        }
        path.push(i);
        match build(candidate, inters, roots, path, at) {
            Ok(anchor) => return Ok(anchor),
            Err(e) => {
                path.pop();
                note(e, &mut best);
            }
        }
    }
    Err(best.unwrap_or_else(|| EkCertError::UntrustedIssuer {
        subject: describe(current),
        issuer: current.issuer().to_string(),
    }))
}

/// Keeps the first error, unless a more specific one (anything but "no
/// issuer found") comes later.
fn note(e: EkCertError, best: &mut Option<EkCertError>) {
    let specific = !matches!(e, EkCertError::UntrustedIssuer { .. });
    let have_specific =
        best.as_ref().is_some_and(|b| !matches!(b, EkCertError::UntrustedIssuer { .. }));
    if best.is_none() || (specific && !have_specific) {
        *best = Some(e);
    }
}

/// Indices of certificates whose subject is `child`'s issuer, those whose
/// subject key identifier matches `child`'s authority key identifier first.
fn candidates<'a, 'b: 'a>(
    child: &X509Certificate<'_>,
    pool: impl Iterator<Item = &'a X509Certificate<'b>>,
) -> Vec<usize> {
    let aki = authority_key_id(child);
    let mut matching = Vec::new();
    let mut others = Vec::new();
    for (i, c) in pool.enumerate() {
        if c.subject().as_raw() != child.issuer().as_raw() {
            continue;
        }
        match (aki, subject_key_id(c)) {
            (Some(a), Some(s)) if a != s => others.push(i),
            _ => matching.push(i),
        }
    }
    matching.extend(others);
    matching
}

fn authority_key_id<'a>(c: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    c.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|k| k.0),
        _ => None,
    })
}

fn subject_key_id<'a>(c: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    c.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
        _ => None,
    })
}

/// Checks that `issuer` signed `child` and may issue certificates with
/// `below` intermediate CAs under it, and that `issuer` itself is usable.
fn check_issued_by(
    child: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    below: usize,
    at: i64,
) -> Result<(), EkCertError> {
    verify_signature(child, issuer)?;
    let subject = describe(issuer);
    let bc = issuer.basic_constraints().map_err(|e| EkCertError::Parse {
        what: subject.clone(),
        detail: format!("basicConstraints: {e}"),
    })?;
    let bc = match bc {
        Some(bc) if bc.value.ca => bc.value,
        _ => return Err(EkCertError::NotCa { subject, child: describe(child) }),
    };
    let ku = issuer.key_usage().map_err(|e| EkCertError::Parse {
        what: subject.clone(),
        detail: format!("keyUsage: {e}"),
    })?;
    if let Some(ku) = ku {
        if !ku.value.key_cert_sign() {
            return Err(EkCertError::NotCertSigner { subject, child: describe(child) });
        }
    }
    if let Some(path_len) = bc.path_len_constraint {
        if below > path_len as usize {
            return Err(EkCertError::PathLenExceeded { subject, path_len, below });
        }
    }
    check_certificate(issuer, at)
}

/// Checks that `cert` is within its validity period at `at` and has no
/// critical extension this module does not handle.
fn check_certificate(cert: &X509Certificate<'_>, at: i64) -> Result<(), EkCertError> {
    let subject = describe(cert);
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if at < not_before {
        return Err(EkCertError::NotYetValid { subject, not_before, at });
    }
    if at > not_after {
        return Err(EkCertError::Expired { subject, not_after, at });
    }
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        if let ParsedExtension::ParseError { error } = ext.parsed_extension() {
            if ext.critical || HANDLED_CRITICAL_EXTENSIONS[..4].iter().any(|(o, _)| *o == oid) {
                return Err(EkCertError::Parse {
                    what: subject,
                    detail: format!("extension {oid}: {error}"),
                });
            }
        }
        if ext.critical && !HANDLED_CRITICAL_EXTENSIONS.iter().any(|(o, _)| *o == oid) {
            return Err(EkCertError::UnhandledCriticalExtension { subject, oid });
        }
    }
    Ok(())
}

/// Verifies that `issuer`'s key signed `cert` (names are not compared).
fn verify_signature(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), EkCertError> {
    let subject = describe(cert);
    let issuer_name = describe(issuer);
    let outer = &cert.signature_algorithm;
    let inner = &cert.tbs_certificate.signature;
    if outer.algorithm != inner.algorithm
        || outer.parameters.as_ref().map(|p| p.data) != inner.parameters.as_ref().map(|p| p.data)
    {
        return Err(EkCertError::BadSignature {
            subject,
            issuer: issuer_name,
            detail: "signatureAlgorithm differs from the TBS signature field".into(),
        });
    }
    let spki = issuer.public_key();
    let alg = signature_algorithm(&outer.algorithm, outer.parameters.as_ref(), spki).ok_or_else(
        || EkCertError::UnsupportedSignatureAlgorithm {
            subject: subject.clone(),
            algorithm: format!(
                "{} with a {} issuer key",
                outer.algorithm.to_id_string(),
                spki.algorithm.algorithm.to_id_string()
            ),
        },
    )?;
    UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
        .verify(cert.tbs_certificate.as_ref(), cert.signature_value.data.as_ref())
        .map_err(|_| EkCertError::BadSignature {
            subject,
            issuer: issuer_name,
            detail: format!("{} verification failed", outer.algorithm.to_id_string()),
        })
}

/// The ring algorithm for a signature algorithm and the signer's key.
fn signature_algorithm(
    sig_alg: &Oid<'_>,
    params: Option<&x509_parser::der_parser::asn1_rs::Any<'_>>,
    spki: &SubjectPublicKeyInfo<'_>,
) -> Option<&'static dyn VerificationAlgorithm> {
    let key_alg = &spki.algorithm.algorithm;
    let rsa_signature = [
        OID_PKCS1_SHA1WITHRSA,
        OID_SHA1_WITH_RSA,
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
        OID_PKCS1_RSASSAPSS,
    ]
    .contains(sig_alg);
    let rsa_key = *key_alg == OID_PKCS1_RSAENCRYPTION || *key_alg == OID_PKCS1_RSASSAPSS;
    if rsa_signature && !rsa_key {
        return None;
    }
    if *sig_alg == OID_PKCS1_SHA1WITHRSA || *sig_alg == OID_SHA1_WITH_RSA {
        Some(&signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY)
    } else if *sig_alg == OID_PKCS1_SHA256WITHRSA {
        Some(&signature::RSA_PKCS1_2048_8192_SHA256)
    } else if *sig_alg == OID_PKCS1_SHA384WITHRSA {
        Some(&signature::RSA_PKCS1_2048_8192_SHA384)
    } else if *sig_alg == OID_PKCS1_SHA512WITHRSA {
        Some(&signature::RSA_PKCS1_2048_8192_SHA512)
    } else if *sig_alg == OID_PKCS1_RSASSAPSS {
        // ring verifies PSS with MGF1 over the same hash and a salt as long
        // as the digest; anything else is refused rather than misverified.
        let params = RsaSsaPssParams::try_from(params?).ok()?;
        let hash = params.hash_algorithm_oid().clone();
        let mgf = params.mask_gen_algorithm().ok()?;
        if mgf.mgf.to_id_string() != "1.2.840.113549.1.1.8"
            || mgf.hash != hash
            || params.trailer_field() != 1
        {
            return None;
        }
        let (alg, salt): (&'static dyn VerificationAlgorithm, u32) = if hash == OID_NIST_HASH_SHA256
        {
            (&signature::RSA_PSS_2048_8192_SHA256, 32)
        } else if hash == OID_NIST_HASH_SHA384 {
            (&signature::RSA_PSS_2048_8192_SHA384, 48)
        } else if hash == OID_NIST_HASH_SHA512 {
            (&signature::RSA_PSS_2048_8192_SHA512, 64)
        } else {
            return None;
        };
        (params.salt_length() == salt).then_some(alg)
    } else if *sig_alg == OID_SIG_ECDSA_WITH_SHA256
        || *sig_alg == OID_SIG_ECDSA_WITH_SHA384
        || *sig_alg == OID_SIG_ECDSA_WITH_SHA512
    {
        if *key_alg != OID_KEY_TYPE_EC_PUBLIC_KEY {
            return None;
        }
        let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
        let sha384 = *sig_alg == OID_SIG_ECDSA_WITH_SHA384;
        let sha256 = *sig_alg == OID_SIG_ECDSA_WITH_SHA256;
        if curve == OID_EC_P256 {
            if sha256 {
                Some(&signature::ECDSA_P256_SHA256_ASN1)
            } else if sha384 {
                Some(&signature::ECDSA_P256_SHA384_ASN1)
            } else {
                None
            }
        } else if curve == OID_NIST_EC_P384 {
            if sha256 {
                Some(&signature::ECDSA_P384_SHA256_ASN1)
            } else if sha384 {
                Some(&signature::ECDSA_P384_SHA384_ASN1)
            } else {
                None
            }
        } else {
            None
        }
    } else {
        None
    }
}

/// Checks that `cert_der` (DER, or as read from NV) is signed by the key of
/// `issuer_der` and that its issuer name is the issuer's subject. For
/// self-signed certificates pass the same certificate twice. Validity,
/// constraints and extensions are not checked (see [`verify_ek_chain`]).
pub fn verify_signed_by(cert_der: &[u8], issuer_der: &[u8]) -> Result<(), EkCertError> {
    let cert = parse_exact(ek_cert_der(cert_der)?, "certificate")?;
    let issuer = parse_exact(issuer_der, "issuer certificate")?;
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(EkCertError::UntrustedIssuer {
            subject: describe(&cert),
            issuer: cert.issuer().to_string(),
        });
    }
    verify_signature(&cert, &issuer)
}

/// Checks that the EK certificate `cert_der` (DER, or as read from NV)
/// certifies `ek`: the same RSA modulus and exponent, or the same curve and
/// point. RSA keys may be labelled rsaEncryption or id-RSAES-OAEP.
pub fn ek_public_matches_cert(ek: &TpmPublic, cert_der: &[u8]) -> Result<(), EkCertError> {
    let cert = parse_exact(ek_cert_der(cert_der)?, "EK certificate")?;
    let spki = cert.public_key();
    let key_alg = spki.algorithm.algorithm.to_id_string();
    let mismatch = |detail: String| EkCertError::KeyMismatch { detail };
    let unsupported =
        |detail: String| EkCertError::UnsupportedKey { what: "the EK certificate".into(), detail };
    match &ek.key {
        PublicKey::Rsa { exponent, modulus, .. } => {
            if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION && key_alg != OID_RSAES_OAEP {
                return Err(mismatch(format!(
                    "the TPM EK is RSA, the certificate key is {key_alg}"
                )));
            }
            let (_, key) = RSAPublicKey::from_der(spki.subject_public_key.data.as_ref())
                .map_err(|e| unsupported(format!("RSA public key: {e}")))?;
            if strip_zeros(key.modulus) != strip_zeros(modulus) {
                return Err(mismatch("RSA moduli differ".into()));
            }
            let cert_e = key.try_exponent().map_err(|e| unsupported(format!("exponent: {e}")))?;
            if cert_e != u64::from(*exponent) {
                return Err(mismatch(format!("RSA exponents differ ({cert_e} vs {exponent})")));
            }
            Ok(())
        }
        PublicKey::Ecc { curve: tpm_curve, x, y, .. } => {
            if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
                return Err(mismatch(format!(
                    "the TPM EK is ECC, the certificate key is {key_alg}"
                )));
            }
            let cert_curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| unsupported("EC key without a named curve".into()))?;
            let (want_curve, field_len) = if cert_curve == OID_EC_P256 {
                (curve::NIST_P256, 32)
            } else if cert_curve == OID_NIST_EC_P384 {
                (curve::NIST_P384, 48)
            } else if cert_curve == OID_NIST_EC_P521 {
                (curve::NIST_P521, 66)
            } else {
                return Err(unsupported(format!("curve {}", cert_curve.to_id_string())));
            };
            if *tpm_curve != want_curve {
                return Err(mismatch(format!(
                    "curves differ (TPM 0x{tpm_curve:04x}, certificate {})",
                    cert_curve.to_id_string()
                )));
            }
            let point = spki.subject_public_key.data.as_ref();
            let coords = match point {
                [0x04, xy @ ..] if xy.len() == 2 * field_len => xy,
                _ => return Err(unsupported("EC point is not an uncompressed point".into())),
            };
            let (cx, cy) = coords.split_at(field_len);
            if strip_zeros(cx) != strip_zeros(x) || strip_zeros(cy) != strip_zeros(y) {
                return Err(mismatch("EC points differ".into()));
            }
            Ok(())
        }
        PublicKey::KeyedHash { .. } | PublicKey::SymCipher { .. } => Err(mismatch(format!(
            "the TPM object (type 0x{:04x}) is not an asymmetric key",
            ek.object_type
        ))),
    }
}

/// TPM identity from an EK certificate's subjectAltName directory name
/// (TCG EK Credential Profile §3.2.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmDeviceInfo {
    /// `TPMManufacturer`, e.g. `id:474F4F47` (Google) or `id:00001014` (IBM,
    /// swtpm).
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
}

/// The TPM manufacturer, model and version an EK certificate names, if it
/// has a subjectAltName directory name with any of them.
pub fn tpm_device_info(cert_der: &[u8]) -> Result<Option<TpmDeviceInfo>, EkCertError> {
    let cert = parse_exact(ek_cert_der(cert_der)?, "EK certificate")?;
    let san = cert.subject_alternative_name().map_err(|e| EkCertError::Parse {
        what: "EK certificate".into(),
        detail: format!("subjectAltName: {e}"),
    })?;
    let Some(san) = san else { return Ok(None) };
    let mut info = TpmDeviceInfo { manufacturer: None, model: None, version: None };
    for name in &san.value.general_names {
        if let GeneralName::DirectoryName(dn) = name {
            for a in dn.iter_attributes() {
                let value = a.as_str().ok().map(str::to_string);
                match a.attr_type().to_id_string().as_str() {
                    OID_TPM_MANUFACTURER => info.manufacturer = value,
                    OID_TPM_MODEL => info.model = value,
                    OID_TPM_VERSION => info.version = value,
                    _ => {}
                }
            }
        }
    }
    if info.manufacturer.is_none() && info.model.is_none() && info.version.is_none() {
        return Ok(None);
    }
    Ok(Some(info))
}

/// Parses one DER certificate with nothing after it.
fn parse_exact<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, EkCertError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| EkCertError::Parse { what: what.to_string(), detail: e.to_string() })?;
    if !rest.is_empty() {
        return Err(EkCertError::Parse {
            what: what.to_string(),
            detail: format!("{} trailing byte(s) after the certificate", rest.len()),
        });
    }
    Ok(cert)
}

/// A certificate for messages: its subject, or its serial number and
/// subjectAltName when the subject is empty (TPM EK certificates).
fn describe(cert: &X509Certificate<'_>) -> String {
    let subject = cert.subject().to_string();
    if !subject.is_empty() {
        return format!("\"{subject}\"");
    }
    let san = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DirectoryName(dn) => dn.to_string(),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    };
    format!("certificate with empty subject (serial {}, SAN {san})", cert.raw_serial_as_string())
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}
