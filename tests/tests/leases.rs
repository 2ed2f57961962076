//! Leases that cannot run a job twice (issue 13 point 5), on a real
//! Postgres: a worker paused past its lease writes nothing once another
//! engine took the job over (its fenced writes are refused, the effect
//! happens once); a claim's fence outlives even the same owner claiming
//! again; the ledger holds one live machine per (cluster, name); and a
//! worker whose renewals fail gives the job up well before the lease
//! expires.

use axum::http::{Method, StatusCode};
use kubeforge::app::Config;
use kubeforge::context::Role;
use kubeforge::engine::jobs::{Engine, JobError, JobHandler, Outcome};
use kubeforge::engine::lease::{self, Lease};
use kubeforge::engine::reconcile::ClusterReconciler;
use kubeforge::error::Error;
use kubeforge::store::job::{self, Job, KindFilter, NewJob};
use kubeforge::store::machine::{self, NewMachine};
use kubeforge_cluster::pools::MachineRole;
use kubeforge_cluster::MachineType;
use kubeforge_tests::{cluster_body, test_engine_config, TestApp};
use serde_json::json;
use sqlx::PgPool;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

const TENANT: &str = "acme";

async fn scalar_i64(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A cluster `web` (one control-plane machine, pool `default` of 2)
/// reconciled until its machines run; returns its id.
async fn running_cluster(a: &TestApp, token: &str) -> Uuid {
    let r = a
        .call(
            Method::POST,
            "/v1/clusters",
            Some(token),
            Some(cluster_body("web")),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    a.settle().await;
    let id = Uuid::parse_str(r.body["cluster"]["id"].as_str().unwrap()).unwrap();
    let running = scalar_i64(
        &a.pool,
        "SELECT count(*) FROM machines WHERE deleted_at IS NULL AND state = 'running'",
    )
    .await;
    assert_eq!(running, 3, "control plane and two workers run");
    id
}

/// Engine A claims the cluster's reconcile job and is paused inside a
/// provider call (as if its process stopped there: no progress, no
/// renewals) with the pool at size 2. Meanwhile the pool is scaled to 1,
/// A's lease expires, and engine B (another app and engine on the same
/// database and provider) takes the job over and removes one worker.
/// When A resumes it still believes the pool wants 2 and tries to record
/// a replacement worker: that fenced write is refused, so no third worker
/// row and no extra provider create ever exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_worker_past_its_lease_writes_nothing_after_a_takeover() {
    let a = TestApp::new().await;
    let token = a.token(TENANT, Role::Admin);
    let cluster = running_cluster(&a, &token).await;
    let creates_before = a.provider.create_calls.load(Ordering::SeqCst);
    assert_eq!(creates_before, 3);

    // Engine B: its own app, pool and engine on the same database, with
    // the same provider (one world of machines).
    let pool_b = a.db.pool(10).await;
    let (app_b, _) = TestApp::app_with_double(
        pool_b.clone(),
        Arc::clone(&a.provider),
        Config {
            rate_limits: kubeforge::ratelimit::RateLimits::UNLIMITED,
            ..Config::default()
        },
    );
    let engine_b = kubeforge::server::build_engine(&app_b, test_engine_config());

    // A claims the reconcile job by hand (its engine loop, heartbeats
    // included, is what is paused) under a short lease.
    sqlx::query("UPDATE jobs SET run_after = now() WHERE state = 'queued'")
        .execute(&a.pool)
        .await
        .unwrap();
    let lease_a = Duration::from_secs(1);
    let worker_a = Uuid::new_v4();
    let job_a = job::claim(
        &a.pool,
        worker_a,
        lease_a,
        &["lab".to_string()],
        &KindFilter::default(),
    )
    .await
    .unwrap()
    .expect("the reconcile job is due");
    assert_eq!(job_a.kind, "reconcile_cluster");
    let lease = Lease::new(a.pool.clone(), job_a.token());
    let pause = a.provider.pause_next_get();
    let handler = ClusterReconciler::new(a.app.clone());
    let run_a = tokio::spawn({
        let (job, lease) = (job_a.clone(), lease.clone());
        async move { handler.run(&job, &lease).await }
    });
    tokio::time::timeout(Duration::from_secs(10), pause.entered())
        .await
        .expect("A reached the provider");

    // The tenant scales the pool down while A is stopped.
    let r = a
        .call(
            Method::PATCH,
            "/v1/clusters/web/node-pools/default",
            Some(&token),
            Some(json!({ "size": 1 })),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let op = r.body["operation"]["id"].as_str().unwrap().to_string();

    // A's lease runs out; B takes the job over and finishes the scale-down.
    tokio::time::sleep(lease_a + Duration::from_millis(300)).await;
    let ran = engine_b.run_until_idle().await.unwrap();
    assert!(ran >= 1, "B took the job over");
    let fence_now: i64 = sqlx::query_scalar("SELECT fence FROM jobs WHERE id = $1")
        .bind(job_a.id)
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert!(fence_now > job_a.fence, "B's claim moved the fence on");
    let live_workers = |pool: PgPool| async move {
        scalar_i64(
            &pool,
            "SELECT count(*) FROM machines WHERE role = 'worker' AND deleted_at IS NULL",
        )
        .await
    };
    assert_eq!(
        live_workers(a.pool.clone()).await,
        1,
        "B scaled the pool to 1"
    );
    let o = a
        .call(
            Method::GET,
            &format!("/v1/operations/{op}"),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(o.body["state"], "succeeded", "{}", o.text);

    // A wakes up with its stale view: its next write is refused and it stops.
    pause.resume();
    let result = tokio::time::timeout(Duration::from_secs(20), run_a)
        .await
        .expect("A stopped")
        .expect("A's task");
    // The effect happened once: two worker rows ever (one removed), one
    // live, no create beyond the first three; the provider agrees.
    let worker_rows = scalar_i64(
        &a.pool,
        "SELECT count(*) FROM machines WHERE role = 'worker'",
    )
    .await;
    assert_eq!(worker_rows, 2, "A recorded no replacement worker");
    assert_eq!(live_workers(a.pool.clone()).await, 1);
    assert_eq!(
        a.provider.create_calls.load(Ordering::SeqCst),
        creates_before,
        "no machine was created after the takeover"
    );
    let at_provider = a
        .provider
        .machines()
        .iter()
        .filter(|m| m.cluster_id == cluster)
        .count();
    assert_eq!(at_provider, 2, "control plane and one worker");
    // A stopped at its first write after the pause, with a lost lease.
    let err = result.expect_err("A's run fails: its lease is lost");
    assert!(err.message.contains("lease lost"), "{}", err.message);
    assert!(lease.is_lost());
    // Its outcome cannot be recorded either.
    assert!(!job::retry(&a.pool, job_a.token(), Duration::ZERO, "stale")
        .await
        .unwrap());

    // And B's later runs keep it that way.
    sqlx::query("UPDATE jobs SET run_after = now() WHERE state = 'queued'")
        .execute(&a.pool)
        .await
        .unwrap();
    engine_b.run_until_idle().await.unwrap();
    assert_eq!(live_workers(a.pool.clone()).await, 1);
    assert_eq!(
        a.provider.create_calls.load(Ordering::SeqCst),
        creates_before
    );
}

/// Queues one job of `kind` with no payload.
async fn enqueue_one(pool: &PgPool, kind: &str) {
    let mut tx = pool.begin().await.unwrap();
    job::enqueue(
        &mut tx,
        NewJob {
            kind,
            payload: json!({}),
            dedupe_key: None,
            operation_id: None,
            max_attempts: 5,
            provider: None,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Creates the cluster `web` of [`TENANT`] through the API; its id.
async fn create_web(a: &TestApp) -> Uuid {
    let token = a.token(TENANT, Role::Admin);
    let r = a
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&token),
            Some(cluster_body("web")),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    Uuid::parse_str(r.body["cluster"]["id"].as_str().unwrap()).unwrap()
}

/// The fence, not the owner, names a claim: when a job's lease expires
/// and the same worker claims it again, the first claim's lease is lost.
#[tokio::test]
async fn a_fenced_write_needs_this_very_claim() {
    let a = TestApp::new().await;
    enqueue_one(&a.pool, "test_fence").await;
    let only = KindFilter {
        only: vec!["test_fence".into()],
        except: Vec::new(),
    };
    let worker = Uuid::new_v4();
    let lease_for = Duration::from_secs(30);
    let first = job::claim(&a.pool, worker, lease_for, &[], &only)
        .await
        .unwrap()
        .expect("claimed");
    let first_lease = Lease::new(a.pool.clone(), first.token());
    first_lease
        .begin()
        .await
        .expect("held")
        .commit()
        .await
        .unwrap();

    // The lease expires and the same worker claims the job again.
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second'")
        .execute(&a.pool)
        .await
        .unwrap();
    assert!(
        matches!(first_lease.begin().await, Err(Error::LeaseLost { .. })),
        "an expired lease writes nothing"
    );
    let second = job::claim(&a.pool, worker, lease_for, &[], &only)
        .await
        .unwrap()
        .expect("claimed again");
    assert_eq!((second.id, second.owner), (first.id, first.owner));
    assert_eq!(second.fence, first.fence + 1);

    let stale = Lease::new(a.pool.clone(), first.token());
    assert!(matches!(stale.begin().await, Err(Error::LeaseLost { .. })));
    assert!(stale.is_lost(), "lost for good");
    assert!(!job::heartbeat(&a.pool, first.token(), lease_for)
        .await
        .unwrap());
    assert!(!job::retry(&a.pool, first.token(), Duration::ZERO, "x")
        .await
        .unwrap());
    let current = Lease::new(a.pool.clone(), second.token());
    current.begin().await.expect("held").commit().await.unwrap();
    assert!(job::heartbeat(&a.pool, second.token(), lease_for)
        .await
        .unwrap());
}

/// One live machine per (cluster, name): the index refuses a second
/// row, the ledger's insert adopts the existing one (`false`), and a
/// name is free again once its machine is deleted.
#[tokio::test]
async fn the_ledger_refuses_a_second_live_machine_of_a_name() {
    let a = TestApp::new().await;
    let cluster = create_web(&a).await;
    let new = |id| NewMachine {
        id,
        tenant: TENANT,
        cluster_id: cluster,
        node_pool_id: None,
        role: MachineRole::ControlPlane,
        name: "web-cp-0",
        provider: "lab",
        machine_type: MachineType::SMALL,
    };
    let first = Uuid::now_v7();
    assert!(machine::insert_pending(&a.pool, new(first)).await.unwrap());
    assert!(
        !machine::insert_pending(&a.pool, new(Uuid::now_v7()))
            .await
            .unwrap(),
        "the second insert adopts the first"
    );
    // The index itself, for any writer.
    let raw = sqlx::query(
        "INSERT INTO machines (id, tenant, cluster_id, role, name, provider, machine_type, state)
         VALUES ($1, $2, $3, 'control_plane', 'web-cp-0', 'lab', 'small', 'pending')",
    )
    .bind(Uuid::now_v7())
    .bind(TENANT)
    .bind(cluster)
    .execute(&a.pool)
    .await
    .expect_err("a second live web-cp-0 is refused");
    assert!(kubeforge::store::is_unique_violation(&raw), "{raw}");
    assert_eq!(
        scalar_i64(&a.pool, "SELECT count(*) FROM machines").await,
        1
    );
    // Deleted machines do not hold their name.
    machine::mark_deleted(&a.pool, first).await.unwrap();
    assert!(machine::insert_pending(&a.pool, new(Uuid::now_v7()))
        .await
        .unwrap());
}

/// Blocks until cancelled; notes when it started and when its future was
/// dropped (the engine cancelled it).
#[derive(Default)]
struct Blocker {
    started: Mutex<Option<Instant>>,
    cancelled: Arc<Mutex<Option<Instant>>>,
}

struct OnDrop(Arc<Mutex<Option<Instant>>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// `JobHandler` is an `#[async_trait]` trait; this crate does not depend on
// `async-trait`, so the impl is written in its expanded form.
impl JobHandler for Blocker {
    fn run<'s, 'j, 'l, 'f>(
        &'s self,
        _job: &'j Job,
        _lease: &'l Lease,
    ) -> BoxFuture<'f, Result<Outcome, JobError>>
    where
        's: 'f,
        'j: 'f,
        'l: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            *self.started.lock().unwrap() = Some(Instant::now());
            let _watch = OnDrop(Arc::clone(&self.cancelled));
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        })
    }
}

/// Renewals that cannot get through (here: the job row is locked by
/// someone else, so the renewing UPDATE waits) make the worker give the
/// job up after half the lease: the handler is cancelled while the lease
/// it last renewed still has about half its time to run, so no other
/// engine can have claimed the job yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_renewals_fail_gives_up_before_the_lease_expires() {
    let a = TestApp::new().await;
    let lease_for = Duration::from_secs(4);
    let blocker = Arc::new(Blocker::default());
    let mut engine = Engine::new(
        a.pool.clone(),
        kubeforge::engine::jobs::EngineConfig {
            lease: lease_for,
            ..test_engine_config()
        },
        Arc::new(kubeforge::metrics::Metrics::new().unwrap()),
    );
    engine.register("test_block", Arc::clone(&blocker) as Arc<dyn JobHandler>);
    enqueue_one(&a.pool, "test_block").await;

    let (stop, rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(engine.run(rx, Duration::from_secs(1)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocker.started.lock().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the job started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Hold the job row: every renewal from now on waits, then times out.
    let mut holder = a.pool.begin().await.unwrap();
    let (id, expires): (i64, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT id, lease_expires_at FROM jobs FOR SHARE")
            .fetch_one(&mut *holder)
            .await
            .unwrap();
    let held_at = Instant::now();

    while blocker.cancelled.lock().unwrap().is_none() {
        assert!(
            held_at.elapsed() < lease_for * 2,
            "the handler was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled_after = held_at.elapsed();
    // Still within the lease the database holds for this worker.
    let still_held: bool = sqlx::query_scalar("SELECT $1 > clock_timestamp()")
        .bind(expires)
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert!(
        still_held,
        "cancelled after {cancelled_after:?}, past the lease (expiring {expires})"
    );
    assert!(
        cancelled_after <= lease::give_up_after(lease_for) + Duration::from_millis(700),
        "gave up after {cancelled_after:?}, not about half the lease"
    );
    holder.rollback().await.unwrap();
    // Nothing recorded the attempt: the job waits for its lease to expire.
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(state, "running");
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
}

/// A cluster's PKI is created once even when two workers race to make it
/// (one of them, say, paused past its lease between finding none and
/// storing its own): both get the same CA, and only one created it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_racing_for_a_pki_keep_one_ca() {
    let a = TestApp::new().await;
    let id = create_web(&a).await;
    let c = kubeforge::store::cluster::get_any(&a.pool, id)
        .await
        .unwrap()
        .expect("cluster");
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let (app, c) = (a.app.clone(), c.clone());
            tokio::spawn(async move {
                kubeforge::store::pki::ensure(&app.pool, &app.secrets, &c)
                    .await
                    .expect("ensure")
            })
        })
        .collect();
    let mut cas = std::collections::BTreeSet::new();
    let mut created = 0;
    for r in racers {
        let (pki, made) = r.await.unwrap();
        cas.insert(pki.ca.cert_pem);
        created += usize::from(made);
    }
    assert_eq!(created, 1, "one worker created the PKI");
    assert_eq!(cas.len(), 1, "every worker got the same CA");
    let (pki, made) = kubeforge::store::pki::ensure(&a.app.pool, &a.app.secrets, &c)
        .await
        .unwrap();
    assert!(!made);
    assert!(cas.contains(&pki.ca.cert_pem), "the stored CA is that one");
}
