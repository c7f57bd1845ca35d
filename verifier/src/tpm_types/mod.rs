//! TPM 2.0 structures shared by [`crate::tpm`] (quotes) and
//! [`crate::registrar`] (enrollment): the one place that owns TPM
//! marshalling and public-area parsing.
//!
//! - [`marshal`]: the bounds-checked big-endian reader, the size limits it
//!   enforces and [`ParseError`], used by every TPM structure parser;
//! - [`alg`]: `TPM_ALG_ID` values and their names (hash algorithms are
//!   [`tellus_measured_boot::HashAlg`]); [`curve`]: `TPM_ECC_CURVE` values;
//! - [`public`]: `TPMT_PUBLIC` / `TPM2B_PUBLIC` ([`TpmPublic`]),
//!   `TPMA_OBJECT` and object Names.
//!
//! The quote's own structures (`TPMS_ATTEST`, `TPMT_SIGNATURE`,
//! `TPML_PCR_SELECTION`) are parsed in [`crate::tpm::attest`], on top of
//! [`marshal`].

pub mod alg;
pub mod curve;
pub mod marshal;
pub mod public;

pub use marshal::ParseError;
pub use public::{
    name_from_tpm2b_public, name_from_tpmt_public, parse_object_name, ObjectAttributes, PublicKey,
    SymDef, TpmPublic,
};
