//! `tellus-verifier`: the tellus remote verifier.
//!
//! - `serve` runs the verifier and key broker (see `service`);
//! - `verify-quote` checks a quote made with tpm2-tools (`tpm2_quote -m -s
//!   -o`) against an AK public key, a nonce and optionally an event log;
//! - `verify-evidence` checks tellus TPM evidence JSON (`tellus quote`);
//! - `refs add|list` manage reference values, `policy check|test` check and
//!   evaluate Rego policies offline (see `service::offline`).
//!
//! Exit status: 0 verified, 1 not verified (the reason is printed), 2 the
//! inputs could not be read or the arguments are wrong.

/// mimalloc instead of glibc's malloc: the service allocates and frees many
/// small JSON, policy and HTTP objects per request on several threads, where
/// glibc's arena bookkeeping (`malloc_consolidate`, `_int_free`) cost ~17 %
/// of the CPU time of a KBS round trip (perf, BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tellus_measured_boot::HashAlg;
use tellus_verifier::tpm::attest::{describe_selection, AkPublic, AkSource};
use tellus_verifier::tpm::evidence::{evidence_from_json, verify_evidence, EvidenceError};
use tellus_verifier::tpm::pcrs::{parse_pcrs_file, PcrsFileError};
use tellus_verifier::tpm::verify::{self, EventLog, EventLogFormat, VerifiedQuote, VerifyError};

/// Largest AK, quote, signature or PCR file read.
const MAX_SMALL_FILE: u64 = 1 << 20;
/// Largest event log or evidence file read.
const MAX_LARGE_FILE: u64 = 256 << 20;

#[derive(Parser)]
#[command(name = "tellus-verifier", version, about = "tellus remote verifier and key broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a TPM 2.0 quote made by tpm2_quote: the AK's signature, the
    /// nonce, the PCR values against the quote's digest, and optionally an
    /// event log against the quoted PCRs.
    VerifyQuote(VerifyQuoteArgs),
    /// Verify tellus TPM evidence JSON (`tellus quote`; a superset of
    /// Trustee's TPM evidence).
    VerifyEvidence(VerifyEvidenceArgs),
    /// Run the verifier and key broker (KBS 0.4.0 over HTTPS; plain HTTP
    /// only on loopback with --insecure-http).
    Serve(tellus_verifier::service::cli::ServeArgs),
    /// Reference values in the verifier's database (offline; safe while a
    /// server runs).
    #[command(subcommand)]
    Refs(tellus_verifier::service::offline::RefsCommand),
    /// Check or test Rego policies offline.
    #[command(subcommand)]
    Policy(tellus_verifier::service::offline::PolicyCommand),
    /// The signed, hash-chained audit log: verify it, or print entries.
    #[command(subcommand)]
    Audit(tellus_verifier::service::offline::AuditCommand),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormatArg {
    /// CEL-TLV, else TCG PC Client.
    Auto,
    /// TCG Canonical Event Log, TLV form (tellus' launch log).
    Cel,
    /// TCG PC Client firmware log (binary_bios_measurements).
    Pcclient,
}

#[derive(clap::Args)]
struct VerifyQuoteArgs {
    /// The AK public key: PEM (PUBLIC KEY or CERTIFICATE), TPM2B_PUBLIC
    /// (`tpm2_createak -u`), TPMT_PUBLIC, or DER SubjectPublicKeyInfo or
    /// certificate.
    #[arg(long, value_name = "FILE")]
    ak_pub: PathBuf,
    /// The quoted TPMS_ATTEST (`tpm2_quote -m`).
    #[arg(long, value_name = "FILE")]
    quote: PathBuf,
    /// The TPMT_SIGNATURE (`tpm2_quote -s`, default "tss" format).
    #[arg(long, value_name = "FILE")]
    sig: PathBuf,
    /// The PCR values (`tpm2_quote -o`: serialized, marshaled or values
    /// format; or `tpm2_pcrread` text output).
    #[arg(long, value_name = "FILE")]
    pcrs: PathBuf,
    /// The expected qualifying data (`tpm2_quote -q`) as hex. Without it
    /// the quote must carry none.
    #[arg(long, value_name = "HEX", default_value = "")]
    nonce: String,
    /// An event log to replay against the quoted PCRs.
    #[arg(long, value_name = "FILE")]
    eventlog: Option<PathBuf>,
    /// The event log's format.
    #[arg(long, value_enum, default_value = "auto")]
    eventlog_format: LogFormatArg,
    /// How to print the verdict.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

#[derive(clap::Args)]
struct VerifyEvidenceArgs {
    /// The evidence JSON (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    evidence: PathBuf,
    /// The evidence's tee: `tpm` (tellus TPM evidence) or `snp` (Trustee's
    /// SEV-SNP evidence; --nonce is then REPORT_DATA or the 48-byte binding).
    #[arg(long, default_value = "tpm", value_parser = ["tpm", "snp"])]
    tee: String,
    #[command(flatten)]
    snp: tellus_verifier::snp::cli::SnpArgs,
    /// The expected qualifying data as hex (for KBS attestation, the
    /// runtime-data binding).
    #[arg(long, value_name = "HEX")]
    nonce: String,
    /// How to print the verdict.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// Inputs that could not be read (exit 2).
#[derive(Debug, thiserror::Error)]
enum InputError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is larger than {max} bytes")]
    TooLarge { what: &'static str, path: PathBuf, max: u64 },
    #[error("--nonce is not hex ({0}); give the qualifying data as hex digits")]
    NonceHex(hex::FromHexError),
    #[error("--ak-pub {path}: {source}")]
    AkPub { path: PathBuf, source: tellus_verifier::tpm::ParseError },
}

/// A verdict's failure: unreadable input (2) or a failed check (1).
enum Failure {
    Input(String),
    Verify(String),
}

impl From<InputError> for Failure {
    fn from(e: InputError) -> Failure {
        Failure::Input(e.to_string())
    }
}

impl From<VerifyError> for Failure {
    fn from(e: VerifyError) -> Failure {
        Failure::Verify(e.to_string())
    }
}

impl From<PcrsFileError> for Failure {
    fn from(e: PcrsFileError) -> Failure {
        Failure::Verify(e.to_string())
    }
}

impl From<EvidenceError> for Failure {
    fn from(e: EvidenceError) -> Failure {
        Failure::Verify(e.to_string())
    }
}

fn read_file(what: &'static str, path: &Path, max: u64) -> Result<Vec<u8>, InputError> {
    let err = |source| InputError::Read { what, path: path.into(), source };
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin().lock().take(max + 1).read_to_end(&mut bytes).map_err(err)?;
    } else {
        std::fs::File::open(path)
            .map_err(err)?
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(err)?;
    }
    if bytes.len() as u64 > max {
        return Err(InputError::TooLarge { what, path: path.into(), max });
    }
    Ok(bytes)
}

fn parse_nonce(text: &str) -> Result<Vec<u8>, InputError> {
    let t = text.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    hex::decode(t).map_err(InputError::NonceHex)
}

fn verify_quote_cmd(a: &VerifyQuoteArgs) -> Result<(VerifiedQuote, Vec<String>), Failure> {
    let ak_bytes = read_file("--ak-pub", &a.ak_pub, MAX_SMALL_FILE)?;
    let attest = read_file("--quote", &a.quote, MAX_SMALL_FILE)?;
    let sig = read_file("--sig", &a.sig, MAX_SMALL_FILE)?;
    let pcr_bytes = read_file("--pcrs", &a.pcrs, MAX_SMALL_FILE)?;
    let log_bytes = match &a.eventlog {
        Some(p) => Some(read_file("--eventlog", p, MAX_LARGE_FILE)?),
        None => None,
    };
    let nonce = parse_nonce(&a.nonce)?;
    let ak = AkPublic::from_bytes(&ak_bytes)
        .map_err(|source| InputError::AkPub { path: a.ak_pub.clone(), source })?;

    let mut notes = Vec::new();
    if ak.tpm.is_none() {
        notes.push(format!(
            "the AK was given as {} only: its TPM attributes (restricted signing key) were not checked",
            if ak.source == AkSource::Certificate { "a certificate" } else { "a public key" }
        ));
    }
    if ak.source == AkSource::Certificate {
        notes.push("the AK certificate's chain was not validated".into());
    }
    let (quote, signature) = verify::authenticate(&ak, &attest, &sig)?;
    let (pcrs, format) = parse_pcrs_file(&pcr_bytes, &quote.pcr_select)?;
    notes.push(format!("PCR values read as {}", format.name()));
    let log = match log_bytes {
        Some(b) => {
            let f = match a.eventlog_format {
                LogFormatArg::Auto => EventLogFormat::Auto,
                LogFormatArg::Cel => EventLogFormat::Cel,
                LogFormatArg::Pcclient => EventLogFormat::PcClient,
            };
            Some(EventLog::parse(&b, f)?)
        }
        None => None,
    };
    let v = verify::check_quote(&ak, quote, &signature, &nonce, &pcrs, log)?;
    Ok((v, notes))
}

fn verify_evidence_cmd(a: &VerifyEvidenceArgs) -> Result<(VerifiedQuote, Vec<String>), Failure> {
    let bytes = read_file("--evidence", &a.evidence, MAX_LARGE_FILE)?;
    let nonce = parse_nonce(&a.nonce)?;
    let evidence = evidence_from_json(&bytes)?;
    let mut notes = Vec::new();
    if evidence.ak_tpm_public.is_none() {
        notes.push("no ak_tpm_public: the AK's TPM attributes were not checked".into());
    }
    if let Some(h) = &evidence.host_id {
        notes.push(format!("host id (not checked here): {h}"));
    }
    let v = verify_evidence(&evidence, &nonce)?;
    Ok((v, notes))
}

fn pcr_list(list: &[(HashAlg, u32)]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter().map(|(b, p)| format!("{b}:{p}")).collect::<Vec<_>>().join(", ")
}

fn print_text(v: &VerifiedQuote, notes: &[String]) {
    println!(
        "verified: the quote is signed by the {} AK ({}-{})",
        v.ak_key,
        v.scheme,
        v.hash.name().to_uppercase()
    );
    let nonce = if v.nonce.is_empty() { "(none)".to_string() } else { hex::encode(&v.nonce) };
    println!("  nonce:            {nonce}");
    println!("  PCR selection:    {}", describe_selection(&v.selection));
    let c = &v.clock_info;
    println!(
        "  clock:            {} ms, resetCount {}, restartCount {}, safe {}",
        c.clock,
        c.reset_count,
        c.restart_count,
        if c.safe { "yes" } else { "no" }
    );
    println!("  firmware version: 0x{:016x}", v.firmware_version);
    if let Some(name) = &v.ak_name {
        println!("  AK name:          {}", hex::encode(name));
    }
    println!("  qualified signer: {}", hex::encode(&v.qualified_signer));
    println!("  PCR values:");
    for sel in &v.selection {
        if let Some(bank) = sel.bank() {
            for &p in &sel.pcrs {
                if let Some(d) = v.pcrs.get(bank, p) {
                    println!("    {bank}:{p:<2} {}", d.to_hex());
                }
            }
        }
    }
    if let Some(l) = &v.event_log {
        println!("  event log:        {}, {} records", l.log.format_name(), l.log.len());
        println!("    replays to the quoted values of: {}", pcr_list(&l.checked));
        println!("    does not touch:                  {}", pcr_list(&l.unchecked));
        if l.content_mismatches > 0 {
            println!(
                "    {} events' data do not hash to their logged digests",
                l.content_mismatches
            );
        }
    }
    for n in notes {
        println!("  note: {n}");
    }
}

fn run(result: Result<(VerifiedQuote, Vec<String>), Failure>, output: Output) -> ExitCode {
    match (result, output) {
        (Ok((v, notes)), Output::Text) => {
            print_text(&v, &notes);
            ExitCode::SUCCESS
        }
        (Ok((v, notes)), Output::Json) => {
            let mut j = v.to_json();
            if let Some(o) = j.as_object_mut() {
                o.insert("verified".into(), json!(true));
                o.insert("notes".into(), json!(notes));
            }
            println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
            ExitCode::SUCCESS
        }
        (Err(Failure::Verify(reason)), Output::Text) => {
            println!("NOT verified: {reason}");
            ExitCode::from(1)
        }
        (Err(Failure::Input(reason)), Output::Text) => {
            eprintln!("tellus-verifier: {reason}");
            ExitCode::from(2)
        }
        (Err(f), Output::Json) => {
            let (code, reason, stage) = match f {
                Failure::Verify(r) => (1, r, "verification"),
                Failure::Input(r) => (2, r, "input"),
            };
            let j = json!({"verified": false, "stage": stage, "error": reason});
            println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
            ExitCode::from(code)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::VerifyQuote(a) => run(verify_quote_cmd(&a), a.output),
        Command::VerifyEvidence(a) if a.tee == "snp" => tellus_verifier::snp::cli::verify_main(
            &a.evidence,
            &a.nonce,
            &a.snp,
            a.output == Output::Json,
        ),
        Command::VerifyEvidence(a) => run(verify_evidence_cmd(&a), a.output),
        Command::Serve(a) => tellus_verifier::service::cli::serve_main(a),
        Command::Refs(c) => tellus_verifier::service::offline::refs_main(c),
        Command::Policy(c) => tellus_verifier::service::offline::policy_main(c),
        Command::Audit(c) => tellus_verifier::service::offline::audit_main(c),
    }
}
