//! Chunks and the requests waiting in them, on an in-memory database.
use super::*;
use crate::store::migrate;

fn db_with_requests(n: i64) -> (Connection, JobId) {
    let mut conn = Connection::open_in_memory().expect("db");
    migrate::migrate(&mut conn).expect("migrate");
    let job = db::upsert_job(&conn, "j", "in.jsonl", "{}", 1)
        .expect("job")
        .id;
    for i in 1..=n {
        conn.execute(
            "INSERT INTO requests (job_id, key, line, method, url, body, body_hash, state)
             VALUES (?1, ?2, ?3, 'POST', '/v1/chat/completions', '{\"model\":\"m\"}', 'h', 'pending')",
            params![job.0, format!("r{i}"), i],
        )
        .expect("request");
    }
    (conn, job)
}

#[test]
fn a_cut_chunk_holds_its_requests_until_they_are_dropped_back() {
    let (conn, job) = db_with_requests(3);
    let ids = [RequestId(1), RequestId(3)];
    let new = NewChunk {
        endpoint: "/v1/chat/completions",
        model: "m",
        requests: &ids,
        bytes: 10,
        hash: "abc",
        token: "t",
        worst_usd: None,
    };
    let id = insert_chunk(&conn, job, &new, 5).expect("insert");
    let lines = chunk_lines(&conn, id, RequestId(0), 10).expect("lines");
    assert_eq!(
        chunk_lines(&conn, id, RequestId(1), 10)
            .expect("page")
            .len(),
        1,
        "pages start after the id given"
    );
    assert_eq!(
        lines.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
        ["r1", "r3"]
    );
    assert_eq!(db::counts(&conn, job).expect("counts").batched, 2);
    assert!(in_chunk(&conn, job, id, "r2").expect("query").is_none());
    assert_eq!(
        in_chunk(&conn, job, id, "r3")
            .expect("query")
            .map(|(w, state)| (w.id, state)),
        Some((RequestId(3), RequestState::Batched))
    );
    // A request cannot be in two chunks.
    let again = insert_chunk(&conn, job, &new, 6).expect_err("already batched");
    assert!(again.to_string().contains("was not pending"), "{again}");
    assert_eq!(
        chunks(&conn, job).expect("chunks").len(),
        1,
        "the refused chunk left nothing"
    );
    assert_eq!(drop_chunk(&conn, id).expect("drop"), 2);
    assert_eq!(db::counts(&conn, job).expect("counts").pending, 3);
    assert!(open_chunks(&conn, job).expect("open").is_empty());
}

#[test]
fn a_poll_moves_the_chunk_and_reports_the_status_before_it() {
    let (conn, job) = db_with_requests(1);
    let id = insert_chunk(
        &conn,
        job,
        &NewChunk {
            endpoint: "/v1/chat/completions",
            model: "m",
            requests: &[RequestId(1)],
            bytes: 10,
            hash: "abc",
            token: "t",
            worst_usd: None,
        },
        5,
    )
    .expect("insert");
    let mut seen_batch = BatchSeen {
        batch_id: "batch_1",
        status: "validating",
        ended: false,
        total: 1,
        completed: 0,
        failed: 0,
        output_file_id: None,
        error_file_id: None,
        errors: None,
    };
    assert_eq!(seen(&conn, id, &seen_batch, 100, 10).expect("seen"), None);
    seen_batch.status = "completed";
    seen_batch.ended = true;
    seen_batch.output_file_id = Some("file-out");
    let before = seen(&conn, id, &seen_batch, 200, 20).expect("seen");
    assert_eq!(before.as_deref(), Some("validating"));
    let row = chunk(&conn, id).expect("chunk");
    assert_eq!(row.state, ChunkState::Ended);
    assert_eq!(row.submitted_at, Some(10));
    assert_eq!(row.ended_at, Some(20));
    assert_eq!(row.polls, 2);
    assert_eq!(row.output_file_id.as_deref(), Some("file-out"));
    let refused = imported(&conn, id, 30).expect_err("one request still waits");
    assert!(
        refused.to_string().contains("without a result"),
        "{refused}"
    );
}
