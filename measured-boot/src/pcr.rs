//! PCR banks as a replay computes them.

use crate::digest::{Digest, HashAlg};
use std::collections::BTreeMap;

/// Number of PCRs in a TPM 2.0 PC Client bank.
pub const PCR_COUNT: u32 = 24;

/// Replayed PCR values: per algorithm, per PCR index. PCRs that were never
/// extended (or initialised) are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PcrBanks {
    banks: BTreeMap<HashAlg, BTreeMap<u32, Digest>>,
}

/// Errors of a replay.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PcrError {
    #[error("PCR index {0} is out of range (0..{PCR_COUNT})")]
    Index(u32),
    #[error("a {got}-byte digest cannot extend a {alg} PCR ({expected} bytes)")]
    DigestSize { alg: HashAlg, expected: usize, got: usize },
}

impl PcrBanks {
    pub fn new() -> PcrBanks {
        PcrBanks::default()
    }

    /// Sets a PCR's starting value (e.g. PCR 0 from a StartupLocality event).
    pub fn init(&mut self, pcr: u32, value: Digest) -> Result<(), PcrError> {
        check_index(pcr)?;
        self.banks.entry(value.alg()).or_default().insert(pcr, value);
        Ok(())
    }

    /// `PCR[pcr] = H(PCR[pcr] || digest)` in bank `alg`, starting from zero.
    pub fn extend(&mut self, alg: HashAlg, pcr: u32, digest: &[u8]) -> Result<(), PcrError> {
        check_index(pcr)?;
        if digest.len() != alg.size() {
            return Err(PcrError::DigestSize { alg, expected: alg.size(), got: digest.len() });
        }
        let slot =
            self.banks.entry(alg).or_default().entry(pcr).or_insert_with(|| Digest::zero(alg));
        *slot = slot.extend(digest);
        Ok(())
    }

    /// Value of `pcr` in bank `alg`, if it was touched.
    pub fn get(&self, alg: HashAlg, pcr: u32) -> Option<&Digest> {
        self.banks.get(&alg)?.get(&pcr)
    }

    /// Value of `pcr`, or the reset value (zero) if it was never touched.
    pub fn value(&self, alg: HashAlg, pcr: u32) -> Digest {
        self.get(alg, pcr).cloned().unwrap_or_else(|| Digest::zero(alg))
    }

    /// Banks present.
    pub fn algorithms(&self) -> impl Iterator<Item = HashAlg> + '_ {
        self.banks.keys().copied()
    }

    /// Touched PCRs of bank `alg`, in index order.
    pub fn bank(&self, alg: HashAlg) -> impl Iterator<Item = (u32, &Digest)> + '_ {
        self.banks.get(&alg).into_iter().flat_map(|b| b.iter().map(|(i, d)| (*i, d)))
    }
}

fn check_index(pcr: u32) -> Result<(), PcrError> {
    if pcr >= PCR_COUNT {
        return Err(PcrError::Index(pcr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_and_errors() {
        let mut b = PcrBanks::new();
        let m = Digest::of(HashAlg::Sha256, b"m");
        b.extend(HashAlg::Sha256, 13, m.as_bytes()).unwrap();
        assert_eq!(
            b.value(HashAlg::Sha256, 13),
            Digest::zero(HashAlg::Sha256).extend(m.as_bytes())
        );
        assert_eq!(b.value(HashAlg::Sha256, 0), Digest::zero(HashAlg::Sha256));
        assert_eq!(b.extend(HashAlg::Sha256, 24, m.as_bytes()), Err(PcrError::Index(24)));
        assert!(matches!(
            b.extend(HashAlg::Sha1, 0, m.as_bytes()),
            Err(PcrError::DigestSize { .. })
        ));
    }
}
