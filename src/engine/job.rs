//! `submit` and `resume`: open the store, ingest the input, recover what a crash left in flight,
//! run the worker pool, and record how the job ended.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::cli::{CancelArgs, ResumeArgs, RetryFailedArgs, RunArgs, SubmitArgs, UsageError};
use crate::domain::Exit;
use crate::domain::{Counts, EventKind, JobState};
use crate::engine::batch::{BatchExit, BatchRun, Mode};
use crate::engine::config::{ApiEnv, JobSettings, Via};
use crate::engine::destination;
use crate::engine::ending::Ending;
use crate::engine::feed::Feeder;
use crate::engine::keys::KeyPool;
use crate::engine::pool::{PoolExit, PoolSettings, WorkerPool};
use crate::engine::progress::{Display, Reporter, Tally};
use crate::engine::rate_limit::{Limits, RequestLimiter};
use crate::engine::shutdown::Shutdown;
use crate::engine::sizing;
use crate::engine::spend::{BatchCap, Spend};
use crate::http::client::ApiClient;
use crate::input::{self, Checked, InputReader};
use crate::store::db::{self, Job};
use crate::store::ingest::{IngestReport, direct};
use crate::store::lease::{self, Acquired, LeaseError, LeaseKeeper, LeaseOwner, OnLost, Taken};
use crate::store::{Fence, JobStore, StoreError, batches, fault, ingest, journal, model};
use crate::util::clock::now_ms;

/// Opens the store, runs `f` with it, and waits until everything `f` queued is committed.
/// Storage faults come back as a [`fault::StorageFault`] that names the database and says what
/// to do.
pub(crate) async fn with_store<T>(
    path: &Path,
    f: impl AsyncFnOnce(JobStore) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let opened = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || JobStore::open(&path)).await?
    };
    let (store, thread) = opened
        .with_context(|| format!("database {}", path.display()))
        .map_err(|e| fault::explain(path, e))?;
    let result = f(store).await.map_err(|e| fault::explain(path, e));
    thread.join().await;
    result
}

/// `runner submit`: ingest the file into its job (new lines are queued, known ones kept) and run.
///
/// # Errors
/// Bad input (nothing is written), bad settings, store failures.
pub async fn submit(args: SubmitArgs, env: &ApiEnv, shutdown: &Shutdown) -> anyhow::Result<Exit> {
    let name = match &args.job {
        Some(name) => name.clone(),
        None => job_name_for(&args.file)?,
    };
    let db_path = args.db.db.clone();
    let fresh = !db_path.exists();
    let result = with_store(&db_path, async |store| {
        let lookup = name.clone();
        let existing = store.call(move |c| db::find_job(c, &lookup)).await?;
        let mut settings = match &existing {
            Some(job) => JobSettings::from_json(&job.config)?,
            None => JobSettings::defaults(env),
        };
        if let Some(endpoint) = &args.endpoint {
            settings.endpoint.clone_from(endpoint);
        }
        let old_model = settings.model.clone();
        if let Some(model) = &args.model {
            settings.model = Some(model.clone());
        }
        settings.apply(&args.run);
        settings.apply_input(&args)?;
        settings.max_line_bytes = args.max_line_bytes;
        let destination = destination::settle(&mut settings, existing.is_some(), &args.run, env);
        settings.check(env)?;
        // A keys file that cannot be used is said before the file is read or anything written.
        settings.keys(env)?;
        destination::check_transport(&settings, env, args.run.allow_insecure_http)?;

        let options = settings.input_options();
        let open = || -> anyhow::Result<InputReader> {
            let reader = InputReader::open(&args.file, options.clone())?;
            Ok(reader.skip_invalid(args.skip_invalid))
        };
        // Only a regular file can be read twice (the check, then the feed): a pipe
        // (`/dev/stdin`, `<(zcat …)`) is read once, the staged way.
        let regular = std::fs::metadata(&args.file).is_ok_and(|m| m.is_file());
        let checking = match regular {
            true => check_if_new(&store, existing.as_ref(), open()?, shutdown).await?,
            false => Checking::Done(None),
        };
        let checked = match checking {
            Checking::Done(checked) => checked,
            Checking::Stopped => {
                crate::say!(
                    "{name}: stopped while checking {}: nothing was written",
                    args.file.display()
                );
                return Ok(Exit::Interrupted);
            }
        };
        let checked_requests = checked.as_ref().map(|c| c.requests);
        let input_path = absolute(&args.file).display().to_string();
        let me = LeaseOwner::current();
        let (job, created) = take_for_submit(&store, &name, &input_path, &settings, &me).await?;
        let publish_config = {
            let (name, config) = (name.clone(), settings.to_json());
            // The job's settings change only with its file taken: in the publish's transaction.
            move |c: &rusqlite::Connection| {
                db::upsert_job(c, &name, &input_path, &config, now_ms()).map(drop)
            }
        };
        let leased = ingest::Leased {
            job: &job,
            owner: &me,
        };
        let (report, feeder) = match take_file(&store, leased, checked, open, publish_config).await
        {
            Ok(read) => read,
            Err(e) => {
                give_back(&store, &job, created, &me).await;
                return Err(e);
            }
        };
        // Said once the file is taken (a file the staged read refuses says only why), before
        // anything is sent; kept for `status`, beside what the job turns out to cost.
        let outlook = match checked_requests.map(|requests| (requests, open())) {
            Some((requests, Ok(reader))) => {
                tell_outlook(&job.name, &args.file, reader, requests, &settings).await
            }
            // Read a moment ago and now unreadable, or a pipe read once: no line.
            Some((_, Err(_))) | None => None,
        };
        if let Some(line) = outlook {
            let (id, now) = (job.id, now_ms());
            store
                .call(move |c| db::record_event(c, id, EventKind::Estimate, Some(&line), now))
                .await?;
        }
        tell_destination(&job.name, &settings, destination);
        tell_read(&job.name, &args.file.display(), &report);
        // A new job's requests took this --model as they were read: nothing to give them.
        if existing.is_some() {
            refill_model(&store, &job, old_model.as_deref(), &settings).await?;
        }
        Invocation::new(env, &args.run, shutdown)
            .execute_feeding(&store, job, me, &settings, feeder)
            .await
    })
    .await;
    if fresh {
        remove_if_jobless(&db_path);
    }
    result
}

/// Removes a database this submit created when it holds no job: a submit refused before its
/// job was made (bad input, no key, a bad flag) leaves no empty `runner.db` behind.
fn remove_if_jobless(path: &Path) {
    let jobless = crate::store::open_read_only(path)
        .ok()
        .and_then(|c| {
            c.query_row("SELECT NOT EXISTS (SELECT 1 FROM jobs)", [], |r| r.get(0))
                .ok()
        })
        .unwrap_or(false);
    if !jobless {
        return;
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        // Gone already, or never made: nothing to do either way.
        let _ = std::fs::remove_file(file);
    }
}

/// Reads the file into the job whose lease the submit holds, with `publish` (the job's
/// settings) in the transaction that first makes any of it visible. A checked file that may go
/// straight into the job has its first chunk in when this returns, and the [`Feeder`] that
/// reads the rest while the job runs; any other file is read whole the staged way.
///
/// # Errors
/// Bad input, store errors; nothing of the file is in the job then.
async fn take_file(
    store: &JobStore,
    leased: ingest::Leased<'_>,
    checked: Option<Checked>,
    open: impl Fn() -> anyhow::Result<InputReader>,
    publish: impl FnOnce(&rusqlite::Connection) -> Result<(), StoreError> + Send + 'static,
) -> anyhow::Result<(IngestReport, Option<Feeder>)> {
    let id = leased.job.id;
    let direct = match checked {
        Some(checked) if checked.direct => store
            .call(move |c| direct::takes_direct(c, id))
            .await?
            .then_some(checked),
        Some(_) | None => None,
    };
    let Some(checked) = direct else {
        let report = ingest::ingest_leased(store, leased, open()?, publish).await?;
        return Ok((report, None));
    };
    let mut feeder = Feeder::start(id, open()?, &checked);
    let all_in = feeder.first_chunk(store, publish).await?;
    let report = IngestReport {
        read: checked.requests,
        added: checked.requests,
        ..IngestReport::default()
    };
    Ok((report, (!all_in).then_some(feeder)))
}

/// How the check of a new job's file ended.
enum Checking {
    /// What it found; `None` for a job with requests, whose file is not checked first.
    Done(Option<Checked>),
    /// A signal came first.
    Stopped,
}

/// Checks the whole file first when the job is new or has no request yet: such a job may take
/// it without staging, while its first requests go out (see [`crate::store::ingest::direct`]).
/// A job with requests has its file read the staged way (known lines kept), not checked first.
///
/// # Errors
/// The file's first error; store errors.
async fn check_if_new(
    store: &JobStore,
    existing: Option<&Job>,
    reader: InputReader,
    shutdown: &Shutdown,
) -> anyhow::Result<Checking> {
    if let Some(job) = existing {
        let id = job.id;
        if !store.call(move |c| direct::takes_direct(c, id)).await? {
            return Ok(Checking::Done(None));
        }
    }
    let stop = shutdown.stop_token();
    let checked = tokio::task::spawn_blocking(move || input::check(reader, &stop))
        .await
        .context("the thread checking the input file failed")??;
    Ok(checked.map_or(Checking::Stopped, |c| Checking::Done(Some(c))))
}

/// Finds or creates the job and takes its lease, in one short transaction, and fences every
/// later write of this run with it. Returns the job and whether this submit created it.
async fn take_for_submit(
    store: &JobStore,
    name: &str,
    input_path: &str,
    settings: &JobSettings,
    me: &LeaseOwner,
) -> anyhow::Result<(Job, bool)> {
    let (name, input_path, config) = (name.to_owned(), input_path.to_owned(), settings.to_json());
    let (owner, now) = (me.clone(), now_ms());
    let (job, created, taken) = store
        .call(move |c| {
            db::atomically(c, |c| {
                let (job, created) = db::find_or_create_job(c, &name, &input_path, &config, now)?;
                // Before the ingest: a running job's requests are not touched.
                let taken = lease::acquire(c, &job, &owner, now)?;
                Ok((job, created, taken))
            })
        })
        .await?;
    fence(store, &job, &taken).await?;
    Ok((job, created))
}

/// After a refused ingest, leaves the job as it was: a job this submit created is deleted, an
/// existing one gets its lease back. Best effort: a lease left behind lapses by itself.
async fn give_back(store: &JobStore, job: &Job, created: bool, me: &LeaseOwner) {
    let (id, me) = (job.id, me.clone());
    let undone = store
        .call(move |c| match created {
            true => db::delete_empty_job(c, id).map(drop),
            false => lease::release(c, id, &me),
        })
        .await;
    if let Err(e) = undone {
        tracing::warn!(error = %e, "cannot give the job back after the refused ingest");
    }
}

/// `runner resume`: continue a job from its journal; flags override its stored settings.
///
/// # Errors
/// Unknown job, bad settings, store failures.
pub async fn resume(args: ResumeArgs, env: &ApiEnv, shutdown: &Shutdown) -> anyhow::Result<Exit> {
    with_store(&args.db.db, async |store| {
        let (job, me, mut settings) = take_job(&store, args.job.clone(), &args.run, env).await?;
        let old_model = settings.model.clone();
        if let Some(model) = &args.model {
            settings.model = Some(model.clone());
        }
        let config = settings.to_json();
        if config != job.config {
            let (id, now) = (job.id, now_ms());
            store
                .call(move |c| db::update_job_config(c, id, &config, now))
                .await?;
        }
        refill_model(&store, &job, old_model.as_deref(), &settings).await?;
        Invocation::new(env, &args.run, shutdown)
            .execute(&store, job, me, &settings)
            .await
    })
    .await
}

/// Gives the job's `--model` to its pending requests whose model came from the job's previous
/// one, `old`, or that have none (see [`crate::store::model`]), and says how many.
///
/// # Errors
/// Store errors.
async fn refill_model(
    store: &JobStore,
    job: &Job,
    old: Option<&str>,
    settings: &JobSettings,
) -> anyhow::Result<()> {
    let Some(model) = settings.model.clone() else {
        return Ok(());
    };
    if old == Some(model.as_str()) {
        return Ok(());
    }
    let filled = match settings.input.own_content_keys {
        true => model::Filled::ByHash,
        false => model::Filled::ByName,
    };
    let (id, from) = (job.id, old.map(str::to_owned));
    let changed = {
        let model = model.clone();
        store
            .call(move |c| model::refill(c, id, from.as_deref(), &model, filled))
            .await?
    };
    if changed > 0 {
        let from = match old {
            Some(old) => format!("had {old} from --model"),
            None => "named no model".to_owned(),
        };
        crate::say!(
            "{}: {changed} requests still to send {from}: they are sent with {model} (no request is added)",
            job.name
        );
    }
    Ok(())
}

/// Finds the job (`name`, or the most recent), takes its lease, and checks its stored settings
/// with `run`'s overrides applied. The lease comes first: nothing may change a job that another
/// runner is working on.
async fn take_job(
    store: &JobStore,
    name: Option<String>,
    run: &RunArgs,
    env: &ApiEnv,
) -> anyhow::Result<(Job, LeaseOwner, JobSettings)> {
    let me = LeaseOwner::current();
    let owner = me.clone();
    let (job, taken) = store
        .call(move |c| {
            let job = db::resolve_job(c, name.as_deref())?;
            let taken = lease::acquire(c, &job, &owner, now_ms())?;
            Ok((job, taken))
        })
        .await?;
    fence(store, &job, &taken).await?;
    let discarded = ingest::discard_unfinished(store, job.id).await?;
    if discarded > 0 {
        crate::say!(
            "{}: discarded {discarded} lines of a submit that stopped while reading its file: `runner submit` reads it again",
            job.name
        );
    }
    let mut settings = JobSettings::from_json(&job.config)?;
    settings.apply(run);
    let destination = destination::settle(&mut settings, true, run, env);
    settings.check(env)?;
    settings.keys(env)?;
    destination::check_transport(&settings, env, run.allow_insecure_http)?;
    tell_destination(&job.name, &settings, destination);
    if job.reading_input {
        read_the_rest(store, &job, &me, &settings).await?;
    }
    Ok((job, me, settings))
}

/// Reads the file of a job whose last run stopped while reading it (see
/// [`crate::store::ingest::direct`]), the staged way: the requests already in the job are kept,
/// the rest are added, before anything is sent.
///
/// # Errors
/// The file's errors (it may have changed or gone since), store errors.
async fn read_the_rest(
    store: &JobStore,
    job: &Job,
    me: &LeaseOwner,
    settings: &JobSettings,
) -> anyhow::Result<()> {
    crate::say!(
        "{}: the last run stopped before it had read the whole of {}: reading it again (the requests already in the job are kept)",
        job.name,
        job.input_path
    );
    let path = Path::new(&job.input_path);
    let hint = || {
        format!(
            "{}: cannot read the rest of its file: `runner submit {} --job {}` reads it from another path",
            job.name, job.input_path, job.name
        )
    };
    let reader = InputReader::open(path, settings.input_options()).with_context(hint)?;
    let leased = ingest::Leased { job, owner: me };
    let report = ingest::ingest_leased(store, leased, reader, |_| Ok(()))
        .await
        .with_context(hint)?;
    tell_read(&job.name, &job.input_path, &report);
    Ok(())
}

/// Says what a new file's requests will cost (see [`super::outlook`]), and returns it.
async fn tell_outlook(
    job: &str,
    file: &Path,
    reader: InputReader,
    requests: u64,
    settings: &JobSettings,
) -> Option<String> {
    let (file, settings) = (file.display().to_string(), settings.clone());
    let line = tokio::task::spawn_blocking(move || {
        super::outlook::opening(&file, reader, requests, &settings)
    })
    .await
    .ok()??;
    crate::say!("{job}: {line}");
    Some(line)
}

/// Says on stderr what reading `file` into the job found.
fn tell_read(job: &str, file: &dyn std::fmt::Display, report: &IngestReport) {
    crate::say!(
        "{job}: read {} requests from {file}: {} new, {} already in the job",
        report.read,
        report.added,
        report.known
    );
    if report.invalid > 0 {
        crate::say!(
            "{job}: {} invalid lines recorded as failed requests (--skip-invalid): `runner export --job {job}` shows why",
            report.invalid
        );
    }
}

/// Says on stderr which host the job sends to and why, and when the environment replaced the
/// stored base URL.
fn tell_destination(
    job: &str,
    settings: &JobSettings,
    (source, note): (destination::Source, Option<String>),
) {
    if let Some(note) = note {
        crate::say!("{job}: {note}");
    }
    crate::say!(
        "{job}: sending to {} ({}: {})",
        destination::host_of(&settings.base_url),
        source.describe(),
        settings.base_url
    );
}

/// `runner retry-failed`: requeue failed requests (all, or one class) with fresh budgets and run.
///
/// # Errors
/// Unknown job, bad settings, store failures.
pub async fn retry_failed(
    args: RetryFailedArgs,
    env: &ApiEnv,
    shutdown: &Shutdown,
) -> anyhow::Result<Exit> {
    with_store(&args.db.db, async |store| {
        let (job, me, settings) = take_job(&store, args.job.clone(), &args.run, env).await?;
        let (id, class, config, now) = (job.id, args.class, settings.to_json(), now_ms());
        let requeued = store
            .call(move |c| {
                db::update_job_config(c, id, &config, now)?;
                db::requeue_failed(c, id, class)
            })
            .await?;
        crate::say!(
            "{}: requeued {requeued} failed requests{}",
            job.name,
            class.map(|c| format!(" of class {c}")).unwrap_or_default()
        );
        Invocation::new(env, &args.run, shutdown)
            .execute(&store, job, me, &settings)
            .await
    })
    .await
}

/// `runner cancel`: cancels the job's batches on the server, waits for them to end, journals
/// what they finished and puts the rest back to pending (`runner resume` sends it).
///
/// # Errors
/// Unknown job, bad settings, store failures.
pub async fn cancel(args: CancelArgs, env: &ApiEnv, shutdown: &Shutdown) -> anyhow::Result<Exit> {
    with_store(&args.db.db, async |store| {
        let run = args.run_args();
        let (job, me, settings) = take_job(&store, args.job.clone(), &run, env).await?;
        Invocation::new(env, &run, shutdown)
            .for_purpose(Purpose::Cancel)
            .execute(&store, job, me, &settings)
            .await
    })
    .await
}

/// Fences every later write of this run with the lease just taken, and says so when the lease
/// was taken from a runner that is gone.
async fn fence(store: &JobStore, job: &Job, taken: &Taken) -> Result<(), StoreError> {
    report_takeover(&job.name, &taken.acquired);
    store
        .fence(Fence {
            job: job.id,
            name: job.name.clone(),
            epoch: taken.epoch,
        })
        .await
}

/// The lease this runner lost to another runner, if that is what ended the run.
fn lost_lease(e: &anyhow::Error) -> Option<&LeaseError> {
    e.chain()
        .find_map(|cause| match cause.downcast_ref::<StoreError>() {
            Some(StoreError::Lease(lost @ LeaseError::Lost { .. })) => Some(lost),
            _ => None,
        })
}

/// Says so when the job's lease was taken from a runner that is gone.
fn report_takeover(job: &str, acquired: &Acquired) {
    match acquired {
        Acquired::Free => {}
        Acquired::Expired { previous } => {
            crate::say!(
                "{job}: took over the job from {previous}, which stopped renewing its lease"
            )
        }
        Acquired::HolderGone { previous } => {
            crate::say!("{job}: took over the job from {previous}, which is no longer running")
        }
    }
}

/// What a run of a job is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// Send its pending requests (`submit`, `resume`, `retry-failed`).
    Send,
    /// Cancel its batches and journal what they finished (`cancel`).
    Cancel,
}

/// What a `submit`, `resume`, `retry-failed` or `cancel` was invoked with, beyond the job itself.
struct Invocation<'a> {
    env: &'a ApiEnv,
    run: &'a RunArgs,
    shutdown: &'a Shutdown,
    purpose: Purpose,
}

impl<'a> Invocation<'a> {
    fn new(env: &'a ApiEnv, run: &'a RunArgs, shutdown: &'a Shutdown) -> Self {
        Invocation {
            env,
            run,
            shutdown,
            purpose: Purpose::Send,
        }
    }

    fn for_purpose(self, purpose: Purpose) -> Self {
        Invocation { purpose, ..self }
    }

    /// Runs the job whose lease `me` holds, with these settings, to its end.
    async fn execute(
        &self,
        store: &JobStore,
        job: Job,
        me: LeaseOwner,
        settings: &JobSettings,
    ) -> anyhow::Result<Exit> {
        self.execute_feeding(store, job, me, settings, None).await
    }

    /// [`Invocation::execute`] while `feeder` reads the rest of the job's file into it.
    async fn execute_feeding(
        &self,
        store: &JobStore,
        job: Job,
        me: LeaseOwner,
        settings: &JobSettings,
        feeder: Option<Feeder>,
    ) -> anyhow::Result<Exit> {
        JobRun {
            store,
            job,
            me,
            settings,
            env: self.env,
            run: self.run,
            shutdown: self.shutdown,
            purpose: self.purpose,
            feeder,
        }
        .execute_leased()
        .await
    }
}

/// One run of a job: everything the steps after taking the lease share.
pub(crate) struct JobRun<'a> {
    /// The store's handle.
    pub(crate) store: &'a JobStore,
    /// The job, as it was when the lease was taken.
    pub(crate) job: Job,
    /// This runner, holding the job's lease.
    pub(crate) me: LeaseOwner,
    /// The checked settings of this run.
    pub(crate) settings: &'a JobSettings,
    /// The `OPENAI_*` environment.
    pub(crate) env: &'a ApiEnv,
    /// The run flags (grace period, progress display).
    pub(crate) run: &'a RunArgs,
    /// Signals.
    pub(crate) shutdown: &'a Shutdown,
    /// Send, or cancel.
    purpose: Purpose,
    /// The rest of a new job's file, still to be read into it.
    feeder: Option<Feeder>,
}

impl JobRun<'_> {
    /// [`JobRun::execute`] while keeping the job's lease renewed; releases it at the end.
    ///
    /// A run that lost the job to another runner (its lease lapsed while it was suspended, and
    /// the fence then refused its writes) has changed nothing since: it tells so on stderr and
    /// ends with [`Exit::Stopped`] (exit 4), a job-level condition, not a fault: the other
    /// runner carries on with the job.
    async fn execute_leased(mut self) -> anyhow::Result<Exit> {
        let feeder = self.feeder.take();
        let keeper = LeaseKeeper::start(
            self.store,
            &self.job,
            self.me.clone(),
            &OnLost {
                stop: self.shutdown.stop_token(),
                abort: self.shutdown.abort_token(),
            },
        );
        let result = self.execute(feeder).await;
        let finished = keeper.finish().await.map_err(anyhow::Error::from);
        let lost = match (&result, &finished) {
            (Err(e), _) | (Ok(_), Err(e)) => lost_lease(e),
            (Ok(_), Ok(())) => None,
        };
        if let Some(lost) = lost {
            crate::say!("runner: {lost}");
            return Ok(Exit::Stopped);
        }
        match (result, finished) {
            (Err(e), _) => Err(e),
            (Ok(exit), Err(e)) => {
                tracing::warn!(error = %e, "cannot release the job's lease: it lapses by itself");
                Ok(exit)
            }
            (Ok(exit), Ok(())) => Ok(exit),
        }
    }

    /// Runs the job's pending requests to the end, a job-level stop or a shutdown.
    async fn execute(&self, feeder: Option<Feeder>) -> anyhow::Result<Exit> {
        let counts = self.recover().await?;
        let total = feeder
            .as_ref()
            .map_or(counts.total, |f| counts.total.max(f.requests()));
        if matches!(self.settings.keys(self.env), Ok(keys) if keys.is_empty()) {
            tracing::warn!(
                "no API key (OPENAI_API_KEY, AZURE_OPENAI_API_KEY with --auth azure, or --keys-file): sending requests without one"
            );
        }
        let tally = Arc::new(Tally::from_counts(&counts));
        let reporter = Reporter::start(
            &self.job.name,
            total,
            Arc::clone(&tally),
            Display::choose(self.run.no_progress),
        );
        let exit = match self.send(tally, feeder).await {
            Ok(exit) => exit,
            Err(e) => {
                reporter.finish("failed").await;
                return Err(e).context(
                    "the job stopped on a database error; it is resumable once that is fixed",
                );
            }
        };
        let (id, now, purpose) = (self.job.id, now_ms(), self.purpose);
        // Counted and set in one transaction: `completed` only when nothing is left to send.
        let (ending, counts, reading) = self
            .store
            .call(move |c| {
                let counts = db::counts(c, id)?;
                let ending = match purpose {
                    Purpose::Cancel => Ending::of_cancel(&exit, &counts),
                    Purpose::Send => Ending::of(&exit, &counts),
                };
                db::set_job_state(c, id, ending.state, ending.reason.as_deref(), now)?;
                Ok((ending, counts, direct::is_reading(c, id)?))
            })
            .await?;
        reporter.finish(ending.label).await;
        ending.tell(&self.job.name, &counts);
        if reading {
            let job = &self.job.name;
            crate::say!(
                "{job}: {} is not read to its end yet: `runner resume --job {job}` reads the rest first",
                self.job.input_path
            );
        }
        Ok(ending.exit)
    }

    /// Sends the job's requests the way its settings say, or cancels its batches.
    ///
    /// A sync run of a job that has batches open (`resume --via sync` of a batch job) first
    /// cancels them, waits for them to end and journals what they finished: nothing is paid for
    /// twice.
    async fn send(&self, tally: Arc<Tally>, feeder: Option<Feeder>) -> anyhow::Result<PoolExit> {
        let id = self.job.id;
        let open = self
            .store
            .call(move |c| batches::open_chunks(c, id))
            .await?
            .len();
        match (self.purpose, self.settings.batch.via) {
            (Purpose::Cancel, _) => {
                if open == 0 {
                    crate::say!("{}: the job has no batch open on the server", self.job.name);
                }
                self.batches(Mode::Settle, tally).await
            }
            (Purpose::Send, via @ (Via::Batch | Via::Auto)) => {
                // Chunks are cut from what is pending: the whole file first.
                if let Some(feeder) = feeder {
                    let read = feeder.rest(self.store, &self.shutdown.stop_token()).await;
                    match PoolExit::after_reading(read) {
                        PoolExit::Drained => {}
                        cut_short => return Ok(cut_short),
                    }
                }
                match via {
                    Via::Auto => self.auto(tally).await,
                    Via::Batch | Via::Sync => self.batches(Mode::Run, tally).await,
                }
            }
            (Purpose::Send, Via::Sync) => {
                if open > 0 {
                    crate::say!(
                        "{}: --via sync: cancelling the job's {open} open batch chunks first; \
                         what their batches finished is kept",
                        self.job.name
                    );
                    match self.batches(Mode::Settle, Arc::clone(&tally)).await? {
                        PoolExit::Drained => {}
                        exit @ (PoolExit::Stopped(_)
                        | PoolExit::OverBudget(_)
                        | PoolExit::Interrupted) => return Ok(exit),
                    }
                }
                let pool = self.pool(tally).await?;
                match feeder {
                    None => Ok(pool.run(self.shutdown).await?),
                    Some(feeder) => Ok(pool.run_feeding(feeder, self.shutdown).await?),
                }
            }
        }
    }

    /// Runs (or settles) the job's batches; says what goes on running on the server when a
    /// signal ends the run.
    pub(super) async fn batches(&self, mode: Mode, tally: Arc<Tally>) -> anyhow::Result<PoolExit> {
        // Without a switch time, the batch run never switches.
        Ok(self
            .batches_until(mode, tally, None)
            .await?
            .unwrap_or(PoolExit::Drained))
    }

    /// [`Self::batches`] that stops at `switch_at` (unix ms): `None` then, with what the open
    /// batches hold still to settle.
    pub(super) async fn batches_until(
        &self,
        mode: Mode,
        tally: Arc<Tally>,
        switch_at: Option<i64>,
    ) -> anyhow::Result<Option<PoolExit>> {
        let keys = self.settings.keys(self.env)?;
        if keys.len() > 1 {
            crate::say!(
                "{}: batches are created with the first key of the keys file",
                self.job.name
            );
        }
        let mut client_settings = self.settings.client_settings(self.env);
        if !client_settings.headers.is_empty() {
            crate::say!(
                "{}: the job's --header goes with the Files and Batches calls, not into the batch's lines (the Batch API sends none)",
                self.job.name
            );
        }
        // Downloading a result file takes longer than one request.
        client_settings.timeout = client_settings.timeout.max(BATCH_CALL_TIMEOUT);
        let client = ApiClient::new(&client_settings, keys.first())?;
        let cap = match (mode, self.settings.max_cost) {
            (Mode::Run, Some(cap)) => {
                // Checks that every model has a price, and says what is spent.
                self.spend(cap).await?;
                Some(BatchCap {
                    cap,
                    table: self.settings.price_table(),
                    default_output: u64::from(self.settings.default_output_tokens),
                })
            }
            (Mode::Run | Mode::Settle, _) => None,
        };
        let exit = BatchRun {
            store: self.store,
            job: &self.job,
            client,
            policy: self.settings.retry_policy(),
            settings: self.settings.batch.clone(),
            shutdown: self.shutdown,
            tally,
            mode,
            stop_after_same_error: self.settings.stop_after_same_error,
            stop: None,
            cap,
            switch_at,
        }
        .run()
        .await?;
        let (exit, running) = match exit {
            BatchExit::Switch { .. } => return Ok(None),
            BatchExit::Drained => (PoolExit::Drained, 0),
            BatchExit::Stopped { reason, running } => (PoolExit::Stopped(reason), running),
            BatchExit::Interrupted { running } => (PoolExit::Interrupted, running),
            BatchExit::OverBudget { reason } => (PoolExit::OverBudget(reason), 0),
        };
        if running > 0 {
            let job = &self.job.name;
            crate::say!(
                "{job}: {running} batches may go on running on the server (a batch whose create \
                 was under way counts): `runner resume --job {job}` picks up their results, \
                 `runner cancel --job {job}` cancels them"
            );
        }
        Ok(Some(exit))
    }

    /// Journals what a crash left in flight as interrupted, marks the job running, and counts
    /// its requests.
    async fn recover(&self) -> anyhow::Result<Counts> {
        let (id, now) = (self.job.id, now_ms());
        let (recovered, counts) = self
            .store
            .call(move |c| {
                let recovered = db::recover_in_flight(c, id, now)?;
                db::set_job_state(c, id, JobState::Running, None, now)?;
                Ok((recovered, db::counts(c, id)?))
            })
            .await?;
        if recovered > 0 {
            crate::say!(
                "{}: {recovered} requests were in flight when the last run ended: journaled as interrupted and queued again",
                self.job.name
            );
        }
        Ok(counts)
    }

    /// The worker pool for this run's settings, paced from the first request by the limits an
    /// earlier run of the job journaled.
    pub(super) async fn pool(&self, tally: Arc<Tally>) -> anyhow::Result<WorkerPool> {
        let settings = self.settings;
        let keys = KeyPool::new(settings.keys(self.env)?, settings.client_settings(self.env))?;
        let id = self.job.id;
        let known = self
            .store
            .call(move |c| journal::last_event_detail(c, id, EventKind::Limits))
            .await?
            .map_or_else(Limits::default, |detail| Limits::parse(&detail));
        let spend = match settings.max_cost {
            Some(cap) => Some(Arc::new(self.spend(cap).await?)),
            None => None,
        };
        Ok(WorkerPool::new(
            self.job.id,
            self.store.clone(),
            keys,
            RequestLimiter::per_minute(settings.rpm()),
            PoolSettings {
                concurrency: settings.concurrency().map(NonZeroUsize::get),
                max_in_flight: sizing::max_in_flight(settings.max_in_flight),
                known_limits: known,
                rpm: settings.rpm(),
                grace: self.run.grace,
                policy: settings.retry_policy(),
                breaker: settings.breaker(),
                stop_after_same_error: settings.stop_after_same_error,
                tpm: settings.tpm(),
                default_output_tokens: u64::from(settings.default_output_tokens),
                spend,
            },
            tally,
        ))
    }

    /// The spending cap of this run: `cap` USD, with what the job's answers cost so far
    /// already spent. Every model the job's answers and pending requests name must have a
    /// price (built in, or `--price`): a cap that cannot be counted is no cap.
    ///
    /// # Errors
    /// [`UsageError`] naming a model without a price; store errors.
    async fn spend(&self, cap: f64) -> anyhow::Result<Spend> {
        let table = self.settings.price_table();
        let id = self.job.id;
        let (answered, pending) = self
            .store
            .call(move |c| Ok((journal::tokens_by_model(c, id)?, db::pending_models(c, id)?)))
            .await?;
        let unpriced = |model: &str| {
            UsageError(format!(
                "--max-cost needs a price for every model of the job, and {model} has none: pass \
                 --price {model}=IN,OUT (USD per 1M input and output tokens)"
            ))
        };
        let spent = super::spend::journaled(&answered, &table).map_err(|m| unpriced(&m))?;
        if let Some(model) = pending.iter().find(|m| table.lookup(m).is_none()) {
            return Err(unpriced(model).into());
        }
        let spend = Spend::new(cap, table, spent);
        if spent > 0.0 {
            crate::say!(
                "{}: {} spent so far of --max-cost {}",
                self.job.name,
                crate::domain::price::Usd(spent),
                crate::domain::price::Usd(cap)
            );
        }
        Ok(spend)
    }
}

/// Time limit of one Files or Batches call (a result file can be large).
const BATCH_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// The default job name: the input file's stem.
fn job_name_for(file: &Path) -> anyhow::Result<String> {
    file.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{}: cannot derive a job name from this path: pass --job NAME",
                file.display()
            )
        })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
