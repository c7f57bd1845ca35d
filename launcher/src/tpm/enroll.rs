//! The host's half of enrollment with a verifier (design.md, "Attestation
//! and key release" → host enrollment; messages in
//! [`tellus_protocol::enrollment`]):
//!
//! 1. [`enrollment_request`] (`tellus host enroll-request`): the saved EK
//!    public, EK certificate, AK public, AK Name and host id, after checking
//!    that the TPM still has this EK and that the AK still loads under it;
//! 2. the verifier checks them and answers with a credential made for the
//!    EK and the AK's Name ([`EnrollChallenge`]);
//! 3. [`activate`] (`tellus host activate`): `TPM2_ActivateCredential` with
//!    the AK (activateHandle, empty auth in an HMAC session) and the EK
//!    (keyHandle, a policy session satisfying the EK template's policy A,
//!    `TPM2_PolicySecret(TPM_RH_ENDORSEMENT)`) recovers the secret, which
//!    goes back as the [`ActivationProof`].
//!
//! The TPM refuses to activate a credential made for another EK or another
//! AK Name (an integrity error), so a correct proof binds the AK to the
//! certified EK. Every object and session loaded here is flushed before a
//! function returns, on error paths too.

use super::host::{self, HostError, HostFiles, Transient};
use super::{Tpm, TpmAddress, TpmError};
use base64::Engine;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use tellus_protocol::enrollment::{ActivationProof, EnrollChallenge, EnrollRequest};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, SessionHandle};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{EncryptedSecret, IdObject, SymmetricDefinition};
use tss_esapi::Context;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Most bytes of a challenge file (a real one is under 1 KiB).
pub const MAX_CHALLENGE_LEN: u64 = 64 * 1024;
/// `sizeof(TPMS_ID_OBJECT)`: two `TPM2B_DIGEST`s of at most 64 bytes.
const MAX_ID_OBJECT_LEN: usize = 2 + 64 + 2 + 64;
/// `sizeof(TPMU_ENCRYPTED_SECRET)` with 4096-bit RSA.
const MAX_ENCRYPTED_SECRET_LEN: usize = 512;
/// Longest EK certificate sent (NV indices hold a few KiB at most).
const MAX_EK_CERT_LEN: u64 = 16 * 1024;

/// Why an enrollment step failed on the host.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is larger than {max} bytes: it is not an enrollment challenge")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("cannot write {path}: {source}; check the path and free space")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "the challenge is not valid ({reason}); pass the verifier's answer to `tellus host \
         enroll-request` unchanged, or start enrollment again"
    )]
    BadChallenge { reason: String },
    #[error(
        "the saved AK's Name ({saved}) differs from the Name the TPM gives it ({tpm}); move the \
         host directory aside, run `tellus host init` and enroll again"
    )]
    AkNameMismatch { saved: String, tpm: String },
    #[error(
        "the TPM refused the credential ({source}): it was not made for this TPM's endorsement \
         key and this host's attestation key. Check that the challenge answers this host's \
         `tellus host enroll-request` (same --tpm and --state-dir), then start enrollment again"
    )]
    ActivationRefused { source: tss_esapi::Error },
    #[error("TPM command {command} failed: {source}")]
    Command { command: &'static str, source: tss_esapi::Error },
}

fn cmd(command: &'static str) -> impl FnOnce(tss_esapi::Error) -> EnrollError {
    move |source| EnrollError::Command { command, source }
}

fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, EnrollError> {
    let err = |source| EnrollError::Read { path: path.into(), source };
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf).map_err(err)?;
    if buf.len() as u64 > max {
        return Err(EnrollError::TooLarge { path: path.into(), max });
    }
    Ok(Some(buf))
}

/// The AK Name for a SHA-256 name algorithm: `0x000b || SHA-256(TPMT_PUBLIC)`.
fn sha256_name(tpm2b_public: &[u8]) -> Vec<u8> {
    let tpmt = tpm2b_public.get(2..).unwrap_or_default();
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, tpmt).as_ref());
    name
}

/// `tellus host enroll-request`: the [`EnrollRequest`] for this host, from
/// the files `tellus host init` saved. Connects to the TPM to check that its
/// EK is still the saved one and that the AK loads (and to read its Name),
/// so that a verifier is never sent a request the TPM cannot answer.
pub fn enrollment_request(
    addr: &TpmAddress,
    state_dir: &Path,
) -> Result<EnrollRequest, EnrollError> {
    let saved = host::load_saved(state_dir)?;
    let files = HostFiles::new(state_dir);
    let read = |path: PathBuf| -> Result<Vec<u8>, EnrollError> {
        read_bounded(&path, 64 * 1024)?
            .ok_or_else(|| EnrollError::Host(HostError::NotInitialized { dir: files.dir.clone() }))
    };
    let ek_public = read(files.ek_pub())?;
    let ak_public = read(files.ak_pub())?;
    let ek_cert = read_bounded(&files.ek_cert(), MAX_EK_CERT_LEN)?;
    if host::sha256_hex(&ek_public) != saved.host_id {
        return Err(HostError::Corrupt {
            path: files.ek_pub(),
            what: "EK public area",
            reason: format!("its SHA-256 is not the saved host id {}", saved.host_id),
        }
        .into());
    }

    let mut tpm = Tpm::connect(addr)?;
    let tpm_name = host::with_ak(&mut tpm.ctx, &saved, |c, h| {
        let (_, name, _) = c.read_public(h).map_err(cmd("ReadPublic(AK)"))?;
        Ok::<_, EnrollError>(name.value().to_vec())
    })?;
    drop(tpm);

    // `host init` checked that the AK's name algorithm is SHA-256.
    let saved_name = sha256_name(&ak_public);
    if saved_name != tpm_name {
        return Err(EnrollError::AkNameMismatch {
            saved: hex::encode(saved_name),
            tpm: hex::encode(tpm_name),
        });
    }
    Ok(EnrollRequest {
        host_id: saved.host_id,
        ek_public: B64.encode(&ek_public),
        ek_cert: ek_cert.map(|c| B64.encode(c)),
        ak_public: B64.encode(&ak_public),
        ak_name: hex::encode(tpm_name),
    })
}

/// Decodes a base64 field holding a marshalled TPM2B of at most `max`
/// content bytes; returns the contents.
fn tpm2b_field(field: &str, text: &str, max: usize) -> Result<Vec<u8>, EnrollError> {
    let bad = |reason: String| EnrollError::BadChallenge { reason: format!("{field}: {reason}") };
    if text.len() > (max + 2).div_ceil(3) * 4 {
        return Err(bad(format!("longer than a {}-byte structure", max + 2)));
    }
    let bytes = B64.decode(text).map_err(|e| bad(format!("not base64: {e}")))?;
    let [hi, lo, rest @ ..] = bytes.as_slice() else {
        return Err(bad("shorter than its size field".into()));
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    if len != rest.len() {
        return Err(bad(format!("size field {len}, {} bytes follow", rest.len())));
    }
    if len == 0 || len > max {
        return Err(bad(format!("{len} bytes, expected 1 to {max}")));
    }
    Ok(rest.to_vec())
}

/// Parses a challenge (JSON) as read from a file or stdin.
pub fn parse_challenge(bytes: &[u8]) -> Result<EnrollChallenge, EnrollError> {
    serde_json::from_slice(bytes).map_err(|e| EnrollError::BadChallenge {
        reason: format!("not an enrollment challenge JSON object: {e}"),
    })
}

/// Reads a challenge file (`-`: stdin), at most [`MAX_CHALLENGE_LEN`] bytes.
pub fn read_challenge(path: &Path) -> Result<EnrollChallenge, EnrollError> {
    let bytes = if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_CHALLENGE_LEN + 1)
            .read_to_end(&mut buf)
            .map_err(|source| EnrollError::Read { path: path.into(), source })?;
        if buf.len() as u64 > MAX_CHALLENGE_LEN {
            return Err(EnrollError::TooLarge { path: path.into(), max: MAX_CHALLENGE_LEN });
        }
        buf
    } else {
        read_bounded(path, MAX_CHALLENGE_LEN)?.ok_or_else(|| EnrollError::Read {
            path: path.into(),
            source: std::io::ErrorKind::NotFound.into(),
        })?
    };
    parse_challenge(&bytes)
}

/// With an HMAC session (empty auth) as the first session: satisfies the
/// EK policy in `policy`, then runs ActivateCredential with the HMAC
/// session for the AK and the policy session for the EK.
fn policy_and_activate(
    ctx: &mut Context,
    policy: AuthSession,
    ak: KeyHandle,
    ek: KeyHandle,
    blob: IdObject,
    secret: EncryptedSecret,
) -> Result<Vec<u8>, EnrollError> {
    let policy_session = PolicySession::try_from(policy).map_err(cmd("PolicySecret"))?;
    ctx.policy_secret(
        policy_session,
        AuthHandle::Endorsement,
        Default::default(),
        Default::default(),
        Default::default(),
        None,
    )
    .map_err(cmd("PolicySecret(endorsement)"))?;
    let (hmac, _, _) = ctx.sessions();
    ctx.execute_with_sessions((hmac, Some(policy), None), |ctx| {
        ctx.activate_credential(ak, ek, blob, secret).map(|d| d.value().to_vec()).map_err(
            |source| match source {
                tss_esapi::Error::Tss2Error(_) => EnrollError::ActivationRefused { source },
                other => cmd("ActivateCredential")(other),
            },
        )
    })
}

/// `TPM2_ActivateCredential(AK, EK)` with the EK's policy session; the
/// policy session is flushed whatever happens.
fn activate_credential(
    ctx: &mut Context,
    ak: KeyHandle,
    ek: KeyHandle,
    blob: IdObject,
    secret: EncryptedSecret,
) -> Result<Vec<u8>, EnrollError> {
    // The EK template's symmetric definition and name algorithm, as
    // tss-esapi's `ak::load_ak` uses for the same policy.
    let (ek_public, _, _) = ctx.read_public(ek).map_err(cmd("ReadPublic(EK)"))?;
    let hash = ek_public.name_hashing_algorithm();
    let sym = ek_public
        .symmetric_algorithm()
        .map(SymmetricDefinition::from)
        .unwrap_or(SymmetricDefinition::AES_128_CFB);
    let policy = ctx
        .start_auth_session(None, None, None, SessionType::Policy, sym, hash)
        .map_err(cmd("StartAuthSession(policy)"))?
        .ok_or_else(|| {
            cmd("StartAuthSession(policy)")(tss_esapi::Error::WrapperError(
                tss_esapi::WrapperErrorKind::WrongValueFromTpm,
            ))
        })?;
    let mut outcome: Option<Result<Vec<u8>, EnrollError>> = None;
    // `execute_with_temporary_object` flushes the session after the closure,
    // whether it succeeded or not.
    let flushed =
        ctx.execute_with_temporary_object(SessionHandle::from(policy).into(), |ctx, _| {
            let r = ctx.execute_with_nullauth_session(|ctx| {
                Ok::<_, tss_esapi::Error>(policy_and_activate(ctx, policy, ak, ek, blob, secret))
            });
            outcome = Some(r.map_err(cmd("StartAuthSession(HMAC)")).and_then(|r| r));
            Ok(())
        });
    match (outcome, flushed) {
        (Some(r), Ok(())) => r,
        (Some(Err(e)), Err(_)) => Err(e),
        (_, Err(e)) => Err(cmd("FlushContext(policy session)")(e)),
        (None, Ok(())) => Err(cmd("ActivateCredential")(tss_esapi::Error::WrapperError(
            tss_esapi::WrapperErrorKind::InternalError,
        ))),
    }
}

/// `tellus host activate`: recovers the challenge's secret with the TPM
/// (see the module documentation) and returns the [`ActivationProof`].
pub fn activate(
    addr: &TpmAddress,
    state_dir: &Path,
    challenge: &EnrollChallenge,
) -> Result<ActivationProof, EnrollError> {
    let blob = tpm2b_field("credential_blob", &challenge.credential_blob, MAX_ID_OBJECT_LEN)?;
    let secret =
        tpm2b_field("encrypted_secret", &challenge.encrypted_secret, MAX_ENCRYPTED_SECRET_LEN)?;
    if challenge.enrollment_id.is_empty() || challenge.enrollment_id.len() > 256 {
        return Err(EnrollError::BadChallenge {
            reason: "enrollment_id must be 1 to 256 characters".into(),
        });
    }
    let blob = IdObject::try_from(blob)
        .map_err(|e| EnrollError::BadChallenge { reason: format!("credential_blob: {e}") })?;
    let secret = EncryptedSecret::try_from(secret)
        .map_err(|e| EnrollError::BadChallenge { reason: format!("encrypted_secret: {e}") })?;

    let saved = host::load_saved(state_dir)?;
    let mut tpm = Tpm::connect(addr)?;
    let recovered = {
        let mut ekg = host::saved_ek(&mut tpm.ctx, &saved)?;
        let ek = ekg.handle();
        let ak = tss_esapi::abstraction::ak::load_ak(
            &mut ekg,
            ek,
            None,
            saved.ak_private.clone(),
            saved.ak_public.clone(),
        )
        .map_err(|source| HostError::AkLoad { dir: saved.files.dir.clone(), source })?;
        let mut akg = Transient::new(&mut ekg, ak, "attestation key");
        activate_credential(&mut akg, ak, ek, blob, secret)?
        // The AK, then the EK, are flushed here.
    };
    drop(tpm);
    Ok(ActivationProof {
        enrollment_id: challenge.enrollment_id.clone(),
        secret: B64.encode(recovered),
    })
}

/// Writes `value` as pretty JSON and a newline to `path` (`-`: stdout);
/// files are created with mode 0600 (a proof carries a one-time secret).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), EnrollError> {
    let err = |source| EnrollError::Write { path: path.into(), source };
    let mut text = serde_json::to_string_pretty(value).map_err(|e| err(e.into()))?;
    text.push('\n');
    if path == Path::new("-") {
        return std::io::stdout().lock().write_all(text.as_bytes()).map_err(err);
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm2b_fields_are_bounded() {
        assert_eq!(tpm2b_field("f", &B64.encode([0, 2, 7, 8]), 4).unwrap(), [7, 8]);
        for bad in [
            B64.encode([0, 3, 7, 8]),
            B64.encode([0]),
            B64.encode([0, 0]),
            B64.encode([0, 5, 1, 2, 3, 4, 5]),
            "A".repeat(100),
            "%%%%".into(),
        ] {
            let e = tpm2b_field("f", &bad, 4).unwrap_err();
            assert!(matches!(e, EnrollError::BadChallenge { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn challenges() {
        let c = parse_challenge(
            br#"{"enrollment_id":"e","credential_blob":"AA==","encrypted_secret":"AA=="}"#,
        )
        .unwrap();
        assert_eq!(c.enrollment_id, "e");
        let e = parse_challenge(b"[]").unwrap_err().to_string();
        assert!(e.contains("start enrollment again"), "{e}");
    }

    #[test]
    fn names() {
        let n = sha256_name(&[0, 1, 0xaa]);
        assert_eq!(n[..2], [0, 0x0b]);
        assert_eq!(n.len(), 34);
    }
}
