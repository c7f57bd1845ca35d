//! The verifier's audit log: append-only, hash-chained, signed.
//!
//! Every registration, attestation, release, denial and policy change is one
//! [`AuditEntry`]. An entry's `hash` is SHA-256 over the RFC 8785 canonical
//! JSON of its body (sequence number, time, event, subject, detail, the
//! previous entry's hash and the signing key's id), and `signature` is the
//! verifier's ES256 signature over that hash. An entry may be stored
//! unsigned (empty `signature`) when a later entry written in the same
//! transaction is signed: that signature covers it through the hash chain.
//! The store's group commit signs only the newest entry of each
//! transaction, so the log's newest entry is always signed, and a log whose
//! tail is unsigned does not verify. An append refuses to build on an
//! unsigned newest entry that its own transaction did not write, so an
//! entry planted unsigned never borrows the verifier's next signature. So:
//!
//! - changing, inserting, reordering or deleting an entry breaks the chain at
//!   that entry ([`verify_chain`] names it and why);
//! - forging a consistent chain needs the verifier's signing key, which is a
//!   file in the verifier's state directory, not a database row: a party
//!   that can write the database (another replica's host, a backup) cannot
//!   rewrite history;
//! - cutting entries off the *end* leaves a shorter chain that is still
//!   valid, as in every hash chain; [`verify_chain`] therefore also checks
//!   that a head recorded earlier (`seq:hash`, printed by every
//!   `tellus-verifier audit verify`) is still part of the chain.
//!
//! Signatures are made with the token-signing key, whose public half is
//! published at `GET /tellus/v1/jwks`, so anyone can check a log export.
//! This is written here rather than taken from a crate: the transparency-log
//! crates (Trillian/Rekor clients) need a log server; this is one table.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest serialised `detail` kept (longer details are cut to a summary).
pub const MAX_DETAIL_BYTES: usize = 8 << 10;
/// Longest `subject`.
pub const MAX_SUBJECT_LEN: usize = 256;

/// What happened. The string forms are stable: they are stored and signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditEvent {
    /// A host asked to enroll and got a credential challenge.
    #[serde(rename = "host.enroll-requested")]
    HostEnrollRequested,
    /// A host proved its AK credential activation.
    #[serde(rename = "host.activated")]
    HostActivated,
    /// An enrollment step was refused (untrusted EK CA, wrong proof, ...).
    #[serde(rename = "host.enroll-refused")]
    HostEnrollRefused,
    /// An administrator changed a host (labels, removal).
    #[serde(rename = "host.changed")]
    HostChanged,
    /// Evidence verified; the attestation policy's verdict is in `detail`.
    #[serde(rename = "attestation.verified")]
    AttestationVerified,
    /// Evidence was refused before any policy ran.
    #[serde(rename = "attestation.refused")]
    AttestationRefused,
    /// A resource left the verifier (encrypted to the tee key).
    #[serde(rename = "resource.released")]
    ResourceReleased,
    /// A resource request was denied.
    #[serde(rename = "resource.denied")]
    ResourceDenied,
    /// An administrator uploaded or replaced a resource.
    #[serde(rename = "resource.uploaded")]
    ResourceUploaded,
    /// An attestation or resource policy changed.
    #[serde(rename = "policy.changed")]
    PolicyChanged,
    /// Reference values were added.
    #[serde(rename = "reference-values.changed")]
    ReferenceValuesChanged,
}

impl AuditEvent {
    /// The stored name, e.g. `resource.released`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::HostEnrollRequested => "host.enroll-requested",
            AuditEvent::HostActivated => "host.activated",
            AuditEvent::HostEnrollRefused => "host.enroll-refused",
            AuditEvent::HostChanged => "host.changed",
            AuditEvent::AttestationVerified => "attestation.verified",
            AuditEvent::AttestationRefused => "attestation.refused",
            AuditEvent::ResourceReleased => "resource.released",
            AuditEvent::ResourceDenied => "resource.denied",
            AuditEvent::ResourceUploaded => "resource.uploaded",
            AuditEvent::PolicyChanged => "policy.changed",
            AuditEvent::ReferenceValuesChanged => "reference-values.changed",
        }
    }
}

/// One entry of the log, as stored and exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 0 for the first entry, then +1 each.
    pub seq: u64,
    /// Unix time in milliseconds, as the verifier saw it.
    pub time_ms: i64,
    /// An [`AuditEvent`] name (kept as a string so that a log written by a
    /// newer verifier still verifies).
    pub event: String,
    /// Whom it is about: a host id, a resource path, a policy name.
    pub subject: String,
    /// Event-specific facts (verdict, reasons, session, ...).
    pub detail: Value,
    /// `hash` of the previous entry, [`GENESIS_HASH`] for the first.
    pub prev_hash: String,
    /// Key id (RFC 7638 thumbprint) of the signing key.
    pub kid: String,
    /// Hex SHA-256 of the canonical JSON of the fields above.
    pub hash: String,
    /// Base64url ES256 (P-256, fixed-length r‖s) signature over `hash`'s
    /// bytes; empty when a later entry's signature covers this one (see
    /// the module documentation).
    pub signature: String,
}

/// Signs audit entries; the service passes its token-signing key.
pub trait AuditSigner {
    /// The key id written into each entry.
    fn kid(&self) -> &str;
    /// An ES256 (fixed-length) signature over `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AuditError>;
}

/// Why an entry could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot canonicalise the audit entry: {0}")]
    Canonical(String),
    #[error("signing the audit entry failed; check the verifier's signing key")]
    Sign,
    #[error("the audit log's last entry has sequence number u64::MAX; start a new log")]
    Full,
    #[error("an audit entry made for key {kid} was to be signed with key {signer} (a bug in the verifier: report it)")]
    WrongSigner { kid: String, signer: String },
}

/// Where and why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("entry {found} follows entry {after}: entries are missing or reordered (expected {expected})")]
    SeqGap { after: u64, expected: u64, found: u64 },
    #[error("entry {seq} does not link to the entry before it (prev_hash differs): an entry before it was changed, removed or inserted")]
    Broken { seq: u64 },
    #[error("entry {seq} was changed after it was written (its hash does not match its content)")]
    Tampered { seq: u64 },
    #[error("entry {seq} is signed by key {kid}, which is not among the keys given; pass the verifier's JWK Set (GET /tellus/v1/jwks) that was current then")]
    UnknownKey { seq: u64, kid: String },
    #[error(
        "entry {seq}'s signature does not verify with key {kid}: the entry was forged or changed"
    )]
    BadSignature { seq: u64, kid: String },
    #[error("entry {seq} is not a valid audit entry: {detail}")]
    Malformed { seq: u64, detail: String },
    #[error("the head recorded earlier (entry {seq}, hash {hash}) is not in this log: {why}; entries were cut off or the log was replaced")]
    HeadMissing { seq: u64, hash: String, why: &'static str },
    #[error("the log ends with unsigned entries (from entry {from}): no signature covers them; entries were cut off after them or their signature was removed")]
    UnsignedTail { from: u64 },
    #[error("entry {seq} is made for key {kid}, but the unsigned entries before it (from entry {from}) for key {other}: a signature covers only entries made for its own key; the log was rewritten")]
    KeyChange { seq: u64, kid: String, from: u64, other: String },
}

/// A verified chain: how many entries and its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub entries: u64,
    /// `(seq, hash)` of the last entry; `None` for an empty log.
    pub head: Option<(u64, String)>,
}

impl ChainSummary {
    /// `seq:hash` of the head, the form `--expect-head` takes.
    pub fn head_string(&self) -> String {
        self.head.as_ref().map_or_else(|| "empty".into(), |(s, h)| format!("{s}:{h}"))
    }
}

/// The hash over an entry's body, hex.
fn body_hash(
    seq: u64,
    time_ms: i64,
    event: &str,
    subject: &str,
    detail: &Value,
    prev_hash: &str,
    kid: &str,
) -> Result<String, AuditError> {
    let body = json!({
        "seq": seq, "time_ms": time_ms, "event": event, "subject": subject,
        "detail": detail, "prev_hash": prev_hash, "kid": kid,
    });
    let canonical = serde_json_canonicalizer::to_vec(&body)
        .map_err(|e| AuditError::Canonical(e.to_string()))?;
    Ok(hex::encode(ring::digest::digest(&ring::digest::SHA256, &canonical)))
}

/// Keeps `detail` within [`MAX_DETAIL_BYTES`]: a longer one is replaced by
/// its size and hash, so an entry's size stays bounded whatever a client sent.
fn bounded_detail(detail: Value) -> Value {
    let bytes = serde_json::to_vec(&detail).unwrap_or_default();
    if bytes.len() <= MAX_DETAIL_BYTES {
        return detail;
    }
    json!({
        "truncated": true,
        "bytes": bytes.len(),
        "sha256": hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes)),
    })
}

impl AuditEntry {
    /// The entry that follows `prev` (or starts the log), signed.
    pub fn next(
        prev: Option<&AuditEntry>,
        time_ms: i64,
        event: AuditEvent,
        subject: &str,
        detail: Value,
        signer: &dyn AuditSigner,
    ) -> Result<AuditEntry, AuditError> {
        let mut entry = AuditEntry::next_unsigned(prev, time_ms, event, subject, detail, signer)?;
        entry.sign(signer)?;
        Ok(entry)
    }

    /// The entry that follows `prev`, with `signer`'s key id but no
    /// signature yet: it must be signed, or followed by a signed entry,
    /// before its transaction commits.
    pub fn next_unsigned(
        prev: Option<&AuditEntry>,
        time_ms: i64,
        event: AuditEvent,
        subject: &str,
        detail: Value,
        signer: &dyn AuditSigner,
    ) -> Result<AuditEntry, AuditError> {
        let (seq, prev_hash) = match prev {
            None => (0, GENESIS_HASH.to_owned()),
            Some(p) => (p.seq.checked_add(1).ok_or(AuditError::Full)?, p.hash.clone()),
        };
        let subject: String = subject.chars().take(MAX_SUBJECT_LEN).collect();
        let detail = bounded_detail(detail);
        let kid = signer.kid().to_owned();
        let hash = body_hash(seq, time_ms, event.as_str(), &subject, &detail, &prev_hash, &kid)?;
        Ok(AuditEntry {
            seq,
            time_ms,
            event: event.as_str().to_owned(),
            subject,
            detail,
            prev_hash,
            kid,
            hash,
            signature: String::new(),
        })
    }

    /// Signs this entry's hash with `signer`, whose key id it must carry.
    pub fn sign(&mut self, signer: &dyn AuditSigner) -> Result<(), AuditError> {
        self.signature = signature_over(&self.kid, &self.hash, signer)?;
        Ok(())
    }
}

/// The `signature` of an entry with key id `kid` and hash `hash` (hex),
/// made by `signer`, which must hold that key id.
pub fn signature_over(
    kid: &str,
    hash: &str,
    signer: &dyn AuditSigner,
) -> Result<String, AuditError> {
    if signer.kid() != kid {
        return Err(AuditError::WrongSigner {
            kid: kid.to_owned(),
            signer: signer.kid().to_owned(),
        });
    }
    let raw = hex::decode(hash).map_err(|e| AuditError::Canonical(e.to_string()))?;
    Ok(B64URL.encode(signer.sign(&raw)?))
}

/// Public keys by key id, as uncompressed P-256 points.
#[derive(Debug, Clone, Default)]
pub struct AuditKeys(BTreeMap<String, Vec<u8>>);

impl AuditKeys {
    /// The EC P-256 keys of a JWK Set (`{"keys": [{"kid", "x", "y", ...}]}`);
    /// other keys are skipped.
    pub fn from_jwks(jwks: &Value) -> AuditKeys {
        let mut out = BTreeMap::new();
        for k in jwks.get("keys").and_then(Value::as_array).into_iter().flatten() {
            let field = |n: &str| k.get(n).and_then(Value::as_str);
            let (Some("EC"), Some("P-256"), Some(kid), Some(x), Some(y)) =
                (field("kty"), field("crv"), field("kid"), field("x"), field("y"))
            else {
                continue;
            };
            let (Ok(x), Ok(y)) = (B64URL.decode(x), B64URL.decode(y)) else { continue };
            if x.len() == 32 && y.len() == 32 {
                out.insert(kid.to_owned(), [&[4u8][..], &x, &y].concat());
            }
        }
        AuditKeys(out)
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Checks a whole log, in order: sequence numbers from 0 without gaps, each
/// entry linked to the one before, each hash recomputed, each signature
/// verified, the last entry signed (an unsigned entry is covered by the
/// next signed one); and, if `expect_head` (`(seq, hash)` recorded
/// earlier) is given, that entry is still there unchanged.
pub fn verify_chain<I>(
    entries: I,
    keys: &AuditKeys,
    expect_head: Option<(u64, &str)>,
) -> Result<ChainSummary, ChainError>
where
    I: IntoIterator<Item = AuditEntry>,
{
    let mut prev: Option<(u64, String)> = None;
    let mut count = 0u64;
    let mut head_seen = false;
    // The first of the entries since the last signed one, and its key.
    let mut unsigned_from: Option<(u64, String)> = None;
    for e in entries {
        let expected = prev.as_ref().map_or(0, |(s, _)| s + 1);
        if e.seq != expected {
            return Err(ChainError::SeqGap {
                after: prev.as_ref().map_or(0, |(s, _)| *s),
                expected,
                found: e.seq,
            });
        }
        let want_prev = prev.as_ref().map_or(GENESIS_HASH, |(_, h)| h.as_str());
        if e.prev_hash != want_prev {
            return Err(ChainError::Broken { seq: e.seq });
        }
        let hash =
            body_hash(e.seq, e.time_ms, &e.event, &e.subject, &e.detail, &e.prev_hash, &e.kid)
                .map_err(|err| ChainError::Malformed { seq: e.seq, detail: err.to_string() })?;
        if hash != e.hash {
            return Err(ChainError::Tampered { seq: e.seq });
        }
        let key = keys
            .0
            .get(&e.kid)
            .ok_or_else(|| ChainError::UnknownKey { seq: e.seq, kid: e.kid.clone() })?;
        if let Some((from, other)) = &unsigned_from {
            if *other != e.kid {
                return Err(ChainError::KeyChange {
                    seq: e.seq,
                    kid: e.kid.clone(),
                    from: *from,
                    other: other.clone(),
                });
            }
        }
        if e.signature.is_empty() {
            unsigned_from.get_or_insert_with(|| (e.seq, e.kid.clone()));
        } else {
            unsigned_from = None;
            verify_signature(&e, key)?;
        }
        if let Some((s, h)) = expect_head {
            if e.seq == s {
                if e.hash != h {
                    return Err(ChainError::HeadMissing {
                        seq: s,
                        hash: h.into(),
                        why: "that entry now has another hash",
                    });
                }
                head_seen = true;
            }
        }
        count += 1;
        prev = Some((e.seq, e.hash));
    }
    if let Some((from, _)) = unsigned_from {
        return Err(ChainError::UnsignedTail { from });
    }
    if let Some((s, h)) = expect_head {
        if !head_seen {
            return Err(ChainError::HeadMissing {
                seq: s,
                hash: h.into(),
                why: "the log ends before it",
            });
        }
    }
    Ok(ChainSummary { entries: count, head: prev })
}

/// Checks `e`'s signature over its hash with `key` (an uncompressed P-256
/// point).
fn verify_signature(e: &AuditEntry, key: &[u8]) -> Result<(), ChainError> {
    let bad = || ChainError::BadSignature { seq: e.seq, kid: e.kid.clone() };
    let sig = B64URL.decode(&e.signature).map_err(|_| bad())?;
    let raw = hex::decode(&e.hash)
        .map_err(|err| ChainError::Malformed { seq: e.seq, detail: err.to_string() })?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key).verify(&raw, &sig).map_err(|_| bad())
}

/// Parses `seq:hash` (the form `audit verify` prints).
pub fn parse_head(s: &str) -> Option<(u64, String)> {
    let (seq, hash) = s.split_once(':')?;
    let seq = seq.parse().ok()?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (seq, hash.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    struct TestSigner {
        key: EcdsaKeyPair,
        kid: String,
    }

    impl TestSigner {
        fn new(kid: &str) -> TestSigner {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            TestSigner { key, kid: kid.into() }
        }

        fn jwks(&self) -> Value {
            let p = self.key.public_key().as_ref();
            json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": self.kid,
                "x": B64URL.encode(&p[1..33]), "y": B64URL.encode(&p[33..65])}]})
        }
    }

    impl AuditSigner for TestSigner {
        fn kid(&self) -> &str {
            &self.kid
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AuditError> {
            let rng = SystemRandom::new();
            self.key.sign(&rng, message).map(|s| s.as_ref().to_vec()).map_err(|_| AuditError::Sign)
        }
    }

    fn log(signer: &TestSigner, n: u64) -> Vec<AuditEntry> {
        log_at(signer, n, 1_000)
    }

    fn log_at(signer: &TestSigner, n: u64, t0: i64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let e = AuditEntry::next(
                out.last(),
                t0 + i as i64,
                AuditEvent::ResourceReleased,
                "default/key/disk",
                json!({"session": format!("s{i}")}),
                signer,
            )
            .unwrap();
            out.push(e);
        }
        out
    }

    #[test]
    fn an_unsigned_entry_is_covered_by_the_next_signature_and_never_ends_the_log() {
        let s = TestSigner::new("k1");
        let keys = AuditKeys::from_jwks(&s.jwks());
        // Two group commits: entries 0–2 (2 signed) and 3–4 (4 signed).
        let mut log = log(&s, 5);
        for i in [0, 1, 3] {
            log[i].signature.clear();
        }
        assert_eq!(verify_chain(log.clone(), &keys, None).unwrap().entries, 5);

        // The newest signature removed, or the log cut after an unsigned
        // entry: nothing covers the tail.
        let mut stripped = log.clone();
        stripped[4].signature.clear();
        assert_eq!(verify_chain(stripped, &keys, None), Err(ChainError::UnsignedTail { from: 3 }));
        assert_eq!(
            verify_chain(log[..4].to_vec(), &keys, None),
            Err(ChainError::UnsignedTail { from: 3 })
        );

        // An unsigned entry rewritten with every hash after it recomputed:
        // the signature that covered it no longer verifies.
        let mut forged = log.clone();
        forged[3].detail = json!({"session": "forged"});
        for i in 3..5 {
            let prev = forged[i - 1].hash.clone();
            let e = &mut forged[i];
            e.prev_hash = prev;
            e.hash =
                body_hash(e.seq, e.time_ms, &e.event, &e.subject, &e.detail, &e.prev_hash, &e.kid)
                    .unwrap();
        }
        assert_eq!(
            verify_chain(forged, &keys, None),
            Err(ChainError::BadSignature { seq: 4, kid: "k1".into() })
        );

        // An unsigned entry of another key is not covered: its run must
        // end with a signature by that key.
        let k2 = TestSigner::new("k2");
        let mut keys2 = keys.clone();
        keys2.0.extend(AuditKeys::from_jwks(&k2.jwks()).0);
        let mut mixed = log[..4].to_vec();
        let e =
            AuditEntry::next(Some(&mixed[3]), 9, AuditEvent::PolicyChanged, "p", json!({}), &k2)
                .unwrap();
        mixed.push(e);
        assert!(matches!(
            verify_chain(mixed, &keys2, None),
            Err(ChainError::KeyChange { seq: 4, from: 3, .. })
        ));

        // An entry is signed only with the key it names.
        let mut e = AuditEntry::next_unsigned(
            None,
            1,
            AuditEvent::PolicyChanged,
            "p",
            json!({}),
            &TestSigner::new("k2"),
        )
        .unwrap();
        assert!(matches!(e.sign(&s), Err(AuditError::WrongSigner { .. })));
        assert!(e.signature.is_empty());
    }

    #[test]
    fn a_fresh_log_verifies_and_reports_its_head() {
        let s = TestSigner::new("k1");
        let keys = AuditKeys::from_jwks(&s.jwks());
        assert_eq!(keys.len(), 1);
        let l = log(&s, 5);
        assert_eq!(l[0].prev_hash, GENESIS_HASH);
        let sum = verify_chain(l.clone(), &keys, None).unwrap();
        assert_eq!(sum.entries, 5);
        assert_eq!(sum.head, Some((4, l[4].hash.clone())));
        let head = parse_head(&sum.head_string()).unwrap();
        assert_eq!(verify_chain(l.clone(), &keys, Some((head.0, &head.1))).unwrap(), sum);
        let mid = l[2].hash.clone();
        assert!(verify_chain(l, &keys, Some((2, &mid))).is_ok());
        assert_eq!(verify_chain(Vec::new(), &keys, None).unwrap().head_string(), "empty");
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let s = TestSigner::new("k1");
        let keys = AuditKeys::from_jwks(&s.jwks());
        let l = log(&s, 5);

        let mut t = l.clone();
        t[2].detail = json!({"session": "other"});
        assert_eq!(verify_chain(t, &keys, None), Err(ChainError::Tampered { seq: 2 }));

        let mut t = l.clone();
        t[1].time_ms += 1;
        assert_eq!(verify_chain(t, &keys, None), Err(ChainError::Tampered { seq: 1 }));

        let mut t = l.clone();
        t.remove(2);
        assert_eq!(
            verify_chain(t, &keys, None),
            Err(ChainError::SeqGap { after: 1, expected: 2, found: 3 })
        );

        let mut t = l.clone();
        t.swap(1, 2);
        assert!(matches!(verify_chain(t, &keys, None), Err(ChainError::SeqGap { .. })));

        // Rewriting an entry and renumbering/re-hashing without the key: the
        // hash is recomputed consistently, but the signature fails.
        let mut t = l.clone();
        t[3].subject = "default/key/other".into();
        t[3].hash = body_hash(
            t[3].seq,
            t[3].time_ms,
            &t[3].event,
            &t[3].subject,
            &t[3].detail,
            &t[3].prev_hash,
            &t[3].kid,
        )
        .unwrap();
        assert_eq!(
            verify_chain(t, &keys, None),
            Err(ChainError::BadSignature { seq: 3, kid: "k1".into() })
        );

        // A whole chain re-made with another key: unknown key.
        let mallory = TestSigner::new("k2");
        let forged = log(&mallory, 5);
        assert_eq!(
            verify_chain(forged, &keys, None),
            Err(ChainError::UnknownKey { seq: 0, kid: "k2".into() })
        );

        // Same kid, other key: bad signature.
        let mallory = TestSigner::new("k1");
        assert_eq!(
            verify_chain(log(&mallory, 2), &keys, None),
            Err(ChainError::BadSignature { seq: 0, kid: "k1".into() })
        );

        // An entry from another log spliced in: it does not link.
        let other = log_at(&s, 5, 9_000);
        let mut t = l.clone();
        t[3] = other[3].clone();
        assert_eq!(verify_chain(t, &keys, None), Err(ChainError::Broken { seq: 3 }));

        // Tail cut off: still a valid chain, caught by the recorded head.
        let head = (4, l[4].hash.as_str());
        let cut = l[..3].to_vec();
        assert!(verify_chain(cut.clone(), &keys, None).is_ok());
        let e = verify_chain(cut, &keys, Some(head)).unwrap_err();
        assert!(matches!(e, ChainError::HeadMissing { seq: 4, .. }), "{e}");
        let e = verify_chain(other, &keys, Some(head)).unwrap_err();
        assert!(e.to_string().contains("another hash"), "{e}");
    }

    #[test]
    fn details_and_subjects_are_bounded() {
        let s = TestSigner::new("k1");
        let big = json!({"blob": "x".repeat(MAX_DETAIL_BYTES * 2)});
        let e = AuditEntry::next(None, 0, AuditEvent::PolicyChanged, &"s".repeat(1000), big, &s)
            .unwrap();
        assert_eq!(e.subject.len(), MAX_SUBJECT_LEN);
        assert_eq!(e.detail["truncated"], true);
        assert!(serde_json::to_vec(&e).unwrap().len() < 2048);
        let keys = AuditKeys::from_jwks(&s.jwks());
        assert!(verify_chain(vec![e], &keys, None).is_ok());
    }

    #[test]
    fn heads_parse_strictly() {
        assert_eq!(parse_head(&format!("7:{}", "Ab".repeat(32))), Some((7, "ab".repeat(32))));
        for bad in ["", "7", "x:00", "7:00", &format!("-1:{}", "0".repeat(64))] {
            assert_eq!(parse_head(bad), None, "{bad}");
        }
    }

    #[test]
    fn event_names_are_stable() {
        for e in [
            AuditEvent::HostEnrollRequested,
            AuditEvent::HostActivated,
            AuditEvent::HostEnrollRefused,
            AuditEvent::HostChanged,
            AuditEvent::AttestationVerified,
            AuditEvent::AttestationRefused,
            AuditEvent::ResourceReleased,
            AuditEvent::ResourceDenied,
            AuditEvent::ResourceUploaded,
            AuditEvent::PolicyChanged,
            AuditEvent::ReferenceValuesChanged,
        ] {
            assert_eq!(serde_json::to_value(e).unwrap(), json!(e.as_str()));
        }
    }
}
