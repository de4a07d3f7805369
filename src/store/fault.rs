//! Storage faults in words a user can act on.
//!
//! A full disk, a lock held by another process, a `--db` path that cannot hold a database, an
//! I/O error or a file that is not a database all reach the user as one [`StorageFault`] that
//! names the database file and says what to do next. The journal is never left half-written by
//! any of them: every write happens in a transaction that SQLite rolls back when it fails, and
//! the store refuses further writes after a failure (see [`super::JobStore`]).

use std::io;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use super::StoreError;

/// A storage fault that ended a command, with the database path and the next step.
#[derive(Debug, thiserror::Error)]
pub enum StorageFault {
    /// No space left on the device holding the database.
    #[error(
        "database {}: the disk is full ({detail}): free disk space, then run the same command again (it resumes the job; nothing journaled is lost)",
        path.display()
    )]
    DiskFull {
        /// The database file.
        path: PathBuf,
        /// What SQLite or the OS said.
        detail: String,
    },
    /// Another process holds a lock on the database longer than the busy timeout.
    #[error(
        "database {} is locked by another process ({detail}): some program holds a write transaction on it (an open sqlite3 shell?); end it, then run the same command again",
        path.display()
    )]
    Locked {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// The path cannot be opened or written as a database file.
    #[error(
        "cannot use {} as the database ({detail}): --db must name a file in a directory this user can write",
        path.display()
    )]
    NotWritable {
        /// The database file.
        path: PathBuf,
        /// What SQLite or the OS said.
        detail: String,
    },
    /// A read or write of the file failed.
    #[error(
        "database {}: reading or writing the file failed ({detail}): check the disk, its free space and any quota or file size limit, then run the same command again (it resumes the job; nothing journaled is lost)",
        path.display()
    )]
    Io {
        /// The database file.
        path: PathBuf,
        /// What SQLite or the OS said.
        detail: String,
    },
    /// The file is not an SQLite database, or is damaged.
    #[error(
        "{} is not a runner database or is damaged ({detail}): pass another --db, or restore the file from a backup",
        path.display()
    )]
    NotADatabase {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
}

/// The kinds of [`StorageFault`], before a path is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    DiskFull,
    Locked,
    NotWritable,
    Io,
    NotADatabase,
}

impl Kind {
    fn of_sqlite(code: ErrorCode) -> Option<Kind> {
        match code {
            ErrorCode::DiskFull => Some(Kind::DiskFull),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Some(Kind::Locked),
            ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied => {
                Some(Kind::NotWritable)
            }
            ErrorCode::SystemIoFailure
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::NoLargeFileSupport => Some(Kind::Io),
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => Some(Kind::NotADatabase),
            // Not storage faults: bugs, misuse or limits, shown as they are.
            ErrorCode::InternalMalfunction
            | ErrorCode::OperationAborted
            | ErrorCode::OutOfMemory
            | ErrorCode::OperationInterrupted
            | ErrorCode::NotFound
            | ErrorCode::SchemaChanged
            | ErrorCode::TooBig
            | ErrorCode::ConstraintViolation
            | ErrorCode::TypeMismatch
            | ErrorCode::ApiMisuse
            | ErrorCode::AuthorizationForStatementDenied
            | ErrorCode::ParameterOutOfRange
            | ErrorCode::Unknown => None,
            // ErrorCode is non-exhaustive: codes added by later SQLite versions are shown as
            // they are.
            _ => None,
        }
    }

    fn of_io(e: &io::Error) -> Kind {
        match e.kind() {
            io::ErrorKind::StorageFull => Kind::DiskFull,
            io::ErrorKind::NotFound
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::IsADirectory
            | io::ErrorKind::ReadOnlyFilesystem => Kind::NotWritable,
            _ => Kind::Io,
        }
    }

    fn with(self, path: &Path, detail: String) -> StorageFault {
        let path = path.to_owned();
        match self {
            Kind::DiskFull => StorageFault::DiskFull { path, detail },
            Kind::Locked => StorageFault::Locked { path, detail },
            Kind::NotWritable => StorageFault::NotWritable { path, detail },
            Kind::Io => StorageFault::Io { path, detail },
            Kind::NotADatabase => StorageFault::NotADatabase { path, detail },
        }
    }
}

/// SQLite's primary error code behind a store error, if it has one.
pub fn sqlite_code(e: &StoreError) -> Option<ErrorCode> {
    match e {
        StoreError::Open { source, .. }
        | StoreError::Sqlite(source)
        | StoreError::Migrate { source, .. } => source.sqlite_error_code(),
        StoreError::WriteFailed(failure) => failure.code,
        StoreError::Create { .. }
        | StoreError::NewerSchema { .. }
        | StoreError::JobNotFound(_)
        | StoreError::NoJournal(_)
        | StoreError::NoJobs
        | StoreError::Input(_)
        | StoreError::Corrupt(_)
        | StoreError::Failed(_)
        | StoreError::Lease(_)
        | StoreError::Spool { .. }
        | StoreError::Closed => None,
    }
}

/// The storage fault behind a store error, if it is one.
pub fn diagnose_store(path: &Path, e: &StoreError) -> Option<StorageFault> {
    let detail = |source: &dyn std::fmt::Display| source.to_string();
    match e {
        StoreError::Create { source, .. } => Some(Kind::of_io(source).with(path, detail(source))),
        StoreError::Open { source, .. }
        | StoreError::Sqlite(source)
        | StoreError::Migrate { source, .. } => source
            .sqlite_error_code()
            .and_then(Kind::of_sqlite)
            .map(|kind| kind.with(path, detail(source))),
        StoreError::WriteFailed(failure) => failure
            .code
            .and_then(Kind::of_sqlite)
            .map(|kind| kind.with(path, failure.message.clone())),
        StoreError::NewerSchema { .. }
        | StoreError::JobNotFound(_)
        | StoreError::NoJournal(_)
        | StoreError::NoJobs
        | StoreError::Input(_)
        | StoreError::Corrupt(_)
        | StoreError::Failed(_)
        | StoreError::Lease(_)
        | StoreError::Spool { .. }
        | StoreError::Closed => None,
    }
}

/// Replaces an error caused by a storage fault of the database at `path` with the
/// [`StorageFault`] that says what to do; other errors pass through unchanged.
pub fn explain(path: &Path, err: anyhow::Error) -> anyhow::Error {
    let fault = err.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            diagnose_store(path, e)
        } else if let Some(e) = cause.downcast_ref::<rusqlite::Error>() {
            e.sqlite_error_code()
                .and_then(Kind::of_sqlite)
                .map(|kind| kind.with(path, e.to_string()))
        } else {
            None
        }
    });
    match fault {
        Some(fault) => {
            tracing::debug!(error = format!("{err:#}"), "storage fault");
            anyhow::Error::new(fault)
        }
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WriteFailure;

    fn sqlite_error(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn a_full_disk_names_the_database_and_what_to_do() {
        let failure = WriteFailure::from(sqlite_error(rusqlite::ffi::SQLITE_FULL));
        let err = anyhow::Error::new(StoreError::WriteFailed(failure))
            .context("the job stopped on a database error");
        let message = explain(Path::new("/data/runner.db"), err).to_string();
        assert!(
            message.starts_with("database /data/runner.db: the disk is full ("),
            "{message}"
        );
        assert!(
            message.contains("free disk space, then run the same command again"),
            "{message}"
        );
    }

    #[test]
    fn kinds_of_faults() {
        let path = Path::new("/x/r.db");
        let cases = [
            (rusqlite::ffi::SQLITE_BUSY, "is locked by another process"),
            (
                rusqlite::ffi::SQLITE_CANTOPEN,
                "cannot use /x/r.db as the database",
            ),
            (
                rusqlite::ffi::SQLITE_IOERR,
                "reading or writing the file failed",
            ),
            (rusqlite::ffi::SQLITE_NOTADB, "is not a runner database"),
        ];
        for (code, expected) in cases {
            let message = explain(path, StoreError::Sqlite(sqlite_error(code)).into()).to_string();
            assert!(message.contains(expected), "{code}: {message}");
            assert!(message.contains("/x/r.db"), "{message}");
        }
        let create = StoreError::Create {
            path: path.to_owned(),
            source: io::Error::from(io::ErrorKind::NotADirectory),
        };
        assert!(
            explain(path, create.into())
                .to_string()
                .contains("--db must name a file")
        );
        // A bug is not a storage fault: shown as it is.
        let constraint = StoreError::Sqlite(sqlite_error(rusqlite::ffi::SQLITE_CONSTRAINT));
        let message = explain(path, constraint.into()).to_string();
        assert!(message.starts_with("database error"), "{message}");
    }
}
