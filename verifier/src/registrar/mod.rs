//! Host registrar crypto (design.md, "Host enrollment"): everything the
//! verifier computes to decide whether a host's TPM is genuine, without any
//! TPM of its own.
//!
//! - [`ek_cert`]: EK certificate chain validation against configured EK CA
//!   roots (TPM vendors, cloud vTPM CAs, swtpm's local CA in tests) and the
//!   check that the certificate names the TPM's actual EK;
//! - [`make_credential`]: `TPM2_MakeCredential` in software, so that only the
//!   TPM holding the certified EK *and* the named AK can recover a secret
//!   (`TPM2_ActivateCredential`), plus the tpm2-tools file format for it.
//!
//! EK and AK public areas and their Names are parsed by
//! [`crate::tpm_types`].

pub mod ek_cert;
pub mod enrollment;
pub mod make_credential;
