//! [`Store`] on one SQLite file.
//!
//! Connection handling: one connection behind a `Mutex` for reads and the
//! writes that are not queued, and one on the writer thread for queued
//! writes (group commit, below). SQLite serialises writers anyway and every
//! operation here is a short transaction, so a pool would buy little; WAL
//! mode lets reads run while the writer commits, and keeps readers in
//! *other* processes (backups, `sqlite3`) from blocking the verifier. Several verifier
//! replicas share state through the PostgreSQL store (to come), not through
//! one SQLite file.
//!
//! Checkpoints: with `synchronous = NORMAL` a commit only appends to the
//! WAL; the one step that waits for the disk is the checkpoint, which
//! SQLite by default runs inside whichever commit crosses 1,000 WAL pages.
//! The service runs store calls on its runtime workers (`service::run_sync`),
//! so that wait is moved off them: automatic checkpoints are off on the
//! request connection, and a thread of the store's own with a second
//! connection runs a passive checkpoint every [`CHECKPOINT_INTERVAL`] and
//! one last time when the store is dropped.
//!
//! Group commit: the KBS round trip's writes (session insert, attestation,
//! audit entry) are queued (`Store::queue_*`) to a writer thread with a
//! connection of its own. It takes whatever is queued (up to
//! [`MAX_GROUP`]) into one write transaction, each write under its own
//! savepoint (unless it is alone in the transaction) so that one that
//! fails leaves nothing and the others stay, commits once, and then tells
//! every writer its result. Of the audit
//! entries a group appends, only the newest is signed (just before the
//! commit): its signature covers the others through the hash chain, so a
//! group costs one signature however many entries it holds, and the log's
//! newest entry is always signed. Requests wait for
//! that without holding a runtime worker, so under load many writes share a
//! commit: one WAL append of the pages they touch instead of one each.
//! Under load the writer also waits a moment before it commits, so that
//! more writes join ([`GroupCommit`]). The
//! other writes (administration, registrar, the synchronous methods) run on
//! the request connection and wait for SQLite's write lock like any other
//! process's would (`busy_timeout`).
//!
//! Schema: versioned migrations in [`MIGRATIONS`]; the table
//! `schema_version` holds one row per applied migration. Opening a database
//! applies the missing ones, each in its own transaction, and refuses a
//! database newer than this code.

use super::{
    AttestationRecord, Attested, AuditEntry, AuditError, AuditMaker, Done, HostRecord,
    PendingEnrollment, PolicyKind, ResourcePath, SealedResource, Session, Store, StoreError,
    StoredResource, TpmClock,
};
use crate::audit::{signature_over, AuditSigner};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tellus_policies::ReferenceSet;

/// The database file name inside the state directory.
pub const DB_FILE: &str = "verifier.sqlite3";

/// Migrations, in order; migration N is `MIGRATIONS[N - 1]`.
pub const MIGRATIONS: &[&str] = &[
    // 1: everything the service needs now.
    r#"
    CREATE TABLE sessions (
        id            TEXT PRIMARY KEY,
        nonce         TEXT NOT NULL,
        tee           TEXT NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        token         TEXT,
        tee_pubkey    TEXT
    );
    CREATE INDEX sessions_expiry ON sessions (expires_at_ms);
    CREATE TABLE resources (
        repo       TEXT NOT NULL,
        type       TEXT NOT NULL,
        tag        TEXT NOT NULL,
        nonce      BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (repo, type, tag)
    );
    CREATE TABLE policies (
        kind       TEXT NOT NULL,
        id         TEXT NOT NULL,
        text       TEXT NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE TABLE reference_values (
        name       TEXT PRIMARY KEY,
        vals       TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE hosts (
        host_id   TEXT PRIMARY KEY,
        ek_public BLOB NOT NULL,
        ak_public BLOB NOT NULL,
        labels    TEXT NOT NULL,
        activated INTEGER NOT NULL
    );
    "#,
    // 2: host enrollment challenges waiting for their activation proof.
    r#"
    CREATE TABLE pending_enrollments (
        enrollment_id TEXT PRIMARY KEY,
        pending       TEXT NOT NULL,
        created_at    INTEGER NOT NULL
    );
    CREATE INDEX pending_enrollments_created ON pending_enrollments (created_at);
    "#,
    // 3: policies with a version history; reference values with a revision
    // counter; host labels a resource requires.
    r#"
    CREATE TABLE policy_versions (
        version    INTEGER PRIMARY KEY AUTOINCREMENT,
        kind       TEXT NOT NULL,
        id         TEXT NOT NULL,
        text       TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX policy_versions_kind_id ON policy_versions (kind, id);
    INSERT INTO policy_versions (kind, id, text, created_ms)
        SELECT kind, id, text, updated_ms FROM policies;
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO counters (name, value) VALUES ('reference_values', 0);
    ALTER TABLE resources ADD COLUMN required_labels TEXT NOT NULL DEFAULT '{}';
    "#,
    // 4: the audit log (see `crate::audit`): one row per entry, `seq` as the
    // key so that two entries can never claim the same place in the chain.
    r#"
    CREATE TABLE audit_log (
        seq       INTEGER PRIMARY KEY,
        time_ms   INTEGER NOT NULL,
        event     TEXT NOT NULL,
        subject   TEXT NOT NULL,
        detail    TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        kid       TEXT NOT NULL,
        hash      TEXT NOT NULL,
        signature TEXT NOT NULL
    );
    "#,
    // 5: per host, the newest TPM clock state (resetCount, restartCount,
    // clock) of an accepted attestation, the reference of the TPM verifier's
    // rollback check. No foreign key to `hosts`: the row outlives a
    // re-enrollment of the same EK on purpose (a TPM state restored from a
    // snapshot carries the same EK and could enroll itself again).
    r#"
    CREATE TABLE tpm_clocks (
        host_id       TEXT PRIMARY KEY,
        reset_count   INTEGER NOT NULL,
        restart_count INTEGER NOT NULL,
        clock         INTEGER NOT NULL,
        updated_ms    INTEGER NOT NULL
    );
    "#,
];

/// How often the checkpoint thread copies the WAL into the database.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// The most writes one group commit takes.
pub const MAX_GROUP: usize = 64;

/// How the writer thread gathers queued writes into one group commit,
/// the rule of PostgreSQL's `commit_delay` and `commit_siblings`: when the
/// writer wakes and finds at least `siblings` writes queued (a sign that
/// requests are arriving faster than it commits), it sleeps `delay` once
/// before it begins the transaction, and the writes queued meanwhile join
/// the group (up to [`MAX_GROUP`]). With fewer writes queued it commits at
/// once, so a lone write never waits.
///
/// Why: a commit has costs that do not depend on how many writes it holds
/// (the WAL frames of the pages every write touches (the newest leaf of
/// each table and index, the database header), the transaction's locks,
/// the audit log's signature of its newest entry, waking the writer), so
/// fewer, larger groups cost less CPU per write; each write waits up to
/// `delay` longer. A sleep rather than a timed receive: writes queued
/// while the writer sleeps wake no one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommit {
    /// How long the writer waits for more writes under load; zero: never.
    pub delay: std::time::Duration,
    /// How many writes must be queued for the writer to wait (at least 1;
    /// 1 makes every write wait).
    pub siblings: usize,
}

impl Default for GroupCommit {
    /// 500 µs with 2 siblings: in `BENCHMARKS.md` (KBS round trips at
    /// concurrency 64, compared within one run), a round trip without the
    /// delay took 1.08× the CPU, and longer delays left cores idle.
    fn default() -> Self {
        GroupCommit { delay: std::time::Duration::from_micros(500), siblings: 2 }
    }
}

/// The SQLite store.
pub struct SqliteStore {
    // Dropped before `_checkpoints`, whose last checkpoint then closes the
    // database's last connection; `writer` first, so that what is queued
    // is committed before that.
    writer: Writer,
    conn: Mutex<Connection>,
    path: PathBuf,
    _checkpoints: Checkpoints,
}

/// The newest audit entry a group commit has written, still unsigned, and
/// who signs it before the group commits: its signature covers every
/// entry of the group before it through the hash chain (`crate::audit`).
#[derive(Clone)]
struct UnsignedTail {
    seq: u64,
    hash: String,
    kid: String,
    signer: Arc<dyn AuditSigner + Send + Sync>,
}

impl UnsignedTail {
    fn of(entry: &AuditEntry, maker: &AuditMaker) -> UnsignedTail {
        UnsignedTail {
            seq: entry.seq,
            hash: entry.hash.clone(),
            kid: entry.kid.clone(),
            signer: maker.signer().clone(),
        }
    }
}

/// One queued write (see the module documentation).
trait Job: Send {
    /// Runs the write inside the group's transaction (under its savepoint
    /// when the group has other writes); whether it succeeded, i.e. what it
    /// wrote is to be kept. A write that
    /// appends an audit entry leaves it unsigned and notes it in `tail`.
    fn run(&mut self, conn: &Connection, tail: &mut Option<UnsignedTail>) -> bool;
    /// Fails the write (its savepoint could not be made or kept).
    fn fail(&mut self, e: StoreError);
    /// Reports the result, given how the group's commit ended.
    fn finish(self: Box<Self>, commit: &Result<(), String>);
}

struct Queued<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    done: Done<T>,
}

impl<T, F> Job for Queued<T, F>
where
    T: Send,
    F: FnOnce(&Connection, &mut Option<UnsignedTail>) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection, tail: &mut Option<UnsignedTail>) -> bool {
        let Some(work) = self.work.take() else { return false };
        // A panic (say, in an audit entry maker) fails this write, not the
        // writer thread and every write after it.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn, tail)))
            .unwrap_or_else(|_| Err(StoreError::WritePanicked));
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn fail(&mut self, e: StoreError) {
        self.result = Some(Err(e));
    }

    fn finish(self: Box<Self>, commit: &Result<(), String>) {
        let r = match (self.result, commit) {
            (Some(Ok(v)), Ok(())) => Ok(v),
            (Some(Ok(_)), Err(e)) => Err(StoreError::GroupCommit(e.clone())),
            (Some(Err(e)), _) => Err(e),
            (None, Err(e)) => Err(StoreError::GroupCommit(e.clone())),
            (None, Ok(())) => Err(StoreError::WriterGone),
        };
        (self.done)(r)
    }
}

/// The writer thread: it ends (after committing what is queued) when
/// `jobs` is dropped, and dropping this waits for it.
struct Writer {
    jobs: Option<std::sync::mpsc::Sender<Box<dyn Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Group commits run so far (transactions begun).
    groups: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The group-commit rule in force (changed by `set_group_commit`).
    gather: std::sync::Arc<GatherRule>,
}

/// [`GroupCommit`] as the writer thread reads it before each group.
#[derive(Default)]
struct GatherRule {
    delay_us: std::sync::atomic::AtomicU64,
    siblings: std::sync::atomic::AtomicUsize,
}

impl GatherRule {
    fn set(&self, g: GroupCommit) {
        let us = u64::try_from(g.delay.as_micros()).unwrap_or(u64::MAX);
        self.delay_us.store(us, std::sync::atomic::Ordering::Relaxed);
        self.siblings.store(g.siblings.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long to wait before committing `queued` writes, if at all.
    fn wait_for(&self, queued: usize) -> Option<std::time::Duration> {
        let us = self.delay_us.load(std::sync::atomic::Ordering::Relaxed);
        let siblings = self.siblings.load(std::sync::atomic::Ordering::Relaxed);
        (us > 0 && queued >= siblings && queued < MAX_GROUP)
            .then(|| std::time::Duration::from_micros(us))
    }
}

impl Writer {
    fn start(path: &Path, gather: GroupCommit) -> Result<Writer, StoreError> {
        let mut conn = open_connection(path)?;
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn Job>>();
        let groups = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = groups.clone();
        let rule = std::sync::Arc::new(GatherRule::default());
        rule.set(gather);
        let thread_rule = rule.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let take_queued = |group: &mut Vec<Box<dyn Job>>| {
                    while group.len() < MAX_GROUP {
                        match queue.try_recv() {
                            Ok(j) => group.push(j),
                            Err(_) => break,
                        }
                    }
                };
                while let Ok(first) = queue.recv() {
                    let mut group = vec![first];
                    take_queued(&mut group);
                    if let Some(delay) = thread_rule.wait_for(group.len()) {
                        std::thread::sleep(delay);
                        take_queued(&mut group);
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    commit_group(&mut conn, group);
                }
            })
            .map_err(StoreError::WriterThread)?;
        Ok(Writer { jobs: Some(jobs), thread: Some(thread), groups, gather: rule })
    }

    fn queue(&self, job: Box<dyn Job>) {
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|e| e.0),
            None => Err(job),
        };
        if let Err(mut job) = sent {
            job.fail(StoreError::WriterGone);
            job.finish(&Ok(()));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `group` in one IMMEDIATE transaction (each write under a savepoint,
/// unless it is the group's only one), signs the newest audit entry it
/// wrote, and reports every write's result once the commit has ended.
fn commit_group(conn: &mut Connection, mut group: Vec<Box<dyn Job>>) {
    let commit = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Err(e) => Err(e.to_string()),
        // A write alone needs no savepoint: the transaction is its own.
        Ok(tx) if group.len() == 1 => {
            let mut tail = None;
            if group[0].run(&tx, &mut tail) {
                sign_tail(&tx, tail).and_then(|()| tx.commit().map_err(|e| e.to_string()))
            } else {
                // The write's own error is what it reports; nothing of it
                // is kept (dropping `tx` would roll back as well).
                let _ = tx.rollback();
                Ok(())
            }
        }
        Ok(mut tx) => {
            // Set when nothing of the group may be committed any more.
            let mut aborted: Option<String> = None;
            let mut tail: Option<UnsignedTail> = None;
            for job in group.iter_mut() {
                if let Some(why) = &aborted {
                    job.fail(StoreError::GroupCommit(why.clone()));
                    continue;
                }
                // A write undone takes its audit entry with it.
                let before = tail.clone();
                match tx.savepoint() {
                    Ok(mut sp) => {
                        if job.run(&sp, &mut tail) {
                            if let Err(e) = sp.commit() {
                                // Its writes are undone only by the
                                // savepoint's drop, which cannot report
                                // failure: commit nothing.
                                job.fail(e.into());
                                tail = before;
                                aborted = Some("a write's savepoint could not be released".into());
                            }
                        } else {
                            tail = before;
                            if let Err(e) = sp.rollback() {
                                // Its writes may still be there: commit nothing.
                                aborted = Some(format!("a failed write could not be undone ({e})"));
                            }
                        }
                    }
                    Err(e) => job.fail(e.into()),
                }
                // Some errors (disk full, I/O) roll the whole transaction
                // back; a savepoint after that would begin a transaction of
                // its own and commit on release.
                if aborted.is_none() && tx.is_autocommit() {
                    aborted = Some("an error rolled the group's transaction back".into());
                }
            }
            match aborted {
                // Dropping `tx` rolls back whatever is left of it.
                Some(why) => Err(why),
                None => sign_tail(&tx, tail).and_then(|()| tx.commit().map_err(|e| e.to_string())),
            }
        }
    };
    for job in group {
        job.finish(&commit);
    }
}

/// Signs the group's newest audit entry, if it wrote any, in its row. An
/// error (or a panicking signer) fails the whole group: no unsigned tail
/// is ever committed.
fn sign_tail(tx: &Connection, tail: Option<UnsignedTail>) -> Result<(), String> {
    let Some(t) = tail else { return Ok(()) };
    let sign = || signature_over(&t.kid, &t.hash, &*t.signer).map_err(|e| e.to_string());
    let sig = std::panic::catch_unwind(std::panic::AssertUnwindSafe(sign))
        .unwrap_or_else(|_| Err("the audit signer panicked".into()))?;
    let seq = i64::try_from(t.seq).map_err(|_| AuditError::Full.to_string())?;
    // Only the log's newest entry: every entry before it is covered.
    let n = tx
        .prepare_cached(
            "UPDATE audit_log SET signature = ?1 WHERE seq = ?2 AND hash = ?3
             AND seq = (SELECT MAX(seq) FROM audit_log)",
        )
        .and_then(|mut st| st.execute(params![sig, seq, t.hash]))
        .map_err(|e| format!("signing audit entry {}: {e}", t.seq))?;
    if n != 1 {
        return Err(format!("audit entry {} to sign is not the log's newest", t.seq));
    }
    Ok(())
}

/// Opens a connection to the database at `path` with this store's
/// settings: WAL, `synchronous = NORMAL`, no automatic checkpoints (the
/// checkpoint thread runs them), a 5 s wait for another writer's lock.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // journal_mode returns a row, so it is a query.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;",
    )?;
    Ok(conn)
}

/// The checkpoint thread: it stops (after a last checkpoint) when `stop`
/// is dropped, and dropping this waits for it.
struct Checkpoints {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpoints {
    fn start(path: &Path) -> Result<Checkpoints, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(CHECKPOINT_INTERVAL),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    );
                    // PASSIVE: copies what it can without waiting for
                    // readers or writers; the WAL restarts from its
                    // beginning once a checkpoint has copied all of it.
                    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        // Once per run of failures, not every interval.
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "SQLite checkpoint failed; the WAL grows until one succeeds: check the disk and the database file's permissions");
                        }
                        Err(_) => {}
                        Ok(()) => failing = false,
                    }
                    if last {
                        break;
                    }
                }
            })
            .map_err(StoreError::CheckpointThread)?;
        Ok(Checkpoints { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (creating if needed) `<state_dir>/verifier.sqlite3`.
    pub fn open_in(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_in_with(state_dir, GroupCommit::default())
    }

    /// [`SqliteStore::open_in`] with the given group-commit rule.
    pub fn open_in_with(state_dir: &Path, gather: GroupCommit) -> Result<SqliteStore, StoreError> {
        crate::service::keys::ensure_state_dir(state_dir)
            .map_err(|source| StoreError::StateDir { path: state_dir.to_owned(), source })?;
        SqliteStore::open_with(&state_dir.join(DB_FILE), gather)
    }

    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, GroupCommit::default())
    }

    fn open_with(path: &Path, gather: GroupCommit) -> Result<SqliteStore, StoreError> {
        let mut conn = open_connection(path)?;
        migrate(&mut conn)?;
        let checkpoints = Checkpoints::start(path)?;
        let writer = Writer::start(path, gather)?;
        Ok(SqliteStore {
            writer,
            conn: Mutex::new(conn),
            path: path.to_owned(),
            _checkpoints: checkpoints,
        })
    }

    /// Group commits the writer has run so far.
    pub fn group_commits(&self) -> u64 {
        self.writer.groups.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn queue<T, F>(&self, work: F, done: Done<T>)
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Option<UnsignedTail>) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.queue(Box::new(Queued { work: Some(work), result: None, done }));
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let conn = self.lock()?;
        current_version(&conn)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }
}

fn current_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0))?)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version    INTEGER PRIMARY KEY,
            applied_ms INTEGER NOT NULL
        )",
    )?;
    let supported = MIGRATIONS.len() as i64;
    let found = current_version(conn)?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_ms) VALUES (?1, ?2)",
            params![version, now_ms()],
        )?;
        tx.commit()?;
    }
    Ok(())
}

fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { what, detail: detail.to_string() }
}

/// The `audit_log` columns in [`audit_row`]'s order, as a literal so the
/// statements that name them stay static (`concat!`, `prepare_cached`).
macro_rules! audit_columns {
    () => {
        "seq, time_ms, event, subject, detail, prev_hash, kid, hash, signature"
    };
}

/// One `audit_log` row (columns in `audit_columns!()` order).
fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AuditEntry, StoreError>> {
    let seq: i64 = r.get(0)?;
    let detail: String = r.get(4)?;
    let entry = (|| {
        Ok(AuditEntry {
            seq: u64::try_from(seq).map_err(|e| corrupt("audit entry", e))?,
            time_ms: r.get(1)?,
            event: r.get(2)?,
            subject: r.get(3)?,
            detail: serde_json::from_str(&detail)
                .map_err(|e| corrupt("audit entry", format!("entry {seq}: {e}")))?,
            prev_hash: r.get(5)?,
            kid: r.get(6)?,
            hash: r.get(7)?,
            signature: r.get(8)?,
        })
    })();
    Ok(entry)
}

/// One stored row of reference values (a JSON list under `name`).
fn stored_values(name: &str, text: &str) -> Result<ReferenceSet, StoreError> {
    let list: serde_json::Value =
        serde_json::from_str(text).map_err(|e| corrupt("reference values", e))?;
    let mut doc = serde_json::Map::new();
    doc.insert(name.to_owned(), list);
    ReferenceSet::from_json(&serde_json::Value::Object(doc), None, None)
        .map_err(|e| corrupt("reference values", e))
}

/// A write transaction for an audit append. IMMEDIATE takes SQLite's write
/// lock before the last entry is read, so another process (`tellus-verifier
/// refs add`) appending at the same time waits instead of building on the
/// same predecessor.
fn begin_audit(conn: &mut Connection) -> Result<rusqlite::Transaction<'_>, StoreError> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

/// Appends `make(last entry)` inside a write transaction on `tx` (see
/// [`begin_audit`]; a group commit's transaction is one too). `own` is the
/// entry this transaction appended unsigned and will sign or cover (a group
/// commit's tail): the only unsigned entry a new one may follow. Any other
/// unsigned last entry was not written by this store's commit path (which
/// never commits an unsigned tail), and building on it would lend it the
/// next signature, so the append is refused.
fn append_audit_in(
    tx: &Connection,
    make: &dyn Fn(Option<&AuditEntry>) -> Result<AuditEntry, AuditError>,
    own: Option<u64>,
) -> Result<AuditEntry, StoreError> {
    let last = tx
        .prepare_cached(concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit_log ORDER BY seq DESC LIMIT 1"
        ))?
        .query_row([], audit_row)
        .optional()?
        .transpose()?;
    if let Some(l) = &last {
        if l.signature.is_empty() && own != Some(l.seq) {
            return Err(corrupt(
                "audit log",
                format!("its newest entry ({}) is unsigned, which this verifier never commits: the database was written by something else; run `tellus-verifier audit verify` and restore the log from a backup", l.seq),
            ));
        }
    }
    let entry = make(last.as_ref())?;
    let seq = i64::try_from(entry.seq).map_err(|_| AuditError::Full)?;
    let detail = serde_json::to_string(&entry.detail).map_err(|e| corrupt("audit entry", e))?;
    tx.prepare_cached(concat!(
        "INSERT INTO audit_log (",
        audit_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))?
    .execute(params![
        seq,
        entry.time_ms,
        entry.event,
        entry.subject,
        detail,
        entry.prev_hash,
        entry.kid,
        entry.hash,
        entry.signature
    ])?;
    Ok(entry)
}

fn insert_session(conn: &Connection, s: &Session) -> Result<(), StoreError> {
    let (token, pubkey) = match &s.attested {
        Some(a) => (Some(a.token.as_str()), Some(a.tee_pubkey.as_str())),
        None => (None, None),
    };
    let r = conn
        .prepare_cached(
            "INSERT INTO sessions (id, nonce, tee, expires_at_ms, token, tee_pubkey)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut st| {
            st.execute(params![s.id, s.nonce, s.tee, s.expires_at_ms, token, pubkey])
        });
    match r {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::DuplicateSession(s.id.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

/// [`Store::mark_attested`] inside a write transaction on `tx`: false, and
/// nothing written, when there is no session `id` that is not attested yet.
fn attest_in(
    tx: &Connection,
    record: &AttestationRecord,
    audit: &dyn Fn(Option<&AuditEntry>) -> Result<AuditEntry, AuditError>,
    own: Option<u64>,
) -> Result<bool, StoreError> {
    let AttestationRecord { session_id: id, attested: a, expires_at_ms, host_clock } = record;
    let n = tx
        .prepare_cached(
            "UPDATE sessions SET token = ?2, tee_pubkey = ?3, expires_at_ms = ?4
             WHERE id = ?1 AND token IS NULL",
        )?
        .execute(params![id, a.token, a.tee_pubkey, expires_at_ms])?;
    if n != 1 {
        return Ok(false);
    }
    if let Some(h) = host_clock {
        // Max-update: the row changes only when the new state is greater
        // in (reset_count, restart_count, clock) order, the order of
        // `TpmClock` (row-value comparison, in PostgreSQL too).
        // `clock` is a u64 of milliseconds; one beyond i64::MAX (292
        // million years) is refused by the verifier before it gets here,
        // and saturating keeps the order should one arrive all the same.
        let c = &h.clock;
        tx.prepare_cached(
            "INSERT INTO tpm_clocks (host_id, reset_count, restart_count, clock, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (host_id) DO UPDATE SET reset_count = excluded.reset_count,
                restart_count = excluded.restart_count, clock = excluded.clock,
                updated_ms = excluded.updated_ms
             WHERE (excluded.reset_count, excluded.restart_count, excluded.clock)
                 > (tpm_clocks.reset_count, tpm_clocks.restart_count, tpm_clocks.clock)",
        )?
        .execute(params![
            h.host_id,
            c.reset_count,
            c.restart_count,
            i64::try_from(c.clock).unwrap_or(i64::MAX),
            now_ms()
        ])?;
    }
    append_audit_in(tx, audit, own)?;
    Ok(true)
}

impl Store for SqliteStore {
    fn create_session(&self, s: &Session) -> Result<(), StoreError> {
        insert_session(&*self.lock()?, s)
    }

    fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let conn = self.lock()?;
        let row = conn
            .prepare_cached(
                "SELECT id, nonce, tee, expires_at_ms, token, tee_pubkey FROM sessions WHERE id = ?1",
            )?
            .query_row(
                params![id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, nonce, tee, expires_at_ms, token, pubkey)) = row else {
            return Ok(None);
        };
        let attested = match (token, pubkey) {
            (Some(token), Some(tee_pubkey)) => Some(Attested { token, tee_pubkey }),
            (None, None) => None,
            _ => return Err(corrupt("session", "token without tee-pubkey or the reverse")),
        };
        Ok(Some(Session { id, nonce, tee, expires_at_ms, attested }))
    }

    fn mark_attested(
        &self,
        record: &AttestationRecord,
        audit: &dyn Fn(Option<&AuditEntry>) -> Result<AuditEntry, AuditError>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock()?;
        let tx = begin_audit(&mut conn)?;
        let found = attest_in(&tx, record, audit, None)?;
        // Not found: nothing was written; committing the empty transaction
        // is the same as rolling it back.
        tx.commit()?;
        Ok(found)
    }

    fn forget_tpm_clock(&self, host_id: &str) -> Result<bool, StoreError> {
        let conn = self.lock()?;
        Ok(conn.execute("DELETE FROM tpm_clocks WHERE host_id = ?1", params![host_id])? == 1)
    }

    fn tpm_clock(&self, host_id: &str) -> Result<Option<TpmClock>, StoreError> {
        let conn = self.lock()?;
        let row = conn
            .prepare_cached(
                "SELECT reset_count, restart_count, clock FROM tpm_clocks WHERE host_id = ?1",
            )?
            .query_row(params![host_id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
            .optional()?;
        let Some((reset, restart, clock)) = row else { return Ok(None) };
        let bad = |e: std::num::TryFromIntError| corrupt("TPM clock", format!("{host_id}: {e}"));
        Ok(Some(TpmClock {
            reset_count: u32::try_from(reset).map_err(bad)?,
            restart_count: u32::try_from(restart).map_err(bad)?,
            clock: u64::try_from(clock).map_err(bad)?,
        }))
    }

    fn delete_expired_sessions(&self, now_ms: i64) -> Result<usize, StoreError> {
        let conn = self.lock()?;
        Ok(conn.execute("DELETE FROM sessions WHERE expires_at_ms < ?1", params![now_ms])?)
    }

    fn put_resource(
        &self,
        p: &ResourcePath,
        sealed: &SealedResource,
        required_labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let labels =
            serde_json::to_string(required_labels).map_err(|e| corrupt("resource labels", e))?;
        let conn = self.lock()?;
        conn.execute(
            "INSERT INTO resources (repo, type, tag, nonce, ciphertext, updated_ms, required_labels)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (repo, type, tag) DO UPDATE SET
                nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                updated_ms = excluded.updated_ms, required_labels = excluded.required_labels",
            params![p.repo, p.kind, p.tag, &sealed.nonce[..], sealed.ciphertext, now_ms(), labels],
        )?;
        Ok(())
    }

    fn get_resource(&self, p: &ResourcePath) -> Result<Option<StoredResource>, StoreError> {
        let conn = self.lock()?;
        let row = conn
            .prepare_cached(
                "SELECT nonce, ciphertext, required_labels FROM resources
                 WHERE repo = ?1 AND type = ?2 AND tag = ?3",
            )?
            .query_row(params![p.repo, p.kind, p.tag], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, String>(2)?))
            })
            .optional()?;
        let Some((nonce, ciphertext, labels)) = row else { return Ok(None) };
        let nonce: [u8; 12] = nonce.try_into().map_err(|n: Vec<u8>| {
            corrupt("resource nonce", format!("{} bytes, not 12", n.len()))
        })?;
        let required_labels =
            serde_json::from_str(&labels).map_err(|e| corrupt("resource labels", e))?;
        Ok(Some(StoredResource { sealed: SealedResource { nonce, ciphertext }, required_labels }))
    }

    fn put_policy(&self, kind: PolicyKind, id: &str, text: &str) -> Result<i64, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO policies (kind, id, text, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kind, id) DO UPDATE SET text = excluded.text, updated_ms = excluded.updated_ms",
            params![kind.as_str(), id, text, now],
        )?;
        tx.execute(
            "INSERT INTO policy_versions (kind, id, text, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![kind.as_str(), id, text, now],
        )?;
        let version = tx.last_insert_rowid();
        tx.commit()?;
        Ok(version)
    }

    fn get_policy(&self, kind: PolicyKind, id: &str) -> Result<Option<String>, StoreError> {
        let conn = self.lock()?;
        Ok(conn
            .query_row(
                "SELECT text FROM policies WHERE kind = ?1 AND id = ?2",
                params![kind.as_str(), id],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn policy_history(&self, kind: PolicyKind, id: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn.prepare(
            "SELECT version, text FROM policy_versions WHERE kind = ?1 AND id = ?2 ORDER BY version",
        )?;
        let rows = stmt.query_map(params![kind.as_str(), id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn merge_reference_values(&self, add: &ReferenceSet) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        for (name, values) in &add.values {
            let old: Option<String> = tx
                .query_row(
                    "SELECT vals FROM reference_values WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .optional()?;
            let mut set = match old {
                Some(text) => stored_values(name, &text)?,
                None => ReferenceSet::default(),
            };
            for v in values {
                set.add(name, v.clone()).map_err(|e| corrupt("reference values", e))?;
            }
            let list = set.values.get(name.as_str()).cloned().unwrap_or_default();
            let text = serde_json::to_string(&list).map_err(|e| corrupt("reference values", e))?;
            tx.execute(
                "INSERT INTO reference_values (name, vals, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET vals = excluded.vals, updated_ms = excluded.updated_ms",
                params![name, text, now],
            )?;
        }
        tx.execute("UPDATE counters SET value = value + 1 WHERE name = 'reference_values'", [])?;
        tx.commit()?;
        Ok(())
    }

    fn reference_values(&self) -> Result<ReferenceSet, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn.prepare("SELECT name, vals FROM reference_values ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = ReferenceSet::default();
        for row in rows {
            let (name, text) = row?;
            let set = stored_values(&name, &text)?;
            out.merge(&set).map_err(|e| corrupt("reference values", e))?;
        }
        Ok(out)
    }

    fn policy_revision(&self) -> Result<(i64, i64), StoreError> {
        let conn = self.lock()?;
        let mut st = conn.prepare_cached(
            "SELECT (SELECT COALESCE(MAX(version), 0) FROM policy_versions),
                    (SELECT value FROM counters WHERE name = 'reference_values')",
        )?;
        let revision =
            st.query_row([], |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(0))))?;
        Ok(revision)
    }

    fn put_host(&self, h: &HostRecord) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&h.labels).map_err(|e| corrupt("host labels", e))?;
        let conn = self.lock()?;
        conn.execute(
            "INSERT INTO hosts (host_id, ek_public, ak_public, labels, activated)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (host_id) DO UPDATE SET ek_public = excluded.ek_public,
                ak_public = excluded.ak_public, labels = excluded.labels,
                activated = excluded.activated",
            params![h.host_id, h.ek_public, h.ak_public, labels, h.activated],
        )?;
        Ok(())
    }

    fn get_host(&self, host_id: &str) -> Result<Option<HostRecord>, StoreError> {
        let conn = self.lock()?;
        let row = conn
            .prepare_cached(
                "SELECT host_id, ek_public, ak_public, labels, activated FROM hosts WHERE host_id = ?1",
            )?
            .query_row(
                params![host_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, bool>(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((host_id, ek_public, ak_public, labels, activated)) = row else {
            return Ok(None);
        };
        let labels = serde_json::from_str(&labels).map_err(|e| corrupt("host labels", e))?;
        Ok(Some(HostRecord { host_id, ek_public, ak_public, labels, activated }))
    }

    fn set_host_labels(
        &self,
        host_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        let labels = serde_json::to_string(labels).map_err(|e| corrupt("host labels", e))?;
        let conn = self.lock()?;
        let n = conn
            .execute("UPDATE hosts SET labels = ?2 WHERE host_id = ?1", params![host_id, labels])?;
        Ok(n == 1)
    }

    fn put_pending(&self, p: &PendingEnrollment) -> Result<(), StoreError> {
        let text = serde_json::to_string(p).map_err(|e| corrupt("pending enrollment", e))?;
        let created = i64::try_from(p.created_at).unwrap_or(i64::MAX);
        let conn = self.lock()?;
        conn.execute(
            "INSERT INTO pending_enrollments (enrollment_id, pending, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (enrollment_id) DO UPDATE SET pending = excluded.pending,
                created_at = excluded.created_at",
            params![p.enrollment_id, text, created],
        )?;
        Ok(())
    }

    fn take_pending(&self, id: &str) -> Result<Option<PendingEnrollment>, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let text: Option<String> = tx
            .query_row(
                "SELECT pending FROM pending_enrollments WHERE enrollment_id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        if text.is_some() {
            tx.execute("DELETE FROM pending_enrollments WHERE enrollment_id = ?1", params![id])?;
        }
        tx.commit()?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt("pending enrollment", e)))
            .transpose()
    }

    fn delete_expired_pending(&self, before_secs: u64) -> Result<usize, StoreError> {
        let before = i64::try_from(before_secs).unwrap_or(i64::MAX);
        let conn = self.lock()?;
        Ok(conn.execute("DELETE FROM pending_enrollments WHERE created_at < ?1", params![before])?)
    }

    fn append_audit(
        &self,
        make: &dyn Fn(Option<&AuditEntry>) -> Result<AuditEntry, AuditError>,
    ) -> Result<AuditEntry, StoreError> {
        let mut conn = self.lock()?;
        let tx = begin_audit(&mut conn)?;
        let entry = append_audit_in(&tx, make, None)?;
        tx.commit()?;
        Ok(entry)
    }

    /// Takes effect for the groups the writer begins from now on.
    fn set_group_commit(&self, gather: GroupCommit) {
        self.writer.gather.set(gather);
    }

    fn queue_create_session(&self, session: Session, done: Done<()>) {
        self.queue(move |conn, _| insert_session(conn, &session), done);
    }

    fn queue_mark_attested(&self, record: AttestationRecord, audit: AuditMaker, done: Done<bool>) {
        self.queue(
            move |conn, tail| {
                let made = std::cell::RefCell::new(None);
                let unsigned = |last: Option<&AuditEntry>| {
                    let e = audit.unsigned(last)?;
                    *made.borrow_mut() = Some(UnsignedTail::of(&e, &audit));
                    Ok(e)
                };
                let own = tail.as_ref().map(|t| t.seq);
                let found = attest_in(conn, &record, &unsigned, own)?;
                if found {
                    *tail = made.into_inner();
                }
                Ok(found)
            },
            done,
        );
    }

    fn queue_append_audit(&self, make: AuditMaker, done: Done<AuditEntry>) {
        self.queue(
            move |conn, tail| {
                let own = tail.as_ref().map(|t| t.seq);
                let e = append_audit_in(conn, &|last| make.unsigned(last), own)?;
                *tail = Some(UnsignedTail::of(&e, &make));
                Ok(e)
            },
            done,
        );
    }

    fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.lock()?;
        let mut stmt = conn.prepare(concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit_log WHERE seq >= ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![from, limit], audit_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{HostClock, ResourceKey};
    use ring::rand::SystemRandom;

    #[test]
    fn migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_in(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.put_policy(PolicyKind::Resource, "default", "package policy").unwrap();
        drop(s);
        let s = SqliteStore::open_in(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(
            s.get_policy(PolicyKind::Resource, "default").unwrap().as_deref(),
            Some("package policy")
        );
        let n: i64 = s
            .lock()
            .unwrap()
            .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);
    }

    /// Commits only append to the WAL; the store's own thread copies them
    /// into the database file (seen through a connection that ignores the
    /// WAL), and the last checkpoint when the store is dropped leaves no
    /// WAL behind.
    #[test]
    fn checkpoints_run_off_the_request_connection() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_in(dir.path()).unwrap();
        let autocheckpoint: i64 =
            s.lock().unwrap().query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(autocheckpoint, 0, "the request connection never checkpoints");
        let id = "c".repeat(32);
        let sess = test_session('c', "sample");
        s.create_session(&sess).unwrap();
        let db = dir.path().join(DB_FILE);
        let in_db_file = || -> i64 {
            // `immutable=1`: read the database file alone, not the WAL.
            let c = Connection::open_with_flags(
                format!("file:{}?immutable=1", db.display()),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
            )
            .unwrap();
            // Before the first checkpoint not even the schema is there.
            c.query_row("SELECT COUNT(*) FROM sessions WHERE id = ?1", [&id], |r| r.get(0))
                .unwrap_or(0)
        };
        let deadline = std::time::Instant::now() + 10 * CHECKPOINT_INTERVAL;
        while in_db_file() == 0 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint within 10 intervals");
            std::thread::sleep(CHECKPOINT_INTERVAL / 10);
        }
        drop(s);
        let wal = dir.path().join(format!("{DB_FILE}-wal"));
        assert!(
            std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
            "a WAL is left after the store closed"
        );
    }

    /// A database at `path` as a verifier with the first `n` migrations
    /// left it.
    fn database_at_version(path: &Path, n: usize) -> Connection {
        let mut conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
        )
        .unwrap();
        for (i, sql) in MIGRATIONS[..n].iter().enumerate() {
            let tx = conn.transaction().unwrap();
            tx.execute_batch(sql).unwrap();
            tx.execute("INSERT INTO schema_version VALUES (?1, 0)", params![i as i64 + 1]).unwrap();
            tx.commit().unwrap();
        }
        conn
    }

    #[test]
    fn migration_3_keeps_policies_and_resources_of_a_version_2_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            // A database as a verifier with migrations 1 and 2 left it.
            let conn = database_at_version(&path, 2);
            conn.execute(
                "INSERT INTO policies VALUES ('resource', 'default', 'package policy', 5)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO resources VALUES ('r', 't', 'g', zeroblob(12), x'00', 5)",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        // Migrations 3 to 5 applied; the audit log and the TPM clocks
        // start empty.
        assert_eq!(s.schema_version().unwrap(), 5);
        assert!(s.audit_entries(0, 10).unwrap().is_empty());
        assert_eq!(s.tpm_clock("any-host").unwrap(), None);
        let history = s.policy_history(PolicyKind::Resource, "default").unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].1, "package policy");
        assert_eq!(s.policy_revision().unwrap(), (history[0].0, 0));
        let p = ResourcePath::new("r", "t", "g").unwrap();
        assert!(s.get_resource(&p).unwrap().unwrap().required_labels.is_empty());
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_in(dir.path()).unwrap();
        s.lock().unwrap().execute("INSERT INTO schema_version VALUES (99, 0)", []).unwrap();
        drop(s);
        let e = SqliteStore::open_in(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::SchemaTooNew { found: 99, .. }), "{e}");
    }

    #[test]
    fn resources_are_encrypted_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_in(dir.path()).unwrap();
        let key = ResourceKey::new(&[3u8; 32]);
        let rng = SystemRandom::new();
        let p = ResourcePath::new("default", "key", "disk").unwrap();
        let plaintext = b"TOP-SECRET-PLAINTEXT-0123456789-abcdefghijklmnop";
        let labels: BTreeMap<String, String> = [("zone".to_owned(), "dmz".to_owned())].into();
        s.put_resource(&p, &key.seal(&rng, &p, plaintext).unwrap(), &labels).unwrap();
        let got = s.get_resource(&p).unwrap().unwrap();
        assert_eq!(key.open(&p, &got.sealed).unwrap(), plaintext);
        assert_eq!(got.required_labels, labels);
        drop(s);
        // The plaintext is in none of the database files (main, WAL, SHM).
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(plaintext.len()).any(|w| w == plaintext));
        }
    }

    #[test]
    fn sessions_policies_reference_values_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_in(dir.path()).unwrap();
        let sess = test_session('a', "sample");
        s.create_session(&sess).unwrap();
        assert!(matches!(s.create_session(&sess), Err(StoreError::DuplicateSession(_))));
        assert_eq!(s.get_session(&sess.id).unwrap().unwrap(), sess);
        let a = Attested { token: "t".into(), tee_pubkey: "{}".into() };
        // The attestation and its audit entry are stored together, or not
        // at all (no such session: the transaction rolls back).
        assert!(s.mark_attested(&test_record(&sess.id, &a, 2000, None), &test_signed).unwrap());
        assert_eq!(s.audit_entries(0, 10).unwrap().len(), 1);
        assert!(!s.mark_attested(&test_record("nope", &a, 2000, None), &test_signed).unwrap());
        assert_eq!(s.audit_entries(0, 10).unwrap().len(), 1);
        // A session is attested once: a second attestation (a race of two
        // requests on one nonce) is refused and changes nothing.
        let second = Attested { token: "t2".into(), tee_pubkey: "{\"k\":2}".into() };
        assert!(!s
            .mark_attested(&test_record(&sess.id, &second, 9000, None), &test_signed)
            .unwrap());
        assert_eq!(s.audit_entries(0, 10).unwrap().len(), 1);
        let got = s.get_session(&sess.id).unwrap().unwrap();
        assert_eq!(got.attested, Some(a));
        assert_eq!(got.expires_at_ms, 2000);
        assert_eq!(s.delete_expired_sessions(1500).unwrap(), 0);
        assert_eq!(s.delete_expired_sessions(2500).unwrap(), 1);
        assert!(s.get_session(&sess.id).unwrap().is_none());

        let (_, rev0) = s.policy_revision().unwrap();
        let k1 = format!("sha256:{}", "11".repeat(32));
        let k2 = format!("sha384:{}", "22".repeat(48));
        let add = |v: serde_json::Value| ReferenceSet::from_json(&v, None, None).unwrap();
        s.merge_reference_values(&add(serde_json::json!({"kernel": [k1]}))).unwrap();
        s.merge_reference_values(&add(serde_json::json!({"kernel": [{"digest": k1, "expires": "2030-01-01T00:00:00Z"}, k2], "initrd": [k1]})))
            .unwrap();
        let all = s.reference_values().unwrap();
        assert_eq!(all.values["kernel"].len(), 2, "merged, not replaced");
        assert_eq!(all.values["kernel"][0].expires.as_deref(), Some("2030-01-01T00:00:00Z"));
        assert_eq!(all.values["initrd"].len(), 1);
        assert_eq!(s.policy_revision().unwrap().1, rev0 + 2);
        let v1 = s.put_policy(PolicyKind::Attestation, "default", "one").unwrap();
        let v2 = s.put_policy(PolicyKind::Attestation, "default", "two").unwrap();
        assert!(v2 > v1);
        assert_eq!(s.policy_revision().unwrap().0, v2);
        assert_eq!(
            s.policy_history(PolicyKind::Attestation, "default").unwrap(),
            vec![(v1, "one".to_owned()), (v2, "two".to_owned())]
        );
        assert_eq!(
            s.get_policy(PolicyKind::Attestation, "default").unwrap().as_deref(),
            Some("two")
        );

        let h = HostRecord {
            host_id: "host-1".into(),
            ek_public: vec![1, 2],
            ak_public: vec![3],
            labels: [("region".to_string(), "eu".to_string())].into(),
            activated: false,
        };
        s.put_host(&h).unwrap();
        assert_eq!(s.get_host("host-1").unwrap(), Some(h.clone()));
        let h2 = HostRecord { activated: true, ..h };
        s.put_host(&h2).unwrap();
        assert_eq!(s.get_host("host-1").unwrap(), Some(h2.clone()));
        let labels: BTreeMap<String, String> = [("site".to_string(), "x".to_string())].into();
        assert!(s.set_host_labels("host-1", &labels).unwrap());
        assert!(!s.set_host_labels("host-2", &labels).unwrap());
        assert_eq!(s.get_host("host-1").unwrap().unwrap().labels, labels);
    }

    /// Sends a queued write's result down a channel.
    fn to<T: Send + 'static>(
        tx: &std::sync::mpsc::Sender<(usize, Result<T, StoreError>)>,
        i: usize,
    ) -> Done<T> {
        let tx = tx.clone();
        Box::new(move |r| {
            let _ = tx.send((i, r));
        })
    }

    #[test]
    fn queued_writes_share_a_commit_and_each_stays_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_in(dir.path()).unwrap();
        let sess = |c: char| test_session(c, "tpm");
        let (ctx, crx) = std::sync::mpsc::channel();
        s.queue_create_session(sess('a'), to(&ctx, 0));
        assert!(crx.recv().unwrap().1.is_ok());
        let (tx, rx) = std::sync::mpsc::channel();
        let before = s.group_commits();

        // A first write that holds the writer until released, so that all
        // of the next ones are queued by the time it is free.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        s.queue_append_audit(
            test_maker(move |prev| {
                let _ = released.lock().unwrap().recv();
                test_entry(prev)
            }),
            to(&tx, 0),
        );
        let a = Attested { token: "t".into(), tee_pubkey: "{}".into() };
        let clock = HostClock {
            host_id: "h".into(),
            clock: TpmClock { reset_count: 1, restart_count: 0, clock: 5 },
        };
        let (ttx, trx) = std::sync::mpsc::channel();
        let (btx, brx) = std::sync::mpsc::channel();
        let (utx, urx) = std::sync::mpsc::channel();
        for i in 1..=20 {
            s.queue_append_audit(test_maker(test_entry), to(&tx, i));
        }
        // Refused by its audit entry: neither the session nor the clock
        // change, and the writes around it are not affected.
        s.queue_mark_attested(
            test_record_owned(sess('a').id, a.clone(), 2000, Some(clock.clone())),
            test_maker(|_| Err(AuditError::Full)),
            to(&btx, 0),
        );
        s.queue_mark_attested(
            test_record_owned("nope".into(), a.clone(), 2000, None),
            test_maker(test_entry),
            to(&btx, 1),
        );
        s.queue_create_session(sess('a'), to(&utx, 0));
        s.queue_create_session(sess('b'), to(&utx, 1));
        s.queue_mark_attested(
            test_record_owned(sess('b').id, a.clone(), 3000, Some(clock.clone())),
            test_maker(test_entry),
            to(&ttx, 0),
        );
        release.send(()).unwrap();

        for _ in 0..21 {
            let (i, r) = rx.recv().unwrap();
            assert_eq!(r.unwrap().seq, i as u64, "audit entry {i}");
        }
        let mut refused: Vec<_> = (0..2).map(|_| brx.recv().unwrap()).collect();
        refused.sort_by_key(|(i, _)| *i);
        assert!(
            matches!(refused[0].1, Err(StoreError::Audit(AuditError::Full))),
            "{:?}",
            refused[0].1
        );
        assert!(!refused[1].1.as_ref().unwrap(), "no session nope: false");
        let mut created: Vec<_> = (0..2).map(|_| urx.recv().unwrap()).collect();
        created.sort_by_key(|(i, _)| *i);
        assert!(matches!(created[0].1, Err(StoreError::DuplicateSession(_))));
        assert!(created[1].1.is_ok());
        assert!(trx.recv().unwrap().1.unwrap());

        // 26 writes, 2 commits at most: the held write's group (with what
        // had been queued when it started), then one for all the rest.
        let groups = s.group_commits() - before;
        assert!((1..=2).contains(&groups), "{groups} group commits for 26 writes");
        assert_eq!(s.get_session(&sess('a').id).unwrap().unwrap().attested, None);
        assert_eq!(s.get_session(&sess('b').id).unwrap().unwrap().attested, Some(a));
        assert_eq!(s.tpm_clock("h").unwrap(), Some(clock.clock));
        let log = s.audit_entries(0, 100).unwrap();
        let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (0..=21).collect::<Vec<u64>>(), "one chain, no gap, no fork");
        // One signature per group: its newest entry's, which covers the
        // others through the chain.
        let signed: Vec<u64> =
            log.iter().filter(|e| !e.signature.is_empty()).map(|e| e.seq).collect();
        assert_eq!(signed.last(), Some(&21), "the log's newest entry is signed: {signed:?}");
        assert_eq!(signed.len() as u64, groups, "one signature per group commit: {signed:?}");
    }

    /// The group-commit delay: a lone write is committed at once, and
    /// writes queued while the writer waits under load join its group.
    #[test]
    fn under_load_the_writer_waits_for_more_writes_and_a_lone_write_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        // A delay no test run could miss: a lone write that waited it
        // would take 30 s.
        let slow = GroupCommit { delay: std::time::Duration::from_secs(30), siblings: 2 };
        let s = SqliteStore::open_in_with(dir.path(), slow).unwrap();
        let started = std::time::Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        s.queue_append_audit(test_maker(test_entry), to(&tx, 0));
        assert_eq!(rx.recv().unwrap().1.unwrap().seq, 0);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "a lone write waited for siblings: {:?}",
            started.elapsed()
        );
        drop(s);

        let dir = tempfile::tempdir().unwrap();
        let gather = GroupCommit { delay: std::time::Duration::from_secs(2), siblings: 2 };
        let s = SqliteStore::open_in_with(dir.path(), gather).unwrap();
        let before = s.group_commits();
        // Hold the writer in a write alone in its group (it has begun, so
        // its group is formed before anything else is queued) so that the
        // next two writes are queued together when it is free: two
        // siblings, so it waits, and the writes queued as soon as the held
        // one is committed (well within the wait) join the same group.
        let (begun, has_begun) = std::sync::mpsc::channel::<()>();
        let begun = Mutex::new(begun);
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        let (htx, hrx) = std::sync::mpsc::channel();
        s.queue_append_audit(
            test_maker(move |prev| {
                let _ = begun.lock().unwrap().send(());
                let _ = released.lock().unwrap().recv();
                test_entry(prev)
            }),
            to(&htx, 0),
        );
        has_begun.recv().unwrap();
        for i in 1..=2 {
            s.queue_append_audit(test_maker(test_entry), to(&tx, i));
        }
        release.send(()).unwrap();
        assert!(hrx.recv().unwrap().1.is_ok());
        for i in 3..=10 {
            s.queue_append_audit(test_maker(test_entry), to(&tx, i));
        }
        let mut seqs: Vec<u64> = (1..=10).map(|_| rx.recv().unwrap().1.unwrap().seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
        assert_eq!(s.group_commits() - before, 2, "the held write's group, then one for ten");
        let signed =
            s.audit_entries(0, 100).unwrap().iter().filter(|e| !e.signature.is_empty()).count();
        assert_eq!(signed, 2, "one signature per group");
    }

    /// A queued append of [`test_entry`] through `maker`, as the store's
    /// `queue_append_audit` runs it.
    fn appended(
        maker: AuditMaker,
        fail_after: bool,
    ) -> impl FnOnce(&Connection, &mut Option<UnsignedTail>) -> Result<AuditEntry, StoreError> {
        move |c, tail| {
            let own = tail.as_ref().map(|t| t.seq);
            let e = append_audit_in(c, &|last| maker.unsigned(last), own)?;
            *tail = Some(UnsignedTail::of(&e, &maker));
            if fail_after {
                return Err(StoreError::Corrupt { what: "test", detail: "after the entry".into() });
            }
            Ok(e)
        }
    }

    #[test]
    fn an_unsigned_entry_this_store_did_not_write_is_never_built_on() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_in(dir.path()).unwrap();
        s.append_audit(&test_signed).unwrap();
        // Planted by something else that can write the database: an
        // unsigned entry 1, which the next signature would cover.
        let conn = open_connection(&dir.path().join(DB_FILE)).unwrap();
        append_audit_in(&conn, &test_entry, None).unwrap();
        drop(conn);
        let e = s.append_audit(&test_signed).unwrap_err();
        assert!(matches!(&e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("newest entry (1) is unsigned"), "{e}");
        let (tx, rx) = std::sync::mpsc::channel();
        s.queue_append_audit(test_maker(test_entry), to(&tx, 0));
        let r = rx.recv().unwrap().1;
        assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}");
        let id = "c".repeat(32);
        s.create_session(&test_session('c', "tpm")).unwrap();
        let a = Attested { token: "t".into(), tee_pubkey: "{}".into() };
        let (btx, brx) = std::sync::mpsc::channel();
        s.queue_mark_attested(
            test_record_owned(id.clone(), a, 2000, None),
            test_maker(test_entry),
            to(&btx, 1),
        );
        let r = brx.recv().unwrap().1;
        assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}");
        assert_eq!(s.get_session(&id).unwrap().unwrap().attested, None, "nothing of it stored");
        assert_eq!(s.audit_entries(0, 10).unwrap().len(), 2);
    }

    /// A store in a fresh directory and a second connection to its
    /// database, to run group commits on directly.
    fn store_and_connection() -> (tempfile::TempDir, SqliteStore, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_in(dir.path()).unwrap();
        let conn = open_connection(&dir.path().join(DB_FILE)).unwrap();
        (dir, s, conn)
    }

    #[test]
    fn a_group_signs_its_newest_kept_entry_and_fails_whole_when_it_cannot() {
        let (_dir, s, mut conn) = store_and_connection();
        let (tx, rx) = std::sync::mpsc::channel();
        let job = |maker, fail_after, i| -> Box<dyn Job> {
            Box::new(Queued {
                work: Some(appended(maker, fail_after)),
                result: None,
                done: to(&tx, i),
            })
        };
        // The third write appends its entry and then fails: it is undone,
        // and the second write's entry is the one signed.
        let group = vec![
            job(test_maker(test_entry), false, 0),
            job(test_maker(test_entry), false, 1),
            job(test_maker(test_entry), true, 2),
        ];
        commit_group(&mut conn, group);
        let mut got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        got.sort_by_key(|(i, _)| *i);
        assert!(got[0].1.is_ok() && got[1].1.is_ok());
        assert!(matches!(got[2].1, Err(StoreError::Corrupt { .. })), "{:?}", got[2].1);
        let log = s.audit_entries(0, 10).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].signature, "");
        let want = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            [b"sig:", &hex::decode(&log[1].hash).unwrap()[..]].concat(),
        );
        assert_eq!(log[1].signature, want);

        // A signer that fails (or panics) fails the whole group: no
        // unsigned tail is committed.
        struct Broken(bool);
        impl AuditSigner for Broken {
            fn kid(&self) -> &str {
                "k"
            }
            fn sign(&self, _: &[u8]) -> Result<Vec<u8>, AuditError> {
                if self.0 {
                    panic!("signer bug")
                }
                Err(AuditError::Sign)
            }
        }
        for panics in [false, true] {
            let broken = AuditMaker::new(|last, _| test_entry(last), Arc::new(Broken(panics)));
            commit_group(
                &mut conn,
                vec![job(test_maker(test_entry), false, 3), job(broken, false, 4)],
            );
            for _ in 0..2 {
                let (i, r) = rx.recv().unwrap();
                assert!(matches!(r, Err(StoreError::GroupCommit(_))), "write {i}: {r:?}");
            }
            assert_eq!(s.audit_entries(0, 10).unwrap().len(), 2, "nothing of the group stored");
        }

        // A write alone (no savepoint): undone whole when it fails, or when
        // its signer fails; signed when it succeeds.
        commit_group(&mut conn, vec![job(test_maker(test_entry), true, 5)]);
        let (_, r) = rx.recv().unwrap();
        assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}");
        let broken = AuditMaker::new(|last, _| test_entry(last), Arc::new(Broken(false)));
        commit_group(&mut conn, vec![job(broken, false, 6)]);
        let (_, r) = rx.recv().unwrap();
        assert!(matches!(r, Err(StoreError::GroupCommit(_))), "{r:?}");
        assert_eq!(s.audit_entries(0, 10).unwrap().len(), 2, "nothing of either stored");
        commit_group(&mut conn, vec![job(test_maker(test_entry), false, 7)]);
        assert!(rx.recv().unwrap().1.is_ok());
        let log = s.audit_entries(0, 10).unwrap();
        assert_eq!(log.len(), 3);
        assert!(!log[2].signature.is_empty(), "a write alone signs its entry");
    }

    #[test]
    fn an_error_that_ends_the_transaction_fails_the_whole_group() {
        let (_dir, s, mut conn) = store_and_connection();
        let (tx, rx) = std::sync::mpsc::channel();
        let append = |c: &Connection, _: &mut Option<UnsignedTail>| {
            append_audit_in(c, &|last| test_signed(last), None)
        };
        // The second write fails the way disk full does: SQLite has rolled
        // the whole transaction back. Nothing of the group may be stored
        // or reported stored, and the third write must not run on its own.
        let ends_it =
            |c: &Connection, _: &mut Option<UnsignedTail>| -> Result<AuditEntry, StoreError> {
                c.execute_batch("ROLLBACK")?;
                Err(StoreError::Corrupt { what: "test", detail: "disk full".into() })
            };
        let group: Vec<Box<dyn Job>> = vec![
            Box::new(Queued { work: Some(append), result: None, done: to(&tx, 0) }),
            Box::new(Queued { work: Some(ends_it), result: None, done: to(&tx, 1) }),
            Box::new(Queued { work: Some(append), result: None, done: to(&tx, 2) }),
        ];
        commit_group(&mut conn, group);
        let mut got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        got.sort_by_key(|(i, _)| *i);
        assert!(matches!(got[0].1, Err(StoreError::GroupCommit(_))), "{:?}", got[0].1);
        assert!(matches!(got[1].1, Err(StoreError::Corrupt { .. })), "{:?}", got[1].1);
        assert!(matches!(got[2].1, Err(StoreError::GroupCommit(_))), "{:?}", got[2].1);
        assert!(s.audit_entries(0, 10).unwrap().is_empty());
        // The connection is usable for the next group.
        let group: Vec<Box<dyn Job>> =
            vec![Box::new(Queued { work: Some(append), result: None, done: to(&tx, 3) })];
        commit_group(&mut conn, group);
        assert_eq!(rx.recv().unwrap().1.unwrap().seq, 0);
        assert_eq!(s.audit_entries(0, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_queued_write_that_panics_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_in(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        s.queue_append_audit(test_maker(|_| panic!("entry maker bug")), to(&tx, 0));
        assert!(matches!(rx.recv().unwrap().1, Err(StoreError::WritePanicked)));
        s.queue_append_audit(test_maker(test_entry), to(&tx, 1));
        assert_eq!(rx.recv().unwrap().1.unwrap().seq, 0, "the writer lives on; nothing was stored");
    }

    #[test]
    fn writes_queued_from_many_threads_are_each_committed_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStore::open_in(dir.path()).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let (threads, each) = (8, 150);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (s, tx) = (s.clone(), tx.clone());
                std::thread::spawn(move || {
                    for i in 0..each {
                        s.queue_append_audit(test_maker(test_entry), to(&tx, t * each + i));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Every write, from whichever thread, is committed and hears of it
        // once, in one chain with no gap.
        let mut seqs: Vec<u64> =
            (0..threads * each).map(|_| rx.recv().unwrap().1.unwrap().seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..(threads * each) as u64).collect::<Vec<_>>());
        assert!(rx.try_recv().is_err(), "each write reported once");
        let log = s.audit_entries(0, usize::MAX).unwrap();
        assert_eq!(log.len(), threads * each);
        assert!(!log.last().unwrap().signature.is_empty(), "the newest entry is signed");
        // One signature per group: its newest entry's.
        let signed = log.iter().filter(|e| !e.signature.is_empty()).count();
        assert_eq!(signed as u64, s.group_commits());
    }

    /// What [`Store::mark_attested`] records for session `id`.
    fn test_record(
        id: &str,
        attested: &Attested,
        expires_at_ms: i64,
        host_clock: Option<&HostClock>,
    ) -> AttestationRecord {
        AttestationRecord {
            session_id: id.into(),
            attested: attested.clone(),
            expires_at_ms,
            host_clock: host_clock.cloned(),
        }
    }

    /// [`test_record`] from owned parts, as the queued call takes them.
    fn test_record_owned(
        id: String,
        attested: Attested,
        expires_at_ms: i64,
        host_clock: Option<HostClock>,
    ) -> AttestationRecord {
        AttestationRecord { session_id: id, attested, expires_at_ms, host_clock }
    }

    /// A session of `tee` whose id is `c` 32 times; not attested, expiring at 1 s.
    fn test_session(c: char, tee: &str) -> Session {
        Session {
            id: c.to_string().repeat(32),
            nonce: "n".into(),
            tee: tee.into(),
            expires_at_ms: 1000,
            attested: None,
        }
    }

    /// An unsigned `attestation.verified` entry after `prev` (the store
    /// does not check entries; the hash only has to be hex).
    fn test_entry(prev: Option<&AuditEntry>) -> Result<AuditEntry, AuditError> {
        let seq = prev.map_or(0, |p| p.seq + 1);
        Ok(AuditEntry {
            seq,
            time_ms: 1,
            event: "attestation.verified".into(),
            subject: "session:aaaaaaaa".into(),
            detail: serde_json::json!({}),
            prev_hash: String::new(),
            kid: "k".into(),
            hash: format!("{seq:064x}"),
            signature: String::new(),
        })
    }

    /// Signs with "sig:" and the message.
    struct TestKey;

    impl AuditSigner for TestKey {
        fn kid(&self) -> &str {
            "k"
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AuditError> {
            Ok([b"sig:", message].concat())
        }
    }

    /// [`test_entry`], signed by [`TestKey`] (as a synchronous append is).
    fn test_signed(prev: Option<&AuditEntry>) -> Result<AuditEntry, AuditError> {
        let mut e = test_entry(prev)?;
        e.sign(&TestKey)?;
        Ok(e)
    }

    fn test_maker(
        f: impl Fn(Option<&AuditEntry>) -> Result<AuditEntry, AuditError> + Send + 'static,
    ) -> AuditMaker {
        AuditMaker::new(move |last, _| f(last), Arc::new(TestKey))
    }

    #[test]
    fn tpm_clocks_only_grow_and_are_stored_with_the_attestation() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_in(dir.path()).unwrap();
        // A session is attested once: each attestation gets its own.
        let fresh = {
            let s = &s;
            let n = std::cell::Cell::new(0u32);
            move || {
                n.set(n.get() + 1);
                let sess = Session { id: format!("{:032x}", n.get()), ..test_session('b', "tpm") };
                s.create_session(&sess).unwrap();
                sess.id
            }
        };
        let a = Attested { token: "t".into(), tee_pubkey: "{}".into() };
        let clock =
            |reset_count, restart_count, clock| TpmClock { reset_count, restart_count, clock };
        let at = |host: &str, c: TpmClock| HostClock { host_id: host.into(), clock: c };
        assert_eq!(s.tpm_clock("h1").unwrap(), None);

        // (case, recorded for h1, stored for h1 afterwards)
        let cases = [
            ("first", clock(2, 0, 5000), clock(2, 0, 5000)),
            ("clock lower: kept", clock(2, 0, 4000), clock(2, 0, 5000)),
            ("equal: kept", clock(2, 0, 5000), clock(2, 0, 5000)),
            ("clock higher", clock(2, 0, 7000), clock(2, 0, 7000)),
            ("restart higher, clock lower", clock(2, 1, 100), clock(2, 1, 100)),
            ("restart lower, clock higher: kept", clock(2, 0, 9999), clock(2, 1, 100)),
            ("reset higher, clock lower", clock(3, 0, 10), clock(3, 0, 10)),
            ("reset lower: kept", clock(1, 5, u64::MAX), clock(3, 0, 10)),
        ];
        for (case, recorded, stored) in cases {
            assert!(s
                .mark_attested(
                    &test_record(&fresh(), &a, 2000, Some(&at("h1", recorded))),
                    &test_signed
                )
                .unwrap());
            assert_eq!(s.tpm_clock("h1").unwrap(), Some(stored), "{case}");
        }
        // Hosts are independent; no clock (tee `sample`) changes none.
        assert!(s
            .mark_attested(
                &test_record(&fresh(), &a, 2000, Some(&at("h2", clock(0, 0, 1)))),
                &test_signed
            )
            .unwrap());
        assert!(s.mark_attested(&test_record(&fresh(), &a, 2000, None), &test_signed).unwrap());
        assert_eq!(s.tpm_clock("h2").unwrap(), Some(clock(0, 0, 1)));
        assert_eq!(s.tpm_clock("h1").unwrap(), Some(clock(3, 0, 10)));
        let entries = s.audit_entries(0, 100).unwrap().len();
        assert_eq!(entries, cases.len() + 2);

        // All or nothing: no session, or an audit entry that cannot be
        // made, and the clock is not recorded either.
        let newer = at("h1", clock(4, 0, 0));
        assert!(!s
            .mark_attested(&test_record("nope", &a, 2000, Some(&newer)), &test_signed)
            .unwrap());
        let unattested = fresh();
        let e = s.mark_attested(&test_record(&unattested, &a, 3000, Some(&newer)), &|_| {
            Err(AuditError::Full)
        });
        assert!(matches!(e, Err(StoreError::Audit(AuditError::Full))), "{e:?}");
        assert_eq!(s.tpm_clock("h1").unwrap(), Some(clock(3, 0, 10)));
        let left = s.get_session(&unattested).unwrap().unwrap();
        assert_eq!((left.expires_at_ms, left.attested), (1000, None));
        assert_eq!(s.audit_entries(0, 100).unwrap().len(), entries);

        // Survives reopening; a value no TPM reports saturates, in order.
        assert!(s
            .mark_attested(
                &test_record(&fresh(), &a, 2000, Some(&at("h3", clock(1, 0, u64::MAX)))),
                &test_signed
            )
            .unwrap());
        drop(s);
        let s = SqliteStore::open_in(dir.path()).unwrap();
        assert_eq!(s.tpm_clock("h1").unwrap(), Some(clock(3, 0, 10)));
        assert_eq!(s.tpm_clock("h3").unwrap(), Some(clock(1, 0, i64::MAX as u64)));
    }

    #[test]
    fn migration_5_adds_tpm_clocks_to_a_version_4_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            // A database as a verifier with migrations 1 to 4 left it, with
            // an attested session and its audit entry.
            let conn = database_at_version(&path, 4);
            conn.execute("INSERT INTO sessions VALUES ('s1', 'n', 'tpm', 9, 'token', '{}')", [])
                .unwrap();
            conn.execute("INSERT INTO sessions VALUES ('s2', 'n', 'tpm', 9, NULL, NULL)", [])
                .unwrap();
            conn.execute(
                "INSERT INTO audit_log VALUES (0, 1, 'attestation.verified', 's', '{}', '', 'k', 'h', 'x')",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), 5);
        assert_eq!(MIGRATIONS.len(), 5);
        assert_eq!(s.audit_entries(0, 10).unwrap().len(), 1);
        assert!(s.get_session("s1").unwrap().unwrap().attested.is_some());
        assert_eq!(s.tpm_clock("h").unwrap(), None);
        let c = HostClock {
            host_id: "h".into(),
            clock: TpmClock { reset_count: 1, restart_count: 0, clock: 42 },
        };
        assert!(s
            .mark_attested(
                &test_record(
                    "s2",
                    &Attested { token: "t".into(), tee_pubkey: "{}".into() },
                    9,
                    Some(&c)
                ),
                &test_signed
            )
            .unwrap());
        assert_eq!(s.tpm_clock("h").unwrap(), Some(c.clock));
    }

    #[test]
    fn pending_enrollments_are_taken_once_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_in(dir.path()).unwrap();
        let p = |id: &str, created_at| PendingEnrollment {
            enrollment_id: id.into(),
            host_id: "ab".repeat(32),
            ek_public: "AA==".into(),
            ek_cert: None,
            ek_anchor: None,
            ak_public: "AA==".into(),
            ak_name: "000b".into(),
            secret_sha256: "00".repeat(32),
            created_at,
        };
        s.put_pending(&p("e1", 100)).unwrap();
        s.put_pending(&p("e2", 200)).unwrap();
        assert_eq!(s.take_pending("e1").unwrap(), Some(p("e1", 100)));
        assert_eq!(s.take_pending("e1").unwrap(), None);
        assert_eq!(s.take_pending("nope").unwrap(), None);
        assert_eq!(s.delete_expired_pending(200).unwrap(), 0);
        assert_eq!(s.delete_expired_pending(201).unwrap(), 1);
        assert_eq!(s.take_pending("e2").unwrap(), None);
    }
}
