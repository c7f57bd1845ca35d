//! The host's identity in its TPM: endorsement key (EK), attestation key
//! (AK) and host id (`tellus host init`).
//!
//! - **EK**: RSA 2048 from the TCG EK Credential Profile's default template
//!   (low range, policy A), the key `swtpm_setup --create-ek-cert` certifies
//!   and most TPMs ship a certificate for (NV index 0x01c00002). Only a TPM
//!   that cannot create it (a TPM error from `TPM2_CreatePrimary`) gets the
//!   ECC NIST P-256 EK (certificate at 0x01c0000a) instead, and only on the
//!   first `host init`: later runs use the algorithm of the saved `ek.pub`,
//!   so a host never silently changes its EK. The EK is recreated from the
//!   template on every use (same seed and template give the same key) and is
//!   never made persistent.
//! - **AK**: ECC NIST P-256, ECDSA with SHA-256, attributes fixedTPM,
//!   fixedParent, sensitiveDataOrigin, userWithAuth, restricted, sign (not
//!   decrypt); a child of the EK in the endorsement hierarchy, created once
//!   and kept as wrapped blobs in the state directory (the TPM keeps no copy).
//! - **host id**: lower-case hex SHA-256 of the EK's public area as a
//!   marshalled `TPM2B_PUBLIC` (2-byte size + `TPMT_PUBLIC`, as
//!   `tpm2_readpublic -o` writes it), i.e. `sha256sum ek.pub`.
//!
//! Files under `<state-dir>/host/` (directory mode 0700, files 0600):
//!
//! | file | content |
//! |---|---|
//! | `ak.pub` | AK public, marshalled `TPM2B_PUBLIC` (`tpm2_print -t TPM2B_PUBLIC`) |
//! | `ak.priv` | AK private (wrapped by the EK), marshalled `TPM2B_PRIVATE` |
//! | `ek.pub` | EK public, marshalled `TPM2B_PUBLIC` |
//! | `ek-cert.der` | EK certificate (DER) read from the TPM's NV, when it has one |
//! | `host-id` | the host id, hex, one line |
//! | `lock` | `flock`ed while `host init` runs |
//!
//! `host init` writes `ak.pub` last: a directory without it has no AK, and
//! the next `host init` creates one.
//!
//! Every transient object (EK, AK) is flushed before a function here
//! returns, on error paths too ([`Transient`]): swtpm has no resource
//! manager, and a leaked object would take one of its three object slots.

use super::{Tpm, TpmAddress, TpmError};
use base64::Engine;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tss_esapi::abstraction::{ak, ek, nv, AsymmetricAlgorithmSelection, DefaultKey};
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, NvIndexTpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::structures::{CapabilityData, EccScheme, Private, Public, PublicBuffer};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

/// Sub-directory of the state directory that holds the host identity.
pub const HOST_DIR: &str = "host";

/// The AK's curve, as named in errors and output.
pub const AK_KIND: &str = "ECC NIST P-256, ECDSA/SHA-256, restricted signing key";

/// Why the host identity could not be created, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error("cannot create {path}: {source}; check --state-dir (or TELLUS_STATE_DIR) and its permissions")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot write {path}: {source}; check the state directory's permissions and free space"
    )]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
    #[error(
        "this host has no attestation key in {dir}: run `tellus host init` (with the same \
         --tpm and --state-dir) first"
    )]
    NotInitialized { dir: PathBuf },
    #[error(
        "{dir} has {present} but not {missing}: the host state is incomplete; move {dir} aside \
         and run `tellus host init` again (the host must then be enrolled again)"
    )]
    Incomplete { dir: PathBuf, present: &'static str, missing: &'static str },
    #[error(
        "{path} is not a valid {what}: {reason}; move {dir} aside and run `tellus host init` \
         again (the host must then be enrolled again)",
        dir = path.parent().map(|p| p.display().to_string()).unwrap_or_default()
    )]
    Corrupt { path: PathBuf, what: &'static str, reason: String },
    #[error(
        "the TPM's endorsement key no longer matches {dir}: the saved host id is {saved} but the \
         TPM gives {now}; the TPM was cleared or replaced, or --state-dir belongs to another \
         host's TPM. Check --tpm and --state-dir; if the TPM really changed, move {dir} aside, \
         run `tellus host init` and enroll the host again"
    )]
    HostIdChanged { dir: PathBuf, saved: String, now: String },
    #[error(
        "the attestation key saved in {dir} does not load into this TPM ({source}); the TPM was \
         cleared or replaced, or the files were changed. Move {dir} aside, run `tellus host init` \
         and enroll the host again"
    )]
    AkLoad { dir: PathBuf, source: tss_esapi::Error },
    #[error(
        "the attestation key in {path} is not a {AK_KIND} ({reason}); move {dir} aside and run \
         `tellus host init` again",
        dir = path.parent().map(|p| p.display().to_string()).unwrap_or_default()
    )]
    WrongAk { path: PathBuf, reason: String },
    #[error(
        "the TPM has an EK certificate at NV index {index:#010x} but it cannot be read: {source}"
    )]
    EkCert { index: u32, source: tss_esapi::Error },
}

fn cmd(command: &'static str) -> impl FnOnce(tss_esapi::Error) -> HostError {
    move |source| HostError::Tpm(TpmError::Command { command, source })
}

/// A transient TPM object, flushed from the TPM when the guard is dropped
/// (whatever path the code takes out of the scope). It derefs to the
/// context, so the object can be used while the guard holds it.
pub(crate) struct Transient<'a> {
    ctx: &'a mut Context,
    handle: KeyHandle,
    what: &'static str,
}

impl<'a> Transient<'a> {
    pub(crate) fn new(ctx: &'a mut Context, handle: KeyHandle, what: &'static str) -> Self {
        Transient { ctx, handle, what }
    }

    pub(crate) fn handle(&self) -> KeyHandle {
        self.handle
    }
}

impl Deref for Transient<'_> {
    type Target = Context;
    fn deref(&self) -> &Context {
        self.ctx
    }
}

impl DerefMut for Transient<'_> {
    fn deref_mut(&mut self) -> &mut Context {
        self.ctx
    }
}

impl Drop for Transient<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.ctx.flush_context(self.handle.into()) {
            // Nothing else can be done here; the object stays in the TPM
            // until its next reset (or until the connection closes under a
            // resource manager).
            eprintln!("tellus: warning: cannot flush the {} from the TPM: {e}", self.what);
        }
    }
}

/// Which EK the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EkAlgorithm {
    /// RSA 2048, EK certificate at NV 0x01c00002 (the default).
    Rsa2048,
    /// ECC NIST P-256, EK certificate at NV 0x01c0000a (fallback).
    EccP256,
}

impl EkAlgorithm {
    fn selection(self) -> AsymmetricAlgorithmSelection {
        match self {
            EkAlgorithm::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            EkAlgorithm::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        }
    }

    /// The TCG NV index of this EK's certificate.
    pub fn cert_nv_index(self) -> u32 {
        match self {
            EkAlgorithm::Rsa2048 => 0x01c0_0002,
            EkAlgorithm::EccP256 => 0x01c0_000a,
        }
    }

    fn name(self) -> &'static str {
        match self {
            EkAlgorithm::Rsa2048 => "RSA 2048",
            EkAlgorithm::EccP256 => "ECC NIST P-256",
        }
    }
}

/// Paths of the host identity files.
#[derive(Debug, Clone)]
pub struct HostFiles {
    pub dir: PathBuf,
}

impl HostFiles {
    pub fn new(state_dir: &Path) -> HostFiles {
        HostFiles { dir: state_dir.join(HOST_DIR) }
    }
    pub fn ak_pub(&self) -> PathBuf {
        self.dir.join("ak.pub")
    }
    pub fn ak_priv(&self) -> PathBuf {
        self.dir.join("ak.priv")
    }
    pub fn ek_pub(&self) -> PathBuf {
        self.dir.join("ek.pub")
    }
    pub fn ek_cert(&self) -> PathBuf {
        self.dir.join("ek-cert.der")
    }
    pub fn host_id(&self) -> PathBuf {
        self.dir.join("host-id")
    }
    fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
}

/// What `host init` did, printed as its summary.
#[derive(Debug, Clone, Serialize)]
pub struct HostIdentity {
    /// Lower-case hex SHA-256 of the EK's marshalled `TPM2B_PUBLIC`.
    pub host_id: String,
    /// The AK's TPM name (name algorithm + digest of its public area), hex.
    pub ak_name: String,
    /// The AK public key, base64 of its DER SubjectPublicKeyInfo (as in the
    /// evidence's `ak_public`).
    pub ak_public: String,
    /// True when this run created the AK, false when it reused the saved one.
    pub ak_created: bool,
    pub ek_algorithm: EkAlgorithm,
    /// Whether the TPM holds an EK certificate (saved as `ek_cert_path`).
    pub ek_cert: bool,
    /// The NV index the certificate is (or would be) read from, `0x01c00002`.
    pub ek_cert_nv_index: String,
    pub ek_cert_path: Option<PathBuf>,
    /// The directory holding the files above.
    pub host_dir: PathBuf,
}

impl HostIdentity {
    /// Human-readable summary.
    pub fn text(&self) -> String {
        let ak = if self.ak_created { "created" } else { "reused" };
        let cert = match &self.ek_cert_path {
            Some(p) => format!("yes ({})", p.display()),
            None => format!(
                "no (nothing at NV index {}; enrollment will need one)",
                self.ek_cert_nv_index
            ),
        };
        format!(
            "host id:  {}\nAK name:  {}\nAK:       {ak} ({})\nEK:       {}\nEK cert:  {cert}\n",
            self.host_id,
            self.ak_name,
            self.host_dir.display(),
            self.ek_algorithm.name(),
        )
    }
}

/// The saved host identity, read without a TPM.
#[derive(Debug, Clone)]
pub struct SavedHost {
    pub files: HostFiles,
    pub host_id: String,
    pub ek_algorithm: EkAlgorithm,
    pub ak_public: Public,
    pub(crate) ak_private: Private,
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, HostError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HostError::Read { path: path.into(), source }),
    }
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file and a
/// rename, so a reader sees the old or the new file, never a part.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), HostError> {
    let err = |source| HostError::Write { path: path.into(), source };
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)
}

fn corrupt(path: &Path, what: &'static str, reason: impl ToString) -> HostError {
    HostError::Corrupt { path: path.into(), what, reason: reason.to_string() }
}

fn parse_public(path: &Path, bytes: &[u8]) -> Result<Public, HostError> {
    let buf =
        PublicBuffer::unmarshall(bytes).map_err(|e| corrupt(path, "marshalled TPM2B_PUBLIC", e))?;
    Public::try_from(buf).map_err(|e| corrupt(path, "marshalled TPM2B_PUBLIC", e))
}

/// Marshals `public` as a `TPM2B_PUBLIC`.
pub fn tpm2b_public(public: &Public) -> Result<Vec<u8>, tss_esapi::Error> {
    PublicBuffer::try_from(public.clone())?.marshall()
}

fn tpm2b_private(private: &Private) -> Result<Vec<u8>, HostError> {
    let v = private.value();
    let len = u16::try_from(v.len()).map_err(|_| {
        cmd("Create")(tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongParamSize))
    })?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(v);
    Ok(out)
}

fn parse_private(path: &Path, bytes: &[u8]) -> Result<Private, HostError> {
    let what = "marshalled TPM2B_PRIVATE";
    let [a, b, rest @ ..] = bytes else {
        return Err(corrupt(path, what, "shorter than its size field"));
    };
    let len = usize::from(u16::from_be_bytes([*a, *b]));
    if rest.len() != len {
        return Err(corrupt(path, what, format!("size field {len}, {} bytes follow", rest.len())));
    }
    Private::try_from(rest.to_vec()).map_err(|e| corrupt(path, what, e))
}

/// SHA-256, lower-case hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// Checks that `public` is the AK `host init` creates.
pub fn check_ak_public(path: &Path, public: &Public) -> Result<(), HostError> {
    let wrong = |reason: &str| HostError::WrongAk { path: path.into(), reason: reason.into() };
    let Public::Ecc { object_attributes: a, name_hashing_algorithm, parameters, .. } = public
    else {
        return Err(wrong("not an ECC key"));
    };
    if !(a.fixed_tpm()
        && a.fixed_parent()
        && a.sensitive_data_origin()
        && a.user_with_auth()
        && a.restricted()
        && a.sign_encrypt())
    {
        return Err(wrong(
            "needs fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
        ));
    }
    if a.decrypt() {
        return Err(wrong("it can decrypt"));
    }
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err(wrong("curve is not NIST P-256"));
    }
    match parameters.ecc_scheme() {
        EccScheme::EcDsa(h) if h.hashing_algorithm() == HashingAlgorithm::Sha256 => {}
        _ => return Err(wrong("scheme is not ECDSA/SHA-256")),
    }
    if *name_hashing_algorithm != HashingAlgorithm::Sha256 {
        return Err(wrong("name algorithm is not SHA-256"));
    }
    Ok(())
}

/// DER SubjectPublicKeyInfo of an ECC NIST P-256 public area (uncompressed
/// point), the form Trustee's `ak_public` carries (base64 of it).
pub fn ak_spki_der(public: &Public) -> Option<Vec<u8>> {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused) 04 || X || Y }
    const PREFIX: [u8; 27] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    let Public::Ecc { parameters, unique, .. } = public else { return None };
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return None;
    }
    let mut out = PREFIX.to_vec();
    for coord in [unique.x().value(), unique.y().value()] {
        if coord.len() > 32 {
            return None;
        }
        out.extend(std::iter::repeat(0u8).take(32 - coord.len()));
        out.extend_from_slice(coord);
    }
    Some(out)
}

/// [`ak_spki_der`], base64 (standard alphabet, padded).
pub fn ak_spki_base64(path: &Path, public: &Public) -> Result<String, HostError> {
    let der = ak_spki_der(public)
        .ok_or_else(|| HostError::WrongAk { path: path.into(), reason: "not P-256".into() })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(der))
}

/// Reads the saved identity; [`HostError::NotInitialized`] when there is none.
pub fn load_saved(state_dir: &Path) -> Result<SavedHost, HostError> {
    let files = HostFiles::new(state_dir);
    match load_saved_opt(&files)? {
        Some(s) => Ok(s),
        None => Err(HostError::NotInitialized { dir: files.dir }),
    }
}

fn load_saved_opt(files: &HostFiles) -> Result<Option<SavedHost>, HostError> {
    let (pub_path, priv_path) = (files.ak_pub(), files.ak_priv());
    let (ak_pub, ak_priv) = (read(&pub_path)?, read(&priv_path)?);
    let incomplete =
        |present, missing| HostError::Incomplete { dir: files.dir.clone(), present, missing };
    // `ak.pub` is written last: without it there is no AK (at most the
    // leftover of an interrupted `host init`, never used, which the next
    // `host init` replaces).
    let (ak_pub, ak_priv) = match (ak_pub, ak_priv) {
        (None, _) => return Ok(None),
        (Some(_), None) => return Err(incomplete("ak.pub", "ak.priv")),
        (Some(a), Some(b)) => (a, b),
    };
    let ak_public = parse_public(&pub_path, &ak_pub)?;
    check_ak_public(&pub_path, &ak_public)?;
    let ak_private = parse_private(&priv_path, &ak_priv)?;
    let ek_path = files.ek_pub();
    let ek = read(&ek_path)?.ok_or_else(|| incomplete("ak.pub", "ek.pub"))?;
    let ek_algorithm = match parse_public(&ek_path, &ek)? {
        Public::Rsa { .. } => EkAlgorithm::Rsa2048,
        Public::Ecc { .. } => EkAlgorithm::EccP256,
        _ => return Err(corrupt(&ek_path, "EK public area", "neither RSA nor ECC")),
    };
    let id_path = files.host_id();
    let id = read(&id_path)?.ok_or_else(|| incomplete("ak.pub", "host-id"))?;
    let host_id = String::from_utf8_lossy(&id).trim().to_string();
    if host_id.len() != 64 || !host_id.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(corrupt(&id_path, "host id", "not 64 hex digits"));
    }
    Ok(Some(SavedHost { files: files.clone(), host_id, ek_algorithm, ak_public, ak_private }))
}

/// Creates the EK of `alg` as a transient object.
pub(crate) fn create_ek<'a>(
    ctx: &'a mut Context,
    alg: EkAlgorithm,
) -> Result<Transient<'a>, tss_esapi::Error> {
    let handle = ek::create_ek_object_2(ctx, alg.selection(), DefaultKey)?;
    Ok(Transient::new(ctx, handle, "endorsement key"))
}

/// The EK's public area as `TPM2B_PUBLIC` and the host id computed from it.
pub(crate) fn ek_identity(ek: &mut Transient<'_>) -> Result<(Vec<u8>, String), HostError> {
    let h = ek.handle();
    let (public, _, _) = ek.read_public(h).map_err(cmd("ReadPublic(EK)"))?;
    let bytes = tpm2b_public(&public).map_err(cmd("ReadPublic(EK)"))?;
    let id = sha256_hex(&bytes);
    Ok((bytes, id))
}

/// Recreates the EK and checks it against the saved host id: a different
/// TPM (or a cleared endorsement hierarchy) is refused here, once for all
/// callers.
pub(crate) fn saved_ek<'a>(
    ctx: &'a mut Context,
    saved: &SavedHost,
) -> Result<Transient<'a>, HostError> {
    let mut ekg = create_ek(ctx, saved.ek_algorithm).map_err(cmd("CreatePrimary(EK)"))?;
    let (_, now) = ek_identity(&mut ekg)?;
    if now != saved.host_id {
        return Err(HostError::HostIdChanged {
            dir: saved.files.dir.clone(),
            saved: saved.host_id.clone(),
            now,
        });
    }
    Ok(ekg)
}

/// Recreates the EK, checks it against the saved host id, loads the saved
/// AK under it, flushes the EK and runs `f` with the AK loaded; the AK is
/// flushed when `f` returns.
pub(crate) fn with_ak<R, E: From<HostError>>(
    ctx: &mut Context,
    saved: &SavedHost,
    f: impl FnOnce(&mut Context, KeyHandle) -> Result<R, E>,
) -> Result<R, E> {
    let ak_handle = {
        let mut ekg = saved_ek(ctx, saved)?;
        let parent = ekg.handle();
        ak::load_ak(&mut ekg, parent, None, saved.ak_private.clone(), saved.ak_public.clone())
            .map_err(|source| HostError::AkLoad { dir: saved.files.dir.clone(), source })?
        // The EK is flushed here; the loaded AK does not need its parent.
    };
    let mut akg = Transient::new(ctx, ak_handle, "attestation key");
    let h = akg.handle();
    f(&mut akg, h)
}

fn make_dirs(state_dir: &Path, files: &HostFiles) -> Result<(), HostError> {
    fs::create_dir_all(state_dir)
        .map_err(|source| HostError::StateDir { path: state_dir.into(), source })?;
    let err = |source| HostError::StateDir { path: files.dir.clone(), source };
    match fs::DirBuilder::new().mode(0o700).create(&files.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::set_permissions(&files.dir, fs::Permissions::from_mode(0o700)).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// Length of the DER SEQUENCE at the start of `b` (NV indices may be padded).
fn der_len(b: &[u8]) -> Option<usize> {
    let (&tag, &first) = (b.first()?, b.get(1)?);
    if tag != 0x30 {
        return None;
    }
    let (hdr, len) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = b.get(2..2 + n)?.iter().fold(0usize, |l, &x| (l << 8) | usize::from(x));
        (2 + n, len)
    };
    let total = hdr.checked_add(len)?;
    (total <= b.len()).then_some(total)
}

/// Reads the EK certificate from its NV index; `None` when the TPM has none.
fn read_ek_cert(ctx: &mut Context, alg: EkAlgorithm) -> Result<Option<Vec<u8>>, HostError> {
    let index = alg.cert_nv_index();
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::Handles, index, 1))
        .map_err(cmd("GetCapability(HANDLES)"))?;
    let present = match data {
        CapabilityData::Handles(list) => list.iter().any(|h| u32::from(*h) == index),
        _ => false,
    };
    if !present {
        return Ok(None);
    }
    let mut cert = match ek::retrieve_ek_pubcert(ctx, alg.selection()) {
        Ok(c) => Ok(c),
        // Not every TPM sets TPMA_NV_AUTHREAD on the certificate; owner read
        // (with the usual empty owner auth) is the other way in.
        Err(_) => NvIndexTpmHandle::new(index).and_then(|nv| {
            ctx.execute_with_nullauth_session(|c| nv::read_full(c, NvAuth::Owner, nv))
        }),
    };
    if let Ok(c) = cert.as_mut() {
        if let Some(n) = der_len(c) {
            c.truncate(n);
        }
    }
    cert.map(Some).map_err(|source| HostError::EkCert { index, source })
}

/// `tellus host init`: creates the AK (or loads and reuses the saved one),
/// saves the EK public, EK certificate and host id, and flushes every
/// object it loaded before returning.
pub fn init(addr: &TpmAddress, state_dir: &Path) -> Result<HostIdentity, HostError> {
    let files = HostFiles::new(state_dir);
    make_dirs(state_dir, &files)?;
    let lock_path = files.lock();
    let lock_file = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| HostError::Write { path: lock_path.clone(), source })?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, source)| HostError::Lock { path: lock_path.clone(), source })?;

    let saved = load_saved_opt(&files)?;
    let mut tpm = Tpm::connect(addr)?;
    let ctx = &mut tpm.ctx;

    // The EK: the saved one's algorithm, else RSA 2048 with ECC P-256 as
    // the fallback for a TPM that cannot make RSA keys.
    let (ek_algorithm, ek_pub, host_id, created, ak_public, ak_private) = {
        let create = |ctx: &mut Context, alg: EkAlgorithm| {
            ek::create_ek_object_2(ctx, alg.selection(), DefaultKey)
        };
        let (alg, handle) = match &saved {
            Some(s) => {
                (s.ek_algorithm, create(ctx, s.ek_algorithm).map_err(cmd("CreatePrimary(EK)"))?)
            }
            None => match create(ctx, EkAlgorithm::Rsa2048) {
                Ok(h) => (EkAlgorithm::Rsa2048, h),
                Err(tss_esapi::Error::Tss2Error(_)) => (
                    EkAlgorithm::EccP256,
                    create(ctx, EkAlgorithm::EccP256).map_err(cmd("CreatePrimary(EK)"))?,
                ),
                Err(e) => return Err(cmd("CreatePrimary(EK)")(e)),
            },
        };
        let mut ekg = Transient::new(ctx, handle, "endorsement key");
        let (ek_pub, host_id) = ek_identity(&mut ekg)?;
        let (created, ak_public, ak_private) = match &saved {
            Some(s) => {
                if s.host_id != host_id {
                    return Err(HostError::HostIdChanged {
                        dir: files.dir.clone(),
                        saved: s.host_id.clone(),
                        now: host_id,
                    });
                }
                (false, s.ak_public.clone(), s.ak_private.clone())
            }
            None => {
                let parent = ekg.handle();
                let r = ak::create_ak_2(
                    &mut ekg,
                    parent,
                    HashingAlgorithm::Sha256,
                    AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                    SignatureSchemeAlgorithm::EcDsa,
                    None,
                    DefaultKey,
                )
                .map_err(cmd("Create(AK)"))?;
                check_ak_public(&files.ak_pub(), &r.out_public)?;
                (true, r.out_public, r.out_private)
            }
        };
        (alg, ek_pub, host_id, created, ak_public, ak_private)
        // The EK is flushed here.
    };

    // Load the AK once: proves the blobs work with this TPM and gives its name.
    let saved_now = SavedHost {
        files: files.clone(),
        host_id: host_id.clone(),
        ek_algorithm,
        ak_public: ak_public.clone(),
        ak_private: ak_private.clone(),
    };
    let ak_name = with_ak(ctx, &saved_now, |c, h| {
        let (_, name, _) = c.read_public(h).map_err(cmd("ReadPublic(AK)"))?;
        Ok::<_, HostError>(hex::encode(name.value()))
    })?;

    let cert = read_ek_cert(ctx, ek_algorithm)?;
    drop(tpm);

    // In this order, so that whatever an interruption leaves behind either
    // has no `ak.pub` (no AK: the next run creates one) or is complete.
    write_file(&files.ek_pub(), &ek_pub)?;
    write_file(&files.host_id(), format!("{host_id}\n").as_bytes())?;
    let cert_path = match &cert {
        Some(der) => {
            write_file(&files.ek_cert(), der)?;
            Some(files.ek_cert())
        }
        None => None,
    };
    if created {
        write_file(&files.ak_priv(), &tpm2b_private(&ak_private)?)?;
        write_file(&files.ak_pub(), &tpm2b_public(&ak_public).map_err(cmd("Create(AK)"))?)?;
    }

    Ok(HostIdentity {
        ak_public: ak_spki_base64(&files.ak_pub(), &ak_public)?,
        host_id,
        ak_name,
        ak_created: created,
        ek_algorithm,
        ek_cert: cert.is_some(),
        ek_cert_nv_index: format!("{:#010x}", ek_algorithm.cert_nv_index()),
        ek_cert_path: cert_path,
        host_dir: files.dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        assert_eq!(der_len(&[0x30, 0x03, 1, 2, 3, 0, 0]), Some(5));
        assert_eq!(der_len(&[0x30, 0x82, 0x00, 0x02, 9, 9, 0xff]), Some(6));
        assert_eq!(der_len(&[0x30, 0x82, 0x01, 0x00, 9]), None);
        assert_eq!(der_len(&[0x04, 0x01, 0]), None);
        assert_eq!(der_len(&[]), None);
    }

    #[test]
    fn private_blob_round_trip() {
        let p = Private::try_from(vec![1u8, 2, 3]).unwrap();
        let b = tpm2b_private(&p).unwrap();
        assert_eq!(b, [0, 3, 1, 2, 3]);
        assert_eq!(parse_private(Path::new("x"), &b).unwrap().value(), [1, 2, 3]);
        assert!(parse_private(Path::new("x"), &[0, 4, 1]).is_err());
        assert!(parse_private(Path::new("x"), &[0]).is_err());
    }
}
