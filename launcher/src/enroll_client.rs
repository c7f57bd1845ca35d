//! `tellus host enroll --verifier URL`: the whole enrollment protocol
//! against a verifier over HTTP(S):
//!
//! 1. [`crate::tpm::enroll::enrollment_request`] (EK cert, EK public, AK
//!    public, AK Name) → `POST <verifier>/tellus/v1/hosts/enroll`;
//! 2. the verifier's `EnrollChallenge` (MakeCredential blob) →
//!    [`crate::tpm::enroll::activate`] (TPM2_ActivateCredential);
//! 3. the `ActivationProof` → `POST <verifier>/tellus/v1/hosts/activate` →
//!    `EnrollResult`.
//!
//! Transport: HTTPS (rustls, no native TLS) verified against `--ca-cert`
//! when given, else the built-in web PKI roots. Plain `http://` is allowed
//! only to a loopback host (`localhost`, 127.0.0.0/8, `::1`), and refused
//! before any connection otherwise. No redirects are followed. Verifier
//! errors (`{"type": …, "detail": …}`) are shown with their `detail`.

use crate::tpm::enroll::{self, EnrollError};
use crate::tpm::TpmAddress;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tellus_protocol::enrollment::{ActivationProof, EnrollChallenge, EnrollResult};

/// Route of the enrollment request.
pub const ENROLL_PATH: &str = "/tellus/v1/hosts/enroll";
/// Route of the activation proof.
pub const ACTIVATE_PATH: &str = "/tellus/v1/hosts/activate";
/// Largest verifier answer read.
const MAX_ANSWER_LEN: u64 = 1 << 20;
/// Largest `--ca-cert` file read.
const MAX_CA_LEN: u64 = 1 << 20;
/// Timeout of each HTTP exchange.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Why `tellus host enroll` failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "--verifier {url:?} is not a valid URL ({reason}); give e.g. https://verifier.example:8443"
    )]
    BadUrl { url: String, reason: String },
    #[error(
        "refusing plain HTTP to {host}: http:// is allowed only to a loopback verifier \
         (localhost, 127.0.0.1, ::1); use https:// (with --ca-cert for a private CA)"
    )]
    InsecureNotLoopback { host: String },
    #[error("--ca-cert is only for https:// verifiers; drop it or use https://")]
    CaCertWithoutTls,
    #[error(
        "cannot read the CA certificate {path}: {reason}; give a PEM file of the verifier's CA"
    )]
    CaCert { path: PathBuf, reason: String },
    #[error(
        "cannot reach the verifier at {url}: {source}; check that it is running and that the \
         URL, port and --ca-cert are right"
    )]
    Connect {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("the verifier refused {step} (HTTP {status}, {kind}): {detail}")]
    Refused { step: &'static str, status: u16, kind: String, detail: String },
    #[error(
        "the verifier's answer to {step} is not valid ({reason}); is --verifier a tellus verifier?"
    )]
    BadAnswer { step: &'static str, reason: String },
    #[error(transparent)]
    Host(#[from] EnrollError),
}

/// A checked verifier base URL and the HTTP agent to talk to it.
pub struct VerifierClient {
    base: String,
    agent: ureq::Agent,
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

fn load_ca(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, ClientError> {
    use std::io::Read;
    let err = |reason: String| ClientError::CaCert { path: path.to_owned(), reason };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CA_LEN + 1).read_to_end(&mut bytes).map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_CA_LEN {
        return Err(err(format!("larger than {MAX_CA_LEN} bytes")));
    }
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&bytes) {
        match item.map_err(|e| err(e.to_string()))? {
            ureq::tls::PemItem::Certificate(c) => certs.push(c),
            ureq::tls::PemItem::PrivateKey(_) => {}
            // PemItem is non-exhaustive.
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

impl VerifierClient {
    /// Checks `url` (https://, or http:// to loopback only) and builds the
    /// agent; connects to nothing.
    pub fn new(url: &str, ca_cert: Option<&Path>) -> Result<VerifierClient, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl { url: url.into(), reason: reason.into() };
        let uri: ureq::http::Uri = url.parse().map_err(|e: ureq::http::uri::InvalidUri| {
            ClientError::BadUrl { url: url.into(), reason: e.to_string() }
        })?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host"))?;
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed"));
        }
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be https:// (or http:// to loopback)")),
        };
        if !tls && !is_loopback(host) {
            return Err(ClientError::InsecureNotLoopback { host: host.to_owned() });
        }
        if !tls && ca_cert.is_some() {
            return Err(ClientError::CaCertWithoutTls);
        }
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(TIMEOUT));
        if is_loopback(host) {
            config = config.proxy(None);
        }
        if let Some(path) = ca_cert {
            let certs = load_ca(path)?;
            let tls = ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
                .build();
            config = config.tls_config(tls);
        }
        let base = url.trim_end_matches('/').to_owned();
        Ok(VerifierClient { base, agent: config.build().into() })
    }

    /// POSTs `body` as JSON to `path` and parses a 200 answer as `T`.
    fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        step: &'static str,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ClientError::BadAnswer { step, reason: e.to_string() })?;
        let answer = self.exchange(step, path, Some(&bytes), None, MAX_ANSWER_LEN)?;
        answer.ok_json(step)
    }

    /// One HTTP exchange: a POST of `json` (or a GET when `None`) to `path`,
    /// with the `Cookie` header `cookie` if given; reads at most `limit`
    /// bytes of the answer. Any status is returned; only transport
    /// failures and oversized answers are errors.
    pub(crate) fn exchange(
        &self,
        step: &'static str,
        path: &str,
        json: Option<&[u8]>,
        cookie: Option<&str>,
        limit: u64,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let connect = |source| ClientError::Connect { url: self.base.clone(), source };
        let mut resp = match json {
            Some(bytes) => {
                let mut req = self.agent.post(&url).header("content-type", "application/json");
                if let Some(c) = cookie {
                    req = req.header("cookie", c);
                }
                req.send(bytes).map_err(connect)?
            }
            None => {
                let mut req = self.agent.get(&url);
                if let Some(c) = cookie {
                    req = req.header("cookie", c);
                }
                req.call().map_err(connect)?
            }
        };
        let status = resp.status().as_u16();
        let set_cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter(|v| v.len() <= 4096)
            .map(str::to_owned)
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| ClientError::BadAnswer { step, reason: e.to_string() })?;
        Ok(Answer { status, set_cookie, body })
    }
}

/// A verifier's answer (see [`VerifierClient::exchange`]).
pub(crate) struct Answer {
    pub status: u16,
    /// Every `Set-Cookie` header (each at most 4 KiB).
    pub set_cookie: Vec<String>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The verifier's refusal (`{"type", "detail"}`) for a non-200 answer.
    pub fn refusal(&self, step: &'static str) -> ClientError {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        let kind = v["type"]
            .as_str()
            .map(|t| t.rsplit('/').next().unwrap_or(t).chars().take(64).collect())
            .unwrap_or_else(|| "no error kind".into());
        let detail =
            v["detail"].as_str().map(|d| d.chars().take(1024).collect()).unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&self.body);
                let text: String = text.chars().take(200).collect();
                if text.trim().is_empty() {
                    "no detail given".into()
                } else {
                    text
                }
            });
        ClientError::Refused { step, status: self.status, kind, detail }
    }

    /// A 200 answer parsed as `T`, or the refusal.
    pub fn ok_json<T: serde::de::DeserializeOwned>(
        &self,
        step: &'static str,
    ) -> Result<T, ClientError> {
        if self.status != 200 {
            return Err(self.refusal(step));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ClientError::BadAnswer { step, reason: e.to_string() })
    }
}

/// Runs the whole enrollment: request, challenge, activation, proof.
pub fn enroll(
    client: &VerifierClient,
    addr: &TpmAddress,
    state_dir: &Path,
) -> Result<EnrollResult, ClientError> {
    let req = enroll::enrollment_request(addr, state_dir)?;
    let challenge: EnrollChallenge = client.post("the enrollment request", ENROLL_PATH, &req)?;
    let proof: ActivationProof = enroll::activate(addr, state_dir, &challenge)?;
    let result: EnrollResult = client.post("the activation proof", ACTIVATE_PATH, &proof)?;
    if result.host_id != req.host_id {
        return Err(ClientError::BadAnswer {
            step: "the activation proof",
            reason: format!("it names host {}, not this host {}", result.host_id, req.host_id),
        });
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_checks() {
        assert!(VerifierClient::new("http://127.0.0.1:8080", None).is_ok());
        assert!(VerifierClient::new("http://localhost:8080/", None).is_ok());
        assert!(VerifierClient::new("http://[::1]:8080", None).is_ok());
        assert!(VerifierClient::new("https://verifier.example", None).is_ok());
        for (url, want) in [
            ("http://10.0.0.1:1", "loopback"),
            ("http://verifier.example", "loopback"),
            ("ftp://127.0.0.1", "scheme"),
            ("127.0.0.1:8080", "scheme"),
            ("http://127.0.0.1/?a=b", "query"),
            ("not a url", "not a valid URL"),
        ] {
            let e = VerifierClient::new(url, None).err().unwrap().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
        let e = VerifierClient::new("http://127.0.0.1:1", Some(Path::new("/nonexistent")))
            .err()
            .unwrap();
        assert!(matches!(e, ClientError::CaCertWithoutTls), "{e}");
        let e = VerifierClient::new("https://v.example", Some(Path::new("/nonexistent")))
            .err()
            .unwrap();
        assert!(matches!(e, ClientError::CaCert { .. }), "{e}");
    }
}
