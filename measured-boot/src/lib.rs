//! `tellus-measured-boot`: the one implementation of measurement that the
//! launcher (which extends) and the verifier (which replays) share.
//!
//! - [`digest`]: hash algorithms by `TPM_ALG_ID`, digests that carry their algorithm;
//! - [`pcr`]: PCR banks as a replay computes them;
//! - [`records`]: tellus launch records and the function that builds them;
//! - [`cel`]: TCG Canonical Event Log (TLV and JSON), replay;
//! - [`pcclient`]: TCG PC Client binary event logs (SHA-1 and crypto-agile);
//! - [`predict`]: reference values for a launch, without a TPM;
//! - [`snp`]: AMD SEV/SEV-ES/SEV-SNP launch-digest prediction.

pub mod cel;
pub mod digest;
pub mod pcclient;
pub mod pcr;
pub mod predict;
pub mod records;
pub mod snp;

pub use digest::{Digest, HashAlg};
pub use pcr::PcrBanks;
