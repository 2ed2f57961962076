//! The job engine's worker loop: takes jobs off the Postgres queue
//! (`store::job`) and runs them through the handler registered for their
//! kind.
//!
//! Everything that changes infrastructure (creating a cluster, scaling a
//! pool, deleting machines) runs as a job, so that an API request only has to
//! record intent and the work survives restarts and crashes of any single
//! process. This module is what turns queued rows into handler calls, and it
//! guarantees:
//!
//! - **One worker at a time.** A job is claimed under a lease (owner +
//!   expiry) with `FOR UPDATE SKIP LOCKED`; each claim gets a fresh fencing
//!   token (`jobs.fence`). While the handler runs, the lease is renewed
//!   every [`lease::renew_every`] (a quarter of the lease). If a renewal
//!   reports the lease gone, or none has succeeded for
//!   [`lease::give_up_after`] (half the lease), the worker gives up: the
//!   lease is revoked and the handler cancelled (its task aborted), half
//!   a lease before another engine may claim the job.
//! - **Crash recovery.** If a worker dies mid-job, its lease expires and any
//!   engine claims the job again (the attempt counts). Handlers must be
//!   idempotent for that reason.
//! - **Fencing.** The handler gets the claim's [`Lease`]; its writes go
//!   through [`Lease::begin`], a transaction that first checks, under a
//!   share lock on the job row, that this claim (owner and fence) still
//!   holds an unexpired lease (see [`lease`]). The engine's own writes
//!   (renew, complete, requeue, retry, dead-letter) are conditioned on the
//!   same owner and fence. A worker that lost its lease, even one that
//!   was paused and never noticed, writes nothing: its writes fail with
//!   `Error::LeaseLost` and its attempt ends as `lease_lost`.
//! - **Retries.** A retryable failure is retried after an exponential backoff
//!   with full jitter ([`backoff`]); a permanent failure, or a retryable one
//!   on the last attempt, dead-letters the job and calls
//!   [`JobHandler::dead_lettered`]. A job whose workers kept dying (its
//!   attempts already exceed `max_attempts` when claimed) is dead-lettered
//!   without being run again. A handler panic counts as a retryable failure.
//! - **Prompt wake-up.** Producers `NOTIFY` on [`JOBS_CHANNEL`]; the engine
//!   `LISTEN`s and claims at once, and polls every `poll_interval` as a
//!   fallback (for delayed jobs, expired leases, and a broken listener
//!   connection, which is re-established in the background).
//! - **Graceful shutdown.** On shutdown the engine stops claiming, gives
//!   running jobs a grace period, aborts the rest and hands their leases
//!   back (`job::release_all`) so another engine can take them at once,
//!   without counting the interrupted attempt.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument as _;
use uuid::Uuid;

use super::lease::{self, Lease};
use crate::store::cluster;
use crate::store::job::{self, Job};
use crate::store::JOBS_CHANNEL;

/// What a handler wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The job is finished (it is deleted, or queued again at once if it was
    /// re-enqueued while running).
    Done,
    /// Run the job again after this delay: a level-triggered re-check, not a
    /// failure, so the attempt count is reset.
    RequeueAfter(Duration),
}

/// A job failure. `retryable: false` dead-letters at once.
#[derive(Debug)]
pub struct JobError {
    pub message: String,
    pub retryable: bool,
}

impl JobError {
    /// A failure worth retrying (with backoff) while attempts remain.
    pub fn retryable(m: impl Into<String>) -> Self {
        JobError {
            message: m.into(),
            retryable: true,
        }
    }

    /// A failure no retry can fix: the job is dead-lettered at once.
    pub fn permanent(m: impl Into<String>) -> Self {
        JobError {
            message: m.into(),
            retryable: false,
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JobError {}

impl From<crate::error::Error> for JobError {
    fn from(e: crate::error::Error) -> Self {
        JobError {
            retryable: e.to_problem().retryable,
            message: format!("{e}"),
        }
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        crate::error::Error::from(e).into()
    }
}

/// Runs the jobs of one kind.
#[async_trait::async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one attempt. Must be idempotent: it may run again after a crash.
    /// Every write that changes the world on the job's behalf goes through
    /// `lease` ([`Lease::begin`]), so that it is refused once the lease is
    /// lost; the handler then returns the error and stops.
    async fn run(&self, job: &Job, lease: &Lease) -> Result<Outcome, JobError>;

    /// Called once when the job is dead-lettered (out of attempts or
    /// permanent error), so the handler can mark its operation failed.
    /// Default: nothing.
    ///
    /// It is called while this worker still holds the lease, just before the
    /// job is parked as `dead`; should the worker die in between, the next
    /// worker calls it again, so it must be idempotent too. Its writes are
    /// fenced with `lease` like the handler's.
    async fn dead_lettered(&self, _job: &Job, _lease: &Lease, _error: &JobError) {}
}

/// Hooks for metrics; implemented elsewhere.
pub trait EngineMetrics: Send + Sync + 'static {
    /// A job was claimed and is about to run; `waited` is how long it was due
    /// (now - `run_after`, clamped at 0).
    fn job_started(&self, kind: &str, waited: Duration);
    /// An attempt ended. `outcome` is one of `"done"`, `"requeued"`,
    /// `"retry"`, `"dead"`, `"lease_lost"` (the last also when the result
    /// could not be recorded: the job is then retaken after its lease).
    fn job_finished(&self, kind: &str, outcome: &'static str, took: Duration);
}

/// How an [`Engine`] runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Lease owner; `Uuid::new_v4()` per process by default.
    pub worker_id: Uuid,
    /// Jobs run at once by this engine (default 4; at least 1 is used).
    pub concurrency: usize,
    /// How long a claim lasts without renewal (default 30 s); it is renewed
    /// every [`lease::renew_every`] (`lease / 4`), and a worker whose
    /// renewals fail gives the job up after [`lease::give_up_after`]
    /// (`lease / 2`).
    pub lease: Duration,
    /// Fallback polling when no notification arrives (default 2 s).
    pub poll_interval: Duration,
    /// First retry delay (default 1 s).
    pub backoff_base: Duration,
    /// Longest retry delay (default 5 min).
    pub backoff_max: Duration,
    /// The provider kinds this replica runs. A job that needs another kind
    /// is left to a replica that runs it (default: none, so only jobs that
    /// need no provider are claimed).
    pub providers: Vec<String>,
    /// Kinds that run on slots of their own (kind, how many at once), for
    /// long-running jobs such as a cluster's autoscaler watch, so that
    /// they never hold the slots the other jobs need. [`Engine::run_until_idle`]
    /// leaves them alone. Default: none.
    pub lanes: Vec<(&'static str, usize)>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            worker_id: Uuid::new_v4(),
            concurrency: 4,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
            providers: Vec::new(),
            lanes: Vec::new(),
        }
    }
}

/// Exponential backoff with full jitter: random in
/// `[0, min(max, base * 2^(attempt-1))]`, but at least `base / 2` (or the
/// cap, if `max` is below that). `attempt` counts from 1; lower values are
/// treated as 1. Pure apart from `rng`.
pub fn backoff(attempt: i32, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let cap = backoff_cap(attempt, base, max);
    let floor = (base / 2).min(cap);
    let (lo, hi) = (nanos(floor), nanos(cap));
    Duration::from_nanos(rng.gen_range(lo..=hi))
}

/// The upper bound of [`backoff`]: `min(max, base * 2^(attempt-1))`,
/// saturating.
fn backoff_cap(attempt: i32, base: Duration, max: Duration) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(63);
    let cap = nanos(base).saturating_mul(1u64 << exp);
    Duration::from_nanos(cap).min(max)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Takes jobs off the queue and runs them.
pub struct Engine {
    inner: Inner,
}

/// The state job tasks share.
struct Inner {
    pool: PgPool,
    config: EngineConfig,
    metrics: Arc<dyn EngineMetrics>,
    handlers: HashMap<&'static str, Arc<dyn JobHandler>>,
}

impl Engine {
    /// An engine with no handlers yet; see [`Engine::register`].
    pub fn new(pool: PgPool, config: EngineConfig, metrics: Arc<dyn EngineMetrics>) -> Self {
        Engine {
            inner: Inner {
                pool,
                config,
                metrics,
                handlers: HashMap::new(),
            },
        }
    }

    /// Routes jobs of `kind` to `handler` (replacing any earlier one).
    pub fn register(&mut self, kind: &'static str, handler: Arc<dyn JobHandler>) {
        self.inner.handlers.insert(kind, handler);
    }

    /// Runs until `shutdown` turns true (or its sender is dropped).
    ///
    /// On shutdown: stops claiming, gives running jobs up to `grace` to
    /// finish, aborts the rest, then hands this worker's leases back with
    /// `job::release_all`.
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let inner = Arc::new(self.inner);
        let config = &inner.config;
        // The main lane takes every kind but the laned ones; each lane
        // only its own kind.
        let lanes: Vec<(job::KindFilter, Arc<Semaphore>)> =
            std::iter::once((inner.main_kinds(), config.concurrency))
                .chain(config.lanes.iter().map(|(kind, n)| {
                    let only = job::KindFilter {
                        only: vec![kind.to_string()],
                        except: Vec::new(),
                    };
                    (only, *n)
                }))
                .map(|(filter, n)| (filter, Arc::new(Semaphore::new(n.max(1)))))
                .collect();
        let wake = Arc::new(Notify::new());
        let _listener = AbortOnDrop(tokio::spawn(listen(
            inner.pool.clone(),
            Arc::clone(&wake),
            config.poll_interval,
        )));
        let mut tasks: JoinSet<()> = JoinSet::new();
        tracing::info!(
            worker_id = %config.worker_id,
            concurrency = config.concurrency.max(1),
            kinds = ?inner.handlers.keys().collect::<Vec<_>>(),
            "job engine started"
        );

        while !*shutdown.borrow() {
            // Claim while a lane has free slots and jobs are due.
            for (kinds, slots) in &lanes {
                while let Ok(permit) = Arc::clone(slots).try_acquire_owned() {
                    match job::claim(
                        &inner.pool,
                        config.worker_id,
                        config.lease,
                        &config.providers,
                        kinds,
                    )
                    .await
                    {
                        Ok(Some(job)) => {
                            let inner = Arc::clone(&inner);
                            tasks.spawn(async move {
                                let _permit: OwnedSemaphorePermit = permit;
                                inner.process(job).await;
                            });
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "claiming a job failed; will retry");
                            break;
                        }
                    }
                }
            }

            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        // Nobody can signal any more: treat as shutdown.
                        break;
                    }
                }
                () = wake.notified() => {}
                () = tokio::time::sleep(config.poll_interval) => {}
                Some(res) = tasks.join_next(), if !tasks.is_empty() => log_task_end(res),
            }
        }

        tracing::info!(running = tasks.len(), ?grace, "job engine shutting down");
        let drained = tokio::time::timeout(grace, async {
            while let Some(res) = tasks.join_next().await {
                log_task_end(res);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                aborted = tasks.len(),
                "grace period over; aborting running jobs"
            );
            tasks.shutdown().await;
        }
        let released = job::release_all(&inner.pool, config.worker_id)
            .await
            .map_err(|e| anyhow::anyhow!("releasing this worker's leases: {e}"))?;
        tracing::info!(released, "job engine stopped");
        Ok(())
    }

    /// Test helper: claims and runs due jobs one by one until none is due;
    /// returns how many ran. Used by tests to drive the queue synchronously.
    pub async fn run_until_idle(&self) -> anyhow::Result<usize> {
        let inner = &self.inner;
        let mut ran = 0;
        while let Some(job) = job::claim(
            &inner.pool,
            inner.config.worker_id,
            inner.config.lease,
            &inner.config.providers,
            &inner.main_kinds(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("claiming a job: {e}"))?
        {
            inner.process(job).await;
            ran += 1;
        }
        Ok(ran)
    }
}

/// Keeps a `LISTEN` on [`JOBS_CHANNEL`] and turns notifications into
/// wake-ups; reconnects with backoff when the connection breaks. Polling
/// covers whatever is missed meanwhile.
async fn listen(pool: PgPool, wake: Arc<Notify>, poll_interval: Duration) {
    let mut failures: i32 = 0;
    loop {
        match connect_listener(&pool).await {
            Ok(mut listener) => {
                if failures > 0 {
                    tracing::info!("job listener reconnected");
                }
                failures = 0;
                // A notification may have been missed while disconnected.
                wake.notify_one();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake.notify_one(),
                        Ok(None) => {
                            tracing::warn!("job listener connection lost; reconnecting");
                            wake.notify_one();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "job listener failed; polling until it reconnects");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for jobs; polling until it reconnects");
            }
        }
        failures = failures.saturating_add(1);
        let delay = backoff_cap(
            failures,
            poll_interval.max(Duration::from_millis(100)),
            Duration::from_secs(30),
        );
        tokio::time::sleep(delay).await;
    }
}

async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(JOBS_CHANNEL).await?;
    Ok(listener)
}

fn log_task_end(res: Result<(), JoinError>) {
    if let Err(e) = res {
        if e.is_panic() {
            tracing::error!(panic = %panic_message(e.into_panic().as_ref()), "job task panicked");
        }
    }
}

/// What to record once an attempt ends.
enum Finish {
    Complete,
    Requeue(Duration),
    Retry(Duration, String),
    Dead(String),
}

impl Finish {
    fn label(&self) -> &'static str {
        match self {
            Finish::Complete => "done",
            Finish::Requeue(_) => "requeued",
            Finish::Retry(..) => "retry",
            Finish::Dead(_) => "dead",
        }
    }
}

/// How often a failed outcome write is tried before leaving the job to its
/// lease expiry.
const FINISH_TRIES: u32 = 3;

/// The longest error text stored in `jobs.last_error`.
const MAX_ERROR_LEN: usize = 4096;

impl Inner {
    /// The kinds the main lane claims: all but the laned ones.
    fn main_kinds(&self) -> job::KindFilter {
        job::KindFilter {
            only: Vec::new(),
            except: self
                .config
                .lanes
                .iter()
                .map(|(k, _)| k.to_string())
                .collect(),
        }
    }

    /// Runs one claimed job to the end of its attempt and records the
    /// outcome. Never fails: problems are logged, and the lease covers the
    /// rest.
    async fn process(&self, job: Job) {
        let span = tracing::info_span!(
            "job",
            job_id = job.id,
            kind = %job.kind,
            attempt = job.attempts,
            max_attempts = job.max_attempts,
            operation_id = tracing::field::Empty,
            tenant = tracing::field::Empty,
            cluster = tracing::field::Empty,
            cluster_id = tracing::field::Empty,
        );
        if let Some(op) = job.operation_id {
            span.record("operation_id", tracing::field::display(op));
        }
        // Whose job it is, on every line logged while it runs: the
        // cluster its payload names, and that cluster's tenant.
        if let Some(id) = job.cluster_id() {
            span.record("cluster_id", tracing::field::display(id));
            match cluster::identity(&self.pool, id).await {
                Ok(Some((tenant, name))) => {
                    span.record("tenant", tracing::field::display(tenant));
                    span.record("cluster", tracing::field::display(name));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(parent: &span, error = %e, "looking up the job's cluster")
                }
            }
        }
        self.process_inner(job).instrument(span).await;
    }

    async fn process_inner(&self, job: Job) {
        let started = Instant::now();
        let waited = (chrono::Utc::now() - job.run_after)
            .to_std()
            .unwrap_or(Duration::ZERO);
        self.metrics.job_started(&job.kind, waited);
        tracing::debug!(waited_ms = waited.as_millis(), "job claimed");

        let handler = self.handlers.get(job.kind.as_str()).cloned();
        let lease = Lease::new(self.pool.clone(), job.token());
        let result = if job.attempts > job.max_attempts {
            Some(Err(JobError::permanent(format!(
                "out of attempts ({}): the worker running the last one stopped before it finished",
                job.max_attempts
            ))))
        } else if let Some(handler) = &handler {
            self.run_leased(&job, &lease, handler).await
        } else {
            Some(Err(JobError::permanent(format!(
                "no handler for kind {}",
                job.kind
            ))))
        };

        let outcome = match result {
            // Given up, or a fenced write found the lease gone: the job is
            // someone else's now, and nothing more is written for it here.
            None => "lease_lost",
            Some(_) if lease.is_lost() => {
                tracing::warn!("job lease lost while the handler ran; its outcome is not recorded");
                "lease_lost"
            }
            Some(result) => self.finish(&job, &lease, handler.as_ref(), result).await,
        };
        self.metrics
            .job_finished(&job.kind, outcome, started.elapsed());
    }

    /// Runs the handler in its own task while renewing the lease. `None` if
    /// the lease was lost or given up (the lease is then revoked and the
    /// handler aborted).
    ///
    /// Renewals go out every [`lease::renew_every`] (a failed one is tried
    /// again after half that); each is bounded by that period and by the
    /// give-up deadline, [`lease::give_up_after`]
    /// past the moment the last successful renewal was sent. So a worker
    /// that cannot renew stops at about half the lease, whatever the
    /// database does, while the lease it last renewed runs for at least
    /// another half.
    async fn run_leased(
        &self,
        job: &Job,
        lease: &Lease,
        handler: &Arc<dyn JobHandler>,
    ) -> Option<Result<Outcome, JobError>> {
        let duration = self.config.lease;
        let every = lease::renew_every(duration);
        let give_up = lease::give_up_after(duration);
        let token = job.token();
        // The claim was the first renewal. It was sent a little before
        // now (its round trip and the task's start), which eats as much of
        // the half-lease margin: milliseconds against seconds.
        let mut renewed = Instant::now();

        let mut run = AbortOnDrop({
            let handler = Arc::clone(handler);
            let job = job.clone();
            let lease = lease.clone();
            tokio::spawn(async move { handler.run(&job, &lease).await }.in_current_span())
        });
        let mut next_beat = Instant::now() + every;

        loop {
            tokio::select! {
                res = &mut run.0 => {
                    return Some(match res {
                        Ok(result) => result,
                        Err(e) if e.is_panic() => {
                            let msg = panic_message(e.into_panic().as_ref());
                            tracing::error!(panic = %msg, "job handler panicked");
                            Err(JobError::retryable(format!("handler panicked: {msg}")))
                        }
                        Err(_) => Err(JobError::retryable("handler task was cancelled")),
                    });
                }
                () = tokio::time::sleep_until(next_beat) => {
                    let sent = Instant::now();
                    let deadline = renewed + give_up;
                    let beat = tokio::time::timeout_at(
                        deadline.min(sent + every),
                        job::heartbeat(&self.pool, token, duration),
                    )
                    .await;
                    // A failed renewal is tried again sooner, so that more
                    // than one fits before the give-up deadline.
                    next_beat = sent + every / 2;
                    match beat {
                        Ok(Ok(true)) => {
                            renewed = sent;
                            next_beat = sent + every;
                        }
                        Ok(Ok(false)) => {
                            tracing::warn!("job lease lost; cancelling the handler");
                            lease.revoke();
                            return None;
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "renewing the job lease failed"),
                        Err(_) => tracing::warn!("renewing the job lease timed out"),
                    }
                    if Instant::now() >= renewed + give_up {
                        tracing::warn!(
                            ?give_up,
                            lease = ?duration,
                            "job lease not renewed for half a lease; giving the job up and cancelling the handler"
                        );
                        lease.revoke();
                        return None;
                    }
                }
            }
        }
    }

    /// Records the attempt's result; returns the metrics outcome.
    async fn finish(
        &self,
        job: &Job,
        lease: &Lease,
        handler: Option<&Arc<dyn JobHandler>>,
        result: Result<Outcome, JobError>,
    ) -> &'static str {
        let finish = match result {
            Ok(Outcome::Done) => Finish::Complete,
            Ok(Outcome::RequeueAfter(delay)) => Finish::Requeue(delay),
            Err(e) if e.retryable && job.attempts < job.max_attempts => {
                let delay = backoff(
                    job.attempts,
                    self.config.backoff_base,
                    self.config.backoff_max,
                    &mut rand::thread_rng(),
                );
                tracing::warn!(error = %e.message, retry_in = ?delay, "job attempt failed; will retry");
                Finish::Retry(delay, truncate(&e.message))
            }
            Err(e) => {
                tracing::error!(error = %e.message, retryable = e.retryable, "job dead-lettered");
                if let Some(handler) = handler {
                    // Only tell the handler while the job is still ours.
                    match job::heartbeat(&self.pool, job.token(), self.config.lease).await {
                        Ok(true) => self.call_dead_lettered(job, lease, handler, &e).await,
                        Ok(false) => {
                            tracing::warn!("job lease lost before dead-lettering");
                            return "lease_lost";
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot confirm the job lease; leaving it to expire");
                            return "lease_lost";
                        }
                    }
                }
                if lease.is_lost() {
                    tracing::warn!("job lease lost while dead-lettering");
                    return "lease_lost";
                }
                Finish::Dead(truncate(&e.message))
            }
        };

        let label = finish.label();
        for try_no in 1..=FINISH_TRIES {
            match self.write_finish(job, &finish).await {
                Ok(true) => {
                    tracing::info!(outcome = label, "job attempt finished");
                    return label;
                }
                Ok(false) => {
                    tracing::warn!(
                        outcome = label,
                        "job lease lost before its outcome was recorded"
                    );
                    return "lease_lost";
                }
                Err(e) if try_no < FINISH_TRIES => {
                    tracing::warn!(error = %e, outcome = label, "recording the job outcome failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(try_no - 1)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, outcome = label, "recording the job outcome failed; it will run again after its lease");
                }
            }
        }
        "lease_lost"
    }

    async fn write_finish(&self, job: &Job, finish: &Finish) -> crate::error::Result<bool> {
        let token = job.token();
        match finish {
            Finish::Complete => {
                let mut conn = self.pool.acquire().await?;
                job::complete(&mut conn, token).await
            }
            Finish::Requeue(delay) => job::requeue(&self.pool, token, *delay).await,
            Finish::Retry(delay, error) => job::retry(&self.pool, token, *delay, error).await,
            Finish::Dead(error) => job::dead_letter(&self.pool, token, error).await,
        }
    }

    /// Calls the dead-letter hook in its own task so that a panic in it is
    /// logged rather than leaving the job to crash every worker that takes
    /// it.
    async fn call_dead_lettered(
        &self,
        job: &Job,
        lease: &Lease,
        handler: &Arc<dyn JobHandler>,
        error: &JobError,
    ) {
        let handler = Arc::clone(handler);
        let job = job.clone();
        let lease = lease.clone();
        let error = JobError {
            message: error.message.clone(),
            retryable: error.retryable,
        };
        let hook = AbortOnDrop(tokio::spawn(
            async move { handler.dead_lettered(&job, &lease, &error).await }.in_current_span(),
        ));
        if let Err(e) = hook.join().await {
            if e.is_panic() {
                tracing::error!(panic = %panic_message(e.into_panic().as_ref()), "dead-letter hook panicked");
            }
        }
    }
}

/// Aborts the task when dropped, so that aborting a job task (shutdown, or
/// the engine's own task being dropped) also stops its handler.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Cuts `s` to at most [`MAX_ERROR_LEN`] bytes on a char boundary.
fn truncate(s: &str) -> String {
    if s.len() <= MAX_ERROR_LEN {
        return s.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn backoff_stays_within_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in -2..=80 {
            let cap = backoff_cap(attempt, BASE, MAX);
            for _ in 0..500 {
                let d = backoff(attempt, BASE, MAX, &mut rng);
                assert!(d >= BASE / 2, "attempt {attempt}: {d:?} below base/2");
                assert!(d <= cap, "attempt {attempt}: {d:?} above cap {cap:?}");
                assert!(d <= MAX, "attempt {attempt}: {d:?} above max");
            }
        }
    }

    #[test]
    fn backoff_cap_doubles_then_is_capped() {
        assert_eq!(backoff_cap(1, BASE, MAX), BASE);
        assert_eq!(backoff_cap(2, BASE, MAX), BASE * 2);
        assert_eq!(backoff_cap(5, BASE, MAX), BASE * 16);
        assert_eq!(backoff_cap(0, BASE, MAX), BASE);
        assert_eq!(backoff_cap(i32::MIN, BASE, MAX), BASE);
        assert_eq!(backoff_cap(10, BASE, MAX), MAX);
        assert_eq!(backoff_cap(i32::MAX, BASE, MAX), MAX);
        let huge = Duration::from_secs(u64::MAX / 4);
        assert_eq!(
            backoff_cap(i32::MAX, huge, Duration::MAX),
            Duration::from_nanos(u64::MAX)
        );
    }

    #[test]
    fn backoff_cap_is_monotone() {
        let mut prev = Duration::ZERO;
        for attempt in -5..200 {
            let cap = backoff_cap(attempt, BASE, MAX);
            assert!(cap >= prev, "cap shrank at attempt {attempt}");
            assert!(cap <= MAX);
            prev = cap;
        }
        assert_eq!(prev, MAX);
    }

    #[test]
    fn backoff_is_jittered_across_the_range() {
        let mut rng = StdRng::seed_from_u64(42);
        let samples: Vec<Duration> = (0..2000).map(|_| backoff(6, BASE, MAX, &mut rng)).collect();
        let cap = BASE * 32;
        assert!(samples.iter().any(|d| *d < cap / 4));
        assert!(samples.iter().any(|d| *d > cap * 3 / 4));
        // The late attempts reach the max, spread below it.
        let late: Vec<Duration> = (0..2000)
            .map(|_| backoff(30, BASE, MAX, &mut rng))
            .collect();
        assert!(late.iter().all(|d| *d <= MAX));
        assert!(late.iter().any(|d| *d > MAX * 9 / 10));
    }

    #[test]
    fn backoff_floor_never_exceeds_a_small_max() {
        let mut rng = StdRng::seed_from_u64(1);
        let small = Duration::from_millis(100);
        for attempt in 1..10 {
            assert!(backoff(attempt, BASE, small, &mut rng) <= small);
        }
        assert_eq!(backoff(3, Duration::ZERO, MAX, &mut rng), Duration::ZERO);
    }

    #[test]
    fn job_error_constructors() {
        assert!(JobError::retryable("x").retryable);
        let p = JobError::permanent("boom");
        assert!(!p.retryable);
        assert_eq!(p.to_string(), "boom");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let t = truncate(&long);
        assert!(t.len() <= MAX_ERROR_LEN + '…'.len_utf8());
        assert_eq!(truncate("short"), "short");
    }
}
