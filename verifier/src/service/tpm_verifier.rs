//! The `tpm` tee: tellus TPM evidence (what `tellus quote` writes) checked
//! against an enrolled, activated host.
//!
//! Checks, in order (each failure is its own [`VerifyError`]):
//! 1. the evidence decodes as [`TpmEvidence`], within size bounds, and names
//!    its `host_id` and carries a launch log (`event_log`);
//! 2. [`verify_evidence`]: the quote is signed by the evidence's AK (a
//!    restricted signing key), its qualifyingData is exactly the 48-byte
//!    runtime-data binding, the quoted PCR values hash to its pcrDigest, and
//!    the CEL launch log replays to the quoted PCRs;
//! 3. the host is in the store, activated, and enrolled with this very AK
//!    (TPM Name when both sides have the public area, else the key);
//! 4. the TPM did not go back in time (rollback, below);
//! 5. the quote covers the launch PCR (sha256:13) and the log vouches for it,
//!    and every tellus record of the log decodes;
//! 6. the launch the evidence speaks for: the group of tellus records that
//!    starts at `launch_recnum` (a `launcher-binary` record; absent: the last
//!    group in the log) and runs to the next `launcher-binary` record. It
//!    must contain its `separator` (the launch completed) and no record kind
//!    twice before it.
//!
//! Claims ([`tellus_policies::claims::TpmClaims`], the schema in
//! `policies/README.md`): the host (id, labels, enrolled, activated, TPM
//! clock), the replay verdict of the launch PCR, and the launch's records
//! with their digests and non-secret values. They go to the attestation
//! policy as `input` and into the token as
//! `ear.veraison.annotated-evidence.tpm`.
//!
//! A host that is not activated is refused here, before any policy: the
//! claim `host.activated` a policy sees is therefore always true; the
//! default policy checks it all the same, so a replaced policy cannot
//! weaken this by omission.
//!
//! # Rollback (monotonicity)
//!
//! A TPM's `TPMS_CLOCK_INFO` only moves forward: `resetCount` grows with
//! every TPM Reset (power cycle: TPM2_Startup(CLEAR) without a saved state),
//! `restartCount` with every Restart or Resume since the last reset (and
//! drops to 0 at a reset), and `clock` counts the milliseconds the TPM was
//! powered. A TPM whose state (swtpm/vTPM state files, a VM snapshot) was
//! put back to an earlier copy reports older values than it already has,
//! and can replay whatever that copy holds. The quote's clock info is
//! signed by the AK with the rest of the quote, so the host cannot alter
//! it. The rules, per host ([`clock_rollback`]):
//!
//! - the store keeps the newest [`TpmClock`] (in (`reset_count`,
//!   `restart_count`, `clock`) order) of the host's accepted attestations;
//!   none is kept before the first one, which is therefore accepted;
//! - the quote is refused ([`VerifyError::TpmRollback`], 403
//!   `AttestationError`, audited like every refusal, before any policy)
//!   when, compared with it: `reset_count` is lower; or `reset_count` is
//!   equal and `restart_count` lower; or both are equal and `clock` is lower
//!   than the stored clock minus `tpm_clock_tolerance_ms` (configuration;
//!   default [`DEFAULT_CLOCK_TOLERANCE_MS`]): concurrent attestations of
//!   one host may reach the store out of order by a few milliseconds, a
//!   snapshot older than the tolerance is caught;
//! - a higher `reset_count` is accepted whatever `clock` does: a TPM saves
//!   its clock to NV only now and then, so after a power loss it resumes
//!   from the last saved value (`safe` = no), below what it reported
//!   before; the same holds for a higher `restart_count` at an equal
//!   `reset_count`;
//! - an accepted attestation's clock state goes into the store by a
//!   monotone max-update (never lowered) in the same transaction as the
//!   attestation and its audit entry ([`Store::mark_attested`]): both or
//!   neither, and no commit of its own. A refused one records nothing.
//!
//! What it cannot see: it catches a state put back as it was saved, a
//! tripwire rather than a proof. A copy restored and then reset more often
//! than the live TPM was since the copy was taken starts out "newer" (its
//! `resetCount` passes the stored one); whoever controls a software TPM can
//! do that at will, as it can advance the clock (TPM2_ClockSet, with the
//! owner or platform authorization a swtpm's owner holds). A rollback
//! between two attestations of the host is caught only at the next one.
//! The stored state outlives a re-enrollment of the same EK on purpose (a
//! restored copy has that EK and could enroll itself again); a TPM2_Clear
//! resets both counts, so a cleared TPM is refused too, until an
//! administrator forgets the host's history (`DELETE
//! /tellus/v1/hosts/{host_id}/tpm-clock`, audited) or the host is enrolled
//! with a fresh TPM state (new EK, new host id). The offline
//! commands (`verify-evidence`, `policy test --evidence`) have no history
//! and make no such check.
//!
//! Trust vector: only `instance-identity` = 2 (affirming), because the quote
//! was made by the AK of an enrolled host whose AK credential activation was
//! proven. The attestation policy replaces it with its own (executables,
//! configuration, hardware as it checked them).

use super::verifier::{Claims, EvidenceVerifier, VerifyError};
use crate::storage::{HostClock, Store, TpmClock};
use crate::tpm::attest::AkPublic;
use crate::tpm::evidence::{verify_evidence, EvidenceError, TpmEvidence};
use crate::tpm::verify::{EventLog, VerifiedQuote, VerifyError as QuoteError};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tellus_measured_boot::cel::Handle;
use tellus_measured_boot::records::{LaunchRecord, RecordKind};
use tellus_measured_boot::HashAlg;
use tellus_policies::claims::{
    ClockClaims, HostClaims, LaunchClaims, PcrReplay, RecordClaims, TpmClaims,
};

/// The PCR `tellus run` extends its launch records into.
pub const LAUNCH_PCR: u32 = 13;
/// The bank the launch PCR must be quoted in.
pub const LAUNCH_BANK: HashAlg = HashAlg::Sha256;
/// `ear.appraisal-policy-id` of the claims.
pub const POLICY_ID: &str = "tellus:tpm-enrolled-ak";

/// Longest base64 `event_log` accepted (the launch log grows by a few
/// hundred bytes per launch).
const MAX_EVENT_LOG_B64: usize = 4 << 20;
/// Longest base64 quote message, signature or AK field.
const MAX_BLOB_B64: usize = 8 << 10;
/// Most PCR values (every PCR of four banks).
const MAX_PCR_VALUES: usize = 96;
/// Longest `launch_ticket`.
const MAX_TICKET_LEN: usize = 4 << 10;

/// Default of the configuration's `tpm_clock_tolerance_ms`: how far a
/// quote's clock may lag behind the newest one of its host.
pub const DEFAULT_CLOCK_TOLERANCE_MS: u64 = 60_000;

/// Verifies tee `tpm` evidence against the hosts in `store`.
#[derive(Clone)]
pub struct TpmVerifier {
    store: Arc<dyn Store>,
    clock_tolerance_ms: u64,
}

impl TpmVerifier {
    /// A verifier on `store` whose rollback check lets a quote's clock lag
    /// up to `clock_tolerance_ms` behind the newest one of its host.
    pub fn new(store: Arc<dyn Store>, clock_tolerance_ms: u64) -> TpmVerifier {
        TpmVerifier { store, clock_tolerance_ms }
    }
}

/// How a quote's clock state went back compared with the newest one
/// recorded for its host; [`clock_rollback`] finds it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockRollback {
    #[error("its resetCount is {quoted}, {} below the {newest} of an earlier accepted quote (a power cycle only ever raises it)", .newest - .quoted)]
    ResetCount { newest: u32, quoted: u32 },
    #[error("at resetCount {reset_count}, its restartCount is {quoted}, {} below the {newest} of an earlier accepted quote", .newest - .quoted)]
    RestartCount { reset_count: u32, newest: u32, quoted: u32 },
    #[error("at resetCount {reset_count} and restartCount {restart_count}, its clock is {quoted} ms, {} ms behind the {newest} ms of an earlier accepted quote (more than the tolerance of {tolerance_ms} ms)", .newest - .quoted)]
    Clock { reset_count: u32, restart_count: u32, newest: u64, quoted: u64, tolerance_ms: u64 },
}

/// Whether `quoted` went back in time compared with `newest`, the newest
/// clock state recorded for the host (the rules are in the module doc):
/// `Some` says what went back and by how much.
pub fn clock_rollback(
    newest: &TpmClock,
    quoted: &TpmClock,
    tolerance_ms: u64,
) -> Option<ClockRollback> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match (
        quoted.reset_count.cmp(&newest.reset_count),
        quoted.restart_count.cmp(&newest.restart_count),
    ) {
        (Less, _) => Some(ClockRollback::ResetCount {
            newest: newest.reset_count,
            quoted: quoted.reset_count,
        }),
        (Equal, Less) => Some(ClockRollback::RestartCount {
            reset_count: quoted.reset_count,
            newest: newest.restart_count,
            quoted: quoted.restart_count,
        }),
        (Equal, Equal) if quoted.clock.saturating_add(tolerance_ms) < newest.clock => {
            Some(ClockRollback::Clock {
                reset_count: quoted.reset_count,
                restart_count: quoted.restart_count,
                newest: newest.clock,
                quoted: quoted.clock,
                tolerance_ms,
            })
        }
        (Equal, Equal | Greater) | (Greater, _) => None,
    }
}

impl std::fmt::Debug for TpmVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmVerifier").finish_non_exhaustive()
    }
}

fn malformed(tee: &str, detail: impl Into<String>) -> VerifyError {
    VerifyError::Malformed { tee: tee.into(), detail: detail.into() }
}

/// Decodes and bounds the evidence; requires `host_id` and `event_log`.
fn parse(tee: &str, evidence: &Value) -> Result<(TpmEvidence, String), VerifyError> {
    let ev = TpmEvidence::deserialize(evidence).map_err(|e| {
        malformed(
            tee,
            format!("not tellus TPM evidence ({e}); send the JSON `tellus quote` writes"),
        )
    })?;
    let q = &ev.tpm_quote;
    for (field, len) in [
        ("ak_public", ev.ak_public.len()),
        ("ak_tpm_public", ev.ak_tpm_public.as_ref().map_or(0, String::len)),
        ("tpm_quote.message", q.message.len()),
        ("tpm_quote.signature", q.signature.len()),
    ] {
        if len > MAX_BLOB_B64 {
            return Err(malformed(tee, format!("`{field}` is longer than {MAX_BLOB_B64} bytes")));
        }
    }
    if q.pcrs.len() > MAX_PCR_VALUES || q.pcrs.iter().any(|p| p.len() > 128) {
        return Err(malformed(
            tee,
            format!("`tpm_quote.pcrs` must be at most {MAX_PCR_VALUES} hex digests"),
        ));
    }
    if ev.event_log.as_ref().is_some_and(|l| l.len() > MAX_EVENT_LOG_B64) {
        return Err(malformed(
            tee,
            format!("`event_log` is longer than {MAX_EVENT_LOG_B64} bytes"),
        ));
    }
    if ev.launch_ticket.as_ref().is_some_and(|t| t.len() > MAX_TICKET_LEN) {
        return Err(malformed(
            tee,
            format!("`launch_ticket` is longer than {MAX_TICKET_LEN} bytes"),
        ));
    }
    let host_id = ev.host_id.clone().ok_or_else(|| {
        malformed(
            tee,
            "`host_id` is missing: evidence without a host id cannot be tied to an enrolled host; \
             produce it with `tellus quote` on an enrolled host",
        )
    })?;
    if !ev.event_log.as_deref().is_some_and(|l| !l.trim().is_empty()) {
        return Err(VerifyError::LaunchLogMissing);
    }
    Ok((ev, host_id))
}

/// Maps an evidence-library error onto the service's refusal.
fn evidence_error(tee: &str, e: EvidenceError) -> VerifyError {
    match e {
        EvidenceError::Verify(QuoteError::NonceMismatch { .. }) => VerifyError::BindingMismatch,
        EvidenceError::Verify(
            e @ (QuoteError::Cel(_)
            | QuoteError::PcClient(_)
            | QuoteError::LogFormat { .. }
            | QuoteError::Replay(_)
            | QuoteError::LogRecordDigest { .. }
            | QuoteError::LogPcrMismatch { .. }),
        ) => VerifyError::LaunchLogInvalid { detail: e.to_string() },
        EvidenceError::Verify(e) => VerifyError::QuoteInvalid { detail: e.to_string() },
        e @ (EvidenceError::Json(_)
        | EvidenceError::Base64 { .. }
        | EvidenceError::AkKey { .. }
        | EvidenceError::PcrHex { .. }
        | EvidenceError::PcrLength { .. }
        | EvidenceError::HostId(_)) => malformed(tee, e.to_string()),
        e @ (EvidenceError::AkMismatch { .. }
        | EvidenceError::PcrCount { .. }
        | EvidenceError::SelectionMismatch { .. }) => {
            VerifyError::QuoteInvalid { detail: e.to_string() }
        }
    }
}

/// Whether the evidence's AK is the enrolled one: by TPM Name when both
/// sides have the AK's public area (the Name covers the attributes that
/// enrollment checked), else by key.
fn same_ak(enrolled: &AkPublic, evidence_ak_name: Option<&[u8]>, evidence_ak: &AkPublic) -> bool {
    match (&enrolled.tpm, evidence_ak_name) {
        (Some(tpm), Some(name)) => tpm.name() == name,
        _ => enrolled.key == evidence_ak.key,
    }
}

impl EvidenceVerifier for TpmVerifier {
    fn verify(
        &self,
        tee: &str,
        evidence: &Value,
        binding: &[u8; 48],
    ) -> Result<Claims, VerifyError> {
        let (ev, host_id) = parse(tee, evidence)?;
        let quote = verify_evidence(&ev, binding).map_err(|e| evidence_error(tee, e))?;
        // verify_evidence checked the AK fields already; this cannot fail
        // after it succeeded, but is not unwrapped.
        let evidence_ak =
            crate::tpm::evidence::evidence_ak(&ev).map_err(|e| evidence_error(tee, e))?;

        let host = self
            .store
            .get_host(&host_id)
            .map_err(|e| VerifyError::Store { host_id: host_id.clone(), detail: e.to_string() })?
            .ok_or_else(|| VerifyError::AkNotEnrolled { host_id: host_id.clone() })?;
        let enrolled = AkPublic::from_bytes(&host.ak_public).map_err(|e| VerifyError::Store {
            host_id: host_id.clone(),
            detail: format!("the enrolled AK public key does not parse: {e}"),
        })?;
        if !same_ak(&enrolled, quote.ak_name.as_deref(), &evidence_ak) {
            return Err(VerifyError::AkMismatch {
                host_id,
                enrolled: enrolled
                    .tpm
                    .as_ref()
                    .map_or_else(|| enrolled.key.describe(), |t| hex::encode(t.name())),
                found: quote.ak_name.as_ref().map_or_else(|| quote.ak_key.clone(), hex::encode),
            });
        }
        if !host.activated {
            return Err(VerifyError::HostNotActivated { host_id });
        }

        // Rollback. Check-then-record is not atomic: two concurrent
        // attestations of one host may both pass this check before either
        // records its clock. That is harmless: the record is a monotone
        // max-update, so the store ends at the newer of the two whatever
        // order they commit in, and each was checked against a state no
        // newer than the one it leaves behind.
        let quoted_clock = TpmClock::from(&quote.clock_info);
        if i64::try_from(quoted_clock.clock).is_err() {
            return Err(VerifyError::QuoteInvalid {
                detail: format!(
                    "the quote's TPM clock {} ms is beyond 2^63 ms (292 million years); no working TPM reports it",
                    quoted_clock.clock
                ),
            });
        }
        let newest = self.store.tpm_clock(&host.host_id).map_err(|e| VerifyError::Store {
            host_id: host_id.clone(),
            detail: format!("reading its newest TPM clock: {e}"),
        })?;
        if let Some(went_back) =
            newest.and_then(|n| clock_rollback(&n, &quoted_clock, self.clock_tolerance_ms))
        {
            return Err(VerifyError::TpmRollback { host_id, went_back: went_back.to_string() });
        }

        let launch_quoted = quote
            .selection
            .iter()
            .any(|s| s.bank() == Some(LAUNCH_BANK) && s.pcrs.contains(&LAUNCH_PCR));
        if !launch_quoted {
            return Err(VerifyError::LaunchPcrNotQuoted {
                selection: crate::tpm::attest::describe_selection(&quote.selection),
            });
        }
        let claims = tpm_claims(
            &quote,
            &host.host_id,
            &host.labels,
            true,
            host.activated,
            ev.launch_recnum,
        )?;

        let mut trust_vector = Map::new();
        trust_vector.insert("instance-identity".into(), json!(2));
        Ok(Claims {
            trust_vector,
            annotated_evidence: json!({ "tpm": serde_json::to_value(&claims).unwrap_or(Value::Null) }),
            policy_id: POLICY_ID.into(),
            tpm_clock: Some(HostClock { host_id: host.host_id, clock: quoted_clock }),
        })
    }
}

/// The claims of a verified quote whose launch log was checked, for the
/// host `host_id` (with `labels`, `enrolled`, `activated` as the caller
/// established them) and the launch `launch_recnum` names.
pub fn tpm_claims(
    quote: &VerifiedQuote,
    host_id: &str,
    labels: &BTreeMap<String, String>,
    enrolled: bool,
    activated: bool,
    launch_recnum: Option<u64>,
) -> Result<TpmClaims, VerifyError> {
    let Some(verdict) = &quote.event_log else {
        return Err(VerifyError::LaunchLogMissing);
    };
    if !verdict.checked.contains(&(LAUNCH_BANK, LAUNCH_PCR)) {
        return Err(VerifyError::LaunchPcrNotLogged);
    }
    let launch = launch_claims(&verdict.log, launch_recnum)?;
    let Some(launch_value) = quote.pcrs.get(LAUNCH_BANK, LAUNCH_PCR) else {
        return Err(VerifyError::LaunchPcrNotQuoted {
            selection: crate::tpm::attest::describe_selection(&quote.selection),
        });
    };
    let c = &quote.clock_info;
    Ok(TpmClaims {
        host: HostClaims {
            id: host_id.to_owned(),
            labels: labels.clone(),
            enrolled,
            activated,
            clock: ClockClaims {
                clock: c.clock,
                reset_count: c.reset_count,
                restart_count: c.restart_count,
                safe: c.safe,
            },
        },
        pcr_replay: PcrReplay {
            verdict: "replays".into(),
            pcr: format!("{}:{}", LAUNCH_BANK.name(), LAUNCH_PCR),
            value: launch_value.to_string(),
        },
        launch,
    })
}

/// The launch `launch_recnum` names (absent: the last one) out of the CEL
/// launch log, as claims.
pub fn launch_claims(
    log: &EventLog,
    launch_recnum: Option<u64>,
) -> Result<LaunchClaims, VerifyError> {
    let EventLog::Cel(records) = log else {
        return Err(VerifyError::LaunchLogInvalid {
            detail: "the event log is not a TCG Canonical Event Log".into(),
        });
    };
    // Every tellus record of the launch PCR, decoded.
    let mut tellus = Vec::new();
    for r in records {
        if r.handle != Handle::Pcr(LAUNCH_PCR) {
            continue;
        }
        match r.launch_record() {
            Some(Ok(rec)) => tellus.push((r, rec)),
            Some(Err(e)) => {
                return Err(VerifyError::LaunchLogInvalid {
                    detail: format!("tellus record {} does not decode: {e}", r.recnum),
                })
            }
            None => {}
        }
    }
    let is_start = |rec: &LaunchRecord| rec.kind == RecordKind::LauncherBinary;
    let start = match launch_recnum {
        Some(n) => {
            let i = tellus
                .iter()
                .position(|(r, _)| r.recnum == n)
                .ok_or(VerifyError::LaunchNotFound { recnum: n })?;
            if !is_start(&tellus[i].1) {
                return Err(VerifyError::NotALaunch { recnum: n, kind: tellus[i].1.kind.name() });
            }
            i
        }
        None => tellus.iter().rposition(|(_, rec)| is_start(rec)).ok_or(VerifyError::NoLaunch)?,
    };
    let first_recnum = tellus[start].0.recnum;
    let end = tellus[start + 1..]
        .iter()
        .position(|(_, rec)| is_start(rec))
        .map_or(tellus.len(), |p| start + 1 + p);
    let group = &tellus[start..end];
    let Some(sep) = group.iter().position(|(_, rec)| rec.kind == RecordKind::Separator) else {
        return Err(VerifyError::LaunchIncomplete { recnum: first_recnum });
    };
    // After the separator only the launch's events follow (stop, reboot,
    // console log): a measured part of the launch there would stand outside
    // what was launched, and a policy reading the records could take it for
    // the launched one.
    for (r, rec) in &group[sep + 1..] {
        if !matches!(rec.kind, RecordKind::Stop | RecordKind::Reboot | RecordKind::ConsoleLog) {
            return Err(VerifyError::LaunchLogInvalid {
                detail: format!(
                    "the launch starting at record {first_recnum} has a {} record after its separator (record {}); only stop, reboot and console-log records may follow it",
                    rec.kind.name(),
                    r.recnum
                ),
            });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (r, rec) in &group[..sep] {
        if !seen.insert(rec.kind.name()) {
            return Err(VerifyError::LaunchLogInvalid {
                detail: format!(
                    "the launch starting at record {first_recnum} has a second {} record (record {})",
                    rec.kind.name(),
                    r.recnum
                ),
            });
        }
    }
    let claims = group
        .iter()
        .map(|(r, rec)| {
            let digests: BTreeMap<String, String> = r
                .digests
                .iter()
                .filter_map(|d| d.digest())
                .map(|d| (d.alg().name().to_owned(), d.to_string()))
                .collect();
            let payload = match rec.payload() {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            RecordClaims::from_payload(r.recnum, rec.kind.name(), &payload, digests)
        })
        .collect();
    Ok(LaunchClaims::from_records(claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SqliteStore;

    fn verifier() -> (tempfile::TempDir, TpmVerifier) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        (dir, TpmVerifier::new(Arc::new(store), DEFAULT_CLOCK_TOLERANCE_MS))
    }

    fn clock(reset_count: u32, restart_count: u32, clock: u64) -> TpmClock {
        TpmClock { reset_count, restart_count, clock }
    }

    #[test]
    fn clock_rollback_rules() {
        let newest = clock(5, 2, 100_000);
        let tol = 1_000;
        // (case, quoted, what went back (None: accepted), fragment of the message)
        let cases: [(&str, TpmClock, Option<ClockRollback>, &str); 13] = [
            ("equal", newest, None, ""),
            ("clock ahead", clock(5, 2, 100_001), None, ""),
            ("clock behind, within the tolerance", clock(5, 2, 99_500), None, ""),
            ("clock behind by exactly the tolerance", clock(5, 2, 99_000), None, ""),
            (
                "clock behind by the tolerance + 1 ms",
                clock(5, 2, 98_999),
                Some(ClockRollback::Clock {
                    reset_count: 5,
                    restart_count: 2,
                    newest: 100_000,
                    quoted: 98_999,
                    tolerance_ms: tol,
                }),
                "its clock is 98999 ms, 1001 ms behind the 100000 ms",
            ),
            (
                "clock at zero",
                clock(5, 2, 0),
                Some(ClockRollback::Clock {
                    reset_count: 5,
                    restart_count: 2,
                    newest: 100_000,
                    quoted: 0,
                    tolerance_ms: tol,
                }),
                "100000 ms behind",
            ),
            ("reset increase, clock lower (power loss)", clock(6, 0, 10), None, ""),
            ("reset increase, clock far lower", clock(6, 9, 0), None, ""),
            ("restart increase, clock lower", clock(5, 3, 5), None, ""),
            (
                "restart decrease, clock higher",
                clock(5, 1, 200_000),
                Some(ClockRollback::RestartCount { reset_count: 5, newest: 2, quoted: 1 }),
                "at resetCount 5, its restartCount is 1, 1 below the 2",
            ),
            (
                "reset decrease, restart and clock higher",
                clock(4, 9, u64::MAX),
                Some(ClockRollback::ResetCount { newest: 5, quoted: 4 }),
                "its resetCount is 4, 1 below the 5",
            ),
            (
                "reset far lower",
                clock(0, 0, 0),
                Some(ClockRollback::ResetCount { newest: 5, quoted: 0 }),
                "5 below",
            ),
            ("clock near u64::MAX does not overflow", clock(5, 2, u64::MAX), None, ""),
        ];
        for (case, quoted, want, text) in cases {
            let got = clock_rollback(&newest, &quoted, tol);
            assert_eq!(got, want, "{case}");
            if let Some(r) = got {
                assert!(r.to_string().contains(text), "{case}: {r}");
            }
        }
        // Tolerance 0: any lag is a rollback; a huge tolerance saturates.
        assert!(clock_rollback(&newest, &clock(5, 2, 99_999), 0).is_some());
        assert!(clock_rollback(&newest, &clock(5, 2, 0), u64::MAX).is_none());
        // The error names the host, the change and the remedy.
        let e = VerifyError::TpmRollback {
            host_id: "ab12".into(),
            went_back: clock_rollback(&newest, &clock(4, 0, 0), tol).unwrap().to_string(),
        };
        let m = e.to_string();
        for want in ["host ab12 went back in time", "resetCount is 4", "snapshot", "enroll"] {
            assert!(m.contains(want), "{want:?} in {m}");
        }
    }

    #[test]
    fn refuses_before_any_crypto() {
        let (_d, v) = verifier();
        let b = [0u8; 48];
        let e = v.verify("tpm", &json!({"svn": "1"}), &b).unwrap_err();
        assert!(matches!(e, VerifyError::Malformed { .. }), "{e}");
        assert!(e.to_string().contains("tellus quote"), "{e}");
        let trustee = json!({"ak_public": "QUJD", "tpm_quote": {"signature": "cw==", "message": "bQ==", "pcrs": []}});
        let e = v.verify("tpm", &trustee, &b).unwrap_err();
        assert!(e.to_string().contains("host_id"), "{e}");
        let mut no_log = trustee.clone();
        no_log["host_id"] = json!("a".repeat(64));
        no_log["event_log"] = json!("");
        let e = v.verify("tpm", &no_log, &b).unwrap_err();
        assert!(matches!(e, VerifyError::LaunchLogMissing), "{e}");
        let mut big = no_log.clone();
        big["event_log"] = json!("A".repeat(MAX_EVENT_LOG_B64 + 4));
        let e = v.verify("tpm", &big, &b).unwrap_err();
        assert!(matches!(e, VerifyError::Malformed { .. }), "{e}");
    }
}
