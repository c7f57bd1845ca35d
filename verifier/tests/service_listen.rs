//! The real listener: plain HTTP on loopback, TLS, and the refusals.

use std::sync::Arc;
use tellus_verifier::config::Config;
use tellus_verifier::service::{bind, ServiceError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(dir: &tempfile::TempDir) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.path().join("state"),
        insecure_http: true,
        ..Config::default()
    }
}

async fn http_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    path: &str,
) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn plain_http_on_loopback_serves_healthz_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = bind(config(&dir)).await.unwrap();
    let addr = server.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    let r = http_get(tokio::net::TcpStream::connect(addr).await.unwrap(), "/healthz").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("ok"), "{r}");
    let r = http_get(tokio::net::TcpStream::connect(addr).await.unwrap(), "/metrics").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains("tellus_verifier_requests_total{route=\"/healthz\",status=\"200\"} 1"),
        "{r}"
    );
    // The admin token was generated, mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(dir.path().join("state/admin-token")).unwrap().permissions().mode();
    assert_eq!(m & 0o777, 0o600);
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn refuses_insecure_http_off_loopback_and_no_tls() {
    let dir = tempfile::tempdir().unwrap();
    let c = Config { listen: "0.0.0.0:0".parse().unwrap(), ..config(&dir) };
    let e = bind(c).await.err().expect("must refuse");
    assert!(matches!(e, ServiceError::InsecureNotLoopback(_)), "{e}");
    assert!(e.to_string().contains("loopback"), "{e}");
    let c = Config { insecure_http: false, ..config(&dir) };
    let e = bind(c).await.err().expect("must refuse");
    assert!(matches!(e, ServiceError::NoTls), "{e}");
    let c = Config { tls_cert: Some("/nonexistent".into()), ..config(&dir) };
    assert!(matches!(bind(c).await.err(), Some(ServiceError::TlsHalfConfigured)));
    // Refused before anything was written.
    assert!(!dir.path().join("state").exists());
}

#[tokio::test]
async fn tls_serves_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.path().join("tls.crt"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    let c = Config {
        insecure_http: false,
        tls_cert: Some(dir.path().join("tls.crt")),
        tls_key: Some(dir.path().join("tls.key")),
        ..config(&dir)
    };
    let server = bind(c).await.unwrap();
    let addr = server.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let r = http_get(tls, "/healthz").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("ok"), "{r}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let r = http_get(tokio::net::TcpStream::connect(addr).await.unwrap(), "/healthz").await;
    assert!(!r.contains("200"), "{r}");
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}
