//! Chaos on the real binary: two runners resume the same job on the same database while the
//! test kills them (`kill -9`) and suspends them (`SIGSTOP`, then `SIGCONT`) at random, a
//! bounded number of times within a bounded time. One final clean `resume` finishes the job.
//! Then: every request has exactly one journaled success, no request reached the server more
//! often than the faults allow (only requests in flight at a kill may be sent twice, and only
//! those with an interrupted attempt), and the file passes `PRAGMA integrity_check`.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::bin::{Running, output, runner, text};
use crate::support::*;
use runner::mock::MockConfig;

const REQUESTS: usize = 400;
/// Faults injected at most.
const MAX_FAULTS: usize = 20;
/// Time spent injecting faults at most (the final resume comes after).
const CHAOS_FOR: Duration = Duration::from_secs(40);

fn resume(dir: &Path, base_url: &str) -> std::process::Command {
    let mut cmd = runner(dir);
    cmd.args([
        "resume",
        "--base-url",
        base_url,
        "--no-progress",
        "--concurrency",
        "8",
        "--grace",
        "1s",
    ]);
    cmd
}

/// SIGKILL and reap, whether or not the runner ended by itself just before.
async fn kill_9(victim: Running) {
    victim.signal("KILL");
    drop(victim.wait().await);
}

fn in_flight(db: &Path) -> i64 {
    try_requests_in(db, "in_flight").unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_killed_and_suspended_at_random_lose_nothing_and_resend_only_what_was_in_flight()
 {
    let seed = fastrand::u64(..);
    eprintln!("chaos seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let s = Scratch::new();
    let server = mock(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    })
    .await;
    let db = s.db();
    s.prompts("chaos.jsonl", 0..REQUESTS);

    // The job, ingested by a submit that is killed once its requests are in.
    let mut submit = runner(s.dir.path());
    submit.args([
        "submit",
        "chaos.jsonl",
        "--base-url",
        &server.base_url(),
        "--model",
        "test-model",
        "--no-progress",
        "--concurrency",
        "8",
    ]);
    let first = Running::spawn(submit);
    wait_until("the job's requests are in", || {
        try_query_i64(&db, "SELECT count(*) FROM requests") == Some(REQUESTS as i64)
    })
    .await;
    first.kill_9().await;
    // What may be sent twice: the requests in flight at each kill, counted once the killed
    // runner is gone (its in-flight marks are then exactly what it may have sent unanswered).
    let mut budget = in_flight(&db);
    let mut faults = 1;

    let mut slots: [Option<Running>; 2] = [None, None];
    let started = Instant::now();
    while faults < MAX_FAULTS && started.elapsed() < CHAOS_FOR {
        for slot in &mut slots {
            let ended = slot.as_mut().is_some_and(|r| r.try_status().is_some());
            if ended || slot.is_none() {
                *slot = Some(Running::spawn(resume(s.dir.path(), &server.base_url())));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(100..600))).await;
        let pick = rng.usize(..2);
        let Some(mut victim) = slots[pick].take() else {
            continue;
        };
        if victim.try_status().is_some() {
            continue; // it ended by itself (refused: the other one holds the job, or done)
        }
        if rng.bool() {
            kill_9(victim).await;
            budget += in_flight(&db);
        } else {
            victim.signal("STOP");
            tokio::time::sleep(Duration::from_millis(rng.u64(100..1500))).await;
            victim.signal("CONT");
            slots[pick] = Some(victim);
        }
        faults += 1;
    }
    for victim in slots.iter_mut().filter_map(Option::take) {
        kill_9(victim).await;
        budget += in_flight(&db);
    }

    let out = output(resume(s.dir.path(), &server.base_url())).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let successes = journaled_successes(&db);
    let unique: HashSet<&String> = successes.iter().collect();
    assert_eq!(successes.len(), REQUESTS, "seed {seed}");
    assert_eq!(unique.len(), REQUESTS, "seed {seed}");
    let stats = server.stats();
    let interrupted = interrupted_ids(&db);
    let mut duplicates = 0;
    for i in 0..REQUESTS {
        let answered = stats.successes_for(&sent_body(i));
        assert!(answered >= 1, "request {i} never answered (seed {seed})");
        if answered > 1 {
            assert!(
                interrupted.contains(&format!("r-{i}")),
                "request r-{i} answered {answered} times without an interrupted attempt (seed {seed})"
            );
            duplicates += answered - 1;
        }
    }
    assert!(
        duplicates as i64 <= budget,
        "{duplicates} duplicate sends, but only {budget} requests were in flight at the kills (seed {seed})"
    );
    assert_eq!(integrity(&db), "ok");
    eprintln!("chaos: {faults} faults, {duplicates} duplicate sends, budget {budget}");
    server.shutdown().await;
}
