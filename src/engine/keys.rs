//! The key pool: requests spread over healthy keys; a key that keeps getting the intermittent
//! 401 cools down and traffic shifts to the others; a key answered `invalid_api_key` is
//! quarantined for the rest of the run. After an auth failure a key's HTTP client is rebuilt
//! (a fresh connection pool: one user traced their 401s to a corrupted client).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::{Class, EventKind, StopCause};
use crate::http::client::{ApiClient, ApiKey, ClientError, ClientSettings};
use crate::util::sync::lock;

/// Consecutive auth-transient answers after which a key cools down (when there are others).
/// One random 401 in ten must not move traffic; three in a row means this key is affected.
const COOL_AFTER: u32 = 3;
/// First cool-down of a key; doubled while its failures go on.
const FIRST_COOLDOWN: Duration = Duration::from_secs(2);
/// Longest cool-down of a key.
const MAX_COOLDOWN: Duration = Duration::from_secs(30);
/// A key's client is rebuilt at most this often: a spike must not rebuild it per request.
const REBUILD_EVERY: Duration = Duration::from_secs(1);

/// Errors reading a keys file.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file cannot be read.
    #[error("{}: cannot read keys file: {source}", path.display())]
    Read {
        /// The keys file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// No key in it.
    #[error("{}: no keys in file: write one key per line, optionally as LABEL=KEY", path.display())]
    Empty {
        /// The keys file.
        path: PathBuf,
    },
    /// A label is used twice, so the journal could not tell the keys apart.
    #[error("{}:{line}: label '{label}' is already used: give every key its own label", path.display())]
    DuplicateLabel {
        /// The keys file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The label.
        label: String,
    },
    /// Building a key's HTTP client failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Reads a keys file: one key per line, as `KEY` or `LABEL=KEY`; blank lines and lines starting
/// with `#` are skipped. Warns when the file is readable by others.
///
/// # Errors
/// [`KeysError`] when it cannot be read, holds no key, or repeats a label.
pub fn read_keys_file(path: &Path) -> Result<Vec<ApiKey>, KeysError> {
    let text = fs::read_to_string(path).map_err(|source| KeysError::Read {
        path: path.to_owned(),
        source,
    })?;
    warn_if_shared(path);
    let mut keys: Vec<ApiKey> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = match line.split_once('=') {
            Some((label, key)) if is_label(label.trim()) && !key.trim().is_empty() => {
                ApiKey::labelled(key, label.trim())
            }
            _ => ApiKey::new(line),
        };
        if keys.iter().any(|k| k.fingerprint() == key.fingerprint()) {
            return Err(KeysError::DuplicateLabel {
                path: path.to_owned(),
                line: index + 1,
                label: key.fingerprint().to_owned(),
            });
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(KeysError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(keys)
}

/// Whether the text left of a line's first `=` is a label: a simple name (letters, digits,
/// `_`, `-`, `.`) that does not look like a key. A label is journaled with every attempt, so a
/// key that merely contains `=` (`sk-…=…`) must never be taken for one.
fn is_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_LABEL_LEN
        && !text.starts_with("sk-")
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The longest label: a name for people to read, not a secret.
const MAX_LABEL_LEN: usize = 64;

fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "{} is readable by other users: `chmod 600 {}`",
            path.display(),
            path.display()
        );
        crate::say!(
            "warning: {} is readable by other users: run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// `strikes`: cool-downs since the key's last success, so a key that keeps flapping rests
    /// longer each time.
    Healthy {
        auth_streak: u32,
        strikes: u32,
    },
    Cooling {
        until: Instant,
        strikes: u32,
    },
    Quarantined,
}

#[derive(Debug)]
struct Slot {
    key: Option<ApiKey>,
    fingerprint: String,
    client: Mutex<Arc<ApiClient>>,
    health: Mutex<Health>,
    last_rebuild: Mutex<Option<Instant>>,
}

/// A key chosen for one attempt.
#[derive(Clone, Debug)]
pub struct KeyLease {
    index: usize,
    /// The client to send with (held by the attempt even if the slot rebuilds it meanwhile).
    pub client: Arc<ApiClient>,
}

/// What the pool can offer now.
#[derive(Debug)]
pub enum Pick {
    /// Use this key.
    Key(KeyLease),
    /// Every usable key is cooling down until then.
    WaitUntil(Instant),
    /// Every key is quarantined.
    NoneLeft,
}

/// A change in a key's health, to journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyEvent {
    /// The key cools down; traffic goes to the others.
    CoolingDown {
        /// Label or `sk-…last4`.
        key: String,
        /// For how long.
        cooldown: Duration,
    },
    /// The key was rejected and is not used again in this run.
    Quarantined {
        /// Label or `sk-…last4`.
        key: String,
    },
}

impl KeyEvent {
    /// The event kind stored in the journal.
    pub fn kind(&self) -> EventKind {
        match self {
            KeyEvent::CoolingDown { .. } => EventKind::KeyCooling,
            KeyEvent::Quarantined { .. } => EventKind::KeyQuarantined,
        }
    }

    /// Human detail for the journal and the log.
    pub fn detail(&self) -> String {
        match self {
            KeyEvent::CoolingDown { key, cooldown } => format!(
                "{key}: {COOL_AFTER}+ auth-transient 401s in a row: resting it for {:.0}s",
                cooldown.as_secs_f64()
            ),
            KeyEvent::Quarantined { key } => {
                format!(
                    "{key}: rejected (invalid key or 403 forbidden): not used again in this run"
                )
            }
        }
    }
}

/// How an attempt went, as far as its key is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Any answer that is not an auth failure.
    Fine,
    /// The intermittent 401.
    AuthTransient,
    /// The key was rejected (`invalid_api_key`, or a 403 that is not the scope flap).
    Rejected,
}

impl KeyOutcome {
    /// What an attempt of this class says about its key.
    pub fn of(class: Class) -> KeyOutcome {
        match class {
            Class::AuthTransient => KeyOutcome::AuthTransient,
            // A 403 that is not the scope flap is the key's (its project's) problem first: with
            // other keys, the job goes on without this one.
            Class::JobStop(StopCause::KeyRejected | StopCause::Forbidden) => KeyOutcome::Rejected,
            Class::Succeeded
            | Class::Transient
            | Class::RateLimited
            | Class::RequestFailed
            | Class::InvalidResponse
            | Class::JobStop(StopCause::Quota) => KeyOutcome::Fine,
        }
    }
}

/// The keys of a run.
#[derive(Debug)]
pub struct KeyPool {
    slots: Vec<Slot>,
    cursor: AtomicUsize,
    settings: ClientSettings,
}

impl KeyPool {
    /// A pool over `keys`; with no key at all, one slot that sends no `Authorization` header
    /// (local servers).
    ///
    /// # Errors
    /// When a client cannot be built.
    pub fn new(keys: Vec<ApiKey>, settings: ClientSettings) -> Result<KeyPool, ClientError> {
        let keys: Vec<Option<ApiKey>> = if keys.is_empty() {
            vec![None]
        } else {
            keys.into_iter().map(Some).collect()
        };
        let slots = keys
            .into_iter()
            .map(|key| {
                let client = ApiClient::new(&settings, key.as_ref())?;
                Ok(Slot {
                    fingerprint: key
                        .as_ref()
                        .map_or_else(|| "no key".to_owned(), |k| k.fingerprint().to_owned()),
                    key,
                    client: Mutex::new(Arc::new(client)),
                    health: Mutex::new(Health::Healthy {
                        auth_streak: 0,
                        strikes: 0,
                    }),
                    last_rebuild: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(KeyPool {
            slots,
            cursor: AtomicUsize::new(0),
            settings,
        })
    }

    /// How many keys the pool has.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the pool is empty (never: a keyless pool has one slot).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The next healthy key, round robin; a cooled key whose rest is over is healthy again.
    pub fn pick(&self, now: Instant) -> Pick {
        let n = self.slots.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut earliest: Option<Instant> = None;
        for offset in 0..n {
            let index = (start + offset) % n;
            let slot = &self.slots[index];
            let mut health = lock(&slot.health);
            match *health {
                Health::Healthy { .. } => {}
                Health::Cooling { until, strikes } if until <= now => {
                    *health = Health::Healthy {
                        auth_streak: 0,
                        strikes,
                    };
                }
                Health::Cooling { until, .. } => {
                    earliest = Some(earliest.map_or(until, |e| e.min(until)));
                    continue;
                }
                Health::Quarantined => continue,
            }
            drop(health);
            return Pick::Key(KeyLease {
                index,
                client: Arc::clone(&lock(&slot.client)),
            });
        }
        earliest.map_or(Pick::NoneLeft, Pick::WaitUntil)
    }

    /// Records what an attempt on `lease`'s key ran into; returns a health change to journal.
    pub fn record(&self, lease: &KeyLease, outcome: KeyOutcome, now: Instant) -> Option<KeyEvent> {
        let slot = &self.slots[lease.index];
        if outcome != KeyOutcome::Fine {
            self.rebuild_client(slot, now);
        }
        let mut health = lock(&slot.health);
        match (outcome, *health) {
            (_, Health::Quarantined) => None,
            (KeyOutcome::Rejected, _) => {
                *health = Health::Quarantined;
                Some(KeyEvent::Quarantined {
                    key: slot.fingerprint.clone(),
                })
            }
            (KeyOutcome::Fine, Health::Healthy { .. }) => {
                *health = Health::Healthy {
                    auth_streak: 0,
                    strikes: 0,
                };
                None
            }
            // Answers to requests sent before the key started resting.
            (KeyOutcome::Fine | KeyOutcome::AuthTransient, Health::Cooling { .. }) => None,
            (
                KeyOutcome::AuthTransient,
                Health::Healthy {
                    auth_streak,
                    strikes,
                },
            ) => {
                let auth_streak = auth_streak + 1;
                // With one key there is nowhere to shift traffic: the breaker handles it.
                if auth_streak < COOL_AFTER || self.slots.len() == 1 {
                    *health = Health::Healthy {
                        auth_streak,
                        strikes,
                    };
                    return None;
                }
                let cooldown = slot_cooldown(strikes);
                *health = Health::Cooling {
                    until: now + cooldown,
                    strikes: strikes + 1,
                };
                Some(KeyEvent::CoolingDown {
                    key: slot.fingerprint.clone(),
                    cooldown,
                })
            }
        }
    }

    /// Whether any key is not quarantined.
    pub fn any_usable(&self) -> bool {
        self.slots
            .iter()
            .any(|slot| *lock(&slot.health) != Health::Quarantined)
    }

    fn rebuild_client(&self, slot: &Slot, now: Instant) {
        let mut last = lock(&slot.last_rebuild);
        if last.is_some_and(|at| now.duration_since(at) < REBUILD_EVERY) {
            return;
        }
        *last = Some(now);
        drop(last);
        match ApiClient::new(&self.settings, slot.key.as_ref()) {
            Ok(client) => {
                *lock(&slot.client) = Arc::new(client);
                tracing::debug!(key = %slot.fingerprint, "rebuilt the key's HTTP client after an auth failure");
            }
            Err(e) => {
                tracing::warn!(key = %slot.fingerprint, error = %e, "cannot rebuild the key's HTTP client")
            }
        }
    }
}

/// The rest of a key that already rested `strikes` times since its last success.
fn slot_cooldown(strikes: u32) -> Duration {
    (FIRST_COOLDOWN * (1 << strikes.min(8))).min(MAX_COOLDOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ClientSettings {
        ClientSettings {
            base_url: "http://127.0.0.1:9/v1".into(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            organization: None,
            project: None,
            max_body_bytes: crate::http::body::DEFAULT_MAX_BODY_BYTES,
            auth: crate::http::client::AuthStyle::Bearer,
            api_version: None,
            headers: Vec::new(),
        }
    }

    fn pool(n: usize) -> KeyPool {
        let keys = (0..n)
            .map(|i| ApiKey::labelled(&format!("sk-key-{i}-0000000000"), &format!("k{i}")))
            .collect();
        KeyPool::new(keys, settings()).expect("pool")
    }

    fn lease(pool: &KeyPool, now: Instant) -> KeyLease {
        match pool.pick(now) {
            Pick::Key(lease) => lease,
            other => panic!("no key: {other:?}"),
        }
    }

    #[test]
    fn spreads_requests_round_robin() {
        let pool = pool(3);
        let now = Instant::now();
        let picked: Vec<String> = (0..6)
            .map(|_| {
                lease(&pool, now)
                    .client
                    .key_fingerprint()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        assert_eq!(picked, ["k0", "k1", "k2", "k0", "k1", "k2"]);
    }

    #[test]
    fn a_flapping_key_cools_down_and_traffic_shifts() {
        let pool = pool(2);
        let now = Instant::now();
        let k0 = lease(&pool, now);
        assert_eq!(pool.record(&k0, KeyOutcome::AuthTransient, now), None);
        assert_eq!(pool.record(&k0, KeyOutcome::AuthTransient, now), None);
        let event = pool.record(&k0, KeyOutcome::AuthTransient, now);
        assert_eq!(
            event,
            Some(KeyEvent::CoolingDown {
                key: "k0".into(),
                cooldown: FIRST_COOLDOWN
            })
        );
        for _ in 0..4 {
            assert_eq!(lease(&pool, now).client.key_fingerprint(), Some("k1"));
        }
        // After its rest the key is used again.
        let later = now + FIRST_COOLDOWN;
        let used: Vec<_> = (0..2)
            .map(|_| {
                lease(&pool, later)
                    .client
                    .key_fingerprint()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        assert!(used.contains(&"k0".to_owned()), "{used:?}");
    }

    #[test]
    fn a_single_key_never_cools_down() {
        let pool = pool(1);
        let now = Instant::now();
        let k = lease(&pool, now);
        for _ in 0..10 {
            assert_eq!(pool.record(&k, KeyOutcome::AuthTransient, now), None);
        }
        assert!(matches!(pool.pick(now), Pick::Key(_)));
    }

    #[test]
    fn rejected_keys_are_quarantined_until_none_is_left() {
        let pool = pool(2);
        let now = Instant::now();
        let k0 = lease(&pool, now);
        assert_eq!(
            pool.record(&k0, KeyOutcome::Rejected, now),
            Some(KeyEvent::Quarantined { key: "k0".into() })
        );
        assert!(pool.any_usable());
        let k1 = lease(&pool, now);
        assert_eq!(k1.client.key_fingerprint(), Some("k1"));
        pool.record(&k1, KeyOutcome::Rejected, now);
        assert!(!pool.any_usable());
        assert!(matches!(pool.pick(now), Pick::NoneLeft));
    }

    #[test]
    fn auth_failures_rebuild_the_client_at_most_once_a_second() {
        let pool = pool(1);
        let now = Instant::now();
        let before = lease(&pool, now);
        pool.record(&before, KeyOutcome::AuthTransient, now);
        let after = lease(&pool, now);
        assert!(!Arc::ptr_eq(&before.client, &after.client), "rebuilt");
        pool.record(&after, KeyOutcome::AuthTransient, now);
        let again = lease(&pool, now);
        assert!(
            Arc::ptr_eq(&after.client, &again.client),
            "not twice within a second"
        );
    }

    #[test]
    fn reads_keys_files_with_labels_comments_and_warnings() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys");
        fs::write(
            &path,
            "# team keys\nprimary=sk-proj-aaaaaaaaaaaaaaaa1111\n\nsk-proj-bbbbbbbbbbbbbbbb2222\n",
        )
        .expect("write");
        let keys = read_keys_file(&path).expect("reads");
        let names: Vec<&str> = keys.iter().map(ApiKey::fingerprint).collect();
        assert_eq!(names, ["primary", "sk-proj-…2222"]);
        fs::write(&path, "# nothing\n").expect("write");
        assert!(
            read_keys_file(&path)
                .expect_err("empty")
                .to_string()
                .contains("no keys")
        );
        fs::write(&path, "a=sk-1111111111111\na=sk-2222222222222\n").expect("write");
        let err = read_keys_file(&path).expect_err("dup").to_string();
        assert!(err.contains(":2: label 'a' is already used"), "{err}");
    }

    /// A key containing `=` is one key, never `LABEL=KEY`: its left side would be journaled as
    /// a label with every attempt.
    #[rstest::rstest]
    #[case::unlabelled_key_with_equals("sk-proj-abc=def0123456789XYZW", "sk-proj-…XYZW")]
    #[case::plain_key_with_equals("sk-abcdefgh=ijklmnopWXYZ", "sk-…WXYZ")]
    #[case::base64_token_not_a_label("dG9r+ZW4/abc=defgh1111", "…1111")]
    #[case::simple_label("team-a.1=sk-proj-aaaaaaaaaaaa1111", "team-a.1")]
    fn labels_are_simple_names_and_never_keys(#[case] line: &str, #[case] journaled: &str) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys");
        fs::write(&path, format!("{line}\n")).expect("write");
        let keys = read_keys_file(&path).expect("reads");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].fingerprint(), journaled);
    }

    #[test]
    fn cooldowns_double_to_a_cap() {
        assert_eq!(slot_cooldown(0), FIRST_COOLDOWN);
        assert_eq!(slot_cooldown(1), FIRST_COOLDOWN * 2);
        assert_eq!(slot_cooldown(20), MAX_COOLDOWN);
    }

    #[test]
    fn a_key_that_keeps_flapping_rests_longer_each_time() {
        let pool = pool(2);
        let mut now = Instant::now();
        let mut rests = Vec::new();
        for _ in 0..3 {
            let k0 = loop {
                let lease = lease(&pool, now);
                if lease.client.key_fingerprint() == Some("k0") {
                    break lease;
                }
            };
            let event = (0..COOL_AFTER)
                .filter_map(|_| pool.record(&k0, KeyOutcome::AuthTransient, now))
                .next();
            let Some(KeyEvent::CoolingDown { cooldown, .. }) = event else {
                panic!("no cool-down: {event:?}");
            };
            rests.push(cooldown.as_secs());
            now += cooldown;
        }
        assert_eq!(rests, [2, 4, 8]);
    }
}
