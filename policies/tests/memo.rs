//! Memoised decisions: what a policy can read of its input
//! ([`InputReads`]), and that the memo answers exactly as an evaluation
//! would, on the shipped policies and on inputs changed at random places.

mod fixtures;

use fixtures::{predict, predicted_claims};
use serde_json::{json, Value};
use tellus_policies::reads::{DETERMINISTIC_BUILTINS, NONDETERMINISTIC_BUILTINS};
use tellus_policies::{DecidedBy, InputReads, Policy, Prepared, ReferenceSet};

/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600;

fn prepared(policy: &Policy) -> Prepared {
    let refs = ReferenceSet::from_json(&predict(), None, Some("tellus measure predict (fixture)"))
        .unwrap();
    let required = serde_json::from_value(json!({"zone": "dmz"})).unwrap();
    policy.prepare(&tellus_policies::engine::policy_data(&refs, NOW, &required)).unwrap()
}

/// Paths as [`InputReads::of`] gives them: sorted.
fn paths(list: &[&[&str]]) -> InputReads {
    let mut v: Vec<Vec<String>> =
        list.iter().map(|p| p.iter().map(|s| (*s).to_owned()).collect()).collect();
    v.sort();
    InputReads::Paths(v)
}

fn reads_of(body: &str) -> InputReads {
    let text = format!("package policy\n\nimport rego.v1\n\ndefault allow := false\n\n{body}\n");
    Policy::compile("t.rego", &text).unwrap_or_else(|e| panic!("{body}: {e}")).input_reads().clone()
}

#[test]
fn the_shipped_policies_read_these_parts_of_their_input() {
    // The helper library's rules read `input.launch.records` whichever
    // policy loads it. Neither policy reads the quote's clock.
    assert_eq!(
        *Policy::default_attestation().input_reads(),
        paths(&[
            &["host", "activated"],
            &["host", "enrolled"],
            &["host", "id"],
            &["host", "labels"],
            &["launch", "absent_features"],
            &["launch", "records"],
            &["pcr_replay", "verdict"],
            &["tee"],
        ])
    );
    assert_eq!(
        *Policy::default_resource().input_reads(),
        paths(&[
            &["claims", "host", "labels"],
            &["ear", "reasons"],
            &["ear", "status"],
            &["launch", "records"],
            &["resource", "required_labels"],
        ])
    );
}

#[test]
fn each_way_of_reaching_the_input_is_counted() {
    let lib = ["launch", "records"];
    let table: Vec<(&str, InputReads)> = vec![
        ("allow if input.a.b == 1", paths(&[&["a", "b"], &lib])),
        ("allow if input[\"a\"].b == 1", paths(&[&["a", "b"], &lib])),
        // A variable index: everything below the constant part.
        ("allow if { some k; input.a[k].c == 1 }", paths(&[&["a"], &lib])),
        ("allow if { some x in input.a.list; x == 1 }", paths(&[&["a", "list"], &lib])),
        // The input as a value, anywhere: all of it.
        ("allow if { x := input; x.a == 1 }", paths(&[&[]])),
        ("allow if count(input) > 1", paths(&[&[]])),
        ("allow if json.marshal(input.a) != \"\"", paths(&[&["a"], &lib])),
        ("f(x) := x.a\nallow if f(input.b) == 1", paths(&[&["b"], &lib])),
        // object.get with a constant path, a constant key, a variable key.
        ("allow if object.get(input, [\"a\", \"b\"], 0) == 1", paths(&[&["a", "b"], &lib])),
        ("allow if object.get(input.a, \"b\", 0) == 1", paths(&[&["a", "b"], &lib])),
        ("allow if { some k in [\"x\"]; object.get(input.a, k, 0) == 1 }", paths(&[&["a"], &lib])),
        // An index that itself reads the input.
        ("allow if data.t[input.k] == 1", paths(&[&["k"], &lib])),
        ("allow if input.a[input.k] == 1", paths(&[&["a"], &["k"], &lib])),
        // Inside comprehensions, `every`, `not`, object keys and values.
        ("allow if count([x | some x in input.a]) > 0", paths(&[&["a"], &lib])),
        ("allow if every x in input.a { x > input.min }", paths(&[&["a"], &["min"], &lib])),
        ("allow if not input.deny", paths(&[&["deny"], &lib])),
        ("o := {input.k: input.v}\nallow if o", paths(&[&["k"], &lib, &["v"]])),
        // A default value and a function's default.
        ("default x := 1\nallow if x == input.n", paths(&[&lib, &["n"]])),
    ];
    for (body, want) in table {
        assert_eq!(reads_of(body), want, "{body}");
    }
    let imported = Policy::compile(
        "t.rego",
        "package policy\n\nimport input.host as h\nimport rego.v1\n\ndefault allow := false\n\nallow if h.x == 1\n",
    )
    .unwrap();
    assert_eq!(*imported.input_reads(), paths(&[&["host"], &lib]));
}

#[test]
fn a_policy_that_can_decide_differently_on_the_same_input_is_never_memoised() {
    for (body, why) in [
        ("allow if rand.intn(\"x\", 10) == 1", "rand.intn can answer differently"),
        ("allow if input.a with input.a as true", "`with` replaces"),
        ("allow if data.x with data.x as true", "`with` replaces"),
    ] {
        match reads_of(body) {
            InputReads::NotMemoisable(w) => assert!(w.contains(why), "{body}: {w}"),
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn every_regorus_builtin_is_classified() {
    let mut unknown: Vec<&str> = regorus::unstable::BUILTINS
        .keys()
        .copied()
        .filter(|b| !DETERMINISTIC_BUILTINS.contains(b) && !NONDETERMINISTIC_BUILTINS.contains(b))
        .collect();
    unknown.sort_unstable();
    assert!(unknown.is_empty(), "classify these regorus built-ins in reads.rs: {unknown:?}");
    for b in NONDETERMINISTIC_BUILTINS {
        assert!(!DETERMINISTIC_BUILTINS.contains(b), "{b} in both lists");
    }
}

#[test]
fn the_digest_separates_absent_null_types_and_values() {
    let reads = paths(&[&["a", "b"], &["c"]]);
    let d = |v: Value| reads.digest(&v).unwrap();
    let base = d(json!({"a": {"b": 1}, "c": "x"}));
    // What is not read does not count; object key order does not count.
    assert_eq!(base, d(json!({"c": "x", "a": {"z": 9, "b": 1}, "other": [1, 2]})));
    for other in [
        json!({"a": {"b": 2}, "c": "x"}),
        json!({"a": {"b": "1"}, "c": "x"}),
        json!({"a": {"b": null}, "c": "x"}),
        json!({"a": {}, "c": "x"}),
        json!({"a": [], "c": "x"}),
        json!({"a": "b", "c": "x"}),
        json!({"c": "x"}),
        json!({"a": {"b": 1}}),
        json!({"a": {"b": 1}, "c": ["x"]}),
        json!({"a": {"b": 1}, "c": {"x": null}}),
        json!({"a": {"b": [1]}, "c": "x"}),
    ] {
        assert_ne!(base, d(other.clone()), "{other}");
    }
    // Absent at different depths, and strings that would run together.
    assert_ne!(d(json!({"c": "x"})), d(json!({"a": {}, "c": "x"})));
    let two = paths(&[&["p"], &["q"]]);
    assert_ne!(
        two.digest(&json!({"p": "ab", "q": "c"})),
        two.digest(&json!({"p": "a", "q": "bc"}))
    );
    assert_eq!(InputReads::NotMemoisable("x".into()).digest(&json!({})), None);
}

/// A tiny deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Changes one value somewhere in `v` (leaf or subtree), at random.
fn mutate(v: &mut Value, rng: &mut Rng) {
    let stop = rng.below(4) == 0;
    match v {
        Value::Object(m) if !m.is_empty() && !stop => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.below(keys.len())];
            if rng.below(10) == 0 {
                m.remove(k);
            } else if let Some(child) = m.get_mut(k) {
                mutate(child, rng);
            }
        }
        Value::Array(a) if !a.is_empty() && !stop => {
            let i = rng.below(a.len());
            mutate(&mut a[i], rng);
        }
        leaf => {
            *leaf = match rng.below(6) {
                0 => Value::Null,
                1 => json!(rng.below(5)),
                2 => json!("sha384:222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222"),
                3 => json!(false),
                4 => json!(["introspection", "intervention", "snapshot"]),
                _ => json!({}),
            }
        }
    }
}

#[test]
fn memoised_decisions_equal_evaluations_on_randomly_changed_inputs() {
    let good = predicted_claims().to_json();
    let attestation = prepared(&Policy::default_attestation());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut inputs = vec![good.clone()];
    for _ in 0..400 {
        let mut v = inputs[rng.below(inputs.len().min(8))].clone();
        for _ in 0..=rng.below(2) {
            mutate(&mut v, &mut rng);
        }
        inputs.push(v);
    }
    let mut same_digest_pairs = 0;
    let mut allowed = 0;
    let mut from_memo = 0;
    let reads = attestation.input_reads().clone();
    for (i, input) in inputs.iter().enumerate() {
        let fresh = attestation.evaluate_unmemoised(input);
        allowed += usize::from(fresh.as_ref().is_ok_and(|d| d.allow));
        // Twice: the first may fill the memo, the second may be answered
        // from it.
        for _ in 0..2 {
            let decided = attestation.decide(input);
            from_memo += usize::from(matches!(decided, Ok((_, DecidedBy::Memo))));
            assert_eq!(decided.map(|(d, _)| d), fresh, "input {i}: {input}");
        }
        // Inputs with one digest get one decision, however they differ.
        if i > 0 && reads.digest(input) == reads.digest(&inputs[i - 1]) {
            same_digest_pairs += 1;
            assert_eq!(fresh, attestation.evaluate_unmemoised(&inputs[i - 1]), "input {i}");
        }
    }
    assert!(from_memo >= 400, "{from_memo} answers from the memo");
    // Both verdicts occur (the changes mostly deny).
    assert!(allowed >= 5 && allowed + 5 <= inputs.len(), "{allowed} of {} allowed", inputs.len());
    assert!(same_digest_pairs > 0, "the random changes never fell outside what the policy reads");
}

#[test]
fn a_changed_clock_is_answered_from_the_memo_only_when_the_policy_does_not_read_it() {
    let mut input = predicted_claims().to_json();
    let attestation = prepared(&Policy::default_attestation());
    let (first, by) = attestation.decide(&input).unwrap();
    assert!(first.allow, "{}", first.describe());
    assert_eq!(by, DecidedBy::Evaluation);
    input["host"]["clock"]["clock"] = json!(123_456_789);
    assert_eq!(attestation.decide(&input).unwrap(), (first, DecidedBy::Memo));
    // A changed kernel is read: evaluated, and denied.
    for r in input["launch"]["records"].as_array_mut().unwrap() {
        if r["kind"] == "kernel" {
            r["file"]["sha384"] = json!("sha384:00");
            r["file"]["sha256"] = json!("sha256:00");
        }
    }
    let (changed, by) = attestation.decide(&input).unwrap();
    assert!(!changed.allow);
    assert_eq!(by, DecidedBy::Evaluation);

    // A policy that reads the clock sees every change of it.
    let clock = Policy::compile(
        "clock.rego",
        "package policy\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.host.clock.clock < 1000\n",
    )
    .unwrap();
    let clock = prepared(&clock);
    let decide = |c: u64| {
        let (d, by) = clock.decide(&json!({"host": {"clock": {"clock": c}}})).unwrap();
        (d.allow, by)
    };
    assert_eq!(decide(10), (true, DecidedBy::Evaluation));
    assert_eq!(decide(5000), (false, DecidedBy::Evaluation));
    assert_eq!(decide(10), (true, DecidedBy::Memo));
}

/// Fresh and memoised decisions of `policy` on `inputs`, in order.
fn assert_memo_agrees(policy: &str, inputs: &[Value]) {
    let p = Policy::compile("t.rego", policy).unwrap();
    let p = p.prepare(&json!({})).unwrap();
    for (i, input) in inputs.iter().enumerate() {
        assert_eq!(p.evaluate(input), p.evaluate_unmemoised(input), "{policy}\ninput {i}: {input}");
    }
}

#[test]
fn a_policy_that_defines_its_own_object_get_is_not_read_as_the_builtin() {
    // regorus calls a policy's own `object.get` (or one reached through an
    // import named `object`) before the built-in; these return the whole
    // object, so `.y` is read too.
    let own = "package policy\n\nimport rego.v1\n\ndefault allow := false\n\nobject.get(o, p, d) := o\n\nallow if object.get(input, [\"x\"], 0).y == 1\n";
    let via_import = "package policy\n\nimport data.policy as object\nimport rego.v1\n\ndefault allow := false\n\nget(o, p, d) := o\n\nallow if object.get(input, [\"x\"], 0).y == 1\n";
    for policy in [own, via_import] {
        assert_eq!(
            *Policy::compile("t.rego", policy).unwrap().input_reads(),
            paths(&[&[]]),
            "{policy}"
        );
        assert_memo_agrees(policy, &[json!({"x": 1, "y": 1}), json!({"x": 1, "y": 2})]);
    }
}

#[test]
fn an_input_regorus_refuses_is_refused_after_a_memoised_one_too() {
    let policy = "package policy\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.host.enrolled == true\n";
    let bad = json!({"host": {"$serde_json::private::Number": "1", "enrolled": true}});
    assert_eq!(Policy::compile("t.rego", policy).unwrap().input_reads().digest(&bad), None);
    assert_memo_agrees(policy, &[json!({"host": {"enrolled": true}}), bad.clone()]);
    let p = Policy::compile("t.rego", policy).unwrap().prepare(&json!({})).unwrap();
    assert!(p.evaluate(&json!({"host": {"enrolled": true}})).unwrap().allow);
    assert!(p.evaluate(&bad).is_err(), "regorus refuses the input");
}

#[test]
fn a_decision_that_copies_much_of_its_input_is_not_kept() {
    let policy = Policy::compile(
        "t.rego",
        "package policy\n\nimport rego.v1\n\ndefault allow := false\n\nreasons contains input.why\n",
    )
    .unwrap()
    .prepare(&json!({}))
    .unwrap();
    let small = json!({"why": "short"});
    let large = json!({"why": "x".repeat(tellus_policies::engine::MAX_MEMOISED_BYTES)});
    let by: Vec<DecidedBy> = [&small, &small, &large, &large]
        .into_iter()
        .map(|input| {
            let (d, by) = policy.decide(input).unwrap();
            assert!(!d.allow);
            by
        })
        .collect();
    // The small decision was kept and found once; the large one never.
    use DecidedBy::{Evaluation, Memo};
    assert_eq!(by, [Evaluation, Memo, Evaluation, Evaluation]);
}
