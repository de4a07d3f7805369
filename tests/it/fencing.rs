//! Fencing: a runner that lost its job to another runner (it was suspended past its lease, and
//! the other one took the job over) writes nothing more for that job, stops, and exits 4; and a
//! runner that is alive on this host never loses its job, even when its lease looks expired.

use std::path::Path;
use std::time::Duration;

use crate::support::bin::{Running, output, runner, text};
use crate::support::*;
use rstest::rstest;
use runner::domain::{AttemptOutcome, Class, Completion, Disposition, EventKind, JobState, Usage};
use runner::mock::MockConfig;
use runner::store::lease::{self, LeaseOwner, Liveness};
use runner::store::{Fence, JobStore, StoreError, db};
use runner::util::clock::now_ms;

/// A mock whose answers take ten minutes: requests stay in flight for as long as a test needs.
fn hanging() -> MockConfig {
    MockConfig {
        latency: Duration::from_secs(600),
        ..MockConfig::default()
    }
}

/// Everything a runner may change, as one comparable text.
fn snapshot(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).expect("db opens");
    let mut out = String::new();
    for sql in [
        "SELECT id || ':' || state || ':' || attempts || ':' || coalesce(in_flight_since, '-') || ':' || next_attempt_at FROM requests ORDER BY id",
        "SELECT request_id || ':' || number || ':' || outcome FROM attempts ORDER BY id",
        "SELECT kind || ':' || coalesce(detail, '') FROM events ORDER BY id",
        "SELECT state || ':' || coalesce(lease_owner, '-') || ':' || coalesce(lease_expires_at, '-') || ':' || lease_epoch FROM jobs",
    ] {
        let mut stmt = conn.prepare(sql).expect("prepare");
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        out.push_str(&rows.join("\n"));
        out.push_str("\n--\n");
    }
    out
}

/// What another runner does when it takes a job over from a runner on another host whose lease
/// expired: a new owner, a new epoch (exactly as `lease::acquire` writes them), then it recovers
/// what was in flight and claims it again: those rows are now *its* live requests.
fn take_over_from_another_host(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("db opens");
    conn.execute(
        "UPDATE jobs SET lease_owner = 'pid 1 on host elsewhere (pidns ?, run b0b0b0b0)',
                         lease_expires_at = ?1, lease_epoch = lease_epoch + 1",
        [now_ms() + 30_000],
    )
    .expect("take the lease");
    conn.execute(
        "UPDATE requests SET attempts = attempts + 1, in_flight_since = ?1 WHERE state = 'in_flight'",
        [now_ms()],
    )
    .expect("claim again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_woken_after_another_took_its_job_over_changes_nothing_and_exits_4() {
    let s = Scratch::new();
    let slow = mock(hanging()).await;
    s.prompts("fenced.jsonl", 0..20);
    let mut cmd = runner(s.dir.path());
    cmd.args([
        "submit",
        "fenced.jsonl",
        "--base-url",
        &slow.base_url(),
        "--model",
        "test-model",
        "--no-progress",
        "--concurrency",
        "4",
        "--grace",
        "1s",
    ]);
    let a = Running::spawn(cmd);
    let db = s.db();
    wait_until("runner A's requests in flight", || {
        try_requests_in(&db, "in_flight") == Some(4)
    })
    .await;

    a.signal("STOP");
    take_over_from_another_host(&db);
    let before = snapshot(&db);
    a.signal("CONT");

    let (status, stderr) = a.wait().await;
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("another runner (pid 1 on host elsewhere"),
        "{stderr}"
    );
    assert!(stderr.contains("took it over"), "{stderr}");
    // The new runner's four requests are still in flight, no attempt or event was added, the
    // job's state and lease are the new runner's.
    assert_eq!(snapshot(&db), before);
    assert_eq!(integrity(&db), "ok");
    slow.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_alive_on_this_host_keeps_its_job_even_past_its_lease_expiry() {
    let s = Scratch::new();
    let slow = mock(hanging()).await;
    s.prompts("alive.jsonl", 0..10);
    let mut cmd = runner(s.dir.path());
    cmd.args([
        "submit",
        "alive.jsonl",
        "--base-url",
        &slow.base_url(),
        "--model",
        "test-model",
        "--no-progress",
        "--concurrency",
        "2",
    ]);
    let a = Running::spawn(cmd);
    let db = s.db();
    wait_until("runner A's requests in flight", || {
        try_requests_in(&db, "in_flight") == Some(2)
    })
    .await;
    // Suspended, and its lease expired long ago (a wall-clock jump looks the same).
    a.signal("STOP");
    rusqlite::Connection::open(&db)
        .expect("db opens")
        .execute("UPDATE jobs SET lease_expires_at = 0", [])
        .expect("expire");

    let mut resume = runner(s.dir.path());
    resume.args(["resume", "--base-url", &slow.base_url(), "--no-progress"]);
    let out = output(resume).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is already running in pid {} on host ", a.pid())),
        "{stderr}"
    );
    assert_eq!(
        requests_in(&db, "in_flight"),
        2,
        "the live runner's requests were left alone"
    );
    a.signal("CONT");
    slow.shutdown().await;
}

/// One kind of write a runner makes for its job.
#[derive(Clone, Copy, Debug)]
enum Write {
    Claim,
    RecordAttempt,
    RecoverInFlight,
    Release,
    RequeueFailed,
    SetState,
    Event,
    Renew,
    ReleaseLease,
}

/// A runner on a host of its own: its liveness cannot be known from here.
fn elsewhere(run: &str) -> LeaseOwner {
    LeaseOwner {
        pid: 1,
        host: format!("host-{run}"),
        pid_namespace: None,
        run: run.to_owned(),
    }
}

#[rstest]
#[case::claim(Write::Claim)]
#[case::record_attempt(Write::RecordAttempt)]
#[case::recover_in_flight(Write::RecoverInFlight)]
#[case::release(Write::Release)]
#[case::requeue_failed(Write::RequeueFailed)]
#[case::set_state(Write::SetState)]
#[case::event(Write::Event)]
#[case::renew(Write::Renew)]
#[case::release_lease(Write::ReleaseLease)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_of_a_runner_that_lost_its_job_is_refused_and_changes_nothing(
    #[case] write: Write,
) {
    let s = Scratch::new();
    let path = s.db();
    let (a_owner, b_owner) = (elsewhere("a"), elsewhere("b"));
    let unknown = |_: &LeaseOwner| Liveness::Unknown;

    // Runner A creates the job, takes its lease, and claims two requests.
    let (a, a_thread) = JobStore::open(&path).expect("open A");
    let owner = a_owner.clone();
    let (job, taken) = a
        .call(move |c| {
            let job = db::upsert_job(c, "j", "in.jsonl", "{}", 1)?;
            for i in 0..6 {
                c.execute(
                    "INSERT INTO requests (job_id, key, line, method, url, body, body_hash, state)
                     VALUES (?1, ?2, ?3, 'POST', '/v1/chat/completions', '{}', 'h', 'pending')",
                    rusqlite::params![job.id.0, format!("r-{i}"), i],
                )?;
            }
            c.execute("UPDATE requests SET state = 'failed' WHERE key = 'r-5'", [])?;
            let taken = lease::acquire_with(c, &job, &owner, now_ms(), unknown)?;
            Ok((job, taken))
        })
        .await
        .expect("set up");
    a.fence(Fence {
        job: job.id,
        name: job.name.clone(),
        epoch: taken.epoch,
    })
    .await
    .expect("fence");
    let id = job.id;
    let a_claimed = a
        .call(move |c| db::claim_due(c, id, now_ms(), 2))
        .await
        .expect("A claims");

    // A is suspended past its lease; runner B (another process) takes the job over, recovers
    // A's requests and claims them and one more.
    let (b, b_thread) = JobStore::open(&path).expect("open B");
    let (lease_job, owner) = (job.clone(), b_owner.clone());
    let later = now_ms() + 31_000;
    let b_taken = b
        .call(move |c| lease::acquire_with(c, &lease_job, &owner, later, unknown))
        .await
        .expect("B takes over");
    assert_eq!(b_taken.epoch, taken.epoch + 1);
    let b_claimed = b
        .call(move |c| {
            db::recover_in_flight(c, id, later)?;
            db::claim_due(c, id, later, 3)
        })
        .await
        .expect("B claims");
    assert_eq!(b_claimed.len(), 3);
    let before = snapshot(&path);

    // A wakes up and writes.
    let ids: Vec<_> = a_claimed.iter().map(|r| r.id).collect();
    let first = a_claimed[0].clone();
    let result: Result<(), StoreError> = match write {
        Write::Claim => a
            .call(move |c| db::claim_due(c, id, later + 60_000, 10))
            .await
            .map(drop),
        Write::RecordAttempt => {
            a.record(Completion {
                request: first.id,
                job: id,
                number: first.attempts + 1,
                started_at: 1,
                finished_at: 2,
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
            })
            .await
            .expect("queued");
            a.flush().await
        }
        Write::RecoverInFlight => a
            .call(move |c| db::recover_in_flight(c, id, now_ms()))
            .await
            .map(drop),
        Write::Release => a.call(move |c| db::release(c, &ids)).await,
        Write::RequeueFailed => a
            .call(move |c| db::requeue_failed(c, id, None))
            .await
            .map(drop),
        Write::SetState => {
            a.call(move |c| db::set_job_state(c, id, JobState::Interrupted, None, now_ms()))
                .await
        }
        Write::Event => {
            a.call(move |c| db::record_event(c, id, EventKind::BreakerOpen, None, now_ms()))
                .await
        }
        Write::Renew => {
            let owner = a_owner.clone();
            a.call(move |c| lease::renew(c, id, &owner, now_ms()))
                .await
                .map(drop)
        }
        Write::ReleaseLease => {
            let owner = a_owner.clone();
            a.call(move |c| lease::release(c, id, &owner)).await
        }
    };
    let err = result.expect_err("fenced off");
    assert!(
        matches!(err, StoreError::Lease(lease::LeaseError::Lost { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("host-b"), "{err}");
    // And nothing after it gets through either.
    assert!(a.flush().await.is_err());
    assert_eq!(snapshot(&path), before, "{write:?} changed the journal");
    drop((a, b));
    a_thread.join().await;
    b_thread.join().await;
}
