//! Attested secret release, guest side: ask the launcher to attest this VM
//! for the resources named on the kernel command line, decrypt what the
//! verifier released to this guest's ephemeral key, and store it.
//!
//! The resources come from the guest's own (measured) command line, never
//! from the host: a host that changes the list changes the measured
//! cmdline, which the verifier's policy sees. The private key exists only
//! in this process's memory for the length of one exchange. A secret is
//! written to `/run/tellus/secrets/<repo>/<type>/<tag>` (tmpfs, directories
//! 0700, file 0600) and only its SHA-256 is printed and reported.

use crate::AgentError;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tellus_protocol::jwe::TeeKey;
use tellus_protocol::{
    AttestResult, FailedSecret, GuestMessage, ReleasedResource, ResourcePath, StoredSecret,
};

/// Where secrets are stored.
pub const SECRETS_DIR: &str = "/run/tellus/secrets";

/// An attestation in flight: the key and what was asked for.
pub struct Pending {
    key: TeeKey,
    wanted: Vec<ResourcePath>,
}

/// Makes the ephemeral key and the `AttestRequest` for `resources`.
pub fn request(resources: &[ResourcePath]) -> Result<(Pending, GuestMessage), AgentError> {
    let key = TeeKey::generate().map_err(AgentError::Key)?;
    let msg = GuestMessage::AttestRequest {
        resources: resources.iter().map(ToString::to_string).collect(),
        tee_pubkey: key.public_jwk().clone(),
    };
    Ok((Pending { key, wanted: resources.to_vec() }, msg))
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// Writes `data` to `dir/<repo>/<type>/<tag>`: directories 0700, the file
/// 0600, never through a symbolic link.
fn store(dir: &Path, path: &ResourcePath, data: &[u8]) -> std::io::Result<PathBuf> {
    let [repo, kind, tag] = path.segments();
    let parent = dir.join(repo).join(kind);
    DirBuilder::new().recursive(true).mode(0o700).create(&parent)?;
    let file = parent.join(tag);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&file)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(file)
}

/// Handles the launcher's answer: decrypts and stores every released
/// resource that was asked for, prints one line per secret (its path and
/// SHA-256, never its bytes) or the denial, and returns the report for the
/// launcher. Consumes the key.
pub fn finish(pending: Pending, result: AttestResult, dir: &Path) -> GuestMessage {
    let mut stored = Vec::new();
    let mut failed = Vec::new();
    match result {
        AttestResult::Denied { reason } => {
            println!("tellus-agent: attestation denied: {reason}");
            println!("tellus-agent: no secret received");
        }
        AttestResult::Released { resources } => {
            for ReleasedResource { resource, jwe } in resources {
                let fail = |failed: &mut Vec<FailedSecret>, reason: String| {
                    println!("tellus-agent: resource {resource}: {reason}; not stored");
                    failed.push(FailedSecret { resource: resource.clone(), reason });
                };
                let Some(path) =
                    ResourcePath::parse(&resource).ok().filter(|p| pending.wanted.contains(p))
                else {
                    fail(&mut failed, "not requested".into());
                    continue;
                };
                let mut plain = match pending.key.decrypt(&jwe) {
                    Ok(p) => p,
                    Err(e) => {
                        fail(&mut failed, e.to_string());
                        continue;
                    }
                };
                let sha256 = sha256_hex(&plain);
                match store(dir, &path, &plain) {
                    Ok(file) => {
                        println!("secret {} sha256={sha256}", file.display());
                        stored.push(StoredSecret { resource: path.to_string(), sha256 });
                    }
                    Err(e) => fail(&mut failed, format!("cannot write it: {e}")),
                }
                plain.fill(0);
            }
            for w in &pending.wanted {
                let w = w.to_string();
                if !stored.iter().any(|s| s.resource == w)
                    && !failed.iter().any(|f| f.resource == w)
                {
                    println!("tellus-agent: resource {w} was not released");
                    failed.push(FailedSecret { resource: w, reason: "not released".into() });
                }
            }
            if stored.is_empty() {
                println!("tellus-agent: no secret received");
            }
        }
    }
    GuestMessage::SecretsStored { stored, failed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stores_released_secrets_and_reports_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let wanted =
            vec![ResourcePath::parse("r/k/one").unwrap(), ResourcePath::parse("r/k/two").unwrap()];
        let (pending, msg) = request(&wanted).unwrap();
        let GuestMessage::AttestRequest { tee_pubkey, resources } = msg else { panic!() };
        assert_eq!(resources, ["r/k/one", "r/k/two"]);
        let jwe = tellus_protocol::jwe::encrypt_for_tests(&tee_pubkey, b"s3cret").unwrap();
        let result = AttestResult::Released {
            resources: vec![
                ReleasedResource { resource: "r/k/one".into(), jwe },
                ReleasedResource { resource: "r/k/other".into(), jwe: "{}".into() },
            ],
        };
        let GuestMessage::SecretsStored { stored, failed } = finish(pending, result, dir.path())
        else {
            panic!()
        };
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].sha256, sha256_hex(b"s3cret"));
        let file = dir.path().join("r/k/one");
        assert_eq!(std::fs::read(&file).unwrap(), b"s3cret");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let d = std::fs::metadata(dir.path().join("r/k")).unwrap();
        assert_eq!(d.permissions().mode() & 0o777, 0o700);
        let reasons: Vec<_> = failed.iter().map(|f| (&f.resource[..], &f.reason[..])).collect();
        assert_eq!(reasons, [("r/k/other", "not requested"), ("r/k/two", "not released")]);
    }

    #[test]
    fn denial_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (pending, _) = request(&[ResourcePath::parse("r/k/one").unwrap()]).unwrap();
        let msg = finish(pending, AttestResult::Denied { reason: "no".into() }, dir.path());
        assert_eq!(msg, GuestMessage::SecretsStored { stored: vec![], failed: vec![] });
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn does_not_write_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("r/k")).unwrap();
        let target = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, dir.path().join("r/k/one")).unwrap();
        let p = ResourcePath::parse("r/k/one").unwrap();
        assert!(store(dir.path(), &p, b"x").is_err());
        assert!(!target.exists());
    }
}
