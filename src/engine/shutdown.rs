//! Two-stage shutdown, passed into [`crate::run`] so tests can trigger it without signals.
//!
//! The first Ctrl-C or SIGTERM *stops*: no new request is dispatched and requests in flight get
//! a grace period to finish and be journaled. The second *aborts*: requests still in flight are
//! cancelled and journaled as interrupted. Either way the job stays resumable. A third, while
//! the abort itself hangs (a locked database, a stuck disk), exits the process at once with 130:
//! what is committed stays committed (WAL), and the next run journals what was in flight as
//! interrupted, exactly as after `kill -9`.

use tokio_util::sync::CancellationToken;

/// The shutdown state of one run.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    abort: CancellationToken,
}

impl Shutdown {
    /// A shutdown that nothing has triggered yet.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Stops dispatching; requests in flight may finish.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops dispatching and cancels requests in flight.
    pub fn abort(&self) {
        self.stop.cancel();
        self.abort.cancel();
    }

    /// Whether [`Shutdown::stop`] (or abort) was called.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Completes once stopping.
    pub async fn stopping(&self) {
        self.stop.cancelled().await;
    }

    /// Completes once aborting.
    pub async fn aborting(&self) {
        self.abort.cancelled().await;
    }

    /// A token cancelled when stopping, for tasks that take a `CancellationToken`.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// A token cancelled by [`Shutdown::abort`]: cancelling it (and the stop token) aborts.
    pub fn abort_token(&self) -> CancellationToken {
        self.abort.clone()
    }
}

/// Turns SIGINT/SIGTERM into [`Shutdown`]: the first stops, the second aborts, the third exits
/// the process at once with 130. Runs until then or until the caller drops (aborts) the task.
pub async fn forward_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    // Both streams are made once, before the first signal: a stream only sees signals that arrive
    // after it exists, so making new ones after the first signal could lose a quick second one.
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot watch signals: Ctrl-C will kill the runner without a clean stop");
        return;
    };
    for nth in 0..3 {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        if nth == 0 {
            tracing::warn!("stopping: waiting for requests in flight (Ctrl-C again to abort)");
            shutdown.stop();
        } else if nth == 1 {
            tracing::warn!(
                "aborting: requests in flight are journaled as interrupted (Ctrl-C again to exit at once)"
            );
            shutdown.abort();
        } else {
            crate::say!(
                "runner: exiting at once; the next run journals requests in flight as interrupted and resumes"
            );
            // The one exit outside `main`, on purpose: the user asked three times and the
            // clean path is stuck. Nothing is lost that a `kill -9` would not lose, and that
            // case is tested (tests/it/third_signal.rs).
            std::process::exit(i32::from(crate::domain::Exit::Interrupted.code()));
        }
    }
}
