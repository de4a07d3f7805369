//! Schema migrations: `migrations/NNNN_verb_noun.sql`, embedded at build time, applied in order
//! inside one transaction each and versioned by `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Every migration, in order; `user_version` is the count applied. Never edit a shipped entry.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_create_jobs_requests_attempts",
        include_str!("../../migrations/0001_create_jobs_requests_attempts.sql"),
    ),
    (
        "0002_add_job_lease",
        include_str!("../../migrations/0002_add_job_lease.sql"),
    ),
    (
        "0003_add_request_class_attempts",
        include_str!("../../migrations/0003_add_request_class_attempts.sql"),
    ),
    (
        "0004_add_lease_epoch",
        include_str!("../../migrations/0004_add_lease_epoch.sql"),
    ),
    (
        "0005_add_request_metadata",
        include_str!("../../migrations/0005_add_request_metadata.sql"),
    ),
    (
        "0006_add_request_headers_invalid_attempts",
        include_str!("../../migrations/0006_add_request_headers_invalid_attempts.sql"),
    ),
    (
        "0007_create_ingest_staging",
        include_str!("../../migrations/0007_create_ingest_staging.sql"),
    ),
    (
        "0008_create_batch_chunks",
        include_str!("../../migrations/0008_create_batch_chunks.sql"),
    ),
    (
        "0009_add_job_reading_input",
        include_str!("../../migrations/0009_add_job_reading_input.sql"),
    ),
    (
        "0010_add_job_input_layout",
        include_str!("../../migrations/0010_add_job_input_layout.sql"),
    ),
    (
        "0011_create_spilled_responses",
        include_str!("../../migrations/0011_create_spilled_responses.sql"),
    ),
    (
        "0012_add_cost_columns",
        include_str!("../../migrations/0012_add_cost_columns.sql"),
    ),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the schema up to [`SCHEMA_VERSION`].
///
/// # Errors
/// [`StoreError::NewerSchema`] when the file was written by a newer runner;
/// [`StoreError::Migrate`] when a migration fails (the database is left at the previous version).
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as u32 + 1;
        // Two runners may open the same new file at once: the version is read again under the
        // write lock, and a migration the other one applied meanwhile is skipped.
        let apply = |conn: &mut Connection| -> rusqlite::Result<bool> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let applied: u32 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            if applied >= version {
                return Ok(false);
            }
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()?;
            Ok(true)
        };
        if apply(conn).map_err(|source| StoreError::Migrate { name, source })? {
            tracing::debug!(migration = name, version, "applied migration");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_an_empty_database_once() {
        let mut conn = Connection::open_in_memory().expect("in-memory db");
        migrate(&mut conn).expect("first migration");
        migrate(&mut conn).expect("second run is a no-op");
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn runners_opening_a_new_file_at_once_all_succeed() {
        const RUNNERS: usize = 8;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("new.db");
        let barrier = std::sync::Barrier::new(RUNNERS);
        std::thread::scope(|scope| {
            let opened: Vec<_> = (0..RUNNERS)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        crate::store::open_writer(&path).map(drop)
                    })
                })
                .collect();
            for runner in opened {
                runner.join().expect("thread").expect("opens and migrates");
            }
        });
        let conn = Connection::open(&path).expect("open");
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().expect("in-memory db");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("set version");
        let err = migrate(&mut conn).expect_err("newer schema");
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
