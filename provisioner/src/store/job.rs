//! The job queue table. A job is claimed with `FOR UPDATE SKIP LOCKED`
//! under a lease (owner + expiry) that the worker renews while it runs.
//! Every claim also moves the row's fencing token (`fence`) on: the
//! [`LeaseToken`] (job, owner, fence) a claim returns names that one
//! claim, and every later write on the job's behalf is conditioned on it,
//! so a worker that lost its lease (even to itself, claiming the job
//! again) cannot renew, complete or fail it, nor write anything fenced by
//! [`holds_lease`] (see `engine::lease`).

use chrono::{DateTime, Utc};
use serde_json::Value as JsonValue;
use sqlx::{PgConnection, PgExecutor};
use std::time::Duration;
use uuid::Uuid;

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: JsonValue,
    pub dedupe_key: Option<String>,
    pub operation_id: Option<Uuid>,
    /// Attempts including this one.
    pub attempts: i32,
    pub max_attempts: i32,
    pub enqueued_at: DateTime<Utc>,
    pub run_after: DateTime<Utc>,
    /// The lease owner that claimed it (the engine's worker id).
    pub owner: Uuid,
    /// This claim's fencing token: one more than the claim before it.
    pub fence: i64,
}

impl Job {
    /// The cluster the job's payload names (`cluster_id`), if any.
    pub fn cluster_id(&self) -> Option<Uuid> {
        self.payload
            .get("cluster_id")
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::parse_str(s).ok())
    }

    /// The claim this row was returned by: what every write on the job's
    /// behalf is fenced with.
    pub fn token(&self) -> LeaseToken {
        LeaseToken {
            job_id: self.id,
            owner: self.owner,
            fence: self.fence,
        }
    }
}

/// One claim of one job: the worker that made it and the fence it got.
/// A later claim (by anyone, this worker included) has a higher fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseToken {
    pub job_id: i64,
    pub owner: Uuid,
    pub fence: i64,
}

/// Which kinds a claim may take: those in `only` (all kinds when empty),
/// except those in `except`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindFilter {
    pub only: Vec<String>,
    pub except: Vec<String>,
}

/// What to enqueue.
pub struct NewJob<'a> {
    pub kind: &'a str,
    pub payload: JsonValue,
    /// At most one job per key: a second enqueue while one is queued just
    /// makes it due now; while one runs, it asks for one more run after.
    pub dedupe_key: Option<&'a str>,
    pub operation_id: Option<Uuid>,
    pub max_attempts: i32,
    /// The provider kind the job needs: only replicas that run it claim
    /// the job. None: any replica may.
    pub provider: Option<&'a str>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Enqueues (or re-arms) a job and wakes workers when the transaction commits.
pub async fn enqueue(conn: &mut PgConnection, job: NewJob<'_>) -> Result<()> {
    sqlx::query!(
        "INSERT INTO jobs (kind, payload, dedupe_key, operation_id, state, max_attempts, provider)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6)
         ON CONFLICT (dedupe_key) DO UPDATE SET
             payload = EXCLUDED.payload,
             provider = EXCLUDED.provider,
             operation_id = COALESCE(EXCLUDED.operation_id, jobs.operation_id),
             rerun = jobs.rerun OR jobs.state = 'running',
             state = CASE WHEN jobs.state = 'dead' THEN 'queued' ELSE jobs.state END,
             attempts = CASE WHEN jobs.state = 'running' THEN jobs.attempts ELSE 0 END,
             run_after = CASE WHEN jobs.state = 'running' THEN jobs.run_after ELSE now() END,
             enqueued_at = CASE WHEN jobs.state = 'running' THEN jobs.enqueued_at ELSE now() END,
             updated_at = now()",
        job.kind,
        job.payload,
        job.dedupe_key,
        job.operation_id,
        job.max_attempts,
        job.provider
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!("SELECT pg_notify($1, $2)", super::JOBS_CHANNEL, job.kind)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Enqueues a job unless one with its dedupe key exists (queued, running
/// or dead): unlike [`enqueue`], an existing job is left exactly as it is.
/// For long-running jobs that something re-ensures periodically.
pub async fn ensure(conn: &mut PgConnection, job: NewJob<'_>) -> Result<()> {
    let inserted = sqlx::query!(
        "INSERT INTO jobs (kind, payload, dedupe_key, operation_id, state, max_attempts, provider)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6)
         ON CONFLICT (dedupe_key) DO NOTHING",
        job.kind,
        job.payload,
        job.dedupe_key,
        job.operation_id,
        job.max_attempts,
        job.provider
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        sqlx::query!("SELECT pg_notify($1, $2)", super::JOBS_CHANNEL, job.kind)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Claims the next due job (or one whose lease expired) for `owner`,
/// among the jobs that need no provider or one of `providers`, of the
/// kinds `kinds` lets through.
pub async fn claim(
    db: impl PgExecutor<'_>,
    owner: Uuid,
    lease: Duration,
    providers: &[String],
    kinds: &KindFilter,
) -> Result<Option<Job>> {
    let job = sqlx::query_as!(
        Job,
        r#"WITH next AS (
             SELECT id FROM jobs
             WHERE ((state = 'queued' AND run_after <= now())
                    OR (state = 'running' AND lease_expires_at < now()))
               AND (provider IS NULL OR provider = ANY($3))
               AND (cardinality($4::text[]) = 0 OR kind = ANY($4))
               AND NOT (kind = ANY($5))
             ORDER BY run_after, id
             LIMIT 1
             FOR UPDATE SKIP LOCKED
         )
         UPDATE jobs SET state = 'running', lease_owner = $1,
                lease_expires_at = now() + make_interval(secs => $2),
                attempts = jobs.attempts + 1, rerun = false, fence = jobs.fence + 1,
                updated_at = now()
         FROM next WHERE jobs.id = next.id
         RETURNING jobs.id, jobs.kind, jobs.payload, jobs.dedupe_key, jobs.operation_id,
                   jobs.attempts, jobs.max_attempts, jobs.enqueued_at, jobs.run_after,
                   jobs.lease_owner AS "owner!", jobs.fence"#,
        owner,
        secs(lease),
        providers,
        &kinds.only,
        &kinds.except
    )
    .fetch_optional(db)
    .await?;
    Ok(job)
}

/// Whether the claim `lease` still holds its job (same owner and fence,
/// running, lease not expired), taking a share lock on the row until the
/// transaction ends: a write made in the same transaction after a `true`
/// cannot race a takeover (a new claim must lock the row `FOR UPDATE`
/// first, so it waits for, or skips, the row until this commits).
pub async fn holds_lease(conn: &mut PgConnection, lease: LeaseToken) -> Result<bool> {
    let held = sqlx::query_scalar!(
        r#"SELECT 1 AS "one!" FROM jobs
         WHERE id = $1 AND lease_owner = $2 AND fence = $3 AND state = 'running'
           AND lease_expires_at > now()
         FOR SHARE"#,
        lease.job_id,
        lease.owner,
        lease.fence
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(held.is_some())
}

/// Extends the lease; false if this owner no longer holds the job.
pub async fn heartbeat(
    db: impl PgExecutor<'_>,
    lease: LeaseToken,
    duration: Duration,
) -> Result<bool> {
    let n = sqlx::query!(
        "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $4)
         WHERE id = $1 AND lease_owner = $2 AND fence = $3 AND state = 'running'",
        lease.job_id,
        lease.owner,
        lease.fence,
        secs(duration)
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The job is done. It is deleted, unless someone asked for another run
/// while it ran, in which case it is queued again at once. False if the
/// lease was lost.
pub async fn complete(db: &mut PgConnection, lease: LeaseToken) -> Result<bool> {
    let deleted = sqlx::query!(
        "DELETE FROM jobs
         WHERE id = $1 AND lease_owner = $2 AND fence = $3 AND state = 'running' AND NOT rerun",
        lease.job_id,
        lease.owner,
        lease.fence
    )
    .execute(&mut *db)
    .await?
    .rows_affected();
    if deleted == 1 {
        return Ok(true);
    }
    requeue(db, lease, Duration::ZERO).await
}

/// The job wants to run again after `delay` (a level-triggered re-check):
/// attempts reset, as this is not a failure.
pub async fn requeue(db: impl PgExecutor<'_>, lease: LeaseToken, delay: Duration) -> Result<bool> {
    let n = sqlx::query!(
        "UPDATE jobs SET state = 'queued', attempts = 0, last_error = NULL,
                run_after = CASE WHEN rerun THEN now() ELSE now() + make_interval(secs => $4) END,
                enqueued_at = now(), rerun = false, lease_owner = NULL, lease_expires_at = NULL,
                updated_at = now()
         WHERE id = $1 AND lease_owner = $2 AND fence = $3 AND state = 'running'",
        lease.job_id,
        lease.owner,
        lease.fence,
        secs(delay)
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The attempt failed; try again after `delay`.
pub async fn retry(
    db: impl PgExecutor<'_>,
    lease: LeaseToken,
    delay: Duration,
    error: &str,
) -> Result<bool> {
    let n = sqlx::query!(
        "UPDATE jobs SET state = 'queued', last_error = $5,
                run_after = now() + make_interval(secs => $4), rerun = false,
                lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
         WHERE id = $1 AND lease_owner = $2 AND fence = $3 AND state = 'running'",
        lease.job_id,
        lease.owner,
        lease.fence,
        secs(delay),
        error
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Out of attempts: park it in the dead-letter state. If a new request
/// asked for another run meanwhile (`rerun`), the job is queued afresh
/// instead, so that request's operation is never left behind a dead job.
pub async fn dead_letter(db: impl PgExecutor<'_>, lease: LeaseToken, error: &str) -> Result<bool> {
    let n = sqlx::query!(
        "UPDATE jobs SET state = CASE WHEN rerun THEN 'queued' ELSE 'dead' END,
                attempts = CASE WHEN rerun THEN 0 ELSE attempts END,
                run_after = now(), rerun = false, last_error = $4, lease_owner = NULL,
                lease_expires_at = NULL, updated_at = now()
         WHERE id = $1 AND lease_owner = $2 AND fence = $3 AND state = 'running'",
        lease.job_id,
        lease.owner,
        lease.fence,
        error
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Shutdown: hands this owner's running jobs back to the queue at once,
/// not counting the interrupted attempt.
pub async fn release_all(db: impl PgExecutor<'_>, owner: Uuid) -> Result<u64> {
    Ok(sqlx::query!(
        "UPDATE jobs SET state = 'queued', run_after = now(), attempts = GREATEST(attempts - 1, 0),
                lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
         WHERE lease_owner = $1 AND state = 'running'",
        owner
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// Queue depth by state: (queued, running, dead).
pub async fn depth(db: impl PgExecutor<'_>) -> Result<(i64, i64, i64)> {
    let r = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE state = 'queued') AS "queued!",
                  count(*) FILTER (WHERE state = 'running') AS "running!",
                  count(*) FILTER (WHERE state = 'dead') AS "dead!"
           FROM jobs"#
    )
    .fetch_one(db)
    .await?;
    Ok((r.queued, r.running, r.dead))
}
