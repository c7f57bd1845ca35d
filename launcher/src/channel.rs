//! Host side of the agent channel. Every byte from the guest is hostile: the
//! decoder bounds and resynchronises, and this module only forwards decoded
//! messages and drop reports to the run loop.

use std::io::{Read, Write};
use tellus_protocol::{encode_frame, Decoded, DropReason, FrameDecoder, GuestMessage, HostMessage};

/// What the channel reader reports.
#[derive(Debug)]
pub enum ChannelEvent {
    Message(GuestMessage),
    Dropped { bytes: usize, reason: DropReason },
    Closed,
}

/// Reads the guest → host stream until EOF, decoding frames.
pub fn spawn_reader(
    mut rx: Box<dyn Read + Send>,
    mut sink: impl FnMut(ChannelEvent) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("agent-channel".into())
        .spawn(move || {
            let mut dec = FrameDecoder::<GuestMessage>::new();
            let mut buf = [0u8; 8192];
            loop {
                let n = match rx.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                dec.push(&buf[..n]);
                while let Some(item) = dec.next() {
                    sink(match item {
                        Decoded::Message(m) => ChannelEvent::Message(m),
                        Decoded::Dropped { bytes, reason } => {
                            ChannelEvent::Dropped { bytes, reason }
                        }
                    });
                }
            }
            sink(ChannelEvent::Closed);
        })
        .expect("spawning a thread at start-up")
}

/// Host → guest sender.
pub struct ChannelWriter(pub Box<dyn Write + Send>);

impl ChannelWriter {
    /// Sends one message (the backend's write timeout bounds the wait).
    pub fn send(&mut self, msg: HostMessage) -> std::io::Result<()> {
        let frame = encode_frame(&msg).map_err(std::io::Error::other)?;
        self.0.write_all(&frame)?;
        self.0.flush()
    }
}
