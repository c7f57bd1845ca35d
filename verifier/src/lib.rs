//! `tellus-verifier`: the remote verifier and key broker.
//!
//! - [`tpm`]: TPM evidence verification (TPMS_ATTEST, TPMT_SIGNATURE, PCR
//!   digest, event-log replay) and the KBS runtime-data binding;
//! - [`registrar`]: host enrollment: EK certificate chains, MakeCredential.
//!
//! The service (KBS 0.4.0 over axum), storage, policies and release follow.

pub mod registrar;
pub mod tpm;
