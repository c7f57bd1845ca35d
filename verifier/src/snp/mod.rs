//! AMD SEV-SNP evidence verification (tee `snp`), offline.
//!
//! - [`report`]: the ATTESTATION_REPORT (versions 2 to 5), bounds-checked;
//! - [`certs`]: the ARK → ASK/ASVK → VCEK/VLEK hierarchy with AMD's
//!   Milan, Genoa and Turin roots built in (pinned, self-signature checked),
//!   RSASSA-PSS/SHA-384 via ring, X.509 via x509-parser (no OpenSSL);
//! - [`verify`]: chain + hwID + TCB + ECDSA P-384 report signature +
//!   REPORT_DATA binding, and the claims a policy sees;
//! - [`evidence`]: Trustee's evidence JSON and the offline VCEK store.
//!
//! Hand-written rather than the `sev` crate's verification: its
//! OpenSSL-free path (`crypto_nossl`) pulls `rsa`/`p384`/`x509-cert` for
//! what ring and x509-parser (already the verifier's X.509 stack) do, it
//! fetches nothing we need, and its TCB/hwID checks are left to the caller
//! anyway; the report layout is a fixed table.

pub mod certs;
pub mod cli;
pub mod evidence;
pub mod report;
pub mod verify;

pub use certs::{AmdRoots, CertRole, LeafInfo, ProductChain};
pub use evidence::{verify_evidence, CertStore, SnpEvidence};
pub use report::{AttestationReport, GuestPolicy, Product, SigningKey, Tcb, REPORT_LEN};
pub use verify::{binding_report_data, verify_report, VerifiedReport, VerifyOptions};

use std::path::PathBuf;

/// Why SNP evidence was rejected. Each check has its own variant.
#[derive(Debug, thiserror::Error)]
pub enum SnpError {
    /// Not 1184 bytes.
    #[error("an SNP report is {expected} bytes, got {len}; send the report exactly as SNP_GET_REPORT returns it")]
    ReportLength {
        /// Bytes given.
        len: usize,
        /// 1184.
        expected: usize,
    },
    /// Version outside 2..=5.
    #[error("SNP report version {0} is not supported (2 to 5 are); update tellus-verifier if the firmware is newer")]
    UnsupportedVersion(u32),
    /// Not ECDSA P-384/SHA-384.
    #[error("SNP report signature algorithm {0} is not ECDSA P-384 with SHA-384 (1)")]
    UnsupportedSignatureAlgo(u32),
    /// A field has an impossible value.
    #[error("malformed SNP report: {0}")]
    MalformedReport(String),
    /// The evidence JSON is not Trustee's shape.
    #[error("malformed SNP evidence: {0}")]
    MalformedEvidence(String),
    /// A certificate does not parse or lacks what AMD puts in it.
    #[error("the {role} certificate is not usable: {detail}")]
    Certificate {
        /// Which certificate.
        role: CertRole,
        /// What is wrong.
        detail: String,
    },
    /// The built-in roots failed their own checks (a build problem).
    #[error("the built-in AMD roots are broken: {0}")]
    BuiltinRoots(String),
    /// The leaf's issuer is not an AMD ASK/ASVK name.
    #[error("the signing certificate is issued by {0:?}, not an AMD SEV-<product> or SEV-VLEK-<product> key; use the VCEK/VLEK AMD's KDS issued")]
    UnknownIssuer(String),
    /// VCEK certificate for a VLEK-signed report or vice versa.
    #[error("the report is signed by its {report} but the certificate is a {cert}")]
    SigningKeyMismatch {
        /// Key the report names.
        report: CertRole,
        /// Certificate given.
        cert: CertRole,
    },
    /// The report's CPUID names another generation than the certificate.
    #[error("the report comes from an AMD {report:?} CPU but the certificate is for {cert:?}")]
    ProductMismatch {
        /// From CPUID.
        report: Product,
        /// From the certificate.
        cert: Product,
    },
    /// No CA chain for the generation.
    #[error("no AMD root for {0:?} is configured")]
    NoRoots(Product),
    /// A signature in the chain does not verify.
    #[error("the {role} is not signed by the {issuer}: {detail}")]
    NotSignedBy {
        /// The certificate.
        role: CertRole,
        /// Its expected issuer.
        issuer: CertRole,
        /// What failed.
        detail: String,
    },
    /// A certificate is outside its validity window.
    #[error("the {role} certificate is not valid at {at} (UNIX time; valid {not_before} to {not_after}); for archived evidence pass a validation time")]
    NotValidAt {
        /// The certificate.
        role: CertRole,
        /// Validation time.
        at: i64,
        /// Start.
        not_before: String,
        /// End.
        not_after: String,
    },
    /// VCEK hwID ≠ CHIP_ID.
    #[error("the VCEK belongs to another chip (hwID {cert}, report CHIP_ID {report}); fetch the VCEK for this chip")]
    ChipIdMismatch {
        /// CHIP_ID of the report.
        report: String,
        /// hwID of the VCEK.
        cert: String,
    },
    /// VCEK TCB ≠ REPORTED_TCB.
    #[error("the certificate is for {component} SVN {cert} but the report's REPORTED_TCB has {report}; fetch the VCEK for the reported TCB")]
    TcbMismatch {
        /// TCB component.
        component: &'static str,
        /// In the certificate.
        cert: u8,
        /// In the report.
        report: u8,
    },
    /// ECDSA signature over the report fails.
    #[error("the report's ECDSA P-384 signature does not verify with the {role}: the report was altered or signed by another key")]
    SignatureInvalid {
        /// Key used.
        role: CertRole,
    },
    /// REPORT_DATA is not the binding.
    #[error("REPORT_DATA {report} is not the expected {expected} (the binding hash zero-padded to 64 bytes); request the report with this attestation's binding")]
    ReportDataMismatch {
        /// In the report.
        report: String,
        /// Expected.
        expected: String,
    },
    /// Evidence carries an ARK/ASK/ASVK that is not the built-in one.
    #[error("the evidence carries an {role} for {product:?} that is not AMD's; only the built-in AMD roots are trusted")]
    UntrustedCa {
        /// Which CA.
        role: CertRole,
        /// Generation.
        product: Product,
    },
    /// No VCEK/VLEK in the evidence or the store.
    #[error("no {role} for this report in the evidence or the certificate store: {hint}")]
    NoLeafCertificate {
        /// The key the report names.
        role: CertRole,
        /// How to get it.
        hint: String,
    },
    /// The store could not be read.
    #[error("cannot read the VCEK store file {path}: {detail}")]
    Store {
        /// File.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}
