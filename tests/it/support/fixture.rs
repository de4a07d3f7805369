//! [`Fixture`]: the set-up most tests repeat, in one expression: a scratch directory, the mock
//! API on a free port, and an input file named after the job; then `submit` and `resume` in-process
//! or on the real binary, with the arguments every test passes.
//!
//! ```ignore
//! let fx = Fixture::for_job("stop").mock(MockConfig { .. }).prompts(0..400).start().await;
//! let exit = fx.submit(&["--concurrency", "8"]).await;
//! let (header, rows) = fx.export_csv();
//! fx.shutdown().await;
//! ```

use std::ops::Range;
use std::path::PathBuf;
use std::process::Command;

use runner::Exit;
use runner::engine::config::ApiEnv;
use runner::engine::shutdown::Shutdown;
use runner::mock::{MockConfig, MockServer};
use tokio::task::JoinHandle;

use serde_json::Value;

use super::{Scratch, bin, env, export_csv, export_jsonl, mock, run, spawn_run, within};

/// What [`FixtureBuilder::start`] puts in the input file.
enum Input {
    /// Nothing: the test writes the file itself (bytes that are not UTF-8, several versions).
    Unwritten,
    /// [`super::prompt_line`]`(i)` for each i.
    Prompts(Range<usize>),
    /// This text, as it is.
    Text(String),
}

/// A [`Fixture`] to be: [`Fixture::for_job`] makes one, [`FixtureBuilder::start`] sets it up.
pub struct FixtureBuilder {
    job: String,
    config: MockConfig,
    input: Input,
    env: ApiEnv,
}

impl FixtureBuilder {
    /// How the mock behaves (default: [`MockConfig::default`], every request answered 200).
    pub fn mock(mut self, config: MockConfig) -> FixtureBuilder {
        self.config = config;
        self
    }

    /// The input: plain prompt lines `r-<i>` for i in `range` (see [`super::prompt_line`]).
    pub fn prompts(mut self, range: Range<usize>) -> FixtureBuilder {
        self.input = Input::Prompts(range);
        self
    }

    /// The input: `text` as it is.
    pub fn input(mut self, text: impl Into<String>) -> FixtureBuilder {
        self.input = Input::Text(text.into());
        self
    }

    /// The API environment of in-process runs (default: [`env`], a test key and nothing else).
    pub fn env(mut self, env: ApiEnv) -> FixtureBuilder {
        self.env = env;
        self
    }

    /// Makes the scratch directory, writes the input and starts the mock.
    pub async fn start(self) -> Fixture {
        let scratch = Scratch::new();
        let name = format!("{}.jsonl", self.job);
        let input = match self.input {
            Input::Unwritten => scratch.path(&name),
            Input::Prompts(range) => scratch.prompts(&name, range),
            Input::Text(text) => scratch.write(&name, &text),
        };
        Fixture {
            mock: mock(self.config).await,
            scratch,
            input,
            job: self.job,
            env: self.env,
        }
    }
}

/// One test's world: a scratch directory holding the database and the input `<job>.jsonl`, and
/// the mock the runs send to.
pub struct Fixture {
    /// The scratch directory: the database, the input, anything else the test writes.
    pub scratch: Scratch,
    /// The mock API that [`Fixture::submit`] and [`Fixture::bin_submit`] send to.
    pub mock: MockServer,
    /// `<job>.jsonl` in the scratch directory; the job takes its name from it.
    pub input: PathBuf,
    job: String,
    env: ApiEnv,
}

impl Fixture {
    /// A fixture for the job `job`, whose input is `<job>.jsonl`; nothing happens until
    /// [`FixtureBuilder::start`].
    pub fn for_job(job: &str) -> FixtureBuilder {
        FixtureBuilder {
            job: job.to_owned(),
            config: MockConfig::default(),
            input: Input::Unwritten,
            env: env(),
        }
    }

    /// The database file.
    pub fn db(&self) -> PathBuf {
        self.scratch.db()
    }

    /// The database file, as an argument.
    pub fn db_arg(&self) -> String {
        self.scratch.db_arg()
    }

    /// The mock's base URL.
    pub fn url(&self) -> String {
        self.mock.base_url()
    }

    /// Replaces the input file with `text`.
    pub fn rewrite_input(&self, text: &str) {
        std::fs::write(&self.input, text).expect("write input");
    }

    /// `submit INPUT --db DB --base-url MOCK --model test-model --no-progress` plus `extra`.
    pub fn submit_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "submit".to_owned(),
            self.input.display().to_string(),
            "--db".to_owned(),
            self.db_arg(),
            "--base-url".to_owned(),
            self.url(),
            "--model".to_owned(),
            "test-model".to_owned(),
            "--no-progress".to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    }

    /// Runs [`Fixture::submit_args`] in-process within [`super::WAIT_LIMIT`]; panics if the
    /// command fails (use [`Fixture::try_submit`] for a refusal).
    pub async fn submit(&self, extra: &[&str]) -> Exit {
        self.try_submit(extra)
            .await
            .unwrap_or_else(|err| panic!("submit {}: {err:#}", self.job))
    }

    /// Runs [`Fixture::submit_args`] in-process within [`super::WAIT_LIMIT`].
    pub async fn try_submit(&self, extra: &[&str]) -> anyhow::Result<Exit> {
        let what = format!("submit {}", self.job);
        within(&what, run(&self.submit_args(extra), self.env.clone())).await
    }

    /// Starts [`Fixture::submit_args`] in-process on a task of its own, stopped by `shutdown`.
    pub fn spawn_submit(
        &self,
        extra: &[&str],
        shutdown: Shutdown,
    ) -> JoinHandle<anyhow::Result<Exit>> {
        spawn_run(&self.submit_args(extra), self.env.clone(), shutdown)
    }

    /// Runs `resume --db DB --no-progress` plus `extra` in-process within
    /// [`super::WAIT_LIMIT`]; panics if the command fails.
    pub async fn resume(&self, extra: &[&str]) -> Exit {
        let db = self.db_arg();
        let mut args = vec!["resume", "--db", &db, "--no-progress"];
        args.extend_from_slice(extra);
        let what = format!("resume {}", self.job);
        within(&what, run(&args, self.env.clone()))
            .await
            .unwrap_or_else(|err| panic!("{what}: {err:#}"))
    }

    /// The job exported as CSV through the real command: the header and the rows.
    pub fn export_csv(&self) -> (Vec<String>, Vec<csv::StringRecord>) {
        export_csv(&self.db(), &self.job)
    }

    /// The job exported as Batch-output JSONL through the real command, a value a line.
    pub fn export_jsonl(&self) -> Vec<Value> {
        export_jsonl(&self.db(), &self.job)
    }

    /// How many requests in the database are in `state` (see [`super::requests_in`]).
    pub fn requests_in(&self, state: &str) -> i64 {
        super::requests_in(&self.db(), state)
    }

    /// The real binary with `args`, run in the scratch directory with a clean environment.
    pub fn bin(&self, args: &[&str]) -> Command {
        let mut cmd = bin::runner(self.scratch.dir.path());
        cmd.args(args);
        cmd
    }

    /// The real binary's `submit <job>.jsonl --base-url MOCK --model test-model --no-progress`
    /// plus `extra`, in the scratch directory (so the database is its default, `runner.db`).
    pub fn bin_submit(&self, extra: &[&str]) -> Command {
        let file = format!("{}.jsonl", self.job);
        let url = self.url();
        let mut cmd = self.bin(&[
            "submit",
            &file,
            "--base-url",
            &url,
            "--model",
            "test-model",
            "--no-progress",
        ]);
        cmd.args(extra);
        cmd
    }

    /// Stops the mock and waits for it; hands back the scratch directory for a test that goes
    /// on without this mock.
    pub async fn shutdown(self) -> Scratch {
        self.mock.shutdown().await;
        self.scratch
    }
}
