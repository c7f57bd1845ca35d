//! The verifier service's configuration: a TOML file whose every field has a
//! default, so an empty file (or none) is a valid configuration.
//!
//! [`Config::documented_default_toml`] prints every field with its default
//! and its documentation; `tellus-verifier serve --print-default-config`
//! style tooling can show it.
//!
//! Secrets that are not configured are generated on first start and kept in
//! the state directory with mode 0600 (see [`crate::service::keys`]):
//! the admin token (`admin-token`), the resource encryption key
//! (`resource-key`) and the token-signing key (`token-signing-key.p8`).

use crate::storage::GroupCommit;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Environment variable that may carry the resource encryption key (64 hex
/// characters) instead of the configuration file.
pub const RESOURCE_KEY_ENV: &str = "TELLUS_VERIFIER_RESOURCE_KEY";

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read the configuration file {path}: {source}; check the path given with --config"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the configuration file {path} is larger than {MAX_CONFIG_BYTES} bytes; is it the right file?")]
    TooLarge { path: PathBuf },
    #[error("the configuration file {path} is not valid: {message}; `Config::documented_default_toml()` shows every field")]
    Parse { path: PathBuf, message: String },
    #[error("resource_key (or {RESOURCE_KEY_ENV}) must be exactly 64 hex characters (32 bytes); generate one with `openssl rand -hex 32`")]
    ResourceKey,
    #[error("{field} must be at least 1; set it in the configuration file")]
    Zero { field: &'static str },
}

/// The verifier service's configuration (TOML). Every field is optional.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Directory for the SQLite database and the generated secrets. Created
    /// (mode 0700) if missing.
    pub state_dir: PathBuf,
    /// PEM certificate chain for TLS. With `tls_key`, the service speaks
    /// HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP. Allowed only when `listen` is a loopback address
    /// (for tests and for a TLS-terminating proxy on the same host).
    pub insecure_http: bool,
    /// Bearer tokens accepted on the admin routes. When empty, one is
    /// generated on first start and kept in `<state_dir>/admin-token`
    /// (mode 0600).
    pub admin_tokens: Vec<String>,
    /// Lifetime of a KBS session (the `kbs-session-id` cookie), in seconds.
    pub session_lifetime_secs: u64,
    /// Lifetime of an attestation token (EAR JWT), in seconds.
    pub token_lifetime_secs: u64,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// AES-256 key (64 hex characters) that encrypts resources at rest.
    /// Also read from the environment variable
    /// `TELLUS_VERIFIER_RESOURCE_KEY`, which wins over this field. When
    /// neither is set, one is generated on first start and kept in
    /// `<state_dir>/resource-key` (mode 0600).
    pub resource_key: Option<String>,
    /// Accept the `sample` tee (Trustee's test evidence, which proves
    /// nothing about the platform). Never enable it in production.
    pub enable_sample_tee: bool,
    /// Directory of the trusted EK CA certificates (PEM or DER files:
    /// `*.pem`, `*.crt`, `*.cer`, `*.der`) for host enrollment. Default
    /// `<state_dir>/ek-ca`. When it is missing or holds no certificate,
    /// every enrollment is refused.
    pub ek_ca_dir: Option<PathBuf>,
    /// Enroll hosts whose TPM has no EK certificate (the EK is trusted on
    /// first use). Off by default; never in production.
    pub allow_uncertified_ek: bool,
    /// How long an enrollment challenge stays valid, in seconds.
    pub enrollment_ttl_secs: u64,
    /// Host labels every attesting host must carry, for every resource
    /// (the attestation policy sees them as `data.requirements.host_labels`;
    /// the default policy denies a host that lacks one). Per-resource
    /// requirements are set at upload (`?required-labels=`).
    pub required_host_labels: std::collections::BTreeMap<String, String>,
    /// How far, in milliseconds, a quote's TPM clock may lag behind the
    /// newest clock recorded for its host (same resetCount and
    /// restartCount) before the attestation is refused as a TPM rollback
    /// (see `service::tpm_verifier`). Concurrent attestations of one host
    /// may arrive out of order by a few milliseconds; a TPM state restored
    /// from a snapshot older than this is caught. 0: no lag at all.
    pub tpm_clock_tolerance_ms: u64,
    /// Group commit of the KBS round trip's writes (sessions, attestations,
    /// audit entries; see `storage::sqlite::GroupCommit`): when the store's
    /// writer finds at least `commit_siblings` writes waiting, it waits
    /// this many microseconds for more before it commits them together.
    /// Fewer, larger commits cost less CPU per write; each write may wait
    /// this much longer. 0: never wait.
    pub commit_delay_us: u64,
    /// How many writes must be waiting for the writer to wait
    /// `commit_delay_us` (at least 1; 1 delays every write, even a lone
    /// one).
    pub commit_siblings: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            state_dir: PathBuf::from("/var/lib/tellus-verifier"),
            tls_cert: None,
            tls_key: None,
            insecure_http: false,
            admin_tokens: Vec::new(),
            session_lifetime_secs: 300,
            token_lifetime_secs: 300,
            max_body_bytes: 1 << 20,
            resource_key: None,
            enable_sample_tee: false,
            ek_ca_dir: None,
            allow_uncertified_ek: false,
            enrollment_ttl_secs: 300,
            required_host_labels: std::collections::BTreeMap::new(),
            tpm_clock_tolerance_ms: crate::service::tpm_verifier::DEFAULT_CLOCK_TOLERANCE_MS,
            commit_delay_us: GroupCommit::default().delay.as_micros() as u64,
            commit_siblings: GroupCommit::default().siblings,
        }
    }
}

impl Config {
    /// Parses a TOML document and validates it.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        let file = std::fs::File::open(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.to_owned() });
        }
        Config::from_toml(&text, path)
    }

    /// Checks the values that have no meaning at zero, and the key format.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.session_lifetime_secs == 0 {
            return Err(ConfigError::Zero { field: "session_lifetime_secs" });
        }
        if self.token_lifetime_secs == 0 {
            return Err(ConfigError::Zero { field: "token_lifetime_secs" });
        }
        if self.enrollment_ttl_secs == 0 {
            return Err(ConfigError::Zero { field: "enrollment_ttl_secs" });
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Zero { field: "max_body_bytes" });
        }
        if self.commit_siblings == 0 {
            return Err(ConfigError::Zero { field: "commit_siblings" });
        }
        if let Some(k) = &self.resource_key {
            parse_resource_key(k)?;
        }
        Ok(())
    }

    /// The resource key from `TELLUS_VERIFIER_RESOURCE_KEY` or the
    /// configuration, if either sets one.
    pub fn configured_resource_key(&self) -> Result<Option<[u8; 32]>, ConfigError> {
        match std::env::var(RESOURCE_KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => return parse_resource_key(&v).map(Some),
            _ => {}
        }
        self.resource_key.as_deref().map(parse_resource_key).transpose()
    }

    /// The store's group-commit rule from `commit_delay_us` and
    /// `commit_siblings`.
    pub fn group_commit(&self) -> GroupCommit {
        GroupCommit {
            delay: std::time::Duration::from_micros(self.commit_delay_us),
            siblings: self.commit_siblings,
        }
    }

    /// The EK CA directory: `ek_ca_dir`, or `<state_dir>/ek-ca`.
    pub fn ek_ca_dir(&self) -> PathBuf {
        self.ek_ca_dir.clone().unwrap_or_else(|| self.state_dir.join("ek-ca"))
    }

    /// The default configuration as a commented TOML document.
    pub fn documented_default_toml() -> String {
        let d = Config::default();
        format!(
            r#"# tellus-verifier configuration. Every field is optional; shown are the defaults.

# Address and port to listen on.
listen = "{listen}"

# Directory for the SQLite database and the generated secrets (created mode 0700).
state_dir = "{state_dir}"

# PEM certificate chain and private key for TLS. With both set, the service speaks HTTPS only.
# tls_cert = "/etc/tellus-verifier/tls.crt"
# tls_key = "/etc/tellus-verifier/tls.key"

# Serve plain HTTP. Refused unless `listen` is a loopback address.
insecure_http = {insecure_http}

# Bearer tokens for the admin routes. When empty, one is generated on first start
# and kept in <state_dir>/admin-token (mode 0600).
admin_tokens = []

# Lifetime of a KBS session (the kbs-session-id cookie), in seconds.
session_lifetime_secs = {session}

# Lifetime of an attestation token (EAR JWT), in seconds.
token_lifetime_secs = {token}

# Largest request body accepted, in bytes; larger ones get 413.
max_body_bytes = {body}

# AES-256 key (64 hex characters) that encrypts resources at rest. The environment
# variable {env} wins over this field. When neither is set, one is generated on
# first start and kept in <state_dir>/resource-key (mode 0600).
# resource_key = "<64 hex characters>"

# Accept the `sample` tee (test evidence that proves nothing). Never in production.
enable_sample_tee = {sample}

# Directory of the trusted EK CA certificates (*.pem, *.crt, *.cer, *.der) for host
# enrollment; default <state_dir>/ek-ca. Missing or empty: every enrollment is refused.
# ek_ca_dir = "/etc/tellus-verifier/ek-ca"

# Enroll hosts whose TPM has no EK certificate (trust on first use). Never in production.
allow_uncertified_ek = {uncertified}

# How long an enrollment challenge stays valid, in seconds.
enrollment_ttl_secs = {enroll_ttl}

# TPM rollback check: how far (milliseconds) a quote's TPM clock may lag behind the
# newest clock of an accepted attestation of the same host (same resetCount and
# restartCount) before it is refused as a TPM restored from a snapshot. Covers
# concurrent attestations of one host arriving out of order; 0 allows no lag.
tpm_clock_tolerance_ms = {clock_tolerance}

# Group commit of the KBS round trip's writes: when the store's writer finds at least
# commit_siblings writes waiting, it waits commit_delay_us microseconds for more and
# commits them together (less CPU per write under load; each may wait this much
# longer). commit_delay_us = 0 never waits; commit_siblings = 1 delays even a lone write.
commit_delay_us = {commit_delay}
commit_siblings = {commit_siblings}

# Host labels every attesting host must carry (data.requirements.host_labels of the
# attestation policy). Per-resource requirements are set at upload (?required-labels=).
# A table must come last in TOML, so this is the last field.
[required_host_labels]
# zone = "dmz"
"#,
            listen = d.listen,
            state_dir = d.state_dir.display(),
            insecure_http = d.insecure_http,
            session = d.session_lifetime_secs,
            token = d.token_lifetime_secs,
            body = d.max_body_bytes,
            env = RESOURCE_KEY_ENV,
            sample = d.enable_sample_tee,
            uncertified = d.allow_uncertified_ek,
            enroll_ttl = d.enrollment_ttl_secs,
            clock_tolerance = d.tpm_clock_tolerance_ms,
            commit_delay = d.commit_delay_us,
            commit_siblings = d.commit_siblings,
        )
    }
}

/// Parses 64 hex characters into a 32-byte key.
pub fn parse_resource_key(text: &str) -> Result<[u8; 32], ConfigError> {
    let text = text.trim();
    if text.len() != 64 {
        return Err(ConfigError::ResourceKey);
    }
    let bytes = hex::decode(text).map_err(|_| ConfigError::ResourceKey)?;
    bytes.try_into().map_err(|_| ConfigError::ResourceKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_default_parses_to_the_default() {
        let text = Config::documented_default_toml();
        let parsed = Config::from_toml(&text, Path::new("default.toml")).unwrap();
        assert_eq!(parsed, Config::default());
        assert_eq!(Config::from_toml("", Path::new("empty.toml")).unwrap(), Config::default());
    }

    #[test]
    fn rejects_unknown_fields_and_bad_keys() {
        let e = Config::from_toml("listn = \"1.2.3.4:5\"", Path::new("c.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = Config::from_toml("resource_key = \"abcd\"", Path::new("c.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::ResourceKey), "{e}");
        let e = Config::from_toml("session_lifetime_secs = 0", Path::new("c.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Zero { .. }), "{e}");
        let k = "00".repeat(32);
        let c = Config::from_toml(&format!("resource_key = \"{k}\""), Path::new("c")).unwrap();
        assert_eq!(c.resource_key.as_deref(), Some(k.as_str()));
        assert_eq!(Config::default().tpm_clock_tolerance_ms, 60_000);
        let c = Config::from_toml("tpm_clock_tolerance_ms = 1000", Path::new("c")).unwrap();
        assert_eq!(c.tpm_clock_tolerance_ms, 1000);
        assert_eq!(Config::default().group_commit(), GroupCommit::default());
        let e = Config::from_toml("commit_siblings = 0", Path::new("c.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Zero { field: "commit_siblings" }), "{e}");
        let c =
            Config::from_toml("commit_delay_us = 0\ncommit_siblings = 4", Path::new("c")).unwrap();
        let g = c.group_commit();
        assert_eq!((g.delay, g.siblings), (std::time::Duration::ZERO, 4));
    }
}
