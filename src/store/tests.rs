//! The owner thread: replies after commit, a failed write poisons the store, attempts are
//! counted once committed. What a claim takes and marks.
use super::*;
use crate::domain::{AttemptOutcome, Disposition, JobId, Usage};
use crate::http::classify::Class;

/// A success of request `request` of `job`, its first attempt.
fn success(request: i64, job: JobId) -> Completion {
    Completion {
        request: crate::domain::RequestId(request),
        job,
        number: 1,
        started_at: 0,
        finished_at: 1,
        outcome: AttemptOutcome::Answered,
        http_status: Some(200),
        class: Class::Succeeded,
        error_code: None,
        error_message: None,
        x_request_id: None,
        key_fingerprint: None,
        response: Some("{}".into()),
        usage: Usage::default(),
        disposition: Disposition::Succeeded,
    }
}

fn memory_store() -> (JobStore, StoreThread) {
    let mut conn = Connection::open_in_memory().expect("memory db");
    migrate::migrate(&mut conn).expect("migrate");
    JobStore::start(conn).expect("start")
}

#[tokio::test]
async fn calls_reply_after_commit_and_see_earlier_writes() {
    let (store, thread) = memory_store();
    let job = store
        .call(|c| db::upsert_job(c, "j", "in.jsonl", "{}", 1))
        .await
        .expect("job");
    let found = store
        .call(|c| db::find_job(c, "j"))
        .await
        .expect("query")
        .expect("job exists");
    assert_eq!(found, job);
    drop(store);
    thread.join().await;
}

#[tokio::test]
async fn a_failed_write_poisons_the_store() {
    let (store, thread) = memory_store();
    let err = store
        .call(|c| {
            c.execute("INSERT INTO jobs (name) VALUES ('x')", [])?;
            Ok(())
        })
        .await
        .expect_err("constraint");
    assert!(err.to_string().contains("NOT NULL"), "{err}");
    // A failed *call* is the caller's problem, not the store's: the store goes on.
    store.flush().await.expect("still healthy");
    // A failed journal write is the store's problem: nothing after it is accepted.
    store
        .record(success(999, JobId(999)))
        .await
        .expect("queued");
    let after = store.flush().await;
    assert!(after.is_err(), "{after:?}");
    drop(store);
    thread.join().await;
}

#[tokio::test]
async fn an_attempt_is_counted_once_committed_and_never_when_its_commit_fails() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let (store, thread) = memory_store();
    let job = store
        .call(|c| {
            let job = db::upsert_job(c, "j", "in.jsonl", "{}", 1)?;
            c.execute(
                "INSERT INTO requests (job_id, key, line, method, url, body, body_hash, state)
                 VALUES (?1, 'k', 1, 'POST', '/v1/chat/completions', '{}', 'h', 'in_flight')",
                [job.id.0],
            )?;
            Ok(job.id)
        })
        .await
        .expect("a request in flight");
    let counted = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&counted);
    store
        .record_then(success(1, job), move || {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .expect("queued");
    store.flush().await.expect("committed");
    assert_eq!(
        counted.load(Ordering::SeqCst),
        1,
        "counted after its commit"
    );
    let count = Arc::clone(&counted);
    store
        .record_then(success(999, job), move || {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .expect("queued");
    assert!(store.flush().await.is_err(), "that batch failed");
    assert_eq!(
        counted.load(Ordering::SeqCst),
        1,
        "a failed commit counts nothing"
    );
    drop(store);
    thread.join().await;
}

/// A database in memory with one job.
fn conn_with_job() -> (Connection, JobId) {
    let mut conn = Connection::open_in_memory().expect("memory db");
    migrate::migrate(&mut conn).expect("migrate");
    let job = db::upsert_job(&conn, "j", "in.jsonl", "{}", 1).expect("job");
    (conn, job.id)
}

/// A claim takes the due pending requests, oldest deadline first, at most `limit` of them, and
/// marks exactly those in flight (since `now`); the rest are left as they were.
#[test]
fn a_claim_takes_the_due_requests_oldest_deadline_first_and_marks_only_them() {
    let (conn, job) = conn_with_job();
    // (id, state, next_attempt_at)
    let rows = [
        (1, "pending", 0),
        (2, "succeeded", 0),
        (3, "pending", 50),
        (4, "pending", 10),
        (5, "pending", 500),
        (6, "in_flight", 0),
        (7, "pending", 10),
    ];
    for (id, state, next) in rows {
        conn.execute(
            "INSERT INTO requests (id, job_id, key, line, method, url, body, body_hash, state,
                                   next_attempt_at, attempts, transient_attempts, headers)
             VALUES (?1, ?2, 'k' || ?1, ?1, 'POST', '/v1/chat/completions', '{\"n\":' || ?1 || '}',
                     'h', ?3, ?4, 2, 1, '{\"x-a\":\"b\"}')",
            rusqlite::params![id, job.0, state, next],
        )
        .expect("request");
    }
    let claimed = db::claim_due(&conn, job, 100, 3).expect("claim");
    // Due at 100: 1 (0), 4 and 7 (10), 3 (50); the limit keeps the three oldest deadlines.
    let ids: Vec<i64> = claimed.iter().map(|c| c.id.0).collect();
    assert_eq!(ids, [1, 4, 7]);
    let first = &claimed[0];
    assert_eq!(
        (
            first.key.as_str(),
            first.method.as_str(),
            first.url.as_str()
        ),
        ("k1", "POST", "/v1/chat/completions")
    );
    assert_eq!(first.body, r#"{"n":1}"#);
    assert_eq!(first.headers.as_deref(), Some(r#"{"x-a":"b"}"#));
    assert_eq!((first.attempts, first.spent.transient), (2, 1));
    let states: Vec<(i64, String, Option<i64>)> = conn
        .prepare("SELECT id, state, in_flight_since FROM requests ORDER BY id")
        .expect("select")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("read");
    let expected = [
        (1, "in_flight", Some(100)),
        (2, "succeeded", None),
        (3, "pending", None),
        (4, "in_flight", Some(100)),
        (5, "pending", None),
        (6, "in_flight", None),
        (7, "in_flight", Some(100)),
    ];
    let expected: Vec<(i64, String, Option<i64>)> = expected
        .iter()
        .map(|(id, state, since)| (*id, (*state).to_owned(), *since))
        .collect();
    assert_eq!(states, expected);
    assert!(
        db::claim_due(&conn, job, 100, 10)
            .expect("claim")
            .iter()
            .map(|c| c.id.0)
            .eq([3]),
        "what is left and due"
    );
}

/// A claim bounded in bytes stops once what it took holds that many, and always takes one.
#[test]
fn a_claim_bounded_in_bytes_takes_as_many_as_fit_and_at_least_one() {
    let (conn, job) = conn_with_job();
    let body = "x".repeat(1000);
    for id in 1..=6 {
        conn.execute(
            "INSERT INTO requests (id, job_id, key, line, method, url, body, body_hash, state)
             VALUES (?1, ?2, 'k' || ?1, ?1, 'POST', '/v1/chat/completions', ?3, 'h', 'pending')",
            rusqlite::params![id, job.0, body],
        )
        .expect("request");
    }
    let each = 1000 + "/v1/chat/completions".len() + 2;
    let ids = |claimed: Vec<crate::domain::Claimed>| -> Vec<i64> {
        assert!(claimed.iter().all(|c| c.bytes() == each));
        claimed.iter().map(|c| c.id.0).collect()
    };
    let claimed = db::claim_due_within(&conn, job, 0, 10, 2 * each + 1).expect("claim");
    assert_eq!(
        ids(claimed),
        [1, 2, 3],
        "two hold less than the bound, the third reaches it"
    );
    let claimed = db::claim_due_within(&conn, job, 0, 10, 1).expect("claim");
    assert_eq!(ids(claimed), [4], "one, whatever its size");
    let claimed = db::claim_due_within(&conn, job, 0, 1, usize::MAX).expect("claim");
    assert_eq!(ids(claimed), [5], "the count still bounds it");
    let pending: i64 = conn
        .query_row(
            "SELECT count(*) FROM requests WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(pending, 1, "only what was claimed is in flight");
}

/// A spooled answer is journaled in pieces into `spilled_responses` and read back as the
/// request's response: the text it would have been in memory (invalid UTF-8 replaced). A later
/// attempt's answer replaces it, and an attempt without one removes it.
#[test]
fn a_spooled_answer_is_journaled_in_pieces_and_read_back_as_the_same_text() {
    use crate::domain::ResponseBody;
    use crate::util::spool::{SPOOL_PIECE, spooled_for_test};
    let (conn, job) = conn_with_job();
    conn.execute(
        "INSERT INTO requests (id, job_id, key, line, method, url, body, body_hash, state)
         VALUES (1, ?1, 'k', 1, 'POST', '/v1/chat/completions', '{}', 'h', 'in_flight')",
        [job.0],
    )
    .expect("request");
    let mut body = br#"{"x":""#.to_vec();
    body.extend(std::iter::repeat_n(b'a', 3 * SPOOL_PIECE + 10));
    body.extend_from_slice(&[0xE2, 0x82, b'"', b'}']);
    let text = String::from_utf8_lossy(&body).into_owned();
    let responses = |conn: &Connection| {
        let mut all = Vec::new();
        db::for_each_request(conn, job, |row| {
            all.push(row.response);
            Ok::<_, StoreError>(())
        })
        .expect("read");
        all
    };
    let spilled = |conn: &Connection| -> (i64, Option<String>) {
        conn.query_row(
            "SELECT count(*), max(typeof(body)) FROM spilled_responses",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("spilled")
    };

    let mut first = success(1, job);
    first.response = Some(ResponseBody::Spooled(spooled_for_test(&body)));
    db::record_attempt(&conn, &first).expect("journaled");
    assert_eq!(responses(&conn), [Some(text.clone())]);
    assert_eq!(spilled(&conn), (1, Some("blob".to_owned())));
    let inline: Option<String> = conn
        .query_row("SELECT response FROM requests", [], |r| r.get(0))
        .expect("row");
    assert_eq!(inline, None, "one copy only: the spilled row");

    let mut second = success(1, job);
    second.number = 2;
    second.response = Some("{}".into());
    db::record_attempt(&conn, &second).expect("journaled");
    assert_eq!(responses(&conn), [Some("{}".to_owned())]);
    assert_eq!(spilled(&conn).0, 0, "replaced by the later answer");

    let mut third = success(1, job);
    third.number = 3;
    third.response = Some(ResponseBody::Spooled(spooled_for_test(b"[1]")));
    db::record_attempt(&conn, &third).expect("journaled");
    let mut fourth = success(1, job);
    fourth.number = 4;
    fourth.response = None;
    db::record_attempt(&conn, &fourth).expect("journaled");
    assert_eq!(responses(&conn), [None]);
    assert_eq!(
        spilled(&conn).0,
        0,
        "an attempt without an answer leaves none"
    );
}
