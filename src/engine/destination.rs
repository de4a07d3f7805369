//! Where a job sends its requests (and its key): which base URL wins, whether plain `http://`
//! may carry a key, and the line on stderr that says where requests go.
//!
//! The rule for the base URL, most explicit first: `--base-url`; else `OPENAI_BASE_URL` when
//! set (it replaces a different stored URL, and is stored, with a note on stderr: the key in
//! this environment belongs with this environment's server); else the job's stored URL; else
//! OpenAI's.

use std::net::IpAddr;

use crate::cli::RunArgs;
use crate::engine::config::{ApiEnv, JobSettings};

/// Where the base URL of a run came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--base-url`.
    Flag,
    /// `OPENAI_BASE_URL`.
    Environment,
    /// The job's stored settings.
    Stored,
    /// Neither: OpenAI's own API.
    Default,
}

impl Source {
    /// How stderr names it.
    pub fn describe(self) -> &'static str {
        match self {
            Source::Flag => "from --base-url",
            Source::Environment => "from OPENAI_BASE_URL",
            Source::Stored => "stored with the job",
            Source::Default => "the default",
        }
    }
}

/// A base URL that would send the key in the clear.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// Plain `http://` to a host that is not this machine, with a key to send.
    #[error(
        "refusing to send the API key over plain http:// to {host}: anyone on the network could read it; \
         use https://, or pass --allow-insecure-http if this network is trusted"
    )]
    InsecureHttp {
        /// The host named by the base URL.
        host: String,
    },
}

/// Settles the run's base URL after `run`'s flags were applied to `settings` (`stored`: the
/// job existed before this run). Returns where it came from and, when the environment replaced
/// a different stored URL, the note to print.
pub fn settle(
    settings: &mut JobSettings,
    stored: bool,
    run: &RunArgs,
    env: &ApiEnv,
) -> (Source, Option<String>) {
    if run.base_url.is_some() {
        return (Source::Flag, None);
    }
    match (&env.base_url, stored) {
        (Some(from_env), true) if *from_env != settings.base_url => {
            let note = format!(
                "the job was stored with base URL {}, but OPENAI_BASE_URL is {from_env}: using OPENAI_BASE_URL \
                 (the environment wins over a stored URL, and is now stored); pass --base-url to choose",
                settings.base_url
            );
            settings.base_url.clone_from(from_env);
            (Source::Environment, Some(note))
        }
        (Some(_), _) => (Source::Environment, None),
        (None, true) => (Source::Stored, None),
        (None, false) => (Source::Default, None),
    }
}

/// The host (and port) requests go to, for the line on stderr.
pub fn host_of(base_url: &str) -> String {
    reqwest::Url::parse(base_url)
        .ok()
        .and_then(|url| {
            let host = url.host_str()?.to_owned();
            Some(match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .unwrap_or_else(|| base_url.to_owned())
}

/// Refuses plain `http://` to anything but this machine while a key would be sent, unless
/// `allow_insecure` (`--allow-insecure-http`).
///
/// # Errors
/// [`DestinationError::InsecureHttp`].
pub fn check_transport(
    settings: &JobSettings,
    env: &ApiEnv,
    allow_insecure: bool,
) -> Result<(), DestinationError> {
    let has_key = env.api_key.is_some() || settings.keys_file.is_some();
    let Ok(url) = reqwest::Url::parse(&settings.base_url) else {
        // `JobSettings::check` refuses it with a better message.
        return Ok(());
    };
    if allow_insecure || !has_key || url.scheme() != "http" || is_loopback(&url) {
        return Ok(());
    }
    Err(DestinationError::InsecureHttp {
        host: host_of(&settings.base_url),
    })
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::http::client::ApiKey;

    fn with_key() -> ApiEnv {
        ApiEnv {
            api_key: Some(ApiKey::new("sk-test-0123456789abcdef")),
            ..ApiEnv::default()
        }
    }

    #[rstest]
    #[case("http://api.example.com/v1", true, false)]
    #[case("http://10.0.0.5:8000/v1", true, false)]
    #[case("http://api.example.com/v1", false, true)]
    #[case("http://localhost:8000/v1", true, true)]
    #[case("http://127.0.0.1:8000/v1", true, true)]
    #[case("http://127.8.9.1/v1", true, true)]
    #[case("http://[::1]:8000/v1", true, true)]
    #[case("https://api.example.com/v1", true, true)]
    fn plain_http_with_a_key_goes_only_to_this_machine(
        #[case] base_url: &str,
        #[case] key: bool,
        #[case] allowed: bool,
    ) {
        let env = if key { with_key() } else { ApiEnv::default() };
        let settings = JobSettings {
            base_url: base_url.into(),
            ..JobSettings::defaults(&ApiEnv::default())
        };
        assert_eq!(check_transport(&settings, &env, false).is_ok(), allowed);
        assert!(check_transport(&settings, &env, true).is_ok());
    }

    #[test]
    fn the_environment_wins_over_a_stored_url_and_says_so() {
        let env = ApiEnv {
            base_url: Some("https://new.example/v1".into()),
            ..ApiEnv::default()
        };
        let mut settings = JobSettings {
            base_url: "https://old.example/v1".into(),
            ..JobSettings::defaults(&ApiEnv::default())
        };
        let (source, note) = settle(&mut settings, true, &RunArgs::default(), &env);
        assert_eq!(source, Source::Environment);
        assert_eq!(settings.base_url, "https://new.example/v1");
        let note = note.expect("a note");
        assert!(note.contains("https://old.example/v1"), "{note}");
    }
}
