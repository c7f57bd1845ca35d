//! `tellus-agent`: the guest side of the tellus agent channel.
//!
//! Runs as `/init` (PID 1) of the test initramfs, or as a service in a normal
//! guest. It announces itself with `Ready` and then obeys only the host's
//! availability requests (`PowerOff`, `Reboot`). It never executes anything it
//! receives: the message types have no field that could carry a command.
//!
//! Kernel command-line options it reads:
//! - `tellus.channel=/dev/ttyS1`: the channel device (default `/dev/ttyS1`, COM2).
//! - `tellus.oneshot`: power off right after announcing `Ready` (a boot check
//!   that needs no host request; later issues power off after the secrets).
//! - `tellus.test.channel_noise`: before `Ready`, write garbage and an
//!   oversized frame to the channel (used by the launcher's resync test; it
//!   only ever harms the guest's own channel).

mod channel;
mod system;

use std::io::Write;
use std::time::Duration;
use tellus_protocol::{Decoded, FrameDecoder, GuestMessage, HostMessage};

/// What can go wrong in the agent; every variant ends in a power-off when the
/// agent is PID 1 (an exiting PID 1 would panic the kernel).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot mount {target}: {source}")]
    Mount { target: &'static str, source: nix::Error },
    #[error(
        "cannot open agent channel {path}: {source} (is COM2 present? pass tellus.channel=DEV)"
    )]
    OpenChannel { path: String, source: nix::Error },
    #[error("cannot configure agent channel {path} as a raw serial line: {source}")]
    RawMode { path: String, source: nix::Error },
    #[error("agent channel I/O failed: {0}")]
    ChannelIo(#[from] std::io::Error),
    #[error("cannot encode a frame: {0}")]
    Frame(#[from] tellus_protocol::FrameError),
    #[error("cannot read the clock: {0}")]
    Clock(nix::Error),
}

fn main() {
    let pid1 = std::process::id() == 1;
    match run(pid1) {
        Ok(action) => system::finish(pid1, action),
        Err(e) => {
            println!("tellus-agent: error: {e}");
            if pid1 {
                system::finish(true, HostMessage::PowerOff);
            }
            std::process::exit(1);
        }
    }
}

/// Runs until the host asks for a power action; returns that action.
fn run(pid1: bool) -> Result<HostMessage, AgentError> {
    if pid1 {
        system::mount_basics()?;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let opts = Options::from_cmdline(&cmdline);
    let mut chan = channel::open(&opts.channel)?;
    if opts.channel_noise {
        channel::write_noise(&mut chan)?;
    }
    let ready = GuestMessage::Ready {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: system::uptime_ms()?,
    };
    chan.write_all(&tellus_protocol::encode_frame(&ready)?)?;
    chan.flush()?;
    println!("tellus-agent {}: ready on {}", env!("CARGO_PKG_VERSION"), opts.channel);
    if opts.oneshot {
        println!("tellus-agent: tellus.oneshot: powering off");
        return Ok(HostMessage::PowerOff);
    }

    let mut decoder = FrameDecoder::<HostMessage>::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match std::io::Read::read(&mut chan, &mut buf) {
            Ok(0) => {
                // A serial line has no EOF; a hang-up means the host end is
                // gone for now. Poll gently instead of spinning.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        decoder.push(&buf[..n]);
        while let Some(item) = decoder.next() {
            match item {
                Decoded::Message(m) => {
                    println!("tellus-agent: host requests {m:?}");
                    return Ok(m);
                }
                Decoded::Dropped { bytes, reason } => {
                    println!("tellus-agent: dropped {bytes} bytes from the host: {reason}");
                }
            }
        }
    }
}

/// Agent options from the kernel command line.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    channel: String,
    channel_noise: bool,
    oneshot: bool,
}

impl Options {
    fn from_cmdline(cmdline: &str) -> Self {
        let mut o = Options { channel: "/dev/ttyS1".into(), channel_noise: false, oneshot: false };
        for word in cmdline.split_ascii_whitespace() {
            if let Some(v) = word.strip_prefix("tellus.channel=") {
                o.channel = v.to_string();
            } else if word == "tellus.test.channel_noise" {
                o.channel_noise = true;
            } else if word == "tellus.oneshot" {
                o.oneshot = true;
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_options() {
        let o = Options::from_cmdline("console=ttyS0 quiet\n");
        let default =
            Options { channel: "/dev/ttyS1".into(), channel_noise: false, oneshot: false };
        assert_eq!(o, default);
        let o = Options::from_cmdline(
            "tellus.channel=/dev/hvc1 tellus.test.channel_noise tellus.oneshot",
        );
        assert_eq!(o, Options { channel: "/dev/hvc1".into(), channel_noise: true, oneshot: true });
    }
}
