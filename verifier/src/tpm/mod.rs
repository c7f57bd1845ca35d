//! TPM evidence verification.
//!
//! - [`attest`]: parsers for `TPMS_ATTEST` (quotes), `TPMT_SIGNATURE` and
//!   AK public keys (`TPM2B_PUBLIC`/`TPMT_PUBLIC` via [`crate::tpm_types`],
//!   PEM/DER SPKI, X.509);
//! - [`verify`]: signature (ring), nonce, PCR digest and event-log checks,
//!   giving a [`verify::VerifiedQuote`];
//! - [`pcrs`]: the PCR files tpm2-tools writes (`tpm2_quote -o`);
//! - [`binding`]: the KBS runtime-data binding, SHA-384 of RFC 8785 JSON;
//! - [`evidence`]: verification of TPM evidence JSON (a superset of
//!   Trustee's; the wire type is [`tellus_protocol::TpmEvidence`]),
//!   [`evidence::verify_evidence`].

pub mod attest;
pub mod binding;
pub mod evidence;
pub mod pcrs;
pub mod verify;

pub use crate::tpm_types::ParseError;
pub use attest::{AkPublic, PublicKey, QuoteAttest, TpmSignature};
pub use binding::{runtime_data_binding, BindingError};
pub use evidence::{evidence_from_json, verify_evidence, EvidenceError, TpmEvidence};
pub use pcrs::{parse_pcrs_file, PcrsFileError, PcrsFormat};
pub use verify::{verify_quote, EventLog, EventLogFormat, VerifiedQuote, VerifyError};
