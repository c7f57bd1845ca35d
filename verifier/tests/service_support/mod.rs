//! Helpers for the service tests: an in-process app on a temp-dir store, and
//! a KBS client written independently of the service's JWE code (its own
//! Concat KDF, RFC 3394 unwrap on the `aes` block cipher, ring GCM).
#![allow(dead_code)]

use aes::cipher::{generic_array::GenericArray, BlockDecrypt, KeyInit};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use http_body_util::BodyExt;
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256};
use ring::rand::SystemRandom;
use serde_json::{json, Value};
use tellus_verifier::config::Config;
use tellus_verifier::service::{router, AppState};
use tower::ServiceExt;

pub const ADMIN: &str = "admin-test-token";
/// The test-only policy that accepts tee `sample`.
pub const ALLOW_SAMPLE: &str = include_str!("../../../policies/rego/allow-sample.rego");

pub struct App {
    pub dir: tempfile::TempDir,
    pub state: AppState,
}

impl App {
    pub fn new(sample: bool) -> App {
        App::with(|c| c.enable_sample_tee = sample)
    }

    pub fn with(f: impl FnOnce(&mut Config)) -> App {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            state_dir: dir.path().join("state"),
            admin_tokens: vec![ADMIN.into()],
            ..Config::default()
        };
        f(&mut config);
        let state = AppState::open(&config).unwrap();
        App { dir, state }
    }

    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    pub async fn call(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let resp = self.router().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    pub async fn json(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let (s, h, b) = self.call(req).await;
        let v = serde_json::from_slice(&b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into()));
        (s, h, v)
    }

    pub async fn upload(&self, path: &str, bytes: &[u8]) {
        let req = Request::post(format!("/kbs/v0/resource/{path}"))
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(Body::from(bytes.to_vec()))
            .unwrap();
        let (s, _, b) = self.call(req).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    }

    /// POSTs JSON to an admin route with the admin token.
    pub async fn admin_post(&self, uri: &str, body: &Value) -> (StatusCode, Value) {
        let mut req = post_json(uri, body);
        req.headers_mut().insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
        let (s, _, v) = self.json(req).await;
        (s, v)
    }

    /// `POST /kbs/v0/attestation-policy` as `default` (the one evaluated).
    pub async fn set_attestation_policy(&self, rego: &str) -> (StatusCode, Value) {
        let body = json!({"type": "rego", "policy_id": "default", "policy": B64URL.encode(rego)});
        self.admin_post("/kbs/v0/attestation-policy", &body).await
    }

    /// `POST /kbs/v0/resource-policy`.
    pub async fn set_resource_policy(&self, rego: &str) -> (StatusCode, Value) {
        self.admin_post("/kbs/v0/resource-policy", &json!({"policy": B64URL.encode(rego)})).await
    }

    /// `POST /kbs/v0/reference-value` with a `tellus measure predict` document.
    pub async fn add_predicted_refs(&self, predict: &Value) {
        let body = json!({"version": "0.1.0", "type": "tellus",
            "payload": B64.encode(predict.to_string()), "provenance": "test"});
        let (s, v) = self.admin_post("/kbs/v0/reference-value", &body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    /// `POST /kbs/v0/auth`; returns (cookie `kbs-session-id=…`, nonce).
    pub async fn auth(&self, tee: &str) -> (String, String) {
        let (s, h, v) = self.json(post_json("/kbs/v0/auth", &auth_body(tee))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let set = h.get("set-cookie").unwrap().to_str().unwrap();
        let cookie = set.split(';').next().unwrap().to_owned();
        (cookie, v["nonce"].as_str().unwrap().to_owned())
    }
}

/// `POST /kbs/v0/attest` in the session of `cookie` with sample-shaped
/// evidence that binds `key` to `nonce`.
pub fn sample_attest(key: &TeeKey, nonce: &str, cookie: &str) -> Request<Body> {
    let b = key.binding(nonce);
    with_cookie(post_json("/kbs/v0/attest", &key.sample_attestation(nonce, &b)), cookie)
}

/// `GET /kbs/v0/resource/default/key/disk` with `cookie`.
pub async fn get_disk(app: &App, cookie: &str) -> (StatusCode, Value) {
    let req = with_cookie(
        Request::get("/kbs/v0/resource/default/key/disk").body(Body::empty()).unwrap(),
        cookie,
    );
    let (s, _, v) = app.json(req).await;
    (s, v)
}

pub fn auth_body(tee: &str) -> Value {
    json!({"version": "0.4.0", "tee": tee, "extra-params": {"supported-hash-algorithms": ["sha384"]}})
}

pub fn post_json(uri: &str, v: &Value) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

pub fn with_cookie(mut req: Request<Body>, cookie: &str) -> Request<Body> {
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    req
}

pub fn error_kind(v: &Value) -> &str {
    v["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("https://github.com/confidential-containers/kbs/errors/"))
        .unwrap_or_else(|| panic!("not a KBS error body: {v}"))
}

/// A tee key pair on the client side.
pub struct TeeKey {
    private: EphemeralPrivateKey,
    pub x: String,
    pub y: String,
}

impl TeeKey {
    pub fn new() -> TeeKey {
        let rng = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&ECDH_P256, &rng).unwrap();
        let public = private.compute_public_key().unwrap();
        let p = public.as_ref();
        TeeKey { x: B64URL.encode(&p[1..33]), y: B64URL.encode(&p[33..65]), private }
    }

    pub fn jwk(&self) -> Value {
        json!({"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": self.x, "y": self.y})
    }

    /// The binding, with JCS written out by hand (members sorted, no
    /// whitespace; base64 needs no escaping).
    pub fn binding(&self, nonce: &str) -> Vec<u8> {
        let canonical = format!(
            r#"{{"additional-evidence":"","nonce":"{nonce}","tee-pubkey":{{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"{}","y":"{}"}}}}"#,
            self.x, self.y
        );
        ring::digest::digest(&ring::digest::SHA384, canonical.as_bytes()).as_ref().to_vec()
    }

    pub fn sample_attestation(&self, nonce: &str, report_data: &[u8]) -> Value {
        json!({
            "runtime-data": {"nonce": nonce, "tee-pubkey": self.jwk()},
            "tee-evidence": {
                "primary_evidence": {"svn": "1", "report_data": B64.encode(report_data)},
                "additional_evidence": "",
            }
        })
    }

    /// Decrypts a flattened JWE (ECDH-ES+A256KW, A256GCM).
    pub fn decrypt(self, jwe: &Value) -> Vec<u8> {
        let protected = jwe["protected"].as_str().unwrap();
        let header: Value = serde_json::from_slice(&B64URL.decode(protected).unwrap()).unwrap();
        assert_eq!(header["alg"], "ECDH-ES+A256KW");
        assert_eq!(header["enc"], "A256GCM");
        assert_eq!(header["epk"]["crv"], "P-256");
        let mut epk = vec![4u8];
        epk.extend(B64URL.decode(header["epk"]["x"].as_str().unwrap()).unwrap());
        epk.extend(B64URL.decode(header["epk"]["y"].as_str().unwrap()).unwrap());
        let kek = agreement::agree_ephemeral(
            self.private,
            &UnparsedPublicKey::new(&ECDH_P256, &epk),
            |z| {
                let mut info = Vec::new();
                info.extend_from_slice(&[0, 0, 0, 1]);
                info.extend_from_slice(z);
                info.extend_from_slice(&[0, 0, 0, 14]);
                info.extend_from_slice(b"ECDH-ES+A256KW");
                info.extend_from_slice(&[0; 8]);
                info.extend_from_slice(&[0, 0, 1, 0]);
                ring::digest::digest(&ring::digest::SHA256, &info).as_ref().to_vec()
            },
        )
        .unwrap();
        let wrapped = B64URL.decode(jwe["encrypted_key"].as_str().unwrap()).unwrap();
        let cek = aes_kw_unwrap(&kek, &wrapped);
        let iv = B64URL.decode(jwe["iv"].as_str().unwrap()).unwrap();
        let mut ct = B64URL.decode(jwe["ciphertext"].as_str().unwrap()).unwrap();
        ct.extend(B64URL.decode(jwe["tag"].as_str().unwrap()).unwrap());
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &cek).unwrap(),
        );
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(&iv).unwrap();
        key.open_in_place(nonce, ring::aead::Aad::from(protected.as_bytes()), &mut ct)
            .unwrap()
            .to_vec()
    }
}

/// RFC 3394 §2.2.2 unwrap, by hand on the AES block cipher.
pub fn aes_kw_unwrap(kek: &[u8], c: &[u8]) -> Vec<u8> {
    assert_eq!(c.len() % 8, 0);
    let n = c.len() / 8 - 1;
    let cipher = aes::Aes256::new(GenericArray::from_slice(kek));
    let mut a: [u8; 8] = c[..8].try_into().unwrap();
    let mut r: Vec<[u8; 8]> = c[8..].chunks(8).map(|b| b.try_into().unwrap()).collect();
    for j in (0..6).rev() {
        for i in (1..=n).rev() {
            let t = (n * j + i) as u64;
            let mut b = [0u8; 16];
            for (k, byte) in t.to_be_bytes().iter().enumerate() {
                b[k] = a[k] ^ byte;
            }
            b[8..].copy_from_slice(&r[i - 1]);
            let mut block = GenericArray::clone_from_slice(&b);
            cipher.decrypt_block(&mut block);
            a.copy_from_slice(&block[..8]);
            r[i - 1].copy_from_slice(&block[8..]);
        }
    }
    assert_eq!(a, [0xA6; 8], "AES key unwrap integrity check");
    r.concat()
}

/// Verifies an ES256 JWT against a JWK Set, independently of the service.
pub fn verify_with_jwks(token: &str, jwks: &Value) -> Value {
    let k = &jwks["keys"][0];
    let mut point = vec![4u8];
    point.extend(B64URL.decode(k["x"].as_str().unwrap()).unwrap());
    point.extend(B64URL.decode(k["y"].as_str().unwrap()).unwrap());
    let (signed, sig) = token.rsplit_once('.').unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(signed.as_bytes(), &B64URL.decode(sig).unwrap())
        .expect("token signature verifies with the published JWK");
    let payload = signed.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap()
}

/// The RFC 3394 §4.6 vector through [`aes_kw_unwrap`].
pub fn check_unwrap_vector() {
    let kek =
        hex::decode("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F").unwrap();
    let c = hex::decode(
        "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21",
    )
    .unwrap();
    assert_eq!(
        hex::encode_upper(aes_kw_unwrap(&kek, &c)),
        "00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F"
    );
}
