//! Rego evaluation with `regorus`.
//!
//! A policy is one Rego module in `package policy` that defines `allow`;
//! it may define `reasons` (a set of reason objects, see [`Reason`]) and,
//! for attestation policies, `trust_vector` (EAR claim name → AR4SI tier).
//! Every policy is loaded beside the helper library
//! [`LIB_REGO`] (`package tellus.lib`).
//!
//! Cost: [`Policy::compile`] parses and finds which parts of the input the
//! policy can read ([`InputReads`]); [`Policy::prepare`] adds the data
//! document (reference values, requirements) and runs regorus' analysis
//! once; [`Prepared::evaluate`] clones that prepared engine (cheap:
//! copy-on-write) and evaluates one input. The verifier keeps one
//! [`Prepared`] per (policy version, reference-value version).
//!
//! Memo: a [`Prepared`] keeps the decisions of its last
//! [`MAX_MEMOISED`] distinct inputs, keyed by the digest of the input's
//! values at the paths the policy can read ([`InputReads::digest`]). An
//! input that differs from an earlier one only where the policy cannot
//! look (a quote's clock, when no rule reads `input.host.clock`) gets the
//! earlier decision without an evaluation. A policy that calls a
//! nondeterministic built-in or uses `with` is always evaluated.

use crate::reads::InputReads;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// The helper library every policy can import as `data.tellus.lib`.
pub const LIB_REGO: &str = include_str!("../rego/lib/tellus.rego");
/// The default attestation policy.
pub const TPM_LAUNCH_REGO: &str = include_str!("../rego/tpm-launch.rego");
/// The default resource policy.
pub const RESOURCE_DEFAULT_REGO: &str = include_str!("../rego/resource-default.rego");

/// The package every policy must declare.
pub const PACKAGE: &str = "policy";
/// The rule every policy must define.
pub const ALLOW_RULE: &str = "allow";

const LIB_PATH: &str = "tellus/lib/tellus.rego";
const DECISION_PATH: &str = "tellus/decision.rego";
const DECISION_RULE: &str = "data.tellus.decision.decision";
/// The data document a policy is prepared with: `data.reference` (every
/// reference value with `expired` decided at `now_unix`),
/// `data.reference_live` (the live digests by name) and
/// `data.requirements.host_labels`.
pub fn policy_data(
    refs: &crate::ReferenceSet,
    now_unix: i64,
    required_host_labels: &std::collections::BTreeMap<String, String>,
) -> Value {
    serde_json::json!({
        "reference": refs.to_policy_data(now_unix),
        "reference_live": refs.live_digests(now_unix),
        "requirements": {"host_labels": required_host_labels},
    })
}

/// Most reasons kept from one evaluation.
pub const MAX_REASONS: usize = 64;

/// Most decisions a [`Prepared`] memoises (the oldest goes first).
pub const MAX_MEMOISED: usize = 1024;
/// Largest decision memoised (about how many bytes its reasons and trust
/// vector hold): a decision that copies much of its input is evaluated
/// each time rather than kept.
pub const MAX_MEMOISED_BYTES: usize = 8 * 1024;

/// Why a policy was refused or could not be evaluated.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// A syntax or semantic error; the message carries `file:line:col`.
    #[error("{0}")]
    Syntax(String),
    #[error("{file}: the policy declares package {found}; declare `package policy`")]
    WrongPackage { file: String, found: String },
    #[error("{file}: the policy does not define the rule `allow`; define it, e.g. `default allow := false` and `allow if {{ … }}`")]
    MissingRule { file: String },
    #[error("evaluating policy {file} failed: {detail}")]
    Eval { file: String, detail: String },
    #[error("the policy's {rule} has the wrong shape: {detail}")]
    Shape { rule: &'static str, detail: String },
}

/// Why a policy denied (or a note it attached).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// The policy rule that failed (e.g. `kernel`, `host-labels`).
    #[serde(default)]
    pub rule: String,
    /// The claim it looked at (e.g. `launch.records[kernel].file`).
    #[serde(default)]
    pub claim: String,
    /// What the rule wanted (reference digests, a label…).
    #[serde(default)]
    pub expected: Value,
    /// What the claims held.
    #[serde(default)]
    pub found: Value,
    /// One sentence for a person.
    #[serde(default)]
    pub message: String,
}

impl Reason {
    /// `message [rule R, claim C, expected E, found F]` on one line.
    pub fn describe(&self) -> String {
        fn list(v: &Value) -> String {
            match v {
                Value::String(s) => s.clone(),
                Value::Array(a) => a.iter().map(list).collect::<Vec<_>>().join(" "),
                Value::Object(m) => m.values().map(list).collect::<Vec<_>>().join(" "),
                other => other.to_string(),
            }
        }
        let expected = match &self.expected {
            Value::Null => String::new(),
            Value::Array(a) if a.is_empty() => ", expected: no reference values".into(),
            Value::Array(a) => format!(", expected one of {}", list(&Value::Array(a.clone()))),
            other => format!(", expected {}", list(other)),
        };
        let found = match &self.found {
            Value::Null => String::new(),
            other => format!(", found {}", list(other)),
        };
        format!("{} [rule {}, claim {}{expected}{found}]", self.message, self.rule, self.claim)
    }
}

/// A policy's verdict on one input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Whether `allow` was true.
    pub allow: bool,
    /// The `reasons` set (sorted as Rego sorts sets), at most
    /// [`MAX_REASONS`].
    pub reasons: Vec<Reason>,
    /// `trust_vector`, if the policy defines one for this input.
    pub trust_vector: Map<String, Value>,
}

impl Decision {
    /// Every reason, one per line.
    pub fn describe(&self) -> String {
        self.reasons.iter().map(Reason::describe).collect::<Vec<_>>().join("\n")
    }
}

/// A parsed policy (with the helper library), not yet given data.
#[derive(Clone)]
pub struct Policy {
    file: String,
    engine: regorus::Engine,
    reads: Arc<InputReads>,
}

/// Which optional rules a policy defines (referring to an undeclared rule
/// is an error in regorus).
#[derive(Clone, Copy, Debug)]
struct Rules {
    reasons: bool,
    trust_vector: bool,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("file", &self.file).finish_non_exhaustive()
    }
}

/// regorus reports `--> file:line:col`, a source excerpt and
/// `error: message`; this puts `file:line:col: message` first (the form
/// editors and `policy check` users expect) and keeps the excerpt below.
fn syntax_error(e: &anyhow::Error) -> PolicyError {
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let loc = lines.iter().find_map(|l| l.trim_start().strip_prefix("--> "));
    let msg = lines.iter().find_map(|l| l.strip_prefix("error: "));
    match (loc, msg) {
        (Some(loc), Some(msg)) => {
            let excerpt: Vec<&str> = lines
                .iter()
                .filter(|l| !l.trim_start().starts_with("--> ") && !l.starts_with("error: "))
                .copied()
                .filter(|l| !l.trim().is_empty())
                .collect();
            PolicyError::Syntax(format!("{}: {msg}\n{}", loc.trim(), excerpt.join("\n")))
        }
        _ => PolicyError::Syntax(text.trim().to_owned()),
    }
}

fn new_engine() -> Result<regorus::Engine, PolicyError> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy(LIB_PATH.into(), LIB_REGO.into())
        .map_err(|e| PolicyError::Syntax(format!("the helper library does not parse: {e}")))?;
    Ok(engine)
}

impl Policy {
    /// Parses `text` (named `file` in messages) and checks that it
    /// declares `package policy` and defines `allow`.
    pub fn compile(file: &str, text: &str) -> Result<Policy, PolicyError> {
        let mut engine = new_engine()?;
        let package = engine.add_policy(file.into(), text.into()).map_err(|e| syntax_error(&e))?;
        if package != format!("data.{PACKAGE}") {
            return Err(PolicyError::WrongPackage {
                file: file.into(),
                found: package.trim_start_matches("data.").into(),
            });
        }
        let has_allow = engine
            .has_declared_rule_rooted_at(file, ALLOW_RULE)
            .map_err(|e| PolicyError::Syntax(e.to_string()))?;
        if !has_allow {
            return Err(PolicyError::MissingRule { file: file.into() });
        }
        let declared = |rule: &str| {
            engine
                .has_declared_rule_rooted_at(file, rule)
                .map_err(|e| PolicyError::Syntax(e.to_string()))
        };
        let rules =
            Rules { reasons: declared("reasons")?, trust_vector: declared("trust_vector")? };
        // One rule gathers the decision, so one evaluation computes every
        // rule of the policy once (regorus caches rule values within an
        // evaluation, not across them).
        let mut decision = String::from(
            "package tellus.decision\n\nimport rego.v1\n\ndefault allow := false\n\nallow := data.policy.allow\n\ndefault reasons := []\n\ndefault trust_vector := {}\n\n",
        );
        if rules.reasons {
            decision.push_str("reasons := data.policy.reasons\n\n");
        }
        if rules.trust_vector {
            decision.push_str("trust_vector := data.policy.trust_vector\n\n");
        }
        decision.push_str(
            "decision := {\"allow\": allow, \"reasons\": reasons, \"trust_vector\": trust_vector}\n",
        );
        engine
            .add_policy(DECISION_PATH.into(), decision)
            .map_err(|e| PolicyError::Syntax(format!("the decision module does not parse: {e}")))?;
        let reads = Arc::new(InputReads::of(engine.get_modules()));
        let policy = Policy { file: file.into(), engine, reads };
        // Semantic errors (unknown functions, unsafe variables) surface
        // only when regorus analyses the modules: do it now, with no data.
        policy.prepare(&Value::Object(Map::new()))?;
        Ok(policy)
    }

    /// The default attestation policy (`tpm-launch.rego`).
    pub fn default_attestation() -> Policy {
        // The shipped policy is tested; failing here is a build defect.
        Policy::compile("tpm-launch.rego", TPM_LAUNCH_REGO).expect("tpm-launch.rego compiles")
    }

    /// The default resource policy (`resource-default.rego`).
    pub fn default_resource() -> Policy {
        Policy::compile("resource-default.rego", RESOURCE_DEFAULT_REGO)
            .expect("resource-default.rego compiles")
    }

    /// The file name given at compile time.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// What the policy (with the helper library) can read of its input.
    pub fn input_reads(&self) -> &InputReads {
        &self.reads
    }

    /// Adds the data document and prepares the engine for evaluation.
    pub fn prepare(&self, data: &Value) -> Result<Prepared, PolicyError> {
        let mut engine = self.engine.clone();
        engine.add_data(regorus::Value::from(data.clone())).map_err(|e| PolicyError::Eval {
            file: self.file.clone(),
            detail: format!("the data document is refused: {e}"),
        })?;
        // Runs the analysis and leaves the engine prepared; clones keep it.
        engine.set_input(regorus::Value::new_object());
        engine.eval_rule(format!("data.{PACKAGE}.{ALLOW_RULE}")).map_err(|e| syntax_error(&e))?;
        Ok(Prepared {
            file: self.file.clone(),
            engine,
            memo: Arc::new(Memo { reads: self.reads.clone(), kept: Mutex::default() }),
        })
    }
}

/// A policy with its data, ready to evaluate inputs. Cheap to clone;
/// clones share one memo.
#[derive(Clone)]
pub struct Prepared {
    file: String,
    engine: regorus::Engine,
    memo: Arc<Memo>,
}

/// Decisions by input digest, bounded (first in, first out).
struct Memo {
    reads: Arc<InputReads>,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    decisions: HashMap<[u8; 32], Arc<Decision>>,
    order: VecDeque<[u8; 32]>,
}

impl Memo {
    fn get(&self, key: &[u8; 32]) -> Option<Decision> {
        // A poisoned lock only means a panic elsewhere mid-insert: evaluate.
        let d = self.kept.lock().ok()?.decisions.get(key).cloned();
        d.map(|d| Decision::clone(&d))
    }

    fn put(&self, key: [u8; 32], d: &Decision) {
        let size = d.reasons.iter().map(reason_size).sum::<usize>()
            + d.trust_vector.keys().map(|k| k.len() + 8).sum::<usize>();
        if size > MAX_MEMOISED_BYTES {
            return;
        }
        let d = Arc::new(d.clone());
        let Ok(mut kept) = self.kept.lock() else { return };
        if kept.decisions.insert(key, d).is_none() {
            kept.order.push_back(key);
        }
        while kept.order.len() > MAX_MEMOISED {
            if let Some(old) = kept.order.pop_front() {
                kept.decisions.remove(&old);
            }
        }
    }
}

/// About how many bytes a reason holds.
fn reason_size(r: &Reason) -> usize {
    fn value(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len() + 8,
            Value::Array(a) => a.iter().map(value).sum::<usize>() + 8,
            Value::Object(m) => m.iter().map(|(k, v)| k.len() + value(v)).sum::<usize>() + 8,
            _ => 8,
        }
    }
    r.rule.len() + r.claim.len() + r.message.len() + value(&r.expected) + value(&r.found)
}

/// Where a decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// The memo: an earlier input with the same values where the policy
    /// reads.
    Memo,
    /// An evaluation with regorus.
    Evaluation,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("file", &self.file).finish_non_exhaustive()
    }
}

fn to_json(v: &regorus::Value) -> Value {
    match v {
        regorus::Value::Undefined => Value::Null,
        v => serde_json::to_value(v).unwrap_or(Value::Null),
    }
}

impl Prepared {
    /// The decision on `input`: from the memo when an input with the same
    /// values at every path the policy can read was decided before, else
    /// evaluated (and kept when the policy is memoisable).
    pub fn evaluate(&self, input: &Value) -> Result<Decision, PolicyError> {
        self.decide(input).map(|(d, _)| d)
    }

    /// [`Prepared::evaluate`], saying whether the decision came from the
    /// memo.
    pub fn decide(&self, input: &Value) -> Result<(Decision, DecidedBy), PolicyError> {
        let key = self.memo.reads.digest(input);
        if let Some(k) = &key {
            if let Some(d) = self.memo.get(k) {
                return Ok((d, DecidedBy::Memo));
            }
        }
        let d = self.evaluate_unmemoised(input)?;
        if let Some(k) = key {
            self.memo.put(k, &d);
        }
        Ok((d, DecidedBy::Evaluation))
    }

    /// What the policy can read of its input (what the memo is keyed on).
    pub fn input_reads(&self) -> &InputReads {
        &self.memo.reads
    }

    /// Evaluates `input` with regorus, never from the memo: `allow`, then
    /// `reasons` and `trust_vector`.
    pub fn evaluate_unmemoised(&self, input: &Value) -> Result<Decision, PolicyError> {
        let mut engine = self.engine.clone();
        // Converted from the borrowed JSON, without cloning it first.
        let input = regorus::Value::deserialize(input).map_err(|e| PolicyError::Eval {
            file: self.file.clone(),
            detail: format!("the input is not a Rego value: {e}"),
        })?;
        engine.set_input(input);
        let eval_err = |e: anyhow::Error| PolicyError::Eval {
            file: self.file.clone(),
            detail: e.to_string().trim().to_owned(),
        };
        let decision = to_json(&engine.eval_rule(DECISION_RULE.into()).map_err(eval_err)?);
        let allow = match decision.get("allow") {
            Some(Value::Bool(b)) => *b,
            other => {
                return Err(PolicyError::Shape {
                    rule: "allow",
                    detail: format!("it is {}, not a boolean", other.unwrap_or(&Value::Null)),
                })
            }
        };
        let reasons = decision.get("reasons").cloned().unwrap_or(Value::Null);
        let tv = decision.get("trust_vector").cloned().unwrap_or(Value::Null);
        let mut out = Vec::new();
        match reasons {
            Value::Null => {}
            Value::Array(items) => {
                for item in items.into_iter().take(MAX_REASONS) {
                    out.push(match item {
                        Value::String(message) => Reason { message, ..Reason::default() },
                        v @ Value::Object(_) => {
                            serde_json::from_value(v).map_err(|e| PolicyError::Shape {
                                rule: "reasons",
                                detail: format!("a reason is not {{rule, claim, expected, found, message}} ({e})"),
                            })?
                        }
                        other => Reason { message: other.to_string(), ..Reason::default() },
                    });
                }
            }
            other => {
                return Err(PolicyError::Shape {
                    rule: "reasons",
                    detail: format!("it is {other}, not a set"),
                })
            }
        }
        if !allow && out.is_empty() {
            out.push(Reason {
                rule: ALLOW_RULE.into(),
                claim: String::new(),
                expected: Value::Bool(true),
                found: Value::Bool(false),
                message: format!("policy {} did not allow and gave no reason", self.file),
            });
        }
        let trust_vector = match tv {
            Value::Null => Map::new(),
            Value::Object(m) => {
                for (k, v) in &m {
                    if !v.as_i64().is_some_and(|t| (-128..=127).contains(&t)) {
                        return Err(PolicyError::Shape {
                            rule: "trust_vector",
                            detail: format!("{k} is {v}, not an AR4SI tier (-128..127)"),
                        });
                    }
                }
                m
            }
            other => {
                return Err(PolicyError::Shape {
                    rule: "trust_vector",
                    detail: format!("it is {other}, not an object"),
                })
            }
        };
        Ok(Decision { allow, reasons: out, trust_vector })
    }
}
