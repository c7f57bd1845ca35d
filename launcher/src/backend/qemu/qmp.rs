//! The launcher's QMP client.
//!
//! The launcher alone holds QEMU's QMP socket, and this client can issue only
//! the commands in [`QmpCommand`]: capability negotiation, starting the vCPUs
//! and the power functions. There is no way to send an arbitrary command, so
//! no code path can reach `human-monitor-command`, `pmemsave`, `savevm`,
//! `migrate`, `gdbserver` or any other introspection, intervention, snapshot
//! or migration command.

use super::super::{EventSink, VmmEvent};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

/// Longest QMP line accepted from QEMU.
const MAX_LINE: u64 = 1 << 20;
/// How long a command may take to be answered.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Every QMP command the launcher can issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QmpCommand {
    /// Leave capability-negotiation mode (required once after the greeting).
    Capabilities,
    /// Start the vCPUs (QEMU runs with `-S`).
    Cont,
    /// ACPI power button.
    SystemPowerdown,
    /// Hard reset.
    SystemReset,
    /// Stop the VM and QEMU.
    Quit,
}

impl QmpCommand {
    /// All variants: the complete set of QMP commands tellus can send.
    pub const ALL: [QmpCommand; 5] = [
        QmpCommand::Capabilities,
        QmpCommand::Cont,
        QmpCommand::SystemPowerdown,
        QmpCommand::SystemReset,
        QmpCommand::Quit,
    ];

    /// The QMP name of the command.
    pub fn name(self) -> &'static str {
        match self {
            QmpCommand::Capabilities => "qmp_capabilities",
            QmpCommand::Cont => "cont",
            QmpCommand::SystemPowerdown => "system_powerdown",
            QmpCommand::SystemReset => "system_reset",
            QmpCommand::Quit => "quit",
        }
    }
}

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("QEMU sent no QMP greeting")]
    NoGreeting,
    #[error("QEMU did not answer '{0}' within {REPLY_TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("QEMU closed the QMP connection while '{0}' was pending")]
    Closed(&'static str),
    #[error("QEMU refused '{command}': {desc}")]
    Refused { command: &'static str, desc: String },
}

/// A connected, negotiated QMP session.
pub struct QmpClient {
    writer: UnixStream,
    replies: Receiver<Result<(), String>>,
}

impl QmpClient {
    /// Reads the greeting, starts the reader thread (events go to `events`)
    /// and negotiates capabilities.
    pub fn connect(stream: UnixStream, events: EventSink) -> Result<Self, QmpError> {
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let greeting = read_line(&mut reader)?.ok_or(QmpError::NoGreeting)?;
        if !greeting.get("QMP").is_some_and(|v| v.is_object()) {
            return Err(QmpError::NoGreeting);
        }
        reader.get_ref().set_read_timeout(None)?;
        let (tx, replies) = mpsc::channel();
        // Reading an open socket needs no capability.
        crate::backend::process::try_spawn_unprivileged("qmp-reader", move || {
            reader_loop(reader, tx, events)
        })?;
        let mut c = QmpClient { writer: stream, replies };
        c.execute(QmpCommand::Capabilities)?;
        Ok(c)
    }

    /// Sends `cmd` and waits for its reply.
    pub fn execute(&mut self, cmd: QmpCommand) -> Result<(), QmpError> {
        let line = serde_json::json!({ "execute": cmd.name() }).to_string() + "\n";
        self.writer.write_all(line.as_bytes())?;
        match self.replies.recv_timeout(REPLY_TIMEOUT) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(desc)) => Err(QmpError::Refused { command: cmd.name(), desc }),
            // QEMU may close the socket before answering `quit`.
            Err(RecvTimeoutError::Disconnected) if cmd == QmpCommand::Quit => Ok(()),
            Err(RecvTimeoutError::Disconnected) => Err(QmpError::Closed(cmd.name())),
            Err(RecvTimeoutError::Timeout) => Err(QmpError::Timeout(cmd.name())),
        }
    }
}

fn read_line<R: Read>(r: &mut BufReader<R>) -> Result<Option<serde_json::Value>, QmpError> {
    let mut line = Vec::new();
    let n = r.by_ref().take(MAX_LINE).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    // A malformed line is skipped, not fatal: QEMU is our child, but its
    // output is still parsed defensively.
    Ok(Some(serde_json::from_slice(&line).unwrap_or(serde_json::Value::Null)))
}

fn reader_loop<R: Read>(
    mut reader: BufReader<R>,
    replies: mpsc::Sender<Result<(), String>>,
    events: EventSink,
) {
    while let Ok(Some(msg)) = read_line(&mut reader) {
        if let Some(ev) = msg.get("event").and_then(|e| e.as_str()) {
            let reason = msg
                .pointer("/data/reason")
                .and_then(|r| r.as_str())
                .unwrap_or("unknown")
                .to_string();
            match ev {
                "SHUTDOWN" => events(VmmEvent::Shutdown { reason }),
                "RESET" => events(VmmEvent::Reset { reason }),
                _ => {}
            }
        } else if msg.get("return").is_some() {
            let _ = replies.send(Ok(()));
        } else if let Some(err) = msg.get("error") {
            let desc = err.get("desc").and_then(|d| d.as_str()).unwrap_or("unknown error");
            let _ = replies.send(Err(desc.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_launcher_can_issue_exactly_the_power_commands() {
        let names: BTreeSet<_> = QmpCommand::ALL.iter().map(|c| c.name()).collect();
        let expected: BTreeSet<_> =
            ["qmp_capabilities", "cont", "system_powerdown", "system_reset", "quit"].into();
        assert_eq!(names, expected);
    }

    /// A scripted QMP peer over a socketpair: checks the wire exchange and
    /// event delivery without QEMU (the real thing is in tests/qemu_boot.rs).
    #[test]
    fn negotiates_and_delivers_events() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let peer = std::thread::spawn(move || {
            theirs.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").unwrap();
            let mut r = BufReader::new(theirs.try_clone().unwrap());
            let mut cmds = Vec::new();
            for _ in 0..2 {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                cmds.push(l.clone());
                if l.contains("system_reset") {
                    theirs.write_all(b"{\"event\": \"RESET\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-system-reset\"}}\n").unwrap();
                    theirs
                        .write_all(
                            b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n",
                        )
                        .unwrap();
                } else {
                    theirs.write_all(b"not json\n{\"return\": {}}\n").unwrap();
                }
            }
            cmds
        });
        let sink: EventSink = Arc::new(move |e| s2.lock().unwrap().push(format!("{e:?}")));
        let mut c = QmpClient::connect(ours, sink).unwrap();
        let err = c.execute(QmpCommand::SystemReset).unwrap_err();
        assert!(matches!(err, QmpError::Refused { command: "system_reset", .. }), "{err}");
        let cmds = peer.join().unwrap();
        assert!(cmds[0].contains("qmp_capabilities"));
        assert!(cmds[1].contains("system_reset"));
        assert!(seen.lock().unwrap()[0].contains("host-qmp-system-reset"));
    }
}
