//! `tellus-verifier`: the remote verifier and key broker.
//!
//! - [`tpm`]: TPM evidence verification (TPMS_ATTEST, TPMT_SIGNATURE, PCR
//!   digest, event-log replay) and the KBS runtime-data binding;
//! - [`registrar`]: host enrollment: EK certificate chains, MakeCredential;
//! - [`tpm_types`]: TPM 2.0 marshalling, algorithm ids, public areas
//!   (`TPM2B_PUBLIC`/`TPMT_PUBLIC`) and Names, shared by both.
//!
//! The service (KBS 0.4.0 over axum), storage, policies and release follow.

pub mod audit;
pub mod config;
pub mod registrar;
pub mod service;
pub mod snp;
pub mod storage;
pub mod tpm;
pub mod tpm_types;
