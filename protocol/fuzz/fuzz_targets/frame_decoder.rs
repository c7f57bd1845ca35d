//! The agent-channel decoder on hostile guest bytes: never panics, stays
//! bounded, and a valid frame after any garbage is still decoded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_protocol::{encode_frame, Decoded, FrameDecoder, GuestMessage, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let mut d = FrameDecoder::<GuestMessage>::new();
    // Feed in uneven chunks, as a serial line would deliver them.
    for chunk in data.chunks(1 + data.first().copied().unwrap_or(0) as usize) {
        d.push(chunk);
        while d.next().is_some() {}
        assert!(d.buffered() <= 2 * (MAX_FRAME_LEN + 4));
    }
    let ready = GuestMessage::Ready { agent_version: "fuzz".into(), uptime_ms: 7 };
    d.push(&encode_frame(&ready).expect("small message"));
    // Flood past any half-announced frame so the decoder must resynchronise.
    let mut got = false;
    for _ in 0..3 {
        while let Some(x) = d.next() {
            if x == Decoded::Message(ready.clone()) {
                got = true;
            }
        }
        if got {
            break;
        }
        d.push(&encode_frame(&ready).expect("small message"));
    }
    assert!(got, "a valid frame after garbage was never decoded");
});
