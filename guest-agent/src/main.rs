//! `tellus-agent`: the guest side of the tellus agent channel.
//!
//! Runs as `/init` (PID 1) of the test initramfs, or as a service in a normal
//! guest. It announces itself with `Ready`; when its command line names
//! resources it asks the launcher to attest the VM and stores the secrets
//! the verifier releases (see `secrets`); then it obeys only the host's
//! availability requests (`PowerOff`, `Reboot`). It never executes anything
//! it receives: the message types have no field that could carry a command,
//! and a frame naming any other message (an `Exec`, say) is rejected whole
//! and logged.
//!
//! Kernel command-line options it reads:
//! - `tellus.channel=/dev/ttyS1`: the channel device (default `/dev/ttyS1`, COM2).
//! - `tellus.resources=repo/type/tag[,repo/type/tag...]`: resources to
//!   fetch after `Ready` (at most 16). The command line is measured, so the
//!   list is part of what the verifier attests.
//! - `tellus.oneshot`: power off once `Ready` is sent and the secrets (if
//!   any were asked for) are handled; a boot check that needs no host request.
//! - `tellus.test.channel_noise`: before `Ready`, write garbage and an
//!   oversized frame to the channel (used by the launcher's resync test; it
//!   only ever harms the guest's own channel).

mod channel;
mod secrets;
mod snp;
mod system;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use system::Power;
use tellus_protocol::{Decoded, FrameDecoder, GuestMessage, HostMessage, ResourcePath};

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
    #[error("cannot create the attestation key: {0}")]
    Key(tellus_protocol::jwe::JweError),
}

fn main() {
    let pid1 = std::process::id() == 1;
    match run(pid1) {
        Ok(action) => system::finish(pid1, action),
        Err(e) => {
            println!("tellus-agent: error: {e}");
            if pid1 {
                system::finish(true, Power::Off);
            }
            std::process::exit(1);
        }
    }
}

fn send(chan: &mut File, msg: &GuestMessage) -> Result<(), AgentError> {
    chan.write_all(&tellus_protocol::encode_frame(msg)?)?;
    chan.flush()?;
    Ok(())
}

/// The host's channel: decoded, checked messages; everything else logged
/// and dropped.
struct HostChannel {
    decoder: FrameDecoder<HostMessage>,
    buf: [u8; 4096],
}

impl HostChannel {
    /// Blocks until the next valid message from the host.
    fn next(&mut self, chan: &mut File) -> Result<HostMessage, AgentError> {
        loop {
            while let Some(item) = self.decoder.next() {
                match item {
                    Decoded::Message(m) => match m.validate() {
                        Ok(()) => return Ok(m),
                        Err(e) => println!("tellus-agent: rejected a host message: {e}"),
                    },
                    Decoded::Dropped { bytes, reason } => {
                        println!(
                            "tellus-agent: dropped {bytes} bytes from the host: {reason}; nothing executed"
                        );
                    }
                }
            }
            let n = match std::io::Read::read(chan, &mut self.buf) {
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
            self.decoder.push(&self.buf[..n]);
        }
    }
}

fn power_of(m: &HostMessage) -> Option<Power> {
    match m {
        HostMessage::PowerOff => Some(Power::Off),
        HostMessage::Reboot => Some(Power::Reboot),
        HostMessage::AttestResult(_) | HostMessage::AttestChallenge { .. } => None,
    }
}

/// Runs until the host asks for a power action; returns that action.
fn run(pid1: bool) -> Result<Power, AgentError> {
    if pid1 {
        system::mount_basics()?;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let opts = Options::from_cmdline(&cmdline);
    for e in &opts.errors {
        println!("tellus-agent: ignoring command-line option: {e}");
    }
    let mut chan = channel::open(&opts.channel)?;
    if opts.channel_noise {
        channel::write_noise(&mut chan)?;
    }
    let ready = GuestMessage::Ready {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: system::uptime_ms()?,
    };
    send(&mut chan, &ready)?;
    println!("tellus-agent {}: ready on {}", env!("CARGO_PKG_VERSION"), opts.channel);
    let mut host = HostChannel { decoder: FrameDecoder::new(), buf: [0; 4096] };

    if !opts.resources.is_empty() {
        let (pending, request) = secrets::request(&opts.resources)?;
        let tee_pubkey = match &request {
            GuestMessage::AttestRequest { tee_pubkey, .. } => Some(tee_pubkey.clone()),
            _ => None,
        };
        send(&mut chan, &request)?;
        println!(
            "tellus-agent: asked for {} resource(s), uptime {} ms",
            opts.resources.len(),
            system::uptime_ms()?
        );
        let result = loop {
            let m = host.next(&mut chan)?;
            if let Some(p) = power_of(&m) {
                println!("tellus-agent: host requests {m:?} before the attestation result");
                return Ok(p);
            }
            match m {
                HostMessage::AttestResult(r) => break r,
                // SEV-SNP: the guest attests itself; the launcher relays.
                HostMessage::AttestChallenge { nonce, additional_evidence } => {
                    let Some(key) = &tee_pubkey else { continue };
                    let answer = snp::answer_or_explain(
                        snp::SevGuest::open,
                        key,
                        &nonce,
                        &additional_evidence,
                    );
                    match &answer {
                        GuestMessage::SnpUnavailable { reason } => {
                            println!("tellus-agent: no SEV-SNP evidence: {reason}")
                        }
                        _ => println!("tellus-agent: SEV-SNP report bound to the KBS nonce sent"),
                    }
                    send(&mut chan, &answer)?;
                }
                _ => continue,
            }
        };
        let report = secrets::finish(pending, result, Path::new(secrets::SECRETS_DIR));
        println!("tellus-agent: secrets handled, uptime {} ms", system::uptime_ms()?);
        send(&mut chan, &report)?;
    }
    if opts.oneshot {
        println!("tellus-agent: tellus.oneshot: powering off");
        return Ok(Power::Off);
    }

    loop {
        let m = host.next(&mut chan)?;
        match power_of(&m) {
            Some(p) => {
                println!("tellus-agent: host requests {m:?}");
                return Ok(p);
            }
            None => println!("tellus-agent: ignoring an attestation message nobody asked for"),
        }
    }
}

/// Agent options from the kernel command line.
#[derive(Debug, PartialEq, Eq, Default)]
struct Options {
    channel: String,
    channel_noise: bool,
    oneshot: bool,
    resources: Vec<ResourcePath>,
    /// Options that were present but invalid (reported, then ignored).
    errors: Vec<String>,
}

impl Options {
    fn from_cmdline(cmdline: &str) -> Self {
        let mut o = Options { channel: "/dev/ttyS1".into(), ..Options::default() };
        for word in cmdline.split_ascii_whitespace() {
            if let Some(v) = word.strip_prefix("tellus.channel=") {
                o.channel = v.to_string();
            } else if let Some(v) = word.strip_prefix("tellus.resources=") {
                for r in v.split(',').filter(|r| !r.is_empty()) {
                    match ResourcePath::parse(r) {
                        Ok(p) if o.resources.contains(&p) => {}
                        Ok(_) if o.resources.len() == tellus_protocol::MAX_RESOURCES => {
                            o.errors.push(format!(
                                "more than {} resources; {r} left out",
                                tellus_protocol::MAX_RESOURCES
                            ));
                        }
                        Ok(p) => o.resources.push(p),
                        Err(e) => o.errors.push(e.to_string()),
                    }
                }
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
        let default = Options { channel: "/dev/ttyS1".into(), ..Options::default() };
        assert_eq!(o, default);
        let o = Options::from_cmdline(
            "tellus.channel=/dev/hvc1 tellus.test.channel_noise tellus.oneshot",
        );
        assert_eq!(
            o,
            Options {
                channel: "/dev/hvc1".into(),
                channel_noise: true,
                oneshot: true,
                ..Options::default()
            }
        );
    }

    #[test]
    fn cmdline_resources() {
        let o = Options::from_cmdline(
            "tellus.resources=default/key/a,bad/../x,default/key/a,,r/t/b tellus.oneshot",
        );
        let names: Vec<String> = o.resources.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["default/key/a", "r/t/b"]);
        assert_eq!(o.errors.len(), 1, "{:?}", o.errors);
        let many: Vec<String> = (0..20).map(|i| format!("r/t/{i}")).collect();
        let o = Options::from_cmdline(&format!("tellus.resources={}", many.join(",")));
        assert_eq!(o.resources.len(), tellus_protocol::MAX_RESOURCES);
        assert_eq!(o.errors.len(), 4);
    }
}
