//! The audit log end to end: a verifier (in-process router on a real
//! SQLite state directory) enrolls a real swtpm host, attests, releases,
//! denies, takes an upload and policy changes; the real `tellus-verifier
//! audit verify` binary then finds the chain valid with exactly those
//! events, and names the entry after the database is tampered with.
//! Also: many threads (each with its own connection, as separate
//! processes would) appending at once leave one unbroken chain, and group
//! commits, which sign only their newest entry, leave a chain that verifies.

mod registrar_support;
mod service_support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use registrar_support::{read, TpmHost as Host};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use service_support::*;
use std::path::Path;
use std::process::{Command, Output};
use tellus_protocol::enrollment::{ActivationProof, EnrollChallenge};
use tellus_verifier::audit::{verify_chain, AuditEntry, AuditEvent, AuditKeys};
use tellus_verifier::service::token::TokenSigner;
use tellus_verifier::storage::{AuditMaker, SqliteStore, Store};

fn audit_cli(state_dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tellus-verifier"))
        .arg("audit")
        .args(extra)
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A copy of the state directory's database and signing key, with `sql`
/// run on the copy's database.
fn tampered(state: &Path, into: &Path, sql: &str) {
    std::fs::create_dir_all(into).unwrap();
    for f in ["verifier.sqlite3", "token-signing-key.p8"] {
        std::fs::copy(state.join(f), into.join(f)).unwrap();
    }
    let conn = rusqlite::Connection::open(into.join("verifier.sqlite3")).unwrap();
    let changed = conn.execute(sql, []).unwrap();
    assert_eq!(changed, 1, "{sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_logged_and_tampering_is_named() {
    let host = Host::new();
    let app = App::with(|c| {
        c.enable_sample_tee = true;
        host.trust_ek_ca(c);
    });
    let state_dir = app.dir.path().join("state");

    // Enrollment: one refused (AK name does not match the AK), then the
    // real one.
    let req = host.request();
    let mut bad = req.clone();
    bad.ak_name = format!("000b{}", "00".repeat(32));
    let (s, _, v) = app.json(post_json("/tellus/v1/hosts/enroll", &json!(bad))).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::BAD_REQUEST, "EnrollmentRefused"), "{v}");
    let (s, _, v) = app.json(post_json("/tellus/v1/hosts/enroll", &json!(req))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let challenge: EnrollChallenge = serde_json::from_value(v).unwrap();
    let secret = host.activate(&challenge);
    let proof =
        ActivationProof { enrollment_id: challenge.enrollment_id, secret: B64.encode(&secret) };
    let (s, _, v) = app.json(post_json("/tellus/v1/hosts/activate", &json!(proof))).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Admin: a policy that admits the sample tee, a resource.
    let (s, v) = app.set_attestation_policy(ALLOW_SAMPLE).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.upload("default/key/disk", b"the-secret-value").await;

    // Attestation refused (nonce of another session), then verified.
    let key = TeeKey::new();
    let (cookie, nonce) = app.auth("sample").await;
    let (_, other_nonce) = app.auth("sample").await;
    let b = key.binding(&other_nonce);
    let req_bad = with_cookie(
        post_json("/kbs/v0/attest", &key.sample_attestation(&other_nonce, &b)),
        &cookie,
    );
    let (s, _, v) = app.json(req_bad).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let b = key.binding(&nonce);
    let req_ok =
        with_cookie(post_json("/kbs/v0/attest", &key.sample_attestation(&nonce, &b)), &cookie);
    let (s, _, v) = app.json(req_ok).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();

    // Released with the cookie; then the resource policy denies everything
    // and the bearer token is denied.
    let get = || Request::get("/kbs/v0/resource/default/key/disk");
    let (s, _, v) = app.json(with_cookie(get().body(Body::empty()).unwrap(), &cookie)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(key.decrypt(&v), b"the-secret-value");
    let (s, v) = app.set_resource_policy("package policy\n\ndefault allow := false\n").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let req = get().header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
    let (s, _, v) = app.json(req).await;
    assert_eq!((s, error_kind(&v)), (StatusCode::FORBIDDEN, "PolicyDeny"), "{v}");

    // Close the verifier's connection (checkpoints the WAL), keep the files.
    let App { dir, state } = app;
    drop(state);

    let expected = [
        "host.enroll-refused",
        "host.enroll-requested",
        "host.activated",
        "policy.changed",
        "resource.uploaded",
        "attestation.refused",
        "attestation.verified",
        "resource.released",
        "policy.changed",
        "resource.denied",
    ];
    let show = audit_cli(&state_dir, &["show"]);
    assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));
    let entries: Vec<Value> =
        stdout(&show).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let events: Vec<&str> = entries.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, expected);
    // Facts, and no secret: the released entry names the resource and the
    // session prefix; no entry carries the secret or a session id in full.
    let released = &entries[7];
    assert_eq!(released["subject"], "default/key/disk");
    let session_id = cookie.trim_start_matches("kbs-session-id=");
    assert_eq!(released["detail"]["session"], &session_id[..8]);
    assert_eq!(entries[6]["detail"]["status"], "affirming");
    assert!(entries[9]["detail"]["token_sha256"].is_string());
    assert!(entries[9]["detail"]["error"].as_str().unwrap().contains("denies"));
    assert_eq!(entries[2]["subject"], req_host_id(&host));
    let all = stdout(&show);
    assert!(
        !all.contains("the-secret-value") && !all.contains(session_id) && !all.contains(&token)
    );

    let out = audit_cli(&state_dir, &["verify", "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["entries"], expected.len());
    let head = v["head"].as_str().unwrap().to_owned();
    assert!(head.starts_with(&format!("{}:", expected.len() - 1)), "{head}");
    println!("audit verify: {v}");

    // The same with the published JWK Set instead of the key file.
    let signer = TokenSigner::from_pkcs8(&read(&state_dir.join("token-signing-key.p8"))).unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, signer.jwks().to_string()).unwrap();
    let out = audit_cli(&state_dir, &["verify", "--jwks", jwks.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("{} entries, head {head}", expected.len())));

    // Tampering, each on a copy; every one is named.
    let cases = [
        ("UPDATE audit_log SET detail = '{\"bytes\":1}' WHERE seq = 4", "entry 4 was changed"),
        ("DELETE FROM audit_log WHERE seq = 5", "entry 6 follows entry 4"),
        ("UPDATE audit_log SET subject = 'x' WHERE seq = 0", "entry 0 was changed"),
        // The newest entry's signature covers whatever its group commit
        // left unsigned; without it, the tail is uncovered.
        (
            "UPDATE audit_log SET signature = '' WHERE seq = (SELECT MAX(seq) FROM audit_log)",
            "the log ends with unsigned entries (from entry",
        ),
    ];
    for (i, (sql, want)) in cases.iter().enumerate() {
        let copy = dir.path().join(format!("tampered-{i}"));
        tampered(&state_dir, &copy, sql);
        let out = audit_cli(&copy, &["verify"]);
        assert_eq!(out.status.code(), Some(1), "{sql}: {}", stdout(&out));
        assert!(stdout(&out).contains(want), "{sql}: {}", stdout(&out));
        println!("{sql} -> {}", stdout(&out).trim());
    }

    // Cutting the tail leaves a valid, shorter chain; --expect-head with
    // the head printed earlier catches it.
    let copy = dir.path().join("cut-tail");
    tampered(
        &state_dir,
        &copy,
        &format!("DELETE FROM audit_log WHERE seq = {}", expected.len() - 1),
    );
    let out = audit_cli(&copy, &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let out = audit_cli(&copy, &["verify", "--expect-head", &head]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("the log ends before it"), "{}", stdout(&out));
    println!("cut tail with --expect-head -> {}", stdout(&out).trim());

    // An entry moved to another key id: the key id is part of the hashed
    // body, so the entry is named as changed.
    let copy = dir.path().join("other-key");
    tampered(&state_dir, &copy, "UPDATE audit_log SET kid = 'other' WHERE seq = 3");
    let out = audit_cli(&copy, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("entry 3 was changed"), "{}", stdout(&out));

    // Usage and IO errors: exit 2.
    let out = audit_cli(&dir.path().join("nowhere"), &["verify"]);
    assert_eq!(out.status.code(), Some(2));
    let out = audit_cli(&state_dir, &["verify", "--expect-head", "3:xyz"]);
    assert_eq!(out.status.code(), Some(2));
}

fn req_host_id(host: &Host) -> String {
    host.request().host_id
}

#[test]
fn concurrent_appends_make_one_chain() {
    const THREADS: usize = 8;
    const EACH: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let signer = std::sync::Arc::new(TokenSigner::from_pkcs8(doc.as_ref()).unwrap());
    SqliteStore::open_in(dir.path()).unwrap();
    let shared = std::sync::Arc::new(SqliteStore::open_in(dir.path()).unwrap());
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let signer = signer.clone();
            let path = dir.path().to_owned();
            let shared = shared.clone();
            std::thread::spawn(move || {
                // Half the threads share one store (one connection, as the
                // server does), half open their own (as `refs add` does).
                let own;
                let store: &SqliteStore = if t % 2 == 0 {
                    &shared
                } else {
                    own = SqliteStore::open_in(&path).unwrap();
                    &own
                };
                for i in 0..EACH {
                    store
                        .append_audit(&|prev| {
                            AuditEntry::next(
                                prev,
                                0,
                                AuditEvent::PolicyChanged,
                                &format!("thread-{t}"),
                                json!({"i": i}),
                                signer.as_ref(),
                            )
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let entries = shared.audit_entries(0, usize::MAX).unwrap();
    let keys = AuditKeys::from_jwks(&signer.jwks());
    let sum = verify_chain(entries.clone(), &keys, None).unwrap();
    assert_eq!(sum.entries, (THREADS * EACH) as u64);
    for t in 0..THREADS {
        let n = entries.iter().filter(|e| e.subject == format!("thread-{t}")).count();
        assert_eq!(n, EACH);
    }
    // Paged reads return the same entries.
    let page = shared.audit_entries(100, 10).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), (100..110).collect::<Vec<_>>());
}

/// Queued appends (the KBS round trip's) share group commits, and each
/// group signs only its newest entry: the log verifies with the real key,
/// holds unsigned entries, and ends signed.
#[test]
fn group_commits_sign_once_and_the_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let signer = std::sync::Arc::new(TokenSigner::from_pkcs8(doc.as_ref()).unwrap());
    let store = SqliteStore::open_in(dir.path()).unwrap();
    let maker = |i: usize, gate: Option<std::sync::mpsc::Receiver<()>>| {
        let gate = std::sync::Mutex::new(gate);
        AuditMaker::new(
            move |last, key| {
                if let Some(g) = gate.lock().unwrap().take() {
                    let _ = g.recv();
                }
                AuditEntry::next_unsigned(
                    last,
                    0,
                    AuditEvent::ResourceReleased,
                    "default/key/disk",
                    json!({"i": i}),
                    key,
                )
            },
            signer.clone(),
        )
    };
    type Stored = Result<AuditEntry, tellus_verifier::storage::StoreError>;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Stored>();
    let done = |tx: &std::sync::mpsc::Sender<Stored>| {
        let tx = tx.clone();
        Box::new(move |r: Stored| tx.send(r).unwrap()) as tellus_verifier::storage::Done<AuditEntry>
    };
    // The first write holds the writer until the other 30 are queued.
    let (open, gate) = std::sync::mpsc::channel();
    store.queue_append_audit(maker(0, Some(gate)), done(&done_tx));
    for i in 1..=30 {
        store.queue_append_audit(maker(i, None), done(&done_tx));
    }
    open.send(()).unwrap();
    for _ in 0..=30 {
        done_rx.recv().unwrap().unwrap();
    }
    let entries = store.audit_entries(0, usize::MAX).unwrap();
    let signed = entries.iter().filter(|e| !e.signature.is_empty()).count();
    assert_eq!(entries.len(), 31);
    assert!(signed <= 2 && !entries[30].signature.is_empty(), "{signed} signed");
    let keys = AuditKeys::from_jwks(&signer.jwks());
    let sum = verify_chain(entries, &keys, None).unwrap();
    assert_eq!(sum.entries, 31);
    // A synchronous append follows the signed tail.
    store
        .append_audit(&|last| {
            AuditEntry::next(last, 0, AuditEvent::PolicyChanged, "default", json!({}), &*signer)
        })
        .unwrap();
    let entries = store.audit_entries(0, usize::MAX).unwrap();
    assert_eq!(verify_chain(entries, &keys, None).unwrap().entries, 32);
}

#[test]
fn offline_refs_add_is_logged_with_the_verifiers_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let refs = dir.path().join("refs.json");
    std::fs::write(&refs, json!({"kernel": [format!("sha256:{}", "ab".repeat(32))]}).to_string())
        .unwrap();
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_tellus-verifier"))
            .args(["refs", "add"])
            .arg(&refs)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = audit_cli(&state, &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("valid: 2 entries, head 1:"), "{}", stdout(&out));
    let show = stdout(&audit_cli(&state, &["show", "--from", "1"]));
    let e: Value = serde_json::from_str(show.trim()).unwrap();
    assert_eq!(e["event"], "reference-values.changed");
    assert_eq!(e["detail"]["names"], json!(["kernel"]));
    assert_eq!(e["detail"]["via"], "tellus-verifier refs add");
}
