//! The job queue table. A job is claimed with `FOR UPDATE SKIP LOCKED`
//! under a lease (owner + expiry) that the worker renews while it runs;
//! every later write is fenced by the owner, so a worker that lost its
//! lease cannot complete or fail a job someone else has retaken.

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
    /// The lease owner that claimed it (the engine's worker id): a handler
    /// that writes outside the queue fences those writes with it
    /// ([`holds_lease`]).
    pub owner: Uuid,
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
                attempts = jobs.attempts + 1, rerun = false, updated_at = now()
         FROM next WHERE jobs.id = next.id
         RETURNING jobs.id, jobs.kind, jobs.payload, jobs.dedupe_key, jobs.operation_id,
                   jobs.attempts, jobs.max_attempts, jobs.enqueued_at, jobs.run_after,
                   jobs.lease_owner AS "owner!""#,
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

/// Whether `owner` still holds job `id`, taking a share lock on the row
/// until the transaction ends: a write made in the same transaction after
/// a `true` cannot race a takeover (a new claim must lock the row first).
pub async fn holds_lease(conn: &mut PgConnection, id: i64, owner: Uuid) -> Result<bool> {
    let held = sqlx::query_scalar!(
        r#"SELECT 1 AS "one!" FROM jobs
         WHERE id = $1 AND lease_owner = $2 AND state = 'running' AND lease_expires_at > now()
         FOR SHARE"#,
        id,
        owner
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(held.is_some())
}

/// Extends the lease; false if this owner no longer holds the job.
pub async fn heartbeat(
    db: impl PgExecutor<'_>,
    id: i64,
    owner: Uuid,
    lease: Duration,
) -> Result<bool> {
    let n = sqlx::query!(
        "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3)
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        id,
        owner,
        secs(lease)
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The job is done. It is deleted, unless someone asked for another run
/// while it ran, in which case it is queued again at once. False if the
/// lease was lost.
pub async fn complete(db: &mut PgConnection, id: i64, owner: Uuid) -> Result<bool> {
    let deleted = sqlx::query!(
        "DELETE FROM jobs WHERE id = $1 AND lease_owner = $2 AND state = 'running' AND NOT rerun",
        id,
        owner
    )
    .execute(&mut *db)
    .await?
    .rows_affected();
    if deleted == 1 {
        return Ok(true);
    }
    requeue(db, id, owner, Duration::ZERO).await
}

/// The job wants to run again after `delay` (a level-triggered re-check):
/// attempts reset, as this is not a failure.
pub async fn requeue(
    db: impl PgExecutor<'_>,
    id: i64,
    owner: Uuid,
    delay: Duration,
) -> Result<bool> {
    let n = sqlx::query!(
        "UPDATE jobs SET state = 'queued', attempts = 0, last_error = NULL,
                run_after = CASE WHEN rerun THEN now() ELSE now() + make_interval(secs => $3) END,
                enqueued_at = now(), rerun = false, lease_owner = NULL, lease_expires_at = NULL,
                updated_at = now()
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        id,
        owner,
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
    id: i64,
    owner: Uuid,
    delay: Duration,
    error: &str,
) -> Result<bool> {
    let n = sqlx::query!(
        "UPDATE jobs SET state = 'queued', last_error = $4,
                run_after = now() + make_interval(secs => $3), rerun = false,
                lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        id,
        owner,
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
pub async fn dead_letter(
    db: impl PgExecutor<'_>,
    id: i64,
    owner: Uuid,
    error: &str,
) -> Result<bool> {
    let n = sqlx::query!(
        "UPDATE jobs SET state = CASE WHEN rerun THEN 'queued' ELSE 'dead' END,
                attempts = CASE WHEN rerun THEN 0 ELSE attempts END,
                run_after = now(), rerun = false, last_error = $3, lease_owner = NULL,
                lease_expires_at = NULL, updated_at = now()
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        id,
        owner,
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
