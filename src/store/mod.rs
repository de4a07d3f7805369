//! Persistence: one SQLite file per set of jobs, owned by one thread.
//!
//! [`JobStore`] is a cheap, cloneable handle to a dedicated thread that owns the only writing
//! `Connection`. Commands arrive over a bounded channel; the thread drains what has queued up
//! (up to [`MAX_BATCH`]) and runs it in one transaction, then answers: group commit, so journaling
//! one attempt costs a fraction of a commit and never bounds throughput. Replies are sent only
//! after the commit, so a caller that got `Ok` knows its write is in the WAL.
//!
//! Read-only commands (`status`, `export`, `jobs`) open their own connection with
//! [`open_read_only`]; WAL lets them read while a job runs. A store opened on a file also runs a
//! checkpointer (`checkpoint`): a thread with its own connection that copies the WAL into the
//! database file soon after each commit, so the owner thread rarely has to.
//!
//! # Fencing
//!
//! Once a runner holds a job's lease it hands the store a [`Fence`] (the job and the
//! `lease_epoch` its acquisition got). From then on every batch checks, inside its transaction
//! and before any of its writes, that the job's epoch is still that one: every write the runner
//! makes (claims, attempts, recovery, releases, requeues, the job's state, events, renewals)
//! is in some batch, so none of them lands once another runner has taken the job over. A batch
//! that finds a newer epoch is rolled back, every caller in it gets [`lease::LeaseError::Lost`],
//! and the store refuses everything after it: the runner stops, having changed nothing.
//!
//! # Busy database
//!
//! Many jobs may share one file, and no write transaction of a runner holds the lock for long
//! (a big ingest commits every [`ingest::CHUNK_TIME`], see [`ingest`]). Before a fence is set
//! (opening, looking the job up, taking the lease) a batch that finds the write lock held tries
//! again, [`SETUP_TRIES`] busy timeouts in all, then fails the command with a message saying
//! the database is locked. Once the lease is taken and fenced (ingesting, running), a batch
//! that cannot get the write lock waits and tries again (with backoff, for up to
//! [`BUSY_PATIENCE`]): another process writing to the same file never fails this one.

pub mod batches;
mod checkpoint;
pub mod db;
pub mod fault;
pub mod ingest;
mod invalid;
pub mod journal;
pub mod lease;
pub mod migrate;
pub mod model;
mod sql;
mod writer;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use crate::domain::Completion;
use crate::input::InputError;

use writer::own_connection;

/// Commands queued for the owner thread at most. Bounds memory; a full queue slows the workers
/// (backpressure) instead of growing without limit.
pub const CHANNEL_CAPACITY: usize = 4096;

/// Commands run in one transaction at most: large enough to amortise the commit, small enough
/// that replies (and the durability of completions) are never held back long.
pub const MAX_BATCH: usize = 2048;

/// How long a writer waits for another process's lock before failing with "database is locked",
/// unless [`BUSY_TIMEOUT_ENV`] says otherwise (see [`busy_timeout`]).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The environment variable that replaces [`BUSY_TIMEOUT`], in milliseconds: a test (or a user
/// who would rather fail fast) sets it; every other wait for the lock scales with it.
pub const BUSY_TIMEOUT_ENV: &str = "RUNNER_BUSY_TIMEOUT_MS";

/// Before a job runs (no fence yet: opening, looking the job up, taking the lease), a batch that
/// cannot get the write lock tries again, waiting the busy timeout each time, up to this many
/// times in all: another submit's publish or another job's batch is over long before that,
/// while a lock held for the whole time (an open `sqlite3` shell) still ends in a clear error.
pub const SETUP_TRIES: u32 = 4;

/// The busy timeout in effect: [`BUSY_TIMEOUT_ENV`] when set to a number of milliseconds (at
/// least 1), else [`BUSY_TIMEOUT`]. Read once per process.
pub fn busy_timeout() -> Duration {
    static TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TIMEOUT.get_or_init(|| {
        std::env::var(BUSY_TIMEOUT_ENV)
            .ok()
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map_or(BUSY_TIMEOUT, Duration::from_millis)
    })
}

/// How long a running job's batch keeps trying to get the write lock (each try waits up to
/// [`BUSY_TIMEOUT`], then backs off) before the store gives up: generous, because another job
/// ingesting or finishing in the same file is normal and must not fail this one; bounded, so a
/// forgotten `sqlite3` shell holding a transaction still ends in a clear error.
pub const BUSY_PATIENCE: Duration = Duration::from_secs(600);

/// A runner's claim on a job, checked by every batch once set (see the module docs, "Fencing").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The job.
    pub job: crate::domain::JobId,
    /// Its name, for the message when the fence holds the runner off.
    pub name: String,
    /// The `lease_epoch` this runner's acquisition got.
    pub epoch: i64,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or set up.
    #[error("cannot open database {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The database file could not be created.
    #[error("cannot create database {}: {source}", path.display())]
    Create {
        /// The database file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A migration failed; the schema stays at the previous version.
    #[error("cannot upgrade the database schema ({name}): {source}")]
    Migrate {
        /// The migration.
        name: &'static str,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The file was written by a newer runner.
    #[error(
        "the database was written by a newer runner (schema version {found}, this one knows up to {supported}): upgrade runner"
    )]
    NewerSchema {
        /// The file's `user_version`.
        found: u32,
        /// This build's.
        supported: u32,
    },
    /// No job of that name.
    #[error("no job named '{0}' in this database: `runner jobs` lists them")]
    JobNotFound(String),
    /// A read-only command found no journal where it looked.
    #[error(
        "no journal at {}: run `runner submit FILE` here first, or pass --db PATH to the journal of an earlier run",
        .0.display()
    )]
    NoJournal(PathBuf),
    /// The database holds no job.
    #[error("this database holds no job yet: start one with `runner submit FILE`")]
    NoJobs,
    /// Bad input during an ingest (nothing was written).
    #[error(transparent)]
    Input(#[from] InputError),
    /// A value in the database is not one this runner writes.
    #[error("unexpected value in the database: {0}")]
    Corrupt(String),
    /// An earlier write failed; the store refuses further work so nothing half-done is committed.
    #[error("the database stopped accepting writes after an earlier error: {0}")]
    Failed(String),
    /// A batch's write or commit failed (everything in it was rolled back), or an earlier one
    /// did and the store refuses further work so nothing half-done is committed.
    #[error("the database stopped accepting writes after an earlier error: {0}")]
    WriteFailed(WriteFailure),
    /// Another runner holds the job, or took it over.
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    /// The owner thread is gone.
    #[error("the database thread has stopped")]
    Closed,
    /// A spooled answer could not be copied into the journal.
    #[error(
        "cannot journal the spooled answer of request {request}: {source}: check the temporary directory (TMPDIR) and its disk"
    )]
    Spool {
        /// The request's row id.
        request: i64,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// A failed write as the store thread remembers it: what SQLite said, and its error code so the
/// message shown to the user can say what to do (see [`fault`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFailure {
    /// SQLite's primary error code, when the failure came from SQLite.
    pub code: Option<rusqlite::ErrorCode>,
    /// The error's text.
    pub message: String,
    /// Set when the batch was fenced off: the job's name and its new lease holder (empty if
    /// none).
    pub taken_over: Option<(String, String)>,
}

impl WriteFailure {
    /// The error a caller of the failed (or refused) batch gets.
    fn to_error(&self) -> StoreError {
        match &self.taken_over {
            Some((job, holder)) => lease::LeaseError::Lost {
                job: job.clone(),
                holder: holder.clone(),
            }
            .into(),
            None => StoreError::WriteFailed(self.clone()),
        }
    }
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<rusqlite::Error> for WriteFailure {
    fn from(e: rusqlite::Error) -> Self {
        WriteFailure {
            code: e.sqlite_error_code(),
            message: e.to_string(),
            taken_over: None,
        }
    }
}

impl From<StoreError> for WriteFailure {
    fn from(e: StoreError) -> Self {
        WriteFailure {
            code: fault::sqlite_code(&e),
            message: e.to_string(),
            taken_over: None,
        }
    }
}

impl StoreError {
    /// Whether another connection's lock caused it: worth retrying a moment later.
    pub fn is_busy(&self) -> bool {
        matches!(
            fault::sqlite_code(self),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

/// Opens (creating it with mode 0600 if needed) and migrates the database for writing.
///
/// # Errors
/// [`StoreError::Create`], [`StoreError::Open`], migration errors.
pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    create_private(path)?;
    // SQLite answers some lock conflicts while a file is being set up (turning a new file into
    // WAL, recovering a WAL) with SQLITE_BUSY at once, without its busy handler: two runners
    // started together on a new file would see "database is locked". Retry those within the
    // same budget the busy handler has.
    let deadline = std::time::Instant::now() + busy_timeout() * SETUP_TRIES;
    loop {
        match set_up_writer(path) {
            Err(e) if e.is_busy() && std::time::Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

fn set_up_writer(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    conn.busy_handler(Some(wait_for_lock)).map_err(open_err)?;
    // WAL: readers never block the writer. synchronous=NORMAL: a commit survives a crash of the
    // process (kill -9) but the last commits may be lost on power failure (see docs/guarantees.md).
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The query planner stability guarantee: a plan never depends on the values bound to a
    // statement, so a cached statement is not compiled again when they change. Without it the
    // claim (a range over `next_attempt_at`, with RETURNING) was re-prepared at every call.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(open_err)?;
    migrate::migrate(&mut conn)?;
    Ok(conn)
}

/// Prepared statements the writer keeps: every statement of a run and of an ingest fits (the
/// default, 16, does not, and a statement evicted from the cache is parsed again next time).
const STATEMENT_CACHE: usize = 64;

/// How often a writer waiting for the lock looks again. SQLite's own busy handler looks at
/// growing intervals, up to 100 ms apart: a writer that commits and begins again within that
/// (a big ingest, chunk after chunk) would keep the lock from it for good. Looking this often,
/// a pause of [`ingest::CHUNK_PAUSE`] between two transactions is enough to get in.
const BUSY_POLL: Duration = Duration::from_millis(2);

/// The writer's busy handler: waits [`BUSY_POLL`] and looks again, for up to [`busy_timeout`].
fn wait_for_lock(tries: i32) -> bool {
    if BUSY_POLL * u32::try_from(tries).unwrap_or(u32::MAX) >= busy_timeout() {
        return false;
    }
    thread::sleep(BUSY_POLL);
    true
}

/// Opens an existing database read-only (status, export, jobs).
///
/// # Errors
/// [`StoreError::Open`] when it does not exist or cannot be read; [`StoreError::NewerSchema`].
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::NoJournal(path.to_owned()));
    }
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(busy_timeout()).map_err(open_err)?;
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(open_err)?;
    if version > migrate::SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: migrate::SCHEMA_VERSION,
        });
    }
    if version < migrate::SCHEMA_VERSION {
        // An old file: upgrading needs a writer, which also keeps the upgrade in one place.
        drop(conn);
        drop(open_writer(path)?);
        return open_read_only(path);
    }
    Ok(conn)
}

/// Creates the file with owner-only permissions before SQLite does, so results and the journal
/// are never world-readable. SQLite gives its -wal and -shm files the same mode.
///
/// An existing database (say, from an older runner, or copied with a loose umask) and its
/// -wal and -shm files lose any group and other permissions here, before SQLite opens them.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        make_private(path);
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|source| StoreError::Create {
            path: path.to_owned(),
            source,
        })
}

/// Takes group and other permissions off `path` and its -wal and -shm files. A file this user
/// cannot change (owned by someone else) is left as it is, with a warning: the open goes on,
/// and SQLite says whether the file is usable.
fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        let Ok(meta) = std::fs::metadata(file) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 == 0 {
            continue;
        }
        if let Err(e) =
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode & 0o700))
        {
            tracing::warn!(path = %file.display(), error = %e, "cannot make the database private");
            crate::say!(
                "warning: {} is readable by other users and cannot be changed ({e}): run `chmod 600 {}`",
                file.display(),
                file.display()
            );
        }
    }
}

/// A query or write that wants an answer, type-erased so one channel carries them all.
trait Call: Send {
    /// Runs inside the batch transaction; returns the reply to send once the commit is known.
    fn run(self: Box<Self>, conn: &Connection) -> Reply;
    /// Answers without running, after an earlier failure.
    fn refuse(self: Box<Self>, reason: &WriteFailure);
}

/// Sends a call's result, or the commit's error instead of it.
type Reply = Box<dyn FnOnce(Option<&WriteFailure>) + Send>;

struct CallOf<T, F> {
    f: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Call for CallOf<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Reply {
        let CallOf { f, reply } = *self;
        let result = f(conn);
        Box::new(move |commit_error: Option<&WriteFailure>| {
            let result = match commit_error {
                Some(e) => Err(e.to_error()),
                None => result,
            };
            // The caller may have gone away (cancelled): nothing to tell.
            let _ = reply.send(result);
        })
    }

    fn refuse(self: Box<Self>, reason: &WriteFailure) {
        let _ = self.reply.send(Err(reason.to_error()));
    }
}

/// Run by the owner thread right after the commit of the batch that journaled an attempt.
type OnCommit = Box<dyn FnOnce() + Send>;

enum Command {
    /// An attempt to journal; nobody waits for it (see [`JobStore::record`]), and what to do
    /// once it is committed.
    Record(Box<Completion>, Option<OnCommit>),
    /// Any query or write that wants an answer.
    Call(Box<dyn Call>),
    /// From now on, every batch checks this fence before it commits.
    Fence(Fence),
}

/// Handle to the database owner thread. Clone freely; the thread ends when every handle is dropped.
#[derive(Clone)]
pub struct JobStore {
    tx: mpsc::Sender<Command>,
}

/// The owner thread; [`StoreThread::join`] waits until everything queued is committed.
pub struct StoreThread {
    handle: thread::JoinHandle<()>,
}

impl StoreThread {
    /// Waits for the thread to commit what is queued and exit. Drop every [`JobStore`] first.
    pub async fn join(self) {
        let joined = tokio::task::spawn_blocking(move || self.handle.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("the database thread panicked");
        }
    }
}

impl JobStore {
    /// Opens the database for writing and starts its owner thread.
    ///
    /// # Errors
    /// As [`open_writer`], and when the thread cannot be spawned.
    pub fn open(path: &Path) -> Result<(JobStore, StoreThread), StoreError> {
        let conn = open_writer(path)?;
        Self::start_with(conn, checkpoint::Checkpointer::start(path))
    }

    /// Starts the owner thread over an open, migrated connection (tests use in-memory ones).
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(conn: Connection) -> Result<(JobStore, StoreThread), StoreError> {
        Self::start_with(conn, None)
    }

    fn start_with(
        conn: Connection,
        checkpointer: Option<checkpoint::Checkpointer>,
    ) -> Result<(JobStore, StoreThread), StoreError> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let handle = thread::Builder::new()
            .name("runner-store".into())
            .spawn(move || own_connection(conn, rx, checkpointer))
            .map_err(|e| StoreError::Failed(format!("cannot start the database thread: {e}")))?;
        Ok((JobStore { tx }, StoreThread { handle }))
    }

    /// Runs `f` on the owner thread inside the current batch's transaction and returns its result
    /// once that transaction has committed.
    ///
    /// # Errors
    /// `f`'s error, a commit failure, or [`StoreError::Closed`].
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, reply_rx) = oneshot::channel();
        self.tx
            .send(Command::Call(Box::new(CallOf { f, reply })))
            .await
            .map_err(|_| StoreError::Closed)?;
        reply_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues an attempt for the journal without waiting for the commit. Waits only while the
    /// queue is full. A crash before the commit leaves the request `in_flight`, which recovery
    /// turns into an `interrupted` attempt: at-least-once, never lost.
    ///
    /// # Errors
    /// [`StoreError::Closed`] when the owner thread is gone.
    pub async fn record(&self, completion: Completion) -> Result<(), StoreError> {
        self.tx
            .send(Command::Record(Box::new(completion), None))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// As [`JobStore::record`], and runs `on_commit` on the owner thread once the attempt is
    /// committed (never, if the commit fails): what counts a result must not count one that a
    /// crash could still lose. Keep it short: it runs between two batches.
    ///
    /// # Errors
    /// [`StoreError::Closed`] when the owner thread is gone.
    pub async fn record_then(
        &self,
        completion: Completion,
        on_commit: impl FnOnce() + Send + 'static,
    ) -> Result<(), StoreError> {
        self.tx
            .send(Command::Record(
                Box::new(completion),
                Some(Box::new(on_commit)),
            ))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Fences every later write: each batch from now on commits only while the job's
    /// `lease_epoch` is still `fence.epoch` (see the module docs, "Fencing"). Call it right after
    /// taking the lease, before any other write for the job.
    ///
    /// # Errors
    /// [`StoreError::Closed`] when the owner thread is gone.
    pub async fn fence(&self, fence: Fence) -> Result<(), StoreError> {
        self.tx
            .send(Command::Fence(fence))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Waits until everything queued before it is committed.
    ///
    /// # Errors
    /// A commit failure, or [`StoreError::Closed`].
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.call(|_| Ok(())).await
    }
}

#[cfg(test)]
mod tests;
