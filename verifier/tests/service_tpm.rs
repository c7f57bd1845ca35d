//! tee `tpm` through the KBS routes, with real evidence: a swtpm, the
//! launcher binary (`tellus host init`, `tellus quote`) and the launch
//! records of a real `tellus measure predict` extended into PCR 13, whose
//! JSON output serves as the reference values. The host is put into the
//! store directly (the enrollment routes have their own tests).

mod launch_support;
mod service_support;
use launch_support::MeasuredHost;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use service_support::*;
use std::path::Path;
use tellus_measured_boot::cel;
use tellus_verifier::storage::{HostRecord, PolicyKind};
use tellus_verifier::tpm::binding::runtime_data_binding;

const SECRET: &[u8] = b"disk key for the attested guest";

/// The host: a provisioned swtpm with a measured launch and `host init`
/// done (see `launch_support`).
type Host = MeasuredHost;

const CMDLINE: &str = "console=ttyS0 quiet";

fn new_host() -> Host {
    MeasuredHost::new(CMDLINE)
}

/// The store's record of `host` (`site=lab-1`).
fn record(host: &Host, activated: bool) -> HostRecord {
    let dir = host.state().join("host");
    HostRecord {
        host_id: host.host_id(),
        ek_public: std::fs::read(dir.join("ek.pub")).unwrap(),
        ak_public: std::fs::read(dir.join("ak.pub")).unwrap(),
        labels: [("site".to_owned(), "lab-1".to_owned())].into(),
        activated,
    }
}

fn app_with(host: Option<HostRecord>) -> App {
    let app = App::new(false);
    if let Some(h) = host {
        app.state.store.put_host(&h).unwrap();
    }
    app
}

fn attestation(nonce: &str, key: &TeeKey, evidence: Value) -> Value {
    json!({
        "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk()},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    })
}

/// auth → quote (through `edit`) → attest; returns (status, body, cookie, key).
async fn attest(
    app: &App,
    host: &Host,
    state: &Path,
    edit: impl FnOnce(&mut Value),
) -> (StatusCode, Value, String, TeeKey) {
    let (cookie, nonce) = app.auth("tpm").await;
    let key = TeeKey::new();
    let binding = runtime_data_binding(&key.jwk(), &nonce, "").unwrap();
    assert_eq!(binding.to_vec(), key.binding(&nonce), "JCS by hand and by library");
    let mut ev = host.quote(state, &binding);
    edit(&mut ev);
    let req = with_cookie(post_json("/kbs/v0/attest", &attestation(&nonce, &key, ev)), &cookie);
    let (s, _, v) = app.json(req).await;
    (s, v, cookie, key)
}

/// The resource is not released to `cookie` (case `case`), and none ever was.
async fn nothing_released(case: &str, app: &App, cookie: &str) {
    let (s, v) = get_disk(app, cookie).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{case}: {v}");
    none_released_yet(app).await;
}

/// The release counter is still 0.
async fn none_released_yet(app: &App) {
    let (_, _, m) = app.call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let m = String::from_utf8_lossy(&m);
    assert!(m.contains("tellus_verifier_resources_released_total 0"), "{m}");
}

/// Attestation (case `case`) refused with `what` in the detail.
fn refused(case: &str, s: StatusCode, v: &Value, what: &str) {
    assert_eq!(s, StatusCode::FORBIDDEN, "{case}: {v}");
    assert_eq!(error_kind(v), "AttestationError", "{case}: {v}");
    let detail = v["detail"].as_str().unwrap_or_else(|| panic!("{case}: no detail in {v}"));
    assert!(detail.contains(what), "{case}: expected {what:?} in: {detail}");
}

/// An evidence edit for [`attest`]: `log` (base64 CEL) as the event log,
/// and `launch_recnum` when given.
fn with_log(log: String, launch_recnum: Option<u64>) -> impl FnOnce(&mut Value) {
    move |ev| {
        ev["event_log"] = json!(log);
        if let Some(n) = launch_recnum {
            ev["launch_recnum"] = json!(n);
        }
    }
}

/// A resource denied (case `case`) because the host lacks label zone=dmz.
fn denied_for_missing_zone(case: &str, s: StatusCode, v: &Value) {
    assert_eq!(s, StatusCode::FORBIDDEN, "{case}: {v}");
    let detail = v["detail"].as_str().unwrap_or_else(|| panic!("{case}: no detail in {v}"));
    assert!(
        detail.contains("host label zone is missing, but zone=dmz is required"),
        "{case}: {detail}"
    );
}

/// The disk resource is released to `cookie`, encrypted to `key`.
async fn secret_released(app: &App, cookie: &str, key: TeeKey) {
    let (s, jwe) = get_disk(app, cookie).await;
    assert_eq!(s, StatusCode::OK, "{jwe}");
    assert_eq!(key.decrypt(&jwe), SECRET);
}

#[tokio::test]
async fn real_tpm_evidence_releases_the_resource() {
    let host = new_host();
    let record = record(&host, true);
    let app = app_with(Some(record.clone()));
    app.upload("default/key/disk", SECRET).await;
    app.add_predicted_refs(&host.predict).await;

    let (s, v, cookie, key) = attest(&app, &host, &host.state(), |_| {}).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().unwrap();
    let (_, _, jwks) = app.json(Request::get("/tellus/v1/jwks").body(Body::empty()).unwrap()).await;
    let claims = verify_with_jwks(token, &jwks);
    let sub = &claims["submods"]["cpu0"];
    assert_eq!(sub["tellus.tee"], "tpm");
    assert_eq!(sub["ear.status"], "affirming", "{sub}");
    assert_eq!(
        sub["ear.trustworthiness-vector"],
        json!({"instance-identity": 2, "hardware": 2, "executables": 2, "configuration": 2})
    );
    assert_eq!(sub["ear.appraisal-policy-id"], "tellus:tpm-launch.rego");
    assert_eq!(sub["tellus.reasons"], json!([]));
    // The claims as the schema says (policies/README.md), checked facts only.
    let tpm = &sub["ear.veraison.annotated-evidence"]["tpm"];
    let typed: tellus_policies::claims::TpmClaims = serde_json::from_value(tpm.clone()).unwrap();
    assert_eq!(typed.host.id, record.host_id);
    assert_eq!(typed.host.labels, record.labels);
    assert!(typed.host.enrolled && typed.host.activated);
    assert!(typed.host.clock.clock > 0);
    assert_eq!(typed.pcr_replay.verdict, "replays");
    assert_eq!(typed.pcr_replay.pcr, "sha256:13");
    assert_eq!(
        typed.pcr_replay.value,
        format!("sha256:{}", host.tpm.pcrread("sha256", 13).to_lowercase())
    );
    let kinds: Vec<&str> = typed.launch.records.iter().map(|r| r.kind.as_str()).collect();
    let predicted: Vec<&str> = host.predict["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, predicted);
    assert_eq!(typed.launch.first_recnum, 0);
    assert_eq!(typed.launch.vm.cmdline.as_deref(), Some(CMDLINE));
    assert_eq!(typed.launch.vm.vcpus, Some(1));
    assert_eq!(
        typed.launch.absent_features,
        ["introspection", "intervention", "snapshot", "migration"]
    );
    let kernel = typed.launch.record("kernel").unwrap().file.as_ref().unwrap();
    assert_eq!(kernel.sha384, host.predict["records"][6]["sha384"].as_str().unwrap());
    assert_eq!(
        typed.launch.launcher["sha256"],
        host.predict["records"][0]["sha256"].as_str().unwrap()
    );

    secret_released(&app, &cookie, key).await;
}

#[tokio::test]
async fn a_kernel_that_is_not_a_reference_value_is_denied_with_its_digests() {
    let host = new_host();
    let app = app_with(Some(record(&host, true)));
    app.upload("default/key/disk", SECRET).await;
    // Reference values for everything but the kernel, whose reference is
    // another kernel's digest.
    let mut predict = host.predict.clone();
    let other = format!("sha384:{}", "ab".repeat(48));
    let kernel = predict["records"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["kind"] == "kernel")
        .unwrap();
    let measured = kernel["sha384"].as_str().unwrap().to_owned();
    kernel["sha384"] = json!(other);
    kernel["sha256"] = json!(format!("sha256:{}", "cd".repeat(32)));
    app.add_predicted_refs(&predict).await;

    // Attestation answers 200 with a contraindicated token...
    let (s, v, cookie, _) = attest(&app, &host, &host.state(), |_| {}).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, _, jwks) = app.json(Request::get("/tellus/v1/jwks").body(Body::empty()).unwrap()).await;
    let claims = verify_with_jwks(v["token"].as_str().unwrap(), &jwks);
    let sub = &claims["submods"]["cpu0"];
    assert_eq!(sub["ear.status"], "contraindicated");
    assert_eq!(sub["ear.trustworthiness-vector"]["executables"], 33);
    assert_eq!(sub["ear.trustworthiness-vector"]["configuration"], 2);
    assert_eq!(sub["tellus.reasons"][0]["rule"], "kernel");

    // ...and the resource is denied, the detail naming rule, claim and digests.
    let (s, v) = get_disk(&app, &cookie).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(error_kind(&v), "PolicyDeny");
    let detail = v["detail"].as_str().unwrap();
    eprintln!("403 detail:\n{detail}");
    assert!(detail.starts_with("the resource policy denies default/key/disk:"), "{detail}");
    let short = format!("{}…", &measured[..19]);
    assert!(
        detail.contains(&format!(
            "kernel digest {short} not in reference values \"kernel\" (2 entries)"
        )),
        "{detail}"
    );
    assert!(
        detail.contains("[rule kernel, claim launch.records[kernel].file, expected one of"),
        "{detail}"
    );
    assert!(detail.contains(&other), "{detail}");
    assert_eq!(detail.lines().count(), 2, "only the kernel fails: {detail}");

    // The same with the token as a bearer credential.
    let req = Request::get("/kbs/v0/resource/default/key/disk")
        .header("authorization", format!("Bearer {}", v_token(&app, &host).await))
        .body(Body::empty())
        .unwrap();
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("kernel digest"), "{v}");
    none_released_yet(&app).await;
}

/// A fresh attestation's token.
async fn v_token(app: &App, host: &Host) -> String {
    let (s, v, _, _) = attest(app, host, &host.state(), |_| {}).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn policy_uploads_are_checked_and_the_policy_in_force_stays() {
    let host = new_host();
    let app = app_with(Some(record(&host, true)));
    app.upload("default/key/disk", SECRET).await;
    app.add_predicted_refs(&host.predict).await;

    // Each broken upload: 400, the detail naming what is wrong.
    // (case, policy, rego, fragments of the detail)
    let broken: [(&str, PolicyKind, &str, &[&str]); 3] = [
        (
            "syntax error (regorus' message and location)",
            PolicyKind::Attestation,
            "package policy\n\nallow if {\n  input.tee == \n}\n",
            &["default.rego:5:1: expecting expression", "the policy in force stays"],
        ),
        (
            "no `allow` rule",
            PolicyKind::Resource,
            "package policy\n\nimport rego.v1\n\nreasons contains \"x\" if { true }\n",
            &["does not define the rule `allow`"],
        ),
        (
            "another package",
            PolicyKind::Resource,
            "package other\n\nallow := true\n",
            &["declare `package policy`"],
        ),
    ];
    for (case, kind, rego, want) in broken {
        let (s, v) = match kind {
            PolicyKind::Attestation => app.set_attestation_policy(rego).await,
            PolicyKind::Resource => app.set_resource_policy(rego).await,
        };
        assert_eq!(s, StatusCode::BAD_REQUEST, "{case}: {v}");
        let detail = v["detail"].as_str().unwrap_or_else(|| panic!("{case}: no detail in {v}"));
        for w in want {
            assert!(detail.contains(w), "{case}: expected {w:?} in: {detail}");
        }
    }
    // Nothing was stored, and the built-in policies still decide: the
    // measured launch is released.
    for kind in [PolicyKind::Attestation, PolicyKind::Resource] {
        let history = app.state.store.policy_history(kind, "default").unwrap();
        assert!(history.is_empty(), "{kind:?} policy stored: {}", history.len());
    }
    let (s, v, cookie, key) = attest(&app, &host, &host.state(), |_| {}).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    secret_released(&app, &cookie, key).await;

    // A valid resource policy that needs a label the host lacks takes effect
    // at once (the cached policies are re-prepared), and a later broken
    // upload leaves it in force.
    let strict = "package policy\n\nimport rego.v1\nimport data.tellus.lib\n\ndefault allow := false\n\nallow if count(reasons) == 0\n\nreasons contains r if {\n\tsome r in lib.label_reasons(input.claims.host.labels, {\"zone\": \"dmz\"})\n}\n";
    let (s, v) = app.set_resource_policy(strict).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app.set_resource_policy("package policy\nallow if {").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = get_disk(&app, &cookie).await;
    denied_for_missing_zone("strict resource policy", s, &v);
    assert_eq!(app.state.store.policy_history(PolicyKind::Resource, "default").unwrap().len(), 1);

    // Per-resource label requirements with the default resource policy.
    app.set_resource_policy(tellus_policies::engine::RESOURCE_DEFAULT_REGO).await;
    let req = Request::post("/kbs/v0/resource/default/key/dmz?required-labels=zone=dmz")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::from("dmz secret"))
        .unwrap();
    assert_eq!(app.call(req).await.0, StatusCode::OK);
    let req = with_cookie(
        Request::get("/kbs/v0/resource/default/key/dmz").body(Body::empty()).unwrap(),
        &cookie,
    );
    let (s, _, v) = app.json(req).await;
    denied_for_missing_zone("required-labels of the resource", s, &v);
    let (s, _) = get_disk(&app, &cookie).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn only_events_may_follow_a_launchs_separator() {
    let host = new_host();
    let app = app_with(Some(record(&host, true)));
    app.upload("default/key/disk", SECRET).await;
    app.add_predicted_refs(&host.predict).await;
    // A copy of the launch's kernel record measured after its separator
    // (a policy reading the records could take it for the launched one).
    let records = host.records.clone();
    let mut kernel = records
        .iter()
        .find(|r| r.launch_record().unwrap().unwrap().kind.name() == "kernel")
        .unwrap()
        .clone();
    kernel.recnum = records.len() as u64;
    host.tpm
        .tpm2("tpm2_pcrextend", &[&format!("13:sha256={}", hex::encode(&kernel.digests[0].bytes))]);
    let mut log = records.clone();
    log.push(kernel.clone());
    let (s, v, _, _) =
        attest(&app, &host, &host.state(), with_log(B64.encode(cel::encode(&log)), None)).await;
    refused(
        "kernel record after the separator",
        s,
        &v,
        &format!("has a kernel record after its separator (record {})", kernel.recnum),
    );
}

#[tokio::test]
async fn launch_groups_pick_the_attested_launch() {
    let host = new_host();
    let app = app_with(Some(record(&host, true)));
    app.upload("default/key/disk", SECRET).await;
    app.add_predicted_refs(&host.predict).await;
    let records = host.records.clone();

    // A second launch begins (its launcher-binary record is measured) but
    // never reaches its separator.
    let mut second = records[0].clone();
    second.recnum = records.len() as u64;
    host.tpm
        .tpm2("tpm2_pcrextend", &[&format!("13:sha256={}", hex::encode(&second.digests[0].bytes))]);
    let mut log = records.clone();
    log.push(second.clone());
    let log_b64 = B64.encode(cel::encode(&log));

    // Refused: the last launch (the default) is incomplete; a recnum that
    // is not a launch's first record, or no record at all.
    let cases = [
        (
            "last launch incomplete",
            None,
            format!("the launch starting at record {} is incomplete", second.recnum),
        ),
        (
            "recnum of a vm-identity record",
            Some(3),
            "launch_recnum 3 is a vm-identity record".into(),
        ),
        ("recnum of no record", Some(999), "launch_recnum 999 names no tellus record".into()),
    ];
    for (case, recnum, want) in cases {
        let (s, v, _, _) =
            attest(&app, &host, &host.state(), with_log(log_b64.clone(), recnum)).await;
        refused(case, s, &v, &want);
    }
    // The first, complete launch: its claims, and the resource.
    let (s, v, cookie, key) =
        attest(&app, &host, &host.state(), with_log(log_b64.clone(), Some(0))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    secret_released(&app, &cookie, key).await;
}

#[tokio::test]
async fn binding_nonce_and_log_tampering_are_refused() {
    let host = new_host();
    let app = app_with(Some(record(&host, true)));
    app.upload("default/key/disk", SECRET).await;

    // The quote binds another binding than the one presented. (case,
    // quoted for another session's nonce, presented with another tee key)
    let cases = [
        ("tee-pubkey swapped after quoting", false, true),
        ("quoted for another session's nonce", true, false),
    ];
    for (case, other_session, other_key) in cases {
        let (cookie, nonce) = app.auth("tpm").await;
        let quoted_nonce = if other_session { app.auth("tpm").await.1 } else { nonce.clone() };
        let key = TeeKey::new();
        let ev = host.quote(&host.state(), &key.binding(&quoted_nonce));
        let presented = if other_key { TeeKey::new() } else { key };
        let req =
            with_cookie(post_json("/kbs/v0/attest", &attestation(&nonce, &presented, ev)), &cookie);
        let (s, _, v) = app.json(req).await;
        refused(case, s, &v, "does not carry this attestation's binding");
        nothing_released(case, &app, &cookie).await;
    }

    // The launch log tampered with.
    let records = host.records.clone();
    let mut changed = records.clone();
    let last = changed[0].content.len() - 1;
    changed[0].content[last] ^= 1;
    let cases = [
        ("one byte of the log changed", cel::encode(&changed), "launch log does not verify"),
        // It no longer replays to PCR 13.
        (
            "the log without its last record",
            cel::encode(&records[..records.len() - 1]),
            "does not match the quote",
        ),
        ("no log at all", vec![], "no launch log"),
    ];
    for (case, log, want) in cases {
        let (s, v, cookie, _) =
            attest(&app, &host, &host.state(), with_log(B64.encode(log), None)).await;
        refused(case, s, &v, want);
        nothing_released(case, &app, &cookie).await;
    }
}

#[tokio::test]
async fn unenrolled_unactivated_and_foreign_aks_are_refused() {
    let host = new_host();

    // (case, the host in the store, quote with a second AK on the same
    // TPM (same host id) instead of the enrolled one, refusal)
    let cases = [
        ("unenrolled", None, false, "AK not enrolled: no host"),
        ("not activated", Some(record(&host, false)), false, "enrolled but not activated"),
        (
            "a foreign AK",
            Some(record(&host, true)),
            true,
            "AK not enrolled: the quote is signed by AK",
        ),
    ];
    for (case, record, second_ak, want) in cases {
        let app = app_with(record);
        let state = if second_ak { host.init("other") } else { host.state() };
        let (s, v, cookie, _) = attest(&app, &host, &state, |_| {}).await;
        refused(case, s, &v, want);
        nothing_released(case, &app, &cookie).await;
    }
}
