//! Evidence: a quote of the host's PCRs by its attestation key (`tellus
//! quote`), with the host launch log, as the tee `tpm` evidence of the KBS
//! protocol.
//!
//! The evidence is [`tellus_protocol::TpmEvidence`] (the wire type the
//! verifier reads too; its docs give every field's encoding), a superset of
//! Trustee's TPM evidence. `tellus quote` sets every tellus field.
//! Differences from Trustee, by design:
//!
//! - tellus' AK is ECC P-256 with ECDSA/SHA-256, so `signature` is a
//!   `TPMT_SIGNATURE` with `sigAlg` ECDSA. Trustee's attester and verifier
//!   accept only RSASSA AKs; the tellus verifier checks ECDSA.
//! - Trustee always quotes all 24 SHA-256 PCRs and pads its report data to
//!   32 bytes. tellus quotes the PCRs asked for (default: the launch PCR,
//!   13), lists them in `pcr_selection`, and puts the nonce into
//!   qualifyingData unchanged (the KBS binding is a 48-byte SHA-384).
//!   `--pcrs 0,1,...,23` gives Trustee's 24-entry `pcrs` list.
//!
//! The quote and the launch log are taken under a shared `flock` on the log,
//! the lock `tellus run` holds exclusively while it extends PCRs and appends
//! records, so the log replays to the quoted launch PCR.

use super::host::{self, HostError};
use super::{Tpm, TpmAddress, TpmError};
use crate::measured_launch::MeasureConfig;
use base64::Engine;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tellus_protocol::{QuotedPcrs, TpmEvidence, TpmQuote};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{
    AttestInfo, Data, HashScheme, PcrSelectSize, PcrSelectionList, PcrSlot, Signature,
    SignatureScheme,
};
use tss_esapi::traits::Marshall;
use tss_esapi::Context;

/// Most bytes of qualifying data `TPM2_Quote` takes (`TPM2B_DATA`).
pub const MAX_NONCE_LEN: usize = 64;

/// The PCR bank quoted.
pub const QUOTE_BANK: &str = "sha256";

/// How often the PCRs are read and quoted again when they change in between.
const ATTEMPTS: u32 = 5;

/// Why no evidence was produced.
#[derive(Debug, thiserror::Error)]
pub enum QuoteError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(
        "the nonce is not hex ({0}); give it as hex digits, e.g. --nonce $(openssl rand -hex 32)"
    )]
    NonceHex(hex::FromHexError),
    #[error(
        "the nonce is {0} bytes; TPM2_Quote takes at most {MAX_NONCE_LEN} bytes of qualifying \
         data: pass a digest of longer data (the KBS binding is a 48-byte SHA-384)"
    )]
    NonceTooLong(usize),
    #[error(
        "the nonce is empty: a quote without the verifier's fresh nonce proves nothing about \
         when it was made; pass the verifier's nonce with --nonce"
    )]
    NonceEmpty,
    #[error("PCR {0} does not exist: a TPM 2.0 has PCR 0..=23")]
    Pcr(u32),
    #[error("no PCR to quote: name at least one with --pcrs")]
    NoPcrs,
    #[error("the TPM has no SHA-256 value for PCR {0}: the quote needs the SHA-256 PCR bank")]
    NoSha256(u32),
    #[error(
        "the PCRs changed between reading and quoting them {0} times in a row: something is \
         extending them all the time; try again"
    )]
    Unstable(u32),
    #[error("the TPM's quote does not match the request ({0}); the TPM is misbehaving")]
    BadQuote(&'static str),
    #[error("cannot read the host launch log {path}: {source}")]
    Log { path: PathBuf, source: std::io::Error },
    #[error("cannot lock the host launch log {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
    #[error("cannot write the evidence to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

fn cmd(command: &'static str) -> impl FnOnce(tss_esapi::Error) -> QuoteError {
    move |source| QuoteError::Tpm(TpmError::Command { command, source })
}

/// A nonce given as hex on the command line (`--nonce`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nonce(pub Vec<u8>);

impl FromStr for Nonce {
    type Err = QuoteError;
    fn from_str(s: &str) -> Result<Nonce, QuoteError> {
        let bytes = hex::decode(s.trim()).map_err(QuoteError::NonceHex)?;
        check_nonce(&bytes)?;
        Ok(Nonce(bytes))
    }
}

fn check_nonce(nonce: &[u8]) -> Result<(), QuoteError> {
    match nonce.len() {
        0 => Err(QuoteError::NonceEmpty),
        n if n > MAX_NONCE_LEN => Err(QuoteError::NonceTooLong(n)),
        _ => Ok(()),
    }
}

fn pcr_slot(pcr: u32) -> Result<PcrSlot, QuoteError> {
    if pcr > 23 {
        return Err(QuoteError::Pcr(pcr));
    }
    PcrSlot::try_from(1u32 << pcr).map_err(|_| QuoteError::Pcr(pcr))
}

fn selection(pcrs: &[u32]) -> Result<PcrSelectionList, QuoteError> {
    let slots = pcrs.iter().map(|&p| pcr_slot(p)).collect::<Result<Vec<_>, _>>()?;
    PcrSelectionList::builder()
        .with_size_of_select(PcrSelectSize::ThreeOctets)
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(cmd("PCR selection"))
}

/// Reads `pcrs` in the SHA-256 bank, one PCR per command.
fn read_pcrs(ctx: &mut Context, pcrs: &[u32]) -> Result<Vec<Vec<u8>>, QuoteError> {
    let mut out = Vec::with_capacity(pcrs.len());
    for &p in pcrs {
        let (_, read, digests) = ctx.pcr_read(selection(&[p])?).map_err(cmd("PCR_Read"))?;
        let slot = pcr_slot(p)?;
        let selected = read
            .get_selections()
            .iter()
            .any(|s| s.hashing_algorithm() == HashingAlgorithm::Sha256 && s.is_selected(slot));
        match (selected, digests.value()) {
            (true, [d]) if d.value().len() == 32 => out.push(d.value().to_vec()),
            _ => return Err(QuoteError::NoSha256(p)),
        }
    }
    Ok(out)
}

/// A quote's marshalled `TPMS_ATTEST` and `TPMT_SIGNATURE`, and the
/// values of the quoted PCRs.
struct Quoted {
    message: Vec<u8>,
    signature: Vec<u8>,
    values: Vec<Vec<u8>>,
}

/// Quotes `pcrs` until the quote's pcrDigest matches the values read just
/// before it, so the values in the evidence are the quoted ones.
fn quote_stable(
    ctx: &mut Context,
    ak: KeyHandle,
    nonce: &[u8],
    pcrs: &[u32],
) -> Result<Quoted, QuoteError> {
    let sel = selection(pcrs)?;
    let scheme = SignatureScheme::EcDsa { hash_scheme: HashScheme::new(HashingAlgorithm::Sha256) };
    for _ in 0..ATTEMPTS {
        let values = read_pcrs(ctx, pcrs)?;
        let data = Data::try_from(nonce.to_vec()).map_err(cmd("Quote"))?;
        let (attest, signature) = ctx
            .execute_with_nullauth_session(|c| c.quote(ak, data, scheme, sel.clone()))
            .map_err(cmd("Quote"))?;
        let AttestInfo::Quote { info } = attest.attested() else {
            return Err(QuoteError::BadQuote("not a quote"));
        };
        if attest.extra_data().value() != nonce {
            return Err(QuoteError::BadQuote("qualifying data is not the nonce"));
        }
        if info.pcr_selection() != &sel {
            return Err(QuoteError::BadQuote("PCR selection differs"));
        }
        if !matches!(&signature, Signature::EcDsa(s) if s.hashing_algorithm() == HashingAlgorithm::Sha256)
        {
            return Err(QuoteError::BadQuote("signature is not ECDSA/SHA-256"));
        }
        let mut ctx_hash = ring::digest::Context::new(&ring::digest::SHA256);
        for v in &values {
            ctx_hash.update(v);
        }
        if ctx_hash.finish().as_ref() == info.pcr_digest().value() {
            let message = attest.marshall().map_err(cmd("Quote (marshal TPMS_ATTEST)"))?;
            let sig = signature.marshall().map_err(cmd("Quote (marshal TPMT_SIGNATURE)"))?;
            return Ok(Quoted { message, signature: sig, values });
        }
    }
    Err(QuoteError::Unstable(ATTEMPTS))
}

/// Opens the host log and takes a shared lock on it, on the file that is at
/// `path` after the lock (a launch may rotate it meanwhile); `None` when
/// there is no log.
fn lock_log_shared(path: &Path) -> Result<Option<Flock<File>>, QuoteError> {
    let io = |source| QuoteError::Log { path: path.into(), source };
    loop {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let locked = Flock::lock(f, FlockArg::LockShared)
            .map_err(|(_, source)| QuoteError::Lock { path: path.into(), source })?;
        let held = locked.metadata().map_err(io)?;
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                return Ok(Some(locked))
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        }
    }
}

/// The host's AK loaded once (under its EK, checked against the saved host
/// id) and saved with TPM2_ContextSave, so a later quote can TPM2_ContextLoad
/// it instead of recreating the EK (an RSA-2048 CreatePrimary, most of a
/// quote's time) and loading the AK again. `tellus launch` prepares it while
/// the guest boots. The blob is protected by the TPM itself: it loads only
/// into the TPM that saved it, until that TPM is reset or restarted; a
/// quote whose prepared AK does not load falls back to the full path,
/// which makes all the usual checks.
#[derive(Clone)]
pub struct PreparedAk(tss_esapi::utils::TpmsContext);

impl std::fmt::Debug for PreparedAk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreparedAk")
    }
}

/// Loads the saved AK and saves its context; flushes everything before it
/// returns and holds no TPM connection afterwards.
pub fn prepare_ak(addr: &TpmAddress, state_dir: &Path) -> Result<PreparedAk, QuoteError> {
    let saved = host::load_saved(state_dir)?;
    let mut tpm = Tpm::connect(addr)?;
    let context = host::with_ak(&mut tpm.ctx, &saved, |ctx, ak| {
        ctx.context_save(ak.into()).map_err(cmd("ContextSave(AK)"))
    })?;
    Ok(PreparedAk(context))
}

/// Quotes `pcrs` (SHA-256 bank, 0..=23) with the host's AK and
/// `qualifyingData = nonce` (1..=64 bytes), and returns the evidence with
/// the host launch log. Needs `tellus host init` first. The AK is flushed
/// before this returns.
pub fn quote(
    addr: &TpmAddress,
    state_dir: &Path,
    nonce: &[u8],
    pcrs: &[u32],
) -> Result<TpmEvidence, QuoteError> {
    quote_with(addr, state_dir, nonce, pcrs, None)
}

/// [`quote`], with the AK from `prepared` when it still loads.
pub fn quote_with(
    addr: &TpmAddress,
    state_dir: &Path,
    nonce: &[u8],
    pcrs: &[u32],
    prepared: Option<&PreparedAk>,
) -> Result<TpmEvidence, QuoteError> {
    check_nonce(nonce)?;
    let mut pcrs = pcrs.to_vec();
    pcrs.sort_unstable();
    pcrs.dedup();
    if pcrs.is_empty() {
        return Err(QuoteError::NoPcrs);
    }
    selection(&pcrs)?;
    let saved = host::load_saved(state_dir)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let ak_public = host::ak_spki_base64(&saved.files.ak_pub(), &saved.ak_public)?;
    let ak_tpm_public =
        b64.encode(host::tpm2b_public(&saved.ak_public).map_err(cmd("marshal TPM2B_PUBLIC"))?);

    let log_path = MeasureConfig {
        tpm: addr.clone(),
        pcr: crate::measure::DEFAULT_PCR,
        state_dir: state_dir.into(),
    }
    .log_path();
    let mut log = lock_log_shared(&log_path)?;

    let mut tpm = Tpm::connect(addr)?;
    let loaded = prepared.and_then(|p| tpm.ctx.context_load(p.0.clone()).ok());
    let Quoted { message, signature, values } = match loaded {
        Some(handle) => {
            let mut akg = host::Transient::new(&mut tpm.ctx, handle.into(), "attestation key");
            let ak = akg.handle();
            quote_stable(&mut akg, ak, nonce, &pcrs)?
        }
        None => host::with_ak(&mut tpm.ctx, &saved, |ctx, ak| quote_stable(ctx, ak, nonce, &pcrs))?,
    };
    drop(tpm);

    let mut log_bytes = Vec::new();
    if let Some(f) = log.as_mut() {
        let io = |source| QuoteError::Log { path: log_path.clone(), source };
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.read_to_end(&mut log_bytes).map_err(io)?;
    }
    drop(log);

    Ok(TpmEvidence {
        ak_public,
        tpm_quote: TpmQuote {
            signature: b64.encode(signature),
            message: b64.encode(message),
            pcrs: values.iter().map(hex::encode).collect(),
        },
        pcr_selection: Some(QuotedPcrs { bank: QUOTE_BANK.into(), pcrs }),
        ak_tpm_public: Some(ak_tpm_public),
        // See crate::tpm::host.
        host_id: Some(saved.host_id),
        event_log: Some(if log_bytes.is_empty() { String::new() } else { b64.encode(log_bytes) }),
        launch_ticket: None,
        launch_recnum: None,
    })
}

/// Writes `evidence` as pretty JSON to `path` (`-`: stdout).
pub fn write_evidence(path: &Path, evidence: &TpmEvidence) -> Result<(), QuoteError> {
    let err = |source| QuoteError::Write { path: path.into(), source };
    let mut text = serde_json::to_string_pretty(evidence).map_err(|e| err(e.into()))?;
    text.push('\n');
    if path == Path::new("-") {
        std::io::stdout().lock().write_all(text.as_bytes()).map_err(err)
    } else {
        std::fs::write(path, text).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces() {
        assert_eq!("00ff".parse::<Nonce>().unwrap().0, [0, 0xff]);
        let e = "xyz".parse::<Nonce>().unwrap_err().to_string();
        assert!(e.contains("not hex"), "{e}");
        let e = "ab".repeat(65).parse::<Nonce>().unwrap_err().to_string();
        assert!(e.contains("65 bytes") && e.contains("at most 64"), "{e}");
        assert!("ab".repeat(64).parse::<Nonce>().is_ok());
        assert!(matches!("".parse::<Nonce>(), Err(QuoteError::NonceEmpty)));
    }

    #[test]
    fn pcr_selection_limits() {
        assert!(selection(&[0, 13, 23]).is_ok());
        assert!(matches!(selection(&[24]), Err(QuoteError::Pcr(24))));
    }
}
