//! Offline commands around policies and reference values, for `main.rs`:
//!
//! - `refs add FILE [--expires T] [--provenance TEXT]`: merges reference
//!   values (the output of `tellus measure predict --output json`, or a map
//!   of name to digests) into the verifier's database in its state
//!   directory. Safe while a server runs on the same state directory:
//!   SQLite in WAL mode, one transaction, and the server sees the change on
//!   its next request (its policy cache is keyed by a revision counter).
//! - `refs list`: the stored reference values.
//! - `policy check FILE…`: compiles policies; errors name `file:line:col`;
//!   a policy that compiles is shown with what of its input it reads (what
//!   its decisions are memoised by) or why it is not memoised.
//! - `policy test --policy P (--claims C | --evidence E --nonce HEX) --refs R`:
//!   evaluates a policy without a server and prints allow/deny with every
//!   reason. With `--evidence`, the quote's signature, its nonce, its PCR
//!   digest and the launch log replay are checked as the server checks
//!   them, but **not** the host's enrollment (there is no registrar
//!   offline): the claims say `enrolled: false, activated: false` unless
//!   `--assume-enrolled` is given, and carry the labels of `--host-labels`.
//!
//! Exit status: 0 allowed / checked, 1 denied / a policy does not compile,
//! 2 the inputs could not be read.

use super::token::TokenSigner;
use super::tpm_verifier::tpm_claims;
use crate::audit::{AuditEntry, AuditEvent, AuditKeys};
use crate::config::Config;
use crate::storage::{SqliteStore, Store};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tellus_policies::{Claims, InputReads, Policy, ReferenceSet};

/// Largest policy, claims, evidence or reference-value file read.
const MAX_FILE: u64 = 64 << 20;

/// Where the verifier's state is.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct StateArgs {
    /// TOML configuration file (for its state_dir).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory (overrides the configuration; default
    /// /var/lib/tellus-verifier).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    fn state_dir(&self) -> Result<PathBuf, String> {
        Ok(self.config()?.state_dir)
    }

    /// The configuration, with `--state-dir` applied.
    fn config(&self) -> Result<Config, String> {
        let mut c = match &self.config {
            Some(p) => Config::load(p).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        if let Some(d) = &self.state_dir {
            c.state_dir = d.clone();
        }
        Ok(c)
    }

    /// The verifier's token-signing key (which also signs the audit log),
    /// loaded (or, in a fresh state directory, created) as `serve` does.
    fn signer(&self) -> Result<TokenSigner, String> {
        let config = self.config()?;
        let secrets =
            super::keys::Secrets::load_or_create(&config, &ring::rand::SystemRandom::new())
                .map_err(|e| e.to_string())?;
        TokenSigner::from_pkcs8(&secrets.signing_key_pkcs8).map_err(|e| e.to_string())
    }
}

/// `refs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RefsCommand {
    /// Merge reference values from a file (`tellus measure predict --output
    /// json`, or `{"<name>": ["alg:hex", …]}`) into the verifier's database.
    Add {
        /// The reference-value file (`-`: standard input).
        file: PathBuf,
        /// RFC 3339 time after which these values no longer match.
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
        /// Where the values came from (free text, e.g. "tellus measure
        /// predict on host X, 2026-11-27").
        #[arg(long, value_name = "TEXT")]
        provenance: Option<String>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Print the stored reference values as JSON.
    List {
        #[command(flatten)]
        state: StateArgs,
    },
}

/// `policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Parse policies; print errors as file:line:col.
    Check {
        /// Rego policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Evaluate a policy offline and print allow/deny with its reasons.
    Test(PolicyTestArgs),
}

/// `policy test` arguments.
#[derive(Debug, clap::Args)]
pub struct PolicyTestArgs {
    /// The Rego policy (default: the built-in tpm-launch.rego).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The policy input: claims JSON as the verifier builds them
    /// (policies/README.md), or a resource-policy input.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "evidence",
        required_unless_present = "evidence"
    )]
    pub claims: Option<PathBuf>,
    /// tellus TPM evidence JSON (`tellus quote`); its claims are built as
    /// the server would, without the enrollment check.
    #[arg(long, value_name = "FILE", requires = "nonce")]
    pub evidence: Option<PathBuf>,
    /// The quote's expected qualifying data as hex (with --evidence).
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,
    /// With --evidence: claim the host enrolled and activated.
    #[arg(long)]
    pub assume_enrolled: bool,
    /// With --evidence: the host's labels, k=v,k2=v2.
    #[arg(long, value_name = "LABELS", default_value = "")]
    pub host_labels: String,
    /// Reference values (`tellus measure predict --output json`, or a map).
    #[arg(long, value_name = "FILE")]
    pub refs: Option<PathBuf>,
    /// Host labels required of every host (data.requirements.host_labels),
    /// k=v,k2=v2.
    #[arg(long, value_name = "LABELS", default_value = "")]
    pub required_labels: String,
    /// Print the decision as JSON.
    #[arg(long)]
    pub json: bool,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let r = if path == Path::new("-") {
        std::io::stdin().lock().take(MAX_FILE + 1).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
    };
    r.map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("{what} {} is larger than {MAX_FILE} bytes", path.display()));
    }
    Ok(bytes)
}

fn read_json(what: &str, path: &Path) -> Result<Value, String> {
    serde_json::from_slice(&read(what, path)?)
        .map_err(|e| format!("{what} {} is not JSON: {e}", path.display()))
}

fn read_text(what: &str, path: &Path) -> Result<String, String> {
    String::from_utf8(read(what, path)?)
        .map_err(|_| format!("{what} {} is not UTF-8 text", path.display()))
}

/// `k=v,k2=v2` → map.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("label {pair:?} is not k=v"))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

fn input_error(msg: String) -> ExitCode {
    eprintln!("tellus-verifier: {msg}");
    ExitCode::from(2)
}

/// Runs a `refs` subcommand.
pub fn refs_main(cmd: RefsCommand) -> ExitCode {
    match cmd {
        RefsCommand::Add { file, expires, provenance, state } => {
            let result = (|| {
                let doc = read_json("reference values", &file)?;
                let set = ReferenceSet::from_json(&doc, expires.as_deref(), provenance.as_deref())
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let signer = state.signer()?;
                let store = SqliteStore::open_in(&state.state_dir()?).map_err(|e| e.to_string())?;
                // Logged first, as the server does: no change without its entry.
                let mut detail = super::admin::reference_detail(&set);
                detail["via"] = json!("tellus-verifier refs add");
                store
                    .append_audit(&|prev| {
                        AuditEntry::next(
                            prev,
                            super::now_ms(),
                            AuditEvent::ReferenceValuesChanged,
                            "reference-values",
                            detail.clone(),
                            &signer,
                        )
                    })
                    .map_err(|e| e.to_string())?;
                store.merge_reference_values(&set).map_err(|e| e.to_string())?;
                let all = store.reference_values().map_err(|e| e.to_string())?;
                Ok::<_, String>((set, all))
            })();
            match result {
                Ok((set, all)) => {
                    println!(
                        "added {} digests under {} names ({} digests stored in all)",
                        set.len(),
                        set.values.len(),
                        all.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => input_error(e),
            }
        }
        RefsCommand::List { state } => {
            let result = state.state_dir().and_then(|d| {
                let store = SqliteStore::open_in(&d).map_err(|e| e.to_string())?;
                store.reference_values().map_err(|e| e.to_string())
            });
            match result {
                Ok(all) => {
                    println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => input_error(e),
            }
        }
    }
}

/// Runs a `policy` subcommand.
pub fn policy_main(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Check { files } => {
            let mut failed = false;
            for f in files {
                let text = match read_text("policy", &f) {
                    Ok(t) => t,
                    Err(e) => return input_error(e),
                };
                match Policy::compile(&f.display().to_string(), &text) {
                    Ok(p) => match p.input_reads() {
                        r @ InputReads::Paths(_) => println!(
                            "{}: ok; decisions are memoised by what it reads: {r}",
                            f.display()
                        ),
                        r => println!("{}: ok; every input is evaluated: {r}", f.display()),
                    },
                    Err(e) => {
                        println!("{e}");
                        failed = true;
                    }
                }
            }
            if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        PolicyCommand::Test(a) => match policy_test(&a) {
            Ok(code) => code,
            Err(e) => input_error(e),
        },
    }
}

fn evidence_claims(a: &PolicyTestArgs, path: &Path) -> Result<Value, String> {
    use crate::tpm::evidence::{evidence_from_json, verify_evidence};
    let ev = evidence_from_json(&read("evidence", path)?).map_err(|e| e.to_string())?;
    let nonce = a.nonce.as_deref().unwrap_or_default();
    let nonce = hex::decode(nonce.trim().trim_start_matches("0x"))
        .map_err(|e| format!("--nonce is not hex ({e})"))?;
    let quote =
        verify_evidence(&ev, &nonce).map_err(|e| format!("the evidence does not verify: {e}"))?;
    let labels = parse_labels(&a.host_labels)?;
    let host_id = ev.host_id.clone().unwrap_or_default();
    let claims = tpm_claims(
        &quote,
        &host_id,
        &labels,
        a.assume_enrolled,
        a.assume_enrolled,
        ev.launch_recnum,
    )
    .map_err(|e| format!("the evidence does not verify: {e}"))?;
    Ok(Claims::Tpm(Box::new(claims)).to_json())
}

fn policy_test(a: &PolicyTestArgs) -> Result<ExitCode, String> {
    let (file, text) = match &a.policy {
        Some(p) => (p.display().to_string(), read_text("policy", p)?),
        None => ("tpm-launch.rego".to_owned(), tellus_policies::engine::TPM_LAUNCH_REGO.to_owned()),
    };
    let policy = Policy::compile(&file, &text).map_err(|e| e.to_string())?;
    let input = match (&a.claims, &a.evidence) {
        (Some(c), _) => read_json("claims", c)?,
        (None, Some(e)) => evidence_claims(a, e)?,
        (None, None) => return Err("give --claims or --evidence".into()),
    };
    let refs = match &a.refs {
        Some(r) => {
            let doc = read_json("reference values", r)?;
            ReferenceSet::from_json(&doc, None, None)
                .map_err(|e| format!("{}: {e}", r.display()))?
        }
        None => ReferenceSet::default(),
    };
    let now = super::now_ms() / 1000;
    let data = tellus_policies::engine::policy_data(&refs, now, &parse_labels(&a.required_labels)?);
    let d = policy.prepare(&data).and_then(|p| p.evaluate(&input)).map_err(|e| e.to_string())?;
    if a.json {
        let j = json!({"allow": d.allow, "reasons": d.reasons, "trust_vector": d.trust_vector});
        println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
    } else if d.allow {
        println!("allow ({file})");
    } else {
        println!("deny ({file}): {} reason(s)", d.reasons.len());
        for r in &d.reasons {
            println!("- {}", r.describe());
        }
    }
    Ok(if d.allow { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Output format of `audit verify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditOutput {
    Text,
    Json,
}

/// `audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the whole audit log: sequence, hash chain and every signature.
    /// Exit 0 valid, 1 broken (the message names the entry), 2 unreadable.
    Verify {
        #[command(flatten)]
        state: StateArgs,
        /// Verify with the keys of this JWK Set (e.g. saved from GET
        /// /tellus/v1/jwks) instead of the state directory's signing key.
        #[arg(long, value_name = "FILE")]
        jwks: Option<PathBuf>,
        /// A head printed by an earlier `audit verify` (`SEQ:HASH`); the
        /// log must still contain it unchanged (catches a cut-off tail).
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: AuditOutput,
    },
    /// Print entries as JSON lines, oldest first.
    Show {
        #[command(flatten)]
        state: StateArgs,
        /// First sequence number to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many entries at most.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

/// Entries read per database query while verifying.
const AUDIT_PAGE: usize = 1024;

/// Opens the existing database of a state directory (never creates one:
/// verifying a mistyped directory must not report an empty, valid log).
fn open_existing(state: &StateArgs) -> Result<SqliteStore, String> {
    let dir = state.state_dir()?;
    let db = dir.join(crate::storage::sqlite::DB_FILE);
    if !db.is_file() {
        return Err(format!(
            "no verifier database at {}; pass the verifier's --state-dir or --config",
            db.display()
        ));
    }
    SqliteStore::open(&db).map_err(|e| e.to_string())
}

/// The public keys to verify with: `--jwks FILE`, else the state
/// directory's signing key (read, never created).
fn audit_keys(state: &StateArgs, jwks: Option<&Path>) -> Result<AuditKeys, String> {
    let keys = match jwks {
        Some(p) => AuditKeys::from_jwks(&read_json("JWK Set", p)?),
        None => {
            let path = state.state_dir()?.join(super::keys::SIGNING_KEY_FILE);
            let der = read("signing key", &path)?;
            let signer =
                TokenSigner::from_pkcs8(&der).map_err(|e| format!("{}: {e}", path.display()))?;
            AuditKeys::from_jwks(&signer.jwks())
        }
    };
    if keys.is_empty() {
        return Err("no EC P-256 key to verify with; give a JWK Set with the verifier's key".into());
    }
    Ok(keys)
}

/// Runs an `audit` subcommand.
pub fn audit_main(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify { state, jwks, expect_head, output } => {
            let head = match expect_head.as_deref().map(crate::audit::parse_head) {
                None => None,
                Some(Some(h)) => Some(h),
                Some(None) => {
                    return input_error(
                        "--expect-head takes SEQ:HASH as `audit verify` prints it (HASH: 64 hex digits)"
                            .into(),
                    )
                }
            };
            let (store, keys) = match open_existing(&state)
                .and_then(|s| Ok((s, audit_keys(&state, jwks.as_deref())?)))
            {
                Ok(v) => v,
                Err(e) => return input_error(e),
            };
            // Read page by page; a read error ends the iteration and is
            // reported as exit 2 below.
            let read_err = std::cell::RefCell::new(None::<String>);
            let mut next = 0u64;
            let mut page: std::vec::IntoIter<AuditEntry> = Vec::new().into_iter();
            let mut done = false;
            let entries = std::iter::from_fn(|| loop {
                if let Some(e) = page.next() {
                    next = e.seq.saturating_add(1);
                    return Some(e);
                }
                if done {
                    return None;
                }
                match store.audit_entries(next, AUDIT_PAGE) {
                    Ok(v) => {
                        done = v.len() < AUDIT_PAGE;
                        page = v.into_iter();
                    }
                    Err(e) => {
                        *read_err.borrow_mut() = Some(e.to_string());
                        return None;
                    }
                }
            });
            let result = crate::audit::verify_chain(
                entries,
                &keys,
                head.as_ref().map(|(s, h)| (*s, h.as_str())),
            );
            if let Some(e) = read_err.into_inner() {
                return input_error(e);
            }
            match (result, output) {
                (Ok(sum), AuditOutput::Text) => {
                    println!(
                        "audit log valid: {} entries, head {}",
                        sum.entries,
                        sum.head_string()
                    );
                    ExitCode::SUCCESS
                }
                (Ok(sum), AuditOutput::Json) => {
                    let v =
                        json!({"valid": true, "entries": sum.entries, "head": sum.head_string()});
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                (Err(e), AuditOutput::Text) => {
                    println!("audit log BROKEN: {e}");
                    ExitCode::from(1)
                }
                (Err(e), AuditOutput::Json) => {
                    println!("{}", json!({"valid": false, "error": e.to_string()}));
                    ExitCode::from(1)
                }
            }
        }
        AuditCommand::Show { state, from, limit } => {
            let result = open_existing(&state)
                .and_then(|s| s.audit_entries(from, limit).map_err(|e| e.to_string()));
            match result {
                Ok(entries) => {
                    for e in entries {
                        match serde_json::to_string(&e) {
                            Ok(line) => println!("{line}"),
                            Err(err) => return input_error(err.to_string()),
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => input_error(e),
            }
        }
    }
}
