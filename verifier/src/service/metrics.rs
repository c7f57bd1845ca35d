//! Prometheus counters (`GET /metrics`) and the one-line-per-request log.

use super::error::ErrorKind;
use super::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The service's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Sessions created by `/kbs/v0/auth`.
    pub auth: AtomicU64,
    /// Successful attestations.
    pub attest_ok: AtomicU64,
    /// Refused attestations (any reason).
    pub attest_failed: AtomicU64,
    /// Resources released (JWE answers).
    pub resources_released: AtomicU64,
    /// Answers with status 401 or 403.
    pub denials: AtomicU64,
    /// Host enrollment challenges issued.
    pub enrollments: AtomicU64,
    /// Host enrollment requests refused.
    pub enrollments_refused: AtomicU64,
    /// Hosts activated (proof matched).
    pub activations: AtomicU64,
    /// Activation proofs refused (unknown, expired or wrong secret).
    pub activations_failed: AtomicU64,
}

impl Metrics {
    fn record(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_owned(), status)).or_default() += 1;
        }
        if status == 401 || status == 403 {
            self.denials.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP tellus_verifier_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE tellus_verifier_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "tellus_verifier_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    route.replace('\\', "\\\\").replace('"', "\\\"")
                );
            }
        }
        for (name, help, v) in [
            ("auth", "KBS sessions created.", &self.auth),
            ("attest_success", "Successful attestations.", &self.attest_ok),
            ("attest_failure", "Refused attestations.", &self.attest_failed),
            (
                "resources_released",
                "Resources released to attested clients.",
                &self.resources_released,
            ),
            ("denials", "Answers with status 401 or 403.", &self.denials),
            ("enrollments", "Host enrollment challenges issued.", &self.enrollments),
            ("enrollments_refused", "Host enrollment requests refused.", &self.enrollments_refused),
            ("activations", "Hosts activated.", &self.activations),
            ("activations_failed", "Activation proofs refused.", &self.activations_failed),
        ] {
            let _ = writeln!(out, "# HELP tellus_verifier_{name}_total {help}");
            let _ = writeln!(out, "# TYPE tellus_verifier_{name}_total counter");
            let _ = writeln!(out, "tellus_verifier_{name}_total {}", v.load(Ordering::Relaxed));
        }
        out
    }
}

/// The first 8 characters of the session cookie, for the log.
fn session_prefix(req: &Request) -> Option<String> {
    let cookie = req.headers().get(axum::http::header::COOKIE)?.to_str().ok()?;
    let id = super::kbs::session_id_from_cookie(cookie)?;
    Some(id.chars().take(8).collect())
}

/// Counts and logs every request: route template, status, session prefix.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let session = session_prefix(&req);
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    state.metrics.record(&route, status);
    let kind = resp.extensions().get::<ErrorKind>().map(|k| k.as_str());
    tracing::info!(
        %method,
        route = %route,
        status,
        session = session.as_deref().unwrap_or("-"),
        error = kind.unwrap_or("-"),
        ms = start.elapsed().as_millis() as u64,
        "request"
    );
    resp
}
