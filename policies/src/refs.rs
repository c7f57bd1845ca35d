//! Reference values: per name (a launch-record kind such as `kernel`), the
//! digests a launch may show, each with an optional expiry and a free-text
//! provenance.
//!
//! They come from `tellus measure predict --output json` (see
//! [`ReferenceSet::from_json`]) or from a plain map
//! `{"<name>": ["alg:hex" | {"digest", "expires", "provenance"}, …]}`.
//! For file records (binaries, firmware, kernel, initrd) the digests are
//! the **file** digests (`sha256`/`sha384` of the record payload); for every
//! other record (cmdline, launch-config, vm-identity, …) they are the
//! **record** digests (`record_digests`), the values extended into the PCR.
//!
//! Everything here parses untrusted JSON (uploads, files): sizes are
//! bounded and every digest is checked to be `alg:hex` of the right length.

use crate::claims::is_file_kind;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tellus_measured_boot::Digest;

/// Most names in one set.
pub const MAX_NAMES: usize = 256;
/// Most digests under one name.
pub const MAX_VALUES_PER_NAME: usize = 1024;
/// Longest name.
pub const MAX_NAME_LEN: usize = 128;
/// Longest provenance text.
pub const MAX_PROVENANCE_LEN: usize = 1024;
/// Most records read from a predict document.
const MAX_RECORDS: usize = 4096;

/// Why reference values were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefsError {
    #[error("reference values must be a JSON object: either `tellus measure predict --output json` or {{\"<name>\": [\"alg:hex\", …]}}")]
    NotAnObject,
    #[error("reference value name {0:?} must be 1 to {MAX_NAME_LEN} characters of a-z, 0-9, `-`, `_`, `.`")]
    BadName(String),
    #[error("reference value {name:?}: {detail}")]
    BadValue { name: String, detail: String },
    #[error("too many reference values: at most {MAX_NAMES} names of {MAX_VALUES_PER_NAME} digests each")]
    TooMany,
    #[error("predict record {index}: {detail}; give the unmodified output of `tellus measure predict --output json`")]
    BadRecord { index: usize, detail: String },
    #[error("expiry {0:?} is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z)")]
    BadExpiry(String),
    #[error(
        "provenance must be at most {MAX_PROVENANCE_LEN} characters without control characters"
    )]
    BadProvenance,
    #[error("no reference values in the document")]
    Empty,
}

/// One accepted digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValue {
    /// `alg:hex`, lower case (measured-boot's `Digest` notation).
    pub digest: String,
    /// RFC 3339; after it the value no longer matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Where the value came from (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
}

impl ReferenceValue {
    /// Unix seconds of the expiry, if any (validated on construction).
    pub fn expires_unix(&self) -> Option<i64> {
        self.expires.as_deref().and_then(|e| parse_rfc3339(e).ok())
    }
}

/// Parses an RFC 3339 time into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Result<i64, RefsError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| RefsError::BadExpiry(s.chars().take(64).collect()))
}

/// Checks a provenance text.
pub fn check_provenance(p: &str) -> Result<(), RefsError> {
    if p.chars().count() > MAX_PROVENANCE_LEN || p.chars().any(char::is_control) {
        return Err(RefsError::BadProvenance);
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), RefsError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RefsError::BadName(name.chars().take(MAX_NAME_LEN).collect()))
    }
}

fn normalise_digest(name: &str, s: &str) -> Result<String, RefsError> {
    s.parse::<Digest>()
        .map(|d| d.to_string())
        .map_err(|e| RefsError::BadValue { name: name.into(), detail: e.to_string() })
}

/// Reference values by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReferenceSet {
    pub values: BTreeMap<String, Vec<ReferenceValue>>,
}

impl ReferenceSet {
    /// Reads reference values from JSON: the output of `tellus measure
    /// predict --output json` (an object with `records`), or a map of name
    /// to digests. `expires` and `provenance` apply to every value that
    /// does not carry its own.
    pub fn from_json(
        v: &Value,
        expires: Option<&str>,
        provenance: Option<&str>,
    ) -> Result<ReferenceSet, RefsError> {
        if let Some(e) = expires {
            parse_rfc3339(e)?;
        }
        if let Some(p) = provenance {
            check_provenance(p)?;
        }
        let obj = v.as_object().ok_or(RefsError::NotAnObject)?;
        let mut set = ReferenceSet::default();
        let mut add = |name: &str, digest: &str, own_exp: Option<&str>, own_prov: Option<&str>| {
            check_name(name)?;
            let digest = normalise_digest(name, digest)?;
            let expires = own_exp.or(expires).map(str::to_owned);
            let provenance = own_prov.or(provenance).map(str::to_owned);
            set.add(name, ReferenceValue { digest, expires, provenance })
        };
        if let Some(records) = obj.get("records") {
            let records = records.as_array().ok_or(RefsError::BadRecord {
                index: 0,
                detail: "`records` is not a list".into(),
            })?;
            if records.len() > MAX_RECORDS {
                return Err(RefsError::TooMany);
            }
            for (index, r) in records.iter().enumerate() {
                let bad = |detail: &str| RefsError::BadRecord { index, detail: detail.into() };
                let kind = r.get("kind").and_then(Value::as_str).ok_or_else(|| bad("no `kind`"))?;
                if kind == "separator" {
                    continue;
                }
                if is_file_kind(kind) {
                    for alg in ["sha256", "sha384"] {
                        let d = r
                            .get(alg)
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad("a file record without its file digests"))?;
                        add(kind, d, None, None)?;
                    }
                } else {
                    let digests = r
                        .get("record_digests")
                        .and_then(Value::as_object)
                        .ok_or_else(|| bad("no `record_digests`"))?;
                    for d in digests.values() {
                        add(
                            kind,
                            d.as_str().ok_or_else(|| bad("a digest is not a string"))?,
                            None,
                            None,
                        )?;
                    }
                }
            }
        } else {
            if obj.len() > MAX_NAMES {
                return Err(RefsError::TooMany);
            }
            for (name, values) in obj {
                let list = match values {
                    Value::Array(a) => a.as_slice(),
                    other => std::slice::from_ref(other),
                };
                if list.len() > MAX_VALUES_PER_NAME {
                    return Err(RefsError::TooMany);
                }
                for item in list {
                    match item {
                        Value::String(d) => add(name, d, None, None)?,
                        Value::Object(_) => {
                            let rv: ReferenceValue =
                                serde_json::from_value(item.clone()).map_err(|e| {
                                    RefsError::BadValue {
                                        name: name.clone(),
                                        detail: format!(
                                            "not {{\"digest\", \"expires\", \"provenance\"}} ({e})"
                                        ),
                                    }
                                })?;
                            if let Some(e) = &rv.expires {
                                parse_rfc3339(e)?;
                            }
                            if let Some(p) = &rv.provenance {
                                check_provenance(p)?;
                            }
                            add(name, &rv.digest, rv.expires.as_deref(), rv.provenance.as_deref())?
                        }
                        _ => {
                            return Err(RefsError::BadValue {
                                name: name.clone(),
                                detail:
                                    "values must be \"alg:hex\" strings or {\"digest\": …} objects"
                                        .into(),
                            })
                        }
                    }
                }
            }
        }
        if set.values.is_empty() {
            return Err(RefsError::Empty);
        }
        Ok(set)
    }

    /// Adds one value; an existing digest under the same name takes the
    /// new expiry and provenance.
    pub fn add(&mut self, name: &str, value: ReferenceValue) -> Result<(), RefsError> {
        if !self.values.contains_key(name) && self.values.len() >= MAX_NAMES {
            return Err(RefsError::TooMany);
        }
        let list = self.values.entry(name.to_owned()).or_default();
        if let Some(old) = list.iter_mut().find(|v| v.digest == value.digest) {
            *old = value;
            return Ok(());
        }
        if list.len() >= MAX_VALUES_PER_NAME {
            return Err(RefsError::TooMany);
        }
        list.push(value);
        Ok(())
    }

    /// Merges `other` into `self` (digests join existing names).
    pub fn merge(&mut self, other: &ReferenceSet) -> Result<(), RefsError> {
        for (name, values) in &other.values {
            for v in values {
                self.add(name, v.clone())?;
            }
        }
        Ok(())
    }

    /// How many digests in all.
    pub fn len(&self) -> usize {
        self.values.values().map(Vec::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The reference values as a policy sees them under
    /// `data.reference`: `{name: [{digest, expires, expired, provenance}]}`,
    /// with `expired` decided at `now_unix`.
    pub fn to_policy_data(&self, now_unix: i64) -> Value {
        let mut out = Map::new();
        for (name, values) in &self.values {
            let list: Vec<Value> = values
                .iter()
                .map(|v| {
                    json!({
                        "digest": v.digest,
                        "expires": v.expires,
                        "expired": v.expires_unix().is_some_and(|t| t <= now_unix),
                        "provenance": v.provenance,
                    })
                })
                .collect();
            out.insert(name.clone(), Value::Array(list));
        }
        Value::Object(out)
    }

    /// The live (not expired at `now_unix`) digests by name, as a policy
    /// sees them under `data.reference_live`: `{name: ["alg:hex", …]}`.
    pub fn live_digests(&self, now_unix: i64) -> Value {
        let mut out = Map::new();
        for (name, values) in &self.values {
            let live: Vec<Value> = values
                .iter()
                .filter(|v| !v.expires_unix().is_some_and(|t| t <= now_unix))
                .map(|v| Value::String(v.digest.clone()))
                .collect();
            out.insert(name.clone(), Value::Array(live));
        }
        Value::Object(out)
    }

    /// The first expiry after `now_unix` (when
    /// [`to_policy_data`](Self::to_policy_data) changes next).
    pub fn next_expiry_after(&self, now_unix: i64) -> Option<i64> {
        self.values
            .values()
            .flatten()
            .filter_map(ReferenceValue::expires_unix)
            .filter(|&t| t > now_unix)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K256: &str = "sha256:51349501a3d1ff83836437d2b365fd2d57f2feb8642d315e5181dec23d4c3275";

    #[test]
    fn map_form_merge_and_expiry() {
        let v = json!({"kernel": [K256.to_uppercase().replace("SHA256", "sha256"), {"digest": K256, "expires": "2020-01-01T00:00:00Z"}]});
        let set = ReferenceSet::from_json(&v, None, Some("test")).unwrap();
        assert_eq!(set.values["kernel"].len(), 1, "same digest merged");
        assert_eq!(set.values["kernel"][0].expires.as_deref(), Some("2020-01-01T00:00:00Z"));
        let data = set.to_policy_data(parse_rfc3339("2021-01-01T00:00:00Z").unwrap());
        assert_eq!(data["kernel"][0]["expired"], true);
        let data = set.to_policy_data(0);
        assert_eq!(data["kernel"][0]["expired"], false);
        assert_eq!(set.next_expiry_after(0), Some(1577836800));
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            json!([]),
            json!({}),
            json!({"Kernel": [K256]}),
            json!({"kernel": ["sha256:abcd"]}),
            json!({"kernel": ["md5:00"]}),
            json!({"kernel": [1]}),
            json!({"kernel": [{"digest": K256, "expires": "tomorrow"}]}),
            json!({"kernel": [{"digest": K256, "extra": 1}]}),
            json!({"records": [{"kind": "kernel", "sha256": K256}]}),
            json!({"records": [{"kind": "cmdline"}]}),
            json!({"records": "x"}),
        ] {
            assert!(ReferenceSet::from_json(&bad, None, None).is_err(), "{bad}");
        }
        assert!(ReferenceSet::from_json(&json!({"kernel": [K256]}), Some("x"), None).is_err());
        assert!(ReferenceSet::from_json(&json!({"kernel": [K256]}), None, Some("a\nb")).is_err());
    }
}
