//! One runner per job: a lease in the job's row (`jobs.lease_owner`, `jobs.lease_expires_at`).
//!
//! `submit` and `resume` take the lease with [`acquire`] in the same transaction that reads the
//! job, through a compare-and-swap `UPDATE`, so of two runners started together exactly one gets
//! it and the other is refused with [`LeaseError::Held`]. The holder renews it every
//! [`RENEW_EVERY`] from a [`LeaseKeeper`] task and clears it when it ends. A runner that dies
//! (`kill -9`, a panic, a power cut) stops renewing, and its lease is free again:
//!
//! - for anyone, [`LEASE_DURATION`] after its last renewal, unless the holder is known to be
//!   alive: a holder on this host, in this pid namespace, whose process exists keeps its lease
//!   even past its expiry (a wall-clock jump, a suspended process: taking it would let two
//!   runners send the same requests; stop that runner, or resume it with `kill -CONT`);
//! - at once, for a runner on the same host, when the holder's process is gone: no
//!   `/proc/PID` (or a zombie there), in the same pid namespace. The owner text records the
//!   namespace, so a runner in another container that shares the hostname is never taken for
//!   dead.
//!
//! Every acquisition increments the job's `lease_epoch`, the fencing token: the store checks it
//! in the transaction of every write the runner makes for the job (see [`super::Fence`]), so a
//! runner that lost its lease while it was not looking writes nothing more.
//!
//! A pid reused by an unrelated process after the runner died looks alive, and the lease then
//! waits for its expiry: erring that way costs at most [`LEASE_DURATION`], erring the other way
//! would let two runners send the same requests.
//!
//! Read-only commands (`status`, `export`, `jobs`) never take the lease.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::db::Job;
use crate::domain::JobId;

mod keeper;

pub use keeper::{LeaseKeeper, OnLost};

/// How long a lease lasts after its last renewal. Long enough that a runner stalled by a loaded
/// machine or a slow disk (several renewals in a row late) keeps its job; short enough that a
/// job whose runner died on another host can be resumed after half a minute.
pub const LEASE_DURATION: Duration = Duration::from_secs(30);

/// How often the holder renews its lease: six renewals per [`LEASE_DURATION`], so five can be
/// missed before the lease lapses.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Who holds a lease: one run of one runner process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseOwner {
    /// The process id.
    pub pid: u32,
    /// The host name.
    pub host: String,
    /// The inode of the process's pid namespace (`/proc/self/ns/pid`); `None` when unknown, and
    /// then the holder is never presumed dead before its lease expires.
    pub pid_namespace: Option<u64>,
    /// Random per run: two runs in one process (tests, library use) are two owners.
    pub run: String,
}

impl LeaseOwner {
    /// This process, with a fresh run id.
    pub fn current() -> LeaseOwner {
        LeaseOwner {
            pid: std::process::id(),
            host: hostname(),
            pid_namespace: pid_namespace(),
            run: format!("{:08x}", fastrand::u32(..)),
        }
    }
}

impl fmt::Display for LeaseOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} on host {} (pidns ", self.pid, self.host)?;
        match self.pid_namespace {
            Some(ns) => write!(f, "{ns}")?,
            None => f.write_str("?")?,
        }
        write!(f, ", run {})", self.run)
    }
}

/// Owner text not in the format [`LeaseOwner`] writes.
#[derive(Debug, thiserror::Error)]
#[error("lease owner '{0}' is not in the form 'pid N on host H (pidns N, run R)'")]
pub struct BadOwner(String);

impl FromStr for LeaseOwner {
    type Err = BadOwner;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadOwner(s.to_owned());
        let rest = s.strip_prefix("pid ").ok_or_else(bad)?;
        let (pid, rest) = rest.split_once(" on host ").ok_or_else(bad)?;
        let (host, rest) = rest.split_once(" (pidns ").ok_or_else(bad)?;
        let rest = rest.strip_suffix(')').ok_or_else(bad)?;
        let (namespace, run) = rest.split_once(", run ").ok_or_else(bad)?;
        Ok(LeaseOwner {
            pid: pid.parse().map_err(|_| bad())?,
            host: host.to_owned(),
            pid_namespace: match namespace {
                "?" => None,
                ns => Some(ns.parse().map_err(|_| bad())?),
            },
            run: run.to_owned(),
        })
    }
}

/// Why a runner may not (or may no longer) run a job.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another live runner holds the job.
    #[error(
        "job '{job}' is already running in {holder}: a second runner would send its requests twice; wait for that runner to end or stop it{}; `runner status --job {job}` shows its progress",
        stop_hint(holder)
    )]
    Held {
        /// The job.
        job: String,
        /// The holder, as stored.
        holder: String,
    },
    /// Another runner took the lease while this one held it (it had not renewed in time).
    #[error(
        "job '{job}': another runner ({holder}) took it over while this runner was not renewing its lease (was the process suspended?): this runner stopped and wrote nothing more; the other runner carries on with the job, `runner status --job {job}` shows it"
    )]
    Lost {
        /// The job.
        job: String,
        /// The new holder, as stored (empty if none).
        holder: String,
    },
}

fn stop_hint(holder: &str) -> String {
    match holder.parse::<LeaseOwner>() {
        Ok(owner) => format!(" (Ctrl-C, or `kill -INT {}` on {})", owner.pid, owner.host),
        Err(_) => String::new(),
    }
}

/// How a lease was acquired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Nobody held it (or this owner already did).
    Free,
    /// The previous holder stopped renewing and the lease expired.
    Expired {
        /// The previous holder, as stored.
        previous: String,
    },
    /// The previous holder's process is gone (same host): taken over before expiry.
    HolderGone {
        /// The previous holder, as stored.
        previous: String,
    },
}

/// What is known of a lease holder's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// On this host and in this pid namespace, and its process exists: its lease is never
    /// taken, even past its expiry.
    Alive,
    /// On this host and in this pid namespace, and its process is gone: taken at once.
    Gone,
    /// Elsewhere (another host or container), or not knowable: taken once its lease expires.
    Unknown,
}

/// A lease just taken: how, and the fencing epoch every later write of this run must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    /// How the lease was acquired.
    pub acquired: Acquired,
    /// The job's `lease_epoch` after this acquisition.
    pub epoch: i64,
}

/// Takes the job's lease for `me` until `now` + [`LEASE_DURATION`], unless a live runner holds it.
///
/// # Errors
/// [`LeaseError::Held`] (as [`StoreError::Lease`]); database errors.
pub fn acquire(
    conn: &Connection,
    job: &Job,
    me: &LeaseOwner,
    now: i64,
) -> Result<Taken, StoreError> {
    acquire_with(conn, job, me, now, |holder| liveness(holder, me))
}

/// [`acquire`] with the liveness check passed in (tests).
///
/// # Errors
/// As [`acquire`].
pub fn acquire_with(
    conn: &Connection,
    job: &Job,
    me: &LeaseOwner,
    now: i64,
    liveness: impl Fn(&LeaseOwner) -> Liveness,
) -> Result<Taken, StoreError> {
    let mine = me.to_string();
    let held = |holder: String| -> StoreError {
        LeaseError::Held {
            job: job.name.clone(),
            holder,
        }
        .into()
    };
    let (acquired, replaceable) = match holder(conn, job.id)? {
        None => (Acquired::Free, None),
        Some((owner, _)) if owner == mine => (Acquired::Free, None),
        Some((owner, expires_at)) => {
            let state = owner
                .parse::<LeaseOwner>()
                .map_or(Liveness::Unknown, |holder| liveness(&holder));
            match state {
                Liveness::Gone => (
                    Acquired::HolderGone {
                        previous: owner.clone(),
                    },
                    Some(owner),
                ),
                Liveness::Unknown if expires_at <= now => (
                    Acquired::Expired {
                        previous: owner.clone(),
                    },
                    Some(owner),
                ),
                Liveness::Unknown | Liveness::Alive => return Err(held(owner)),
            }
        }
    };
    // Compare-and-swap: takes the lease only if it is still as read above (free, ours, or held
    // by the owner judged replaceable), so it stays correct outside a transaction too.
    let until = now + LEASE_DURATION.as_millis() as i64;
    let epoch: Option<i64> = conn
        .query_row(
            "UPDATE jobs SET lease_owner = ?2, lease_expires_at = ?3, lease_epoch = lease_epoch + 1
             WHERE id = ?1 AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_owner = ?4)
             RETURNING lease_epoch",
            params![job.id.0, mine, until, replaceable],
            |r| r.get(0),
        )
        .optional()?;
    match epoch {
        Some(epoch) => Ok(Taken { acquired, epoch }),
        None => Err(held(
            holder(conn, job.id)?
                .map(|(owner, _)| owner)
                .unwrap_or_default(),
        )),
    }
}

/// What a renewal found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, good for another [`LEASE_DURATION`].
    Renewed,
    /// Someone else holds it now (their owner text; empty if the lease was cleared).
    Lost(String),
}

/// Extends `me`'s lease to `now` + [`LEASE_DURATION`]. Works after an expiry as long as nobody
/// else took the lease meanwhile (a suspended laptop that wakes up keeps its job).
///
/// # Errors
/// Database errors.
pub fn renew(
    conn: &Connection,
    job: JobId,
    me: &LeaseOwner,
    now: i64,
) -> Result<Renewal, StoreError> {
    let until = now + LEASE_DURATION.as_millis() as i64;
    let renewed = conn
        .prepare_cached("UPDATE jobs SET lease_expires_at = ?3 WHERE id = ?1 AND lease_owner = ?2")?
        .execute(params![job.0, me.to_string(), until])?;
    if renewed == 1 {
        return Ok(Renewal::Renewed);
    }
    Ok(Renewal::Lost(
        holder(conn, job)?
            .map(|(owner, _)| owner)
            .unwrap_or_default(),
    ))
}

/// Clears `me`'s lease; does nothing if someone else holds it.
///
/// # Errors
/// Database errors.
pub fn release(conn: &Connection, job: JobId, me: &LeaseOwner) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL
         WHERE id = ?1 AND lease_owner = ?2",
        params![job.0, me.to_string()],
    )?;
    Ok(())
}

/// The job's lease holder and expiry (unix ms), if any runner holds it (or held it and died).
///
/// # Errors
/// Database errors.
pub fn holder(conn: &Connection, job: JobId) -> Result<Option<(String, i64)>, StoreError> {
    let row: Option<(Option<String>, Option<i64>)> = conn
        .query_row(
            "SELECT lease_owner, lease_expires_at FROM jobs WHERE id = ?1",
            [job.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((Some(owner), expires_at)) => Some((owner, expires_at.unwrap_or(0))),
        _ => None,
    })
}

/// What is known of `holder`'s process, seen from `me`: [`Liveness::Gone`] only when it is
/// certainly dead (this host, this pid namespace, not this process, no live process under its
/// pid); [`Liveness::Alive`] when it certainly runs here (this process counts: another run in
/// it may hold the job); any doubt is [`Liveness::Unknown`].
pub fn liveness(holder: &LeaseOwner, me: &LeaseOwner) -> Liveness {
    let here = holder.host == me.host
        && holder.pid_namespace.is_some()
        && holder.pid_namespace == me.pid_namespace;
    if !here {
        Liveness::Unknown
    } else if holder.pid == me.pid || process_alive(holder.pid) {
        Liveness::Alive
    } else {
        Liveness::Gone
    }
}

/// Whether `holder` is certainly dead (see [`liveness`]).
pub fn holder_is_gone(holder: &LeaseOwner, me: &LeaseOwner) -> bool {
    liveness(holder, me) == Liveness::Gone
}

/// Whether a process with this pid exists and is not a zombie (a killed runner whose parent has
/// not reaped it yet is a zombie: dead, but still listed in `/proc`).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain anything.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| !matches!(state, 'Z' | 'X')),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => true,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The pid namespace's inode, from `/proc/self/ns/pid` (`pid:[4026531836]`). `None` without
/// procfs, which also disables the takeover of dead holders (it needs `/proc`).
fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{db, migrate};

    /// An in-memory, migrated database holding one job (shared with the keeper's tests).
    pub(crate) fn conn_with_job() -> (Connection, Job) {
        let mut conn = Connection::open_in_memory().expect("memory db");
        migrate::migrate(&mut conn).expect("migrate");
        let job = db::upsert_job(&conn, "j", "in.jsonl", "{}", 1).expect("job");
        (conn, job)
    }

    /// A lease owner on host `h` in one pid namespace.
    pub(crate) fn owner(pid: u32, run: &str) -> LeaseOwner {
        LeaseOwner {
            pid,
            host: "h".into(),
            pid_namespace: Some(4_026_531_836),
            run: run.into(),
        }
    }

    /// A holder check that finds every holder alive on this host.
    pub(crate) const ALIVE: fn(&LeaseOwner) -> Liveness = |_| Liveness::Alive;
    /// A holder check that finds every holder on another host (alive or not: unknowable).
    pub(crate) const ELSEWHERE: fn(&LeaseOwner) -> Liveness = |_| Liveness::Unknown;
    const DEAD: fn(&LeaseOwner) -> Liveness = |_| Liveness::Gone;

    fn how(taken: Result<Taken, StoreError>) -> Acquired {
        taken.expect("acquired").acquired
    }

    #[test]
    fn owner_text_round_trips_and_garbage_does_not_parse() {
        let me = LeaseOwner::current();
        assert_eq!(me.to_string().parse::<LeaseOwner>().expect("parses"), me);
        let text = "pid 12 on host box-1 (pidns ?, run ab)";
        let parsed: LeaseOwner = text.parse().expect("parses");
        assert_eq!(parsed.pid_namespace, None);
        assert_eq!(parsed.to_string(), text);
        for garbage in ["", "pid x on host h (pidns 1, run r)", "someone else"] {
            assert!(garbage.parse::<LeaseOwner>().is_err(), "{garbage}");
        }
    }

    #[test]
    fn a_holder_elsewhere_keeps_the_job_until_its_lease_expires() {
        let (conn, job) = conn_with_job();
        let (a, b) = (owner(1, "a"), owner(2, "b"));
        assert_eq!(
            how(acquire_with(&conn, &job, &a, 1_000, ELSEWHERE)),
            Acquired::Free
        );
        let err = acquire_with(&conn, &job, &b, 2_000, ELSEWHERE).expect_err("held");
        let message = err.to_string();
        assert!(
            message.starts_with("job 'j' is already running in pid 1 on host h"),
            "{message}"
        );
        assert!(message.contains("`kill -INT 1` on h"), "{message}");
        // The holder may take it again (a retry of its own acquire).
        assert_eq!(
            how(acquire_with(&conn, &job, &a, 2_000, ELSEWHERE)),
            Acquired::Free
        );
        let expiry = 2_000 + LEASE_DURATION.as_millis() as i64;
        assert!(acquire_with(&conn, &job, &b, expiry - 1, ELSEWHERE).is_err());
        assert_eq!(
            how(acquire_with(&conn, &job, &b, expiry, ELSEWHERE)),
            Acquired::Expired {
                previous: a.to_string()
            }
        );
        assert_eq!(
            holder(&conn, job.id).expect("query").expect("held").0,
            b.to_string()
        );
    }

    #[test]
    fn a_holder_alive_on_this_host_is_never_taken_even_past_its_expiry() {
        let (conn, job) = conn_with_job();
        let (a, b) = (owner(1, "a"), owner(2, "b"));
        acquire_with(&conn, &job, &a, 1_000, ALIVE).expect("free");
        // A wall-clock jump (or a SIGSTOP) far past the expiry: the holder still runs here.
        let err = acquire_with(&conn, &job, &b, 1_000_000_000, ALIVE).expect_err("held");
        assert!(
            err.to_string().contains("already running in pid 1"),
            "{err}"
        );
        assert_eq!(
            holder(&conn, job.id).expect("query").expect("held").0,
            a.to_string()
        );
    }

    #[test]
    fn every_acquisition_increments_the_epoch_and_release_keeps_it() {
        let (conn, job) = conn_with_job();
        let (a, b) = (owner(1, "a"), owner(2, "b"));
        let first = acquire_with(&conn, &job, &a, 1_000, ELSEWHERE).expect("free");
        let again = acquire_with(&conn, &job, &a, 1_001, ELSEWHERE).expect("own");
        assert_eq!(again.epoch, first.epoch + 1);
        release(&conn, job.id, &a).expect("release");
        let other = acquire_with(&conn, &job, &b, 1_002, ELSEWHERE).expect("free");
        assert_eq!(other.epoch, again.epoch + 1);
    }

    #[test]
    fn a_dead_holder_is_taken_over_at_once() {
        let (conn, job) = conn_with_job();
        let (a, b) = (owner(1, "a"), owner(2, "b"));
        acquire_with(&conn, &job, &a, 1_000, ALIVE).expect("free");
        assert_eq!(
            how(acquire_with(&conn, &job, &b, 1_001, DEAD)),
            Acquired::HolderGone {
                previous: a.to_string()
            }
        );
    }

    #[test]
    fn an_unparsable_holder_waits_for_expiry() {
        let (conn, job) = conn_with_job();
        conn.execute(
            "UPDATE jobs SET lease_owner = 'a future runner', lease_expires_at = 5000",
            [],
        )
        .expect("set");
        let err = acquire_with(&conn, &job, &owner(2, "b"), 4_999, DEAD).expect_err("held");
        assert!(err.to_string().contains("a future runner"), "{err}");
        acquire_with(&conn, &job, &owner(2, "b"), 5_000, DEAD).expect("expired");
    }

    #[test]
    fn renew_and_release_only_touch_the_owners_lease() {
        let (conn, job) = conn_with_job();
        let (a, b) = (owner(1, "a"), owner(2, "b"));
        acquire_with(&conn, &job, &a, 1_000, ALIVE).expect("free");
        assert_eq!(
            renew(&conn, job.id, &a, 9_000).expect("renew"),
            Renewal::Renewed
        );
        assert_eq!(
            holder(&conn, job.id).expect("query"),
            Some((a.to_string(), 9_000 + LEASE_DURATION.as_millis() as i64))
        );
        assert_eq!(
            renew(&conn, job.id, &b, 9_000).expect("renew"),
            Renewal::Lost(a.to_string())
        );
        release(&conn, job.id, &b).expect("no-op");
        assert!(holder(&conn, job.id).expect("query").is_some());
        release(&conn, job.id, &a).expect("release");
        assert_eq!(holder(&conn, job.id).expect("query"), None);
        // Renewing after an expiry works while nobody else took the lease.
        acquire_with(&conn, &job, &a, 1_000, ALIVE).expect("free");
        assert_eq!(
            renew(&conn, job.id, &a, 999_999).expect("renew"),
            Renewal::Renewed
        );
    }

    #[test]
    fn liveness_needs_same_host_same_namespace_and_no_process() {
        let me = LeaseOwner::current();
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead_pid = child.id();
        child.wait().expect("reap");
        let dead = LeaseOwner {
            pid: dead_pid,
            ..me.clone()
        };
        if me.pid_namespace.is_some() {
            assert!(holder_is_gone(&dead, &me), "a reaped child is gone");
        }
        let elsewhere = LeaseOwner {
            host: format!("{}-other", me.host),
            ..dead.clone()
        };
        assert!(
            !holder_is_gone(&elsewhere, &me),
            "another host: cannot tell"
        );
        let other_namespace = LeaseOwner {
            pid_namespace: me.pid_namespace.map(|ns| ns + 1),
            ..dead.clone()
        };
        assert!(!holder_is_gone(&other_namespace, &me), "another container");
        let same_process = LeaseOwner {
            run: "other".into(),
            ..me.clone()
        };
        assert!(!holder_is_gone(&same_process, &me), "this process is alive");
        if me.pid_namespace.is_some() {
            assert_eq!(liveness(&same_process, &me), Liveness::Alive);
        }
        assert_eq!(liveness(&elsewhere, &me), Liveness::Unknown);
        assert!(process_alive(std::process::id()));
    }
}
