//! `runner doctor`: what a careful user checks before a big job, in plain words.
//!
//! 1. **Keys**: which key (or keys file) a job would use, and its kind: project (`sk-proj-`),
//!    service account (`sk-svcacct-`), admin (`sk-admin-`), legacy user (`sk-`), or other.
//! 2. **Environment**: `OPENAI_PROJECT_ID` / `OPENAI_ORG_ID`, which become headers.
//! 3. **Base URL**: it parses, its host resolves, a TCP connection opens.
//! 4. **Probe**: one `GET /v1/models` per key, classified with the job's own taxonomy
//!    ([`crate::http::classify::classify`]) and explained: missing scope vs invalid key vs project mismatch vs quota vs
//!    network.
//!
//! Exit: 0 when a job would run (warnings included), 4 when a job would stop at once (rejected
//! key, project mismatch, 403, quota), 1 when the API cannot be used at all (no key for OpenAI,
//! bad URL, unreachable, unreadable keys file).

use crate::util::text::printable;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::cli::DoctorArgs;
use crate::domain::Exit;
use crate::engine::config::{ApiEnv, DEFAULT_BASE_URL, set_key_hint};
use crate::engine::keys::read_keys_file;
use crate::http::client::{ApiKey, ClientSettings};

mod probe;

use probe::probe;

/// Keys probed at most: one request each, sent one after the other.
const MAX_PROBED_KEYS: usize = 10;

/// How a check came out, mildest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// A job would run, but read this.
    Warn,
    /// A job would stop at once (exit 4).
    Stop,
    /// The API cannot be used from here (exit 1).
    Fail,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Stop => "STOP",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked: `key`, `environment`, `base URL`, `probe`.
    pub name: &'static str,
    /// How it came out.
    pub verdict: Verdict,
    /// One line: what was found.
    pub finding: String,
    /// What it means and what to do, in plain words.
    pub advice: Vec<String>,
}

impl Check {
    fn new(name: &'static str, verdict: Verdict, finding: impl Into<String>) -> Check {
        Check {
            name,
            verdict,
            finding: finding.into(),
            advice: Vec::new(),
        }
    }

    fn advise(mut self, advice: impl Into<String>) -> Check {
        self.advice.push(advice.into());
        self
    }
}

/// Every check, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Diagnosis {
    /// The worst verdict (`Ok` when there are no checks).
    pub fn worst(&self) -> Verdict {
        self.checks
            .iter()
            .map(|c| c.verdict)
            .max()
            .unwrap_or(Verdict::Ok)
    }

    /// The report, one block per check, then the overall verdict.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for check in &self.checks {
            let _ = writeln!(
                text,
                "{:<5} {:<12} {}",
                check.verdict.label(),
                check.name,
                printable(&check.finding)
            );
            // Findings and advice quote what the server said.
            for line in &check.advice {
                let _ = writeln!(text, "{:<18} {}", "", printable(line));
            }
        }
        let _ = writeln!(
            text,
            "\n{}",
            match self.worst() {
                Verdict::Ok => "ready: a job would run",
                Verdict::Warn => "ready with warnings: a job would run; read the warnings above",
                Verdict::Stop =>
                    "not ready: a job would stop at once (exit 4); fix what is marked STOP and run `runner doctor` again",
                Verdict::Fail =>
                    "not ready: the API cannot be used from here (exit 1); fix what is marked FAIL and run `runner doctor` again",
            }
        );
        text
    }
}

/// `runner doctor` is not ready to run a job: exit 1.
#[derive(Debug, thiserror::Error)]
#[error("doctor: the API cannot be used from here: see the checks above")]
pub struct NotReady;

/// Runs `runner doctor`: prints the diagnosis on stdout.
///
/// # Errors
/// [`NotReady`] when the API cannot be used (exit 1).
pub async fn doctor(args: &DoctorArgs, env: &ApiEnv) -> anyhow::Result<Exit> {
    let diagnosis = diagnose(args, env).await;
    let mut out = std::io::stdout().lock();
    out.write_all(diagnosis.render().as_bytes())?;
    out.flush()?;
    match diagnosis.worst() {
        Verdict::Ok | Verdict::Warn => Ok(Exit::Success),
        Verdict::Stop => Ok(Exit::Stopped),
        Verdict::Fail => Err(NotReady.into()),
    }
}

/// The kind of an API key, from its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `sk-proj-`: bound to one project.
    Project,
    /// `sk-svcacct-`: a service account's, bound to one project.
    ServiceAccount,
    /// `sk-admin-`: manages the organization; cannot call the model endpoints.
    Admin,
    /// `sk-` alone: a user key from before project keys.
    Legacy,
    /// Anything else (local servers take any token).
    Other,
}

impl KeyKind {
    /// The kind of a key, or of its fingerprint (which keeps the prefix).
    pub fn of(key: &str) -> KeyKind {
        let key = key.trim();
        if key.starts_with("sk-proj-") {
            KeyKind::Project
        } else if key.starts_with("sk-svcacct-") {
            KeyKind::ServiceAccount
        } else if key.starts_with("sk-admin-") {
            KeyKind::Admin
        } else if key.starts_with("sk-") {
            KeyKind::Legacy
        } else {
            KeyKind::Other
        }
    }

    /// How it reads, with its verdict and the advice that goes with it.
    fn describe(self, openai: bool) -> (Verdict, &'static str, &'static str) {
        match self {
            KeyKind::Project => (
                Verdict::Ok,
                "project key (sk-proj-)",
                "requests bill to the key's project and get its limits",
            ),
            KeyKind::ServiceAccount => (
                Verdict::Ok,
                "service-account key (sk-svcacct-)",
                "bound to one project and to no person: the right kind for unattended jobs",
            ),
            KeyKind::Admin => (
                Verdict::Warn,
                "admin key (sk-admin-)",
                "admin keys manage the organization and cannot call the model endpoints: use a project key",
            ),
            KeyKind::Legacy => (
                Verdict::Warn,
                "legacy user key (sk-)",
                "it works, but acts as you in every project: prefer a project (sk-proj-) or service-account key for batch jobs",
            ),
            KeyKind::Other if openai => (
                Verdict::Warn,
                "not an OpenAI key (no sk- prefix)",
                "api.openai.com will reject it: set OPENAI_API_KEY to a key from the platform's API keys page",
            ),
            KeyKind::Other => (
                Verdict::Ok,
                "a token without an sk- prefix",
                "fine for OpenAI-compatible servers that take any token",
            ),
        }
    }
}

/// Runs every check. Never fails: a failed check is a finding.
pub async fn diagnose(args: &DoctorArgs, env: &ApiEnv) -> Diagnosis {
    let mut checks = Vec::new();
    let (base_url, from) = match (&args.base_url, &env.base_url) {
        (Some(url), _) => (url.clone(), "--base-url"),
        (None, Some(url)) => (url.clone(), "OPENAI_BASE_URL"),
        (None, None) => (DEFAULT_BASE_URL.to_owned(), "the default"),
    };
    let url = reqwest::Url::parse(&base_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    let openai = url.as_ref().and_then(|u| u.host_str()) == Some("api.openai.com");
    let keys = key_checks(args, env, openai, &mut checks);
    checks.push(environment_check(env));
    let Some(url) = url else {
        checks.push(
            Check::new("base URL", Verdict::Fail, format!("'{base_url}' (from {from}) is not an http:// or https:// URL"))
                .advise("set OPENAI_BASE_URL or --base-url to e.g. https://api.openai.com/v1 or http://localhost:8000/v1"),
        );
        return Diagnosis { checks };
    };
    let reachable = reach(&url, &base_url, from, args.timeout).await;
    let unreachable = reachable.verdict == Verdict::Fail;
    checks.push(reachable);
    if unreachable {
        return Diagnosis { checks };
    }
    let settings = ClientSettings {
        base_url: base_url.clone(),
        timeout: args.timeout,
        connect_timeout: args.timeout,
        organization: env.organization.clone(),
        project: env.project.clone(),
        max_body_bytes: crate::http::body::DEFAULT_MAX_BODY_BYTES,
        auth: crate::http::client::AuthStyle::for_url(&base_url),
        api_version: env.api_version.clone(),
        headers: Vec::new(),
    };
    let probed: Vec<Option<&ApiKey>> = if keys.is_empty() {
        vec![None]
    } else {
        keys.iter().take(MAX_PROBED_KEYS).map(Some).collect()
    };
    for key in probed {
        checks.push(probe(&settings, key, env).await);
    }
    if keys.len() > MAX_PROBED_KEYS {
        checks.push(Check::new(
            "probe",
            Verdict::Ok,
            format!(
                "{} more keys not probed (at most {MAX_PROBED_KEYS} are)",
                keys.len() - MAX_PROBED_KEYS
            ),
        ));
    }
    Diagnosis { checks }
}

/// The key checks; returns the keys to probe.
fn key_checks(
    args: &DoctorArgs,
    env: &ApiEnv,
    openai: bool,
    checks: &mut Vec<Check>,
) -> Vec<ApiKey> {
    if let Some(path) = &args.keys_file {
        let keys = match read_keys_file(path) {
            Ok(keys) => keys,
            Err(e) => {
                checks.push(Check::new("key", Verdict::Fail, e.to_string()));
                return Vec::new();
            }
        };
        // The labels hide the keys' prefixes: read the kinds from the file itself, line for
        // line as `read_keys_file` does.
        let kinds = std::fs::read_to_string(path)
            .map(|t| key_kinds(&t))
            .unwrap_or_default();
        for (key, kind) in keys
            .iter()
            .zip(kinds.into_iter().chain(std::iter::repeat(KeyKind::Other)))
        {
            let (verdict, what, advice) = kind.describe(openai);
            checks.push(
                Check::new(
                    "key",
                    verdict,
                    format!("{}: {what}, from {}", key.fingerprint(), path.display()),
                )
                .advise(advice),
            );
        }
        return keys;
    }
    match &env.api_key {
        Some(key) => {
            let (verdict, what, advice) = KeyKind::of(key.fingerprint()).describe(openai);
            checks.push(
                Check::new(
                    "key",
                    verdict,
                    format!("OPENAI_API_KEY {}: {what}", key.fingerprint()),
                )
                .advise(advice),
            );
            vec![key.clone()]
        }
        None if openai => {
            checks.push(
                Check::new(
                    "key",
                    Verdict::Fail,
                    "OPENAI_API_KEY is not set and no --keys-file given",
                )
                .advise(format!(
                    "set it with {}; never as a flag, which would show in `ps`",
                    set_key_hint(env.shell.as_deref())
                )),
            );
            Vec::new()
        }
        None => {
            checks.push(
                Check::new("key", Verdict::Ok, "no key: requests go without Authorization")
                    .advise("fine for local servers (vLLM, Ollama, llama.cpp); set OPENAI_API_KEY if yours wants one"),
            );
            Vec::new()
        }
    }
}

/// The kinds of a keys file's keys, in the order `read_keys_file` returns them.
fn key_kinds(text: &str) -> Vec<KeyKind> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| match line.split_once('=') {
            Some((label, key)) if !label.trim().is_empty() && !key.trim().is_empty() => {
                KeyKind::of(key)
            }
            _ => KeyKind::of(line),
        })
        .collect()
}

fn environment_check(env: &ApiEnv) -> Check {
    let mut sent = Vec::new();
    if let Some(project) = &env.project {
        sent.push(format!("OpenAI-Project: {project}"));
    }
    if let Some(org) = &env.organization {
        sent.push(format!("OpenAI-Organization: {org}"));
    }
    if sent.is_empty() {
        return Check::new(
            "environment",
            Verdict::Ok,
            "OPENAI_PROJECT_ID and OPENAI_ORG_ID are not set",
        )
        .advise("requests go to the key's own project and organization");
    }
    Check::new(
        "environment",
        Verdict::Ok,
        format!("sent with every request: {}", sent.join(", ")),
    )
    .advise("they must name the key's own project and organization, or every request gets 401")
}

/// DNS, then a TCP connection to the base URL's host (skipped behind a proxy, which reqwest uses).
async fn reach(url: &reqwest::Url, base_url: &str, from: &str, limit: Duration) -> Check {
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let proxy = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .find(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if let Some(var) = proxy {
        return Check::new(
            "base URL",
            Verdict::Ok,
            format!("{base_url} (from {from}), through the proxy in {var}"),
        )
        .advise("the probe below goes through the proxy too");
    }
    let started = Instant::now();
    let target = format!("{host}:{port}");
    let resolved = match tokio::time::timeout(limit, tokio::net::lookup_host(target.clone())).await
    {
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
        Ok(Err(e)) => {
            return Check::new(
                "base URL",
                Verdict::Fail,
                format!("{base_url} (from {from}): cannot resolve {host}: {e}"),
            )
            .advise("check the host name in OPENAI_BASE_URL / --base-url, and this machine's DNS");
        }
        Err(_) => {
            return Check::new(
                "base URL",
                Verdict::Fail,
                format!("{base_url}: resolving {host} took longer than {limit:?}"),
            )
            .advise("check this machine's DNS");
        }
    };
    let Some(addr) = resolved.first().copied() else {
        return Check::new(
            "base URL",
            Verdict::Fail,
            format!("{base_url}: {host} resolves to no address"),
        );
    };
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Check::new(
            "base URL",
            Verdict::Ok,
            format!("{base_url} (from {from}): {target} reachable ({} ms)", started.elapsed().as_millis()),
        ),
        Ok(Err(e)) => Check::new("base URL", Verdict::Fail, format!("{base_url} (from {from}): cannot connect to {target}: {e}"))
            .advise("is the server running and listening there? check OPENAI_BASE_URL / --base-url, a firewall or a VPN"),
        Err(_) => Check::new("base URL", Verdict::Fail, format!("{base_url}: no connection to {target} within {limit:?}"))
            .advise("a firewall may drop the packets: check the network path, or set HTTPS_PROXY if you need a proxy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("sk-proj-abc", KeyKind::Project)]
    #[case("sk-proj-…abcd", KeyKind::Project)]
    #[case("sk-svcacct-abc", KeyKind::ServiceAccount)]
    #[case("sk-admin-abc", KeyKind::Admin)]
    #[case("sk-abc", KeyKind::Legacy)]
    #[case("…abcd", KeyKind::Other)]
    #[case("ollama", KeyKind::Other)]
    fn kinds_from_prefixes(#[case] key: &str, #[case] kind: KeyKind) {
        assert_eq!(KeyKind::of(key), kind);
    }

    #[test]
    fn keys_file_kinds_follow_its_lines() {
        let text = "# mine\nprod=sk-proj-aaaa\n\nsk-svcacct-bbbb\nold = sk-cccc\n";
        assert_eq!(
            key_kinds(text),
            [KeyKind::Project, KeyKind::ServiceAccount, KeyKind::Legacy]
        );
    }

    #[test]
    fn the_worst_check_decides() {
        let mut d = Diagnosis::default();
        assert_eq!(d.worst(), Verdict::Ok);
        d.checks.push(Check::new("key", Verdict::Warn, "x"));
        d.checks.push(Check::new("probe", Verdict::Stop, "y"));
        assert_eq!(d.worst(), Verdict::Stop);
        assert!(d.render().contains("exit 4"));
    }
}
