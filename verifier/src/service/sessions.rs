//! The KBS sessions this process created or attested, kept in memory
//! beside the store so that `/attest` and `/resource` need no store read
//! for them.
//!
//! The store stays the record (replicas share it, a restart keeps it);
//! what is kept here is only ever what this process itself committed, and
//! a lookup that misses, or finds a state another replica may have moved
//! on from, reads the store as before:
//! - a session's id, nonce and tee never change, and an attested session's
//!   token, key and expiry never change either (the store records a
//!   session's attestation once: [`crate::storage::Store::mark_attested`]);
//! - so an attest request may use either state found here: if another
//!   replica attested the session meanwhile, this process's attestation is
//!   refused by the store and nothing of it is recorded or sent;
//! - a resource request uses only an attested session found here; one found
//!   unattested is read from the store (another replica may have attested
//!   it).
//!
//! Bounds: at most [`MAX_PENDING`] sessions not yet attested (about 200
//! bytes each; beyond it new sessions are simply not kept) and the
//! [`MAX_ATTESTED`] newest attested ones (their token is ~6 KB; the oldest
//! goes first). Expired sessions are dropped by [`LiveSessions::sweep`] and
//! never returned.

use crate::storage::{Attested, Session};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Most sessions kept that are not attested yet.
pub const MAX_PENDING: usize = 65_536;
/// Most attested sessions kept (the newest).
pub const MAX_ATTESTED: usize = 4_096;

/// Which sessions a lookup may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Any live session (for `/attest`).
    Any,
    /// Only an attested one (for `/resource`).
    Attested,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Session>,
    attested: HashMap<String, Session>,
    /// Attested ids, oldest first (may name ids already swept).
    order: VecDeque<String>,
}

/// Sessions this process committed; see the module documentation.
pub struct LiveSessions {
    inner: Mutex<Inner>,
    max_pending: usize,
    max_attested: usize,
}

impl Default for LiveSessions {
    fn default() -> Self {
        LiveSessions::with_limits(MAX_PENDING, MAX_ATTESTED)
    }
}

impl std::fmt::Debug for LiveSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSessions").finish_non_exhaustive()
    }
}

impl LiveSessions {
    /// Keeps at most `max_pending` unattested and `max_attested` attested
    /// sessions.
    pub fn with_limits(max_pending: usize, max_attested: usize) -> LiveSessions {
        LiveSessions { inner: Mutex::new(Inner::default()), max_pending, max_attested }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The maps hold only committed facts, and each update leaves them
        // consistent: a panic elsewhere cannot make them wrong.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A session this process has committed (`POST /kbs/v0/auth`).
    pub fn created(&self, session: Session) {
        if session.attested.is_some() {
            return;
        }
        let mut inner = self.lock();
        if inner.pending.len() < self.max_pending {
            inner.pending.insert(session.id.clone(), session);
        }
    }

    /// Session `id`'s attestation, committed by this process.
    pub fn attested(
        &self,
        id: &str,
        nonce: &str,
        tee: &str,
        attested: Attested,
        expires_at_ms: i64,
    ) {
        let mut inner = self.lock();
        inner.pending.remove(id);
        let session = Session {
            id: id.to_owned(),
            nonce: nonce.to_owned(),
            tee: tee.to_owned(),
            expires_at_ms,
            attested: Some(attested),
        };
        if inner.attested.insert(id.to_owned(), session).is_none() {
            inner.order.push_back(id.to_owned());
        }
        while inner.attested.len() > self.max_attested {
            let Some(oldest) = inner.order.pop_front() else { break };
            inner.attested.remove(&oldest);
        }
    }

    /// Session `id` if it is kept, live at `now_ms`, and of the state
    /// `wanted` allows.
    pub fn get(&self, id: &str, now_ms: i64, wanted: Wanted) -> Option<Session> {
        let inner = self.lock();
        let found = match inner.attested.get(id) {
            Some(s) => Some(s),
            None if wanted == Wanted::Any => inner.pending.get(id),
            None => None,
        };
        found.filter(|s| s.expires_at_ms > now_ms).cloned()
    }

    /// Drops every session expired at `now_ms`.
    pub fn sweep(&self, now_ms: i64) {
        let mut inner = self.lock();
        inner.pending.retain(|_, s| s.expires_at_ms > now_ms);
        inner.attested.retain(|_, s| s.expires_at_ms > now_ms);
        let Inner { attested, order, .. } = &mut *inner;
        order.retain(|id| attested.contains_key(id));
    }

    /// (unattested, attested) sessions kept.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.pending.len(), inner.attested.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(n: u32, expires_at_ms: i64) -> Session {
        Session {
            id: format!("{n:032x}"),
            nonce: format!("nonce-{n}"),
            tee: "tpm".into(),
            expires_at_ms,
            attested: None,
        }
    }

    fn attested(n: u32) -> Attested {
        Attested { token: format!("token-{n}"), tee_pubkey: "{}".into() }
    }

    #[test]
    fn a_resource_lookup_sees_only_attested_sessions_and_nothing_expired() {
        let live = LiveSessions::default();
        let s = session(1, 1_000);
        live.created(s.clone());
        assert_eq!(live.get(&s.id, 500, Wanted::Any), Some(s.clone()));
        // Unattested here may be attested by another replica: the store
        // must be asked.
        assert_eq!(live.get(&s.id, 500, Wanted::Attested), None);
        assert_eq!(live.get(&s.id, 1_000, Wanted::Any), None, "expired at its expiry");
        live.attested(&s.id, &s.nonce, &s.tee, attested(1), 2_000);
        let got = live.get(&s.id, 1_500, Wanted::Attested).expect("attested and live");
        assert_eq!(got.attested, Some(attested(1)));
        assert_eq!((got.nonce.as_str(), got.expires_at_ms), (s.nonce.as_str(), 2_000));
        assert_eq!(live.get(&s.id, 1_500, Wanted::Any), Some(got));
        assert_eq!(live.counts(), (0, 1));
        assert_eq!(live.get(&session(2, 0).id, 0, Wanted::Any), None, "never created here");
    }

    #[test]
    fn bounds_keep_the_newest_attested_and_refuse_pending_beyond_the_limit() {
        let live = LiveSessions::with_limits(2, 2);
        for n in 0..3 {
            live.created(session(n, 10_000));
        }
        assert_eq!(live.counts(), (2, 0));
        assert_eq!(live.get(&session(2, 0).id, 0, Wanted::Any), None, "not kept when full");
        for n in 0..3 {
            let s = session(n, 10_000);
            live.attested(&s.id, &s.nonce, &s.tee, attested(n), 10_000);
        }
        assert_eq!(live.counts(), (0, 2));
        assert_eq!(live.get(&session(0, 0).id, 0, Wanted::Attested), None, "oldest dropped");
        assert!(live.get(&session(2, 0).id, 0, Wanted::Attested).is_some());
    }

    #[test]
    fn an_attested_session_expires_and_is_kept_once() {
        let live = LiveSessions::with_limits(10, 2);
        let s = session(1, 100);
        // Recorded twice (the attestation, then a repeated attest that
        // found it in the store): one entry, one place in the order.
        live.attested(&s.id, &s.nonce, &s.tee, attested(1), 500);
        live.attested(&s.id, &s.nonce, &s.tee, attested(1), 500);
        assert_eq!(live.get(&s.id, 499, Wanted::Attested).unwrap().expires_at_ms, 500);
        assert_eq!(live.get(&s.id, 500, Wanted::Attested), None, "expired at its expiry");
        assert_eq!(live.get(&s.id, 500, Wanted::Any), None);
        for n in 2..4 {
            let t = session(n, 1_000);
            live.attested(&t.id, &t.nonce, &t.tee, attested(n), 1_000);
        }
        // The two newest are kept: 1 was the oldest, once.
        assert_eq!(live.counts(), (0, 2));
        assert_eq!(live.get(&s.id, 0, Wanted::Any), None);
        assert!(live.get(&session(2, 0).id, 0, Wanted::Attested).is_some());
    }

    #[test]
    fn sweep_drops_expired_sessions_of_both_kinds() {
        let live = LiveSessions::default();
        live.created(session(1, 100));
        live.created(session(2, 300));
        let s = session(3, 100);
        live.attested(&s.id, &s.nonce, &s.tee, attested(3), 100);
        live.sweep(200);
        assert_eq!(live.counts(), (1, 0));
        assert!(live.get(&session(2, 0).id, 200, Wanted::Any).is_some());
    }
}
