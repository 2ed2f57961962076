//! Job queue semantics, with the real `Engine` on a real Postgres: exactly
//! once across two engines ("two processes"), lease expiry after a killed
//! worker, retries with backoff then dead-letter, the real reconcile job
//! failing its operation after repeated failures yet never dying,
//! LISTEN/NOTIFY wake-up and graceful shutdown handing leases back.

use axum::http::{Method, StatusCode};
use kubeforge::app::Config;
use kubeforge::context::Role;
use kubeforge::engine::jobs::{Engine, EngineConfig, JobError, JobHandler, Outcome};
use kubeforge::engine::lease::Lease;
use kubeforge::store::job::{self, Job, NewJob};
use kubeforge_tests::{cluster_body, test_engine_config, TestApp, TestDb};
use sqlx::PgPool;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

const KIND: &str = "test_count";

/// Records each attempt into `runs` (phase `start`, then `done` once the
/// handler finished its work), optionally sleeping in between, optionally
/// failing.
struct Recorder {
    pool: PgPool,
    label: &'static str,
    sleep: Duration,
    fail: Option<JobError>,
    panic: bool,
    dead_lettered: Arc<AtomicUsize>,
    /// Attempts whose future was dropped before it finished (aborted).
    aborted: Arc<AtomicUsize>,
}

/// Counts an attempt as aborted if it is dropped before being disarmed.
struct AbortWatch(Arc<AtomicUsize>, bool);

impl Drop for AbortWatch {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Recorder {
    fn new(pool: &PgPool, label: &'static str) -> Self {
        Recorder {
            pool: pool.clone(),
            label,
            sleep: Duration::ZERO,
            fail: None,
            panic: false,
            dead_lettered: Arc::new(AtomicUsize::new(0)),
            aborted: Arc::new(AtomicUsize::new(0)),
        }
    }

    async fn record(&self, job: &Job, phase: &str) {
        sqlx::query("INSERT INTO runs (job_id, worker, phase, attempt) VALUES ($1, $2, $3, $4)")
            .bind(job.id)
            .bind(self.label)
            .bind(phase)
            .bind(job.attempts)
            .execute(&self.pool)
            .await
            .expect("recording a run");
    }
}

impl Recorder {
    async fn attempt(&self, job: &Job) -> Result<Outcome, JobError> {
        let mut watch = AbortWatch(Arc::clone(&self.aborted), false);
        self.record(job, "start").await;
        if !self.sleep.is_zero() {
            tokio::time::sleep(self.sleep).await;
        }
        watch.1 = true;
        if self.panic {
            panic!("boom");
        }
        if let Some(e) = &self.fail {
            return Err(JobError {
                message: e.message.clone(),
                retryable: e.retryable,
            });
        }
        self.record(job, "done").await;
        Ok(Outcome::Done)
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// `JobHandler` is an `#[async_trait]` trait; this crate does not depend on
// `async-trait`, so the impl is written in its expanded form.
impl JobHandler for Recorder {
    fn run<'s, 'j, 'l, 'f>(
        &'s self,
        job: &'j Job,
        _lease: &'l Lease,
    ) -> BoxFuture<'f, Result<Outcome, JobError>>
    where
        's: 'f,
        'j: 'f,
        'l: 'f,
        Self: 'f,
    {
        Box::pin(self.attempt(job))
    }

    fn dead_lettered<'s, 'j, 'l, 'e, 'f>(
        &'s self,
        _job: &'j Job,
        _lease: &'l Lease,
        _error: &'e JobError,
    ) -> BoxFuture<'f, ()>
    where
        's: 'f,
        'j: 'f,
        'l: 'f,
        'e: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            self.dead_lettered.fetch_add(1, Ordering::SeqCst);
        })
    }
}

async fn setup() -> TestDb {
    let db = TestDb::new().await;
    let pool = db.pool(2).await;
    sqlx::query(
        "CREATE TABLE runs (
             job_id  bigint NOT NULL,
             worker  text NOT NULL,
             phase   text NOT NULL,
             attempt int NOT NULL,
             at      timestamptz NOT NULL DEFAULT clock_timestamp()
         )",
    )
    .execute(&pool)
    .await
    .expect("creating runs");
    pool.close().await;
    db
}

fn metrics() -> Arc<kubeforge::metrics::Metrics> {
    Arc::new(kubeforge::metrics::Metrics::new().expect("metrics"))
}

fn engine(pool: &PgPool, config: EngineConfig, handler: Recorder) -> Engine {
    let mut e = Engine::new(pool.clone(), config, metrics());
    e.register(KIND, Arc::new(handler));
    e
}

/// A running engine: its task and its shutdown switch.
struct Running {
    task: JoinHandle<anyhow::Result<()>>,
    stop: watch::Sender<bool>,
}

fn start(e: Engine, grace: Duration) -> Running {
    let (stop, rx) = watch::channel(false);
    Running {
        task: tokio::spawn(e.run(rx, grace)),
        stop,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).expect("engine still listening");
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("engine stopped in time")
            .expect("engine task")
            .expect("engine run");
    }
}

async fn enqueue(pool: &PgPool, n: usize, max_attempts: i32) -> Vec<i64> {
    enqueue_keyed(pool, n, max_attempts, None).await
}

async fn enqueue_keyed(
    pool: &PgPool,
    n: usize,
    max_attempts: i32,
    dedupe_key: Option<&str>,
) -> Vec<i64> {
    let mut tx = pool.begin().await.expect("tx");
    for i in 0..n {
        job::enqueue(
            &mut tx,
            NewJob {
                kind: KIND,
                payload: serde_json::json!({ "n": i }),
                dedupe_key,
                operation_id: None,
                max_attempts,
                provider: None,
            },
        )
        .await
        .expect("enqueue");
    }
    // Read the ids before committing: a running engine may finish (and
    // delete) the jobs as soon as they are visible.
    let ids = sqlx::query_scalar("SELECT id FROM jobs WHERE kind = $1 ORDER BY id")
        .bind(KIND)
        .fetch_all(&mut *tx)
        .await
        .expect("job ids");
    tx.commit().await.expect("commit");
    ids
}

/// Polls `check` every 50 ms until it is true; panics after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scalar_i64(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_run_every_job_exactly_once() {
    let db = setup().await;
    let pool1 = db.pool(10).await;
    let pool2 = db.pool(10).await;
    let w1 = Uuid::new_v4();
    let w2 = Uuid::new_v4();
    let mut h1 = Recorder::new(&pool1, "e1");
    h1.sleep = Duration::from_millis(50);
    let mut h2 = Recorder::new(&pool2, "e2");
    h2.sleep = Duration::from_millis(50);
    let cfg = |w| EngineConfig {
        worker_id: w,
        concurrency: 4,
        ..test_engine_config()
    };
    let e1 = start(engine(&pool1, cfg(w1), h1), Duration::from_secs(5));
    let e2 = start(engine(&pool2, cfg(w2), h2), Duration::from_secs(5));

    const N: usize = 60;
    let ids = enqueue(&pool1, N, 3).await;
    assert_eq!(ids.len(), N);

    wait_until(Duration::from_secs(60), "the queue to drain", || async {
        scalar_i64(&pool1, "SELECT count(*) FROM jobs").await == 0
    })
    .await;
    e1.stop().await;
    e2.stop().await;

    // Every job ran exactly once: one start, one done, no other job ids.
    let per_job: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT job_id, count(*) FILTER (WHERE phase = 'start'),
                count(*) FILTER (WHERE phase = 'done')
         FROM runs GROUP BY job_id ORDER BY job_id",
    )
    .fetch_all(&pool1)
    .await
    .unwrap();
    assert_eq!(per_job.len(), N, "every job ran");
    for (id, starts, dones) in &per_job {
        assert!(ids.contains(id), "unknown job {id}");
        assert_eq!((*starts, *dones), (1, 1), "job {id} ran more than once");
    }
    // Both "processes" took a share.
    let by_worker: Vec<(String, i64)> = sqlx::query_as(
        "SELECT worker, count(*) FROM runs WHERE phase = 'done' GROUP BY worker ORDER BY worker",
    )
    .fetch_all(&pool1)
    .await
    .unwrap();
    assert_eq!(by_worker.len(), 2, "both engines took work: {by_worker:?}");
    assert!(by_worker.iter().all(|(_, n)| *n > 0));
    assert_eq!(by_worker.iter().map(|(_, n)| n).sum::<i64>(), N as i64);
    assert_eq!(scalar_i64(&pool1, "SELECT count(*) FROM jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_loses_its_job_to_another_after_the_lease() {
    let db = setup().await;
    let pool1 = db.pool(5).await;
    let pool2 = db.pool(5).await;
    let w1 = Uuid::new_v4();
    let w2 = Uuid::new_v4();

    // Engine 1's handler would take a minute: it is killed long before.
    let mut h1 = Recorder::new(&pool1, "e1");
    h1.sleep = Duration::from_secs(60);
    let aborted = Arc::clone(&h1.aborted);
    let e1 = start(
        engine(
            &pool1,
            EngineConfig {
                worker_id: w1,
                ..test_engine_config()
            },
            h1,
        ),
        Duration::from_secs(1),
    );
    let ids = enqueue(&pool1, 1, 5).await;
    let id = ids[0];
    wait_until(
        Duration::from_secs(10),
        "engine 1 to start the job",
        || async {
            scalar_i64(
                &pool1,
                "SELECT count(*) FROM runs WHERE worker = 'e1' AND phase = 'start'",
            )
            .await
                == 1
        },
    )
    .await;
    let (state, owner): (String, Option<Uuid>) =
        sqlx::query_as("SELECT state, lease_owner FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool1)
            .await
            .unwrap();
    assert_eq!((state.as_str(), owner), ("running", Some(w1)));

    // Kill engine 1: no shutdown, no release; its lease just stops renewing.
    e1.task.abort();
    let _ = e1.task.await;
    drop(e1.stop);
    // Dropping the engine's task stops its handlers too.
    wait_until(
        Duration::from_secs(5),
        "engine 1's handler to stop",
        || async { aborted.load(Ordering::SeqCst) == 1 },
    )
    .await;
    pool1.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let expires: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT lease_expires_at FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool2)
            .await
            .unwrap();

    let e2 = start(
        engine(
            &pool2,
            EngineConfig {
                worker_id: w2,
                ..test_engine_config()
            },
            Recorder::new(&pool2, "e2"),
        ),
        Duration::from_secs(1),
    );
    wait_until(
        Duration::from_secs(20),
        "engine 2 to finish the job",
        || async { scalar_i64(&pool2, "SELECT count(*) FROM jobs").await == 0 },
    )
    .await;
    e2.stop().await;

    // Not retaken before the dead worker's lease ran out.
    let retaken: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT at FROM runs WHERE job_id = $1 AND worker = 'e2' AND phase = 'start'",
    )
    .bind(id)
    .fetch_one(&pool2)
    .await
    .unwrap();
    assert!(
        retaken >= expires,
        "retaken at {retaken}, before the lease expired at {expires}"
    );
    let runs: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT worker, phase, attempt FROM runs WHERE job_id = $1 ORDER BY at")
            .bind(id)
            .fetch_all(&pool2)
            .await
            .unwrap();
    assert_eq!(
        runs,
        vec![
            ("e1".to_string(), "start".to_string(), 1),
            ("e2".to_string(), "start".to_string(), 2),
            ("e2".to_string(), "done".to_string(), 2),
        ],
        "completed once, by engine 2, on the second attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_back_off_then_dead_letter() {
    let db = setup().await;
    let pool = db.pool(5).await;
    let mut h = Recorder::new(&pool, "e1");
    h.fail = Some(JobError::retryable("flaky backend"));
    let dead = Arc::clone(&h.dead_lettered);
    let e = start(
        engine(&pool, test_engine_config(), h),
        Duration::from_secs(1),
    );
    let id = enqueue(&pool, 1, 3).await[0];
    wait_until(Duration::from_secs(20), "the job to be dead", || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
            == "dead"
    })
    .await;
    // Let the engine settle before looking at what it did.
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.stop().await;

    let (state, attempts, last_error, owner): (String, i32, Option<String>, Option<Uuid>) =
        sqlx::query_as("SELECT state, attempts, last_error, lease_owner FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "dead");
    assert_eq!(attempts, 3);
    assert!(owner.is_none());
    assert!(
        last_error
            .as_deref()
            .unwrap_or("")
            .contains("flaky backend"),
        "last_error: {last_error:?}"
    );
    assert_eq!(dead.load(Ordering::SeqCst), 1, "dead_lettered called once");
    let attempts_run: Vec<i32> =
        sqlx::query_scalar("SELECT attempt FROM runs WHERE job_id = $1 ORDER BY at")
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(attempts_run, vec![1, 2, 3]);
    // Each retry waited for its backoff (at least base/2 = 5 ms).
    let gaps: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY at))::float8 FROM runs
         WHERE job_id = $1 ORDER BY at OFFSET 1",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(gaps.len(), 2);
    assert!(gaps.iter().all(|g| *g >= 0.005), "gaps: {gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_dead_letters_at_once() {
    let db = setup().await;
    let pool = db.pool(5).await;
    let mut h = Recorder::new(&pool, "e1");
    h.fail = Some(JobError::permanent("bad request"));
    let dead = Arc::clone(&h.dead_lettered);
    let e = engine(&pool, test_engine_config(), h);
    let id = enqueue(&pool, 1, 5).await[0];
    assert_eq!(e.run_until_idle().await.unwrap(), 1);
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("dead", 1));
    assert_eq!(dead.load(Ordering::SeqCst), 1);
    // A dead job is never claimed again.
    assert_eq!(e.run_until_idle().await.unwrap(), 0);
}

/// The cluster `name` as the API shows it.
async fn cluster_json(app: &TestApp, token: &str, name: &str) -> serde_json::Value {
    let c = app
        .call(
            Method::GET,
            &format!("/v1/clusters/{name}"),
            Some(token),
            None,
            &[],
        )
        .await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);
    c.body
}

#[tokio::test]
async fn a_reconcile_that_keeps_failing_fails_its_operation_and_goes_on() {
    let app = TestApp::with_config(Config {
        max_job_attempts: 3,
        ..Default::default()
    })
    .await;
    app.provider.fail_creates.store(1_000_000, Ordering::SeqCst);
    let token = app.token("acme", Role::Admin);
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&token),
            Some(cluster_body("doomed")),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let op = r.body["operation"]["id"].as_str().unwrap().to_string();
    let get_op = || async {
        let r = app
            .call(
                Method::GET,
                &format!("/v1/operations/{op}"),
                Some(&token),
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body
    };

    for _ in 0..20 {
        app.settle().await;
        if get_op().await["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let o = get_op().await;
    assert_eq!(o["state"], "failed", "{o}");
    assert_eq!(o["error"]["code"], "reconcile_failed", "{o}");
    assert_eq!(o["error"]["retryable"], true, "{o}");
    assert!(
        o["error"]["message"]
            .as_str()
            .unwrap()
            .contains("injected transient failure"),
        "{o}"
    );
    assert!(o["finished_at"].is_string());
    let machines_step = o["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "machines")
        .unwrap();
    assert_eq!(machines_step["state"], "failed");

    // The cluster says what fails, and its reconcile is not dead: the job
    // is still there, with no attempt limit.
    let c = cluster_json(&app, &token, "doomed").await;
    assert_eq!(c["phase"], "failed", "{c}");
    let cond = c["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["type"] == "Reconciled")
        .cloned()
        .unwrap_or_else(|| panic!("no Reconciled condition: {c}"));
    assert_eq!(cond["status"], "False", "{cond}");
    assert_eq!(cond["reason"], "ReconcileFailing", "{cond}");
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .contains("injected transient failure"),
        "{cond}"
    );
    let (state, max_attempts): (String, i32) =
        sqlx::query_as("SELECT state, max_attempts FROM jobs WHERE kind = 'reconcile_cluster'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_ne!(state, "dead");
    assert_eq!(max_attempts, i32::MAX);
    let creates = app.provider.create_calls.load(Ordering::SeqCst);
    assert!(creates >= 3, "one create per attempt: {creates}");

    // More passes after the operation failed: still tried, still alive.
    app.settle().await;
    assert!(app.provider.create_calls.load(Ordering::SeqCst) > creates);

    // The problem passes: the same job brings the cluster up, with no new
    // request, and the condition says so.
    app.provider.fail_creates.store(0, Ordering::SeqCst);
    for _ in 0..20 {
        app.settle().await;
        let c = cluster_json(&app, &token, "doomed").await;
        if c["phase"] != "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let c = cluster_json(&app, &token, "doomed").await;
    assert_ne!(c["phase"], "failed", "{c}");
    let by_type = |t: &str| {
        c["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["type"] == t)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_type("Reconciled")["status"], "True", "{c}");
    assert_eq!(by_type("MachinesReady")["status"], "True", "{c}");

    // And it can still be deleted.
    let r = app
        .call(
            Method::DELETE,
            "/v1/clusters/doomed",
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    app.settle().await;
    assert_eq!(
        app.count("jobs").await,
        0,
        "the job finished with the cluster"
    );
    let c = app
        .call(Method::GET, "/v1/clusters/doomed", Some(&token), None, &[])
        .await;
    assert_eq!(c.status, StatusCode::NOT_FOUND, "{}", c.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_an_idle_engine_long_before_its_poll() {
    let db = setup().await;
    let pool = db.pool(5).await;
    let e = start(
        engine(
            &pool,
            EngineConfig {
                poll_interval: Duration::from_secs(30),
                ..test_engine_config()
            },
            Recorder::new(&pool, "e1"),
        ),
        Duration::from_secs(1),
    );
    // Let the engine make its first (empty) claim and LISTEN.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let enqueued = tokio::time::Instant::now();
    let id = enqueue(&pool, 1, 3).await[0];
    wait_until(Duration::from_secs(10), "the job to run", || async {
        scalar_i64(&pool, "SELECT count(*) FROM jobs").await == 0
    })
    .await;
    let took = enqueued.elapsed();
    e.stop().await;
    assert!(took < Duration::from_secs(10), "picked up after {took:?}");
    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM runs WHERE job_id = $1 AND phase = 'done'")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(done, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_a_running_job_back() {
    let db = setup().await;
    let pool = db.pool(5).await;
    let w = Uuid::new_v4();
    let mut h = Recorder::new(&pool, "e1");
    h.sleep = Duration::from_secs(60);
    let aborted = Arc::clone(&h.aborted);
    let e = start(
        engine(
            &pool,
            EngineConfig {
                worker_id: w,
                ..test_engine_config()
            },
            h,
        ),
        Duration::from_millis(200),
    );
    let id = enqueue(&pool, 1, 3).await[0];
    wait_until(Duration::from_secs(10), "the job to start", || async {
        scalar_i64(&pool, "SELECT count(*) FROM runs WHERE phase = 'start'").await == 1
    })
    .await;
    let stopping = tokio::time::Instant::now();
    e.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "shutdown waited for the handler"
    );

    let (state, owner, expires, attempts, due_now): (
        String,
        Option<Uuid>,
        Option<chrono::DateTime<chrono::Utc>>,
        i32,
        bool,
    ) = sqlx::query_as(
        "SELECT state, lease_owner, lease_expires_at, attempts, run_after <= now() FROM jobs
         WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(state, "queued", "released, not left running");
    assert!(owner.is_none() && expires.is_none());
    assert_eq!(attempts, 0, "the interrupted attempt does not count");
    assert!(due_now, "another engine may take it at once");
    let done = scalar_i64(&pool, "SELECT count(*) FROM runs WHERE phase = 'done'").await;
    assert_eq!(done, 0, "the handler did not finish");
    wait_until(
        Duration::from_secs(5),
        "the handler to be aborted",
        || async { aborted.load(Ordering::SeqCst) == 1 },
    )
    .await;

    // Another engine takes it at once and finishes it.
    let e2 = engine(&pool, test_engine_config(), Recorder::new(&pool, "e2"));
    assert_eq!(e2.run_until_idle().await.unwrap(), 1);
    assert_eq!(scalar_i64(&pool, "SELECT count(*) FROM jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_keeps_one_job_and_a_rerun_requested_while_running() {
    let db = setup().await;
    let pool = db.pool(5).await;

    // While queued: a second enqueue with the same key is the same row.
    let first = enqueue_keyed(&pool, 1, 3, Some("k")).await;
    let second = enqueue_keyed(&pool, 1, 3, Some("k")).await;
    assert_eq!(first, second);
    assert_eq!(scalar_i64(&pool, "SELECT count(*) FROM jobs").await, 1);

    // While running: it asks for exactly one more run after this one.
    let mut h = Recorder::new(&pool, "e1");
    h.sleep = Duration::from_millis(800);
    let e = start(
        engine(&pool, test_engine_config(), h),
        Duration::from_secs(5),
    );
    wait_until(Duration::from_secs(10), "the job to start", || async {
        scalar_i64(&pool, "SELECT count(*) FROM runs WHERE phase = 'start'").await == 1
    })
    .await;
    enqueue_keyed(&pool, 1, 3, Some("k")).await;
    enqueue_keyed(&pool, 1, 3, Some("k")).await;
    let (state, rerun): (String, bool) = sqlx::query_as("SELECT state, rerun FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((state.as_str(), rerun), ("running", true));
    wait_until(Duration::from_secs(20), "the queue to drain", || async {
        scalar_i64(&pool, "SELECT count(*) FROM jobs").await == 0
    })
    .await;
    e.stop().await;
    let phases: Vec<String> = sqlx::query_scalar("SELECT phase FROM runs ORDER BY at")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        phases,
        ["start", "done", "start", "done"],
        "one run, then exactly one rerun after it, never two at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_stops_and_writes_nothing() {
    let db = setup().await;
    let pool = db.pool(5).await;
    let mut h = Recorder::new(&pool, "e1");
    h.sleep = Duration::from_secs(60);
    let aborted = Arc::clone(&h.aborted);
    let e = start(
        engine(&pool, test_engine_config(), h),
        Duration::from_secs(1),
    );
    let id = enqueue(&pool, 1, 3).await[0];
    wait_until(Duration::from_secs(10), "the job to start", || async {
        scalar_i64(&pool, "SELECT count(*) FROM runs WHERE phase = 'start'").await == 1
    })
    .await;
    // Someone else holds the job now (as if our lease had expired and
    // another worker had claimed it).
    let thief = Uuid::new_v4();
    sqlx::query("UPDATE jobs SET lease_owner = $2, lease_expires_at = now() + interval '1 hour' WHERE id = $1")
        .bind(id)
        .bind(thief)
        .execute(&pool)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the handler to be aborted",
        || async { aborted.load(Ordering::SeqCst) == 1 },
    )
    .await;
    // Give a wrong outcome write time to happen, then stop (which must not
    // release the thief's lease either).
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.stop().await;
    let (state, owner, attempts): (String, Option<Uuid>, i32) =
        sqlx::query_as("SELECT state, lease_owner, attempts FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), owner, attempts),
        ("running", Some(thief), 1),
        "the new owner's job is untouched"
    );
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM runs WHERE phase = 'done'").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_workers_keep_dying_is_dead_lettered_without_running() {
    let db = setup().await;
    let pool1 = db.pool(5).await;
    let pool2 = db.pool(5).await;
    let mut h1 = Recorder::new(&pool1, "e1");
    h1.sleep = Duration::from_secs(60);
    let e1 = start(
        engine(&pool1, test_engine_config(), h1),
        Duration::from_secs(1),
    );
    // One attempt allowed; the worker running it dies.
    let id = enqueue(&pool1, 1, 1).await[0];
    wait_until(Duration::from_secs(10), "the job to start", || async {
        scalar_i64(&pool1, "SELECT count(*) FROM runs WHERE phase = 'start'").await == 1
    })
    .await;
    e1.task.abort();
    let _ = e1.task.await;

    let h2 = Recorder::new(&pool2, "e2");
    let dead = Arc::clone(&h2.dead_lettered);
    let e2 = start(
        engine(&pool2, test_engine_config(), h2),
        Duration::from_secs(1),
    );
    wait_until(Duration::from_secs(20), "the job to be dead", || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool2)
            .await
            .unwrap()
            == "dead"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    e2.stop().await;
    let last_error: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool2)
            .await
            .unwrap();
    assert!(
        last_error
            .as_deref()
            .unwrap_or("")
            .contains("out of attempts"),
        "{last_error:?}"
    );
    assert_eq!(dead.load(Ordering::SeqCst), 1, "the hook ran once");
    assert_eq!(
        scalar_i64(&pool2, "SELECT count(*) FROM runs WHERE worker = 'e2'").await,
        0,
        "not run again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_then_dead_lettered() {
    let db = setup().await;
    let pool = db.pool(5).await;
    let mut h = Recorder::new(&pool, "e1");
    h.panic = true;
    let dead = Arc::clone(&h.dead_lettered);
    let e = start(
        engine(&pool, test_engine_config(), h),
        Duration::from_secs(1),
    );
    let id = enqueue(&pool, 1, 2).await[0];
    wait_until(Duration::from_secs(20), "the job to be dead", || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
            == "dead"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The engine survived its handler's panics.
    assert!(!e.task.is_finished());
    e.stop().await;
    let (attempts, last_error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, 2);
    assert!(
        last_error.as_deref().unwrap_or("").contains("boom"),
        "{last_error:?}"
    );
    assert_eq!(dead.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_longer_than_its_lease_keeps_it_by_renewal() {
    let db = setup().await;
    let pool1 = db.pool(5).await;
    let pool2 = db.pool(5).await;
    // A 6 s lease (renewed every 1.5 s, given up after 3 s without a
    // renewal): the tests' 2 s lease left 0.7 s of slack per renewal,
    // which a CI machine busy with lab clusters missed (the job was taken
    // over and ran twice). The point stands: the job runs for two and a
    // half leases and keeps its one run.
    let config = || EngineConfig {
        lease: Duration::from_secs(6),
        ..test_engine_config()
    };
    let lease = config().lease;
    let mut h1 = Recorder::new(&pool1, "e1");
    h1.sleep = lease * 2 + lease / 2;
    let mut h2 = Recorder::new(&pool2, "e2");
    h2.sleep = lease * 2 + lease / 2;
    let e1 = start(engine(&pool1, config(), h1), Duration::from_secs(10));
    let e2 = start(engine(&pool2, config(), h2), Duration::from_secs(10));
    let id = enqueue(&pool1, 1, 3).await[0];
    wait_until(Duration::from_secs(60), "the job to finish", || async {
        scalar_i64(&pool1, "SELECT count(*) FROM jobs").await == 0
    })
    .await;
    e1.stop().await;
    e2.stop().await;
    let runs: Vec<(String, i32)> =
        sqlx::query_as("SELECT phase, attempt FROM runs WHERE job_id = $1 ORDER BY at")
            .bind(id)
            .fetch_all(&pool1)
            .await
            .unwrap();
    assert_eq!(
        runs,
        vec![("start".to_string(), 1), ("done".to_string(), 1)],
        "renewed leases keep the other engine off the job"
    );
}

/// A log sink the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_line_a_job_logs_names_its_tenant_cluster_and_operation() {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let sink = Captured::default();
    let writer = sink.clone();
    // This test's thread only (the runtime is single-threaded, so the
    // engine's tasks log here too), as the service's JSON log prints it.
    let _log = tracing_subscriber::fmt()
        .json()
        .with_env_filter("kubeforge=debug")
        .with_span_list(true)
        .with_writer(move || writer.clone())
        .finish()
        .set_default();
    let app = TestApp::new().await;
    let tok = app.token("acme", Role::Editor);
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&tok),
            Some(cluster_body("logged")),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let op = r.body["operation"]["id"].as_str().unwrap().to_string();
    let cluster_id = r.body["cluster"]["id"].as_str().unwrap().to_string();
    app.run_jobs().await;

    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let mut job_lines = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect(line);
        let Some(job) = v["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "job")
        else {
            continue;
        };
        job_lines += 1;
        assert_eq!(job["tenant"], "acme", "{line}");
        assert_eq!(job["cluster"], "logged", "{line}");
        assert_eq!(job["cluster_id"], cluster_id.as_str(), "{line}");
        assert_eq!(job["operation_id"], op.as_str(), "{line}");
    }
    assert!(job_lines >= 2, "the job's lines were not captured:\n{text}");
}
