//! TCG PC Client Platform Firmware Profile binary event logs, as firmware
//! leaves them in `/sys/kernel/security/tpm0/binary_bios_measurements`.
//!
//! Both layouts are read:
//!
//! - the TCG 1.2 SHA-1-only log: every event is a `TCG_PCR_EVENT`
//!   (`pcrIndex` u32, `eventType` u32, 20-byte SHA-1 digest, `eventSize` u32,
//!   event data);
//! - the crypto-agile log: the first event is a `TCG_PCR_EVENT` of type
//!   `EV_NO_ACTION` on PCR 0 whose data is the `Spec ID Event03` structure
//!   (which lists the digest algorithms and their sizes); every later event is
//!   a `TCG_PCR_EVENT2` (`pcrIndex`, `eventType`, digest count, then
//!   `hashAlg` u16 + digest per algorithm, `eventSize`, event data).
//!
//! The log is **untrusted input**: every length is checked against the bytes
//! that are left before anything is read or allocated, nothing panics on any
//! input, and every error says where (event index, byte offset) and what.
//! The first event of the log has index 0 in both layouts (in a crypto-agile
//! log that is the Spec ID event), as `tpm2 eventlog` numbers them.
//!
//! [`PcClientLog::replay`] recomputes the PCRs from the logged digests. It
//! also recomputes the digests of the event types whose digest is defined by
//! their event data (see [`DigestMismatch`] and the comment on
//! `check_event_digest` for the exact set) and reports each one that does
//! not match, without failing the replay: a log whose replay matches a quote
//! proves the digests, not the descriptions next to them.

use crate::digest::{Digest, HashAlg};
use crate::pcr::{PcrBanks, PcrError, PCR_COUNT};

/// Most events a log may have; a longer log is rejected ([`PcClientError::TooManyEvents`]).
pub const MAX_EVENTS: usize = 1_000_000;

/// Most algorithms a Spec ID event may declare. The TPM 2.0 algorithm
/// registry has fewer than a dozen hash algorithms; a larger count is an
/// attack or garbage.
pub const MAX_SPEC_ID_ALGORITHMS: u32 = 32;

/// Largest digest size a Spec ID event may declare for an algorithm we do not
/// know (the largest TPM hash, SHA-512/SHA3-512, has 64 bytes).
pub const MAX_DIGEST_SIZE: u16 = 64;

/// Signature at the start of the Spec ID event's data (including its NUL).
pub const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";

/// Signature at the start of a StartupLocality `EV_NO_ACTION` event's data.
pub const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";

/// go-attestation's workaround for firmware that omits the ExitBootServices
/// events from the log while still extending them into PCR 5: the two
/// `EV_EFI_ACTION` strings it injects (see [`append_missing_exit_boot_services`]).
pub const EXIT_BOOT_SERVICES_INVOCATION: &str = "Exit Boot Services Invocation";
/// Second string of the ExitBootServices workaround.
pub const EXIT_BOOT_SERVICES_SUCCESS: &str = "Exit Boot Services Returned with Success";

/// Event types of the TCG PC Client Platform Firmware Profile (v1.06, table
/// "Event Types").
pub mod event_type {
    pub const EV_PREBOOT_CERT: u32 = 0x0000_0000;
    pub const EV_POST_CODE: u32 = 0x0000_0001;
    pub const EV_UNUSED: u32 = 0x0000_0002;
    pub const EV_NO_ACTION: u32 = 0x0000_0003;
    pub const EV_SEPARATOR: u32 = 0x0000_0004;
    pub const EV_ACTION: u32 = 0x0000_0005;
    pub const EV_EVENT_TAG: u32 = 0x0000_0006;
    pub const EV_S_CRTM_CONTENTS: u32 = 0x0000_0007;
    pub const EV_S_CRTM_VERSION: u32 = 0x0000_0008;
    pub const EV_CPU_MICROCODE: u32 = 0x0000_0009;
    pub const EV_PLATFORM_CONFIG_FLAGS: u32 = 0x0000_000A;
    pub const EV_TABLE_OF_DEVICES: u32 = 0x0000_000B;
    pub const EV_COMPACT_HASH: u32 = 0x0000_000C;
    pub const EV_IPL: u32 = 0x0000_000D;
    pub const EV_IPL_PARTITION_DATA: u32 = 0x0000_000E;
    pub const EV_NONHOST_CODE: u32 = 0x0000_000F;
    pub const EV_NONHOST_CONFIG: u32 = 0x0000_0010;
    pub const EV_NONHOST_INFO: u32 = 0x0000_0011;
    pub const EV_OMIT_BOOT_DEVICE_EVENTS: u32 = 0x0000_0012;
    pub const EV_EFI_EVENT_BASE: u32 = 0x8000_0000;
    pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
    pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
    pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
    pub const EV_EFI_BOOT_SERVICES_DRIVER: u32 = 0x8000_0004;
    pub const EV_EFI_RUNTIME_SERVICES_DRIVER: u32 = 0x8000_0005;
    pub const EV_EFI_GPT_EVENT: u32 = 0x8000_0006;
    pub const EV_EFI_ACTION: u32 = 0x8000_0007;
    pub const EV_EFI_PLATFORM_FIRMWARE_BLOB: u32 = 0x8000_0008;
    pub const EV_EFI_HANDOFF_TABLES: u32 = 0x8000_0009;
    pub const EV_EFI_PLATFORM_FIRMWARE_BLOB2: u32 = 0x8000_000A;
    pub const EV_EFI_HANDOFF_TABLES2: u32 = 0x8000_000B;
    pub const EV_EFI_VARIABLE_BOOT2: u32 = 0x8000_000C;
    pub const EV_EFI_GPT_EVENT2: u32 = 0x8000_000D;
    pub const EV_EFI_HCRTM_EVENT: u32 = 0x8000_0010;
    pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00E0;
    pub const EV_EFI_SPDM_FIRMWARE_BLOB: u32 = 0x8000_00E1;
    pub const EV_EFI_SPDM_FIRMWARE_CONFIG: u32 = 0x8000_00E2;
    pub const EV_EFI_SPDM_DEVICE_POLICY: u32 = 0x8000_00E3;
    pub const EV_EFI_SPDM_DEVICE_AUTHORITY: u32 = 0x8000_00E4;
}

use event_type::*;

/// The TCG name of an event type (`EV_SEPARATOR`), or `"EV_UNKNOWN"`.
pub fn event_type_name(event_type: u32) -> &'static str {
    match event_type {
        EV_PREBOOT_CERT => "EV_PREBOOT_CERT",
        EV_POST_CODE => "EV_POST_CODE",
        EV_UNUSED => "EV_UNUSED",
        EV_NO_ACTION => "EV_NO_ACTION",
        EV_SEPARATOR => "EV_SEPARATOR",
        EV_ACTION => "EV_ACTION",
        EV_EVENT_TAG => "EV_EVENT_TAG",
        EV_S_CRTM_CONTENTS => "EV_S_CRTM_CONTENTS",
        EV_S_CRTM_VERSION => "EV_S_CRTM_VERSION",
        EV_CPU_MICROCODE => "EV_CPU_MICROCODE",
        EV_PLATFORM_CONFIG_FLAGS => "EV_PLATFORM_CONFIG_FLAGS",
        EV_TABLE_OF_DEVICES => "EV_TABLE_OF_DEVICES",
        EV_COMPACT_HASH => "EV_COMPACT_HASH",
        EV_IPL => "EV_IPL",
        EV_IPL_PARTITION_DATA => "EV_IPL_PARTITION_DATA",
        EV_NONHOST_CODE => "EV_NONHOST_CODE",
        EV_NONHOST_CONFIG => "EV_NONHOST_CONFIG",
        EV_NONHOST_INFO => "EV_NONHOST_INFO",
        EV_OMIT_BOOT_DEVICE_EVENTS => "EV_OMIT_BOOT_DEVICE_EVENTS",
        EV_EFI_EVENT_BASE => "EV_EFI_EVENT_BASE",
        EV_EFI_VARIABLE_DRIVER_CONFIG => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        EV_EFI_VARIABLE_BOOT => "EV_EFI_VARIABLE_BOOT",
        EV_EFI_BOOT_SERVICES_APPLICATION => "EV_EFI_BOOT_SERVICES_APPLICATION",
        EV_EFI_BOOT_SERVICES_DRIVER => "EV_EFI_BOOT_SERVICES_DRIVER",
        EV_EFI_RUNTIME_SERVICES_DRIVER => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        EV_EFI_GPT_EVENT => "EV_EFI_GPT_EVENT",
        EV_EFI_ACTION => "EV_EFI_ACTION",
        EV_EFI_PLATFORM_FIRMWARE_BLOB => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        EV_EFI_HANDOFF_TABLES => "EV_EFI_HANDOFF_TABLES",
        EV_EFI_PLATFORM_FIRMWARE_BLOB2 => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        EV_EFI_HANDOFF_TABLES2 => "EV_EFI_HANDOFF_TABLES2",
        EV_EFI_VARIABLE_BOOT2 => "EV_EFI_VARIABLE_BOOT2",
        EV_EFI_GPT_EVENT2 => "EV_EFI_GPT_EVENT2",
        EV_EFI_HCRTM_EVENT => "EV_EFI_HCRTM_EVENT",
        EV_EFI_VARIABLE_AUTHORITY => "EV_EFI_VARIABLE_AUTHORITY",
        EV_EFI_SPDM_FIRMWARE_BLOB => "EV_EFI_SPDM_FIRMWARE_BLOB",
        EV_EFI_SPDM_FIRMWARE_CONFIG => "EV_EFI_SPDM_FIRMWARE_CONFIG",
        EV_EFI_SPDM_DEVICE_POLICY => "EV_EFI_SPDM_DEVICE_POLICY",
        EV_EFI_SPDM_DEVICE_AUTHORITY => "EV_EFI_SPDM_DEVICE_AUTHORITY",
        _ => "EV_UNKNOWN",
    }
}

/// What went wrong with an event log, and where. Byte offsets count from the
/// start of the log; event indices count from 0 (the first event of the log).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PcClientError {
    #[error("the event log is empty")]
    Empty,
    #[error("event {index}: the log ends at byte offset {offset} in the middle of {what}")]
    Truncated { index: usize, offset: usize, what: &'static str },
    #[error(
        "event {index}: eventSize {size} (at byte offset {offset}) is larger than the \
         {remaining} bytes left in the log"
    )]
    EventTooLarge { index: usize, offset: usize, size: u32, remaining: usize },
    #[error(
        "event {index}: digest algorithm 0x{alg_id:04x} (at byte offset {offset}) was not \
         declared by the Spec ID event"
    )]
    UnknownAlgorithm { index: usize, offset: usize, alg_id: u16 },
    #[error("event {index}: a second digest for algorithm 0x{alg_id:04x} at byte offset {offset}")]
    DuplicateDigest { index: usize, offset: usize, alg_id: u16 },
    #[error(
        "event {index}: digest count {count} (at byte offset {offset}) exceeds the {declared} \
         algorithms the Spec ID event declares"
    )]
    TooManyDigests { index: usize, offset: usize, count: u32, declared: usize },
    #[error("Spec ID event (event 0): {reason}")]
    SpecIdInconsistent { reason: String },
    #[error("the event log has more than {limit} events")]
    TooManyEvents { limit: usize },
    #[error("event {index}: PCR index {pcr} is out of range (0..{PCR_COUNT})")]
    PcrOutOfRange { index: usize, pcr: u32 },
    #[error("event {index}: StartupLocality event has {len} bytes of data, expected 17")]
    BadStartupLocality { index: usize, len: usize },
    #[error("event {index}: {what} comes after PCR 0 was already initialised or extended")]
    Pcr0InitMisplaced { index: usize, what: &'static str },
    #[error("event {index}: {source}")]
    Pcr {
        index: usize,
        #[source]
        source: PcrError,
    },
}

/// Which of the two layouts a log uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// TCG 1.2 layout: `TCG_PCR_EVENT` with one SHA-1 digest per event.
    Sha1,
    /// Crypto-agile layout: Spec ID event, then `TCG_PCR_EVENT2`.
    CryptoAgile,
}

/// One `{algorithmId, digestSize}` entry of the Spec ID event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecIdAlgorithm {
    pub alg_id: u16,
    pub digest_size: u16,
}

impl SpecIdAlgorithm {
    /// The algorithm, if it is one we can hash (and so replay).
    pub fn hash_alg(&self) -> Option<HashAlg> {
        HashAlg::from_tpm_alg_id(self.alg_id)
    }
}

/// The `TCG_EfiSpecIDEventStruct` of a crypto-agile log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecId {
    pub platform_class: u32,
    pub spec_version_minor: u8,
    pub spec_version_major: u8,
    pub spec_errata: u8,
    pub uintn_size: u8,
    /// Declared algorithms in log order; unknown ones (e.g. SM3) included.
    pub algorithms: Vec<SpecIdAlgorithm>,
    pub vendor_info: Vec<u8>,
    /// True when `vendorInfo` runs past the Spec ID event's `eventSize` and
    /// was read from the bytes that follow it. tpm2-tools takes the structure,
    /// not `eventSize`, as the event's end, and its `specid-vendordata.bin`
    /// fixture depends on that (eventSize 37, then 4 vendor bytes); we accept
    /// the same layout and say so here.
    pub vendor_info_outside_event: bool,
}

impl SpecId {
    /// The declared entry for `alg_id`.
    pub fn algorithm(&self, alg_id: u16) -> Option<&SpecIdAlgorithm> {
        self.algorithms.iter().find(|a| a.alg_id == alg_id)
    }
}

/// One event of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcClientEvent {
    /// Position in the log, from 0 (the first event, the Spec ID event in a
    /// crypto-agile log).
    pub index: usize,
    /// Byte offset of the event header in the log.
    pub offset: usize,
    pub pcr: u32,
    pub event_type: u32,
    /// `(TPM_ALG_ID, digest)` in log order; algorithms we cannot hash are kept.
    pub digests: Vec<(u16, Vec<u8>)>,
    pub data: Vec<u8>,
}

impl PcClientEvent {
    /// The logged digest for `alg`, if the event carries one.
    pub fn digest(&self, alg: HashAlg) -> Option<&[u8]> {
        let id = alg.tpm_alg_id();
        self.digests.iter().find(|(a, _)| *a == id).map(|(_, d)| d.as_slice())
    }

    /// TCG name of the event type.
    pub fn type_name(&self) -> &'static str {
        event_type_name(self.event_type)
    }
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcClientLog {
    pub format: LogFormat,
    /// The Spec ID event's contents (crypto-agile logs only).
    pub spec_id: Option<SpecId>,
    /// Every event, the Spec ID event (index 0) included.
    pub events: Vec<PcClientEvent>,
}

/// A logged digest that differs from the digest its event data defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DigestMismatch {
    pub index: usize,
    pub pcr: u32,
    pub event_type: u32,
    pub alg: HashAlg,
}

/// Result of [`PcClientLog::replay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Replayed PCRs; PCRs no event touched are absent (see [`Replay::pcr_value`]).
    pub pcrs: PcrBanks,
    /// Events whose logged digest is not the one their data defines.
    pub mismatches: Vec<DigestMismatch>,
    /// Banks of [`PcClientLog::banks`] left out of `pcrs` because an event
    /// that is extended carries no digest for them.
    pub incomplete_banks: Vec<IncompleteBank>,
}

/// A declared bank that cannot be replayed: event `index` (on `pcr`) has no
/// digest for it. The PCR values of such a bank are not computed at all,
/// rather than computed from the events that happen to carry a digest: they
/// would match no TPM. (tpm2-tools' `event-uefiaction.bin` declares four
/// banks and logs sha1 and sha256 digests only.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IncompleteBank {
    pub alg: HashAlg,
    pub index: usize,
    pub pcr: u32,
}

impl Replay {
    /// Value of `pcr` in bank `alg`: the replayed value, or the PCR's reset
    /// value ([`pcr_reset_value`]) if no event touched it.
    pub fn pcr_value(&self, alg: HashAlg, pcr: u32) -> Digest {
        self.pcrs.get(alg, pcr).cloned().unwrap_or_else(|| pcr_reset_value(alg, pcr))
    }
}

/// Value of a PC Client PCR after `TPM2_Startup`, before any extension: all
/// ones for the dynamic-root PCRs 17..=22 (they only become zero when a
/// D-RTM sequence resets them), zero for every other PCR.
pub fn pcr_reset_value(alg: HashAlg, pcr: u32) -> Digest {
    if (17..=22).contains(&pcr) {
        // The length matches `alg` by construction, so `new` cannot fail;
        // fall back to zero rather than unwrap.
        Digest::new(alg, vec![0xff; alg.size()]).unwrap_or_else(|_| Digest::zero(alg))
    } else {
        Digest::zero(alg)
    }
}

/// go-attestation's workaround for logs that lack the two ExitBootServices
/// `EV_EFI_ACTION` events while the firmware did extend them into PCR 5
/// (`attest/eventlog_workarounds.go`, test `TestEBSVerifyWorkaround`):
/// extends H("Exit Boot Services Invocation") and then
/// H("Exit Boot Services Returned with Success") into PCR 5 of every bank in
/// `pcrs`. Apply it only to a replay that did not match the quoted PCR 5 and
/// only then compare again: it adds events the log does not contain.
pub fn append_missing_exit_boot_services(pcrs: &mut PcrBanks) -> Result<(), PcrError> {
    let algs: Vec<HashAlg> = pcrs.algorithms().collect();
    for alg in algs {
        for s in [EXIT_BOOT_SERVICES_INVOCATION, EXIT_BOOT_SERVICES_SUCCESS] {
            pcrs.extend(alg, 5, Digest::of(alg, s.as_bytes()).as_bytes())?;
        }
    }
    Ok(())
}

/// A `UEFI_VARIABLE_DATA` structure (the event data of the
/// `EV_EFI_VARIABLE_*` events): VariableName GUID, UnicodeNameLength (u64,
/// in UTF-16 code units), VariableDataLength (u64), UnicodeName, VariableData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiVariableData<'a> {
    pub vendor_guid: [u8; 16],
    /// UTF-16 code units of the variable name.
    pub name: Vec<u16>,
    pub data: &'a [u8],
    /// Bytes the structure occupies (32 + 2 × name length + data length);
    /// the event data may be longer.
    pub encoded_len: usize,
}

impl<'a> UefiVariableData<'a> {
    /// Parses the structure at the start of `bytes`, or `None` if the
    /// declared lengths do not fit. Bytes after the structure are ignored.
    pub fn parse(bytes: &'a [u8]) -> Option<UefiVariableData<'a>> {
        let vendor_guid: [u8; 16] = bytes.get(0..16)?.try_into().ok()?;
        let name_len = u64::from_le_bytes(bytes.get(16..24)?.try_into().ok()?);
        let data_len = u64::from_le_bytes(bytes.get(24..32)?.try_into().ok()?);
        let name_bytes = usize::try_from(name_len).ok()?.checked_mul(2)?;
        let name_end = 32usize.checked_add(name_bytes)?;
        let data_end = name_end.checked_add(usize::try_from(data_len).ok()?)?;
        let name = bytes
            .get(32..name_end)?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let data = bytes.get(name_end..data_end)?;
        Some(UefiVariableData { vendor_guid, name, data, encoded_len: data_end })
    }

    /// The variable name (lossy UTF-16 decode).
    pub fn name_string(&self) -> String {
        String::from_utf16_lossy(&self.name)
    }
}

/// Bounds-checked little-endian reader over the log.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(
        &mut self,
        n: usize,
        index: usize,
        what: &'static str,
    ) -> Result<&'a [u8], PcClientError> {
        let offset = self.pos;
        let s = offset
            .checked_add(n)
            .and_then(|end| self.buf.get(offset..end))
            .ok_or(PcClientError::Truncated { index, offset, what })?;
        self.pos = offset + s.len();
        Ok(s)
    }

    fn array<const N: usize>(
        &mut self,
        index: usize,
        what: &'static str,
    ) -> Result<[u8; N], PcClientError> {
        let offset = self.pos;
        let s = self.take(N, index, what)?;
        s.try_into().map_err(|_| PcClientError::Truncated { index, offset, what })
    }

    fn u32(&mut self, index: usize, what: &'static str) -> Result<u32, PcClientError> {
        Ok(u32::from_le_bytes(self.array(index, what)?))
    }

    fn u16(&mut self, index: usize, what: &'static str) -> Result<u16, PcClientError> {
        Ok(u16::from_le_bytes(self.array(index, what)?))
    }

    fn u8(&mut self, index: usize, what: &'static str) -> Result<u8, PcClientError> {
        let [b] = self.array::<1>(index, what)?;
        Ok(b)
    }

    /// `eventSize` then the event data, refusing a size larger than what is left.
    fn event_data(&mut self, index: usize) -> Result<&'a [u8], PcClientError> {
        let size = self.u32(index, "eventSize")?;
        let offset = self.pos;
        let remaining = self.remaining();
        match usize::try_from(size) {
            Ok(n) if n <= remaining => self.take(n, index, "event data"),
            _ => Err(PcClientError::EventTooLarge { index, offset, size, remaining }),
        }
    }
}

fn spec_err(reason: impl Into<String>) -> PcClientError {
    PcClientError::SpecIdInconsistent { reason: reason.into() }
}

/// Reads one `TCG_PCR_EVENT` (SHA-1 layout).
fn read_tcg_pcr_event(r: &mut Reader<'_>, index: usize) -> Result<PcClientEvent, PcClientError> {
    let offset = r.pos;
    let pcr = r.u32(index, "pcrIndex")?;
    let event_type = r.u32(index, "eventType")?;
    let digest = r.take(20, index, "SHA-1 digest")?.to_vec();
    let data = r.event_data(index)?.to_vec();
    Ok(PcClientEvent {
        index,
        offset,
        pcr,
        event_type,
        digests: vec![(HashAlg::Sha1.tpm_alg_id(), digest)],
        data,
    })
}

/// Reads one `TCG_PCR_EVENT2` (crypto-agile layout).
fn read_tcg_pcr_event2(
    r: &mut Reader<'_>,
    index: usize,
    spec: &SpecId,
) -> Result<PcClientEvent, PcClientError> {
    let offset = r.pos;
    let pcr = r.u32(index, "pcrIndex")?;
    let event_type = r.u32(index, "eventType")?;
    let count_offset = r.pos;
    let count = r.u32(index, "digest count")?;
    let declared = spec.algorithms.len();
    // Each algorithm may appear once, so a larger count cannot be valid;
    // checking first also bounds the allocation below.
    if usize::try_from(count).map_or(true, |c| c > declared) {
        return Err(PcClientError::TooManyDigests { index, offset: count_offset, count, declared });
    }
    let mut digests: Vec<(u16, Vec<u8>)> = Vec::with_capacity(declared);
    for _ in 0..count {
        let alg_offset = r.pos;
        let alg_id = r.u16(index, "digest algorithm id")?;
        let decl = spec.algorithm(alg_id).ok_or(PcClientError::UnknownAlgorithm {
            index,
            offset: alg_offset,
            alg_id,
        })?;
        if digests.iter().any(|(a, _)| *a == alg_id) {
            return Err(PcClientError::DuplicateDigest { index, offset: alg_offset, alg_id });
        }
        let d = r.take(usize::from(decl.digest_size), index, "digest")?;
        digests.push((alg_id, d.to_vec()));
    }
    let data = r.event_data(index)?.to_vec();
    Ok(PcClientEvent { index, offset, pcr, event_type, digests, data })
}

/// Parses the Spec ID structure from the first event's `data`. `rest` reads
/// the log after that event, for a `vendorInfo` that overruns `eventSize`.
fn parse_spec_id(data: &[u8], rest: &mut Reader<'_>) -> Result<SpecId, PcClientError> {
    let mut d = Reader { buf: data, pos: 0 };
    // The event itself is complete; a structure that does not fit in its
    // data is an inconsistent Spec ID event, not a truncated log.
    let short =
        |what: &str| spec_err(format!("event data ({} bytes) too short for {what}", data.len()));
    let sig = d.take(16, 0, "signature").map_err(|_| short("the signature"))?;
    if sig != SPEC_ID_SIGNATURE {
        return Err(spec_err(format!(
            "signature is {:?}, expected \"Spec ID Event03\\0\"",
            String::from_utf8_lossy(sig)
        )));
    }
    let platform_class = d.u32(0, "platformClass").map_err(|_| short("platformClass"))?;
    let spec_version_minor = d.u8(0, "specVersionMinor").map_err(|_| short("specVersionMinor"))?;
    let spec_version_major = d.u8(0, "specVersionMajor").map_err(|_| short("specVersionMajor"))?;
    let spec_errata = d.u8(0, "specErrata").map_err(|_| short("specErrata"))?;
    let uintn_size = d.u8(0, "uintnSize").map_err(|_| short("uintnSize"))?;
    let n = d.u32(0, "numberOfAlgorithms").map_err(|_| short("numberOfAlgorithms"))?;
    if n == 0 {
        return Err(spec_err("numberOfAlgorithms is 0"));
    }
    if n > MAX_SPEC_ID_ALGORITHMS {
        return Err(spec_err(format!(
            "numberOfAlgorithms is {n}, more than the {MAX_SPEC_ID_ALGORITHMS} accepted"
        )));
    }
    // n <= 32, so this cannot overflow; the check keeps the allocation honest.
    let need = n as usize * 4;
    if d.remaining() < need {
        return Err(spec_err(format!(
            "{n} algorithms need {need} bytes but only {} are left in the event data",
            d.remaining()
        )));
    }
    let mut algorithms: Vec<SpecIdAlgorithm> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let alg_id = d.u16(0, "algorithmId").map_err(|_| short("the algorithm list"))?;
        let digest_size = d.u16(0, "digestSize").map_err(|_| short("the algorithm list"))?;
        if algorithms.iter().any(|a| a.alg_id == alg_id) {
            return Err(spec_err(format!("algorithm 0x{alg_id:04x} is declared twice")));
        }
        match HashAlg::from_tpm_alg_id(alg_id) {
            Some(alg) if usize::from(digest_size) != alg.size() => {
                return Err(spec_err(format!(
                    "algorithm {i} ({alg}, 0x{alg_id:04x}) declares digestSize {digest_size}, \
                     but {alg} digests have {} bytes",
                    alg.size()
                )));
            }
            Some(_) => {}
            None if digest_size == 0 || digest_size > MAX_DIGEST_SIZE => {
                return Err(spec_err(format!(
                    "algorithm {i} (0x{alg_id:04x}) declares digestSize {digest_size}, \
                     outside 1..={MAX_DIGEST_SIZE}"
                )));
            }
            None => {}
        }
        algorithms.push(SpecIdAlgorithm { alg_id, digest_size });
    }
    let vendor_size = usize::from(d.u8(0, "vendorInfoSize").map_err(|_| short("vendorInfoSize"))?);
    let inside = d.remaining();
    let (vendor_info, vendor_info_outside_event) = if vendor_size <= inside {
        let v = d.take(vendor_size, 0, "vendorInfo")?.to_vec();
        if d.remaining() != 0 {
            return Err(spec_err(format!(
                "{} bytes follow vendorInfo inside the event data",
                d.remaining()
            )));
        }
        (v, false)
    } else {
        // Overrun (tpm2-tools layout): the rest of vendorInfo follows eventSize.
        let mut v = d.take(inside, 0, "vendorInfo")?.to_vec();
        v.extend_from_slice(rest.take(vendor_size - inside, 0, "Spec ID vendorInfo")?);
        (v, true)
    };
    Ok(SpecId {
        platform_class,
        spec_version_minor,
        spec_version_major,
        spec_errata,
        uintn_size,
        algorithms,
        vendor_info,
        vendor_info_outside_event,
    })
}

/// Parses a PC Client event log of either layout (see the module docs).
pub fn parse(bytes: &[u8]) -> Result<PcClientLog, PcClientError> {
    if bytes.is_empty() {
        return Err(PcClientError::Empty);
    }
    let mut r = Reader { buf: bytes, pos: 0 };
    let first = read_tcg_pcr_event(&mut r, 0)?;
    let agile = first.event_type == EV_NO_ACTION
        && first.pcr == 0
        && first.data.starts_with(&SPEC_ID_SIGNATURE[..15]);
    let mut events = vec![];
    let (format, spec_id) = if agile {
        let spec = parse_spec_id(&first.data, &mut r)?;
        events.push(first);
        while r.remaining() > 0 {
            if events.len() >= MAX_EVENTS {
                return Err(PcClientError::TooManyEvents { limit: MAX_EVENTS });
            }
            events.push(read_tcg_pcr_event2(&mut r, events.len(), &spec)?);
        }
        (LogFormat::CryptoAgile, Some(spec))
    } else {
        events.push(first);
        while r.remaining() > 0 {
            if events.len() >= MAX_EVENTS {
                return Err(PcClientError::TooManyEvents { limit: MAX_EVENTS });
            }
            events.push(read_tcg_pcr_event(&mut r, events.len())?);
        }
        (LogFormat::Sha1, None)
    };
    Ok(PcClientLog { format, spec_id, events })
}

impl PcClientLog {
    /// The banks a replay computes: SHA-1 for a SHA-1 log; every declared
    /// algorithm we can hash, in declaration order, for a crypto-agile log.
    pub fn banks(&self) -> Vec<HashAlg> {
        match &self.spec_id {
            Some(spec) => spec.algorithms.iter().filter_map(SpecIdAlgorithm::hash_alg).collect(),
            None => vec![HashAlg::Sha1],
        }
    }

    /// Replays the log into every bank of [`PcClientLog::banks`] for which
    /// every extended event has a digest (the others are listed in
    /// [`Replay::incomplete_banks`]):
    ///
    /// - PCRs start at their reset value (zero for the PCRs an SRTM log extends);
    /// - `EV_NO_ACTION` events are never extended;
    /// - a StartupLocality `EV_NO_ACTION` event on PCR 0 (`"StartupLocality\0"`
    ///   and one locality byte) makes PCR 0 start at `00…00 <locality>`;
    /// - an `EV_EFI_HCRTM_EVENT` on PCR 0 makes PCR 0 start at `00…04` before
    ///   its digest is extended (TPM 2.0 Library Part 1, H-CRTM);
    /// - every other event is extended into its PCR in every bank; a PCR
    ///   index >= 24 is an error.
    ///
    /// Digests defined by the event data are checked and each failure is
    /// reported in [`Replay::mismatches`] (the replay itself goes on).
    pub fn replay(&self) -> Result<Replay, PcClientError> {
        // A bank is replayed only if every extended event has a digest for it.
        let mut banks = vec![];
        let mut incomplete_banks = vec![];
        for alg in self.banks() {
            let lacking = self.events.iter().find(|ev| {
                ev.event_type != EV_NO_ACTION && ev.pcr < PCR_COUNT && ev.digest(alg).is_none()
            });
            match lacking {
                Some(ev) => {
                    incomplete_banks.push(IncompleteBank { alg, index: ev.index, pcr: ev.pcr })
                }
                None => banks.push(alg),
            }
        }
        let mut pcrs = PcrBanks::new();
        let mut mismatches = vec![];
        let mut pcr0_started = false;
        for ev in &self.events {
            let index = ev.index;
            if ev.event_type == EV_NO_ACTION {
                if ev.pcr == 0 && ev.data.starts_with(STARTUP_LOCALITY_SIGNATURE) {
                    let locality = match ev.data.get(16) {
                        Some(&l) if ev.data.len() == 17 => l,
                        _ => {
                            return Err(PcClientError::BadStartupLocality {
                                index,
                                len: ev.data.len(),
                            })
                        }
                    };
                    if pcr0_started {
                        return Err(PcClientError::Pcr0InitMisplaced {
                            index,
                            what: "StartupLocality event",
                        });
                    }
                    init_pcr0(&mut pcrs, &banks, locality, index)?;
                    pcr0_started = true;
                }
                continue;
            }
            if ev.pcr >= PCR_COUNT {
                return Err(PcClientError::PcrOutOfRange { index, pcr: ev.pcr });
            }
            if ev.pcr == 0 && ev.event_type == EV_EFI_HCRTM_EVENT {
                if pcr0_started {
                    return Err(PcClientError::Pcr0InitMisplaced {
                        index,
                        what: "EV_EFI_HCRTM_EVENT",
                    });
                }
                init_pcr0(&mut pcrs, &banks, 4, index)?;
            }
            for &alg in &banks {
                // Every event has a digest for every bank in `banks` (above).
                if let Some(d) = ev.digest(alg) {
                    pcrs.extend(alg, ev.pcr, d)
                        .map_err(|source| PcClientError::Pcr { index, source })?;
                }
            }
            if ev.pcr == 0 {
                pcr0_started = true;
            }
            for (alg_id, logged) in &ev.digests {
                let Some(alg) = HashAlg::from_tpm_alg_id(*alg_id) else { continue };
                if check_event_digest(ev.event_type, ev.pcr, &ev.data, alg, logged) == Some(false) {
                    mismatches.push(DigestMismatch {
                        index,
                        pcr: ev.pcr,
                        event_type: ev.event_type,
                        alg,
                    });
                }
            }
        }
        Ok(Replay { pcrs, mismatches, incomplete_banks })
    }
}

fn init_pcr0(
    pcrs: &mut PcrBanks,
    banks: &[HashAlg],
    last_byte: u8,
    index: usize,
) -> Result<(), PcClientError> {
    for &alg in banks {
        let mut v = vec![0u8; alg.size()];
        if let Some(last) = v.last_mut() {
            *last = last_byte;
        }
        let got = v.len();
        // `v` has the algorithm's size, so this error cannot occur.
        let d = Digest::new(alg, v).map_err(|_| PcClientError::Pcr {
            index,
            source: PcrError::DigestSize { alg, expected: alg.size(), got },
        })?;
        pcrs.init(0, d).map_err(|source| PcClientError::Pcr { index, source })?;
    }
    Ok(())
}

fn hash_is(alg: HashAlg, data: &[u8], logged: &[u8]) -> bool {
    Digest::of(alg, data).as_bytes() == logged
}

/// Whether the logged digest of an event is the one its data defines:
/// `Some(true)`/`Some(false)` for the event types we check, `None` for the
/// others (whose digest covers something the log does not contain: code,
/// tables, firmware volumes, files).
///
/// Checked (each rule holds on every event of that type in all 33 logs of
/// shared/test-vectors/tpm-eventlogs, except the three events noted):
///
/// - `EV_SEPARATOR`, `EV_S_CRTM_VERSION`, `EV_EFI_VARIABLE_DRIVER_CONFIG`,
///   `EV_EFI_GPT_EVENT`, `EV_EFI_ACTION`, `EV_NONHOST_INFO`: H(data).
///   (`EV_S_CRTM_VERSION` fails in go-tpm-tools `gdc-host.bin` event 3, which
///   go-tpm-tools rejects for the same reason: "invalid SCRTM version event
///   for PCR0". `EV_NONHOST_INFO` is what go-eventlog checks the same way.)
/// - `EV_EFI_VARIABLE_BOOT`: H(data) or H(VariableData of the
///   `UEFI_VARIABLE_DATA`) — most firmware (OVMF/EDK2) hashes only the
///   variable's contents for Boot#### and BootOrder.
/// - `EV_EFI_VARIABLE_AUTHORITY`: H(data), or H(data without its last byte)
///   when the data is longer than the `UEFI_VARIABLE_DATA` it declares:
///   shim ("Shim" vendor cert) and GCE firmware ("db") log the structure with
///   C struct padding and one byte more than they hashed (9 events in
///   sb_cert_eventlog, debian-10, cos-85, cos-93, event-postcode); the
///   dropped byte lies outside the declared structure, so the certificate is
///   still covered.
/// - `EV_IPL` on PCR 8: H(data), or GRUB's form, where the data is
///   `"<prefix> <string>\0"` (`grub_cmd: …`, `kernel_cmdline: …`) and the
///   digest covers `<string>` with or without its NUL — the rule tpm2-tools
///   applies. systemd-boot before v251 logged a UTF-16 kernel command line
///   on PCR 8 whose digest matches neither: that is event 24 of tpm2-tools
///   `event-arch-linux.bin` (its `.warn` file) and of the byte-identical
///   event in go-tpm-tools `arch-linux-workstation.bin`.
/// - `EV_IPL` on PCR 12 (systemd-boot >= 251 command line): H(data).
///
/// Not checked: `EV_IPL` on other PCRs (GRUB/shim measure files and MOK
/// variables into 9 and 14, not the logged description), `EV_EVENT_TAG`
/// (holds on PCR 12-14, fails for PCR 9 on some logs), `EV_POST_CODE`,
/// `EV_S_CRTM_CONTENTS`, `EV_CPU_MICROCODE`, `EV_PLATFORM_CONFIG_FLAGS`,
/// `EV_TABLE_OF_DEVICES`, `EV_COMPACT_HASH`, the EFI image/blob/handoff
/// types (digests of code and tables), and `EV_ACTION` /
/// `EV_EFI_VARIABLE_BOOT2` / `EV_EFI_GPT_EVENT2` / SPDM types, which none of
/// the vectors contain, so no rule for them is verified.
fn check_event_digest(
    event_type: u32,
    pcr: u32,
    data: &[u8],
    alg: HashAlg,
    logged: &[u8],
) -> Option<bool> {
    match event_type {
        EV_SEPARATOR
        | EV_S_CRTM_VERSION
        | EV_NONHOST_INFO
        | EV_EFI_VARIABLE_DRIVER_CONFIG
        | EV_EFI_GPT_EVENT
        | EV_EFI_ACTION => Some(hash_is(alg, data, logged)),
        EV_EFI_VARIABLE_BOOT => Some(
            hash_is(alg, data, logged)
                || UefiVariableData::parse(data).is_some_and(|v| hash_is(alg, v.data, logged)),
        ),
        EV_EFI_VARIABLE_AUTHORITY => Some(
            hash_is(alg, data, logged)
                || match (UefiVariableData::parse(data), data.split_last()) {
                    (Some(v), Some((_, head))) if v.encoded_len <= head.len() => {
                        hash_is(alg, head, logged)
                    }
                    _ => false,
                },
        ),
        EV_IPL if pcr == 8 => {
            Some(hash_is(alg, data, logged) || grub_string_matches(alg, data, logged))
        }
        EV_IPL if pcr == 12 => Some(hash_is(alg, data, logged)),
        _ => None,
    }
}

/// GRUB's `EV_IPL` form: `"<prefix> <string>\0"`, digest over `<string>`
/// with or without the trailing NUL.
fn grub_string_matches(alg: HashAlg, data: &[u8], logged: &[u8]) -> bool {
    let Some((&0, _)) = data.split_last() else { return false };
    let Some(space) = data.iter().position(|&b| b == b' ') else { return false };
    let Some(with_nul) = data.get(space + 1..) else { return false };
    let without_nul = &with_nul[..with_nul.len().saturating_sub(1)];
    !with_nul.is_empty() && (hash_is(alg, without_nul, logged) || hash_is(alg, with_nul, logged))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1: u16 = 0x0004;
    const SHA256: u16 = 0x000B;
    const SM3: u16 = 0x0012;

    fn spec_id_data(algs: &[(u16, u16)], vendor: &[u8]) -> Vec<u8> {
        let mut d = SPEC_ID_SIGNATURE.to_vec();
        d.extend_from_slice(&0u32.to_le_bytes()); // platformClass
        d.extend_from_slice(&[0, 2, 0, 2]); // minor, major, errata, uintnSize
        d.extend_from_slice(&(algs.len() as u32).to_le_bytes());
        for (id, size) in algs {
            d.extend_from_slice(&id.to_le_bytes());
            d.extend_from_slice(&size.to_le_bytes());
        }
        d.push(vendor.len() as u8);
        d.extend_from_slice(vendor);
        d
    }

    fn tcg_event(pcr: u32, typ: u32, digest: [u8; 20], data: &[u8]) -> Vec<u8> {
        let mut e = vec![];
        e.extend_from_slice(&pcr.to_le_bytes());
        e.extend_from_slice(&typ.to_le_bytes());
        e.extend_from_slice(&digest);
        e.extend_from_slice(&(data.len() as u32).to_le_bytes());
        e.extend_from_slice(data);
        e
    }

    fn event2(pcr: u32, typ: u32, digests: &[(u16, Vec<u8>)], data: &[u8]) -> Vec<u8> {
        let mut e = vec![];
        e.extend_from_slice(&pcr.to_le_bytes());
        e.extend_from_slice(&typ.to_le_bytes());
        e.extend_from_slice(&(digests.len() as u32).to_le_bytes());
        for (id, d) in digests {
            e.extend_from_slice(&id.to_le_bytes());
            e.extend_from_slice(d);
        }
        e.extend_from_slice(&(data.len() as u32).to_le_bytes());
        e.extend_from_slice(data);
        e
    }

    fn header(algs: &[(u16, u16)]) -> Vec<u8> {
        tcg_event(0, EV_NO_ACTION, [0; 20], &spec_id_data(algs, &[]))
    }

    /// Digests of `data` for sha1, sha256 and a fake 32-byte SM3.
    fn agile_digests(data: &[u8]) -> Vec<(u16, Vec<u8>)> {
        vec![
            (SHA1, Digest::of(HashAlg::Sha1, data).as_bytes().to_vec()),
            (SHA256, Digest::of(HashAlg::Sha256, data).as_bytes().to_vec()),
            (SM3, vec![0x5a; 32]),
        ]
    }

    /// A small valid crypto-agile log and the offsets at which its events end.
    fn small_agile_log() -> (Vec<u8>, Vec<usize>) {
        let mut log = header(&[(SHA1, 20), (SHA256, 32), (SM3, 32)]);
        let mut ends = vec![log.len()];
        let mut loc = STARTUP_LOCALITY_SIGNATURE.to_vec();
        loc.push(3);
        let zero = vec![(SHA1, vec![0; 20]), (SHA256, vec![0; 32]), (SM3, vec![0; 32])];
        for e in [
            event2(0, EV_NO_ACTION, &zero, &loc),
            event2(0, EV_S_CRTM_VERSION, &agile_digests(b"v\0"), b"v\0"),
            event2(7, EV_SEPARATOR, &agile_digests(&[0; 4]), &[0; 4]),
            event2(4, EV_EFI_ACTION, &agile_digests(b"Calling EFI"), b"Calling EFI"),
        ] {
            log.extend_from_slice(&e);
            ends.push(log.len());
        }
        (log, ends)
    }

    fn small_sha1_log() -> (Vec<u8>, Vec<usize>) {
        let d = |x: &[u8]| -> [u8; 20] {
            Digest::of(HashAlg::Sha1, x).as_bytes().try_into().expect("20 bytes")
        };
        let mut log = vec![];
        let mut ends = vec![];
        for e in [
            tcg_event(0, EV_S_CRTM_VERSION, d(b"1.0"), b"1.0"),
            tcg_event(0, EV_POST_CODE, [7; 20], b""),
            tcg_event(4, EV_SEPARATOR, d(&[0; 4]), &[0; 4]),
        ] {
            log.extend_from_slice(&e);
            ends.push(log.len());
        }
        (log, ends)
    }

    #[test]
    fn small_logs_parse_and_replay() {
        let (log, _) = small_agile_log();
        let parsed = parse(&log).unwrap();
        assert_eq!(parsed.format, LogFormat::CryptoAgile);
        assert_eq!(parsed.events.len(), 5);
        let spec = parsed.spec_id.as_ref().unwrap();
        assert_eq!(spec.algorithms.len(), 3);
        // SM3 is carried but not replayed.
        assert_eq!(parsed.banks(), vec![HashAlg::Sha1, HashAlg::Sha256]);
        assert_eq!(parsed.events[2].digests[2], (SM3, vec![0x5a; 32]));
        let r = parsed.replay().unwrap();
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        assert!(r.incomplete_banks.is_empty());
        for alg in [HashAlg::Sha1, HashAlg::Sha256] {
            let mut start = vec![0u8; alg.size()];
            start[alg.size() - 1] = 3;
            let pcr0 = Digest::new(alg, start).unwrap().extend(Digest::of(alg, b"v\0").as_bytes());
            assert_eq!(r.pcr_value(alg, 0), pcr0);
            let pcr7 = Digest::zero(alg).extend(Digest::of(alg, &[0; 4]).as_bytes());
            assert_eq!(r.pcr_value(alg, 7), pcr7);
            assert_eq!(r.pcr_value(alg, 18).as_bytes(), vec![0xff; alg.size()].as_slice());
        }
        assert_eq!(r.pcrs.algorithms().collect::<Vec<_>>(), vec![HashAlg::Sha1, HashAlg::Sha256]);

        let (log, _) = small_sha1_log();
        let parsed = parse(&log).unwrap();
        assert_eq!(parsed.format, LogFormat::Sha1);
        assert_eq!(parsed.events.len(), 3);
        let r = parsed.replay().unwrap();
        assert!(r.mismatches.is_empty());
        let pcr0 = Digest::zero(HashAlg::Sha1)
            .extend(Digest::of(HashAlg::Sha1, b"1.0").as_bytes())
            .extend(&[7; 20]);
        assert_eq!(r.pcr_value(HashAlg::Sha1, 0), pcr0);
        assert_eq!(r.pcrs.algorithms().collect::<Vec<_>>(), vec![HashAlg::Sha1]);
    }

    #[test]
    fn every_prefix_is_ok_at_event_boundaries_and_a_specific_error_elsewhere() {
        for (log, ends) in [small_agile_log(), small_sha1_log()] {
            for len in 0..=log.len() {
                let res = parse(&log[..len]);
                if len == 0 {
                    assert_eq!(res, Err(PcClientError::Empty));
                } else if let Some(n) = ends.iter().position(|&e| e == len) {
                    let parsed = res.unwrap_or_else(|e| panic!("prefix {len}: {e}"));
                    assert_eq!(parsed.events.len(), n + 1);
                    // A prefix cut right after the StartupLocality event or
                    // anywhere else still replays.
                    parsed.replay().unwrap();
                } else {
                    match res {
                        Err(PcClientError::Truncated { offset, .. }) => assert!(offset <= len),
                        Err(PcClientError::EventTooLarge { remaining, .. }) => {
                            assert!(remaining < len)
                        }
                        // The header cut inside the Spec ID structure.
                        Err(PcClientError::SpecIdInconsistent { .. }) => assert!(len < ends[0]),
                        other => panic!("prefix {len} of {}: unexpected {other:?}", log.len()),
                    }
                }
            }
        }
    }

    #[test]
    fn four_gib_event_size_is_rejected_without_allocating() {
        // SHA-1 layout.
        let mut log = tcg_event(0, EV_POST_CODE, [0; 20], b"");
        log[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        log.extend_from_slice(b"a few bytes");
        let err = parse(&log).unwrap_err();
        assert_eq!(
            err,
            PcClientError::EventTooLarge { index: 0, offset: 32, size: u32::MAX, remaining: 11 }
        );
        assert!(err.to_string().contains("4294967295"), "{err}");

        // Crypto-agile layout, second event.
        let mut log = header(&[(SHA256, 32)]);
        let hl = log.len();
        log.extend_from_slice(&event2(1, EV_POST_CODE, &[(SHA256, vec![1; 32])], b""));
        let at = log.len() - 4;
        log[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            parse(&log),
            Err(PcClientError::EventTooLarge {
                index: 1,
                offset: hl + 12 + 2 + 32 + 4,
                size: u32::MAX,
                remaining: 0
            })
        );
    }

    #[test]
    fn unknown_algorithm_in_an_event_is_rejected() {
        let mut log = header(&[(SHA256, 32)]);
        let hl = log.len();
        log.extend_from_slice(&event2(1, EV_POST_CODE, &[(SM3, vec![0; 32])], b""));
        let err = parse(&log).unwrap_err();
        assert_eq!(err, PcClientError::UnknownAlgorithm { index: 1, offset: hl + 12, alg_id: SM3 });
        assert!(err.to_string().contains("0x0012"));

        // A declared algorithm twice in one event.
        let mut log = header(&[(SHA1, 20), (SHA256, 32)]);
        log.extend_from_slice(&event2(
            1,
            EV_POST_CODE,
            &[(SHA1, vec![0; 20]), (SHA1, vec![0; 20])],
            b"",
        ));
        assert!(matches!(parse(&log), Err(PcClientError::DuplicateDigest { alg_id: SHA1, .. })));

        // A digest count larger than the declared algorithms (e.g. 4 billion).
        let mut log = header(&[(SHA256, 32)]);
        let mut e = event2(1, EV_POST_CODE, &[], b"");
        e[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        log.extend_from_slice(&e);
        assert!(matches!(
            parse(&log),
            Err(PcClientError::TooManyDigests { index: 1, count: u32::MAX, declared: 1, .. })
        ));
    }

    #[test]
    fn inconsistent_spec_id_events_are_rejected() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (spec_id_data(&[(SHA256, 20)], &[]), "digestSize 20"),
            (spec_id_data(&[(SHA1, 32)], &[]), "digestSize 32"),
            (spec_id_data(&[(0x000C, 64)], &[]), "sha384"),
            (spec_id_data(&[], &[]), "numberOfAlgorithms is 0"),
            (spec_id_data(&[(SHA256, 32), (SHA256, 32)], &[]), "declared twice"),
            (spec_id_data(&[(SM3, 0)], &[]), "outside 1..=64"),
            (spec_id_data(&[(SM3, 4096)], &[]), "outside 1..=64"),
            (
                {
                    let mut d = spec_id_data(&[(SHA256, 32)], &[]);
                    d[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
                    d
                },
                "4294967295",
            ),
            (
                {
                    let mut d = spec_id_data(&[(SHA256, 32)], &[]);
                    d[24..28].copy_from_slice(&20u32.to_le_bytes());
                    d
                },
                "20 algorithms need 80 bytes",
            ),
            (
                {
                    let mut d = spec_id_data(&[(SHA256, 32)], &[]);
                    d[15] = b'!';
                    d
                },
                "signature",
            ),
            (
                {
                    let mut d = spec_id_data(&[(SHA256, 32)], &[1, 2]);
                    d.push(0);
                    d
                },
                "follow vendorInfo",
            ),
        ];
        for (data, needle) in cases {
            let log = tcg_event(0, EV_NO_ACTION, [0; 20], &data);
            match parse(&log) {
                Err(e @ PcClientError::SpecIdInconsistent { .. }) => {
                    assert!(e.to_string().contains(needle), "{e} lacks {needle:?}")
                }
                other => panic!("{needle}: {other:?}"),
            }
        }
    }

    #[test]
    fn vendor_info_past_event_size_is_read_like_tpm2_tools() {
        // specid-vendordata.bin layout: eventSize stops before vendorInfo.
        let data = spec_id_data(&[(SHA1, 20), (SHA256, 32)], &[0xde, 0xad, 0xbe, 0xef]);
        let mut log = tcg_event(0, EV_NO_ACTION, [0; 20], &data[..data.len() - 4]);
        log.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let parsed = parse(&log).unwrap();
        let spec = parsed.spec_id.unwrap();
        assert_eq!(spec.vendor_info, vec![0xde, 0xad, 0xbe, 0xef]);
        assert!(spec.vendor_info_outside_event);
        assert_eq!(parsed.events.len(), 1);
        // Without the 4 bytes, the log is truncated.
        assert!(matches!(
            parse(&log[..log.len() - 1]),
            Err(PcClientError::Truncated { what: "Spec ID vendorInfo", .. })
        ));
    }

    #[test]
    fn empty_and_tiny_inputs() {
        assert_eq!(parse(&[]), Err(PcClientError::Empty));
        assert_eq!(
            parse(&[0; 7]),
            Err(PcClientError::Truncated { index: 0, offset: 4, what: "eventType" })
        );
        let e = parse(&[0; 31]).unwrap_err();
        assert_eq!(e, PcClientError::Truncated { index: 0, offset: 28, what: "eventSize" });
        assert!(e.to_string().contains("byte offset 28"), "{e}");
    }

    #[test]
    fn replay_errors() {
        // PCR >= 24 in an extended event.
        let mut log = header(&[(SHA256, 32)]);
        log.extend_from_slice(&event2(24, EV_POST_CODE, &[(SHA256, vec![0; 32])], b""));
        let parsed = parse(&log).unwrap();
        assert_eq!(parsed.replay(), Err(PcClientError::PcrOutOfRange { index: 1, pcr: 24 }));
        // ... but not in an EV_NO_ACTION event, which is never extended.
        let mut log = header(&[(SHA256, 32)]);
        log.extend_from_slice(&event2(1000, EV_NO_ACTION, &[(SHA256, vec![0; 32])], b"x"));
        assert!(parse(&log).unwrap().replay().unwrap().pcrs.algorithms().next().is_none());
        // A SHA-1 log too.
        let log = tcg_event(u32::MAX, EV_SEPARATOR, [0; 20], b"");
        assert!(matches!(
            parse(&log).unwrap().replay(),
            Err(PcClientError::PcrOutOfRange { index: 0, pcr: u32::MAX })
        ));

        // A bank without a digest in one event is left out, not half-replayed.
        let mut log = header(&[(SHA1, 20), (SHA256, 32)]);
        let both = [(SHA1, vec![1; 20]), (SHA256, vec![1; 32])];
        log.extend_from_slice(&event2(3, EV_POST_CODE, &both, b""));
        log.extend_from_slice(&event2(3, EV_POST_CODE, &[(SHA1, vec![2; 20])], b""));
        log.extend_from_slice(&event2(4, EV_NO_ACTION, &[], b""));
        let r = parse(&log).unwrap().replay().unwrap();
        assert_eq!(
            r.incomplete_banks,
            vec![IncompleteBank { alg: HashAlg::Sha256, index: 2, pcr: 3 }]
        );
        assert_eq!(r.pcrs.algorithms().collect::<Vec<_>>(), vec![HashAlg::Sha1]);
        assert_eq!(
            r.pcr_value(HashAlg::Sha1, 3),
            Digest::zero(HashAlg::Sha1).extend(&[1; 20]).extend(&[2; 20])
        );

        // StartupLocality after PCR 0 was extended, or malformed.
        let mut loc = STARTUP_LOCALITY_SIGNATURE.to_vec();
        loc.push(3);
        let mut log = header(&[(SHA256, 32)]);
        log.extend_from_slice(&event2(0, EV_POST_CODE, &[(SHA256, vec![0; 32])], b""));
        log.extend_from_slice(&event2(0, EV_NO_ACTION, &[(SHA256, vec![0; 32])], &loc));
        assert!(matches!(
            parse(&log).unwrap().replay(),
            Err(PcClientError::Pcr0InitMisplaced { index: 2, .. })
        ));
        let mut log = header(&[(SHA256, 32)]);
        log.extend_from_slice(&event2(0, EV_NO_ACTION, &[(SHA256, vec![0; 32])], &loc[..16]));
        assert_eq!(
            parse(&log).unwrap().replay(),
            Err(PcClientError::BadStartupLocality { index: 1, len: 16 })
        );
    }

    #[test]
    fn hcrtm_event_starts_pcr0_at_four() {
        let blob = b"h-crtm";
        let mut log = header(&[(SHA256, 32)]);
        let d = Digest::of(HashAlg::Sha256, blob);
        log.extend_from_slice(&event2(
            0,
            EV_EFI_HCRTM_EVENT,
            &[(SHA256, d.as_bytes().to_vec())],
            blob,
        ));
        let r = parse(&log).unwrap().replay().unwrap();
        let mut start = vec![0u8; 32];
        start[31] = 4;
        let want = Digest::new(HashAlg::Sha256, start).unwrap().extend(d.as_bytes());
        assert_eq!(r.pcr_value(HashAlg::Sha256, 0), want);
    }

    #[test]
    fn digest_checks() {
        let sha = |x: &[u8]| Digest::of(HashAlg::Sha256, x).as_bytes().to_vec();
        let var = |name: &str, value: &[u8]| {
            let mut v = vec![0x61; 16];
            let units: Vec<u16> = name.encode_utf16().collect();
            v.extend_from_slice(&(units.len() as u64).to_le_bytes());
            v.extend_from_slice(&(value.len() as u64).to_le_bytes());
            for u in units {
                v.extend_from_slice(&u.to_le_bytes());
            }
            v.extend_from_slice(value);
            v
        };
        let boot = var("BootOrder", &[1, 0]);
        let parsed_var = UefiVariableData::parse(&boot).unwrap();
        assert_eq!(parsed_var.name_string(), "BootOrder");
        assert_eq!(parsed_var.data, &[1, 0]);
        assert_eq!(parsed_var.encoded_len, boot.len());
        let mut authority = var("db", b"certificate");
        let padded_hash = {
            authority.extend_from_slice(&[0; 5]);
            let h = sha(&authority);
            authority.push(0xaf);
            h
        };

        let mut log = header(&[(SHA256, 32)]);
        // (pcr, event type, logged digest, data, digest should be accepted)
        type Case = (u32, u32, Vec<u8>, Vec<u8>, bool);
        let events: Vec<Case> = vec![
            (7, EV_SEPARATOR, sha(&[0; 4]), vec![0; 4], true),
            (7, EV_SEPARATOR, sha(&[1; 4]), vec![0; 4], false),
            (1, EV_EFI_VARIABLE_BOOT, sha(&[1, 0]), boot.clone(), true),
            (1, EV_EFI_VARIABLE_BOOT, sha(&boot), boot.clone(), true),
            (1, EV_EFI_VARIABLE_BOOT, sha(&[2, 0]), boot.clone(), false),
            (7, EV_EFI_VARIABLE_AUTHORITY, padded_hash, authority.clone(), true),
            (7, EV_EFI_VARIABLE_AUTHORITY, sha(&authority), authority.clone(), true),
            (7, EV_EFI_VARIABLE_AUTHORITY, sha(b"certificate"), authority, false),
            (8, EV_IPL, sha(b"linux /vmlinuz"), b"grub_cmd: linux /vmlinuz\0".to_vec(), true),
            (8, EV_IPL, sha(b"linux /vmlinuz\0"), b"grub_cmd: linux /vmlinuz\0".to_vec(), true),
            (8, EV_IPL, sha(b"linux /vmlinuz"), b"grub_cmd: linux /vmlinuz".to_vec(), false),
            (9, EV_IPL, sha(b"anything"), b"/boot/vmlinuz\0".to_vec(), true), // unchecked
            (4, EV_EFI_BOOT_SERVICES_APPLICATION, vec![9; 32], b"image".to_vec(), true),
        ];
        for (pcr, typ, digest, data, _) in &events {
            log.extend_from_slice(&event2(*pcr, *typ, &[(SHA256, digest.clone())], data));
        }
        let r = parse(&log).unwrap().replay().unwrap();
        let want: Vec<DigestMismatch> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.4)
            .map(|(i, e)| DigestMismatch {
                index: i + 1,
                pcr: e.0,
                event_type: e.1,
                alg: HashAlg::Sha256,
            })
            .collect();
        assert_eq!(r.mismatches, want);
        assert_eq!(want.len(), 4);
    }

    #[test]
    fn exit_boot_services_workaround_extends_pcr5_in_every_bank() {
        let mut b = PcrBanks::new();
        b.extend(HashAlg::Sha1, 5, &[1; 20]).unwrap();
        b.extend(HashAlg::Sha256, 0, &[1; 32]).unwrap();
        let before1 = b.value(HashAlg::Sha1, 5);
        append_missing_exit_boot_services(&mut b).unwrap();
        let want1 = before1
            .extend(Digest::of(HashAlg::Sha1, EXIT_BOOT_SERVICES_INVOCATION.as_bytes()).as_bytes())
            .extend(Digest::of(HashAlg::Sha1, EXIT_BOOT_SERVICES_SUCCESS.as_bytes()).as_bytes());
        assert_eq!(b.value(HashAlg::Sha1, 5), want1);
        let want256 = Digest::zero(HashAlg::Sha256)
            .extend(
                Digest::of(HashAlg::Sha256, EXIT_BOOT_SERVICES_INVOCATION.as_bytes()).as_bytes(),
            )
            .extend(Digest::of(HashAlg::Sha256, EXIT_BOOT_SERVICES_SUCCESS.as_bytes()).as_bytes());
        assert_eq!(b.value(HashAlg::Sha256, 5), want256);
    }

    #[test]
    fn too_many_events() {
        // Smallest crypto-agile event: 16 bytes with no digests.
        let empty = event2(5, EV_NO_ACTION, &[], b"");
        assert_eq!(empty.len(), 16);
        let mut log = header(&[(SHA256, 32)]);
        let hl = log.len();
        log.reserve(MAX_EVENTS * 16);
        for _ in 0..MAX_EVENTS - 1 {
            log.extend_from_slice(&empty);
        }
        assert_eq!(parse(&log).unwrap().events.len(), MAX_EVENTS);
        log.extend_from_slice(&empty);
        assert_eq!(parse(&log), Err(PcClientError::TooManyEvents { limit: MAX_EVENTS }));
        assert_eq!(log.len(), hl + MAX_EVENTS * 16);
    }

    #[test]
    fn event_type_names() {
        assert_eq!(event_type_name(3), "EV_NO_ACTION");
        assert_eq!(event_type_name(0x8000_0001), "EV_EFI_VARIABLE_DRIVER_CONFIG");
        assert_eq!(event_type_name(0x8000_00E0), "EV_EFI_VARIABLE_AUTHORITY");
        assert_eq!(event_type_name(0x12), "EV_OMIT_BOOT_DEVICE_EVENTS");
        assert_eq!(event_type_name(0x8000_00E4), "EV_EFI_SPDM_DEVICE_AUTHORITY");
        assert_eq!(event_type_name(0x13), "EV_UNKNOWN");
        assert_eq!(event_type_name(u32::MAX), "EV_UNKNOWN");
        // Every named type in the two TCG ranges has a distinct name.
        let named: Vec<u32> = (0..=0x12).chain(0x8000_0000..=0x8000_00FF).collect();
        let mut names: Vec<&str> =
            named.iter().map(|&t| event_type_name(t)).filter(|n| *n != "EV_UNKNOWN").collect();
        let total = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), total);
        assert_eq!(total, 19 + 20);
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut oks = 0;
        // Pure random bytes, 0..300 long; every 4th input starts with a valid
        // Spec ID header so the crypto-agile path is exercised too.
        let hdr = header(&[(SHA1, 20), (SHA256, 32), (SM3, 32)]);
        for i in 0..3000 {
            let len = (rng.next() % 300) as usize;
            let mut input: Vec<u8> = if i % 4 == 0 { hdr.clone() } else { vec![] };
            input.extend((0..len).map(|_| rng.next() as u8));
            if let Ok(log) = parse(&input) {
                oks += 1;
                let _ = log.replay();
            }
        }
        // Valid logs with 1-4 bytes flipped, and with lengths overwritten by
        // large values.
        let bases = [small_agile_log().0, small_sha1_log().0];
        for i in 0..4000 {
            let mut input = bases[i % 2].clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % input.len();
                if rng.next() % 3 == 0 && at + 4 <= input.len() {
                    let v = [u32::MAX, 0x8000_0000, 0x7fff_ffff, 24, 0][(rng.next() % 5) as usize];
                    input[at..at + 4].copy_from_slice(&v.to_le_bytes());
                } else {
                    input[at] ^= 1 << (rng.next() % 8);
                }
            }
            if let Ok(log) = parse(&input) {
                oks += 1;
                let _ = log.replay();
            }
        }
        // Some mutations (in digests and data) leave the log parseable.
        assert!(oks > 100, "only {oks} inputs parsed");
    }
}
