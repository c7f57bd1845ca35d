//! A real `tellus-verifier serve` process for tests: plain HTTP
//! (`--insecure-http`) on a free loopback port, SQLite state in a private
//! temporary directory, the EK CA a copy of a swtpm local CA, its log
//! (`RUST_LOG=info`) captured to a file, killed when dropped.
//!
//! This crate does not depend on the verifier crate: the caller passes the
//! binary (cargo builds a dev-dependency's library but not its binaries, so
//! each test locates it with its own `cargo build`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// How long [`Verifier::start`] waits for `GET /healthz` to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `tellus-verifier serve`; killed on drop.
pub struct Verifier {
    child: Child,
    /// The `tellus-verifier` binary it runs (also for [`Verifier::refs_add`]).
    pub bin: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    /// Its `--state-dir` (SQLite database, `admin-token`, signing key).
    pub state: PathBuf,
    /// Its `--config` file (`ek_ca_dir` only).
    pub config: PathBuf,
    /// The file its stderr (the log) goes to.
    pub log: PathBuf,
    /// The temporary directory holding all of the above; free for the test.
    pub dir: tempfile::TempDir,
}

impl Verifier {
    /// Starts `bin serve` trusting the EK CA in `ek_ca` (a swtpm local CA
    /// directory: `issuercert.pem` and `swtpm-localca-rootca-cert.pem`) and
    /// waits until `GET /healthz` answers 200. Panics with the verifier's
    /// log when it exits or does not answer within 30 s.
    pub fn start(bin: &Path, ek_ca: &Path) -> Verifier {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        let ca_dir = dir.path().join("ek-ca");
        std::fs::create_dir_all(&ca_dir).expect("create the EK CA dir");
        for f in ["issuercert.pem", "swtpm-localca-rootca-cert.pem"] {
            std::fs::copy(ek_ca.join(f), ca_dir.join(f))
                .unwrap_or_else(|e| panic!("copy {f} from {}: {e}", ek_ca.display()));
        }
        let config = dir.path().join("verifier.toml");
        std::fs::write(&config, format!("ek_ca_dir = {:?}\n", ca_dir.display().to_string()))
            .expect("write verifier.toml");
        let log = dir.path().join("verifier.log");
        let port = free_port();
        let child = Command::new(bin)
            .args(["serve", "--insecure-http", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create verifier.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut v = Verifier { child, bin: bin.to_owned(), port, state, config, log, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = v.child.try_wait().expect("wait for tellus-verifier") {
                panic!("tellus-verifier exited ({status}):\n{}", v.log_text());
            }
            if matches!(v.request("GET", "/healthz", None, b""), Ok((200, _))) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "tellus-verifier did not answer /healthz on {port}:\n{}",
                v.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The verifier's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The admin token the verifier wrote into its state directory.
    pub fn admin_token(&self) -> String {
        let path = self.state.join("admin-token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// Minimal HTTP/1.1 request with the admin token; (status, body).
    pub fn admin(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        self.request(method, path, Some(&self.admin_token()), body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Uploads a resource (admin route), failing the test unless it is
    /// accepted.
    pub fn upload(&self, resource: &str, secret: &[u8]) {
        let (status, body) = self.admin("POST", &format!("/kbs/v0/resource/{resource}"), secret);
        assert!((200..300).contains(&status), "upload of {resource}: HTTP {status} {body}");
    }

    /// `tellus-verifier refs add FILE`: loads `tellus measure predict
    /// --output json` as reference values (the verifier may be running:
    /// the command writes the same SQLite database).
    pub fn refs_add(&self, predict_json: &Path) -> Output {
        Command::new(&self.bin)
            .args(["refs", "add"])
            .arg(predict_json)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()))
    }

    /// One HTTP/1.1 exchange (`Connection: close`); (status, body), status
    /// 0 when the answer has no status line.
    fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )?;
        s.write_all(body)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let resp = String::from_utf8_lossy(&resp);
        let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
