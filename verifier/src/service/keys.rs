//! Secrets the service keeps in its state directory, generated on first
//! start when the configuration does not give them:
//!
//! | file | content |
//! |---|---|
//! | `admin-token` | the admin bearer token (text), when `admin_tokens` is empty |
//! | `resource-key` | 64 hex characters, when neither `resource_key` nor `TELLUS_VERIFIER_RESOURCE_KEY` is set |
//! | `token-signing-key.p8` | the ES256 (P-256) token-signing key, PKCS#8 DER |
//!
//! Files are created with `O_EXCL` and mode 0600; the directory with 0700.

use crate::config::{Config, ConfigError};
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File name of the generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// File name of the generated resource key.
pub const RESOURCE_KEY_FILE: &str = "resource-key";
/// File name of the token-signing key.
pub const SIGNING_KEY_FILE: &str = "token-signing-key.p8";

/// Largest secret file read.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Why a secret could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write {path}: {source}; check the state directory's ownership and permissions")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid {what}; move it away to have a new one generated (tokens signed with the old key stop verifying)")]
    Invalid { path: PathBuf, what: &'static str },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the system random number generator failed; check /dev/urandom and retry")]
    Random,
}

/// The secrets the service runs with.
pub struct Secrets {
    /// Accepted admin bearer tokens.
    pub admin_tokens: Vec<String>,
    /// Where the generated admin token is, if one is used.
    pub admin_token_file: Option<PathBuf>,
    /// The AES-256 resource key.
    pub resource_key: [u8; 32],
    /// The token-signing key, PKCS#8 DER.
    pub signing_key_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").field("admin_token_file", &self.admin_token_file).finish()
    }
}

/// Creates the state directory (mode 0700) if missing.
pub fn ensure_state_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_owned(), source }
}

/// Reads a secret file (bounded); `None` if it does not exist. Warns when
/// group or others can read it.
fn read_secret(path: &Path) -> Result<Option<Vec<u8>>, KeyError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let meta = file.metadata().map_err(io(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "secret file is readable by group or others; chmod 0600 it");
    }
    let mut buf = Vec::new();
    file.take(MAX_SECRET_FILE + 1).read_to_end(&mut buf).map_err(io(path))?;
    if buf.len() as u64 > MAX_SECRET_FILE {
        return Err(KeyError::Invalid { path: path.to_owned(), what: "secret file (too large)" });
    }
    Ok(Some(buf))
}

/// Writes a new secret file, mode 0600, failing if it exists.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    rng.fill(&mut b).map_err(|_| KeyError::Random)?;
    Ok(b)
}

impl Secrets {
    /// Loads the configured secrets and loads or creates the others in
    /// `config.state_dir`.
    pub fn load_or_create(config: &Config, rng: &SystemRandom) -> Result<Secrets, KeyError> {
        let dir = &config.state_dir;
        ensure_state_dir(dir).map_err(io(dir))?;

        let (admin_tokens, admin_token_file) = if config.admin_tokens.is_empty() {
            let path = dir.join(ADMIN_TOKEN_FILE);
            let token = match read_secret(&path)? {
                Some(b) => {
                    let t = String::from_utf8(b).map_err(|_| KeyError::Invalid {
                        path: path.clone(),
                        what: "admin token",
                    })?;
                    let t = t.trim().to_owned();
                    if t.is_empty() {
                        return Err(KeyError::Invalid { path, what: "admin token (empty)" });
                    }
                    t
                }
                None => {
                    let t =
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<32>(rng)?);
                    write_secret(&path, format!("{t}\n").as_bytes())?;
                    tracing::warn!(path = %path.display(), "generated an admin token; use it as `Authorization: Bearer <token>` on the admin routes");
                    t
                }
            };
            (vec![token], Some(path))
        } else {
            (config.admin_tokens.clone(), None)
        };

        let resource_key = match config.configured_resource_key()? {
            Some(k) => k,
            None => {
                let path = dir.join(RESOURCE_KEY_FILE);
                match read_secret(&path)? {
                    Some(b) => {
                        let text = String::from_utf8(b).map_err(|_| KeyError::Invalid {
                            path: path.clone(),
                            what: "resource key (64 hex characters)",
                        })?;
                        crate::config::parse_resource_key(&text).map_err(|_| KeyError::Invalid {
                            path,
                            what: "resource key (64 hex characters)",
                        })?
                    }
                    None => {
                        let k = random::<32>(rng)?;
                        write_secret(&path, format!("{}\n", hex::encode(k)).as_bytes())?;
                        tracing::warn!(path = %path.display(), "generated the resource encryption key; back it up, resources cannot be read without it");
                        k
                    }
                }
            }
        };

        let path = dir.join(SIGNING_KEY_FILE);
        let signing_key_pkcs8 = match read_secret(&path)? {
            Some(der) => {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, rng).map_err(
                    |_| KeyError::Invalid { path: path.clone(), what: "P-256 PKCS#8 signing key" },
                )?;
                der
            }
            None => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
                    .map_err(|_| KeyError::Random)?;
                write_secret(&path, doc.as_ref())?;
                tracing::info!(path = %path.display(), "generated the token-signing key");
                doc.as_ref().to_vec()
            }
        };

        Ok(Secrets { admin_tokens, admin_token_file, resource_key, signing_key_pkcs8 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { state_dir: dir.path().join("state"), ..Config::default() };
        let rng = SystemRandom::new();
        let a = Secrets::load_or_create(&config, &rng).unwrap();
        let b = Secrets::load_or_create(&config, &rng).unwrap();
        assert_eq!(a.admin_tokens, b.admin_tokens);
        assert_eq!(a.signing_key_pkcs8, b.signing_key_pkcs8);
        for f in [ADMIN_TOKEN_FILE, SIGNING_KEY_FILE] {
            let m = std::fs::metadata(config.state_dir.join(f)).unwrap().permissions().mode();
            assert_eq!(m & 0o777, 0o600, "{f}");
        }
        let m = std::fs::metadata(&config.state_dir).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o700);
        // Configured tokens win; no token file is used then.
        let c2 = Config { admin_tokens: vec!["x".into()], ..config };
        let s = Secrets::load_or_create(&c2, &rng).unwrap();
        assert_eq!(s.admin_tokens, vec!["x".to_string()]);
        assert!(s.admin_token_file.is_none());
    }
}
