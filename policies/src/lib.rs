//! `tellus-policies`: what a tellus verifier decides with.
//!
//! - [`claims`]: the claims schema (one JSON document per attestation,
//!   tagged by tee) a verifier fills with checked facts;
//! - [`refs`]: reference values (from `tellus measure predict`), with
//!   expiry and provenance;
//! - [`engine`]: Rego evaluation with `regorus`, the helper library and
//!   the shipped policies (`rego/`), decisions with explained reasons;
//! - [`reads`]: which parts of its input a policy can read (what its
//!   decisions are memoised by).
//!
//! See `policies/README.md` for the claims shape, the policy contract and
//! examples.

pub mod claims;
pub mod engine;
pub mod reads;
pub mod refs;

pub use claims::Claims;
pub use engine::{DecidedBy, Decision, Policy, PolicyError, Prepared, Reason};
pub use reads::InputReads;
pub use refs::{ReferenceSet, ReferenceValue, RefsError};
