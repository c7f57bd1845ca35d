//! tellus launch records: what the launcher measures for a launch, in order,
//! and the one function that builds them from a launch's inputs.
//!
//! The launcher calls [`launch_records`] before it starts a VM and extends
//! each record into the host TPM; `tellus measure predict` calls the same
//! function on the same inputs and gets the same records without a TPM.
//!
//! A record's content (CEL content type [`crate::cel::CONTENT_TELLUS`]) is two
//! TLVs: type 0 = the kind's name (UTF-8), type 1 = the payload as compact
//! JSON with fields in a fixed order. The payload holds only facts a verifier
//! can check against reference values: file digests and sizes, the command
//! line, the VM's shape. Paths are not measured (they differ between hosts).

use crate::digest::{hash_file, Digest, HashAlg};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Features that tellus does not implement at all. The launch-config record
/// lists them, so a policy can require that the launcher that ran this VM was
/// one without them.
pub const ABSENT_FEATURES: [&str; 4] = ["introspection", "intervention", "snapshot", "migration"];

/// File digests are taken with these algorithms (SHA-256 for TPM banks and
/// most reference values, SHA-384 for SEV-SNP and Trustee's defaults).
pub const FILE_ALGS: [HashAlg; 2] = [HashAlg::Sha256, HashAlg::Sha384];

/// Largest record content accepted when decoding (1 MiB).
const MAX_CONTENT: usize = 1 << 20;

/// What a record measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    LauncherBinary,
    VmmBinary,
    LauncherConfig,
    VmIdentity,
    LaunchConfig,
    Firmware,
    Kernel,
    Initrd,
    Cmdline,
    SnpLaunchDigest,
    Separator,
    Reboot,
    Stop,
    ConsoleLog,
}

impl RecordKind {
    pub const ALL: [RecordKind; 14] = [
        RecordKind::LauncherBinary,
        RecordKind::VmmBinary,
        RecordKind::LauncherConfig,
        RecordKind::VmIdentity,
        RecordKind::LaunchConfig,
        RecordKind::Firmware,
        RecordKind::Kernel,
        RecordKind::Initrd,
        RecordKind::Cmdline,
        RecordKind::SnpLaunchDigest,
        RecordKind::Separator,
        RecordKind::Reboot,
        RecordKind::Stop,
        RecordKind::ConsoleLog,
    ];

    /// The kind's name, e.g. `kernel` (also the reference-value name).
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::LauncherBinary => "launcher-binary",
            RecordKind::VmmBinary => "vmm-binary",
            RecordKind::LauncherConfig => "launcher-config",
            RecordKind::VmIdentity => "vm-identity",
            RecordKind::LaunchConfig => "launch-config",
            RecordKind::Firmware => "firmware",
            RecordKind::Kernel => "kernel",
            RecordKind::Initrd => "initrd",
            RecordKind::Cmdline => "cmdline",
            RecordKind::SnpLaunchDigest => "snp-launch-digest",
            RecordKind::Separator => "separator",
            RecordKind::Reboot => "reboot",
            RecordKind::Stop => "stop",
            RecordKind::ConsoleLog => "console-log",
        }
    }

    pub fn from_name(s: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// Errors of record decoding and building.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("tellus record content is malformed: {0}")]
    Malformed(String),
    #[error("unknown tellus record kind '{0}'")]
    UnknownKind(String),
    #[error("cannot measure {what} {path}: {source}")]
    File { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// One launch record: a kind and its JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRecord {
    pub kind: RecordKind,
    /// Compact JSON of the payload, exactly as measured.
    payload: Vec<u8>,
}

/// Digests and size of a measured file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeasurement {
    pub sha256: Digest,
    pub sha384: Digest,
    pub size: u64,
}

impl FileMeasurement {
    pub fn of(what: &'static str, path: &Path) -> Result<FileMeasurement, RecordError> {
        let (d, size) = hash_file(path, &FILE_ALGS).map_err(|source| RecordError::File {
            what,
            path: path.into(),
            source,
        })?;
        let mut d = d.into_iter();
        match (d.next(), d.next()) {
            (Some(sha256), Some(sha384)) => Ok(FileMeasurement { sha256, sha384, size }),
            _ => unreachable!("hash_file returns one digest per requested algorithm"),
        }
    }
}

/// The launcher's own settings that bear on what it measures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LauncherConfig {
    /// PCR the launch records are extended into. (Which banks are extended
    /// is the TPM's business, not the launcher's: every active one.)
    pub pcr: u32,
}

/// The VM's shape and the host functions it gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchConfig {
    pub backend: String,
    pub accel: String,
    pub machine: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub devices: Vec<String>,
    pub sev_policy: Option<u64>,
    pub absent_features: Vec<String>,
}

/// Everything a launch is measured from.
#[derive(Debug, Clone)]
pub struct LaunchInputs {
    /// The launcher executable (`tellus`).
    pub launcher: PathBuf,
    /// The VMM executable when it is a separate program (QEMU).
    pub vmm: Option<PathBuf>,
    pub launcher_config: LauncherConfig,
    /// VM identity (`--name`).
    pub name: String,
    /// Launch ticket from the verifier, when there is one.
    pub launch_ticket: Option<String>,
    pub launch_config: LaunchConfig,
    pub firmware: Option<PathBuf>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The SEV-SNP launch, for SNP guests: recorded as `snp-launch-digest`
    /// after the command line.
    pub snp: Option<SnpLaunch>,
}

/// What an SEV-SNP guest is launched with and the MEASUREMENT its report
/// will carry (predicted with [`crate::snp::launch_digest`]). HOST_DATA is
/// not an input: [`launch_records`] records [`host_data`] of the launch's own
/// launch-config record, so the SNP report and the TPM log name the same VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpLaunch {
    /// Predicted launch digest (48 bytes), lowercase hex.
    pub measurement: String,
    /// SNP guest policy.
    pub policy: u64,
    /// vCPU model whose signature entered the digest, e.g. `EPYC-v4`.
    pub vcpu_type: String,
    /// VMM type of the VMSAs, e.g. `QEMU`.
    pub vmm_type: String,
    /// SEV_FEATURES of the VMSAs.
    pub guest_features: u64,
}

/// SNP HOST_DATA of a launch: SHA-256 of its launch-config record, i.e. the
/// record's SHA-256 event digest in the host log (the hash of its CEL content
/// TLV), so a verifier compares HOST_DATA with the logged digest directly.
/// `None` without a launch-config record.
pub fn host_data(records: &[LaunchRecord]) -> Option<[u8; 32]> {
    let rec = records.iter().find(|r| r.kind == RecordKind::LaunchConfig)?;
    let cel = crate::cel::CelRecord::tellus(0, 0, rec, &[HashAlg::Sha256]);
    let d = Digest::of(HashAlg::Sha256, &cel.content_tlv());
    d.as_bytes().try_into().ok()
}

impl LaunchRecord {
    fn new<T: Serialize>(kind: RecordKind, payload: &T) -> LaunchRecord {
        // Serialising our own plain structs cannot fail.
        let payload = serde_json::to_vec(payload).unwrap_or_default();
        LaunchRecord { kind, payload }
    }

    pub fn file(kind: RecordKind, m: &FileMeasurement) -> LaunchRecord {
        LaunchRecord::new(kind, m)
    }

    pub fn cmdline(cmdline: &str) -> LaunchRecord {
        LaunchRecord::new(RecordKind::Cmdline, &serde_json::json!({ "cmdline": cmdline }))
    }

    /// The VM stopped; `reason` as the VMM reported it, `boots` counted by the launcher.
    pub fn stop(reason: &str, boots: u32) -> LaunchRecord {
        LaunchRecord::new(
            RecordKind::Stop,
            &serde_json::json!({ "reason": reason, "boots": boots }),
        )
    }

    /// Digest of everything the guest wrote to its console.
    pub fn console_log(m: &FileMeasurement) -> LaunchRecord {
        LaunchRecord::new(RecordKind::ConsoleLog, m)
    }

    pub fn separator() -> LaunchRecord {
        LaunchRecord::new(RecordKind::Separator, &serde_json::json!({}))
    }

    /// The payload as JSON.
    pub fn payload(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }

    /// File digests of a file record (binary, firmware, kernel, initrd).
    pub fn file_measurement(&self) -> Option<FileMeasurement> {
        serde_json::from_slice(&self.payload).ok()
    }

    /// `{"kind": ..., <payload fields>}` for display and JSON logs.
    pub fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("kind".into(), Value::from(self.kind.name()));
        if let Value::Object(p) = self.payload() {
            o.extend(p);
        }
        Value::Object(o)
    }

    /// The CEL content value: TLV 0 = kind name, TLV 1 = payload.
    pub fn encode_content(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + self.payload.len() + 24);
        for (t, v) in [(0u8, self.kind.name().as_bytes()), (1u8, self.payload.as_slice())] {
            out.push(t);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    /// Inverse of [`encode_content`](Self::encode_content), bounds-checked.
    pub fn decode_content(b: &[u8]) -> Result<LaunchRecord, RecordError> {
        if b.len() > MAX_CONTENT {
            return Err(RecordError::Malformed(format!("{} bytes of content", b.len())));
        }
        let mut pos = 0;
        let mut next = |want: u8| -> Result<&[u8], RecordError> {
            let hdr = b
                .get(pos..pos + 5)
                .ok_or_else(|| RecordError::Malformed("truncated TLV header".into()))?;
            if hdr[0] != want {
                return Err(RecordError::Malformed(format!(
                    "TLV type {} where {want} belongs",
                    hdr[0]
                )));
            }
            let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
            let v = b
                .get(pos + 5..(pos + 5).saturating_add(len))
                .ok_or_else(|| RecordError::Malformed("TLV longer than the content".into()))?;
            pos += 5 + len;
            Ok(v)
        };
        let kind = next(0)?;
        let kind = std::str::from_utf8(kind)
            .map_err(|_| RecordError::Malformed("kind is not UTF-8".into()))?;
        let kind =
            RecordKind::from_name(kind).ok_or_else(|| RecordError::UnknownKind(kind.into()))?;
        let payload = next(1)?.to_vec();
        if pos != b.len() {
            return Err(RecordError::Malformed("bytes after the payload".into()));
        }
        if !serde_json::from_slice::<Value>(&payload).is_ok_and(|v| v.is_object()) {
            return Err(RecordError::Malformed("payload is not a JSON object".into()));
        }
        Ok(LaunchRecord { kind, payload })
    }
}

/// The records of a launch, up to and including the separator that marks
/// the start of the vCPUs, in the order design.md fixes.
pub fn launch_records(i: &LaunchInputs) -> Result<Vec<LaunchRecord>, RecordError> {
    let mut out = vec![LaunchRecord::file(
        RecordKind::LauncherBinary,
        &FileMeasurement::of("launcher binary", &i.launcher)?,
    )];
    if let Some(vmm) = &i.vmm {
        out.push(LaunchRecord::file(
            RecordKind::VmmBinary,
            &FileMeasurement::of("VMM binary", vmm)?,
        ));
    }
    out.push(LaunchRecord::new(RecordKind::LauncherConfig, &i.launcher_config));
    out.push(LaunchRecord::new(
        RecordKind::VmIdentity,
        &serde_json::json!({ "name": i.name, "launch_ticket": i.launch_ticket }),
    ));
    out.push(LaunchRecord::new(RecordKind::LaunchConfig, &i.launch_config));
    if let Some(fw) = &i.firmware {
        out.push(LaunchRecord::file(RecordKind::Firmware, &FileMeasurement::of("firmware", fw)?));
    }
    out.push(LaunchRecord::file(RecordKind::Kernel, &FileMeasurement::of("kernel", &i.kernel)?));
    out.push(LaunchRecord::file(RecordKind::Initrd, &FileMeasurement::of("initrd", &i.initrd)?));
    out.push(LaunchRecord::cmdline(&i.cmdline));
    if let Some(snp) = &i.snp {
        let host_data = host_data(&out).map(hex::encode).unwrap_or_default();
        out.push(LaunchRecord::new(
            RecordKind::SnpLaunchDigest,
            &serde_json::json!({
                "measurement": snp.measurement,
                "host_data": host_data,
                "policy": snp.policy,
                "vcpu_type": snp.vcpu_type,
                "vmm_type": snp.vmm_type,
                "guest_features": snp.guest_features,
            }),
        ));
    }
    out.push(LaunchRecord::separator());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trip_and_errors() {
        let r = LaunchRecord::cmdline("console=ttyS0 quiet");
        let c = r.encode_content();
        assert_eq!(LaunchRecord::decode_content(&c).unwrap(), r);
        assert_eq!(r.to_json()["cmdline"], "console=ttyS0 quiet");
        for n in 0..c.len() {
            assert!(LaunchRecord::decode_content(&c[..n]).is_err());
        }
        let mut bad = c.clone();
        bad[5] = b'X'; // kind "Xmdline"
        assert!(matches!(LaunchRecord::decode_content(&bad), Err(RecordError::UnknownKind(_))));
        let mut long = c.clone();
        long.push(0);
        assert!(LaunchRecord::decode_content(&long).is_err());
    }

    #[test]
    fn launch_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = |n: &str, b: &[u8]| {
            let p = dir.path().join(n);
            std::fs::write(&p, b).unwrap();
            p
        };
        let inputs = LaunchInputs {
            launcher: f("tellus", b"launcher"),
            vmm: Some(f("qemu", b"qemu")),
            launcher_config: LauncherConfig { pcr: 13 },
            name: "vm1".into(),
            launch_ticket: None,
            launch_config: LaunchConfig {
                backend: "qemu".into(),
                accel: "tcg".into(),
                machine: "microvm".into(),
                vcpus: 1,
                memory_mib: 256,
                devices: vec![],
                sev_policy: None,
                absent_features: ABSENT_FEATURES.iter().map(|s| s.to_string()).collect(),
            },
            firmware: None,
            kernel: f("k", b"kernel"),
            initrd: f("i", b"initrd"),
            cmdline: "c".into(),
            snp: None,
        };
        let recs = launch_records(&inputs).unwrap();
        let kinds: Vec<_> = recs.iter().map(|r| r.kind.name()).collect();
        assert_eq!(
            kinds,
            [
                "launcher-binary",
                "vmm-binary",
                "launcher-config",
                "vm-identity",
                "launch-config",
                "kernel",
                "initrd",
                "cmdline",
                "separator"
            ]
        );
        assert_eq!(
            recs[5].file_measurement().unwrap().sha256,
            Digest::of(HashAlg::Sha256, b"kernel")
        );
        // An SNP launch: the digest record follows the command line and its
        // HOST_DATA is SHA-256 of the launch-config record's content.
        let mut snp = inputs.clone();
        snp.snp = Some(SnpLaunch {
            measurement: "ab".repeat(48),
            policy: 0x30000,
            vcpu_type: "EPYC-v4".into(),
            vmm_type: "QEMU".into(),
            guest_features: 1,
        });
        let srecs = launch_records(&snp).unwrap();
        assert_eq!(srecs[srecs.len() - 2].kind, RecordKind::SnpLaunchDigest);
        assert_eq!(srecs[srecs.len() - 3].kind, RecordKind::Cmdline);
        let hd = host_data(&srecs).unwrap();
        let logged = crate::cel::CelRecord::tellus(4, 13, &recs[4], &[HashAlg::Sha256]);
        assert_eq!(hd.as_slice(), logged.digests[0].bytes.as_slice());
        assert_eq!(srecs[srecs.len() - 2].payload()["host_data"], hex::encode(hd));
        assert_eq!(srecs[srecs.len() - 2].payload()["measurement"], "ab".repeat(48));
        assert_eq!(host_data(&srecs[5..]), None);
        let mut missing = inputs.clone();
        missing.initrd = dir.path().join("nope");
        let e = launch_records(&missing).unwrap_err().to_string();
        assert!(e.contains("cannot measure initrd"), "{e}");
    }
}
