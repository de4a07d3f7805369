//! `runner demo`: the first command a new user runs. Starts the mock API in-process on a free
//! loopback port with a 401 "Missing scopes" spike and a sprinkle of other faults, submits
//! `samples/demo.jsonl`, and writes the results CSV. No key, no network.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::{DbArgs, DemoArgs, ExportArgs, ExportFormat, RunArgs, SubmitArgs, Via};
use crate::domain::Exit;
use crate::engine::config::ApiEnv;
use crate::engine::shutdown::Shutdown;
use crate::http::client::ApiKey;
use crate::mock::{BatchFate, Fault, MockConfig, MockServer, Spike};

/// The sample prompts, built into the binary so the demo runs from any directory.
pub const DEMO_INPUT: &str = include_str!("../samples/demo.jsonl");

/// The demo's fault schedule: what the April 2026 incident looked like, in miniature.
pub fn demo_faults() -> MockConfig {
    MockConfig {
        // Answers take a few hundred milliseconds, spread as a model's do, under a limit of
        // 3,600 requests a minute announced in headers: the pool sizes itself to the pace.
        latency: Duration::from_millis(300),
        latency_spread: 0.5,
        requests_per_second: Some(60.0),
        // A seed under which no demo request draws two malformed answers in a row (a malformed
        // 2xx is sent once more, then fails): see `no_demo_request_draws_two_malformed_answers_in_a_row`.
        seed: 2028,
        missing_scope_rate: 0.05,
        rate_limit_rate: 0.02,
        retry_after: Duration::from_millis(500),
        server_error_rate: 0.02,
        malformed_rate: 0.01,
        spikes: vec![Spike {
            start: Duration::from_millis(1500),
            end: Duration::from_millis(4000),
            fault: Fault::MissingScope,
        }],
        ..MockConfig::default()
    }
}

/// The mock of `runner demo --via batch`: batches of 3 s, the first create refused with 401
/// `missing_scope`, the second batch expiring half-way, 5% of lines answered 401
/// `missing_scope` in the error file.
pub fn batch_faults() -> MockConfig {
    MockConfig {
        seed: 2028,
        missing_scope_rate: 0.05,
        batch_processing: Duration::from_secs(3),
        batch_missing_scope_creates: 1,
        batch_fates: vec![BatchFate::Complete, BatchFate::Expire],
        ..MockConfig::default()
    }
}

/// Runs the demo.
///
/// # Errors
/// When the mock cannot bind, the files cannot be written, or the job fails to run.
pub async fn demo(args: DemoArgs, shutdown: &Shutdown) -> anyhow::Result<Exit> {
    let batch = args.via == Via::Batch;
    let faults = match batch {
        true => batch_faults(),
        false => demo_faults(),
    };
    let mock = MockServer::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), faults)
        .await
        .context("cannot start the mock server")?;
    match batch {
        true => crate::say!(
            "demo: mock OpenAI API on {} with the Files and Batches API (batches take 3 s; the first create is refused 401 missing_scope; the second batch expires half-way; 5% of lines answered 401 missing_scope)",
            mock.base_url()
        ),
        false => crate::say!(
            "demo: mock OpenAI API on {} (5% random 401 missing_scope, a 401 spike from 1.5 s to 4 s, some 429/500/bad bodies)",
            mock.base_url()
        ),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut path = args.db.clone().into_os_string();
        path.push(suffix);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot replace {}", args.db.display()));
            }
        }
    }
    let input = std::env::temp_dir().join(format!("runner-demo-{}.jsonl", std::process::id()));
    std::fs::write(&input, DEMO_INPUT)
        .with_context(|| format!("cannot write {}", input.display()))?;

    let submit = SubmitArgs {
        file: input.clone(),
        job: Some("demo".into()),
        db: DbArgs {
            db: args.db.clone(),
        },
        format: None,
        prompt_column: None,
        template: None,
        system: None,
        max_tokens: None,
        endpoint: None,
        model: Some("gpt-4o-mini".into()),
        max_line_bytes: crate::input::DEFAULT_MAX_LINE_BYTES,
        skip_invalid: false,
        dry_run: false,
        run: RunArgs {
            base_url: Some(mock.base_url()),
            no_progress: args.no_progress,
            grace: Duration::from_secs(5),
            via: Some(args.via),
            batch_max_lines: batch.then_some(NonZeroUsize::new(80)).flatten(),
            poll_interval: batch.then_some(Duration::from_millis(500)),
            ..RunArgs::default()
        },
    };
    let env = ApiEnv {
        api_key: Some(ApiKey::new("sk-demo-not-a-real-key-0000")),
        ..ApiEnv::default()
    };
    let result = crate::engine::job::submit(submit, &env, shutdown).await;
    let _ = std::fs::remove_file(&input);
    let stats = mock.stats();
    mock.shutdown().await;
    let exit = result?;

    let export = ExportArgs {
        job: Some("demo".into()),
        db: DbArgs {
            db: args.db.clone(),
        },
        format: ExportFormat::Csv,
        layout: None,
        output: Some(args.output.clone()),
        no_sanitize: false,
        prices: crate::cli::PriceArgs::default(),
    };
    let rows =
        tokio::task::spawn_blocking(move || crate::inspect::export::export(&export)).await??;
    let errors: u64 = stats
        .by_status
        .iter()
        .filter(|(status, _)| **status != 200)
        .map(|(_, n)| n)
        .sum();
    crate::say!(
        "demo: the mock answered {} times, {errors} of them with an error; {rows} rows written to {}",
        stats.answers,
        args.output.display()
    );
    crate::say!(
        "demo: next: `runner status --db {0}` · `runner export --db {0} --format jsonl`",
        args.db.display()
    );
    Ok(exit)
}

/// `runner mock-server`: serves the mock API until Ctrl-C.
///
/// # Errors
/// Bad fault flags, or the address cannot be bound.
pub async fn mock_server(args: &crate::mock::MockArgs, shutdown: &Shutdown) -> anyhow::Result<()> {
    let config = MockConfig::try_from(args)?;
    let mock = MockServer::start(args.addr(), config)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr()))?;
    crate::say!(
        "mock OpenAI API listening on {} (stats at http://{}/mock/stats); Ctrl-C stops it",
        mock.base_url(),
        mock.addr()
    );
    shutdown.stopping().await;
    mock.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::path::PathBuf;

    use super::*;
    use crate::input::{CHAT_ENDPOINT, DEFAULT_MAX_LINE_BYTES, InputOptions, InputReader};
    use crate::mock::body_key;
    use crate::mock::faults;

    /// A malformed 2xx is sent once more, then fails (`invalid_response`): the demo promises
    /// every request succeeds, so none of its requests may draw two malformed answers in a row,
    /// whatever attempt numbers the spike and the other faults give them.
    #[test]
    fn no_demo_request_draws_two_malformed_answers_in_a_row() {
        let config = demo_faults();
        let options = InputOptions {
            endpoint: CHAT_ENDPOINT.to_owned(),
            model: Some("gpt-4o-mini".into()),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            ..InputOptions::default()
        };
        let reader = InputReader::new(
            PathBuf::from("demo.jsonl"),
            Box::new(Cursor::new(DEMO_INPUT.as_bytes())),
            options,
        );
        let mut requests = 0;
        for prompt in reader {
            let prompt = prompt.expect("the demo input is valid");
            let body: serde_json::Value = serde_json::from_str(&prompt.body).expect("json body");
            let key = body_key(&body);
            let malformed: Vec<bool> = (0..60)
                .map(|attempt| faults::draw(&config, &key, attempt) == Some(Fault::Malformed))
                .collect();
            assert!(
                !malformed.windows(2).any(|pair| pair[0] && pair[1]),
                "line {}: two malformed answers in a row: pick another demo seed",
                prompt.line
            );
            requests += 1;
        }
        assert_eq!(requests, 300);
    }
}
