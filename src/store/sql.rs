//! The SQL boundary of the domain's vocabularies: each enum is stored as its stable name
//! ([`crate::domain::names`]) and read back through `FromStr`, so a name the code does not know
//! is an error at the row that holds it, never a silent default.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::domain::{AttemptClass, AttemptOutcome, ChunkState, EventKind, JobState, RequestState};

macro_rules! stored_as_name {
    ($($ty:ty),+ $(,)?) => {$(
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }
    )+};
}

stored_as_name!(
    ChunkState,
    JobState,
    RequestState,
    AttemptOutcome,
    AttemptClass,
    EventKind
);

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    #[test]
    fn names_round_trip_through_sqlite_and_unknown_names_are_errors() {
        let conn = Connection::open_in_memory().expect("db");
        for class in AttemptClass::ALL {
            let back: AttemptClass = conn
                .query_row("SELECT ?1", [class], |r| r.get(0))
                .expect("round trip");
            assert_eq!(back, *class);
        }
        let unknown = conn.query_row("SELECT 'sideways'", [], |r| r.get::<_, RequestState>(0));
        let message = unknown.expect_err("unknown state").to_string();
        assert!(
            message.contains("unknown request state 'sideways'"),
            "{message}"
        );
    }
}
