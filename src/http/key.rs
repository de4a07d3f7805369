//! An API key, and the fingerprint that names it in the journal. Its own module so that the
//! client that sends it and the redactor that looks for it in answers both depend on it, and
//! not on each other.

use std::fmt;

/// An API key. Its bytes go into the `Authorization` header and nowhere else: `Debug` is
/// redacted and the journal only ever sees [`ApiKey::fingerprint`].
#[derive(Clone)]
pub struct ApiKey {
    secret: String,
    fingerprint: String,
}

impl ApiKey {
    /// Wraps a key; surrounding whitespace is dropped.
    pub fn new(secret: &str) -> ApiKey {
        let secret = secret.trim().to_owned();
        let fingerprint = fingerprint(&secret);
        ApiKey {
            secret,
            fingerprint,
        }
    }

    /// Wraps a key that the journal names by `label` instead of its fingerprint.
    pub fn labelled(secret: &str, label: &str) -> ApiKey {
        ApiKey {
            secret: secret.trim().to_owned(),
            fingerprint: label.to_owned(),
        }
    }

    /// The label, or `sk-…abcd` (prefix kind and last four characters): enough to tell keys apart in the
    /// journal, never enough to use one.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The key itself, for the redactor that looks for it in server text.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.fingerprint)
    }
}

fn fingerprint(secret: &str) -> String {
    let prefix = ["sk-proj-", "sk-svcacct-", "sk-admin-", "sk-"]
        .into_iter()
        .find(|p| secret.starts_with(p))
        .unwrap_or("");
    let chars: Vec<char> = secret.chars().collect();
    // Short keys show nothing of themselves.
    if chars.len() < 12 {
        return format!("{prefix}…");
    }
    let last4: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}…{last4}")
}
