//! The KBS routes in process (`tower::ServiceExt::oneshot` on the router,
//! a temp-dir SQLite store).

mod service_support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use service_support::*;
use std::time::Duration;

#[tokio::test]
async fn auth_happy_path() {
    let app = App::new(false);
    let (s, h, v) = app.json(post_json("/kbs/v0/auth", &auth_body("tpm"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cookie = h.get("set-cookie").unwrap().to_str().unwrap();
    let (pair, expires) = cookie.split_once("; Expires=").unwrap();
    let id = pair.strip_prefix("kbs-session-id=").unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let when = httpdate::parse_http_date(expires).unwrap();
    let left = when.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(250) && left <= Duration::from_secs(300), "{left:?}");
    assert_eq!(B64.decode(v["nonce"].as_str().unwrap()).unwrap().len(), 32);
    assert_eq!(v["extra-params"], "");
    // Each session gets its own nonce.
    let (_, v2) = app.auth("tpm").await;
    assert_ne!(v["nonce"].as_str().unwrap(), v2);
}

#[tokio::test]
async fn auth_refuses_other_versions() {
    let app = App::new(false);
    for version in [json!("0.1.1"), json!("0.4"), json!(4), Value::Null] {
        let body = json!({"version": version, "tee": "tpm", "extra-params": {}});
        let (s, _, v) = app.json(post_json("/kbs/v0/auth", &body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(error_kind(&v), "ProtocolVersion");
        assert!(v["detail"].as_str().unwrap().contains("0.4.0"), "{v}");
    }
}

#[tokio::test]
async fn auth_refuses_unknown_and_disabled_tees() {
    let app = App::new(false);
    for tee in ["no-such-tee", "sample", "tdx"] {
        let (s, _, v) = app.json(post_json("/kbs/v0/auth", &auth_body(tee))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{tee}");
        assert_eq!(error_kind(&v), "UnsupportedTee", "{tee}: {v}");
        let detail = v["detail"].as_str().unwrap();
        let supported = detail.split("supported: ").nth(1).unwrap();
        assert!(supported.contains("tpm") && !supported.contains("sample"), "{v}");
    }
    // With the sample tee enabled, it is accepted.
    let app = App::new(true);
    app.auth("sample").await;
}

#[tokio::test]
async fn malformed_json_is_a_specific_400() {
    let app = App::new(false);
    let req = Request::post("/kbs/v0/auth").body(Body::from("{\"version\": \"0.4.0\",")).unwrap();
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_kind(&v), "InvalidRequest");
    assert!(v["detail"].as_str().unwrap().contains("not valid JSON"), "{v}");
    // Valid JSON, wrong shape.
    let (s, _, v) =
        app.json(post_json("/kbs/v0/auth", &json!({"version": "0.4.0", "tee": "tpm"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_kind(&v), "InvalidRequest");
    assert!(v["detail"].as_str().unwrap().contains("extra-params"), "{v}");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = App::with(|c| c.max_body_bytes = 1024);
    let big = json!({"version": "0.4.0", "tee": "tpm", "extra-params": "x".repeat(2000)});
    let (s, _, v) = app.json(post_json("/kbs/v0/auth", &big)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_kind(&v), "PayloadTooLarge");
    let req = Request::post("/kbs/v0/resource/a/b/c")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::from(vec![0u8; 1025]))
        .unwrap();
    let (s, _, _) = app.call(req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn attest_without_cookie_or_with_unknown_session_is_401() {
    let app = App::new(true);
    let key = TeeKey::new();
    let body = key.sample_attestation("bm9uY2U=", &[0; 48]);
    let (s, _, v) = app.json(post_json("/kbs/v0/attest", &body)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(error_kind(&v), "UnAuthenticated");
    let req = with_cookie(
        post_json("/kbs/v0/attest", &body),
        &format!("kbs-session-id={}", "0".repeat(32)),
    );
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(error_kind(&v), "UnAuthenticated");
}

#[tokio::test]
async fn expired_session_is_401() {
    let mut app = App::new(true);
    app.state.settings.session_lifetime = Duration::from_millis(1);
    let (cookie, nonce) = app.auth("sample").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let key = TeeKey::new();
    let (s, _, v) = app.json(sample_attest(&key, &nonce, &cookie)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(error_kind(&v), "UnAuthenticated");
}

/// A session that expires while its evidence is judged is not attested
/// (its attestation would give it a new lifetime): 401, and nothing of it
/// is recorded.
#[tokio::test]
async fn a_session_that_expires_during_attestation_is_not_attested() {
    struct Slow;
    impl tellus_verifier::service::EvidenceVerifier for Slow {
        fn verify(
            &self,
            tee: &str,
            evidence: &Value,
            binding: &[u8; 48],
        ) -> Result<tellus_verifier::service::Claims, tellus_verifier::service::VerifyError>
        {
            std::thread::sleep(Duration::from_millis(1500));
            use tellus_verifier::service::SampleVerifier;
            SampleVerifier.verify(tee, evidence, binding)
        }
    }
    let mut app = App::new(true);
    app.state = app.state.clone().with_verifier("sample", std::sync::Arc::new(Slow));
    app.state.settings.session_lifetime = Duration::from_millis(1000);
    let (cookie, nonce) = app.auth("sample").await;
    let key = TeeKey::new();
    let (s, _, v) = app.json(sample_attest(&key, &nonce, &cookie)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("expired during attestation"), "{v}");
    let id = cookie.split('=').nth(1).unwrap();
    assert_eq!(app.state.store.get_session(id).unwrap().unwrap().attested, None);
}

#[tokio::test]
async fn nonce_mismatch_is_denied() {
    let app = App::new(true);
    let (cookie, nonce) = app.auth("sample").await;
    let (_, other_nonce) = app.auth("sample").await;
    assert_ne!(nonce, other_nonce);
    let key = TeeKey::new();
    // Evidence consistent with the other session's nonce, sent in this one.
    let b = key.binding(&other_nonce);
    let req = with_cookie(
        post_json("/kbs/v0/attest", &key.sample_attestation(&other_nonce, &b)),
        &cookie,
    );
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(error_kind(&v), "NonceMismatch");
}

#[tokio::test]
async fn wrong_binding_is_denied_and_nothing_is_released() {
    let app = App::new(true);
    app.upload("default/key/disk", b"disk key").await;
    let (cookie, nonce) = app.auth("sample").await;
    let key = TeeKey::new();
    let mut b = key.binding(&nonce);
    b[0] ^= 1;
    let req =
        with_cookie(post_json("/kbs/v0/attest", &key.sample_attestation(&nonce, &b)), &cookie);
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(error_kind(&v), "AttestationError");
    assert!(v["detail"].as_str().unwrap().contains("binding"), "{v}");
    let req = with_cookie(
        Request::get("/kbs/v0/resource/default/key/disk").body(Body::empty()).unwrap(),
        &cookie,
    );
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(error_kind(&v), "UnAuthenticated");
    let (_, _, metrics) = app.call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(metrics.contains("tellus_verifier_resources_released_total 0"), "{metrics}");
    assert!(metrics.contains("tellus_verifier_attest_failure_total 1"), "{metrics}");
}

#[tokio::test]
async fn tpm_refuses_sample_shaped_evidence() {
    // Real TPM evidence is exercised in service_tpm.rs (swtpm).
    let app = App::new(false);
    let (cookie, nonce) = app.auth("tpm").await;
    let key = TeeKey::new();
    let (s, _, v) = app.json(sample_attest(&key, &nonce, &cookie)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(error_kind(&v), "AttestationError");
    assert!(v["detail"].as_str().unwrap().contains("not tellus TPM evidence"), "{v}");
}

/// auth → attest → resource; returns (cookie, token, key).
async fn attest_sample(app: &App) -> (String, String, TeeKey) {
    let (cookie, nonce) = app.auth("sample").await;
    let key = TeeKey::new();
    let (s, h, v) = app.json(sample_attest(&key, &nonce, &cookie)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(h.get("set-cookie").unwrap().to_str().unwrap().starts_with(&cookie));
    let token = v["token"].as_str().unwrap().to_owned();
    (cookie, token, key)
}

#[tokio::test]
async fn sample_end_to_end_with_cookie() {
    check_unwrap_vector();
    let app = App::new(true);
    let secret: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    app.upload("default/key/disk", &secret).await;

    // Under the default policy the sample tee attests (200) with a
    // contraindicated result, and the resource is denied with the reason.
    let (cookie, token, _) = attest_sample(&app).await;
    let (_, _, jwks) = app.json(Request::get("/tellus/v1/jwks").body(Body::empty()).unwrap()).await;
    let claims = verify_with_jwks(&token, &jwks);
    assert_eq!(claims["submods"]["cpu0"]["ear.status"], "contraindicated");
    assert_eq!(claims["submods"]["cpu0"]["tellus.reasons"][0]["rule"], "tee");
    let req = with_cookie(
        Request::get("/kbs/v0/resource/default/key/disk").body(Body::empty()).unwrap(),
        &cookie,
    );
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(error_kind(&v), "PolicyDeny");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("tee sample is not accepted"), "{detail}");
    assert!(
        detail.contains("[rule tee, claim tee, expected one of tpm, found sample]"),
        "{detail}"
    );

    // With the test-only allow-sample policy it is affirming.
    let (s, v) = app.set_attestation_policy(ALLOW_SAMPLE).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (cookie, token, key) = attest_sample(&app).await;

    // The token verifies with the published JWK Set and is EAR-shaped.
    let (s, _, jwks) = app.json(Request::get("/tellus/v1/jwks").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let claims = verify_with_jwks(&token, &jwks);
    assert_eq!(claims["eat_profile"], "tag:github.com,2023:veraison/ear");
    assert_eq!(claims["submods"]["cpu0"]["ear.status"], "affirming");
    assert_eq!(
        claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["runtime_data_claims"]
            ["tee-pubkey"],
        key.jwk()
    );
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());

    // A repeated attest returns the cached token.
    let b = key.binding("irrelevant");
    let req = with_cookie(post_json("/kbs/v0/attest", &key.sample_attestation("x", &b)), &cookie);
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["token"], token.as_str());

    let req = with_cookie(
        Request::get("/kbs/v0/resource/default/key/disk").body(Body::empty()).unwrap(),
        &cookie,
    );
    let (s, _, jwe) = app.json(req).await;
    assert_eq!(s, StatusCode::OK, "{jwe}");
    assert_eq!(key.decrypt(&jwe), secret);

    // Missing resources are 404.
    let req = with_cookie(
        Request::get("/kbs/v0/resource/default/key/none").body(Body::empty()).unwrap(),
        &cookie,
    );
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_kind(&v), "ResourceNotFound");
}

#[tokio::test]
async fn sample_end_to_end_with_bearer_token() {
    let app = App::new(true);
    app.upload("repo/type/tag", b"bearer secret").await;
    let (s, v) = app.set_attestation_policy(ALLOW_SAMPLE).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_cookie, token, key) = attest_sample(&app).await;
    let req = Request::get("/kbs/v0/resource/repo/type/tag")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (s, _, jwe) = app.json(req).await;
    assert_eq!(s, StatusCode::OK, "{jwe}");
    assert_eq!(key.decrypt(&jwe), b"bearer secret");

    // A tampered token, a token of another verifier, no token at all.
    let mut bad = token.clone();
    bad.pop();
    bad.push(if token.ends_with('A') { 'B' } else { 'A' });
    for (auth, kind) in [
        (Some(format!("Bearer {bad}")), "UnAuthenticated"),
        (Some("Bearer not.a.token".into()), "UnAuthenticated"),
        (Some("Basic abc".into()), "UnAuthenticated"),
        (None, "TokenNotFound"),
    ] {
        let mut req = Request::get("/kbs/v0/resource/repo/type/tag");
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let (s, _, v) = app.json(req.body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(error_kind(&v), kind, "{auth:?}: {v}");
    }
    let other = App::new(true);
    other.upload("repo/type/tag", b"x").await;
    let req = Request::get("/kbs/v0/resource/repo/type/tag")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (s, _, _) = other.json(req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn weak_rsa_tee_keys_are_refused_specifically() {
    let app = App::new(true);
    let (cookie, nonce) = app.auth("sample").await;
    let body = json!({
        "runtime-data": {"nonce": nonce, "tee-pubkey": {"kty": "RSA", "alg": "RSA-OAEP-256", "n": "AQAB", "e": "AQAB"}},
        "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": ""}, "additional_evidence": ""}
    });
    let (s, _, v) = app.json(with_cookie(post_json("/kbs/v0/attest", &body), &cookie)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_kind(&v), "UnsupportedTeeKey");
    assert!(v["detail"].as_str().unwrap().contains("the modulus has 17 bits"), "{v}");
}

#[tokio::test]
async fn health_metrics_jwks_need_no_auth() {
    let app = App::new(false);
    let (s, _, b) = app.call(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((s, &b[..]), (StatusCode::OK, &b"ok"[..]));
    app.auth("tpm").await;
    let (s, _, b) = app.call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(b.to_vec()).unwrap();
    assert!(
        text.contains("tellus_verifier_requests_total{route=\"/kbs/v0/auth\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("tellus_verifier_auth_total 1"), "{text}");
    let (s, _, v) = app.json(Request::get("/tellus/v1/jwks").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["keys"][0]["alg"], "ES256");
    assert_eq!(v["keys"][0]["crv"], "P-256");
}

/// Policy decisions are counted by source: two sample attestations (and
/// resource requests) that differ only in their nonce and key have one
/// digest where the default policies read, so the second is answered from
/// the memo.
#[tokio::test]
async fn policy_decisions_are_counted_by_memo_and_evaluation_in_the_metrics() {
    let app = App::new(true);
    app.upload("default/key/disk", b"secret").await;
    for _ in 0..2 {
        let (cookie, _, _) = attest_sample(&app).await;
        let req = with_cookie(
            Request::get("/kbs/v0/resource/default/key/disk").body(Body::empty()).unwrap(),
            &cookie,
        );
        let (s, _, v) = app.json(req).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    }
    let (s, _, b) = app.call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(b.to_vec()).unwrap();
    for (policy, source, n) in [
        ("attestation", "memo", 1),
        ("attestation", "evaluation", 1),
        ("resource", "memo", 1),
        ("resource", "evaluation", 1),
    ] {
        let line = format!(
            "tellus_verifier_policy_decisions_total{{policy=\"{policy}\",source=\"{source}\"}} {n}\n"
        );
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}

/// Two replicas share one store, and each keeps the sessions it committed
/// in memory: a session one of them attested is attested for the other
/// too, whichever state the other last saw.
#[tokio::test]
async fn a_session_attested_by_another_replica_is_attested_here_too() {
    let app = App::new(true);
    let (s, v) = app.set_attestation_policy(ALLOW_SAMPLE).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.upload("default/key/disk", b"secret").await;
    let other = App {
        dir: tempfile::tempdir().unwrap(),
        state: tellus_verifier::service::AppState {
            sessions: Default::default(),
            ..app.state.clone()
        },
    };
    // `app` made the session (and keeps it, unattested); `other` attests it.
    let (cookie, nonce) = app.auth("sample").await;
    let key = TeeKey::new();
    let (s, _, v) = other.json(sample_attest(&key, &nonce, &cookie)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    // `app` releases to the session, which it knew only unattested.
    let (s, jwe) = get_disk(&app, &cookie).await;
    assert_eq!(s, StatusCode::OK, "{jwe}");
    assert_eq!(key.decrypt(&jwe), b"secret");
    // An attest at `app` is a repeated attest: the store records the
    // session's attestation once, and the answer is the token it holds.
    let (s, _, v) = app.json(sample_attest(&TeeKey::new(), &nonce, &cookie)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["token"], token.as_str(), "the first attestation's token, not a second one");
    let stored = app.state.store.get_session(cookie.split('=').nth(1).unwrap()).unwrap().unwrap();
    assert_eq!(stored.attested.unwrap().token, token);
}

/// A session's nonce is used once: attestations racing on one session,
/// each with its own tee key, all get the one token the store recorded
/// (the others are repeated attests), never one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attestations_racing_on_one_session_all_get_the_one_recorded_token() {
    let app = App::new(true);
    let (s, v) = app.set_attestation_policy(ALLOW_SAMPLE).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for _ in 0..5 {
        let (cookie, nonce) = app.auth("sample").await;
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let req = sample_attest(&TeeKey::new(), &nonce, &cookie);
                let router = app.router();
                tokio::spawn(async move {
                    use tower::ServiceExt;
                    let resp = router.oneshot(req).await.unwrap();
                    let status = resp.status();
                    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
                    (status, serde_json::from_slice::<Value>(&body).unwrap())
                })
            })
            .collect();
        let mut tokens = std::collections::BTreeSet::new();
        for c in calls {
            let (s, v) = c.await.unwrap();
            assert_eq!(s, StatusCode::OK, "{v}");
            tokens.insert(v["token"].as_str().unwrap().to_owned());
        }
        assert_eq!(tokens.len(), 1, "one token for one session");
        let id = cookie.split('=').nth(1).unwrap();
        let stored = app.state.store.get_session(id).unwrap().unwrap().attested.unwrap();
        assert!(tokens.contains(&stored.token));
    }
    // One recorded (and audited) attestation per session, whichever
    // requests lost the race.
    let verified = app
        .state
        .store
        .audit_entries(0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|e| e.event == "attestation.verified")
        .count();
    assert_eq!(verified, 5);
}
