//! Load generator for the KBS round trip (auth → attest → resource) against
//! the real server over loopback HTTP/1.1, with real TPM evidence from a
//! swtpm, plus the single-core crypto ceiling of one round trip.
//!
//! `cargo bench -p tellus-verifier --bench roundtrip -- [--concurrency N]
//! [--seconds S] [--pool K] [--ab-commit-delay-us D]` (defaults: 64
//! connections, 10 s, a pool of 8,000).
//!
//! `--ab-commit-delay-us D` runs the timed phase in eight slices of the
//! pool, alternating the configured group-commit delay (A) and D µs (B)
//! in the order A B B A A B B A, and prints each one's rate and CPU per
//! round trip and their ratio: the machine's speed drifts over minutes,
//! and alternating within one run cancels most of that.
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
//! with the AK context-saved once runs at ~120–230 quotes/s on the swtpm, so
//! a pool of 8,000 takes 35–65 s of (untimed) setup for a timed phase of a
//! few seconds. Besides the rate, the bench prints the process's CPU time
//! per round trip, which does not depend on what else the machine runs.
//!
//! In the same run it measures, each alone, the parts a round trip cannot
//! do without, and adds them up against the goal's CPU budget (cores /
//! 3,000 per second): the crypto and the two policies (one core,
//! in-process), the HTTP floor (the same load generator against an axum
//! server that only answers with bodies of the real sizes) and the store
//! calls of one round trip (one thread, the real SQLite store).

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
use bytes::BytesMut;
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
use tellus_verifier::audit::{AuditEntry, AuditError, AuditEvent, AuditSigner};
use tellus_verifier::config::Config;
use tellus_verifier::service::policy::policy_input;
use tellus_verifier::service::{self, jwe, token};
use tellus_verifier::storage::{
    AttestationRecord, Attested, GroupCommit, HostClock, HostRecord, ResourcePath, Session,
    TpmClock,
};
use tellus_verifier::tpm::binding::runtime_data_binding;
use tellus_verifier::tpm::evidence::{evidence_from_json, verify_evidence};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RESOURCE: &str = "default/key/disk";

struct Args {
    concurrency: usize,
    seconds: u64,
    pool: usize,
    /// Compare the configured group-commit delay with this one (µs)
    /// within the timed phase.
    ab_commit_delay_us: Option<u64>,
}

fn args() -> Args {
    // The defaults measure the goal (BENCHMARKS.md): at a concurrency of a
    // few requests each one waits for its group commit and the cores idle
    // (2 cores, concurrency 4: 0.9 cores busy, 1,231 round trips/s against
    // 3,224-3,733 at 64); a pool of 8,000 gives ~2 s of timed phase.
    let mut a = Args { concurrency: 64, seconds: 10, pool: 8000, ab_commit_delay_us: None };
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
            "--ab-commit-delay-us" => a.ab_commit_delay_us = Some(value(i)),
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

/// One keep-alive HTTP/1.1 connection: a minimal client that writes whole
/// requests made beforehand ([`request`]) and reads each answer (all carry
/// Content-Length) into one buffer, the body taken out without a copy. It
/// shares the two cores with the server, so what it spends is kept small.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Bytes of the answer read ahead of need.
const READ_AHEAD: usize = 16 * 1024;

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { stream, buf: BytesMut::with_capacity(READ_AHEAD) }
    }

    /// Makes the request and sends it ([`Conn::send`]).
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Option<String>, Bytes) {
        self.send(&request(method, path, headers, body)).await
    }

    /// Sends one whole request; returns (status, set-cookie session, body).
    async fn send(&mut self, request: &[u8]) -> (u16, Option<String>, Bytes) {
        self.stream.write_all(request).await.unwrap();
        let head = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let (status, len, cookie) = parse_head(&self.buf[..head]);
        while self.buf.len() < head + len {
            self.fill().await;
        }
        let mut answer = self.buf.split_to(head + len);
        (status, cookie, answer.split_off(head).freeze())
    }

    async fn fill(&mut self) {
        self.buf.reserve(READ_AHEAD);
        let n = self.stream.read_buf(&mut self.buf).await.unwrap();
        assert!(n > 0, "connection closed mid-answer");
    }
}

/// A whole HTTP/1.1 request.
fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Bytes {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: verifier\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut wire = req.into_bytes();
    wire.extend_from_slice(body);
    Bytes::from(wire)
}

/// (status, Content-Length, the session of a Set-Cookie) of an answer's
/// head (status line and headers, up to the blank line).
fn parse_head(head: &[u8]) -> (u16, usize, Option<String>) {
    let head = std::str::from_utf8(head).expect("an ASCII answer head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let (mut len, mut cookie) = (None, None);
    for l in lines.take_while(|l| !l.is_empty()) {
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
    (status, len.expect("content-length"), cookie)
}

/// A session opened in setup and its attestation body with real evidence.
#[derive(Clone)]
struct Entry {
    cookie: String,
    /// The whole `POST /kbs/v0/attest` request, cookie and body.
    attest: Bytes,
    /// The whole `GET /kbs/v0/resource/...` request, with the cookie.
    resource: Bytes,
}

#[derive(Default)]
struct Lat {
    auth: Vec<Duration>,
    attest: Vec<Duration>,
    resource: Vec<Duration>,
    round: Vec<Duration>,
}

impl Lat {
    fn extend(&mut self, other: Lat) {
        self.auth.extend(other.auth);
        self.attest.extend(other.attest);
        self.resource.extend(other.resource);
        self.round.extend(other.round);
    }
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

/// An audit signer that does not sign (a one-byte placeholder, since the
/// store builds only on signed entries): parts the store's own cost from
/// the audit entries' signatures in the store measurement.
struct NoSignature;

impl AuditSigner for NoSignature {
    fn kid(&self) -> &str {
        "none"
    }
    fn sign(&self, _: &[u8]) -> Result<Vec<u8>, AuditError> {
        Ok(vec![0])
    }
}

fn service_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Body sizes of the real server's answers (auth, attest, resource), and
/// the length of the session cookie it sets.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    auth: usize,
    attest: usize,
    resource: usize,
    cookie: usize,
}

/// Runs round trips (auth, attest with the next unused pool entry,
/// resource) on `concurrency` keep-alive connections until the pool is used
/// up or `seconds` pass. Returns latencies, wall time and the process's CPU
/// seconds over the phase. Records the answers' sizes in `sizes` when given.
async fn drive(
    addr: SocketAddr,
    concurrency: usize,
    seconds: Duration,
    pool: Arc<Vec<Entry>>,
    auth: Bytes,
    sizes: Option<Arc<std::sync::OnceLock<Sizes>>>,
) -> (Lat, Duration, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut conns = Vec::new();
    for _ in 0..concurrency {
        conns.push(Conn::open(addr).await);
    }
    let counted = sizes.is_some();
    if counted {
        on_phase("enable");
    }
    let start = Instant::now();
    let cpu_start = process_cpu_secs();
    let deadline = start + seconds;
    let mut tasks = Vec::new();
    for mut c in conns {
        let (pool, next, auth, sizes) = (pool.clone(), next.clone(), auth.clone(), sizes.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Lat::default();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(e) = pool.get(i) else { break };
                let t0 = Instant::now();
                let (s, set_cookie, b1) = c.send(&auth).await;
                assert_eq!(s, 200, "auth: {}", String::from_utf8_lossy(&b1));
                let t1 = Instant::now();
                let (s, _, b2) = c.send(&e.attest).await;
                assert_eq!(s, 200, "attest: {}", String::from_utf8_lossy(&b2));
                let t2 = Instant::now();
                let (s, _, b3) = c.send(&e.resource).await;
                assert_eq!(s, 200, "resource: {}", String::from_utf8_lossy(&b3));
                let t3 = Instant::now();
                if let Some(sizes) = &sizes {
                    let cookie = set_cookie.map_or(0, |c| c.len());
                    sizes.get_or_init(|| Sizes {
                        auth: b1.len(),
                        attest: b2.len(),
                        resource: b3.len(),
                        cookie,
                    });
                }
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
        all.extend(t.await.unwrap());
    }
    let result = (all, start.elapsed(), process_cpu_secs() - cpu_start);
    if counted {
        on_phase("disable");
    }
    result
}

/// Counters over the real server's timed phase only: when
/// `ROUNDTRIP_ON_PHASE` is set, `sh -c "$ROUNDTRIP_ON_PHASE" phase enable`
/// runs (and is waited for) just before the phase and `… phase disable`
/// just after it, with `$PPID` the bench's pid. For instruction counts
/// (which, unlike times, do not drift with the machine's speed), run the
/// bench under `valgrind --tool=callgrind --instr-atstart=no` with
/// `ROUNDTRIP_ON_PHASE='callgrind_control -i $([ $1 = enable ] && echo on || echo off) $PPID'`.
fn on_phase(what: &str) {
    let Ok(cmd) = std::env::var("ROUNDTRIP_ON_PHASE") else { return };
    let status = std::process::Command::new("sh").args(["-c", &cmd, "phase", what]).status();
    assert!(status.as_ref().is_ok_and(|s| s.success()), "ROUNDTRIP_ON_PHASE {what}: {status:?}");
}

/// The HTTP floor's server: axum on loopback with the three KBS routes,
/// each reading its request body whole and answering with a body (and, for
/// auth, a session cookie) of the size the real server sent, as JSON.
async fn http_floor_server(
    sizes: Sizes,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    use axum::routing::{get, post};
    let body = |n: usize| Bytes::from(vec![b'a'; n]);
    let (auth, attest, resource) = (body(sizes.auth), body(sizes.attest), body(sizes.resource));
    let cookie = format!("kbs-session-id={}", "s".repeat(sizes.cookie.saturating_sub(15)));
    let json = || [(axum::http::header::CONTENT_TYPE, "application/json")];
    let app = axum::Router::new()
        .route(
            "/kbs/v0/auth",
            post(move |_: Bytes| async move {
                (json(), [(axum::http::header::SET_COOKIE, cookie)], auth)
            }),
        )
        .route("/kbs/v0/attest", post(move |_: Bytes| async move { (json(), attest) }))
        .route("/kbs/v0/resource/{*path}", get(move || async move { (json(), resource) }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, tx, server)
}

fn main() {
    let args = args();
    // As `tellus-verifier serve` runs.
    tellus_verifier::service::cli::no_transparent_huge_pages();
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
    let configured_commit = config.group_commit();
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
        let (s, _, b) =
            c.call("POST", &format!("/kbs/v0/resource/{RESOURCE}"), &auth, &secret).await;
        assert_eq!(s, 200, "upload: {}", String::from_utf8_lossy(&b));
        let auth = Bytes::from(auth_body("tpm").to_string());
        let mut cookies = Vec::with_capacity(args.pool);
        let mut nonces = Vec::with_capacity(args.pool);
        for _ in 0..args.pool {
            let (s, cookie, b) = c.call("POST", "/kbs/v0/auth", &[], &auth).await;
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
            .map(|((cookie, (nonce, key)), ev)| {
                let body = json!({
                    "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk()},
                    "tee-evidence": {"primary_evidence": ev, "additional_evidence": ""},
                })
                .to_string();
                let c = [("cookie", cookie.as_str())];
                Entry {
                    attest: request("POST", "/kbs/v0/attest", &c, body.as_bytes()),
                    resource: request("GET", &format!("/kbs/v0/resource/{RESOURCE}"), &c, b""),
                    cookie,
                }
            })
            .collect(),
    );

    // ---- timed phase ----
    let auth = request("POST", "/kbs/v0/auth", &[], auth_body("tpm").to_string().as_bytes());
    let sizes = Arc::new(std::sync::OnceLock::new());
    let (lat, elapsed, cpu_secs) = match args.ab_commit_delay_us {
        None => client_rt.block_on(drive(
            addr,
            args.concurrency,
            Duration::from_secs(args.seconds),
            pool.clone(),
            auth.clone(),
            Some(sizes.clone()),
        )),
        // The configured group-commit rule (A) against the same with
        // another delay (B), in slices of the pool in the order
        // A B B A A B B A: the machine's speed drifts over minutes, and
        // alternating within one run cancels most of it.
        Some(other) => {
            let b_rule = GroupCommit { delay: Duration::from_micros(other), ..configured_commit };
            let order = [false, true, true, false, false, true, true, false];
            let per = pool.len() / order.len();
            assert!(per > 0, "--ab-commit-delay-us needs a pool of at least 8");
            let mut all = Lat::default();
            let (mut elapsed, mut cpu) = (Duration::ZERO, 0.0);
            let mut by = [(0usize, Duration::ZERO, 0.0f64); 2];
            for (k, &b) in order.iter().enumerate() {
                state.store.set_group_commit(if b { b_rule } else { configured_commit });
                let slice = Arc::new(pool[k * per..(k + 1) * per].to_vec());
                let seconds = Duration::from_secs(args.seconds);
                let sizes = Some(sizes.clone());
                let (l, e, c) = client_rt.block_on(drive(
                    addr,
                    args.concurrency,
                    seconds,
                    slice,
                    auth.clone(),
                    sizes,
                ));
                let v = &mut by[usize::from(b)];
                (v.0, v.1, v.2) = (v.0 + l.round.len(), v.1 + e, v.2 + c);
                elapsed += e;
                cpu += c;
                all.extend(l);
            }
            state.store.set_group_commit(configured_commit);
            let show = |name: &str, rule: GroupCommit, (n, e, c): (usize, Duration, f64)| {
                eprintln!(
                    "  commit delay {name} = {} us (siblings {}): {n} round trips, {:.0} round trips/s, {:.0} us CPU per round trip, {:.2} cores busy",
                    rule.delay.as_micros(),
                    rule.siblings,
                    n as f64 / e.as_secs_f64(),
                    c / n as f64 * 1e6,
                    c / e.as_secs_f64()
                );
            };
            eprintln!("group-commit A/B within the timed phase (slices of {per} round trips, A B B A A B B A):");
            show("A", configured_commit, by[0]);
            show("B", b_rule, by[1]);
            let cpu_rt = |(n, _, c): (usize, Duration, f64)| c / n as f64;
            eprintln!("  B / A CPU per round trip = {:.3}", cpu_rt(by[1]) / cpu_rt(by[0]));
            (all, elapsed, cpu)
        }
    };
    // The audit entries the timed phase wrote (attestations and releases),
    // and how many of them carry a signature (one per group commit).
    let (audit_entries, audit_signed) = {
        let all = state.store.audit_entries(0, usize::MAX).unwrap();
        let round: Vec<_> = all
            .iter()
            .filter(|e| e.event == "attestation.verified" || e.event == "resource.released")
            .collect();
        (round.len(), round.iter().filter(|e| !e.signature.is_empty()).count())
    };
    // How often the policy decisions so far (the timed phase's) came from
    // the memo (`tellus_policies::engine`: inputs equal where the policy
    // reads): (from the memo, evaluated) of each policy.
    let [att_memo, res_memo] = state.policies.decision_counts();

    // ---- HTTP floor: the same load generator against a server that only
    // speaks HTTP (no JSON, store, crypto or policy), answering with bodies
    // and headers of the sizes the real server sent. Its CPU time per round
    // trip is what three requests over loopback cost on their own. ----
    let sizes = *sizes.get().expect("a round trip ran");
    let floor_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (floor_addr, floor_stop, floor_server) = floor_rt.block_on(http_floor_server(sizes));
    let floor_pool: Arc<Vec<Entry>> = Arc::new(
        // Enough round trips for the tick-granular CPU clock (10 ms).
        pool.iter().cycle().take(pool.len().max(20_000)).cloned().collect(),
    );
    let (floor_lat, floor_elapsed, floor_cpu) = client_rt.block_on(drive(
        floor_addr,
        args.concurrency,
        Duration::from_secs(args.seconds),
        floor_pool,
        auth.clone(),
        None,
    ));
    let _ = floor_stop.send(());
    floor_rt.block_on(floor_server).unwrap();
    drop(floor_rt);

    // Correctness spot check outside the timing: entry 0 (always attested)
    // decrypts the resource released to its session with its own key.
    let (ceil_nonce, ceil_jwk) = (nonces[1 % args.pool].clone(), keys[1 % args.pool].jwk());
    let ceil_ev = serde_json::to_vec(&evidence[1 % args.pool]).unwrap();
    let check_cookie = pool[0].cookie.clone();
    let jwe: Value = client_rt.block_on(async {
        let mut c = Conn::open(addr).await;
        let res = format!("/kbs/v0/resource/{RESOURCE}");
        let (s, _, b) = c.call("GET", &res, &[("cookie", &check_cookie)], b"").await;
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
    // Without the memo: what each decision costs when the input differs
    // from every recent one where the policy reads it.
    let t_att_fresh = time_per_call(|| {
        std::hint::black_box(active.attestation.evaluate_unmemoised(&input).unwrap());
    });
    let t_res_fresh = time_per_call(|| {
        std::hint::black_box(active.resource.evaluate_unmemoised(&res_input).unwrap());
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

    // ---- store: the store calls of one round trip, in order, on one
    // thread (no other request running): auth's session insert; attest's
    // host, TPM clock and policy-revision reads and its transaction
    // (session update, clock, audit entry); the resource request's
    // resource and policy-revision reads and its audit entry. (The session
    // itself is read from the server's memory, `service::sessions`.) Timed
    // with the two audit entries signed, as the server signs them, and
    // with a signer that does not sign, to part the two. ----
    let store = state.store.clone();
    let token = state.signer.sign(&ear).unwrap();
    let tee_pubkey = serde_json::to_string(&ceil_jwk).unwrap();
    let path = ResourcePath::new("default", "key", "disk").unwrap();
    let host_clock = HostClock { host_id: record.host_id.clone(), clock: TpmClock::default() };
    let detail = json!({"session": "0123abcd", "tee": "tpm", "status": "affirming",
        "policy_id": "tellus:tpm-launch.rego", "reasons": [], "token_sha256": "0123456789abcdef"});
    let store_round = |signer: &dyn AuditSigner| {
        let now = service_now_ms();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let session = Session {
            id: id.clone(),
            nonce: "bm9uY2Vub25jZW5vbmNlbm9uY2Vub25jZW5vbmNlbm8=".into(),
            tee: "tpm".into(),
            expires_at_ms: now + 3_600_000,
            attested: None,
        };
        store.create_session(&session).unwrap();
        std::hint::black_box(store.get_host(&record.host_id).unwrap());
        std::hint::black_box(store.tpm_clock(&record.host_id).unwrap());
        std::hint::black_box(store.policy_revision().unwrap());
        let attestation = AttestationRecord {
            session_id: id.clone(),
            attested: Attested { token: token.clone(), tee_pubkey: tee_pubkey.clone() },
            expires_at_ms: now + 3_600_000,
            host_clock: Some(host_clock.clone()),
        };
        let entry = |prev: Option<&AuditEntry>| {
            AuditEntry::next(
                prev,
                now,
                AuditEvent::AttestationVerified,
                "session:0123abcd",
                detail.clone(),
                signer,
            )
        };
        assert!(store.mark_attested(&attestation, &entry).unwrap());
        std::hint::black_box(store.get_resource(&path).unwrap());
        std::hint::black_box(store.policy_revision().unwrap());
        let entry = |prev: Option<&AuditEntry>| {
            AuditEntry::next(
                prev,
                now,
                AuditEvent::ResourceReleased,
                RESOURCE,
                json!({"session": "0123abcd", "bytes": 32, "status": "affirming"}),
                signer,
            )
        };
        store.append_audit(&entry).unwrap();
    };
    let t_store = time_per_call(|| store_round(state.signer.as_ref()));
    let t_store_unsigned = time_per_call(|| store_round(&NoSignature));

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
    println!(
        "  audit entries: {audit_entries} written, {audit_signed} signed ({:.2} ES256 signatures per round trip for the log; 2 if each entry were signed)",
        audit_signed as f64 / n as f64
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
        "  attestation policy (tpm-launch.rego)                 {:8.1} us  (engine only {:.1} us); evaluated without the memo {:.1} us",
        t_att_policy * 1e6,
        t_att_eval * 1e6,
        t_att_fresh * 1e6
    );
    println!(
        "  resource policy (resource-default.rego)              {:8.1} us  evaluated without the memo {:.1} us",
        t_res_policy * 1e6,
        t_res_fresh * 1e6
    );
    println!(
        "  timed phase: attestation decisions from the memo {} of {}, resource decisions {} of {}",
        att_memo.0,
        att_memo.0 + att_memo.1,
        res_memo.0,
        res_memo.0 + res_memo.1
    );
    println!(
        "  both {:.1} us per round trip = {:.1}% of the server CPU time per round trip ({:.1} us = cores / rate), {:.1}% of the p50 round-trip latency",
        t_policy * 1e6,
        100.0 * t_policy / cpu_per_round,
        cpu_per_round * 1e6,
        100.0 * t_policy * 1e3 / pct(&mut round, 0.50)
    );
    let floor_n = floor_lat.round.len();
    let floor_cpu_per_rt = floor_cpu / floor_n as f64;
    let mut floor_round = floor_lat.round;
    println!(
        "HTTP floor (same load generator and concurrency; a server that only speaks HTTP, answers of the same sizes {sizes:?}):"
    );
    println!(
        "  round trips: {floor_n}, {:.0} round trips/s; CPU time {:.0} us per round trip (server + load generator); p50 {:.3} ms",
        floor_n as f64 / floor_elapsed.as_secs_f64(),
        floor_cpu_per_rt * 1e6,
        pct(&mut floor_round, 0.50)
    );
    println!("store calls of one round trip (1 core, in-process, SQLite WAL, no other request):");
    println!(
        "  {:.1} us with the two audit entries signed, {:.1} us unsigned",
        t_store * 1e6,
        t_store_unsigned * 1e6
    );
    // The goal's CPU budget per round trip with every core busy, against
    // the parts measured above that a round trip cannot do without.
    let budget = cores as f64 / 3000.0;
    let floor = floor_cpu_per_rt + per_round + t_policy + t_store;
    println!(
        "CPU per round trip: measured {:.0} us; HTTP floor + crypto + policies + store {:.0} us ({:.0} + {:.0} + {:.0} + {:.0}); goal budget {:.0} us ({cores} cores / 3000 per s)",
        cpu_per_rt * 1e6,
        floor * 1e6,
        floor_cpu_per_rt * 1e6,
        per_round * 1e6,
        t_policy * 1e6,
        t_store * 1e6,
        budget * 1e6
    );
    println!(
        "  floor / budget = {:.2}; measured / floor = {:.2}; the rest (JSON, claims, middleware, scheduling, contention) {:.0} us",
        floor / budget,
        cpu_per_rt / floor,
        (cpu_per_rt - floor) * 1e6
    );
    drop(tpm);
}
