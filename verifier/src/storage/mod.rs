//! The verifier's state behind one small trait, [`Store`].
//!
//! - [`sqlite`]: the default implementation (one SQLite file, zero set-up);
//!   a PostgreSQL implementation for several replicas comes later and
//!   implements the same trait;
//! - [`sealing`]: AES-256-GCM encryption of resources at rest. Sealing is
//!   done above the store, so every backend holds only ciphertext.
//!
//! Every method is synchronous and short (no method waits for the disk to
//! flush); the service calls them inline on its runtime workers
//! (`service::run_sync`).

pub mod sealing;
pub mod sqlite;

pub use sealing::{ResourceKey, SealError, SealedResource};
pub use sqlite::{GroupCommit, SqliteStore};

use crate::audit::{AuditEntry, AuditError, AuditSigner};
pub use crate::registrar::enrollment::PendingEnrollment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tellus_policies::ReferenceSet;

/// Longest `repo`, `type` or `tag` segment of a resource path.
pub const MAX_SEGMENT_LEN: usize = 128;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {source}; check its parent's permissions")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "database error: {0}; check that the state directory is writable and the disk is not full"
    )]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database has schema version {found}, newer than this verifier's {supported}; run a newer tellus-verifier")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("stored {what} is corrupt ({detail}); restore the database from a backup")]
    Corrupt { what: &'static str, detail: String },
    #[error("a session with id {0} already exists; retry with a fresh id")]
    DuplicateSession(String),
    #[error("the database lock was poisoned by a panic in another request; restart the verifier")]
    Poisoned,
    #[error("cannot write the audit entry: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("cannot start the SQLite checkpoint thread: {0}; check the process's thread limit")]
    CheckpointThread(#[source] std::io::Error),
    #[error("cannot start the SQLite writer thread: {0}; check the process's thread limit")]
    WriterThread(#[source] std::io::Error),
    #[error("the database did not commit the group of writes this one was in ({0}); nothing of it is stored: check the disk and retry")]
    GroupCommit(String),
    #[error("the store's writer thread has stopped; restart the verifier")]
    WriterGone,
    #[error("a store write panicked (a bug in the verifier: report it); nothing of it is stored")]
    WritePanicked,
}

/// The audit entry of a queued write: it makes the entry that follows the
/// log's last one (see [`Store::append_audit`]) without a signature, and
/// names the signer. A store signs every entry before its transaction
/// commits ([`AuditMaker::signed`]), or only the newest entry of the
/// transaction, whose signature covers the ones before it through the hash
/// chain (`crate::audit`; the SQLite store's group commit does this).
pub struct AuditMaker {
    unsigned: Box<MakeEntry>,
    signer: Arc<dyn AuditSigner + Send + Sync>,
}

/// Makes the entry that follows the log's last one (or starts the log),
/// unsigned, for the signer it is given.
type MakeEntry =
    dyn Fn(Option<&AuditEntry>, &dyn AuditSigner) -> Result<AuditEntry, AuditError> + Send;

impl AuditMaker {
    /// `unsigned(last, signer)` must return the entry that follows `last`,
    /// made for `signer` and left unsigned ([`AuditEntry::next_unsigned`]).
    pub fn new(
        unsigned: impl Fn(Option<&AuditEntry>, &dyn AuditSigner) -> Result<AuditEntry, AuditError>
            + Send
            + 'static,
        signer: Arc<dyn AuditSigner + Send + Sync>,
    ) -> AuditMaker {
        AuditMaker { unsigned: Box::new(unsigned), signer }
    }

    /// The entry after `last`, unsigned: to be signed, or followed by a
    /// signed entry, in the same transaction.
    pub fn unsigned(&self, last: Option<&AuditEntry>) -> Result<AuditEntry, AuditError> {
        (self.unsigned)(last, &*self.signer)
    }

    /// The entry after `last`, signed.
    pub fn signed(&self, last: Option<&AuditEntry>) -> Result<AuditEntry, AuditError> {
        let mut entry = self.unsigned(last)?;
        entry.sign(&*self.signer)?;
        Ok(entry)
    }

    /// Who signs this entry.
    pub fn signer(&self) -> &Arc<dyn AuditSigner + Send + Sync> {
        &self.signer
    }
}

/// An accepted attestation, as [`Store::mark_attested`] records it.
#[derive(Clone, Debug, PartialEq)]
pub struct AttestationRecord {
    /// The session it marks attested.
    pub session_id: String,
    /// The session's token and tee key.
    pub attested: Attested,
    /// The session's new expiry.
    pub expires_at_ms: i64,
    /// The attested TPM's clock state, if the tee has one.
    pub host_clock: Option<HostClock>,
}

/// Where a queued write's result goes: called once, when the group commit
/// its write was part of has ended (or when the write failed on its own).
pub type Done<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send + 'static>;

/// A resource path `repo/type/tag`, each segment non-empty, at most
/// [`MAX_SEGMENT_LEN`] bytes of `[A-Za-z0-9._-]`, and not `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourcePath {
    pub repo: String,
    pub kind: String,
    pub tag: String,
}

/// Why a resource path was refused.
#[derive(Debug, thiserror::Error)]
#[error("resource path segment {segment:?} is invalid: use 1 to {MAX_SEGMENT_LEN} characters of A-Z a-z 0-9 . _ - (not `.` or `..`)")]
pub struct ResourcePathError {
    pub segment: String,
}

impl ResourcePath {
    /// Validates the three segments.
    pub fn new(repo: &str, kind: &str, tag: &str) -> Result<ResourcePath, ResourcePathError> {
        for s in [repo, kind, tag] {
            let ok = !s.is_empty()
                && s.len() <= MAX_SEGMENT_LEN
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                let mut segment: String = s.chars().take(MAX_SEGMENT_LEN).collect();
                if s.len() > segment.len() {
                    segment.push('…');
                }
                return Err(ResourcePathError { segment });
            }
        }
        Ok(ResourcePath { repo: repo.into(), kind: kind.into(), tag: tag.into() })
    }
}

impl std::fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.repo, self.kind, self.tag)
    }
}

/// A KBS session (`POST /kbs/v0/auth` creates it, `/attest` completes it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// UUID, simple form (32 lowercase hex digits).
    pub id: String,
    /// The nonce as sent to the client (base64 of 32 random bytes).
    pub nonce: String,
    /// The tee named in the auth request (`tpm`, `sample`).
    pub tee: String,
    /// Unix time in milliseconds after which the session is dead.
    pub expires_at_ms: i64,
    /// Set once the session is attested.
    pub attested: Option<Attested>,
}

/// What a successful attestation left in a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attested {
    /// The EAR token issued.
    pub token: String,
    /// The tee public key (JWK JSON text) resources are encrypted to.
    pub tee_pubkey: String,
}

/// A stored resource: its ciphertext and the host labels a requester must
/// carry (set at upload with `?required-labels=`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResource {
    pub sealed: SealedResource,
    pub required_labels: BTreeMap<String, String>,
}

/// Which policy a stored policy text is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    Attestation,
    Resource,
}

impl PolicyKind {
    fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Attestation => "attestation",
            PolicyKind::Resource => "resource",
        }
    }
}

/// An enrolled host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    /// EK public area or SPKI, as enrolled.
    pub ek_public: Vec<u8>,
    /// AK public area or SPKI, as enrolled.
    pub ak_public: Vec<u8>,
    /// Labels set at enrollment (location-boundedness).
    pub labels: BTreeMap<String, String>,
    /// Whether the AK credential was activated (MakeCredential proof seen).
    pub activated: bool,
}

/// A TPM's clock state as a quote's `TPMS_CLOCK_INFO` reports it: resets
/// (power cycles, TPM2_Startup(CLEAR)) since the TPM was cleared, restarts
/// and resumes since the last reset, and milliseconds of powered time.
///
/// The derived order is the order in time of one TPM that is never rolled
/// back: lexicographic over (`reset_count`, `restart_count`, `clock`), the
/// field order. [`Store::mark_attested`] keeps the greatest one seen per
/// host; the TPM verifier refuses a quote that is older (see
/// `crate::service::tpm_verifier`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TpmClock {
    /// `resetCount`.
    pub reset_count: u32,
    /// `restartCount`.
    pub restart_count: u32,
    /// `clock`, in milliseconds.
    pub clock: u64,
}

/// The clock state of an accepted quote, to be recorded as its host's
/// newest (if it is newer than the one stored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostClock {
    /// The enrolled host whose TPM made the quote.
    pub host_id: String,
    /// The quote's clock state.
    pub clock: TpmClock,
}

/// The verifier's state.
///
/// Implementations must be safe to call from several threads at once;
/// each method is one transaction.
pub trait Store: Send + Sync {
    /// Creates a session; fails with [`StoreError::DuplicateSession`] if
    /// the id exists.
    fn create_session(&self, session: &Session) -> Result<(), StoreError>;
    /// The session with this id, expired or not (callers check expiry).
    fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError>;
    /// Records a successful attestation: marks the session attested, moves
    /// its expiry, records the host clock as its host's newest and appends
    /// the attestation's audit entry (`audit`, as for
    /// [`Store::append_audit`]) in one transaction: all or nothing. The
    /// clock is a monotone max-update: the stored one is replaced only by a
    /// greater [`TpmClock`], never lowered. Returns false, and stores
    /// nothing, when no such session exists or it is attested already (a
    /// session's nonce is used once: of two attestations racing on one
    /// session, only the first to commit is recorded).
    fn mark_attested(
        &self,
        record: &AttestationRecord,
        audit: &dyn Fn(Option<&AuditEntry>) -> Result<AuditEntry, AuditError>,
    ) -> Result<bool, StoreError>;
    /// The newest TPM clock state recorded for `host_id` by
    /// [`Store::mark_attested`]; `None` before its first accepted
    /// attestation.
    fn tpm_clock(&self, host_id: &str) -> Result<Option<TpmClock>, StoreError>;
    /// Forgets the TPM clock state recorded for `host_id` (an
    /// administrator's decision); returns whether there was one.
    fn forget_tpm_clock(&self, host_id: &str) -> Result<bool, StoreError>;
    /// Deletes sessions whose expiry is before `now_ms`; returns how many.
    fn delete_expired_sessions(&self, now_ms: i64) -> Result<usize, StoreError>;

    /// Stores (or replaces) a sealed resource and the host labels a
    /// requester must carry.
    fn put_resource(
        &self,
        path: &ResourcePath,
        sealed: &SealedResource,
        required_labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError>;
    /// The resource at `path`.
    fn get_resource(&self, path: &ResourcePath) -> Result<Option<StoredResource>, StoreError>;

    /// Makes `text` the active policy under `id` and keeps it as a new
    /// version in the policy history; returns the version number (it grows
    /// with every change of any policy).
    fn put_policy(&self, kind: PolicyKind, id: &str, text: &str) -> Result<i64, StoreError>;
    /// The active policy text under `id`.
    fn get_policy(&self, kind: PolicyKind, id: &str) -> Result<Option<String>, StoreError>;
    /// Every stored version of the policy `id`, oldest first: (version, text).
    fn policy_history(&self, kind: PolicyKind, id: &str) -> Result<Vec<(i64, String)>, StoreError>;

    /// Merges reference values into the stored ones (digests join
    /// existing names; a digest already stored takes the new expiry and
    /// provenance), in one transaction.
    fn merge_reference_values(&self, add: &ReferenceSet) -> Result<(), StoreError>;
    /// Every stored reference value.
    fn reference_values(&self) -> Result<ReferenceSet, StoreError>;

    /// (latest policy version, reference-value revision): both grow with
    /// every change, so a cache of prepared policies keyed by them sees
    /// changes made by other processes (`tellus-verifier refs add`).
    fn policy_revision(&self) -> Result<(i64, i64), StoreError>;

    /// Stores (or replaces) a host record.
    fn put_host(&self, host: &HostRecord) -> Result<(), StoreError>;
    /// The host record for `host_id`.
    fn get_host(&self, host_id: &str) -> Result<Option<HostRecord>, StoreError>;
    /// Replaces the labels of host `host_id`; false when no such host.
    fn set_host_labels(
        &self,
        host_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError>;

    /// Stores a pending enrollment under its `enrollment_id`.
    fn put_pending(&self, pending: &PendingEnrollment) -> Result<(), StoreError>;
    /// Removes and returns the pending enrollment `id` (take-once: a second
    /// call returns `None`). Expired or not (callers check expiry).
    fn take_pending(&self, id: &str) -> Result<Option<PendingEnrollment>, StoreError>;
    /// Deletes pending enrollments created before `before_secs` (Unix
    /// seconds); returns how many.
    fn delete_expired_pending(&self, before_secs: u64) -> Result<usize, StoreError>;

    /// Appends one audit entry: reads the last entry and stores
    /// `make(last)` in one write transaction, so concurrent appenders (other
    /// threads, other processes on the same database) cannot fork the
    /// chain. Returns the entry stored.
    fn append_audit(
        &self,
        make: &dyn Fn(Option<&AuditEntry>) -> Result<AuditEntry, AuditError>,
    ) -> Result<AuditEntry, StoreError>;
    /// Up to `limit` audit entries with `seq >= from_seq`, in order.
    fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    // Queued writes: the KBS round trip's three writes, for a store that
    // commits concurrent writes together (group commit). Each is still all
    // or nothing on its own; `done` hears of it once its group has
    // committed (or failed), so a caller answers only after that. These
    // defaults write at once, on the calling thread.

    /// [`Store::create_session`], queued.
    fn queue_create_session(&self, session: Session, done: Done<()>) {
        done(self.create_session(&session))
    }

    /// [`Store::mark_attested`], queued.
    fn queue_mark_attested(&self, record: AttestationRecord, audit: AuditMaker, done: Done<bool>) {
        done(self.mark_attested(&record, &|last| audit.signed(last)))
    }

    /// Changes how queued writes are gathered into commits from now on
    /// ([`GroupCommit`]); a store that does not group commits ignores it.
    fn set_group_commit(&self, _gather: GroupCommit) {}

    /// [`Store::append_audit`], queued. The entry reported is the one
    /// written, which a group commit leaves unsigned when it is not the
    /// group's newest (that one's signature covers it).
    fn queue_append_audit(&self, make: AuditMaker, done: Done<AuditEntry>) {
        done(self.append_audit(&|last| make.signed(last)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_path_validation() {
        assert!(ResourcePath::new("default", "key", "disk-1.v2_x").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(ResourcePath::new("r", bad, "t").is_err(), "{bad:?}");
        }
        let e = ResourcePath::new("r", &"y".repeat(500), "t").unwrap_err();
        assert!(e.segment.len() < 200);
    }
}
