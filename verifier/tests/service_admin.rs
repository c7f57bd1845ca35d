//! The admin routes: bearer admin token, storage of what they send.

mod service_support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use serde_json::json;
use service_support::*;
use tellus_verifier::storage::PolicyKind;

/// A minimal valid policy.
const POLICY: &str = "package policy\n\nimport rego.v1\n\ndefault allow := false\n";

fn digest(n: u8) -> String {
    format!("sha256:{}", hex::encode([n; 32]))
}

fn admin_requests(auth: Option<&str>) -> Vec<Request<Body>> {
    let policy = json!({"type": "rego", "policy_id": "default", "policy": B64URL.encode(POLICY)});
    let rp = json!({"policy": B64URL.encode(POLICY)});
    let payload = json!({"kernel": [digest(1)]}).to_string();
    let rv = json!({"version": "0.1.0", "type": "sample", "payload": B64.encode(payload)});
    let mut reqs = vec![
        Request::post("/kbs/v0/resource/default/key/k").body(Body::from("secret")).unwrap(),
        post_json("/kbs/v0/attestation-policy", &policy),
        post_json("/kbs/v0/resource-policy", &rp),
        Request::get("/kbs/v0/resource-policy").body(Body::empty()).unwrap(),
        post_json("/kbs/v0/reference-value", &rv),
    ];
    if let Some(a) = auth {
        for r in &mut reqs {
            r.headers_mut().insert("authorization", a.parse().unwrap());
        }
    }
    reqs
}

#[tokio::test]
async fn every_admin_route_needs_the_admin_token() {
    let app = App::new(true);
    for auth in
        [None, Some("Bearer wrong-token"), Some("Bearer "), Some(ADMIN), Some("Basic YWRtaW4=")]
    {
        for req in admin_requests(auth) {
            let uri = req.uri().clone();
            let (s, _, v) = app.json(req).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri} with {auth:?}");
            assert_eq!(error_kind(&v), "UnAuthenticated", "{uri}");
        }
    }
    // Nothing was stored.
    let p = tellus_verifier::storage::ResourcePath::new("default", "key", "k").unwrap();
    assert!(app.state.store.get_resource(&p).unwrap().is_none());
    assert!(app.state.store.get_policy(PolicyKind::Resource, "default").unwrap().is_none());
    // A client's attestation token is not an admin token.
    let (cookie, _) = app.auth("sample").await;
    let req =
        with_cookie(Request::get("/kbs/v0/resource-policy").body(Body::empty()).unwrap(), &cookie);
    let (s, _, _) = app.json(req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn admin_routes_store_what_they_get() {
    let app = App::new(false);
    // GET before any POST: the built-in default policy, which is in force.
    let req = Request::get("/kbs/v0/resource-policy")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::OK);
    let text = B64URL.decode(v["policy"].as_str().unwrap()).unwrap();
    assert_eq!(text, tellus_policies::engine::RESOURCE_DEFAULT_REGO.as_bytes());

    for req in admin_requests(Some(&format!("Bearer {ADMIN}"))) {
        let uri = req.uri().clone();
        let (s, _, v) = app.json(req).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {v}");
        if uri.path() == "/kbs/v0/resource-policy" && v.get("policy").is_some() {
            assert_eq!(v["policy"], B64URL.encode(POLICY));
        }
    }
    let store = &app.state.store;
    assert_eq!(
        store.get_policy(PolicyKind::Attestation, "default").unwrap().as_deref(),
        Some(POLICY)
    );
    assert_eq!(store.get_policy(PolicyKind::Resource, "default").unwrap().as_deref(), Some(POLICY));
    let refs = store.reference_values().unwrap();
    assert_eq!(refs.values["kernel"][0].digest, digest(1));
    let p = tellus_verifier::storage::ResourcePath::new("default", "key", "k").unwrap();
    let stored = store.get_resource(&p).unwrap().unwrap();
    assert_eq!(app.state.resource_key.open(&p, &stored.sealed).unwrap(), b"secret");
    assert!(stored.required_labels.is_empty());

    // Reference values merge; a second upload of the same digest takes
    // the new expiry and provenance.
    let payload = json!({"kernel": [digest(2), digest(1)]}).to_string();
    let rv = json!({"version": "0.1.0", "type": "sample", "payload": B64.encode(payload),
        "expires": "2030-01-01T00:00:00Z", "provenance": "test upload"});
    let (s, v) = app.admin_post("/kbs/v0/reference-value", &rv).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let refs = store.reference_values().unwrap();
    let kernel = &refs.values["kernel"];
    assert_eq!(kernel.len(), 2);
    assert!(kernel.iter().all(|r| r.expires.as_deref() == Some("2030-01-01T00:00:00Z")));
    assert!(kernel.iter().all(|r| r.provenance.as_deref() == Some("test upload")));

    // Required labels on upload.
    let req = Request::post("/kbs/v0/resource/default/key/k2?required-labels=zone=dmz,site=lab-1")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::from("x"))
        .unwrap();
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let p = tellus_verifier::storage::ResourcePath::new("default", "key", "k2").unwrap();
    let labels = store.get_resource(&p).unwrap().unwrap().required_labels;
    assert_eq!(labels.get("zone").map(String::as_str), Some("dmz"));
    assert_eq!(labels.get("site").map(String::as_str), Some("lab-1"));
}

#[tokio::test]
async fn admin_bodies_are_checked() {
    let app = App::new(false);
    let auth = format!("Bearer {ADMIN}");
    let cases = [
        ("/kbs/v0/attestation-policy", json!({"type": "opa", "policy_id": "x", "policy": "cA"})),
        ("/kbs/v0/attestation-policy", json!({"type": "rego", "policy_id": "", "policy": "cA"})),
        ("/kbs/v0/attestation-policy", json!({"type": "rego", "policy_id": "x", "policy": "***"})),
        ("/kbs/v0/resource-policy", json!({"policy": 5})),
        (
            "/kbs/v0/reference-value",
            json!({"version": "0.1.0", "type": "sample", "payload": B64.encode("[1]")}),
        ),
        (
            "/kbs/v0/reference-value",
            json!({"version": "0.1.0", "type": "sample", "payload": B64.encode(r#"{"kernel":["sha256:00"]}"#)}),
        ),
        (
            "/kbs/v0/reference-value",
            json!({"version": "0.1.0", "type": "tellus", "payload": B64.encode(r#"{"kernel":[]}"#)}),
        ),
        (
            "/kbs/v0/reference-value",
            json!({"version": "0.1.0", "type": "sample", "payload": B64.encode(json!({"kernel": [digest(1)]}).to_string()), "expires": "soon"}),
        ),
        ("/kbs/v0/reference-value", json!({"version": "9", "type": "sample", "payload": ""})),
    ];
    for (uri, body) in cases {
        let mut req = post_json(uri, &body);
        req.headers_mut().insert("authorization", auth.parse().unwrap());
        let (s, _, v) = app.json(req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri} {body}");
        assert_eq!(error_kind(&v), "InvalidRequest", "{uri} {body}");
    }
    for q in ["required-labels=zone", "required-labels=a=b%20c", "other=1"] {
        let req = Request::post(format!("/kbs/v0/resource/a/b/c?{q}"))
            .header("authorization", &auth)
            .body(Body::from("x"))
            .unwrap();
        let (s, _, v) = app.json(req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
    }
    let req = Request::post("/kbs/v0/resource/a/..%2Fb/c")
        .header("authorization", &auth)
        .body(Body::from("x"))
        .unwrap();
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}
