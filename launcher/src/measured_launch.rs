//! Measured launch: extend launch records into the host TPM and append them
//! to the host-wide Canonical Event Log, then prove the two agree.
//!
//! The host log (`<state-dir>/launch-log.cel`, CEL-TLV) is shared by every
//! launch on the host. A launch takes an exclusive `flock` on it, checks that
//! the log replays to the TPM's PCR, extends and appends its records one by
//! one, reads the PCR back and checks the replay of the whole log again. Any
//! disagreement means something extended the PCR outside tellus or the log
//! was changed, and the launch stops before a vCPU runs.
//!
//! One log per TPM reset: the PCR can only return to zero by a TPM reset
//! (PCR 8..=15 are not resettable by software), so a zero PCR in front of a
//! non-empty log moves the old log aside and starts a new one.

use crate::tpm::{Tpm, TpmAddress, TpmError};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tellus_measured_boot::cel::{self, CelError, CelRecord};
use tellus_measured_boot::records::LaunchRecord;
use tellus_measured_boot::{Digest, HashAlg};

/// Where and how a launch is measured.
#[derive(Debug, Clone)]
pub struct MeasureConfig {
    pub tpm: TpmAddress,
    pub pcr: u32,
    /// Holds the host log.
    pub state_dir: PathBuf,
}

impl MeasureConfig {
    /// The host-wide launch log.
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("launch-log.cel")
    }
}

/// Why a measurement failed. No VM runs after one of these.
#[derive(Debug, thiserror::Error)]
pub enum MeasuredLaunchError {
    #[error("cannot use state directory {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("host launch log {path}: {source}")]
    LogIo { path: PathBuf, source: std::io::Error },
    #[error("cannot lock host launch log {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
    #[error(
        "host launch log {path} is corrupt ({source}); move it aside only after finding out why"
    )]
    LogCorrupt { path: PathBuf, source: CelError },
    #[error("host launch log {path} does not replay: {source}")]
    LogReplay { path: PathBuf, source: tellus_measured_boot::pcr::PcrError },
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(
        "PCR {pcr} ({alg}) in the TPM is {tpm} but the host log {path} replays to {replayed}: \
         something extended PCR {pcr} outside tellus, or the log was changed; no VM was started"
    )]
    ReplayMismatch { pcr: u32, alg: HashAlg, tpm: Digest, replayed: Digest, path: PathBuf },
}

/// What a measurement did.
#[derive(Debug, Clone)]
pub struct Measured {
    pub banks: Vec<HashAlg>,
    /// Record numbers given to this launch's records.
    pub recnums: std::ops::Range<u64>,
    /// The PCR after the last record, per bank (equal to the log's replay).
    pub pcr_values: Vec<Digest>,
    pub log: PathBuf,
    /// The log was started afresh because the TPM had been reset.
    pub rotated: bool,
}

fn log_err(path: &Path) -> impl Fn(std::io::Error) -> MeasuredLaunchError + '_ {
    move |source| MeasuredLaunchError::LogIo { path: path.into(), source }
}

/// Opens and locks the log, making sure the lock is on the file that is at
/// `path` now (another launch may have rotated it while we waited).
fn lock_log(path: &Path) -> Result<Flock<File>, MeasuredLaunchError> {
    loop {
        let f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(log_err(path))?;
        let locked = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, source)| MeasuredLaunchError::Lock { path: path.into(), source })?;
        let same = match (locked.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            return Ok(locked);
        }
    }
}

fn check(
    pcr: u32,
    banks: &[HashAlg],
    tpm_values: &[Digest],
    records: &[CelRecord],
    path: &Path,
) -> Result<(), MeasuredLaunchError> {
    let replayed = cel::replay(records)
        .map_err(|source| MeasuredLaunchError::LogReplay { path: path.into(), source })?;
    for (alg, tpm) in banks.iter().zip(tpm_values) {
        let r = replayed.value(*alg, pcr);
        if &r != tpm {
            return Err(MeasuredLaunchError::ReplayMismatch {
                pcr,
                alg: *alg,
                tpm: tpm.clone(),
                replayed: r,
                path: path.into(),
            });
        }
    }
    Ok(())
}

/// Extends `records` into the TPM and appends them to the host log, under the
/// log's lock; verifies the log against the PCR before and after. The TPM
/// connection is closed when this returns.
pub fn measure(
    cfg: &MeasureConfig,
    records: &[LaunchRecord],
) -> Result<Measured, MeasuredLaunchError> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|source| MeasuredLaunchError::StateDir { path: cfg.state_dir.clone(), source })?;
    let path = cfg.log_path();
    let mut file = lock_log(&path)?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(log_err(&path))?;
    file.read_to_end(&mut bytes).map_err(log_err(&path))?;
    let mut log = cel::decode(&bytes)
        .map_err(|source| MeasuredLaunchError::LogCorrupt { path: path.clone(), source })?;

    let mut tpm = Tpm::connect(&cfg.tpm)?;
    let banks = tpm.active_banks(cfg.pcr)?;
    let now = tpm.read(cfg.pcr, &banks)?;
    let mut rotated = false;
    if let Err(e) = check(cfg.pcr, &banks, &now, &log, &path) {
        let reset = now.iter().all(|d| d == &Digest::zero(d.alg()));
        if !reset || log.is_empty() {
            return Err(e);
        }
        // The TPM was reset since the log was written: keep the old log, start anew.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let old = path.with_extension(format!("cel.before-reset-{stamp}"));
        std::fs::rename(&path, &old).map_err(log_err(&path))?;
        let fresh = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(log_err(&path))?;
        file = Flock::lock(fresh, FlockArg::LockExclusive)
            .map_err(|(_, source)| MeasuredLaunchError::Lock { path: path.clone(), source })?;
        log.clear();
        rotated = true;
    }

    let first = log.last().map_or(0, |r| r.recnum + 1);
    for (n, rec) in (first..).zip(records) {
        let cel_rec = CelRecord::tellus(n, cfg.pcr, rec, &banks);
        let digests: Vec<Digest> = cel_rec.digests.iter().filter_map(|d| d.digest()).collect();
        tpm.extend(cfg.pcr, &digests)?;
        file.write_all(&cel::encode(std::slice::from_ref(&cel_rec))).map_err(log_err(&path))?;
        log.push(cel_rec);
    }
    file.sync_data().map_err(log_err(&path))?;
    let after = tpm.read(cfg.pcr, &banks)?;
    check(cfg.pcr, &banks, &after, &log, &path)?;
    drop(tpm);
    Ok(Measured {
        banks,
        recnums: first..first + records.len() as u64,
        pcr_values: after,
        log: path,
        rotated,
    })
}
