//! The TPM rollback check with a real TPM state put back: a provisioned
//! swtpm host measured with a tellus launch log (`tellus measure predict`),
//! `tellus host init`, enrolled and activated through the verifier's routes
//! with `tellus host enroll-request` / `tellus host activate`, quotes by
//! `tellus quote`. The verifier (in-process router on a real SQLite state
//! directory) runs with `tpm_clock_tolerance_ms` = 1000.
//!
//! The TPM's state directory is copied aside after an orderly shutdown (a
//! snapshot), the TPM goes on, and the snapshot is put back: its quotes
//! are refused as a rollback (clock behind at the same resetCount; then
//! resetCount behind), nothing is released and the refusals are audited.
//! Genuine restarts are accepted: an orderly one (resetCount + 1) and a
//! power loss (resetCount + 1, the clock back to its last saved value).
//!
//! After every TPM start its PCRs are reset, so the launch log's records
//! are extended into PCR 13 again, as `tellus run` measures a launch after
//! a reboot: each quote's log replays, and the only thing that differs
//! between accepted and refused quotes is the TPM's clock state.

mod launch_support;
mod registrar_support;
mod service_support;
use launch_support::{extend_records, MeasuredHost};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use service_support::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use tellus_protocol::enrollment::{ActivationProof, EnrollChallenge, EnrollRequest};
use tellus_verifier::storage::TpmClock;
use tellus_verifier::tpm::binding::runtime_data_binding;

const SECRET: &[u8] = b"disk key released only to a TPM that never went back";
const CMDLINE: &str = "console=ttyS0 quiet";
/// The verifier's `tpm_clock_tolerance_ms` here.
const TOLERANCE_MS: u64 = 1000;
/// How long the live TPM runs before the quote the snapshot is compared
/// with: well above the tolerance plus the time a restored TPM takes to
/// start, be measured and quote.
const RUN_ON: Duration = Duration::from_millis(4000);

/// A provisioned swtpm with a measured launch and `host init` done (see
/// `launch_support`), and what this test does to its TPM.
struct Host(MeasuredHost);

impl std::ops::Deref for Host {
    type Target = MeasuredHost;
    fn deref(&self) -> &MeasuredHost {
        &self.0
    }
}

impl std::ops::DerefMut for Host {
    fn deref_mut(&mut self) -> &mut MeasuredHost {
        &mut self.0
    }
}

impl Host {
    fn new() -> Host {
        Host(MeasuredHost::new(CMDLINE))
    }

    /// `tellus ARGS` on this host's state directory; must succeed.
    fn tellus_ok(&self, args: &[&str]) -> Output {
        self.0.tellus(&self.state(), args)
    }

    /// The launch measured again into the freshly reset PCR 13.
    fn relaunch(&self) {
        extend_records(&self.tpm, &self.records);
    }

    /// A power loss: swtpm killed without TPM2_Shutdown (`restart` kills
    /// it first), started again (resetCount + 1, the clock back to its last
    /// saved value).
    fn power_cycle(&mut self) {
        self.tpm.restart();
        self.relaunch();
    }

    /// Orderly shutdown and a copy of the TPM's whole state into `name`.
    fn shutdown_and_save(&mut self, name: &str) -> PathBuf {
        self.tpm.shutdown();
        let to = self.dir.path().join(name);
        copy_dir(&self.tpm.state_dir(), &to);
        to
    }

    /// The TPM's state replaced by the copy in `from` (the TPM stopped
    /// first), started on it and measured.
    fn restore(&mut self, from: &Path) {
        self.tpm.kill();
        copy_dir(from, &self.tpm.state_dir());
        self.tpm.restart();
        self.relaunch();
    }

    /// Enrollment through the verifier's routes: `host enroll-request`,
    /// the challenge, `host activate`, the proof.
    async fn enroll(&self, app: &App) {
        let out = self.tellus_ok(&["host", "enroll-request", "--output", "-"]);
        let req: EnrollRequest = serde_json::from_slice(&out.stdout).unwrap();
        let (s, _, v) = app.json(post_json("/tellus/v1/hosts/enroll", &json!(req))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let challenge: EnrollChallenge = serde_json::from_value(v).unwrap();
        let (c, p) = (self.dir.path().join("challenge.json"), self.dir.path().join("proof.json"));
        std::fs::write(&c, serde_json::to_vec(&challenge).unwrap()).unwrap();
        self.tellus_ok(&[
            "host",
            "activate",
            "--challenge",
            c.to_str().unwrap(),
            "--output",
            p.to_str().unwrap(),
        ]);
        let proof: ActivationProof = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let (s, _, v) = app.json(post_json("/tellus/v1/hosts/activate", &json!(proof))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    /// `tellus quote --pcrs 13` over `binding`.
    fn quote(&self, binding: &[u8]) -> Value {
        self.0.quote(&self.state(), binding)
    }
}

/// `to` replaced by a copy of the files of `from` (swtpm's state directory
/// is flat).
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        assert!(e.file_type().unwrap().is_file(), "{}", e.path().display());
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The verifier: tolerance [`TOLERANCE_MS`], trusting the swtpm's EK CA,
/// the resource and the launch's reference values in place.
async fn verifier(host: &Host) -> App {
    let app = App::with(|c| {
        c.tpm_clock_tolerance_ms = TOLERANCE_MS;
        registrar_support::trust_swtpm_ek_ca(c, &host.tpm);
    });
    host.enroll(&app).await;
    app.upload("default/key/disk", SECRET).await;
    app.add_predicted_refs(&host.predict).await;
    app
}

/// One attestation: auth, quote, attest; (status, body, cookie, key).
async fn attest(app: &App, host: &Host) -> (StatusCode, Value, String, TeeKey) {
    let (cookie, nonce) = app.auth("tpm").await;
    let key = TeeKey::new();
    let binding = runtime_data_binding(&key.jwk(), &nonce, "").unwrap();
    let ev = host.quote(&binding);
    let body = json!({
        "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk()},
        "tee-evidence": {"primary_evidence": ev, "additional_evidence": ""},
    });
    let (s, _, v) = app.json(with_cookie(post_json("/kbs/v0/attest", &body), &cookie)).await;
    (s, v, cookie, key)
}

/// An accepted attestation (case `case`): affirming, the secret released;
/// returns the quote's clock state as the token's claims carry it, and
/// checks that the store now holds it as the host's newest.
async fn accepted(case: &str, app: &App, host: &Host) -> TpmClock {
    let (s, v, cookie, key) = attest(app, host).await;
    assert_eq!(s, StatusCode::OK, "{case}: {v}");
    let (_, _, jwks) = app.json(Request::get("/tellus/v1/jwks").body(Body::empty()).unwrap()).await;
    let claims = verify_with_jwks(v["token"].as_str().unwrap(), &jwks);
    let sub = &claims["submods"]["cpu0"];
    assert_eq!(sub["ear.status"], "affirming", "{case}: {sub}");
    let c = &sub["ear.veraison.annotated-evidence"]["tpm"]["host"]["clock"];
    let clock = TpmClock {
        reset_count: c["reset_count"].as_u64().unwrap() as u32,
        restart_count: c["restart_count"].as_u64().unwrap() as u32,
        clock: c["clock"].as_u64().unwrap(),
    };
    let (s, jwe) = get_disk(app, &cookie).await;
    assert_eq!(s, StatusCode::OK, "{case}: {jwe}");
    assert_eq!(key.decrypt(&jwe), SECRET, "{case}");
    assert_eq!(app.state.store.tpm_clock(&host.host_id()).unwrap(), Some(clock), "{case}");
    println!("{case}: accepted, {clock:?}");
    clock
}

/// A refused attestation (case `case`): 403 AttestationError naming the
/// rollback and `what`; the session gets nothing, the release count and
/// the stored clock stay, and the refusal is the audit log's last entry.
async fn refused_as_rollback(case: &str, app: &App, host: &Host, stored: TpmClock, what: &str) {
    let released = releases(app).await;
    let (s, v, cookie, _) = attest(app, host).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{case}: {v}");
    assert_eq!(error_kind(&v), "AttestationError", "{case}: {v}");
    let detail = v["detail"].as_str().unwrap();
    println!("{case}: refused: {detail}");
    for want in [
        &format!("TPM rollback: the TPM of host {} went back in time", host.host_id()),
        what,
        "restored from a snapshot",
        "enroll the host again",
    ] {
        assert!(detail.contains(want), "{case}: {want:?} in: {detail}");
    }
    let (s, v) = get_disk(app, &cookie).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{case}: {v}");
    assert_eq!(releases(app).await, released, "{case}");
    assert_eq!(app.state.store.tpm_clock(&host.host_id()).unwrap(), Some(stored), "{case}");
    let entries = app.state.store.audit_entries(0, 10_000).unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last.event, "attestation.refused", "{case}");
    assert_eq!(last.detail["kind"], "AttestationError", "{case}");
    assert_eq!(last.detail["error"], detail, "{case}");
    let session = cookie.trim_start_matches("kbs-session-id=");
    assert_eq!(last.subject, format!("session:{}", &session[..8]), "{case}");
}

/// `tellus_verifier_resources_released_total`.
async fn releases(app: &App) -> u64 {
    let (_, _, m) = app.call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    String::from_utf8_lossy(&m)
        .lines()
        .find_map(|l| l.strip_prefix("tellus_verifier_resources_released_total ")?.parse().ok())
        .expect("release counter in /metrics")
}

#[tokio::test]
async fn a_tpm_state_put_back_is_refused_and_genuine_restarts_are_not() {
    let mut host = Host::new();
    let app = verifier(&host).await;

    let first = accepted("first attestation", &app, &host).await;

    // The snapshot: the TPM's state after an orderly shutdown.
    let snapshot = host.shutdown_and_save("snapshot");
    host.tpm.restart();
    host.relaunch();
    // The live TPM goes on past the tolerance; an orderly restart in
    // between is a TPM Reset, accepted whatever the clock.
    std::thread::sleep(RUN_ON);
    let live = accepted("after an orderly restart", &app, &host).await;
    assert_eq!(live.reset_count, first.reset_count + 1);
    assert!(live.clock >= first.clock + RUN_ON.as_millis() as u64, "{first:?} -> {live:?}");

    // The snapshot put back: same EK and AK, same resetCount after its
    // start, clock seconds behind.
    let live_state = host.shutdown_and_save("live");
    host.restore(&snapshot);
    refused_as_rollback(
        "snapshot put back",
        &app,
        &host,
        live,
        &format!(
            "at resetCount {} and restartCount {}, its clock is",
            live.reset_count, live.restart_count
        ),
    )
    .await;
    // It stays refused while the restored TPM runs on within the gap.
    refused_as_rollback("snapshot, again", &app, &host, live, "ms behind the").await;

    // The live state back (the host's owner undoes the rollback): its
    // start is a reset, accepted.
    host.restore(&live_state);
    std::thread::sleep(RUN_ON);
    let started = Instant::now();
    let before_loss = accepted("the live state restarted", &app, &host).await;
    assert_eq!(before_loss.reset_count, live.reset_count + 1);

    // A power loss: swtpm killed without TPM2_Shutdown. At its next start
    // the clock resumes from the value it last saved to NV (libtpms saves
    // it every 4096 ms of clock and at shutdown), so it lost the time it
    // was off and possibly more; resetCount rose, so it is accepted, and the
    // store holds the new state. (That a higher resetCount is accepted with
    // a clock below the recorded one by more than the tolerance is in the
    // unit table of `clock_rollback`: here the drop depends on where the
    // kill falls in libtpms' save interval.)
    host.power_cycle();
    let after_loss = accepted("after a power loss", &app, &host).await;
    let wall = started.elapsed().as_millis() as u64;
    assert_eq!(after_loss.reset_count, before_loss.reset_count + 1);
    assert!(
        after_loss.clock < before_loss.clock + wall,
        "the clock lost the time the TPM was off: {before_loss:?} -> {after_loss:?} in {wall} ms"
    );
    println!(
        "power loss: clock {} -> {} ms over {wall} ms of wall time",
        before_loss.clock, after_loss.clock
    );

    // The snapshot once more: its resetCount is now behind.
    host.restore(&snapshot);
    let behind = after_loss.reset_count - (first.reset_count + 1);
    refused_as_rollback(
        "snapshot put back after more resets",
        &app,
        &host,
        after_loss,
        &format!(
            "its resetCount is {}, {behind} below the {}",
            first.reset_count + 1,
            after_loss.reset_count
        ),
    )
    .await;

    // An administrator forgets the host's TPM clock history (the remedy for
    // a hardware TPM after TPM2_Clear): only with the admin token and
    // audited; the next quote is then compared with nothing, so the state
    // now running is accepted and becomes the host's newest.
    let uri = format!("/tellus/v1/hosts/{}/tpm-clock", host.host_id());
    let forget = |auth: Option<String>| {
        let mut r = Request::delete(&uri);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(Body::empty()).unwrap()
    };
    for auth in [None, Some("Bearer wrong-token".to_owned())] {
        let (s, _, v) = app.json(forget(auth.clone())).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?}: {v}");
    }
    assert_eq!(app.state.store.tpm_clock(&host.host_id()).unwrap(), Some(after_loss));
    let (s, _, v) = app.json(forget(Some(format!("Bearer {ADMIN}")))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["forgotten"]["reset_count"], after_loss.reset_count);
    assert_eq!(v["forgotten"]["clock"], after_loss.clock);
    assert_eq!(app.state.store.tpm_clock(&host.host_id()).unwrap(), None);
    let last = app.state.store.audit_entries(0, 10_000).unwrap().pop().unwrap();
    assert_eq!(
        (last.event.as_str(), &last.detail["tpm_clock"]),
        ("host.changed", &json!("forgotten"))
    );
    accepted("after an administrator forgot the history", &app, &host).await;

    // Every step is in the audit log, and the chain verifies.
    let entries = app.state.store.audit_entries(0, 10_000).unwrap();
    let events: Vec<&str> = entries
        .iter()
        .map(|e| e.event.as_str())
        .filter(|e| e.starts_with("attestation."))
        .collect();
    assert_eq!(
        events,
        [
            "attestation.verified",
            "attestation.verified",
            "attestation.refused",
            "attestation.refused",
            "attestation.verified",
            "attestation.verified",
            "attestation.refused",
            "attestation.verified",
        ]
    );
    let keys = tellus_verifier::audit::AuditKeys::from_jwks(&app.state.signer.jwks());
    tellus_verifier::audit::verify_chain(entries, &keys, None).unwrap();
}
