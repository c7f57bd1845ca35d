//! Host TPM access (tss-esapi 7.6 on the system's libtss2).
//!
//! The launcher connects only for as long as a measurement takes and drops
//! the connection before the guest runs: swtpm serves one client at a time,
//! and other launches and tools must get through.

pub mod enroll;
pub mod host;
pub mod quote;
mod unix_relay;

use std::str::FromStr;
use tellus_measured_boot::{Digest, HashAlg};
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{
    CapabilityData, DigestValues, PcrSelectSize, PcrSelectionList, PcrSlot,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

/// Default `--tpm`: the kernel's resource manager.
pub const DEFAULT_TPM: &str = "device:/dev/tpmrm0";

/// TPM failures. Each one stops a launch before any vCPU runs.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("--tpm '{spec}' is not a TPM address: {reason}; use swtpm:host=127.0.0.1,port=N or device:/dev/tpmrm0")]
    Spec { spec: String, reason: String },
    #[error("cannot reach the TPM at '{spec}': {source}; is the TPM (or swtpm) running?")]
    Connect { spec: String, source: tss_esapi::Error },
    #[error("cannot reach the swtpm UNIX socket of '{spec}': {source}; is swtpm running with --server type=unixio,path=SOCK --ctrl type=unixio,path=SOCK.ctrl?")]
    Unix { spec: String, source: std::io::Error },
    #[error("TPM command {command} failed: {source}")]
    Command { command: &'static str, source: tss_esapi::Error },
    #[error("PCR {0} cannot be used: launch records go into PCR 8..=15")]
    Pcr(u32),
    #[error("no PCR bank of the TPM has PCR {0} allocated")]
    NoBank(u32),
    #[error("the TPM returned {got} digests for {want} banks")]
    ShortRead { want: usize, got: usize },
}

/// A parsed `--tpm` value.
#[derive(Debug, Clone)]
pub struct TpmAddress {
    spec: String,
    kind: AddressKind,
}

#[derive(Debug, Clone)]
enum AddressKind {
    Tcti(TctiNameConf),
    /// `swtpm:path=SOCK`: reached through [`unix_relay::UnixRelay`].
    SwtpmUnix(std::path::PathBuf),
}

impl FromStr for TpmAddress {
    type Err = TpmError;
    fn from_str(spec: &str) -> Result<Self, TpmError> {
        let bad = |reason: &str| TpmError::Spec { spec: spec.into(), reason: reason.into() };
        if !(spec.starts_with("swtpm:")
            || spec.starts_with("device:")
            || spec.starts_with("mssim:"))
        {
            return Err(bad("unknown kind (swtpm:, device: or mssim:)"));
        }
        if let Some(path) = spec.strip_prefix("swtpm:path=") {
            if path.is_empty() || path.contains(',') {
                return Err(bad(
                    "swtpm:path= needs one socket path (its control socket is PATH.ctrl)",
                ));
            }
            return Ok(TpmAddress { spec: spec.into(), kind: AddressKind::SwtpmUnix(path.into()) });
        }
        let tcti = TctiNameConf::from_str(spec).map_err(|e| bad(&e.to_string()))?;
        Ok(TpmAddress { spec: spec.into(), kind: AddressKind::Tcti(tcti) })
    }
}

impl std::fmt::Display for TpmAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spec)
    }
}

/// An open TPM connection.
pub struct Tpm {
    // Field order matters: the context closes before the relay stops.
    ctx: Context,
    _relay: Option<unix_relay::UnixRelay>,
}

fn hashing(alg: HashAlg) -> HashingAlgorithm {
    match alg {
        HashAlg::Sha1 => HashingAlgorithm::Sha1,
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        HashAlg::Sha512 => HashingAlgorithm::Sha512,
    }
}

fn from_hashing(h: HashingAlgorithm) -> Option<HashAlg> {
    Some(match h {
        HashingAlgorithm::Sha1 => HashAlg::Sha1,
        HashingAlgorithm::Sha256 => HashAlg::Sha256,
        HashingAlgorithm::Sha384 => HashAlg::Sha384,
        HashingAlgorithm::Sha512 => HashAlg::Sha512,
        _ => return None,
    })
}

fn pcr_handle(pcr: u32) -> Result<PcrHandle, TpmError> {
    Ok(match pcr {
        8 => PcrHandle::Pcr8,
        9 => PcrHandle::Pcr9,
        10 => PcrHandle::Pcr10,
        11 => PcrHandle::Pcr11,
        12 => PcrHandle::Pcr12,
        13 => PcrHandle::Pcr13,
        14 => PcrHandle::Pcr14,
        15 => PcrHandle::Pcr15,
        other => return Err(TpmError::Pcr(other)),
    })
}

fn pcr_slot(pcr: u32) -> Result<PcrSlot, TpmError> {
    pcr_handle(pcr)?;
    PcrSlot::try_from(1u32 << pcr).map_err(|_| TpmError::Pcr(pcr))
}

fn cmd(command: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { command, source }
}

impl Tpm {
    /// Opens a connection.
    pub fn connect(addr: &TpmAddress) -> Result<Tpm, TpmError> {
        let connect_err = |source| TpmError::Connect { spec: addr.spec.clone(), source };
        let (tcti, relay) = match &addr.kind {
            AddressKind::Tcti(t) => (t.clone(), None),
            AddressKind::SwtpmUnix(path) => {
                let relay = unix_relay::UnixRelay::start(path)
                    .map_err(|e| TpmError::Unix { spec: addr.spec.clone(), source: e })?;
                let conf = format!("swtpm:host=127.0.0.1,port={}", relay.port());
                let tcti = TctiNameConf::from_str(&conf).map_err(connect_err)?;
                (tcti, Some(relay))
            }
        };
        let ctx = Context::new(tcti).map_err(connect_err)?;
        Ok(Tpm { ctx, _relay: relay })
    }

    /// The banks (we support) in which `pcr` is allocated. A bank of an
    /// algorithm we do not know (e.g. SM3) is an error: it would stay
    /// unmeasured while a verifier might trust it.
    pub fn active_banks(&mut self, pcr: u32) -> Result<Vec<HashAlg>, TpmError> {
        let slot = pcr_slot(pcr)?;
        let (data, _) = self
            .ctx
            .get_capability(CapabilityType::AssignedPcr, 0, 16)
            .map_err(cmd("GetCapability(PCRS)"))?;
        let CapabilityData::AssignedPcr(list) = data else {
            return Err(TpmError::NoBank(pcr));
        };
        let mut banks = Vec::new();
        for sel in list.get_selections() {
            if sel.is_selected(slot) {
                match from_hashing(sel.hashing_algorithm()) {
                    Some(a) => banks.push(a),
                    None => {
                        return Err(TpmError::Command {
                            command: "GetCapability(PCRS)",
                            source: tss_esapi::Error::WrapperError(
                                tss_esapi::WrapperErrorKind::UnsupportedParam,
                            ),
                        })
                    }
                }
            }
        }
        if banks.is_empty() {
            return Err(TpmError::NoBank(pcr));
        }
        banks.sort();
        Ok(banks)
    }

    /// Extends `pcr` with one digest per bank.
    pub fn extend(&mut self, pcr: u32, digests: &[Digest]) -> Result<(), TpmError> {
        let handle = pcr_handle(pcr)?;
        let mut vals = DigestValues::new();
        for d in digests {
            let td = tss_esapi::structures::Digest::try_from(d.as_bytes().to_vec())
                .map_err(cmd("PCR_Extend"))?;
            vals.set(hashing(d.alg()), td);
        }
        self.ctx
            .execute_with_nullauth_session(|ctx| ctx.pcr_extend(handle, vals))
            .map_err(cmd("PCR_Extend"))
    }

    /// Reads `pcr` in each of `banks`.
    pub fn read(&mut self, pcr: u32, banks: &[HashAlg]) -> Result<Vec<Digest>, TpmError> {
        let slot = pcr_slot(pcr)?;
        let mut out = Vec::with_capacity(banks.len());
        // One bank per read keeps the answer unambiguous.
        for &alg in banks {
            let sel = PcrSelectionList::builder()
                .with_size_of_select(PcrSelectSize::ThreeOctets)
                .with_selection(hashing(alg), &[slot])
                .build()
                .map_err(cmd("PCR_Read"))?;
            let (_, _, list) = self.ctx.pcr_read(sel).map_err(cmd("PCR_Read"))?;
            let d = list
                .value()
                .first()
                .ok_or(TpmError::ShortRead { want: banks.len(), got: out.len() })?;
            out.push(
                Digest::new(alg, d.value().to_vec())
                    .map_err(|_| TpmError::ShortRead { want: banks.len(), got: out.len() })?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!("swtpm:host=127.0.0.1,port=2321".parse::<TpmAddress>().is_ok());
        assert!("device:/dev/tpmrm0".parse::<TpmAddress>().is_ok());
        let e = "tpm0".parse::<TpmAddress>().unwrap_err().to_string();
        assert!(e.contains("unknown kind"), "{e}");
        assert!("swtpm:path=/run/swtpm.sock".parse::<TpmAddress>().is_ok());
        assert!("swtpm:path=".parse::<TpmAddress>().is_err());
        assert!(pcr_slot(16).is_err());
        assert!(pcr_slot(13).is_ok());
    }
}
