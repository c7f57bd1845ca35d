//! The admin routes: bearer admin token, storage of what they send.

mod service_support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use serde_json::json;
use service_support::*;
use tellus_verifier::storage::PolicyKind;

fn admin_requests(auth: Option<&str>) -> Vec<Request<Body>> {
    let policy =
        json!({"type": "rego", "policy_id": "default", "policy": B64URL.encode("package policy")});
    let rp = json!({"policy": B64URL.encode("package policy")});
    let rv = json!({"version": "0.1.0", "type": "sample", "payload": B64.encode(r#"{"a":["1"]}"#)});
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
    // GET before any POST: 404.
    let req = Request::get("/kbs/v0/resource-policy")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_kind(&v), "PolicyNotFound");

    for req in admin_requests(Some(&format!("Bearer {ADMIN}"))) {
        let uri = req.uri().clone();
        let (s, _, v) = app.json(req).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {v}");
        if uri.path() == "/kbs/v0/resource-policy" && v.get("policy").is_some() {
            assert_eq!(v["policy"], B64URL.encode("package policy"));
        }
    }
    let store = &app.state.store;
    assert_eq!(
        store.get_policy(PolicyKind::Attestation, "default").unwrap().as_deref(),
        Some("package policy")
    );
    assert_eq!(
        store.get_policy(PolicyKind::Resource, "default").unwrap().as_deref(),
        Some("package policy")
    );
    assert_eq!(store.get_reference_values("a").unwrap(), Some(vec![json!("1")]));
    let p = tellus_verifier::storage::ResourcePath::new("default", "key", "k").unwrap();
    let sealed = store.get_resource(&p).unwrap().unwrap();
    assert_eq!(app.state.resource_key.open(&p, &sealed).unwrap(), b"secret");
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
        ("/kbs/v0/reference-value", json!({"version": "9", "type": "sample", "payload": ""})),
    ];
    for (uri, body) in cases {
        let mut req = post_json(uri, &body);
        req.headers_mut().insert("authorization", auth.parse().unwrap());
        let (s, _, v) = app.json(req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri} {body}");
        assert_eq!(error_kind(&v), "InvalidRequest", "{uri} {body}");
    }
    let req = Request::post("/kbs/v0/resource/a/..%2Fb/c")
        .header("authorization", &auth)
        .body(Body::from("x"))
        .unwrap();
    let (s, _, v) = app.json(req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}
