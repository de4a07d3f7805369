//! Unit tests of the ingest: staged lines stay invisible until the publish, and a bad line
//! anywhere changes nothing.
use std::io::Cursor;

use rusqlite::Connection;

use super::*;
use crate::domain::Counts;
use crate::input::{CHAT_ENDPOINT, InputOptions};
use crate::store::{db, migrate};

fn conn_with_job() -> (Connection, JobId) {
    let mut conn = Connection::open_in_memory().expect("memory db");
    migrate::migrate(&mut conn).expect("migrate");
    let job = db::upsert_job(&conn, "j", "in.jsonl", "{}", 1).expect("job");
    (conn, job.id)
}

fn reader(text: &str) -> InputReader {
    InputReader::new(
        "in.jsonl".into(),
        Box::new(Cursor::new(text.as_bytes().to_vec())),
        InputOptions {
            endpoint: CHAT_ENDPOINT.into(),
            model: Some("m".into()),
            max_line_bytes: 1024,
            ..InputOptions::default()
        },
    )
}

fn lines(ids: impl IntoIterator<Item = usize>) -> String {
    ids.into_iter()
        .map(|i| format!("{{\"custom_id\":\"r{i}\",\"prompt\":\"p{i}\"}}\n"))
        .collect()
}

fn staged(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM ingest_staging", [], |r| r.get(0))
        .expect("count")
}

/// Everything a reader of the job can see: counts, what a claim would take, the export.
fn visible(conn: &Connection, job: JobId) -> (Counts, usize, usize) {
    let mut exported = 0;
    db::for_each_request::<StoreError>(conn, job, |_| {
        exported += 1;
        Ok(())
    })
    .expect("export");
    conn.execute_batch("SAVEPOINT peek").expect("savepoint");
    let claimable = db::claim_due(conn, job, i64::MAX, 1_000)
        .expect("claim")
        .len();
    conn.execute_batch("ROLLBACK TO peek; RELEASE peek")
        .expect("rollback");
    (db::counts(conn, job).expect("counts"), claimable, exported)
}

#[test]
fn a_half_ingested_file_is_invisible_until_its_publish() {
    let (conn, job) = conn_with_job();
    let mut staging = Staging::new(job, reader(&lines(0..10)));
    staging.chunk_lines = 3;
    assert!(!staging.stage_chunk(&conn).expect("chunk 1"));
    assert!(!staging.stage_chunk(&conn).expect("chunk 2"));
    assert_eq!(staged(&conn), 6, "two chunks committed, each on its own");
    assert_eq!(visible(&conn, job), (Counts::default(), 0, 0));

    while !staging.stage_chunk(&conn).expect("chunk") {}
    assert_eq!(visible(&conn, job), (Counts::default(), 0, 0));
    let report = staging.publish(&conn).expect("publish");
    assert_eq!((report.read, report.added, report.known), (10, 10, 0));
    let (counts, claimable, exported) = visible(&conn, job);
    assert_eq!(
        (counts.total, counts.pending, claimable, exported),
        (10, 10, 10, 10)
    );
}

#[test]
fn a_bad_line_in_a_later_chunk_changes_nothing() {
    let (conn, job) = conn_with_job();
    ingest(&conn, job, reader(&lines(0..4))).expect("first ingest");
    let before = visible(&conn, job);

    // Line 9 repeats custom_id r2 of line 3: found long after the first chunks were committed.
    let mut text = lines(0..8);
    text.push_str(&lines([2]));
    let mut staging = Staging::new(job, reader(&text));
    staging.chunk_lines = 2;
    let err = loop {
        match staging.stage_chunk(&conn) {
            Ok(false) => {}
            Ok(true) => panic!("the repeat was not found"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            StoreError::Input(InputError::DuplicateCustomId {
                first_line: 3,
                line: 9,
                ..
            })
        ),
        "{err}"
    );
    assert!(staged(&conn) > 0, "earlier chunks were committed");
    assert_eq!(visible(&conn, job), before);
    while stage::discard(&conn, job, 3).expect("discard") == 3 {}
    assert_eq!(staged(&conn), 0);
    assert_eq!(visible(&conn, job), before);

    // The same through `ingest`, for every kind of bad line: nothing staged, nothing changed.
    for bad in [
        format!("{}{}", lines(0..8), lines([2])),
        format!("{}not json\n", lines(4..8)),
        format!(
            "{}{{\"custom_id\":\"r1\",\"prompt\":\"changed\"}}\n",
            lines(4..8)
        ),
    ] {
        let err = ingest(&conn, job, reader(&bad)).expect_err("refused");
        assert!(matches!(err, StoreError::Input(_)), "{err}");
        assert_eq!(staged(&conn), 0, "{err}");
        assert_eq!(visible(&conn, job), before, "{err}");
    }
}

#[test]
fn lines_left_by_a_dead_ingest_are_discarded_and_the_next_one_counts_right() {
    let (conn, job) = conn_with_job();
    ingest(&conn, job, reader(&lines(0..3))).expect("first ingest");
    // A runner dies after two chunks of a bigger file: its staged lines stay behind.
    let mut dead = Staging::new(job, reader(&lines(0..8)));
    dead.chunk_lines = 2;
    assert!(!dead.stage_chunk(&conn).expect("chunk"));
    assert!(!dead.stage_chunk(&conn).expect("chunk"));
    drop(dead);
    assert_eq!(staged(&conn), 4);

    while stage::discard(&conn, job, 3).expect("discard") == 3 {}
    let report = ingest(&conn, job, reader(&lines(0..8))).expect("again");
    assert_eq!((report.read, report.added, report.known), (8, 5, 3));
    assert_eq!(staged(&conn), 0);
    let (counts, _, exported) = visible(&conn, job);
    assert_eq!((counts.total, exported), (8, 8));
    let distinct: i64 = conn
        .query_row("SELECT count(DISTINCT key) FROM requests", [], |r| r.get(0))
        .expect("keys");
    assert_eq!(distinct, 8);
}

/// Ingests `text` and checks it is refused because line 4 repeats the custom_id of line 2.
fn refused_as_repeat_of_line_2_at_line_4(conn: &Connection, job: JobId, text: &str) {
    let err = ingest(conn, job, reader(text)).expect_err("refused");
    assert!(
        matches!(
            err,
            StoreError::Input(InputError::DuplicateCustomId {
                first_line: 2,
                line: 4,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn a_repeated_custom_id_is_refused_naming_both_lines_in_a_new_job_and_over_a_changed_body() {
    // A new job: no request to compare with, the repeat is found by the staging insert alone.
    let (conn, job) = conn_with_job();
    refused_as_repeat_of_line_2_at_line_4(&conn, job, &format!("{}{}", lines(0..3), lines([1])));
    assert_eq!(
        (staged(&conn), visible(&conn, job)),
        (0, (Counts::default(), 0, 0))
    );

    // A known job: a line that both repeats a custom_id of the file and changes the body the
    // job holds under it is refused as the repeat, as before.
    ingest(&conn, job, reader(&lines(0..3))).expect("first ingest");
    let before = visible(&conn, job);
    let text = format!(
        "{}{{\"custom_id\":\"r1\",\"prompt\":\"changed\"}}\n",
        lines(0..3)
    );
    refused_as_repeat_of_line_2_at_line_4(&conn, job, &text);
    assert_eq!(visible(&conn, job), before);

    // Lines without custom_id still take the next free derived key.
    let (conn, job) = conn_with_job();
    let same = "{\"prompt\":\"same\"}\n".repeat(3);
    let report = ingest(&conn, job, reader(&same)).expect("ingest");
    assert_eq!((report.read, report.added), (3, 3));
}
