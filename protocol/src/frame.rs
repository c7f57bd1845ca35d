//! Length-prefixed CBOR framing with resynchronisation.

use serde::{de::DeserializeOwned, Serialize};
use std::collections::VecDeque;
use std::marker::PhantomData;

/// Largest accepted payload (the CBOR part of a frame), in bytes.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

const HEADER_LEN: usize = 4;

/// Errors of the sending side.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The message does not fit in one frame.
    #[error(
        "message encodes to {0} bytes, more than the {MAX_FRAME_LEN}-byte frame limit; split it"
    )]
    TooLarge(usize),
    /// CBOR serialisation failed (a bug in the message type).
    #[error("could not encode message as CBOR: {0}")]
    Encode(String),
}

/// Encodes `msg` into one frame (header + CBOR payload).
///
/// ```
/// use tellus_protocol::{encode_frame, FrameDecoder, Decoded, HostMessage};
/// let bytes = encode_frame(&HostMessage::PowerOff).unwrap();
/// let mut dec = FrameDecoder::<HostMessage>::new();
/// dec.push(&bytes);
/// assert_eq!(dec.next(), Some(Decoded::Message(HostMessage::PowerOff)));
/// ```
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut payload = Vec::new();
    ciborium::into_writer(msg, &mut payload).map_err(|e| FrameError::Encode(e.to_string()))?;
    if payload.is_empty() || payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge(payload.len()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Why the decoder skipped bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// A header announced a zero-length payload or one larger than [`MAX_FRAME_LEN`].
    BadLength(u32),
    /// A complete frame whose payload is not a valid message of the expected type.
    InvalidPayload,
    /// A complete frame holding one well-formed CBOR item that names a
    /// message this side does not know (e.g. a command), or a known one in
    /// the wrong shape: rejected whole, never acted on. The name is cut to 32 printable ASCII characters.
    UnknownMessage(String),
    /// Bytes in front of a valid frame that did not form a frame themselves.
    Garbage,
    /// The buffer was full without a decodable frame in it.
    Overflow,
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DropReason::BadLength(n) => {
                write!(f, "frame header announces {n} bytes (allowed: 1..={MAX_FRAME_LEN})")
            }
            DropReason::InvalidPayload => f.write_str("frame payload is not a valid message"),
            DropReason::UnknownMessage(name) => {
                write!(f, "message {name:?} rejected: not one this side knows, or not in its shape")
            }
            DropReason::Garbage => f.write_str("bytes that do not form a frame"),
            DropReason::Overflow => f.write_str("buffer full without a valid frame"),
        }
    }
}

/// One result of [`FrameDecoder::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A valid message.
    Message(T),
    /// `bytes` bytes were discarded for `reason`; decoding goes on after them.
    Dropped { bytes: usize, reason: DropReason },
}

/// Incremental, resynchronising decoder for a hostile byte stream.
///
/// Feed bytes with [`push`](Self::push), take results with [`next`](Self::next)
/// until it returns `None`. The decoder holds at most `2 * (MAX_FRAME_LEN + 4)`
/// bytes; a peer that sends more without forming a frame loses the excess.
///
/// Resynchronisation: at the head of the buffer the decoder expects a header.
/// A header with an impossible length, or a complete frame whose payload does
/// not decode, costs one byte and the scan moves on. A plausible header whose
/// payload has not fully arrived is *not* trusted blindly: if a complete valid
/// frame already starts further on, the bytes before it are dropped as garbage,
/// so a stray length prefix cannot stall the channel.
pub struct FrameDecoder<T> {
    buf: VecDeque<u8>,
    overflowed: usize,
    _t: PhantomData<fn() -> T>,
}

const BUF_CAP: usize = 2 * (MAX_FRAME_LEN + HEADER_LEN);

impl<T: DeserializeOwned> Default for FrameDecoder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: DeserializeOwned> FrameDecoder<T> {
    /// An empty decoder.
    pub fn new() -> Self {
        Self { buf: VecDeque::new(), overflowed: 0, _t: PhantomData }
    }

    /// Appends received bytes. If the caller pushes more than the buffer
    /// holds without calling `next`, the oldest bytes are discarded and the
    /// next call to `next` reports them as [`DropReason::Overflow`].
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend(data);
        if self.buf.len() > BUF_CAP {
            let excess = self.buf.len() - BUF_CAP;
            self.buf.drain(..excess);
            self.overflowed += excess;
        }
    }

    /// Number of buffered, not yet decoded bytes.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Next message or drop report, or `None` when more bytes are needed.
    #[allow(clippy::should_implement_trait)] // not an Iterator: `None` means "feed me", not "done"
    pub fn next(&mut self) -> Option<Decoded<T>> {
        if self.overflowed > 0 {
            let bytes = std::mem::take(&mut self.overflowed);
            return Some(Decoded::Dropped { bytes, reason: DropReason::Overflow });
        }
        self.buf.make_contiguous();
        if self.buf.len() < HEADER_LEN {
            return None;
        }
        let (buf, _) = self.buf.as_slices();
        match try_frame::<T>(buf) {
            Attempt::Frame(msg, used) => {
                self.buf.drain(..used);
                Some(Decoded::Message(msg))
            }
            Attempt::Bad(reason) => Some(self.drop_front(1, reason)),
            Attempt::Unknown(name, used) => {
                Some(self.drop_front(used, DropReason::UnknownMessage(name)))
            }
            Attempt::Incomplete => {
                // A plausible header waits for its payload. If a complete valid
                // frame already follows, the header was garbage.
                if let Some(skip) = (1..buf.len().saturating_sub(HEADER_LEN))
                    .find(|&k| matches!(try_frame::<T>(&buf[k..]), Attempt::Frame(..)))
                {
                    return Some(self.drop_front(skip, DropReason::Garbage));
                }
                if buf.len() >= BUF_CAP {
                    // Cannot happen for a well-formed header (it completes
                    // before BUF_CAP); drop the head so the scan progresses.
                    return Some(self.drop_front(1, DropReason::Overflow));
                }
                None
            }
        }
    }

    fn drop_front(&mut self, n: usize, reason: DropReason) -> Decoded<T> {
        // Coalesce: keep dropping one byte at a time while the head stays bad
        // for the same kind of reason, so one garbage run is one report.
        let mut dropped = n;
        self.buf.drain(..n);
        if n == 1 {
            loop {
                self.buf.make_contiguous();
                let (buf, _) = self.buf.as_slices();
                if buf.len() < HEADER_LEN {
                    break;
                }
                match try_frame::<T>(buf) {
                    Attempt::Bad(_) => {
                        self.buf.pop_front();
                        dropped += 1;
                    }
                    _ => break,
                }
            }
        }
        Decoded::Dropped { bytes: dropped, reason }
    }
}

enum Attempt<T> {
    Frame(T, usize),
    /// A well-formed CBOR item of the frame's exact length that is not a `T`.
    Unknown(String, usize),
    Bad(DropReason),
    Incomplete,
}

fn try_frame<T: DeserializeOwned>(buf: &[u8]) -> Attempt<T> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Attempt::Incomplete;
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let n = len as usize;
    if n == 0 || n > MAX_FRAME_LEN {
        return Attempt::Bad(DropReason::BadLength(len));
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + n) else {
        return Attempt::Incomplete;
    };
    let mut reader = payload;
    match ciborium::from_reader::<T, _>(&mut reader) {
        // The payload must be exactly one message, nothing after it.
        Ok(msg) if reader.is_empty() => Attempt::Frame(msg, HEADER_LEN + n),
        _ => match unknown_message_name(payload) {
            Some(name) => Attempt::Unknown(name, HEADER_LEN + n),
            None => Attempt::Bad(DropReason::InvalidPayload),
        },
    }
}

/// The name of a message-shaped CBOR item (`"Name"` or `{"Name": …}`, the
/// externally tagged enum form) that is exactly `payload`; `None` when the
/// payload is not one well-formed item of that shape. ciborium bounds the
/// nesting depth it decodes.
fn unknown_message_name(payload: &[u8]) -> Option<String> {
    let mut reader = payload;
    let value: ciborium::Value = ciborium::from_reader(&mut reader).ok()?;
    if !reader.is_empty() {
        return None;
    }
    let name = match &value {
        ciborium::Value::Text(t) => t,
        ciborium::Value::Map(m) => match m.as_slice() {
            [(ciborium::Value::Text(t), _)] => t,
            _ => return None,
        },
        _ => return None,
    };
    Some(name.chars().filter(|c| c.is_ascii_graphic()).take(32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GuestMessage, HostMessage};

    fn ready() -> GuestMessage {
        GuestMessage::Ready { agent_version: "0.1.0".into(), uptime_ms: 1234 }
    }

    fn drain<T: DeserializeOwned>(d: &mut FrameDecoder<T>) -> (Vec<T>, usize) {
        let mut msgs = Vec::new();
        let mut dropped = 0;
        while let Some(x) = d.next() {
            match x {
                Decoded::Message(m) => msgs.push(m),
                Decoded::Dropped { bytes, .. } => dropped += bytes,
            }
        }
        (msgs, dropped)
    }

    #[test]
    fn round_trip_both_directions() {
        let mut d = FrameDecoder::<GuestMessage>::new();
        d.push(&encode_frame(&ready()).unwrap());
        assert_eq!(d.next(), Some(Decoded::Message(ready())));
        assert_eq!(d.next(), None);
        let mut h = FrameDecoder::<HostMessage>::new();
        h.push(&encode_frame(&HostMessage::Reboot).unwrap());
        assert_eq!(h.next(), Some(Decoded::Message(HostMessage::Reboot)));
    }

    #[test]
    fn byte_at_a_time() {
        let mut d = FrameDecoder::<GuestMessage>::new();
        let f = encode_frame(&ready()).unwrap();
        let mut got = Vec::new();
        for b in &f {
            d.push(std::slice::from_ref(b));
            let (m, dropped) = drain(&mut d);
            assert_eq!(dropped, 0);
            got.extend(m);
        }
        assert_eq!(got, vec![ready()]);
    }

    #[test]
    fn garbage_then_frame_resyncs() {
        let mut d = FrameDecoder::<GuestMessage>::new();
        d.push(b"\xff\xfe garbage from a confused guest \x00\x01");
        d.push(&encode_frame(&ready()).unwrap());
        let (msgs, dropped) = drain(&mut d);
        assert_eq!(msgs, vec![ready()]);
        assert!(dropped > 0);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversized_header_is_dropped() {
        let mut d = FrameDecoder::<GuestMessage>::new();
        d.push(&(1u32 << 20).to_be_bytes());
        d.push(&[0xa5; 1000]);
        d.push(&encode_frame(&ready()).unwrap());
        let first = d.next();
        assert!(matches!(
            first,
            Some(Decoded::Dropped { reason: DropReason::BadLength(1_048_576), .. })
        ));
        let (msgs, _) = drain(&mut d);
        assert_eq!(msgs, vec![ready()]);
    }

    #[test]
    fn stray_plausible_header_does_not_stall() {
        // A header claiming 4000 bytes, never completed, followed by a real frame.
        let mut d = FrameDecoder::<GuestMessage>::new();
        d.push(&4000u32.to_be_bytes());
        d.push(&encode_frame(&ready()).unwrap());
        let (msgs, dropped) = drain(&mut d);
        assert_eq!(msgs, vec![ready()]);
        assert_eq!(dropped, 4);
    }

    #[test]
    fn wrong_direction_payload_is_invalid() {
        let mut d = FrameDecoder::<GuestMessage>::new();
        d.push(&encode_frame(&HostMessage::PowerOff).unwrap());
        let (msgs, dropped) = drain(&mut d);
        assert!(msgs.is_empty());
        assert!(dropped > 0);
    }

    /// A command-shaped frame (what a hostile host might send) is rejected
    /// whole and named, and the next frame still decodes.
    #[test]
    fn unknown_message_is_rejected_whole_and_named() {
        #[derive(serde::Serialize)]
        enum Evil {
            Exec { argv: Vec<String> },
        }
        let mut d = FrameDecoder::<HostMessage>::new();
        d.push(&encode_frame(&Evil::Exec { argv: vec!["/bin/sh".into()] }).unwrap());
        d.push(&encode_frame(&HostMessage::PowerOff).unwrap());
        let first = d.next().unwrap();
        assert!(
            matches!(&first, Decoded::Dropped { reason: DropReason::UnknownMessage(n), .. } if n == "Exec"),
            "{first:?}"
        );
        assert_eq!(d.next(), Some(Decoded::Message(HostMessage::PowerOff)));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn trailing_bytes_in_payload_are_invalid() {
        let mut payload = Vec::new();
        ciborium::into_writer(&ready(), &mut payload).unwrap();
        payload.push(0);
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend(payload);
        let mut d = FrameDecoder::<GuestMessage>::new();
        d.push(&f);
        let (msgs, _) = drain(&mut d);
        assert!(msgs.is_empty());
    }

    #[test]
    fn buffer_stays_bounded_under_flood() {
        let mut d = FrameDecoder::<GuestMessage>::new();
        // Plausible header then a flood of bytes that never form a frame.
        d.push(&60_000u32.to_be_bytes());
        for _ in 0..40 {
            d.push(&[0x7f; 8192]);
            let _ = drain(&mut d);
            assert!(d.buffered() <= BUF_CAP);
        }
        d.push(&encode_frame(&ready()).unwrap());
        let (msgs, _) = drain(&mut d);
        assert_eq!(msgs, vec![ready()]);
    }

    #[test]
    fn push_without_next_is_bounded_and_reported() {
        let mut d = FrameDecoder::<GuestMessage>::new();
        d.push(&vec![0u8; BUF_CAP + 10]);
        assert_eq!(d.buffered(), BUF_CAP);
        assert_eq!(d.next(), Some(Decoded::Dropped { bytes: 10, reason: DropReason::Overflow }));
    }

    #[test]
    fn too_large_message_is_refused() {
        let big = GuestMessage::Ready { agent_version: "x".repeat(MAX_FRAME_LEN), uptime_ms: 0 };
        assert!(matches!(encode_frame(&big), Err(FrameError::TooLarge(_))));
    }
}
