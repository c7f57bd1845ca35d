//! The availability-only control socket of a running VM.
//!
//! One JSON request per line, one JSON response per line, over a UNIX socket
//! created with mode 0600. The request set is closed: `status`, `shutdown`,
//! `reboot`. There is no pass-through to QMP or the VMM, and nothing that
//! reads or changes guest state.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;
/// How long a client may take to send its request, and the launcher to answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a control client can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Print the VM's state.
    Status,
    /// Ask the guest to power off (agent, then ACPI, then stop).
    Shutdown,
    /// Reboot the guest (agent, else hard reset).
    Reboot,
}

/// The answer to a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VmStatus>,
}

/// What `status` reports: availability facts only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmStatus {
    /// VM identity (`--name`).
    pub name: String,
    /// `running`, `shutting-down` or `rebooting`.
    pub state: String,
    pub agent_ready: bool,
    /// Boots so far (1 + resets).
    pub boots: u32,
    pub backend: String,
    pub accel: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Milliseconds since `tellus run` started.
    pub uptime_ms: u64,
    pub vmm_pid: Option<u32>,
}

/// Control-socket failures.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "control socket {path} is in use by a running launcher; choose another --control-socket"
    )]
    InUse { path: PathBuf },
    #[error("cannot create control socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("cannot reach control socket {path}: {source}; is `tellus run` still running?")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the launcher sent an invalid response: {0}")]
    BadResponse(String),
}

/// A request from a client together with the way back to it.
pub type Pending = (ControlRequest, mpsc::Sender<ControlResponse>);

/// The listening socket; removed again when dropped.
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` (removing a stale socket nobody listens on) and serves
    /// requests on a background thread, handing each to `sink`.
    pub fn start(
        path: &Path,
        sink: impl Fn(Pending) + Send + Sync + Clone + 'static,
    ) -> Result<Self, ControlError> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse { path: path.into() });
            }
            let _ = std::fs::remove_file(path);
        }
        let bind = |source| ControlError::Bind { path: path.into(), source };
        let listener = UnixListener::bind(path).map_err(bind)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
        std::thread::Builder::new().name("control".into()).spawn(move || {
            for conn in listener.incoming().flatten() {
                let sink = sink.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || serve(conn, sink));
            }
        })?;
        Ok(ControlServer { path: path.into() })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, sink: impl Fn(Pending)) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let mut line = Vec::new();
    let Ok(reader) = conn.try_clone() else { return };
    if BufReader::new(reader).take(MAX_REQUEST).read_until(b'\n', &mut line).is_err() {
        return;
    }
    let response = match serde_json::from_slice::<ControlRequest>(&line) {
        Ok(req) => {
            let (tx, rx) = mpsc::channel();
            sink((req, tx));
            rx.recv_timeout(IO_TIMEOUT).unwrap_or_else(|_| ControlResponse {
                ok: false,
                message: "the launcher did not answer in time; retry".into(),
                status: None,
            })
        }
        Err(e) => ControlResponse {
            ok: false,
            message: format!(
                "invalid request ({e}); send one line of JSON: {{\"op\":\"status\"|\"shutdown\"|\"reboot\"}}"
            ),
            status: None,
        },
    };
    let mut conn = conn;
    if let Ok(mut text) = serde_json::to_string(&response) {
        text.push('\n');
        let _ = conn.write_all(text.as_bytes());
    }
}

/// Client side: sends one request and returns the response.
pub fn request(path: &Path, req: ControlRequest) -> Result<ControlResponse, ControlError> {
    let mut conn = UnixStream::connect(path)
        .map_err(|source| ControlError::Connect { path: path.into(), source })?;
    conn.set_read_timeout(Some(IO_TIMEOUT + Duration::from_secs(2)))?;
    let mut line = serde_json::to_string(&req).map_err(std::io::Error::other)?;
    line.push('\n');
    conn.write_all(line.as_bytes())?;
    let mut resp = Vec::new();
    BufReader::new(conn).take(1 << 20).read_until(b'\n', &mut resp)?;
    serde_json::from_slice(&resp).map_err(|e| ControlError::BadResponse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        assert_eq!(
            serde_json::to_string(&ControlRequest::Shutdown).unwrap(),
            r#"{"op":"shutdown"}"#
        );
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"savevm"}"#).is_err());
    }

    #[test]
    fn server_answers_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let _srv = ControlServer::start(&path, |(req, tx): Pending| {
            let _ =
                tx.send(ControlResponse { ok: true, message: format!("{req:?}"), status: None });
        })
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let r = request(&path, ControlRequest::Reboot).unwrap();
        assert!(r.ok && r.message == "Reboot");
        // A raw, unknown request gets a specific refusal.
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"{\"op\":\"migrate\"}\n").unwrap();
        let mut out = String::new();
        BufReader::new(c).read_line(&mut out).unwrap();
        let r: ControlResponse = serde_json::from_str(&out).unwrap();
        assert!(!r.ok && r.message.contains("invalid request"), "{}", r.message);
        // A second server on the same path is refused while the first lives.
        assert!(matches!(
            ControlServer::start(&path, |_: Pending| {}),
            Err(ControlError::InUse { .. })
        ));
    }
}
