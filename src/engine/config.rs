//! Checked settings: the flags of [`crate::cli`] merged over a job's stored settings, the
//! environment (OpenAI SDK names) and the defaults.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::RunArgs;
use crate::domain::AttemptClass;
use crate::engine::breaker::BreakerSettings;
use crate::engine::keys::{KeysError, read_keys_file};
use crate::engine::retry::{Budgets, RetryPolicy};
use crate::http::client::{ApiKey, AuthStyle, ClientSettings};
use crate::input::{CHAT_ENDPOINT, InputOptions};

mod input;
mod shell;

pub use input::InputSettings;
pub use shell::set_key_hint;

/// The OpenAI SDKs' default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// The pool the breaker's window is sized for when the pool sizes itself: its window is then
/// 128 answers, enough to tell a spike from noise, few enough to trip within a second of one.
const BREAKER_POOL: usize = 64;
/// Time limit of one attempt, by default: long generations take minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Connect time limit: a server that does not accept in this time is not there.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the process environment says, read once (tests build their own).
#[derive(Clone, Debug, Default)]
pub struct ApiEnv {
    /// `OPENAI_API_KEY`.
    pub api_key: Option<ApiKey>,
    /// `OPENAI_BASE_URL`.
    pub base_url: Option<String>,
    /// `OPENAI_ORG_ID`, sent as `OpenAI-Organization`.
    pub organization: Option<String>,
    /// `OPENAI_PROJECT_ID`, sent as `OpenAI-Project`.
    pub project: Option<String>,
    /// `AZURE_OPENAI_API_KEY`: the key when the key is sent Azure's way (`api-key`), before
    /// `OPENAI_API_KEY`.
    pub azure_api_key: Option<ApiKey>,
    /// `AZURE_OPENAI_ENDPOINT`, e.g. `https://res.openai.azure.com`: the base URL is
    /// `{endpoint}/openai` when neither `--base-url` nor `OPENAI_BASE_URL` is given.
    pub azure_endpoint: Option<String>,
    /// `OPENAI_API_VERSION`: the `api-version` query parameter when `--api-version` is not given.
    pub api_version: Option<String>,
    /// `SHELL`: only for saying how to set a missing key in the user's shell
    /// ([`set_key_hint`]).
    pub shell: Option<String>,
}

impl ApiEnv {
    /// Reads the `OPENAI_*` variables (and `SHELL`); empty ones count as unset.
    pub fn from_process() -> ApiEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        ApiEnv {
            api_key: var("OPENAI_API_KEY").map(|k| ApiKey::new(&k)),
            base_url: var("OPENAI_BASE_URL"),
            organization: var("OPENAI_ORG_ID"),
            project: var("OPENAI_PROJECT_ID"),
            azure_api_key: var("AZURE_OPENAI_API_KEY").map(|k| ApiKey::new(&k)),
            azure_endpoint: var("AZURE_OPENAI_ENDPOINT"),
            api_version: var("OPENAI_API_VERSION"),
            shell: var("SHELL"),
        }
    }
}

/// Bad settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--via auto` without a deadline.
    #[error(
        "--via auto needs --deadline WHEN: a duration from now (6h) or an RFC 3339 time (2026-12-08T09:00:00Z)"
    )]
    NoDeadline,
    /// The base URL does not parse or is not http(s).
    #[error("base URL '{0}' is not an http:// or https:// URL")]
    BaseUrl(String),
    /// The endpoint is not a path.
    #[error("endpoint '{0}' must be a path such as /v1/chat/completions")]
    Endpoint(String),
    /// OpenAI's own API needs a key.
    #[error(
        "OPENAI_API_KEY is not set, and {base_url} needs a key: set it with {set_key} and run this again (keys are never accepted as flags)"
    )]
    MissingKey {
        /// The API that wants a key.
        base_url: String,
        /// How to set it in the user's shell ([`set_key_hint`]).
        set_key: String,
    },
    /// `--max-response-bytes` above what the journal can hold.
    #[error(
        "--max-response-bytes {0} is over the largest answer the journal can hold ({MAX_RESPONSE_BYTES_LIMIT}): use a smaller value"
    )]
    MaxResponseBytes(u64),
    /// The stored settings of a job do not parse.
    #[error("the job's stored settings are unreadable: {0}")]
    Stored(#[from] serde_json::Error),
}

/// A job's settings, stored with the job (as JSON, never with a key) so that a resume runs the
/// same way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSettings {
    /// API base URL.
    pub base_url: String,
    /// Endpoint for plain lines.
    pub endpoint: String,
    /// Model filled into bodies without one.
    pub model: Option<String>,
    /// Requests in flight at most, as `--concurrency` gave it; 0: the pool sizes itself from
    /// the pace and the latency ([`crate::engine::sizing`]). Jobs stored before the pool sized
    /// itself hold the fixed default of then, 32.
    pub concurrency: usize,
    /// `--max-in-flight`: the most a pool that sizes itself may hold (`None`: the default,
    /// within the open-file limit).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Requests per minute at most.
    pub rpm: Option<u32>,
    /// Budget of `transient` attempts per request.
    pub max_attempts: u32,
    /// One attempt's time limit, in ms.
    pub timeout_ms: u64,
    /// Budget of `auth_transient` attempts per request.
    #[serde(default = "defaults::auth_retries")]
    pub auth_retries: u32,
    /// Budget of `rate_limited` attempts per request.
    #[serde(default = "defaults::rate_limit_retries")]
    pub rate_limit_retries: u32,
    /// First backoff step, ms.
    #[serde(default = "defaults::backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// Longest backoff step, ms.
    #[serde(default = "defaults::backoff_cap_ms")]
    pub backoff_cap_ms: u64,
    /// Longest server-requested wait honoured, ms.
    #[serde(default = "defaults::max_wait_ms")]
    pub max_wait_ms: u64,
    /// Longest breaker cool-down (the probe interval in a long outage), ms.
    #[serde(default = "defaults::breaker_max_cooldown_ms")]
    pub breaker_max_cooldown_ms: u64,
    /// Consecutive identical permanent errors that stop the job (0: never).
    #[serde(default = "defaults::stop_after_same_error")]
    pub stop_after_same_error: u32,
    /// Keys file (its path only; the keys are read at each run and never stored).
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    /// Tokens per minute at most.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Output tokens counted for `tpm` when a request names no maximum.
    #[serde(default = "defaults::default_output_tokens")]
    pub default_output_tokens: u32,
    /// Longest answer body read, in bytes (`--max-response-bytes`).
    #[serde(default = "defaults::max_response_bytes")]
    pub max_response_bytes: u64,
    /// Longest input line accepted, in bytes (`--max-line-bytes` of the last submit): a resume
    /// that reads the rest of the job's file reads it with the same limit.
    #[serde(default = "defaults::max_line_bytes")]
    pub max_line_bytes: usize,
    /// Extra headers (`--header`), checked, lower-case names.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// How the key is sent; `None`: by the base URL ([`AuthStyle::for_url`]).
    #[serde(default)]
    pub auth: Option<AuthStyle>,
    /// `api-version` query parameter (`--api-version`); `OPENAI_API_VERSION` when unset.
    #[serde(default)]
    pub api_version: Option<String>,
    /// How requests are sent: directly, or through the hosted Batch API (`--via`).
    #[serde(default)]
    pub batch: BatchSettings,
    /// How the job's file is read: its format, a spreadsheet's prompt, the system message,
    /// `--max-tokens`.
    #[serde(default)]
    pub input: InputSettings,
    /// The most the job may spend, in USD (`--max-cost`), by the journaled usage of its answers
    /// and the worst case of what is in flight.
    #[serde(default)]
    pub max_cost: Option<f64>,
    /// Prices given with `--price`, USD per 1M tokens, over the built-in table.
    #[serde(default)]
    pub prices: std::collections::BTreeMap<String, crate::domain::Price>,
}

/// How a job uses the hosted Batch API (`--via batch` and its flags).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSettings {
    /// `sync` (each request sent directly) or `batch`.
    pub via: Via,
    /// Lines per input file at most (`--batch-max-lines`).
    pub max_lines: usize,
    /// Bytes per input file at most (`--batch-max-bytes`).
    pub max_bytes: usize,
    /// Longest time between two polls of a batch, ms (`--poll-interval`); the first polls come
    /// sooner.
    pub poll_interval_ms: u64,
    /// Delete a batch's input, output and error files from the server once its results are
    /// journaled (`--delete-batch-files`).
    pub delete_files: bool,
    /// `--via auto`: when the job must be done, unix ms (`--deadline`).
    #[serde(default)]
    pub deadline_ms: Option<i64>,
    /// `--via auto`: the time kept before the deadline for cancelling batches and a margin, ms
    /// (`--switch-margin`).
    #[serde(default = "defaults::switch_margin_ms")]
    pub switch_margin_ms: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            via: Via::Sync,
            max_lines: crate::engine::batch::chunks::MAX_LINES,
            max_bytes: crate::engine::batch::chunks::MAX_BYTES,
            poll_interval_ms: 60_000,
            delete_files: false,
            deadline_ms: None,
            switch_margin_ms: defaults::switch_margin_ms(),
        }
    }
}

impl BatchSettings {
    /// The chunk limits.
    pub fn limits(&self) -> crate::engine::batch::chunks::ChunkLimits {
        crate::engine::batch::chunks::ChunkLimits {
            max_lines: self.max_lines.max(1),
            max_bytes: self.max_bytes.max(1),
        }
    }

    /// The wait before the next poll of a batch polled `polls` times: one second, doubling up
    /// to the poll interval, so a short batch is seen finished soon and a long one is not
    /// polled more than once per interval.
    pub fn poll_delay(&self, polls: i64) -> Duration {
        let doubling = Duration::from_secs(1u64 << polls.clamp(0, 16));
        doubling.min(Duration::from_millis(self.poll_interval_ms.max(1)))
    }
}

pub use crate::cli::Via;

/// The largest `--max-response-bytes`: a body is journaled as text, and a body that is not
/// UTF-8 can grow up to three times in the lossy conversion; SQLite refuses strings over
/// 1,000,000,000 bytes, which would end the run on a storage error.
pub const MAX_RESPONSE_BYTES_LIMIT: u64 = 300_000_000;

/// Defaults of settings added after the first release: older stored settings lack them.
mod defaults {
    use crate::engine::retry::{Budgets, RetryPolicy};

    /// Ten minutes: the longest OpenAI says a batch takes to cancel.
    pub fn switch_margin_ms() -> u64 {
        600_000
    }

    pub fn auth_retries() -> u32 {
        Budgets::default().auth_transient
    }
    pub fn rate_limit_retries() -> u32 {
        Budgets::default().rate_limited
    }
    pub fn backoff_base_ms() -> u64 {
        RetryPolicy::default().base.as_millis() as u64
    }
    pub fn backoff_cap_ms() -> u64 {
        RetryPolicy::default().cap.as_millis() as u64
    }
    pub fn max_wait_ms() -> u64 {
        RetryPolicy::default().max_server_wait.as_millis() as u64
    }
    pub fn breaker_max_cooldown_ms() -> u64 {
        10_000
    }
    pub fn stop_after_same_error() -> u32 {
        20
    }
    pub fn default_output_tokens() -> u32 {
        256
    }
    pub fn max_response_bytes() -> u64 {
        crate::http::body::DEFAULT_MAX_BODY_BYTES as u64
    }
    pub fn max_line_bytes() -> usize {
        crate::input::DEFAULT_MAX_LINE_BYTES
    }
}

/// Whether the server behind `base_url` refuses a request that names no model: OpenAI's API,
/// and Azure OpenAI's v1 API (`…/openai/v1`). Azure's deployment URLs name the model in the
/// path, and a local server with one model (llama.cpp, Ollama with a default) takes a request
/// without one.
pub fn needs_model(base_url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base_url) else {
        return false;
    };
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let azure = [
        ".openai.azure.com",
        ".cognitiveservices.azure.com",
        ".services.ai.azure.com",
    ]
    .iter()
    .any(|suffix| host.ends_with(suffix));
    host == "api.openai.com" || (azure && !url.path().contains("/deployments/"))
}

impl JobSettings {
    /// Defaults, with the base URL from the environment if set.
    pub fn defaults(env: &ApiEnv) -> JobSettings {
        JobSettings {
            base_url: env
                .base_url
                .clone()
                .or_else(|| {
                    env.azure_endpoint
                        .as_ref()
                        .map(|endpoint| format!("{}/openai", endpoint.trim_end_matches('/')))
                })
                .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned()),
            endpoint: CHAT_ENDPOINT.to_owned(),
            model: None,
            concurrency: 0,
            max_in_flight: None,
            rpm: None,
            max_attempts: Budgets::default().transient,
            timeout_ms: DEFAULT_TIMEOUT.as_millis() as u64,
            auth_retries: defaults::auth_retries(),
            rate_limit_retries: defaults::rate_limit_retries(),
            backoff_base_ms: defaults::backoff_base_ms(),
            backoff_cap_ms: defaults::backoff_cap_ms(),
            max_wait_ms: defaults::max_wait_ms(),
            breaker_max_cooldown_ms: defaults::breaker_max_cooldown_ms(),
            stop_after_same_error: defaults::stop_after_same_error(),
            keys_file: None,
            tpm: None,
            default_output_tokens: defaults::default_output_tokens(),
            max_response_bytes: defaults::max_response_bytes(),
            max_line_bytes: defaults::max_line_bytes(),
            headers: Vec::new(),
            auth: None,
            api_version: None,
            batch: BatchSettings::default(),
            input: InputSettings::new_job(),
            max_cost: None,
            prices: std::collections::BTreeMap::new(),
        }
    }

    /// The built-in prices with the job's `--price` over them.
    pub fn price_table(&self) -> crate::domain::price::PriceTable {
        let mut table = crate::domain::price::PriceTable::built_in();
        for (model, price) in &self.prices {
            table.set(model.clone(), *price);
        }
        table
    }

    /// How the job's file is read: its format, its endpoint and model for plain lines, its line
    /// limit, a spreadsheet's prompt, the system message and `max_tokens`.
    pub fn input_options(&self) -> InputOptions {
        InputOptions {
            endpoint: self.endpoint.clone(),
            model: self.model.clone(),
            max_line_bytes: self.max_line_bytes,
            format: self.input.format,
            prompt: self.input.prompt.clone(),
            system: self.input.system.clone(),
            max_tokens: self.input.max_tokens,
            own_content_keys: self.input.own_content_keys,
            model_required: needs_model(&self.base_url),
        }
    }

    /// Reads stored settings.
    ///
    /// # Errors
    /// [`ConfigError::Stored`] when the JSON does not parse.
    pub fn from_json(json: &str) -> Result<JobSettings, ConfigError> {
        Ok(serde_json::from_str(json)?)
    }

    /// As stored.
    pub fn to_json(&self) -> String {
        // Plain strings and numbers: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Overrides with the flags that were given.
    pub fn apply(&mut self, run: &RunArgs) {
        if let Some(url) = &run.base_url {
            self.base_url.clone_from(url);
        }
        if let Some(n) = run.concurrency {
            self.concurrency = n.get();
        }
        if let Some(usd) = run.max_cost {
            self.max_cost = Some(usd.0);
        }
        for o in &run.price {
            self.prices.insert(o.model.clone(), o.price);
        }
        if let Some(n) = run.max_in_flight {
            self.max_in_flight = Some(n.get());
        }
        if let Some(n) = run.rpm {
            self.rpm = Some(n.get());
        }
        if let Some(n) = run.tpm {
            self.tpm = Some(n.get());
        }
        if let Some(n) = run.default_output_tokens {
            self.default_output_tokens = n;
        }
        if let Some(n) = run.max_response_bytes {
            self.max_response_bytes = n.get();
        }
        if let Some(n) = run.max_attempts {
            self.max_attempts = n.get();
        }
        if let Some(t) = run.timeout {
            self.timeout_ms = t.as_millis() as u64;
        }
        for budget in &run.retry_budgets {
            match budget.class {
                AttemptClass::Transient => self.max_attempts = budget.attempts,
                AttemptClass::AuthTransient => self.auth_retries = budget.attempts,
                AttemptClass::RateLimited => self.rate_limit_retries = budget.attempts,
                // RetryBudget's parser accepts only the three retried classes.
                AttemptClass::Succeeded
                | AttemptClass::RequestFailed
                | AttemptClass::InvalidResponse
                | AttemptClass::JobStop
                | AttemptClass::InvalidInput
                | AttemptClass::Interrupted => {}
            }
        }
        let ms = |d: Duration| d.as_millis() as u64;
        if let Some(d) = run.backoff_base {
            self.backoff_base_ms = ms(d);
        }
        if let Some(d) = run.backoff_cap {
            self.backoff_cap_ms = ms(d);
        }
        if let Some(d) = run.max_wait {
            self.max_wait_ms = ms(d);
        }
        if let Some(d) = run.breaker_max_cooldown {
            self.breaker_max_cooldown_ms = ms(d);
        }
        if let Some(n) = run.stop_after_same_error {
            self.stop_after_same_error = n;
        }
        self.headers = crate::http::headers::merge(&self.headers, &run.headers);
        if let Some(auth) = run.auth {
            self.auth = Some(auth);
        }
        if let Some(version) = &run.api_version {
            self.api_version = Some(version.clone());
        }
        if let Some(path) = &run.keys_file {
            self.keys_file = Some(std::path::absolute(path).unwrap_or_else(|_| path.clone()));
        }
        if let Some(via) = run.via {
            self.batch.via = via;
        }
        if let Some(n) = run.batch_max_lines {
            self.batch.max_lines = n.get();
        }
        if let Some(n) = run.batch_max_bytes {
            self.batch.max_bytes = n.get();
        }
        if let Some(d) = run.poll_interval {
            self.batch.poll_interval_ms = ms(d).max(1);
        }
        if run.delete_batch_files {
            self.batch.delete_files = true;
        }
        if let Some(deadline) = run.deadline {
            self.batch.deadline_ms = Some(deadline.0);
        }
        if let Some(d) = run.switch_margin {
            self.batch.switch_margin_ms = ms(d).max(1);
        }
    }

    /// The keys to send with: the keys file if set, else `OPENAI_API_KEY`, else none.
    ///
    /// # Errors
    /// The keys file cannot be read or holds no key.
    pub fn keys(&self, env: &ApiEnv) -> Result<Vec<ApiKey>, KeysError> {
        match (&self.keys_file, self.auth_style()) {
            (Some(path), AuthStyle::Bearer | AuthStyle::Azure) => read_keys_file(path),
            (None, AuthStyle::Azure) => Ok(env
                .azure_api_key
                .iter()
                .chain(env.api_key.iter())
                .take(1)
                .cloned()
                .collect()),
            (None, AuthStyle::Bearer) => Ok(env.api_key.iter().cloned().collect()),
        }
    }

    /// How the key is sent: as asked, else as the base URL implies.
    pub fn auth_style(&self) -> AuthStyle {
        self.auth
            .unwrap_or_else(|| AuthStyle::for_url(&self.base_url))
    }

    /// Checks the settings and the environment together.
    ///
    /// # Errors
    /// [`ConfigError`] for an unusable URL or endpoint, or no key for OpenAI's own API.
    pub fn check(&self, env: &ApiEnv) -> Result<(), ConfigError> {
        if self.batch.via == Via::Auto && self.batch.deadline_ms.is_none() {
            return Err(ConfigError::NoDeadline);
        }
        let url = reqwest::Url::parse(&self.base_url)
            .map_err(|_| ConfigError::BaseUrl(self.base_url.clone()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::BaseUrl(self.base_url.clone()));
        }
        if !(1..=MAX_RESPONSE_BYTES_LIMIT).contains(&self.max_response_bytes) {
            return Err(ConfigError::MaxResponseBytes(self.max_response_bytes));
        }
        if !self.endpoint.starts_with('/') {
            return Err(ConfigError::Endpoint(self.endpoint.clone()));
        }
        if env.api_key.is_none()
            && self.keys_file.is_none()
            && url.host_str() == Some("api.openai.com")
        {
            return Err(ConfigError::MissingKey {
                base_url: self.base_url.clone(),
                set_key: set_key_hint(env.shell.as_deref()),
            });
        }
        Ok(())
    }

    /// Requests in flight at most, when the user fixed it (`None`: the pool sizes itself).
    pub fn concurrency(&self) -> Option<NonZeroUsize> {
        NonZeroUsize::new(self.concurrency)
    }

    /// The rate ceiling.
    pub fn rpm(&self) -> Option<NonZeroU32> {
        self.rpm.and_then(NonZeroU32::new)
    }

    /// The token ceiling.
    pub fn tpm(&self) -> Option<NonZeroU32> {
        self.tpm.and_then(NonZeroU32::new)
    }

    /// The retry policy these settings imply.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            budgets: Budgets {
                transient: self.max_attempts.max(1),
                auth_transient: self.auth_retries.max(1),
                rate_limited: self.rate_limit_retries.max(1),
                invalid_response: crate::engine::retry::INVALID_RESPONSE_ATTEMPTS,
            },
            base: Duration::from_millis(self.backoff_base_ms),
            cap: Duration::from_millis(self.backoff_cap_ms.max(self.backoff_base_ms)),
            max_server_wait: Duration::from_millis(self.max_wait_ms),
        }
    }

    /// The breaker settings these settings imply.
    pub fn breaker(&self) -> BreakerSettings {
        let pool = self.concurrency().map_or(BREAKER_POOL, NonZeroUsize::get);
        let mut breaker = BreakerSettings::for_concurrency(pool);
        breaker.max_cooldown =
            Duration::from_millis(self.breaker_max_cooldown_ms).max(breaker.cooldown);
        breaker
    }

    /// The HTTP client's settings.
    pub fn client_settings(&self, env: &ApiEnv) -> ClientSettings {
        ClientSettings {
            base_url: self.base_url.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
            connect_timeout: CONNECT_TIMEOUT.min(Duration::from_millis(self.timeout_ms)),
            organization: env.organization.clone(),
            project: env.project.clone(),
            max_body_bytes: usize::try_from(self.max_response_bytes).unwrap_or(usize::MAX),
            auth: self.auth_style(),
            api_version: self.api_version.clone().or_else(|| env.api_version.clone()),
            headers: self.headers.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_stored_settings() {
        let env = ApiEnv::default();
        let mut settings = JobSettings::defaults(&env);
        settings.rpm = Some(600);
        let stored = settings.to_json();
        let mut resumed = JobSettings::from_json(&stored).expect("parses");
        resumed.apply(&RunArgs {
            concurrency: NonZeroUsize::new(4),
            ..RunArgs::default()
        });
        assert_eq!(resumed.rpm, Some(600), "kept from the job");
        assert_eq!(resumed.concurrency, 4, "taken from the flag");
    }

    #[test]
    fn stored_headers_are_kept_on_resume_and_a_flag_replaces_one_of_the_same_name() {
        let env = ApiEnv::default();
        let mut settings = JobSettings::defaults(&env);
        settings.apply(&RunArgs {
            headers: vec![("x-a".into(), "1".into()), ("x-b".into(), "1".into())],
            ..RunArgs::default()
        });
        let mut resumed = JobSettings::from_json(&settings.to_json()).expect("parses");
        resumed.apply(&RunArgs {
            headers: vec![("x-b".into(), "2".into())],
            ..RunArgs::default()
        });
        assert_eq!(
            resumed.headers,
            [
                ("x-a".to_owned(), "1".to_owned()),
                ("x-b".to_owned(), "2".to_owned())
            ]
        );
        let old = r#"{"base_url":"http://h/v1","endpoint":"/v1/chat/completions","model":null,"concurrency":1,"rpm":null,"max_attempts":3,"timeout_ms":1000}"#;
        let old = JobSettings::from_json(old).expect("settings stored before headers parse");
        assert!(old.headers.is_empty());
        assert_eq!(old.auth, None);
    }

    #[test]
    fn azure_is_chosen_by_host_or_flag_and_reads_the_sdk_environment() {
        let env = ApiEnv {
            api_key: Some(ApiKey::new("sk-openai-0123456789")),
            azure_api_key: Some(ApiKey::new("azure-0123456789abcd")),
            azure_endpoint: Some("https://res.openai.azure.com/".into()),
            api_version: Some("2024-10-21".into()),
            ..ApiEnv::default()
        };
        let settings = JobSettings::defaults(&env);
        assert_eq!(settings.base_url, "https://res.openai.azure.com/openai");
        assert_eq!(settings.auth_style(), AuthStyle::Azure);
        let keys = settings.keys(&env).expect("keys");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].fingerprint(), "…abcd", "AZURE_OPENAI_API_KEY first");
        let client = settings.client_settings(&env);
        assert_eq!(client.api_version.as_deref(), Some("2024-10-21"));

        let local = JobSettings {
            base_url: "http://127.0.0.1:8000/v1".into(),
            ..settings.clone()
        };
        assert_eq!(local.auth_style(), AuthStyle::Bearer);
        assert_eq!(local.keys(&env).expect("keys")[0].fingerprint(), "sk-…6789");
        let forced = JobSettings {
            auth: Some(AuthStyle::Bearer),
            ..settings
        };
        assert_eq!(forced.auth_style(), AuthStyle::Bearer);
    }

    #[test]
    fn openai_needs_a_key_local_servers_do_not() {
        let env = ApiEnv::default();
        let settings = JobSettings::defaults(&env);
        let err = settings.check(&env).expect_err("no key");
        assert!(
            err.to_string().contains("OPENAI_API_KEY is not set"),
            "{err}"
        );
        let fish = ApiEnv {
            shell: Some("/usr/bin/fish".into()),
            ..ApiEnv::default()
        };
        let err = settings.check(&fish).expect_err("no key");
        assert!(
            err.to_string()
                .contains("set it with `set -x OPENAI_API_KEY sk-proj-…` and run this again"),
            "{err}"
        );
        let local = JobSettings {
            base_url: "http://127.0.0.1:8000/v1".into(),
            ..settings
        };
        local.check(&env).expect("local server without key");
        let bad = JobSettings {
            base_url: "ftp://x".into(),
            ..local
        };
        assert!(bad.check(&env).is_err());
    }

    #[test]
    fn only_openai_and_azure_v1_need_a_model_in_the_body() {
        for (url, needs) in [
            ("https://api.openai.com/v1", true),
            ("https://API.openai.com/v1/", true),
            ("https://res.openai.azure.com/openai", true),
            ("https://res.openai.azure.com/openai/v1", true),
            (
                "https://res.openai.azure.com/openai/deployments/gpt4o",
                false,
            ),
            ("http://127.0.0.1:8080/v1", false),
            ("http://localhost:11434/v1", false),
            ("https://litellm.example/v1", false),
            ("not a url", false),
        ] {
            assert_eq!(needs_model(url), needs, "{url}");
        }
    }
}
