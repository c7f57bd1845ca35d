//! Messages exchanged over the agent channel.
//!
//! Each direction has its own enum, so a frame that is valid in one direction
//! cannot be confused with one of the other. Both are encoded as CBOR with
//! serde's externally tagged representation (`{"Ready": {...}}` or `"PowerOff"`).

use serde::{Deserialize, Serialize};

/// Guest → launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMessage {
    /// The agent is up and listening on the channel.
    Ready {
        /// `CARGO_PKG_VERSION` of the agent that sent it.
        agent_version: String,
        /// Time since the guest kernel booted (CLOCK_BOOTTIME), in milliseconds.
        uptime_ms: u64,
    },
}

/// Launcher → guest. The host can ask only for availability functions; there
/// is deliberately no message that carries a command, a path or code to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// Flush file systems and power the VM off.
    PowerOff,
    /// Flush file systems and reboot the VM.
    Reboot,
}
