//! Policy evaluation in the service: the active attestation and resource
//! policies, prepared with the reference values, cached, and re-prepared
//! when a policy, the reference values, or an expiry changes.
//!
//! - Active policies: the attestation policy stored under id `default`
//!   (`POST /kbs/v0/attestation-policy` with `"policy_id": "default"`), else
//!   the built-in `tpm-launch.rego`; the resource policy stored by
//!   `POST /kbs/v0/resource-policy`, else the built-in
//!   `resource-default.rego`. Other attestation policy ids are stored and
//!   versioned but not evaluated.
//! - Data ([`tellus_policies::engine::policy_data`]): `data.reference`
//!   (every stored reference value, `expired` decided when the cache entry
//!   was built), `data.reference_live` (the live digests by name) and
//!   `data.requirements.host_labels` (`required_host_labels` of the
//!   configuration).
//! - Cache: one prepared pair per (policy version, reference-value
//!   revision), valid until the next reference-value expiry. Checking the
//!   key costs one small SQLite query, so values added by another process
//!   (`tellus-verifier refs add`) take effect on the next request.

use crate::storage::{PolicyKind, Store, StoreError};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
pub use tellus_policies::Reason;
use tellus_policies::{DecidedBy, Decision, Policy, PolicyError, Prepared};

/// The attestation policy id that is evaluated.
pub const ACTIVE_ATTESTATION_POLICY: &str = "default";
/// The id the resource policy is stored under.
pub const RESOURCE_POLICY_ID: &str = "default";

/// Why no decision could be made (a verifier-side failure: fail closed).
#[derive(Debug, thiserror::Error)]
pub enum PolicyStateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored {kind} policy no longer compiles ({source}); upload a corrected one")]
    Compile {
        kind: &'static str,
        #[source]
        source: PolicyError,
    },
    #[error(transparent)]
    Eval(#[from] PolicyError),
}

/// The prepared policies of one cache generation.
pub struct Active {
    key: (i64, i64),
    valid_until: Option<i64>,
    /// The attestation policy with its data.
    pub attestation: Prepared,
    /// `ear.appraisal-policy-id` for results of this attestation policy.
    pub attestation_id: String,
    /// The resource policy.
    pub resource: Prepared,
}

/// The verdict of the attestation policy on one set of claims.
#[derive(Clone, Debug)]
pub struct Appraisal {
    /// `affirming` when the policy allowed, else `contraindicated`.
    pub status: &'static str,
    /// The policy's trust vector (the verifier's own when it gave none).
    pub trust_vector: Map<String, Value>,
    /// Why it did not allow (empty when it did).
    pub reasons: Vec<Reason>,
    /// Which policy decided.
    pub policy_id: String,
}

/// Policies of the service.
pub struct PolicyEngine {
    store: Arc<dyn Store>,
    required_host_labels: BTreeMap<String, String>,
    cache: RwLock<Option<Arc<Active>>>,
    /// Decisions by [attestation, resource] × [from the memo, evaluated].
    decided: [[AtomicU64; 2]; 2],
}

fn count(counter: &[AtomicU64; 2], by: DecidedBy) {
    let i = match by {
        DecidedBy::Memo => 0,
        DecidedBy::Evaluation => 1,
    };
    counter[i].fetch_add(1, Ordering::Relaxed);
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    crate::service::now_ms() / 1000
}

impl PolicyEngine {
    /// Policies read from `store`; `required_host_labels` from the
    /// configuration.
    pub fn new(store: Arc<dyn Store>, required_host_labels: &BTreeMap<String, String>) -> Self {
        PolicyEngine {
            store,
            required_host_labels: required_host_labels.clone(),
            cache: RwLock::new(None),
            decided: Default::default(),
        }
    }

    /// The prepared policies now in force (blocking: reads the store).
    pub fn active(&self) -> Result<Arc<Active>, PolicyStateError> {
        let key = self.store.policy_revision()?;
        let now = now_secs();
        if let Ok(guard) = self.cache.read() {
            if let Some(a) = guard.as_ref() {
                if a.key == key && a.valid_until.map_or(true, |t| now < t) {
                    return Ok(a.clone());
                }
            }
        }
        let active = Arc::new(self.build(key, now)?);
        if let Ok(mut guard) = self.cache.write() {
            *guard = Some(active.clone());
        }
        Ok(active)
    }

    fn build(&self, key: (i64, i64), now: i64) -> Result<Active, PolicyStateError> {
        let refs = self.store.reference_values()?;
        let data = tellus_policies::engine::policy_data(&refs, now, &self.required_host_labels);
        let (attestation, attestation_id) =
            match self.store.get_policy(PolicyKind::Attestation, ACTIVE_ATTESTATION_POLICY)? {
                Some(text) => (
                    Policy::compile("attestation-policy default", &text).map_err(|source| {
                        PolicyStateError::Compile { kind: "attestation", source }
                    })?,
                    format!("tellus:attestation-policy/default@{}", key.0),
                ),
                None => (Policy::default_attestation(), "tellus:tpm-launch.rego".to_owned()),
            };
        let resource = match self.store.get_policy(PolicyKind::Resource, RESOURCE_POLICY_ID)? {
            Some(text) => Policy::compile("resource-policy", &text)
                .map_err(|source| PolicyStateError::Compile { kind: "resource", source })?,
            None => Policy::default_resource(),
        };
        Ok(Active {
            key,
            valid_until: refs.next_expiry_after(now),
            attestation: attestation.prepare(&data)?,
            attestation_id,
            resource: resource.prepare(&data)?,
        })
    }

    /// Appraises `claims` (the policy input: the tee's claims with `tee`).
    pub fn appraise(
        &self,
        claims: &Value,
        verifier_trust_vector: &Map<String, Value>,
    ) -> Result<Appraisal, PolicyStateError> {
        let active = self.active()?;
        let (d, by) = active.attestation.decide(claims)?;
        count(&self.decided[0], by);
        Ok(appraisal(d, verifier_trust_vector, active.attestation_id.clone()))
    }

    /// Decides a resource request.
    pub fn decide_resource(&self, input: &Value) -> Result<Decision, PolicyStateError> {
        let (d, by) = self.active()?.resource.decide(input)?;
        count(&self.decided[1], by);
        Ok(d)
    }

    /// Decisions so far, (from the memo, evaluated), of the attestation
    /// and of the resource policy.
    pub fn decision_counts(&self) -> [(u64, u64); 2] {
        self.decided.each_ref().map(|[m, e]| (m.load(Ordering::Relaxed), e.load(Ordering::Relaxed)))
    }

    /// `tellus_verifier_policy_decisions_total` in Prometheus' text format:
    /// decisions by policy and by whether the memo answered.
    pub fn render_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP tellus_verifier_policy_decisions_total Policy decisions, by policy and by source (memo: an earlier input with the same values where the policy reads; evaluation: regorus).\n# TYPE tellus_verifier_policy_decisions_total counter\n",
        );
        for (policy, (memo, evaluation)) in
            ["attestation", "resource"].iter().zip(self.decision_counts())
        {
            for (source, n) in [("memo", memo), ("evaluation", evaluation)] {
                out.push_str(&format!(
                    "tellus_verifier_policy_decisions_total{{policy=\"{policy}\",source=\"{source}\"}} {n}\n"
                ));
            }
        }
        out
    }
}

fn appraisal(d: Decision, verifier_tv: &Map<String, Value>, policy_id: String) -> Appraisal {
    Appraisal {
        status: if d.allow { "affirming" } else { "contraindicated" },
        trust_vector: if d.trust_vector.is_empty() { verifier_tv.clone() } else { d.trust_vector },
        reasons: if d.allow { Vec::new() } else { d.reasons },
        policy_id,
    }
}

/// The policy input for claims a tee's verifier annotated as
/// `{"<tee>": {…}}`: that object with `"tee": "<tee>"` added.
pub fn policy_input(tee: &str, annotated: &Value) -> Value {
    let mut m = match annotated.get(tee) {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    m.insert("tee".into(), Value::String(tee.to_owned()));
    Value::Object(m)
}

/// The 403 detail for a denied resource: every reason on its own line.
pub fn denial_detail(resource: &str, d: &Decision) -> String {
    format!(
        "the resource policy denies {resource}:\n{}",
        d.reasons.iter().map(|r| format!("- {}", r.describe())).collect::<Vec<_>>().join("\n")
    )
}

/// Compiles an uploaded policy, for the admin routes and `policy check`.
pub fn check_upload(file: &str, text: &str) -> Result<Policy, PolicyError> {
    Policy::compile(file, text)
}
