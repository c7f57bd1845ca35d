//! Host enrollment routes in process (router + oneshot). The TPM side is a
//! provisioned swtpm driven by tpm2-tools: `tpm2_createek` (RSA 2048, whose
//! certificate the swtpm local CA wrote at NV 0x01c00002), `tpm2_createak`,
//! `tpm2_nvread` for the EK certificate, and `tpm2_activatecredential` on the
//! verifier's challenge for the proof.

mod service_support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use service_support::{error_kind, post_json, App, ADMIN};
use std::path::Path;
use swtpm_tests::Swtpm;
use tellus_protocol::enrollment::{ActivationProof, EnrollChallenge, EnrollRequest};

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A provisioned swtpm with an EK and AK created by tpm2-tools.
struct Host {
    tpm: Swtpm,
}

impl Host {
    fn new() -> Host {
        let tpm = Swtpm::start_provisioned();
        tpm.run("tpm2_createek", &["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
        tpm.run(
            "tpm2_createak",
            &[
                "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u",
                "ak.pub", "-n", "ak.name",
            ],
        );
        tpm.run("tpm2_flushcontext", &["-t"]);
        tpm.run("tpm2_nvread", &["0x01c00002", "-C", "o", "-o", "ekcert.der"]);
        Host { tpm }
    }

    /// A directory with a copy of the swtpm local CA certificates.
    fn ca_dir(&self, into: &Path) {
        std::fs::create_dir_all(into).unwrap();
        for f in ["issuercert.pem", "swtpm-localca-rootca-cert.pem"] {
            std::fs::copy(self.tpm.local_ca().join(f), into.join(f)).unwrap();
        }
    }

    fn request(&self) -> EnrollRequest {
        let ek = read(&self.tpm.path("ek.pub"));
        EnrollRequest {
            host_id: hex::encode(ring::digest::digest(&ring::digest::SHA256, &ek)),
            ek_public: B64.encode(&ek),
            ek_cert: Some(B64.encode(read(&self.tpm.path("ekcert.der")))),
            ak_public: B64.encode(read(&self.tpm.path("ak.pub"))),
            ak_name: hex::encode(read(&self.tpm.path("ak.name"))),
        }
    }

    /// `tpm2_activatecredential` on the challenge: the recovered secret.
    fn activate(&self, c: &EnrollChallenge) -> Vec<u8> {
        let mut file = 0xBADC_C0DEu32.to_be_bytes().to_vec();
        file.extend_from_slice(&1u32.to_be_bytes());
        file.extend(B64.decode(&c.credential_blob).unwrap());
        file.extend(B64.decode(&c.encrypted_secret).unwrap());
        std::fs::write(self.tpm.path("cred.in"), file).unwrap();
        let _ = std::fs::remove_file(self.tpm.path("actcred.out"));
        // The RSA 2048 EK (low range) needs PolicySecret(TPM_RH_ENDORSEMENT).
        self.tpm.run("tpm2_startauthsession", &["--policy-session", "-S", "s.ctx"]);
        self.tpm.run("tpm2_policysecret", &["-S", "s.ctx", "-c", "e"]);
        let out = self.tpm.try_run(
            "tpm2_activatecredential",
            &[
                "-c",
                "ak.ctx",
                "-C",
                "ek.ctx",
                "-i",
                "cred.in",
                "-o",
                "actcred.out",
                "-P",
                "session:s.ctx",
            ],
        );
        self.tpm.run("tpm2_flushcontext", &["s.ctx"]);
        self.tpm.run("tpm2_flushcontext", &["-t"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        read(&self.tpm.path("actcred.out"))
    }
}

fn app_for(host: &Host) -> App {
    App::with(|c| {
        let dir = c.state_dir.with_file_name("ek-ca");
        host.ca_dir(&dir);
        c.ek_ca_dir = Some(dir);
    })
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
    }
    let (s, _, v) =
        app.json(admin_get(&format!("/tellus/v1/hosts/{}", "0".repeat(64)), Some(ADMIN))).await;
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
        swtpm_tests::openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "k.key",
                "-out",
                "other-ca.pem",
                "-subj",
                "/CN=other CA",
                "-days",
                "1",
            ],
        );
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
