//! Load generator for the KBS round trip (auth → attest → resource) against
//! the real server over loopback HTTP/1.1, with real TPM evidence from a
//! swtpm, plus the single-core crypto ceiling of one round trip.
//!
//! `cargo bench -p tellus-verifier --bench roundtrip -- [--concurrency N]
//! [--seconds S] [--pool K]`
//!
//! Design: the quote must carry SHA-384(JCS(tee-pubkey, session nonce)), and
//! the nonce is random per session, so evidence cannot be made ahead for a
//! session that does not exist yet. Setup therefore opens K sessions with
//! real `POST /kbs/v0/auth` calls and quotes each one's binding on the swtpm
//! (in-process, through the launcher library). In the timed loop each round
//! trip is: a fresh `POST /kbs/v0/auth` (a real session the server creates
//! and stores; its nonce is not used), `POST /kbs/v0/attest` with one
//! unused pool entry (full quote verification, CEL replay, token signing,
//! session update), and `GET /kbs/v0/resource` with that entry's cookie
//! (JWE to its tee key). Every pool entry is attested exactly once (a
//! repeated attest would return the cached token), so the run stops at
//! `--seconds` or when the pool is used up, whichever comes first. Quoting
//! with the AK context-saved once runs at ~120–160 quotes/s on the swtpm, so
//! a pool of 6,000 takes ~45 s of (untimed) setup for a timed phase of a
//! few seconds. Besides the rate, the bench prints the process's CPU time
//! per round trip, which does not depend on what else the machine runs.

/// The verifier binary's allocator (src/main.rs), so the in-process server
/// runs as `tellus-verifier serve` does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/launch_support/mod.rs"]
mod launch_support;
#[path = "../tests/service_support/mod.rs"]
mod service_support;
use launch_support::{extend_predicted_launch, tellus_bin};

use axum::body::Bytes;
use base64::Engine;
use serde_json::{json, Value};
use service_support::{auth_body, TeeKey, ADMIN};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swtpm_tests::Swtpm;
use tellus_measured_boot::cel;
use tellus_policies::ReferenceSet;
use tellus_verifier::config::Config;
use tellus_verifier::service::policy::policy_input;
use tellus_verifier::service::{self, jwe, token};
use tellus_verifier::storage::HostRecord;
use tellus_verifier::tpm::binding::runtime_data_binding;
use tellus_verifier::tpm::evidence::{evidence_from_json, verify_evidence};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const RESOURCE: &str = "default/key/disk";

struct Args {
    concurrency: usize,
    seconds: u64,
    pool: usize,
}

fn args() -> Args {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut a = Args { concurrency: 2 * cores, seconds: 10, pool: 2000 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = |i: usize| -> u64 {
            argv.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a positive number", argv[i]))
        };
        match argv[i].as_str() {
            "--concurrency" => a.concurrency = value(i).max(1) as usize,
            "--seconds" => a.seconds = value(i).max(1),
            "--pool" => a.pool = value(i).max(1) as usize,
            // `cargo bench` passes `--bench`; ignore anything else.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// swtpm + PCR 13 extended with a predicted launch (`tellus measure
/// predict`) + `tellus host init`; returns the host and the predict JSON
/// (the reference values, so the default policies release the resource).
fn host_setup(tpm: &Swtpm, state: &Path) -> (HostRecord, Value) {
    std::fs::create_dir_all(state).unwrap();
    let (records, predict) = extend_predicted_launch(tpm, state, "console=ttyS0");
    let out = Command::new(tellus_bin())
        .args(["host", "init", "--tpm", &tpm.addr(), "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(out.status.success(), "tellus host init: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(state.join("launch-log.cel"), cel::encode(&records)).unwrap();
    let host = state.join("host");
    let record = HostRecord {
        host_id: std::fs::read_to_string(host.join("host-id")).unwrap().trim().to_owned(),
        ek_public: std::fs::read(host.join("ek.pub")).unwrap(),
        ak_public: std::fs::read(host.join("ak.pub")).unwrap(),
        labels: [("site".to_owned(), "bench".to_owned())].into(),
        activated: true,
    };
    (record, predict)
}

/// One keep-alive HTTP/1.1 connection (a minimal client: the server's
/// answers here all carry Content-Length).
struct Conn {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
    line: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { stream: BufReader::new(stream), addr, line: String::new() }
    }

    /// Sends; returns (status, set-cookie session, body).
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> (u16, Option<String>, Bytes) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut wire = req.into_bytes();
        wire.extend_from_slice(&body);
        self.stream.get_mut().write_all(&wire).await.unwrap();

        self.line.clear();
        self.stream.read_line(&mut self.line).await.unwrap();
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {:?}", self.line));
        let (mut len, mut cookie) = (None, None);
        loop {
            self.line.clear();
            let n = self.stream.read_line(&mut self.line).await.unwrap();
            assert!(n > 0, "connection closed in headers");
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("header line");
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("set-cookie") {
                cookie = v.split(';').next().map(str::to_owned);
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                panic!("chunked answers are not handled by this client");
            }
        }
        let mut buf = vec![0u8; len.expect("content-length")];
        self.stream.read_exact(&mut buf).await.unwrap();
        (status, cookie, Bytes::from(buf))
    }
}

/// A session opened in setup and its attestation body with real evidence.
struct Entry {
    cookie: String,
    attest_body: Bytes,
}

#[derive(Default)]
struct Lat {
    auth: Vec<Duration>,
    attest: Vec<Duration>,
    resource: Vec<Duration>,
    round: Vec<Duration>,
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e3
}

/// CPU seconds this process (server and load generator) has used, user +
/// system, from /proc/self/stat (clock ticks of 1/100 s on Linux).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Mean seconds per call of `f`, over a bounded ~0.5 s loop (after warm-up).
fn time_per_call(mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while n < 200_000 && (n < 50 || start.elapsed() < Duration::from_millis(500)) {
        f();
        n += 1;
    }
    start.elapsed().as_secs_f64() / n as f64
}

fn main() {
    let args = args();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    // ---- setup (not timed) ----
    let tpm = Swtpm::start_provisioned();
    let dir = tempfile::tempdir().unwrap();
    let host_state = dir.path().join("host-state");
    let (record, predict) = host_setup(&tpm, &host_state);

    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        state_dir: dir.path().join("verifier"),
        insecure_http: true,
        admin_tokens: vec![ADMIN.into()],
        session_lifetime_secs: 3600,
        token_lifetime_secs: 3600,
        ..Config::default()
    };
    let server_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let bound = server_rt.block_on(service::bind(config)).unwrap();
    let addr = bound.local_addr();
    assert!(addr.ip().is_loopback());
    let state = bound.state().clone();
    state.store.put_host(&record).unwrap();
    let refs = ReferenceSet::from_json(&predict, None, Some("roundtrip bench")).unwrap();
    state.store.merge_reference_values(&refs).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(bound.run(async {
        let _ = stop_rx.await;
    }));

    // The load generator's own runtime: one thread, all client tasks on it.
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let secret = [0x5a_u8; 32];
    let (cookies, nonces) = client_rt.block_on(async {
        let mut c = Conn::open(addr).await;
        let auth = [("authorization", &*format!("Bearer {ADMIN}"))];
        let (s, _, b) = c
            .call(
                "POST",
                &format!("/kbs/v0/resource/{RESOURCE}"),
                &auth,
                Bytes::copy_from_slice(&secret),
            )
            .await;
        assert_eq!(s, 200, "upload: {}", String::from_utf8_lossy(&b));
        let auth = Bytes::from(auth_body("tpm").to_string());
        let mut cookies = Vec::with_capacity(args.pool);
        let mut nonces = Vec::with_capacity(args.pool);
        for _ in 0..args.pool {
            let (s, cookie, b) = c.call("POST", "/kbs/v0/auth", &[], auth.clone()).await;
            assert_eq!(s, 200);
            let v: Value = serde_json::from_slice(&b).unwrap();
            cookies.push(cookie.unwrap());
            nonces.push(v["nonce"].as_str().unwrap().to_owned());
        }
        (cookies, nonces)
    });

    let mut keys: Vec<TeeKey> = (0..args.pool).map(|_| TeeKey::new()).collect();
    eprintln!("roundtrip: quoting {} session bindings on the swtpm (setup) ...", args.pool);
    let tpm_addr: tellus_launcher::tpm::TpmAddress = tpm.addr().parse().unwrap();
    let quote_start = Instant::now();
    // The AK loaded once and context-saved: each quote is then a
    // ContextLoad + Quote instead of recreating the EK and loading the AK.
    let prepared = tellus_launcher::tpm::quote::prepare_ak(&tpm_addr, &host_state).unwrap();
    let next = AtomicUsize::new(0);
    let evidence: Vec<Value> = {
        let slots: Vec<std::sync::Mutex<Option<Value>>> =
            (0..args.pool).map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            // One quoting thread: concurrent sessions on the one swtpm fail
            // (TPM_RC 0x903), and each quote takes ~50 ms anyway.
            for _ in 0..1 {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.pool {
                        break;
                    }
                    let binding = runtime_data_binding(&keys[i].jwk(), &nonces[i], "").unwrap();
                    let ev = tellus_launcher::tpm::quote::quote_with(
                        &tpm_addr,
                        &host_state,
                        &binding,
                        &[13],
                        Some(&prepared),
                    )
                    .unwrap();
                    *slots[i].lock().unwrap() = Some(serde_json::to_value(ev).unwrap());
                });
            }
        });
        slots.into_iter().map(|m| m.into_inner().unwrap().unwrap()).collect()
    };
    let quote_secs = quote_start.elapsed().as_secs_f64();
    eprintln!(
        "roundtrip: {} quotes in {quote_secs:.1} s ({:.0} quotes/s)",
        args.pool,
        args.pool as f64 / quote_secs
    );

    let pool: Arc<Vec<Entry>> = Arc::new(
        cookies
            .into_iter()
            .zip(nonces.iter().zip(&keys))
            .zip(&evidence)
            .map(|((cookie, (nonce, key)), ev)| Entry {
                cookie,
                attest_body: Bytes::from(
                    json!({
                        "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk()},
                        "tee-evidence": {"primary_evidence": ev, "additional_evidence": ""},
                    })
                    .to_string(),
                ),
            })
            .collect(),
    );

    // ---- timed phase ----
    let auth = Bytes::from(auth_body("tpm").to_string());
    let next = Arc::new(AtomicUsize::new(0));
    let deadline_len = Duration::from_secs(args.seconds);
    let (lat, elapsed, cpu_secs) = client_rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..args.concurrency {
            conns.push(Conn::open(addr).await);
        }
        let start = Instant::now();
        let cpu_start = process_cpu_secs();
        let deadline = start + deadline_len;
        let mut tasks = Vec::new();
        for mut c in conns {
            let (pool, next, auth) = (pool.clone(), next.clone(), auth.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Lat::default();
                let res = format!("/kbs/v0/resource/{RESOURCE}");
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(e) = pool.get(i) else { break };
                    let t0 = Instant::now();
                    let (s, _, b) = c.call("POST", "/kbs/v0/auth", &[], auth.clone()).await;
                    assert_eq!(s, 200, "auth: {}", String::from_utf8_lossy(&b));
                    let t1 = Instant::now();
                    let cookie = [("cookie", e.cookie.as_str())];
                    let (s, _, b) =
                        c.call("POST", "/kbs/v0/attest", &cookie, e.attest_body.clone()).await;
                    assert_eq!(s, 200, "attest: {}", String::from_utf8_lossy(&b));
                    let t2 = Instant::now();
                    let (s, _, b) = c.call("GET", &res, &cookie, Bytes::new()).await;
                    assert_eq!(s, 200, "resource: {}", String::from_utf8_lossy(&b));
                    let t3 = Instant::now();
                    lat.auth.push(t1 - t0);
                    lat.attest.push(t2 - t1);
                    lat.resource.push(t3 - t2);
                    lat.round.push(t3 - t0);
                }
                lat
            }));
        }
        let mut all = Lat::default();
        for t in tasks {
            let l = t.await.unwrap();
            all.auth.extend(l.auth);
            all.attest.extend(l.attest);
            all.resource.extend(l.resource);
            all.round.extend(l.round);
        }
        (all, start.elapsed(), process_cpu_secs() - cpu_start)
    });

    // Correctness spot check outside the timing: entry 0 (always attested)
    // decrypts the resource released to its session with its own key.
    let (ceil_nonce, ceil_jwk) = (nonces[1 % args.pool].clone(), keys[1 % args.pool].jwk());
    let ceil_ev = serde_json::to_vec(&evidence[1 % args.pool]).unwrap();
    let check_cookie = pool[0].cookie.clone();
    let jwe: Value = client_rt.block_on(async {
        let mut c = Conn::open(addr).await;
        let res = format!("/kbs/v0/resource/{RESOURCE}");
        let (s, _, b) = c.call("GET", &res, &[("cookie", &check_cookie)], Bytes::new()).await;
        assert_eq!(s, 200);
        serde_json::from_slice(&b).unwrap()
    });
    let key0 = keys.swap_remove(0);
    assert_eq!(key0.decrypt(&jwe), secret, "the released resource decrypts to the upload");

    let _ = stop_tx.send(());
    server_rt.block_on(server).unwrap().unwrap();

    // ---- crypto ceiling: one core, in-process, no HTTP ----
    let binding = runtime_data_binding(&ceil_jwk, &ceil_nonce, "").unwrap();
    let ev = evidence_from_json(&ceil_ev).unwrap();
    verify_evidence(&ev, &binding).expect("pre-made evidence verifies");
    let t_quote = time_per_call(|| {
        std::hint::black_box(verify_evidence(&ev, &binding).unwrap());
    });
    let claims = state.verifiers["tpm"]
        .verify("tpm", &serde_json::from_slice(&ceil_ev).unwrap(), &binding)
        .unwrap();
    let nonce_bytes = base64::engine::general_purpose::STANDARD.decode(&ceil_nonce).unwrap();
    // Policy evaluation as the server runs it: the attestation policy over
    // the claims, and the resource policy over the token's result (each
    // with its cache-key query and the clone of the prepared engine).
    let input = policy_input("tpm", &claims.annotated_evidence);
    let appraisal = state.policies.appraise(&input, &claims.trust_vector).unwrap();
    assert_eq!(appraisal.status, "affirming", "{:?}", appraisal.reasons);
    let t_att_policy = time_per_call(|| {
        std::hint::black_box(state.policies.appraise(&input, &claims.trust_vector).unwrap());
    });
    let ear = token::ear_claims(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
            as i64,
        300,
        &nonce_bytes,
        "tpm",
        &claims,
        &appraisal,
        &ceil_jwk,
    )
    .unwrap();
    let ear_json = serde_json::to_value(&ear).unwrap();
    let sub = &ear_json["submods"]["cpu0"];
    let res_input = json!({
        "resource": {"path": RESOURCE, "required_labels": {}},
        "ear": {"status": sub["ear.status"], "tee": "tpm", "trust_vector": sub["ear.trustworthiness-vector"], "reasons": sub["tellus.reasons"]},
        "claims": input,
    });
    assert!(state.policies.decide_resource(&res_input).unwrap().allow);
    let t_res_policy = time_per_call(|| {
        std::hint::black_box(state.policies.decide_resource(&res_input).unwrap());
    });
    let active = state.policies.active().unwrap();
    let t_att_eval = time_per_call(|| {
        std::hint::black_box(active.attestation.evaluate(&input).unwrap());
    });
    let t_sign = time_per_call(|| {
        std::hint::black_box(state.signer.sign(&ear).unwrap());
    });
    let tee_key = serde_json::from_value(ceil_jwk.clone()).unwrap();
    let t_jwe = time_per_call(|| {
        std::hint::black_box(jwe::encrypt(&tee_key, &secret, &state.rng).unwrap());
    });
    let t_binding = time_per_call(|| {
        std::hint::black_box(runtime_data_binding(&ceil_jwk, &ceil_nonce, "").unwrap());
    });
    let per_round = t_quote + t_sign + t_jwe + t_binding;
    let ceiling = 1.0 / per_round;

    // ---- report ----
    let Lat { mut auth, mut attest, mut resource, mut round } = lat;
    let n = round.len();
    let rps = n as f64 / elapsed.as_secs_f64();
    let stopped_by = if n >= args.pool { "pool used up" } else { "--seconds reached" };
    println!("verifier KBS round trips (loopback HTTP/1.1, keep-alive, real swtpm evidence)");
    println!(
        "  cores {cores}, concurrency {}, pool {}, ran {:.2} s ({stopped_by}), setup quotes {:.0}/s",
        args.concurrency,
        args.pool,
        elapsed.as_secs_f64(),
        args.pool as f64 / quote_secs
    );
    println!("  round trips: {n}, {rps:.0} round trips/s ({:.0} requests/s)", 3.0 * rps);
    // CPU time per round trip (server + load generator, this process only):
    // independent of what else the machine runs, unlike the rate.
    let cpu_per_rt = cpu_secs / n as f64;
    println!(
        "  CPU time: {cpu_secs:.2} s = {:.0} us per round trip (server + load generator) -> {:.0} round trips/s if {cores} cores were all ours; {:.2} cores busy",
        cpu_per_rt * 1e6,
        cores as f64 / cpu_per_rt,
        cpu_secs / elapsed.as_secs_f64()
    );
    for (name, v) in [
        ("round trip", &mut round),
        ("auth", &mut auth),
        ("attest", &mut attest),
        ("resource", &mut resource),
    ] {
        println!("  {name:<10} p50 {:7.3} ms  p99 {:7.3} ms", pct(v, 0.50), pct(v, 0.99));
    }
    println!("crypto ceiling (1 core, in-process, no HTTP), per round trip:");
    println!("  verify_evidence (ECDSA P-256 + PCR digest + CEL replay) {:8.1} us", t_quote * 1e6);
    println!("  ES256 token signing                                  {:8.1} us", t_sign * 1e6);
    println!("  JWE (ECDH P-256 + Concat KDF + AES-KW + AES-GCM)     {:8.1} us", t_jwe * 1e6);
    println!("  binding (JCS + SHA-384)                              {:8.1} us", t_binding * 1e6);
    println!(
        "  sum {:.1} us -> {ceiling:.0} round trips/s per core, {:.0} on {cores} cores",
        per_round * 1e6,
        ceiling * cores as f64
    );
    println!(
        "  measured / (ceiling x cores) = {:.3}; goal 3000 round trips/s: measured/goal = {:.3}",
        rps / (ceiling * cores as f64),
        rps / 3000.0
    );
    let t_policy = t_att_policy + t_res_policy;
    // Server CPU time per round trip at the measured rate: cores / rps.
    let cpu_per_round = cores as f64 / rps;
    println!("policy evaluation (1 core, in-process, default policies, same run):");
    println!(
        "  attestation policy (tpm-launch.rego)                 {:8.1} us  (engine only {:.1} us)",
        t_att_policy * 1e6,
        t_att_eval * 1e6
    );
    println!(
        "  resource policy (resource-default.rego)              {:8.1} us",
        t_res_policy * 1e6
    );
    println!(
        "  both {:.1} us per round trip = {:.1}% of the server CPU time per round trip ({:.1} us = cores / rate), {:.1}% of the p50 round-trip latency",
        t_policy * 1e6,
        100.0 * t_policy / cpu_per_round,
        cpu_per_round * 1e6,
        100.0 * t_policy * 1e3 / pct(&mut round, 0.50)
    );
    drop(tpm);
}
