//! Host enrollment routes in process (router + oneshot). The TPM side is a
//! provisioned swtpm driven by tpm2-tools: `tpm2_createek` (RSA 2048, whose
//! certificate the swtpm local CA wrote at NV 0x01c00002), `tpm2_createak`,
//! `tpm2_nvread` for the EK certificate, and `tpm2_activatecredential` on the
//! verifier's challenge for the proof.

mod registrar_support;
mod service_support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use registrar_support::TpmHost as Host;
use serde_json::{json, Value};
use service_support::{error_kind, post_json, App, ADMIN};
use tellus_protocol::enrollment::{ActivationProof, EnrollChallenge, EnrollRequest};

fn app_for(host: &Host) -> App {
    App::with(|c| host.trust_ek_ca(c))
}

async fn enroll(app: &App, req: &EnrollRequest) -> (StatusCode, Value) {
    let (s, _, v) =
        app.json(post_json("/tellus/v1/hosts/enroll", &serde_json::to_value(req).unwrap())).await;
    (s, v)
}

async fn prove(app: &App, proof: &ActivationProof) -> (StatusCode, Value) {
    let (s, _, v) = app
        .json(post_json("/tellus/v1/hosts/activate", &serde_json::to_value(proof).unwrap()))
        .await;
    (s, v)
}

fn admin_get(uri: &str, token: Option<&str>) -> Request<Body> {
    let mut r = Request::get(uri);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(Body::empty()).unwrap()
}

/// `DELETE {host uri}/tpm-clock` with `token`.
fn forget_clock(host_uri: &str, token: Option<&str>) -> Request<Body> {
    let mut r = Request::delete(format!("{host_uri}/tpm-clock"));
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(Body::empty()).unwrap()
}

async fn metric(app: &App, name: &str) -> u64 {
    let (_, _, body) = app.call(admin_get("/metrics", None)).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    let line = format!("tellus_verifier_{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn enroll_activate_and_admin_routes() {
    let host = Host::new();
    let app = app_for(&host);
    let req = host.request();

    let (s, v) = enroll(&app, &req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let challenge: EnrollChallenge = serde_json::from_value(v).unwrap();
    let secret = host.activate(&challenge);
    let proof = ActivationProof {
        enrollment_id: challenge.enrollment_id.clone(),
        secret: B64.encode(&secret),
    };
    let (s, v) = prove(&app, &proof).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["host_id"], req.host_id.as_str());
    assert_eq!(v["activated"], true);
    assert_eq!(v["labels"], json!({}));
    assert_eq!(metric(&app, "enrollments").await, 1);
    assert_eq!(metric(&app, "activations").await, 1);

    // Replay of the used enrollment id: refused, nothing changes.
    let (s, v) = prove(&app, &proof).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(error_kind(&v), "EnrollmentNotFound");

    // Admin view of the host.
    let uri = format!("/tellus/v1/hosts/{}", req.host_id);
    let (s, _, v) = app.json(admin_get(&uri, Some(ADMIN))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["activated"], true);
    assert_eq!(v["labels"], json!({}));
    assert_eq!(v["ak_public"], req.ak_public.as_str());
    assert_eq!(v["ek_public"], req.ek_public.as_str());
    let stored = app.state.store.get_host(&req.host_id).unwrap().unwrap();
    assert!(stored.activated);

    // Labels: set, shown, kept when the host enrolls again.
    let put = |token: Option<&str>, body: &Value| {
        let mut r =
            Request::put(format!("{uri}/labels")).header("content-type", "application/json");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.body(Body::from(body.to_string())).unwrap()
    };
    let (s, _, v) = app.json(put(Some(ADMIN), &json!({"site": "eu-1"}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["labels"], json!({"site": "eu-1"}));
    let (s, _, v) = app.json(put(Some(ADMIN), &json!({"site": 3}))).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::BAD_REQUEST, "InvalidRequest"));

    let (s, v) = enroll(&app, &req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let c2: EnrollChallenge = serde_json::from_value(v).unwrap();
    assert_ne!(c2.enrollment_id, challenge.enrollment_id);
    let secret = host.activate(&c2);
    let (s, v) = prove(
        &app,
        &ActivationProof { enrollment_id: c2.enrollment_id, secret: B64.encode(&secret) },
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["labels"], json!({"site": "eu-1"}));

    // Admin routes without or with a wrong token: 401.
    for token in [None, Some("wrong-token")] {
        let (s, _, v) = app.json(admin_get(&uri, token)).await;
        assert_eq!((s, error_kind(&v)), (StatusCode::UNAUTHORIZED, "UnAuthenticated"), "{v}");
        let (s, _, v) = app.json(put(token, &json!({"a": "b"}))).await;
        assert_eq!((s, error_kind(&v)), (StatusCode::UNAUTHORIZED, "UnAuthenticated"), "{v}");
        let (s, _, v) = app.json(forget_clock(&uri, token)).await;
        assert_eq!((s, error_kind(&v)), (StatusCode::UNAUTHORIZED, "UnAuthenticated"), "{v}");
    }
    // Forgetting the TPM clock history of a host with none: 200, null.
    let (s, _, v) = app.json(forget_clock(&uri, Some(ADMIN))).await;
    assert_eq!((s, &v["forgotten"]), (StatusCode::OK, &Value::Null), "{v}");
    let unknown = format!("/tellus/v1/hosts/{}", "0".repeat(64));
    let (s, _, v) = app.json(forget_clock(&unknown, Some(ADMIN))).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::NOT_FOUND, "HostNotFound"));
    let (s, _, v) = app.json(admin_get(&unknown, Some(ADMIN))).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::NOT_FOUND, "HostNotFound"));
    let (s, _, v) = app.json(admin_get("/tellus/v1/hosts/nothex", Some(ADMIN))).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::BAD_REQUEST, "InvalidRequest"));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_secret_is_refused_and_consumes_the_challenge() {
    let host = Host::new();
    let app = app_for(&host);
    let (s, v) = enroll(&app, &host.request()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let challenge: EnrollChallenge = serde_json::from_value(v).unwrap();
    let mut secret = host.activate(&challenge);
    secret[0] ^= 1;
    let bad = ActivationProof {
        enrollment_id: challenge.enrollment_id.clone(),
        secret: B64.encode(&secret),
    };
    let (s, v) = prove(&app, &bad).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::FORBIDDEN, "ActivationFailed"), "{v}");
    // The right secret now comes too late: the challenge was consumed.
    secret[0] ^= 1;
    let good = ActivationProof { secret: B64.encode(&secret), ..bad };
    let (s, v) = prove(&app, &good).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::NOT_FOUND, "EnrollmentNotFound"), "{v}");
    assert!(app.state.store.get_host(&host.request().host_id).unwrap().is_none());
    assert_eq!(metric(&app, "activations_failed").await, 2);

    // Garbage ids are a bad request.
    let (s, v) = prove(&app, &ActivationProof { enrollment_id: "../x".into(), ..good }).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::BAD_REQUEST, "InvalidRequest"), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_challenge_is_gone() {
    let host = Host::new();
    let app = app_for(&host);
    let (s, v) = enroll(&app, &host.request()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let challenge: EnrollChallenge = serde_json::from_value(v).unwrap();
    // Age the stored challenge beyond the TTL.
    let mut p = app.state.store.take_pending(&challenge.enrollment_id).unwrap().unwrap();
    p.created_at -= 301;
    app.state.store.put_pending(&p).unwrap();
    let secret = host.activate(&challenge);
    let proof =
        ActivationProof { enrollment_id: challenge.enrollment_id, secret: B64.encode(secret) };
    let (s, v) = prove(&app, &proof).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::GONE, "EnrollmentExpired"), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_or_missing_ek_ca_is_refused() {
    let host = Host::new();
    // A CA directory with an unrelated CA.
    let other = App::with(|c| {
        let dir = c.state_dir.with_file_name("ek-ca");
        std::fs::create_dir_all(&dir).unwrap();
        swtpm_tests::self_signed_ca(&dir, "other-ca.pem", "other CA");
        c.ek_ca_dir = Some(dir);
    });
    let (s, v) = enroll(&other, &host.request()).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::BAD_REQUEST, "EnrollmentRefused"), "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("not trusted"), "{detail}");
    assert_eq!(metric(&other, "enrollments_refused").await, 1);

    // No EK CA directory at all (the default <state_dir>/ek-ca is missing).
    let none = App::new(false);
    let (s, v) = enroll(&none, &host.request()).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::BAD_REQUEST, "EnrollmentRefused"), "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("no usable EK CA certificates") && detail.contains("ek-ca"),
        "{detail}"
    );

    // Not an enrollment request.
    let (s, _, v) = none.json(post_json("/tellus/v1/hosts/enroll", &json!({"x": 1}))).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::BAD_REQUEST, "InvalidRequest"), "{v}");
}
