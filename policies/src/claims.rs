//! The claims a verifier hands to an attestation policy: one JSON document
//! per attestation, tagged by `tee`, filled only with facts the verifier
//! checked. `policies/README.md` documents the shape with an example;
//! `schema/claims.schema.json` is its JSON Schema.
//!
//! For tee `tpm` the claims describe the host (enrolled, activated, labels,
//! TPM clock), whether the launch log replayed to the quoted PCR, and the
//! one launch the evidence speaks for (the group of launch records that
//! starts at `launch.first_recnum`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Claims of one attestation, by tee.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "tee", rename_all = "lowercase")]
pub enum Claims {
    /// A tellus host TPM quote over the launch PCR.
    Tpm(Box<TpmClaims>),
    /// Trustee's `sample` tee: proves only that the client saw the nonce.
    Sample(SampleClaims),
}

impl Claims {
    /// The tee name (`tpm`, `sample`).
    pub fn tee(&self) -> &'static str {
        match self {
            Claims::Tpm(_) => "tpm",
            Claims::Sample(_) => "sample",
        }
    }

    /// The claims as the JSON document a policy sees as `input`.
    pub fn to_json(&self) -> Value {
        // Plain structs of strings, numbers and maps: serialising cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Claims of tee `sample`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleClaims {
    /// The `svn` the sample evidence carried (unchecked: the sample tee
    /// proves nothing about the platform).
    pub svn: String,
}

/// Claims of tee `tpm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmClaims {
    /// The host whose TPM signed the quote.
    pub host: HostClaims,
    /// The launch log replay against the quoted launch PCR.
    pub pcr_replay: PcrReplay,
    /// The launch the evidence speaks for.
    pub launch: LaunchClaims,
}

/// The attesting host, as the verifier's registrar knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostClaims {
    /// Host id: hex SHA-256 of the EK's marshalled public area.
    pub id: String,
    /// Labels an administrator set at enrollment (e.g. `zone=dmz`).
    pub labels: BTreeMap<String, String>,
    /// The quote is signed by the AK enrolled for this host.
    pub enrolled: bool,
    /// The host proved its AK credential activation.
    pub activated: bool,
    /// The TPM clock from the quote.
    pub clock: ClockClaims,
}

/// `TPMS_CLOCK_INFO` of the quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockClaims {
    /// Milliseconds the TPM has been powered since its clock was set.
    pub clock: u64,
    /// TPM resets (power cycles) since the TPM was cleared.
    pub reset_count: u32,
    /// TPM restarts (hibernation) since the last reset.
    pub restart_count: u32,
    /// Whether the clock value is known not to have gone backwards.
    pub safe: bool,
}

/// How the launch log fared against the quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrReplay {
    /// `replays`: the log replays exactly to the quoted value. (The
    /// verifier refuses evidence whose log does not, so no other verdict
    /// reaches a policy; the field is here so a policy can say so.)
    pub verdict: String,
    /// The launch PCR, `bank:index`, e.g. `sha256:13`.
    pub pcr: String,
    /// Its quoted value, `alg:hex`.
    pub value: String,
}

/// One launch: the records from its `launcher-binary` record to its
/// `separator`, plus events logged after it (stop, reboot, console log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchClaims {
    /// Record number of the launch's first record (`launcher-binary`).
    pub first_recnum: u64,
    /// File digests of the launcher binary (`sha256`, `sha384`).
    pub launcher: BTreeMap<String, String>,
    /// Every record of the launch, in log order.
    pub records: Vec<RecordClaims>,
    /// The features the launch-config record declares absent.
    pub absent_features: Vec<String>,
    /// The VM: name, shape and command line (empty fields when not measured).
    pub vm: VmClaims,
}

impl LaunchClaims {
    /// The record of `kind`, if the launch has one.
    pub fn record(&self, kind: &str) -> Option<&RecordClaims> {
        self.records.iter().find(|r| r.kind == kind)
    }
}

/// One launch record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordClaims {
    /// CEL record number.
    pub recnum: u64,
    /// Record kind (`launcher-binary`, `kernel`, `cmdline`, …).
    pub kind: String,
    /// The record's own digests as extended into the PCR, by bank.
    pub record_digests: BTreeMap<String, String>,
    /// For file records (binaries, firmware, kernel, initrd): the file's
    /// digests and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileClaims>,
    /// For other records: the payload (cmdline, VM shape, VM name, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Map<String, Value>>,
}

/// Digests and size of a measured file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClaims {
    pub sha256: String,
    pub sha384: String,
    pub size: u64,
}

/// The VM as its launch records describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmClaims {
    pub name: Option<String>,
    pub backend: Option<String>,
    pub accel: Option<String>,
    pub machine: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub devices: Vec<String>,
    pub cmdline: Option<String>,
}

impl RecordClaims {
    /// One record from its kind, payload (the record's JSON payload object)
    /// and record digests (`alg:hex`). File kinds keep their file digests
    /// under `file`; other kinds keep the payload under `value`.
    pub fn from_payload(
        recnum: u64,
        kind: &str,
        payload: &Map<String, Value>,
        record_digests: BTreeMap<String, String>,
    ) -> RecordClaims {
        let file = if is_file_kind(kind) {
            let s = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_owned);
            match (s("sha256"), s("sha384"), payload.get("size").and_then(Value::as_u64)) {
                (Some(sha256), Some(sha384), Some(size)) => {
                    Some(FileClaims { sha256, sha384, size })
                }
                _ => None,
            }
        } else {
            None
        };
        let value = if file.is_none() { Some(payload.clone()) } else { None };
        RecordClaims { recnum, kind: kind.to_owned(), record_digests, file, value }
    }
}

impl LaunchClaims {
    /// The launch claims of `records` (the launch's records in log order,
    /// the first being its `launcher-binary` record): launcher digests,
    /// absent features and the VM's shape are read from them.
    pub fn from_records(records: Vec<RecordClaims>) -> LaunchClaims {
        let first_recnum = records.first().map_or(0, |r| r.recnum);
        let find = |kind: &str| records.iter().find(|r| r.kind == kind);
        let value = |kind: &str, field: &str| -> Option<Value> {
            find(kind)?.value.as_ref()?.get(field).cloned()
        };
        let string = |kind: &str, field: &str| value(kind, field)?.as_str().map(str::to_owned);
        let launcher = find("launcher-binary")
            .and_then(|r| r.file.as_ref())
            .map(|f| {
                BTreeMap::from([
                    ("sha256".to_owned(), f.sha256.clone()),
                    ("sha384".to_owned(), f.sha384.clone()),
                ])
            })
            .unwrap_or_default();
        let strings = |v: Option<Value>| -> Vec<String> {
            v.and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let vm = VmClaims {
            name: string("vm-identity", "name"),
            backend: string("launch-config", "backend"),
            accel: string("launch-config", "accel"),
            machine: string("launch-config", "machine"),
            vcpus: value("launch-config", "vcpus")
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok()),
            memory_mib: value("launch-config", "memory_mib").and_then(|v| v.as_u64()),
            devices: strings(value("launch-config", "devices")),
            cmdline: string("cmdline", "cmdline"),
        };
        let absent_features = strings(value("launch-config", "absent_features"));
        LaunchClaims { first_recnum, launcher, records, absent_features, vm }
    }
}

/// Record kinds whose payload is a file measurement; reference values for
/// them name file digests. For every other kind they name record digests.
pub const FILE_KINDS: [&str; 6] =
    ["launcher-binary", "vmm-binary", "firmware", "kernel", "initrd", "console-log"];

/// Whether reference values for `kind` hold file digests.
pub fn is_file_kind(kind: &str) -> bool {
    FILE_KINDS.contains(&kind)
}

/// The JSON Schema of [`Claims`] (draft 2020-12).
pub const CLAIMS_SCHEMA: &str = include_str!("../schema/claims.schema.json");
