//! The verifier service: KBS protocol 0.4.0 over HTTP(S) (axum).
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /healthz` | — | `ok` |
//! | `GET /metrics` | — | Prometheus counters |
//! | `GET /tellus/v1/jwks` | — | the token-signing public key (JWK Set) |
//! | `POST /kbs/v0/auth` | — | nonce + `kbs-session-id` cookie |
//! | `POST /kbs/v0/attest` | session cookie | EAR token (ES256 JWT) |
//! | `GET /kbs/v0/resource/{repo}/{type}/{tag}` | attested cookie or `Bearer <token>` | the resource as a JWE |
//! | `POST /kbs/v0/resource/{repo}/{type}/{tag}` | admin | upload a resource |
//! | `POST /kbs/v0/attestation-policy` | admin | store an attestation policy |
//! | `POST`/`GET /kbs/v0/resource-policy` | admin | store / read the resource policy |
//! | `POST /kbs/v0/reference-value` | admin | store reference values |
//! | `POST /tellus/v1/hosts/enroll` | — | host enrollment challenge ([`hosts`]) |
//! | `POST /tellus/v1/hosts/activate` | — | activation proof → enrolled host |
//! | `GET /tellus/v1/hosts/{host_id}` | admin | the host record |
//! | `PUT /tellus/v1/hosts/{host_id}/labels` | admin | replace the host's labels |
//! | `DELETE /tellus/v1/hosts/{host_id}/tpm-clock` | admin | forget the host's TPM clock history (after TPM2_Clear) |
//!
//! Modules: [`kbs`] (client routes), [`admin`], [`policy`] (attestation and
//! resource policies, prepared and cached), [`verifier`] (the
//! [`EvidenceVerifier`] trait per tee; [`tpm_verifier`] for tee `tpm`), [`token`] (EAR JWTs, JWKS),
//! [`jwe`] (ECDH-ES+A256KW), [`keys`] (generated secrets), [`sessions`]
//! (the sessions this process committed, in memory), [`metrics`],
//! [`error`] (the KBS error body), [`cli`] (`serve` arguments).

pub mod admin;
pub mod cli;
pub mod error;
pub mod hosts;
pub mod jwe;
pub mod kbs;
pub mod keys;
pub mod metrics;
pub mod offline;
pub mod policy;
pub mod sessions;
pub mod snp_verifier;
pub mod token;
pub mod tpm_verifier;
pub mod verifier;

pub use error::{ApiError, ErrorKind};
pub use tpm_verifier::TpmVerifier;
pub use verifier::{Claims, EvidenceVerifier, SampleVerifier, TpmNotWired, VerifyError};

use crate::config::Config;
use crate::storage::{ResourceKey, SqliteStore, Store, StoreError};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ring::rand::SystemRandom;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error("refusing plain HTTP on {0}: insecure_http is allowed only on a loopback address; configure tls_cert and tls_key, or listen on 127.0.0.1 / ::1")]
    InsecureNotLoopback(SocketAddr),
    #[error("no TLS certificate configured: set tls_cert and tls_key, or (on a loopback address only) insecure_http = true")]
    NoTls,
    #[error("tls_cert and tls_key must be set together")]
    TlsHalfConfigured,
    #[error("both TLS and insecure_http are configured; choose one")]
    TlsAndInsecure,
    #[error("cannot load TLS {what} from {path}: {detail}; give a PEM file")]
    TlsFile { what: &'static str, path: PathBuf, detail: String },
    #[error("the TLS certificate and key do not make a valid TLS configuration: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Tunables taken from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub session_lifetime: Duration,
    pub token_lifetime: Duration,
    pub max_body_bytes: usize,
}

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub resource_key: Arc<ResourceKey>,
    pub signer: Arc<token::TokenSigner>,
    /// SHA-256 of each accepted admin token.
    pub admin_token_digests: Arc<Vec<[u8; 32]>>,
    /// The enabled tees and their verifiers.
    pub verifiers: Arc<BTreeMap<String, Arc<dyn EvidenceVerifier>>>,
    pub metrics: Arc<metrics::Metrics>,
    pub settings: Settings,
    pub rng: SystemRandom,
    /// Host enrollment: EK CA anchors, options, challenge lifetime.
    pub enrollment: Arc<hosts::EnrollmentSettings>,
    /// The attestation and resource policies, prepared and cached.
    pub policies: Arc<policy::PolicyEngine>,
    /// The sessions this process committed, in memory ([`sessions`]).
    pub sessions: Arc<sessions::LiveSessions>,
}

impl AppState {
    /// Loads or creates the secrets in the state directory and opens the
    /// SQLite store there.
    pub fn open(config: &Config) -> Result<AppState, ServiceError> {
        config.validate()?;
        let rng = SystemRandom::new();
        let secrets = keys::Secrets::load_or_create(config, &rng)?;
        if let Some(p) = &secrets.admin_token_file {
            tracing::info!(path = %p.display(), "admin token file");
        }
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_in_with(&config.state_dir, config.group_commit())?);
        let signer = token::TokenSigner::from_pkcs8(&secrets.signing_key_pkcs8)?;
        let mut verifiers: BTreeMap<String, Arc<dyn EvidenceVerifier>> = BTreeMap::new();
        verifiers.insert(
            "tpm".into(),
            Arc::new(TpmVerifier::new(store.clone(), config.tpm_clock_tolerance_ms)),
        );
        verifiers.insert(
            "snp".into(),
            Arc::new(snp_verifier::SnpVerifier::for_state_dir(&config.state_dir)),
        );
        if config.enable_sample_tee {
            tracing::warn!(
                "the sample tee is enabled: its evidence proves nothing about the platform"
            );
            verifiers.insert("sample".into(), Arc::new(SampleVerifier));
        }
        let admin_token_digests = secrets
            .admin_tokens
            .iter()
            .map(|t| {
                let mut d = [0u8; 32];
                d.copy_from_slice(
                    ring::digest::digest(&ring::digest::SHA256, t.as_bytes()).as_ref(),
                );
                d
            })
            .collect();
        Ok(AppState {
            store: store.clone(),
            resource_key: Arc::new(ResourceKey::new(&secrets.resource_key)),
            signer: Arc::new(signer),
            admin_token_digests: Arc::new(admin_token_digests),
            verifiers: Arc::new(verifiers),
            metrics: Arc::new(metrics::Metrics::default()),
            settings: Settings {
                session_lifetime: Duration::from_secs(config.session_lifetime_secs),
                token_lifetime: Duration::from_secs(config.token_lifetime_secs),
                max_body_bytes: config.max_body_bytes,
            },
            rng,
            enrollment: Arc::new(hosts::EnrollmentSettings::load(config)),
            policies: Arc::new(policy::PolicyEngine::new(store, &config.required_host_labels)),
            sessions: Arc::new(sessions::LiveSessions::default()),
        })
    }

    /// Plugs in (or replaces) the verifier for `tee`.
    pub fn with_verifier(mut self, tee: &str, v: Arc<dyn EvidenceVerifier>) -> AppState {
        Arc::make_mut(&mut self.verifiers).insert(tee.to_owned(), v);
        self
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Runs a store operation (see [`run_sync`]).
pub(crate) async fn db<T, F>(state: &AppState, what: &'static str, f: F) -> Result<T, ApiError>
where
    F: FnOnce(&dyn Store) -> Result<T, StoreError>,
{
    run_sync(state, what, move |st| f(st.store.as_ref()).map_err(|e| ApiError::internal(what, e)))
        .await
}

/// Runs a request's synchronous part (store, evidence verification,
/// policy, signing) on the runtime worker that polls the request, in one
/// piece.
///
/// Not on tokio's blocking pool, by measurement: that hand-off cost more
/// than the work itself (`cargo bench -p tellus-verifier --bench
/// roundtrip`, 2 cores: 1,733 µs of CPU per KBS round trip with
/// `spawn_blocking`, 1,870–2,010 with `block_in_place`, 1,110–1,280
/// inline; see BENCHMARKS.md). The work is bounded and CPU-bound:
/// signature checks, one policy evaluation, one ECDH, and single-row
/// SQLite transactions on a WAL database whose checkpoints (the only
/// fsyncs) run on the store's own thread (`storage::sqlite`). A worker
/// thus never waits on a disk flush or on the network here, only on the
/// store's mutex held by another such short transaction. `what` names the
/// work in the error should it panic. It stays `async` (as [`db`] and
/// [`audit`] do) so that handlers need not change when a store that awaits
/// (the PostgreSQL store to come) takes its place.
pub(crate) async fn run_sync<T, F>(
    state: &AppState,
    what: &'static str,
    f: F,
) -> Result<T, ApiError>
where
    F: FnOnce(&AppState) -> Result<T, ApiError>,
{
    // A panic fails this request (500), as a panicking blocking task did,
    // rather than the connection's task.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(state)))
        .map_err(|_| ApiError::internal(what, "panicked"))?
}

/// Appends one entry to the audit log (signed with the token-signing key),
/// on the calling thread: for code already inside [`run_sync`]. Callers
/// fail the request when this fails: nothing is released, enrolled or
/// changed without its audit entry.
pub(crate) fn audit_blocking(
    state: &AppState,
    event: crate::audit::AuditEvent,
    subject: &str,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    let make = audit_maker(state, event, subject.to_owned(), detail);
    state
        .store
        .append_audit(&|last| make.signed(last))
        .map(|_| ())
        .map_err(|e| ApiError::internal("audit log", e))
}

/// How the store makes the audit entry that follows the log's last one:
/// `event` on `subject` with `detail`, now, for the token-signing key,
/// which signs it (or, in a group commit, a later entry of the same
/// transaction). The store calls it inside its transaction, so the chain
/// has no gaps. Owned, so that a queued write can carry it to the store's
/// writer thread.
pub(crate) fn audit_maker(
    state: &AppState,
    event: crate::audit::AuditEvent,
    subject: String,
    detail: serde_json::Value,
) -> crate::storage::AuditMaker {
    crate::storage::AuditMaker::new(
        move |last, signer| {
            crate::audit::AuditEntry::next_unsigned(
                last,
                now_ms(),
                event,
                &subject,
                detail.clone(),
                signer,
            )
        },
        state.signer.clone(),
    )
}

/// Waits for a queued store write (`Store::queue_*`) without holding the
/// runtime worker, so that other requests run meanwhile and their writes
/// join the same group commit. `submit` queues the write with the `done`
/// it is given.
pub(crate) async fn queued<T: Send + 'static>(
    what: &'static str,
    submit: impl FnOnce(crate::storage::Done<T>),
) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    match rx.await {
        Ok(r) => r.map_err(|e| ApiError::internal(what, e)),
        Err(_) => Err(ApiError::internal(what, StoreError::WriterGone)),
    }
}

/// [`audit_blocking`] from async code: the entry is queued and the call
/// returns once it is committed.
pub(crate) async fn audit(
    state: &AppState,
    event: crate::audit::AuditEvent,
    subject: impl Into<String>,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    let make = audit_maker(state, event, subject.into(), detail);
    queued("audit log", |done| state.store.queue_append_audit(make, done)).await.map(|_| ())
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let text = state.metrics.render() + &state.policies.render_metrics();
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn jwks(State(state): State<AppState>) -> Response {
    match serde_json::to_vec(&state.signer.jwks()) {
        Ok(b) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/jwk-set+json")], b)
            .into_response(),
        Err(e) => ApiError::internal("serialising the JWK Set", e).into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorKind::InvalidRequest,
        "no such route; see the verifier's documentation for the KBS 0.4.0 routes",
    )
}

/// The service's routes.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/tellus/v1/jwks", get(jwks))
        .route("/kbs/v0/auth", post(kbs::auth))
        .route("/kbs/v0/attest", post(kbs::attest))
        .route(
            "/kbs/v0/resource/{repo}/{type}/{tag}",
            get(kbs::get_resource).post(admin::put_resource),
        )
        .route("/kbs/v0/attestation-policy", post(admin::set_attestation_policy))
        .route(
            "/kbs/v0/resource-policy",
            post(admin::set_resource_policy).get(admin::get_resource_policy),
        )
        .route("/kbs/v0/reference-value", post(admin::set_reference_values))
        .route("/tellus/v1/hosts/enroll", post(hosts::enroll))
        .route("/tellus/v1/hosts/activate", post(hosts::activate))
        .route("/tellus/v1/hosts/{host_id}", get(hosts::get_host))
        .route("/tellus/v1/hosts/{host_id}/labels", axum::routing::put(hosts::put_labels))
        .route(
            "/tellus/v1/hosts/{host_id}/tpm-clock",
            axum::routing::delete(hosts::forget_tpm_clock),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// How the listener speaks.
enum Transport {
    Tls(axum_server::tls_rustls::RustlsConfig),
    Plain,
}

/// Decides TLS or plain HTTP, refusing plain HTTP off loopback.
fn transport(config: &Config) -> Result<Transport, ServiceError> {
    match (&config.tls_cert, &config.tls_key, config.insecure_http) {
        (Some(_), Some(_), true) => Err(ServiceError::TlsAndInsecure),
        (Some(cert), Some(key), false) => Ok(Transport::Tls(tls_config(cert, key)?)),
        (Some(_), None, _) | (None, Some(_), _) => Err(ServiceError::TlsHalfConfigured),
        (None, None, true) if config.listen.ip().is_loopback() => Ok(Transport::Plain),
        (None, None, true) => Err(ServiceError::InsecureNotLoopback(config.listen)),
        (None, None, false) => Err(ServiceError::NoTls),
    }
}

fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<axum_server::tls_rustls::RustlsConfig, ServiceError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServiceError::TlsFile {
            what: "certificate",
            path: cert.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ServiceError::TlsFile {
            what: "certificate",
            path: cert.to_owned(),
            detail: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ServiceError::TlsFile {
        what: "private key",
        path: key.to_owned(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServiceError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServiceError::Tls(e.to_string()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server)))
}

/// A service bound to its port, not yet serving.
pub struct BoundServer {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    transport: Transport,
    state: AppState,
}

/// Opens the state and binds the listener; refuses insecure set-ups.
pub async fn bind(config: Config) -> Result<BoundServer, ServiceError> {
    let transport = transport(&config)?;
    let state = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || AppState::open(&config))
            .await
            .map_err(|e| ServiceError::Serve(std::io::Error::other(e)))??
    };
    bind_with_state(&config, state, transport)
}

fn bind_with_state(
    config: &Config,
    state: AppState,
    transport: Transport,
) -> Result<BoundServer, ServiceError> {
    let bind_err = |source| ServiceError::Bind { addr: config.listen, source };
    let listener = std::net::TcpListener::bind(config.listen).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    Ok(BoundServer { listener, addr, transport, state })
}

impl BoundServer {
    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state the server runs with.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains connections.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServiceError> {
        let app = router(self.state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let sweeper = tokio::spawn(sweep_sessions(self.state.clone()));
        let scheme = match self.transport {
            Transport::Tls(_) => "https",
            Transport::Plain => "http",
        };
        tracing::info!(addr = %self.addr, scheme, "tellus-verifier listening");
        let result = match self.transport {
            Transport::Plain => {
                let listener = tokio::net::TcpListener::from_std(self.listener)
                    .map_err(ServiceError::Serve)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(ServiceError::Serve)
            }
            Transport::Tls(tls) => {
                let handle = axum_server::Handle::new();
                let h = handle.clone();
                tokio::spawn(async move {
                    shutdown.await;
                    h.graceful_shutdown(Some(Duration::from_secs(10)));
                });
                axum_server::from_tcp_rustls(self.listener, tls)
                    .handle(handle)
                    .serve(app)
                    .await
                    .map_err(ServiceError::Serve)
            }
        };
        sweeper.abort();
        result
    }
}

/// Deletes expired sessions every minute.
async fn sweep_sessions(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        state.sessions.sweep(now_ms());
        match db(&state, "deleting expired sessions", |s| s.delete_expired_sessions(now_ms())).await
        {
            Ok(n) if n > 0 => tracing::debug!(n, "expired sessions deleted"),
            _ => {}
        }
        let before = (now_ms() / 1000).max(0) as u64;
        let before = before.saturating_sub(state.enrollment.ttl_secs);
        match db(&state, "deleting expired enrollments", move |s| s.delete_expired_pending(before))
            .await
        {
            Ok(n) if n > 0 => tracing::debug!(n, "expired enrollment challenges deleted"),
            _ => {}
        }
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

/// Binds and serves until Ctrl-C or SIGTERM.
pub async fn serve(config: Config) -> Result<(), ServiceError> {
    bind(config).await?.run(shutdown_signal()).await
}
