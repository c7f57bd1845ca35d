//! The measurement subcommands of `tellus`: `measure predict` and
//! `eventlog show`. Output is text for people or JSON for programs.

use crate::measure::{self, MeasureError};
use crate::run::{self, RunError, VmSpec};
use serde_json::{json, Value};
use std::path::Path;
use tellus_measured_boot::cel::{self, CelError};
use tellus_measured_boot::pcclient::{self, PcClientError};
use tellus_measured_boot::predict::predict as predict_records;
use tellus_measured_boot::records::{launch_records, RecordError};
use tellus_measured_boot::{HashAlg, PcrBanks};

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `--format` of `eventlog show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatChoice {
    /// CEL-JSON if it starts with `[`, CEL-TLV if it decodes as such, else PC Client.
    Auto,
    Pcclient,
    Cel,
}

/// A PCR bank named on the command line.
#[derive(Debug, Clone, Copy)]
pub struct BankArg(pub HashAlg);

impl std::str::FromStr for BankArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        HashAlg::from_name(s)
            .map(BankArg)
            .ok_or_else(|| format!("unknown bank '{s}'; use sha1, sha256, sha384 or sha512"))
    }
}

/// Errors of the measurement subcommands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Resolve(#[from] RunError),
    #[error(transparent)]
    Measure(#[from] MeasureError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not a CEL log: {source}")]
    Cel { path: String, source: CelError },
    #[error("{path} is not a valid PC Client event log: {source}")]
    PcClient { path: String, source: PcClientError },
    #[error("{path} is not valid JSON: {source}")]
    Json { path: String, source: serde_json::Error },
}

/// `tellus measure predict`.
pub fn predict(
    spec: &VmSpec,
    pcr: u32,
    banks: &[HashAlg],
    launch_ticket: Option<String>,
    cel_log: Option<&Path>,
    output: Output,
) -> Result<(), CliError> {
    let resolved = run::resolve(spec)?;
    let inputs = measure::launch_inputs(spec, &resolved, pcr, launch_ticket)?;
    let records = launch_records(&inputs)?;
    let p = predict_records(&records, pcr, banks, 0);
    if let Some(path) = cel_log {
        std::fs::write(path, cel::encode(&p.records))
            .map_err(|source| CliError::Write { path: path.display().to_string(), source })?;
    }
    match output {
        Output::Json => {
            let mut j = p.to_json();
            j["accel"] = json!(resolved.accel.to_string());
            println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
        }
        Output::Text => {
            println!("accelerator: {} ({})", resolved.accel, resolved.accel_reason);
            for (r, cel_rec) in records.iter().zip(&p.records) {
                println!("#{:<2} {}", cel_rec.recnum, r.kind.name());
                if let Some(f) = r.file_measurement() {
                    println!("      file {} ({} bytes)", f.sha256, f.size);
                    println!("      file {}", f.sha384);
                } else {
                    println!("      {}", r.payload());
                }
                for d in cel_rec.digests.iter().filter_map(|d| d.digest()) {
                    println!("      record {d}");
                }
            }
            for d in &p.pcr_values {
                println!("PCR {pcr} {d}");
            }
        }
    }
    Ok(())
}

/// `tellus eventlog show`.
pub fn eventlog_show(file: &Path, format: LogFormatChoice, output: Output) -> Result<(), CliError> {
    let path = file.display().to_string();
    let bytes =
        std::fs::read(file).map_err(|source| CliError::Read { path: path.clone(), source })?;
    let is_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let fmt = match format {
        LogFormatChoice::Auto if is_json => LogFormatChoice::Cel,
        LogFormatChoice::Auto if cel::decode(&bytes).is_ok_and(|r| !r.is_empty()) => {
            LogFormatChoice::Cel
        }
        LogFormatChoice::Auto => LogFormatChoice::Pcclient,
        f => f,
    };
    match fmt {
        LogFormatChoice::Cel => {
            let recs = if is_json {
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|source| CliError::Json { path: path.clone(), source })?;
                cel::from_json(&v)
            } else {
                cel::decode(&bytes)
            }
            .map_err(|source| CliError::Cel { path: path.clone(), source })?;
            let pcrs = cel::replay(&recs).unwrap_or_default();
            let bad: Vec<u64> = recs
                .iter()
                .filter(|r| !r.digest_mismatches().is_empty())
                .map(|r| r.recnum)
                .collect();
            match output {
                Output::Json => print_json(json!({
                    "format": "cel",
                    "records": cel::to_json(&recs),
                    "pcrs": pcrs_json(&pcrs),
                    "digest_mismatches": bad,
                })),
                Output::Text => {
                    println!("format: TCG Canonical Event Log, {} records", recs.len());
                    for r in &recs {
                        let what = match r.launch_record() {
                            Some(Ok(lr)) => lr.to_json().to_string(),
                            _ => format!(
                                "content type {}, {} bytes",
                                r.content_type,
                                r.content.len()
                            ),
                        };
                        println!("#{:<3} {:?} {what}", r.recnum, r.handle);
                        for d in &r.digests {
                            match d.digest() {
                                Some(d) => println!("      {d}"),
                                None => {
                                    println!("      alg 0x{:02x}:{}", d.alg, hex::encode(&d.bytes))
                                }
                            }
                        }
                    }
                    print_pcrs_text(&pcrs);
                    for n in &bad {
                        println!(
                            "MISMATCH record {n}: logged digest is not the hash of its content"
                        );
                    }
                }
            }
        }
        _ => {
            let log = pcclient::parse(&bytes)
                .map_err(|source| CliError::PcClient { path: path.clone(), source })?;
            let replay =
                log.replay().map_err(|source| CliError::PcClient { path: path.clone(), source })?;
            match output {
                Output::Json => print_json(json!({
                    "format": format!("{:?}", log.format),
                    "events": log.events.iter().map(|e| json!({
                        "index": e.index,
                        "pcr": e.pcr,
                        "type": pcclient::event_type_name(e.event_type),
                        "type_value": e.event_type,
                        "digests": e.digests.iter().map(|(alg, d)| json!({
                            "hashAlg": HashAlg::from_tpm_alg_id(*alg).map(|a| a.name().to_string()).unwrap_or(format!("0x{alg:04x}")),
                            "digest": hex::encode(d),
                        })).collect::<Vec<_>>(),
                        "data_size": e.data.len(),
                    })).collect::<Vec<_>>(),
                    "pcrs": pcrs_json(&replay.pcrs),
                    "digest_mismatches": replay.mismatches.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>(),
                })),
                Output::Text => {
                    println!(
                        "format: TCG PC Client event log ({:?}), {} events",
                        log.format,
                        log.events.len()
                    );
                    for e in &log.events {
                        println!(
                            "#{:<4} PCR {:<2} {:<36} {} bytes",
                            e.index,
                            e.pcr,
                            pcclient::event_type_name(e.event_type),
                            e.data.len()
                        );
                    }
                    print_pcrs_text(&replay.pcrs);
                    for m in &replay.mismatches {
                        println!("MISMATCH {m:?}");
                    }
                }
            }
        }
    }
    Ok(())
}

fn print_json(v: Value) {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

fn pcrs_json(p: &PcrBanks) -> Value {
    let mut o = serde_json::Map::new();
    for alg in p.algorithms() {
        let bank: serde_json::Map<String, Value> =
            p.bank(alg).map(|(i, d)| (i.to_string(), Value::from(d.to_hex()))).collect();
        o.insert(alg.name().into(), Value::Object(bank));
    }
    Value::Object(o)
}

fn print_pcrs_text(p: &PcrBanks) {
    for alg in p.algorithms() {
        for (i, d) in p.bank(alg) {
            println!("PCR {i:<2} {d}");
        }
    }
}
