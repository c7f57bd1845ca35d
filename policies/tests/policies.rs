//! The shipped policies, table-driven: a good claim set is allowed, and
//! each tampered variant is denied with the reason that names it.

mod fixtures;

use fixtures::{predict, predicted_claims};
use serde_json::{json, Map, Value};
use tellus_policies::{Claims, Decision, Policy, PolicyError, ReferenceSet};

const ALLOW_SAMPLE: &str = include_str!("../rego/allow-sample.rego");
/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600;

/// The fixture's claims ([`predicted_claims`]) in their JSON form.
fn good_claims() -> Value {
    let claims = predicted_claims();
    let v = claims.to_json();
    // The JSON form reads back into the same claims.
    assert_eq!(serde_json::from_value::<Claims>(v.clone()).unwrap(), claims);
    v
}

fn refs() -> ReferenceSet {
    ReferenceSet::from_json(&predict(), None, Some("tellus measure predict (fixture)")).unwrap()
}

fn data(refs: &ReferenceSet, required: Value) -> Value {
    tellus_policies::engine::policy_data(refs, NOW, &serde_json::from_value(required).unwrap())
}

fn record_mut<'a>(claims: &'a mut Value, kind: &str) -> &'a mut Map<String, Value> {
    claims["launch"]["records"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["kind"] == kind)
        .unwrap()
        .as_object_mut()
        .unwrap()
}

const OTHER256: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OTHER384: &str = "sha384:222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222";

fn change_file(kind: &'static str) -> impl Fn(&mut Value, &mut ReferenceSet, &mut Value) {
    move |c, _, _| {
        let r = record_mut(c, kind);
        r["file"]["sha256"] = json!(OTHER256);
        r["file"]["sha384"] = json!(OTHER384);
    }
}

fn change_record(kind: &'static str) -> impl Fn(&mut Value, &mut ReferenceSet, &mut Value) {
    move |c, _, _| {
        let r = record_mut(c, kind);
        r["record_digests"] = json!({"sha256": OTHER256, "sha384": OTHER384});
    }
}

type Tamper = Box<dyn Fn(&mut Value, &mut ReferenceSet, &mut Value)>;

fn evaluate(policy: &Policy, claims: &Value, refs: &ReferenceSet, required: &Value) -> Decision {
    policy.prepare(&data(refs, required.clone())).unwrap().evaluate(claims).unwrap()
}

#[test]
fn tpm_launch_allows_the_predicted_launch() {
    let policy = Policy::default_attestation();
    let d = evaluate(&policy, &good_claims(), &refs(), &json!({"zone": "dmz"}));
    assert!(d.allow, "{}", d.describe());
    assert!(d.reasons.is_empty(), "{:?}", d.reasons);
    assert_eq!(
        Value::Object(d.trust_vector),
        json!({"instance-identity": 2, "hardware": 2, "executables": 2, "configuration": 2})
    );
}

#[test]
fn tpm_launch_denies_each_tampered_variant_with_its_reason() {
    let policy = Policy::default_attestation();
    let k384 = predict()["records"][6]["sha384"].as_str().unwrap().to_owned();
    assert!(k384.starts_with("sha384:"));
    // (name, tamper, rule, message fragment, trust-vector claim that drops)
    let table: Vec<(&str, Tamper, &str, String, &str)> = vec![
        ("kernel changed", Box::new(change_file("kernel")), "kernel",
            "kernel digest sha384:222222222222… not in reference values \"kernel\" (2 entries)".into(), "executables"),
        ("initrd changed", Box::new(change_file("initrd")), "initrd",
            "initrd digest sha384:222222222222… not in reference values \"initrd\" (2 entries)".into(), "executables"),
        ("launcher changed", Box::new(change_file("launcher-binary")), "launcher-binary",
            "launcher-binary digest sha384:222222222222… not in reference values \"launcher-binary\" (2 entries)".into(), "executables"),
        ("cmdline changed", Box::new(change_record("cmdline")), "cmdline",
            "cmdline digest sha384:222222222222… not in reference values \"cmdline\" (2 entries)".into(), "configuration"),
        ("launch config changed", Box::new(change_record("launch-config")), "launch-config",
            "launch-config digest sha384:222222222222… not in reference values \"launch-config\"".into(), "configuration"),
        ("snapshot not declared absent", Box::new(|c: &mut Value, _: &mut ReferenceSet, _: &mut Value| {
            c["launch"]["absent_features"] = json!(["introspection", "intervention", "migration"]);
        }), "absent-features", "the launch-config record does not declare snapshot absent".into(), "configuration"),
        ("host not activated", Box::new(|c: &mut Value, _: &mut ReferenceSet, _: &mut Value| {
            c["host"]["activated"] = json!(false);
        }), "host-activated", "has not proven its AK credential activation".into(), "instance-identity"),
        ("host not enrolled", Box::new(|c: &mut Value, _: &mut ReferenceSet, _: &mut Value| {
            c["host"]["enrolled"] = json!(false);
        }), "host-enrolled", "is not enrolled with this verifier".into(), "hardware"),
        ("label mismatch", Box::new(|_: &mut Value, _: &mut ReferenceSet, req: &mut Value| {
            *req = json!({"zone": "prod"});
        }), "host-labels", "host label zone is dmz, but zone=prod is required".into(), "configuration"),
        ("label missing", Box::new(|_: &mut Value, _: &mut ReferenceSet, req: &mut Value| {
            *req = json!({"site": "lab-1"});
        }), "host-labels", "host label site is missing, but site=lab-1 is required".into(), "configuration"),
        ("kernel reference expired", Box::new(|_: &mut Value, refs: &mut ReferenceSet, _: &mut Value| {
            for v in refs.values.get_mut("kernel").unwrap() {
                v.expires = Some("2025-12-31T00:00:00Z".into());
            }
        }), "kernel", format!("kernel digest {}… matches reference value \"kernel\" only in an entry that expired at 2025-12-31T00:00:00Z", &k384[..19]), "executables"),
        ("no initrd reference values", Box::new(|_: &mut Value, refs: &mut ReferenceSet, _: &mut Value| {
            refs.values.remove("initrd");
        }), "initrd", "not in reference values \"initrd\" (0 entries)".into(), "executables"),
        ("kernel record missing", Box::new(|c: &mut Value, _: &mut ReferenceSet, _: &mut Value| {
            c["launch"]["records"].as_array_mut().unwrap().retain(|r| r["kind"] != "kernel");
        }), "kernel", "the launch has no kernel record, but reference values \"kernel\" require one".into(), "executables"),
        // A good copy after the separator does not stand in for the
        // launched one (the separator ends what was launched).
        ("kernel changed, good kernel after the separator", Box::new(|c: &mut Value, _: &mut ReferenceSet, _: &mut Value| {
            let mut good = record_mut(c, "kernel").clone();
            change_file("kernel")(c, &mut refs(), &mut json!({}));
            let last = c["launch"]["records"].as_array().unwrap().iter().map(|r| r["recnum"].as_u64().unwrap()).max().unwrap();
            good.insert("recnum".into(), json!(last + 1));
            c["launch"]["records"].as_array_mut().unwrap().push(Value::Object(good));
        }), "kernel", "kernel digest sha384:222222222222… not in reference values \"kernel\"".into(), "executables"),
        ("kernel record without file digests", Box::new(|c: &mut Value, _: &mut ReferenceSet, _: &mut Value| {
            record_mut(c, "kernel").remove("file");
        }), "kernel", "the launch's kernel record carries no digest to compare with reference values \"kernel\"".into(), "executables"),
        ("cmdline record without record digests", Box::new(|c: &mut Value, _: &mut ReferenceSet, _: &mut Value| {
            record_mut(c, "cmdline").remove("record_digests");
        }), "cmdline", "the launch's cmdline record carries no digest".into(), "configuration"),
        ("log does not replay", Box::new(|c: &mut Value, _: &mut ReferenceSet, _: &mut Value| {
            c["pcr_replay"]["verdict"] = json!("mismatch");
        }), "pcr-replay", "does not replay to the quoted launch PCR".into(), "hardware"),
    ];
    assert!(table.len() >= 10);
    for (name, tamper, rule, fragment, tv_claim) in table {
        let mut claims = good_claims();
        let mut refs = refs();
        let mut required = json!({"zone": "dmz"});
        tamper(&mut claims, &mut refs, &mut required);
        let d = evaluate(&policy, &claims, &refs, &required);
        assert!(!d.allow, "{name}: allowed");
        assert_eq!(d.reasons.len(), 1, "{name}: exactly one reason expected:\n{}", d.describe());
        let r = &d.reasons[0];
        assert_eq!(r.rule, rule, "{name}: {}", d.describe());
        assert!(r.message.contains(&fragment), "{name}: {:?} lacks {fragment:?}", r.message);
        assert!(!r.claim.is_empty(), "{name}: no claim named");
        assert!(!r.expected.is_null(), "{name}: no expected value");
        assert_ne!(d.trust_vector[tv_claim], json!(2), "{name}: {tv_claim} still affirming");
    }
}

#[test]
fn digest_reasons_carry_the_expected_and_found_digests() {
    let policy = Policy::default_attestation();
    let mut claims = good_claims();
    change_file("kernel")(&mut claims, &mut refs(), &mut json!({}));
    let d = evaluate(&policy, &claims, &refs(), &json!({}));
    let r = &d.reasons[0];
    assert_eq!(r.claim, "launch.records[kernel].file");
    assert_eq!(r.found, json!({"sha256": OTHER256, "sha384": OTHER384}));
    let p = predict();
    assert_eq!(r.expected, json!([p["records"][6]["sha256"], p["records"][6]["sha384"]]));
    let line = r.describe();
    assert!(
        line.contains("[rule kernel, claim launch.records[kernel].file, expected one of sha256:"),
        "{line}"
    );
}

#[test]
fn tpm_launch_denies_the_sample_tee_and_allow_sample_allows_only_it() {
    let sample = json!({"tee": "sample", "svn": "1"});
    let _: Claims = serde_json::from_value(sample.clone()).unwrap();
    let d = evaluate(&Policy::default_attestation(), &sample, &refs(), &json!({}));
    assert!(!d.allow);
    assert_eq!(d.reasons.len(), 1);
    assert_eq!(d.reasons[0].rule, "tee");
    assert!(d.reasons[0].message.contains("tee sample is not accepted"), "{}", d.describe());
    assert!(d.trust_vector.is_empty());

    let allow_sample = Policy::compile("allow-sample.rego", ALLOW_SAMPLE).unwrap();
    assert!(evaluate(&allow_sample, &sample, &refs(), &json!({})).allow);
    let d = evaluate(&allow_sample, &good_claims(), &refs(), &json!({}));
    assert!(!d.allow);
    assert!(d.reasons[0].message.contains("tee tpm is not sample"));
}

fn resource_input(status: &str, reasons: Value, required: Value, claims: Value) -> Value {
    json!({
        "resource": {"path": "default/key/disk", "required_labels": required},
        "ear": {"status": status, "tee": claims["tee"], "trust_vector": {}, "reasons": reasons},
        "claims": claims,
    })
}

#[test]
fn resource_default_table() {
    let policy = Policy::default_resource().prepare(&json!({})).unwrap();
    let kernel_reason = json!({"rule": "kernel", "claim": "launch.records[kernel].file",
        "expected": ["sha256:aa"], "found": {"sha384": OTHER384},
        "message": "kernel digest sha384:222222222222… not in reference values \"kernel\" (1 entries)"});
    let cmdline_reason = json!({"rule": "cmdline", "claim": "launch.records[cmdline].record_digests",
        "expected": ["sha256:bb"], "found": {}, "message": "cmdline digest x not in reference values \"cmdline\" (1 entries)"});
    let good = good_claims();
    let sample = json!({"tee": "sample", "svn": "1"});

    // Allowed.
    for (name, input) in [
        (
            "affirming, no label requirement",
            resource_input("affirming", json!([]), json!({}), good.clone()),
        ),
        (
            "affirming, labels met",
            resource_input("affirming", json!([]), json!({"zone": "dmz"}), good.clone()),
        ),
    ] {
        let d = policy.evaluate(&input).unwrap();
        assert!(d.allow, "{name}: {}", d.describe());
    }

    // Denied: (name, input, [(rule, message fragment)]).
    type Row = (&'static str, Value, Vec<(&'static str, &'static str)>);
    let table: Vec<Row> = vec![
        (
            "contraindicated: kernel",
            resource_input("contraindicated", json!([kernel_reason]), json!({}), good.clone()),
            vec![(
                "kernel",
                "kernel digest sha384:222222222222… not in reference values \"kernel\"",
            )],
        ),
        (
            "contraindicated: kernel and cmdline",
            resource_input(
                "contraindicated",
                json!([kernel_reason, cmdline_reason]),
                json!({}),
                good.clone(),
            ),
            vec![("cmdline", "cmdline digest"), ("kernel", "kernel digest")],
        ),
        (
            "contraindicated without reasons",
            resource_input("contraindicated", json!([]), json!({}), good.clone()),
            vec![("ear-status", "the attestation result is contraindicated, not affirming")],
        ),
        (
            "warning",
            resource_input("warning", json!([]), json!({}), good.clone()),
            vec![("ear-status", "the attestation result is warning, not affirming")],
        ),
        (
            "status none",
            resource_input("none", json!([]), json!({}), good.clone()),
            vec![("ear-status", "is none, not affirming")],
        ),
        (
            "no status at all",
            json!({"resource": {"path": "a/b/c"}, "claims": good.clone()}),
            vec![("ear-status", "is none, not affirming")],
        ),
        (
            "label mismatch",
            resource_input("affirming", json!([]), json!({"zone": "prod"}), good.clone()),
            vec![("host-labels", "host label zone is dmz, but zone=prod is required")],
        ),
        (
            "label missing",
            resource_input("affirming", json!([]), json!({"site": "lab-1"}), good.clone()),
            vec![("host-labels", "host label site is missing, but site=lab-1 is required")],
        ),
        (
            "two labels wrong",
            resource_input(
                "affirming",
                json!([]),
                json!({"site": "lab-1", "zone": "prod"}),
                good.clone(),
            ),
            vec![("host-labels", "site is missing"), ("host-labels", "zone is dmz")],
        ),
        (
            "sample tee with a label requirement",
            resource_input("affirming", json!([]), json!({"zone": "dmz"}), sample.clone()),
            vec![("host-labels", "host label zone is missing, but zone=dmz is required")],
        ),
        (
            "contraindicated sample",
            resource_input(
                "contraindicated",
                json!([{"rule": "tee", "claim": "tee", "expected": ["tpm"], "found": "sample", "message": "tee sample is not accepted"}]),
                json!({}),
                sample.clone(),
            ),
            vec![("tee", "tee sample is not accepted")],
        ),
        (
            "contraindicated and label mismatch",
            resource_input(
                "contraindicated",
                json!([kernel_reason]),
                json!({"zone": "prod"}),
                good.clone(),
            ),
            vec![("host-labels", "zone=prod is required"), ("kernel", "kernel digest")],
        ),
    ];
    assert!(table.len() >= 10);
    for (name, input, want) in table {
        let d = policy.evaluate(&input).unwrap();
        assert!(!d.allow, "{name}: allowed");
        assert_eq!(d.reasons.len(), want.len(), "{name}:\n{}", d.describe());
        for (rule, fragment) in want {
            assert!(
                d.reasons.iter().any(|r| r.rule == rule && r.message.contains(fragment)),
                "{name}: no {rule} reason with {fragment:?} in:\n{}",
                d.describe()
            );
        }
    }
}

#[test]
fn attestation_reasons_flow_into_the_resource_denial() {
    let mut claims = good_claims();
    change_file("kernel")(&mut claims, &mut refs(), &mut json!({}));
    let att = evaluate(&Policy::default_attestation(), &claims, &refs(), &json!({}));
    let reasons = serde_json::to_value(&att.reasons).unwrap();
    let d = Policy::default_resource()
        .prepare(&json!({}))
        .unwrap()
        .evaluate(&resource_input("contraindicated", reasons, json!({}), claims))
        .unwrap();
    assert!(!d.allow);
    assert_eq!(d.reasons, att.reasons);
}

#[test]
fn compile_errors_name_file_line_and_column() {
    let e = Policy::compile("bad.rego", "package policy\n\nallow if {\n  input.x == \n}\n")
        .unwrap_err();
    let PolicyError::Syntax(msg) = &e else { panic!("{e:?}") };
    assert!(msg.starts_with("bad.rego:5:1: expecting expression"), "{msg}");
    let e =
        Policy::compile("norule.rego", "package policy\n\nreasons contains \"x\" if { true }\n")
            .unwrap_err();
    assert!(matches!(e, PolicyError::MissingRule { .. }), "{e:?}");
    assert!(e.to_string().contains("does not define the rule `allow`"), "{e}");
    let e = Policy::compile("pkg.rego", "package other\n\nallow := true\n").unwrap_err();
    assert!(matches!(e, PolicyError::WrongPackage { .. }), "{e:?}");
    // A semantic error (unknown function) is found at compile time too.
    let e = Policy::compile("fn.rego", "package policy\n\nallow if no_such_fn(1)\n").unwrap_err();
    assert!(e.to_string().contains("fn.rego:3"), "{e}");
}

/// Every member the verifier writes is a property of the JSON Schema, and
/// the schema says no other members are allowed.
#[test]
fn claims_match_the_json_schema() {
    let schema: Value = serde_json::from_str(tellus_policies::claims::CLAIMS_SCHEMA).unwrap();
    fn properties(v: &Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(p)) = m.get("properties") {
                    out.extend(p.keys().cloned());
                }
                m.values().for_each(|v| properties(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| properties(v, out)),
            _ => {}
        }
    }
    let mut known = std::collections::BTreeSet::new();
    properties(&schema, &mut known);
    fn members(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    out.push(k.clone());
                    // Free-form maps: labels, digests by bank, record payloads.
                    if !["labels", "record_digests", "launcher", "value"].contains(&k.as_str()) {
                        members(v, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| members(v, out)),
            _ => {}
        }
    }
    let mut used = Vec::new();
    members(&good_claims(), &mut used);
    members(&json!({"tee": "sample", "svn": "1"}), &mut used);
    for m in used {
        assert!(known.contains(&m), "claims member {m:?} is not in schema/claims.schema.json");
    }
    assert!(
        tellus_policies::claims::CLAIMS_SCHEMA.matches("\"additionalProperties\": false").count()
            >= 7
    );
}
