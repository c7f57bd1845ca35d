//! `tellus-verifier policy check|test` and `refs add|list`, run as the real
//! binary; `policy test --evidence` with real swtpm evidence from
//! `tellus quote` over a launch predicted by `tellus measure predict`.

#[path = "../../policies/tests/fixtures/mod.rs"]
mod fixtures;
mod launch_support;
mod service_support;

use fixtures::{predicted_claims, PREDICT};
use launch_support::{extend_predicted_launch, tellus_bin};
use serde_json::{json, Value};
use service_support::App;
use std::path::Path;
use std::process::{Command, Output};
use swtpm_tests::Swtpm;
use tellus_measured_boot::cel;

fn verifier(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tellus-verifier")).args(args).output().unwrap()
}

/// `tellus-verifier refs add FILE --state-dir STATE_DIR EXTRA…`.
fn refs_add(file: &str, state_dir: &Path, extra: &[&str]) -> Output {
    let state_dir = state_dir.to_str().unwrap();
    verifier(&[&["refs", "add", file, "--state-dir", state_dir], extra].concat())
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn policy_check_reports_file_line_col_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.rego", "package policy\n\nallow if {\n  input.x == \n}\n");
    let norule = write(dir.path(), "norule.rego", "package policy\n\nimport rego.v1\n\nx := 1\n");
    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/rego/tpm-launch.rego");
    let o = verifier(&["policy", "check", good]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("tpm-launch.rego: ok; decisions are memoised by what it reads: input.host.activated, input.host.enrolled, input.host.id, input.host.labels, input.launch.absent_features, input.launch.records, input.pcr_replay.verdict, input.tee\n"),
        "{}",
        text(&o)
    );
    let random = write(
        dir.path(),
        "random.rego",
        "package policy\n\nimport rego.v1\n\ndefault allow := false\n\nallow if rand.intn(\"x\", 2) == 1\n",
    );
    let o = verifier(&["policy", "check", &random]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(": ok; every input is evaluated: not memoisable (line 7: rand.intn can answer differently each time)"),
        "{}",
        text(&o)
    );
    let o = verifier(&["policy", "check", good, &bad, &norule]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains(&format!("{bad}:5:1: expecting expression")), "{t}");
    assert!(t.contains(&format!("{norule}: the policy does not define the rule `allow`")), "{t}");
    let o = verifier(&["policy", "check", "/nonexistent.rego"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn policy_test_with_claims_allows_and_denies_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let refs = write(dir.path(), "refs.json", PREDICT);
    let good = write(dir.path(), "good.json", &predicted_claims().to_json().to_string());
    let o = verifier(&["policy", "test", "--claims", &good, "--refs", &refs]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "allow (tpm-launch.rego)");

    // A changed cmdline and a missing label: two reasons, exit 1.
    let mut bad = predicted_claims().to_json();
    for r in bad["launch"]["records"].as_array_mut().unwrap() {
        if r["kind"] == "cmdline" {
            r["record_digests"]["sha256"] = json!(format!("sha256:{}", "00".repeat(32)));
            r["record_digests"]["sha384"] = json!(format!("sha384:{}", "00".repeat(48)));
        }
    }
    let bad = write(dir.path(), "bad.json", &bad.to_string());
    let o = verifier(&[
        "policy",
        "test",
        "--claims",
        &bad,
        "--refs",
        &refs,
        "--required-labels",
        "site=lab-1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("deny (tpm-launch.rego): 2 reason(s)"), "{out}");
    assert!(out.contains("- cmdline digest sha384:000000000000… not in reference values \"cmdline\" (2 entries) [rule cmdline, claim launch.records[cmdline].record_digests"), "{out}");
    assert!(out.contains("host label site is missing, but site=lab-1 is required"), "{out}");

    // JSON output, and another policy file.
    let allow_sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/rego/allow-sample.rego");
    let sample = write(dir.path(), "sample.json", r#"{"tee": "sample", "svn": "1"}"#);
    let o = verifier(&["policy", "test", "--policy", allow_sample, "--claims", &sample, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["allow"], true);
    let o = verifier(&["policy", "test", "--claims", &sample, "--refs", &refs, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["reasons"][0]["rule"], "tee");

    // Unreadable inputs: exit 2.
    let o = verifier(&["policy", "test", "--claims", &refs, "--refs", &good]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn refs_add_merges_into_a_running_verifiers_database() {
    let app = App::new(false);
    let state_dir = app.dir.path().join("state");
    let dir = tempfile::tempdir().unwrap();
    let refs = write(dir.path(), "refs.json", PREDICT);
    let before = app.state.store.policy_revision().unwrap();
    let o = refs_add(
        &refs,
        &state_dir,
        &[
            "--expires",
            "2031-01-01T00:00:00Z",
            "--provenance",
            "tellus measure predict on the test host",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("added 18 digests under 9 names"), "{}", text(&o));
    // The server's own connection sees the change and its revision.
    let all = app.state.store.reference_values().unwrap();
    assert_eq!(all.values["kernel"].len(), 2);
    assert_eq!(all.values["kernel"][0].expires.as_deref(), Some("2031-01-01T00:00:00Z"));
    assert_eq!(
        all.values["kernel"][0].provenance.as_deref(),
        Some("tellus measure predict on the test host")
    );
    assert!(app.state.store.policy_revision().unwrap().1 > before.1);
    let o = verifier(&["refs", "list", "--state-dir", state_dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let listed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed["initrd"].as_array().unwrap().len(), 2);

    let bad = write(dir.path(), "bad.json", r#"{"kernel": ["sha256:00"]}"#);
    let o = refs_add(&bad, &state_dir, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("sha256 digest must be 32 bytes"), "{}", text(&o));
    let o = refs_add(&refs, &state_dir, &["--expires", "soon"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn policy_test_with_real_evidence() {
    let tpm = Swtpm::start_provisioned();
    let dir = tempfile::tempdir().unwrap();
    let (records, predict) = extend_predicted_launch(&tpm, dir.path(), "console=ttyS0");
    let state = dir.path().join("state");
    let tellus = |args: &[&str]| {
        let o = Command::new(tellus_bin())
            .args(args)
            .arg("--tpm")
            .arg(tpm.addr())
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert!(o.status.success(), "tellus {args:?}: {}", text(&o));
    };
    tellus(&["host", "init"]);
    std::fs::write(state.join("launch-log.cel"), cel::encode(&records)).unwrap();
    let nonce = "11".repeat(48);
    let ev = dir.path().join("ev.json");
    tellus(&["quote", "--nonce", &nonce, "--pcrs", "13", "--output", ev.to_str().unwrap()]);
    let refs = write(dir.path(), "refs.json", &predict.to_string());
    let ev = ev.to_str().unwrap();

    let o = verifier(&[
        "policy",
        "test",
        "--evidence",
        ev,
        "--nonce",
        &nonce,
        "--refs",
        &refs,
        "--assume-enrolled",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // Without --assume-enrolled the enrollment is not vouched for.
    let o = verifier(&["policy", "test", "--evidence", ev, "--nonce", &nonce, "--refs", &refs]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("is not enrolled with this verifier"), "{out}");
    assert!(out.contains("has not proven its AK credential activation"), "{out}");
    // Another nonce: the evidence does not verify (exit 2, reason printed).
    let o = verifier(&[
        "policy",
        "test",
        "--evidence",
        ev,
        "--nonce",
        &"22".repeat(48),
        "--refs",
        &refs,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("the evidence does not verify"), "{}", text(&o));
}
