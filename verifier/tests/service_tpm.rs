//! tee `tpm` through the KBS routes, with real evidence: a swtpm, the
//! launcher binary (`tellus host init`, `tellus quote`) and a tellus CEL
//! launch log extended into PCR 13. The host is put into the store directly
//! (the enrollment routes have their own tests).

mod launch_support;
mod service_support;
use launch_support::{extend_launch_log, tellus_bin};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use service_support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use swtpm_tests::Swtpm;
use tellus_measured_boot::cel;
use tellus_verifier::storage::HostRecord;
use tellus_verifier::tpm::binding::runtime_data_binding;

const SECRET: &[u8] = b"disk key for the attested guest";

fn tellus(tpm: &Swtpm, state: &Path, args: &[&str]) {
    let out = Command::new(tellus_bin())
        .args(args)
        .arg("--tpm")
        .arg(tpm.addr())
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tellus {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A provisioned swtpm, PCR 13 extended with a tellus launch log, and
/// `host init` done in `state` (the log written there).
struct Host {
    tpm: Swtpm,
    dir: tempfile::TempDir,
    log: Vec<u8>,
}

impl Host {
    fn new() -> Host {
        let tpm = Swtpm::start_provisioned();
        let records = extend_launch_log(&tpm, "console=ttyS0");
        let host = Host { tpm, dir: tempfile::tempdir().unwrap(), log: cel::encode(&records) };
        host.init("state");
        host
    }

    /// `host init` in another state dir (a new AK on the same TPM).
    fn init(&self, name: &str) -> PathBuf {
        let state = self.dir.path().join(name);
        tellus(&self.tpm, &state, &["host", "init"]);
        std::fs::write(state.join("launch-log.cel"), &self.log).unwrap();
        state
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn record(&self, activated: bool) -> HostRecord {
        let host = self.state().join("host");
        let id = std::fs::read_to_string(host.join("host-id")).unwrap();
        HostRecord {
            host_id: id.trim().to_owned(),
            ek_public: std::fs::read(host.join("ek.pub")).unwrap(),
            ak_public: std::fs::read(host.join("ak.pub")).unwrap(),
            labels: [("site".to_owned(), "lab-1".to_owned())].into(),
            activated,
        }
    }

    /// `tellus quote --pcrs 13` with `binding` as qualifyingData.
    fn quote(&self, state: &Path, binding: &[u8]) -> Value {
        let out = state.join("ev.json");
        let nonce = hex::encode(binding);
        tellus(
            &self.tpm,
            state,
            &["quote", "--nonce", &nonce, "--pcrs", "13", "--output", out.to_str().unwrap()],
        );
        serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
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

/// The resource is not released to `cookie`.
async fn nothing_released(app: &App, cookie: &str) {
    let req = with_cookie(
        Request::get("/kbs/v0/resource/default/key/disk").body(Body::empty()).unwrap(),
        cookie,
    );
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (_, _, m) = app.call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let m = String::from_utf8_lossy(&m);
    assert!(m.contains("tellus_verifier_resources_released_total 0"), "{m}");
}

fn refused(s: StatusCode, v: &Value, what: &str) {
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(error_kind(v), "AttestationError", "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains(what), "expected {what:?} in: {detail}");
}

#[tokio::test]
async fn real_tpm_evidence_releases_the_resource() {
    let host = Host::new();
    let record = host.record(true);
    let app = app_with(Some(record.clone()));
    app.upload("default/key/disk", SECRET).await;

    let (s, v, cookie, key) = attest(&app, &host, &host.state(), |_| {}).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().unwrap();
    let (_, _, jwks) = app.json(Request::get("/tellus/v1/jwks").body(Body::empty()).unwrap()).await;
    let claims = verify_with_jwks(token, &jwks);
    let sub = &claims["submods"]["cpu0"];
    assert_eq!(sub["tellus.tee"], "tpm");
    assert_eq!(sub["ear.trustworthiness-vector"], json!({"instance-identity": 2}));
    assert_eq!(sub["ear.appraisal-policy-id"], "tellus:tpm-enrolled-ak");
    let tpm = &sub["ear.veraison.annotated-evidence"]["tpm"];
    assert_eq!(tpm["host_id"], record.host_id.as_str());
    assert_eq!(tpm["labels"], json!({"site": "lab-1"}));
    assert!(tpm["clock"]["clock"].is_u64() && tpm["clock"]["resetCount"].is_u64(), "{tpm}");
    assert!(tpm["clock"]["safe"].is_boolean(), "{tpm}");
    assert!(tpm["firmware_version"].as_str().unwrap().starts_with("0x"), "{tpm}");
    assert_eq!(tpm["pcrs"]["sha256"]["13"], host.tpm.pcrread("sha256", 13).to_lowercase());
    let kinds: Vec<&str> = tpm["launch_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["cmdline", "separator", "stop"]);
    assert_eq!(tpm["launch_records"][0]["payload"], json!({"cmdline": "console=ttyS0"}));
    assert_eq!(tpm["launch_records"][2]["pcr"], 13);
    assert!(tpm["launch_ticket"].is_null());

    let req = with_cookie(
        Request::get("/kbs/v0/resource/default/key/disk").body(Body::empty()).unwrap(),
        &cookie,
    );
    let (s, _, jwe) = app.json(req).await;
    assert_eq!(s, StatusCode::OK, "{jwe}");
    assert_eq!(key.decrypt(&jwe), SECRET);
}

#[tokio::test]
async fn binding_nonce_and_log_tampering_are_refused() {
    let host = Host::new();
    let app = app_with(Some(host.record(true)));
    app.upload("default/key/disk", SECRET).await;

    // tee-pubkey swapped after quoting: the quote binds the first key.
    let (cookie, nonce) = app.auth("tpm").await;
    let key = TeeKey::new();
    let ev = host.quote(&host.state(), &key.binding(&nonce));
    let other = TeeKey::new();
    let req = with_cookie(post_json("/kbs/v0/attest", &attestation(&nonce, &other, ev)), &cookie);
    let (s, _, v) = app.json(req).await;
    refused(s, &v, "does not carry this attestation's binding");
    nothing_released(&app, &cookie).await;

    // Quoted for another session's nonce, presented in this one.
    let (_, nonce_a) = app.auth("tpm").await;
    let (cookie_b, nonce_b) = app.auth("tpm").await;
    let key = TeeKey::new();
    let ev = host.quote(&host.state(), &key.binding(&nonce_a));
    let req = with_cookie(post_json("/kbs/v0/attest", &attestation(&nonce_b, &key, ev)), &cookie_b);
    let (s, _, v) = app.json(req).await;
    refused(s, &v, "does not carry this attestation's binding");
    nothing_released(&app, &cookie_b).await;

    // One byte of the launch log changed.
    let log = host.log.clone();
    let (s, v, cookie, _) = attest(&app, &host, &host.state(), move |ev| {
        let mut records = cel::decode(&log).unwrap();
        let last = records[0].content.len() - 1;
        records[0].content[last] ^= 1;
        ev["event_log"] = json!(B64.encode(cel::encode(&records)));
    })
    .await;
    refused(s, &v, "launch log does not verify");
    nothing_released(&app, &cookie).await;

    // The log without its last record: it no longer replays to PCR 13.
    let log = host.log.clone();
    let (s, v, cookie, _) = attest(&app, &host, &host.state(), move |ev| {
        let records = cel::decode(&log).unwrap();
        ev["event_log"] = json!(B64.encode(cel::encode(&records[..2])));
    })
    .await;
    refused(s, &v, "does not match the quote");
    nothing_released(&app, &cookie).await;

    // No log at all.
    let (s, v, cookie, _) =
        attest(&app, &host, &host.state(), |ev| ev["event_log"] = json!("")).await;
    refused(s, &v, "no launch log");
    nothing_released(&app, &cookie).await;
}

#[tokio::test]
async fn unenrolled_unactivated_and_foreign_aks_are_refused() {
    let host = Host::new();

    let app = app_with(None);
    let (s, v, cookie, _) = attest(&app, &host, &host.state(), |_| {}).await;
    refused(s, &v, "AK not enrolled: no host");
    nothing_released(&app, &cookie).await;

    let app = app_with(Some(host.record(false)));
    let (s, v, cookie, _) = attest(&app, &host, &host.state(), |_| {}).await;
    refused(s, &v, "enrolled but not activated");
    nothing_released(&app, &cookie).await;

    // A second AK on the same TPM (same host id), not the enrolled one.
    let app = app_with(Some(host.record(true)));
    let other = host.init("other");
    let (s, v, cookie, _) = attest(&app, &host, &other, |_| {}).await;
    refused(s, &v, "AK not enrolled: the quote is signed by AK");
    nothing_released(&app, &cookie).await;
}
