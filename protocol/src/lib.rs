//! Wire types shared by the tellus guest agent, the launcher and the verifier.
//!
//! The guest ↔ launcher channel carries length-prefixed CBOR frames over the
//! second serial port (COM2, `/dev/ttyS1` in the guest):
//!
//! ```text
//! +----------------------+---------------------------+
//! | u32 big-endian len L | L bytes of CBOR (1..=64K) |
//! +----------------------+---------------------------+
//! ```
//!
//! Everything that arrives from the guest is hostile input: [`FrameDecoder`]
//! bounds every length, never allocates more than [`MAX_FRAME_LEN`] per frame,
//! reports what it drops and resynchronises on the next valid frame.
//!
//! [`GuestMessage::AttestRequest`] / [`HostMessage::AttestResult`] carry
//! attested secret release: the guest names the resources and its ephemeral
//! public key, the launcher relays the verifier's JWEs (or its denial), and
//! only the guest can decrypt them ([`jwe`], cargo feature `jwe`).
//!
//! [`TpmEvidence`] is the TPM evidence (KBS tee `tpm`) JSON that `tellus
//! quote` writes and the verifier checks.
//!
//! This crate is deliberately small: no async, no server dependencies, so the
//! static guest agent can link it.

pub mod enrollment;
mod frame;
#[cfg(feature = "jwe")]
pub mod jwe;
mod messages;
mod tpm_evidence;

pub use frame::{encode_frame, Decoded, DropReason, FrameDecoder, FrameError, MAX_FRAME_LEN};
pub use messages::{
    AttestResult, FailedSecret, GuestMessage, HostMessage, MessageError, ReleasedResource,
    ResourcePath, SnpCert, StoredSecret, TeePubKey, MAX_ADDITIONAL_EVIDENCE_LEN, MAX_JWE_LEN,
    MAX_NONCE_LEN, MAX_REASON_LEN, MAX_RESOURCES, MAX_SEGMENT_LEN, MAX_SNP_CERTS, MAX_SNP_CERT_LEN,
    SNP_CERT_TYPES, SNP_REPORT_LEN,
};
pub use tpm_evidence::{QuotedPcrs, TpmEvidence, TpmQuote};
