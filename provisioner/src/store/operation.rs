//! Operations: one per accepted request, with the steps the reconciler
//! moves through and a typed error when it ends badly.

use chrono::{DateTime, Utc};
use serde_json::Value as JsonValue;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::context::OpContext;
use crate::error::{Error, Result};
use crate::metrics::FinishedOperation;

pub use kubeforge_cluster::api::{OperationError, Step};
use kubeforge_cluster::operations::{pool_step, OperationKind, Progress, Step as StepName};

#[derive(Debug, Clone)]
pub struct Operation {
    pub id: Uuid,
    pub tenant: String,
    pub cluster_id: Uuid,
    pub node_pool_id: Option<Uuid>,
    pub kind: OperationKind,
    pub state: Progress,
    pub target_generation: i64,
    pub error: Option<OperationError>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<Step>,
}

struct OperationRecord {
    id: Uuid,
    tenant: String,
    cluster_id: Uuid,
    node_pool_id: Option<Uuid>,
    r#type: String,
    state: String,
    target_generation: i64,
    error: Option<JsonValue>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl OperationRecord {
    /// The ledger's CHECK constraint admits only the states [`Progress`]
    /// knows, and only this service writes kinds; anything else is a
    /// corrupt row, refused rather than guessed at.
    fn into_operation(self, steps: Vec<Step>) -> Result<Operation> {
        let corrupt = |what: &str, value: &str| {
            Error::Internal(anyhow::anyhow!(
                "operation {}: unknown {what} {value:?} in the ledger",
                self.id
            ))
        };
        Ok(Operation {
            kind: OperationKind::parse(&self.r#type)
                .ok_or_else(|| corrupt("kind", &self.r#type))?,
            state: Progress::parse(&self.state).ok_or_else(|| corrupt("state", &self.state))?,
            id: self.id,
            tenant: self.tenant,
            cluster_id: self.cluster_id,
            node_pool_id: self.node_pool_id,
            target_generation: self.target_generation,
            error: self.error.and_then(|e| serde_json::from_value(e).ok()),
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            steps,
        })
    }
}

/// Creates a pending operation with its planned steps.
pub async fn insert(
    conn: &mut PgConnection,
    ctx: &OpContext,
    cluster_id: Uuid,
    node_pool_id: Option<Uuid>,
    kind: OperationKind,
    target_generation: i64,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query!(
        "INSERT INTO operations (id, tenant, cluster_id, node_pool_id, type, state, target_generation)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
        id,
        ctx.tenant,
        cluster_id,
        node_pool_id,
        kind.as_str(),
        target_generation
    )
    .execute(&mut *conn)
    .await?;
    for (i, step) in kind.steps().iter().enumerate() {
        sqlx::query!(
            "INSERT INTO operation_steps (operation_id, position, name, state)
             VALUES ($1, $2, $3, 'pending')",
            id,
            i as i32,
            step.as_str()
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(id)
}

/// Adds a pending `node_pool/<pool>` step per pool to a cluster
/// creation, after its fixed steps: the creation is done when these pools
/// are, too.
pub async fn add_pool_steps(conn: &mut PgConnection, id: Uuid, pools: &[&str]) -> Result<()> {
    for pool in pools {
        sqlx::query!(
            "INSERT INTO operation_steps (operation_id, position, name, state)
             SELECT $1, COALESCE(max(position), -1) + 1, $2, 'pending'
               FROM operation_steps WHERE operation_id = $1",
            id,
            pool_step(pool)
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn steps(db: &mut PgConnection, id: Uuid) -> Result<Vec<Step>> {
    let rows = sqlx::query!(
        "SELECT name, state, message, error, started_at, finished_at FROM operation_steps
         WHERE operation_id = $1 ORDER BY position",
        id
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Step {
            name: r.name,
            state: r.state,
            message: r.message,
            started_at: r.started_at,
            finished_at: r.finished_at,
            error: r.error.and_then(|e| serde_json::from_value(e).ok()),
        })
        .collect())
}

/// An operation of the caller's tenant.
pub async fn get(conn: &mut PgConnection, ctx: &OpContext, id: Uuid) -> Result<Operation> {
    let rec = sqlx::query_as!(
        OperationRecord,
        "SELECT id, tenant, cluster_id, node_pool_id, type, state, target_generation, error,
                created_at, started_at, finished_at
         FROM operations WHERE tenant = $1 AND id = $2",
        ctx.tenant,
        id
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::not_found("operation", id.to_string()))?;
    let steps = steps(conn, id).await?;
    rec.into_operation(steps)
}

/// A cluster's operations, newest first.
pub async fn list(
    conn: &mut PgConnection,
    ctx: &OpContext,
    cluster_id: Uuid,
    limit: i64,
) -> Result<Vec<Operation>> {
    let recs = sqlx::query_as!(
        OperationRecord,
        "SELECT id, tenant, cluster_id, node_pool_id, type, state, target_generation, error,
                created_at, started_at, finished_at
         FROM operations WHERE tenant = $1 AND cluster_id = $2
         ORDER BY created_at DESC, id DESC LIMIT $3",
        ctx.tenant,
        cluster_id,
        limit
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(recs.len());
    for r in recs {
        let s = steps(conn, r.id).await?;
        out.push(r.into_operation(s)?);
    }
    Ok(out)
}

/// Operations of a cluster that have not finished, oldest first.
pub async fn list_active(conn: &mut PgConnection, cluster_id: Uuid) -> Result<Vec<Operation>> {
    let recs = sqlx::query_as!(
        OperationRecord,
        "SELECT id, tenant, cluster_id, node_pool_id, type, state, target_generation, error,
                created_at, started_at, finished_at
         FROM operations WHERE cluster_id = $1 AND state IN ('pending', 'running')
         ORDER BY created_at, id",
        cluster_id
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(recs.len());
    for r in recs {
        let s = steps(conn, r.id).await?;
        out.push(r.into_operation(s)?);
    }
    Ok(out)
}

/// Marks an operation running (first time only).
pub async fn start(db: impl PgExecutor<'_>, id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE operations SET state = 'running', started_at = COALESCE(started_at, now())
         WHERE id = $1 AND state = 'pending'",
        id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Ends an operation, once: a finished operation is never reopened. What
/// ended, for the metrics; `None` when it had ended already.
pub async fn finish(
    db: impl PgExecutor<'_>,
    id: Uuid,
    error: Option<&OperationError>,
) -> Result<Option<FinishedOperation>> {
    let result = if error.is_some() {
        Progress::Failed
    } else {
        Progress::Succeeded
    }
    .as_str();
    let error = error
        .map(serde_json::to_value)
        .transpose()
        .map_err(anyhow::Error::from)?;
    let ended = sqlx::query!(
        r#"UPDATE operations SET state = $2, error = $3, finished_at = now(),
                started_at = COALESCE(started_at, now())
         WHERE id = $1 AND state IN ('pending', 'running')
         RETURNING type AS "kind!",
                   EXTRACT(EPOCH FROM finished_at - created_at)::float8 AS "seconds!""#,
        id,
        result,
        error
    )
    .fetch_optional(db)
    .await?;
    Ok(ended.map(|r| FinishedOperation {
        kind: r.kind,
        result,
        seconds: r.seconds,
    }))
}

/// Records a step's progress. `running` sets started_at once; `succeeded`
/// and `failed` set finished_at; a later `running` after a failure (a
/// retry) clears the old error.
pub async fn set_step(
    db: impl PgExecutor<'_>,
    id: Uuid,
    step: StepName,
    state: Progress,
    message: Option<&str>,
    error: Option<&OperationError>,
) -> Result<()> {
    set_named_step(db, id, step.as_str(), state, message, error).await
}

/// [`set_step`] for a step named at run time (a cluster creation's
/// `node_pool/<pool>` steps, see [`add_pool_steps`]).
pub async fn set_named_step(
    db: impl PgExecutor<'_>,
    id: Uuid,
    step: &str,
    state: Progress,
    message: Option<&str>,
    error: Option<&OperationError>,
) -> Result<()> {
    let error = error
        .map(serde_json::to_value)
        .transpose()
        .map_err(anyhow::Error::from)?;
    sqlx::query!(
        "UPDATE operation_steps SET
             state = $3,
             message = $4,
             error = $5,
             started_at = CASE WHEN $3 IN ('running', 'succeeded', 'failed')
                               THEN COALESCE(started_at, now()) ELSE started_at END,
             finished_at = CASE WHEN $3 IN ('succeeded', 'failed')
                                THEN COALESCE(finished_at, now()) ELSE NULL END
         WHERE operation_id = $1 AND name = $2
           AND NOT (state = $3 AND message IS NOT DISTINCT FROM $4
                    AND error IS NOT DISTINCT FROM $5)",
        id,
        step,
        state.as_str(),
        message,
        error
    )
    .execute(db)
    .await?;
    Ok(())
}
