//! TPM evidence verification.
//!
//! - [`attest`]: parsers for `TPMS_ATTEST` (quotes), `TPMT_SIGNATURE`,
//!   `TPM2B_PUBLIC`/`TPMT_PUBLIC` and AK public keys (PEM/DER SPKI, X.509);
//! - [`verify`]: signature (ring), nonce, PCR digest and event-log checks,
//!   giving a [`verify::VerifiedQuote`];
//! - [`pcrs`]: the PCR files tpm2-tools writes (`tpm2_quote -o`);
//! - [`binding`]: the KBS runtime-data binding, SHA-384 of RFC 8785 JSON;
//! - [`evidence`]: tellus TPM evidence JSON (a superset of Trustee's) and
//!   [`evidence::verify_evidence`].

pub mod attest;
pub mod binding;
pub mod evidence;
pub mod pcrs;
pub mod verify;

pub use attest::{AkPublic, ParseError, PublicKey, QuoteAttest, TpmSignature};
pub use binding::{runtime_data_binding, BindingError};
pub use evidence::{verify_evidence, EvidenceError, TpmEvidence};
pub use pcrs::{parse_pcrs_file, PcrsFileError, PcrsFormat};
pub use verify::{verify_quote, EventLog, EventLogFormat, VerifiedQuote, VerifyError};
