//! `submit` and `resume`: open the store, ingest the input, recover what a crash left in flight,
//! run the worker pool, and record how the job ended.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::Exit;
use crate::cli::{ResumeArgs, RetryFailedArgs, RunArgs, SubmitArgs};
use crate::domain::JobState;
use crate::engine::config::{ApiEnv, JobSettings};
use crate::engine::keys::KeyPool;
use crate::engine::pool::{PoolExit, PoolSettings, WorkerPool};
use crate::engine::progress::{Display, Reporter, Tally};
use crate::engine::rate_limit::RequestLimiter;
use crate::engine::shutdown::Shutdown;
use crate::input::{InputOptions, InputReader};
use crate::store::db::{self, Job};
use crate::store::lease::{self, Acquired, LeaseKeeper, LeaseOwner};
use crate::store::{JobStore, StoreError, fault};
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
    with_store(&db_path, async |store| {
        let lookup = name.clone();
        let existing = store.call(move |c| db::find_job(c, &lookup)).await?;
        let mut settings = match &existing {
            Some(job) => JobSettings::from_json(&job.config)?,
            None => JobSettings::defaults(env),
        };
        if let Some(endpoint) = &args.endpoint {
            settings.endpoint.clone_from(endpoint);
        }
        if let Some(model) = &args.model {
            settings.model = Some(model.clone());
        }
        settings.apply(&args.run);
        settings.check(env)?;

        let options = InputOptions {
            endpoint: settings.endpoint.clone(),
            model: settings.model.clone(),
            max_line_bytes: args.max_line_bytes,
        };
        let mut reader = InputReader::open(&args.file, options)?.skip_invalid(args.skip_invalid);
        let input_path = absolute(&args.file).display().to_string();
        let config = settings.to_json();
        let now = now_ms();
        let me = LeaseOwner::current();
        let owner = me.clone();
        let (job, report, acquired) = store
            .call(move |c| {
                db::atomically(c, |c| {
                    let job = db::upsert_job(c, &name, &input_path, &config, now)?;
                    // Before the ingest: a running job's requests are not touched.
                    let acquired = lease::acquire(c, &job, &owner, now)?;
                    let report = db::ingest(c, job.id, &mut reader)?;
                    // A long ingest must not start the run on a lapsed lease.
                    lease::renew(c, job.id, &owner, now_ms())?;
                    Ok((job, report, acquired))
                })
            })
            .await?;
        report_takeover(&job.name, &acquired);
        eprintln!(
            "{}: read {} requests from {}: {} new, {} already in the job",
            job.name,
            report.read,
            args.file.display(),
            report.added,
            report.known
        );
        if report.invalid > 0 {
            eprintln!(
                "{}: {} invalid lines recorded as failed requests (--skip-invalid): `runner export --job {}` shows why",
                job.name, report.invalid, job.name
            );
        }
        execute_leased(&store, job, me, &settings, env, &args.run, shutdown).await
    })
    .await
}

/// `runner resume`: continue a job from its journal; flags override its stored settings.
///
/// # Errors
/// Unknown job, bad settings, store failures.
pub async fn resume(args: ResumeArgs, env: &ApiEnv, shutdown: &Shutdown) -> anyhow::Result<Exit> {
    with_store(&args.db.db, async |store| {
        let (job, me, settings) = take_job(&store, args.job.clone(), &args.run, env).await?;
        let config = settings.to_json();
        if config != job.config {
            let (id, now) = (job.id, now_ms());
            store
                .call(move |c| db::update_job_config(c, id, &config, now))
                .await?;
        }
        execute_leased(&store, job, me, &settings, env, &args.run, shutdown).await
    })
    .await
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
    let (job, acquired) = store
        .call(move |c| {
            let job = db::resolve_job(c, name.as_deref())?;
            let acquired = lease::acquire(c, &job, &owner, now_ms())?;
            Ok((job, acquired))
        })
        .await?;
    report_takeover(&job.name, &acquired);
    let mut settings = JobSettings::from_json(&job.config)?;
    settings.apply(run);
    settings.check(env)?;
    Ok((job, me, settings))
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
        eprintln!(
            "{}: requeued {requeued} failed requests{}",
            job.name,
            class.map(|c| format!(" of class {c}")).unwrap_or_default()
        );
        execute_leased(&store, job, me, &settings, env, &args.run, shutdown).await
    })
    .await
}

/// Says so when the job's lease was taken from a runner that is gone.
fn report_takeover(job: &str, acquired: &Acquired) {
    match acquired {
        Acquired::Free => {}
        Acquired::Expired { previous } => {
            eprintln!("{job}: took over the job from {previous}, which stopped renewing its lease")
        }
        Acquired::HolderGone { previous } => {
            eprintln!("{job}: took over the job from {previous}, which is no longer running")
        }
    }
}

/// [`execute`] while keeping the job's lease renewed; releases it at the end.
async fn execute_leased(
    store: &JobStore,
    job: Job,
    me: LeaseOwner,
    settings: &JobSettings,
    env: &ApiEnv,
    run: &RunArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<Exit> {
    let keeper = LeaseKeeper::start(store, &job, me, shutdown);
    let result = execute(store, job, settings, env, run, shutdown).await;
    match (result, keeper.finish().await) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(lost @ StoreError::Lease(_))) => Err(lost.into()),
        (Ok(exit), Err(e)) => {
            tracing::warn!(error = %e, "cannot release the job's lease: it lapses by itself");
            Ok(exit)
        }
        (Ok(exit), Ok(())) => Ok(exit),
    }
}

/// Runs a job's pending requests to the end, a job-level stop or a shutdown.
async fn execute(
    store: &JobStore,
    job: Job,
    settings: &JobSettings,
    env: &ApiEnv,
    run: &RunArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<Exit> {
    let id = job.id;
    let now = now_ms();
    let recovered = store
        .call(move |c| {
            let recovered = db::recover_in_flight(c, id, now)?;
            db::set_job_state(c, id, JobState::Running, None, now)?;
            Ok(recovered)
        })
        .await?;
    if recovered > 0 {
        eprintln!(
            "{}: {recovered} requests were in flight when the last run ended: journaled as interrupted and queued again",
            job.name
        );
    }
    let counts = store.call(move |c| db::counts(c, id)).await?;
    if env.api_key.is_none() {
        tracing::warn!(
            "OPENAI_API_KEY is not set: sending requests without an Authorization header"
        );
    }
    let keys = KeyPool::new(settings.keys(env)?, settings.client_settings(env))?;
    let tally = Arc::new(Tally::from_counts(&counts));
    let pool = WorkerPool::new(
        id,
        store.clone(),
        keys,
        RequestLimiter::per_minute(settings.rpm()),
        PoolSettings {
            concurrency: settings.concurrency().get(),
            grace: run.grace,
            policy: settings.retry_policy(),
            breaker: settings.breaker(),
            stop_after_same_error: settings.stop_after_same_error,
            tpm: settings.tpm(),
            default_output_tokens: u64::from(settings.default_output_tokens),
        },
        Arc::clone(&tally),
    );
    let reporter = Reporter::start(
        &job.name,
        counts.total,
        tally,
        Display::choose(run.no_progress),
    );
    let exit = match pool.run(shutdown).await {
        Ok(exit) => exit,
        Err(e) => {
            reporter.finish("failed").await;
            return Err(e).context(
                "the job stopped on a database error; it is resumable once that is fixed",
            );
        }
    };
    let counts = store.call(move |c| db::counts(c, id)).await?;
    let (state, reason, result, label) = match &exit {
        PoolExit::Drained if counts.failed > 0 => (
            JobState::Completed,
            None,
            Exit::SomeFailed,
            "finished with failures",
        ),
        PoolExit::Drained => (JobState::Completed, None, Exit::Success, "completed"),
        PoolExit::Stopped(reason) => (
            JobState::Stopped,
            Some(reason.clone()),
            Exit::Stopped,
            "stopped",
        ),
        PoolExit::Interrupted => (
            JobState::Interrupted,
            None,
            Exit::Interrupted,
            "interrupted",
        ),
    };
    let now = now_ms();
    store
        .call(move |c| db::set_job_state(c, id, state, reason.as_deref(), now))
        .await?;
    reporter.finish(label).await;
    match &exit {
        PoolExit::Drained if counts.failed > 0 => eprintln!(
            "{}: {} requests failed for good: `runner export --job {}` shows why; `runner status` sums it up",
            job.name, counts.failed, job.name
        ),
        PoolExit::Drained => {}
        PoolExit::Stopped(reason) => eprintln!(
            "{}: stopped with {} requests pending: {reason}",
            job.name, counts.pending
        ),
        PoolExit::Interrupted => eprintln!(
            "{}: interrupted with {} requests pending: `runner resume --job {}` continues",
            job.name, counts.pending, job.name
        ),
    }
    Ok(result)
}

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
