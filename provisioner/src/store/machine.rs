//! The machine ledger: a row exists before any provider call, and its id is
//! the idempotency token the provider receives.

use chrono::{DateTime, Utc};
use kubeforge_cluster::pools::{MachineRole, MachineState};
use kubeforge_cluster::MachineType;
use serde_json::Value as JsonValue;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::context::OpContext;
use crate::error::{Error, Result};

/// A machine in the ledger, typed.
#[derive(Debug, Clone)]
pub struct Machine {
    pub id: Uuid,
    pub tenant: String,
    pub cluster_id: Uuid,
    pub node_pool_id: Option<Uuid>,
    pub role: MachineRole,
    pub name: String,
    /// The provider kind that made it.
    pub provider: String,
    pub machine_type: MachineType,
    pub state: MachineState,
    pub provider_id: Option<String>,
    pub address: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Pinned SSH host key (`TYPE BASE64`).
    pub host_key: Option<String>,
    /// What the engine last saw of this machine's Node in the tenant
    /// cluster (`joining`, `ready`, `not_ready`, `draining`, `missing`);
    /// None until it has looked.
    pub node_state: Option<String>,
    /// Since when the node has been unhealthy, without interruption: the
    /// clock auto-repair compares with the pool's threshold.
    pub unhealthy_since: Option<DateTime<Utc>>,
    pub unhealthy_reason: Option<String>,
    /// When the drain of a machine being removed began: the clock the
    /// pool's drain timeout runs on.
    pub drain_started_at: Option<DateTime<Utc>>,
    /// When the engine first saw the node Ready (the join is over).
    pub joined_at: Option<DateTime<Utc>>,
    /// Where a new node's time went: its machine first running, its
    /// bootstrap started, its Node registered, its Ready condition first
    /// True (the cluster's own timestamps where it has them).
    pub timeline: Timeline,
    /// A control-plane member: what the engine last saw of its systemd
    /// units and the component restarts it counted recently
    /// (`kubeforge_cluster::restarts::MemberRestarts`); None until the
    /// first look.
    pub component_restarts: Option<JsonValue>,
    /// A worker: the digest of the pod-network files it last applied
    /// (`kubeforge_cluster::routes::digest`); None until applied.
    pub network_sha: Option<String>,
}

/// A `machines` row as stored: parsed into a [`Machine`] right away.
struct MachineRow {
    id: Uuid,
    tenant: String,
    cluster_id: Uuid,
    node_pool_id: Option<Uuid>,
    role: String,
    name: String,
    provider: String,
    machine_type: String,
    state: String,
    provider_id: Option<String>,
    address: Option<String>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    host_key: Option<String>,
    node_state: Option<String>,
    unhealthy_since: Option<DateTime<Utc>>,
    unhealthy_reason: Option<String>,
    drain_started_at: Option<DateTime<Utc>>,
    joined_at: Option<DateTime<Utc>>,
    component_restarts: Option<JsonValue>,
    running_at: Option<DateTime<Utc>>,
    bootstrap_started_at: Option<DateTime<Utc>>,
    registered_at: Option<DateTime<Utc>>,
    ready_at: Option<DateTime<Utc>>,
    network_sha: Option<String>,
}

pub use kubeforge_cluster::operations::Timeline;

impl TryFrom<MachineRow> for Machine {
    type Error = Error;

    /// The ledger's CHECK constraints admit only the states and roles the
    /// enums know, and the API only known machine types; anything else is
    /// a corrupt row, refused rather than guessed at.
    fn try_from(r: MachineRow) -> Result<Self> {
        let corrupt = |what: &str, value: &str| {
            Error::Internal(anyhow::anyhow!(
                "machine {}: unknown {what} {value:?} in the ledger",
                r.id
            ))
        };
        Ok(Machine {
            role: MachineRole::parse(&r.role).ok_or_else(|| corrupt("role", &r.role))?,
            state: MachineState::parse(&r.state).ok_or_else(|| corrupt("state", &r.state))?,
            machine_type: MachineType::parse(&r.machine_type)
                .map_err(|_| corrupt("machine type", &r.machine_type))?,
            id: r.id,
            tenant: r.tenant,
            cluster_id: r.cluster_id,
            node_pool_id: r.node_pool_id,
            name: r.name,
            provider: r.provider,
            provider_id: r.provider_id,
            address: r.address,
            last_error: r.last_error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            deleted_at: r.deleted_at,
            host_key: r.host_key,
            node_state: r.node_state,
            unhealthy_since: r.unhealthy_since,
            unhealthy_reason: r.unhealthy_reason,
            drain_started_at: r.drain_started_at,
            joined_at: r.joined_at,
            component_restarts: r.component_restarts,
            network_sha: r.network_sha,
            timeline: Timeline {
                requested: r.created_at,
                running: r.running_at,
                bootstrap_started: r.bootstrap_started_at,
                registered: r.registered_at,
                ready: r.ready_at,
            },
        })
    }
}

fn parse_rows(rows: Vec<MachineRow>) -> Result<Vec<Machine>> {
    rows.into_iter().map(Machine::try_from).collect()
}

/// Values for a new ledger row.
pub struct NewMachine<'a> {
    pub id: Uuid,
    pub tenant: &'a str,
    pub cluster_id: Uuid,
    pub node_pool_id: Option<Uuid>,
    pub role: MachineRole,
    pub name: &'a str,
    pub provider: &'a str,
    pub machine_type: MachineType,
}

/// Records intent: committed before the provider is asked for the machine.
///
/// A cluster has at most one live machine of a name (the partial unique
/// index `machines_live_name`). If one exists already, nothing is
/// inserted and the answer is `false`: someone recorded that machine after
/// the caller read the ledger, and the existing row is the machine (the
/// caller adopts it by reading the ledger again, never makes a second).
pub async fn insert_pending(db: impl PgExecutor<'_>, m: NewMachine<'_>) -> Result<bool> {
    let inserted = sqlx::query!(
        "INSERT INTO machines (id, tenant, cluster_id, node_pool_id, role, name, provider,
                               machine_type, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending')
         ON CONFLICT (cluster_id, name) WHERE deleted_at IS NULL DO NOTHING",
        m.id,
        m.tenant,
        m.cluster_id,
        m.node_pool_id,
        m.role.as_str(),
        m.name,
        m.provider,
        m.machine_type.as_str()
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Tenant-facing list of a cluster's machines that are not yet deleted.
pub async fn list(
    db: impl PgExecutor<'_>,
    ctx: &OpContext,
    cluster_id: Uuid,
) -> Result<Vec<Machine>> {
    parse_rows(
        sqlx::query_as!(
            MachineRow,
            "SELECT * FROM machines WHERE tenant = $1 AND cluster_id = $2 AND deleted_at IS NULL
         ORDER BY created_at, id",
            ctx.tenant,
            cluster_id
        )
        .fetch_all(db)
        .await?,
    )
}

/// Every ledger row of a cluster not yet deleted, for the reconciler.
pub async fn list_any(db: impl PgExecutor<'_>, cluster_id: Uuid) -> Result<Vec<Machine>> {
    parse_rows(
        sqlx::query_as!(
            MachineRow,
            "SELECT * FROM machines WHERE cluster_id = $1 AND deleted_at IS NULL
         ORDER BY created_at, id",
            cluster_id
        )
        .fetch_all(db)
        .await?,
    )
}

pub async fn set_running(
    db: impl PgExecutor<'_>,
    id: Uuid,
    provider_id: &str,
    address: Option<&str>,
    host_key: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET state = 'running', provider_id = $2, address = $3, last_error = NULL,
                host_key = COALESCE(host_key, $4), running_at = COALESCE(running_at, now()),
                updated_at = now()
         WHERE id = $1",
        id,
        provider_id,
        address,
        host_key
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The provider accepted the machine (as `provider_id`); it is on its way up.
pub async fn set_provisioning(db: impl PgExecutor<'_>, id: Uuid, provider_id: &str) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET state = 'provisioning', provider_id = $2, last_error = NULL,
                updated_at = now()
         WHERE id = $1",
        id,
        provider_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Moves a machine to `pending`, `deleting` or `failed`, noting why. (A
/// worker being removed goes through [`start_drain`] instead.)
pub async fn set_state(
    db: impl PgExecutor<'_>,
    id: Uuid,
    state: MachineState,
    last_error: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET state = $2, last_error = $3, updated_at = now() WHERE id = $1",
        id,
        state.as_str(),
        last_error
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The provider confirmed the machine is gone.
pub async fn mark_deleted(db: impl PgExecutor<'_>, id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET state = 'deleted', deleted_at = now(), updated_at = now() WHERE id = $1",
        id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records what the engine observed of the machine's node. `unhealthy`
/// names why the node is unhealthy: the first such observation starts the
/// clock (`unhealthy_since`), later ones keep it running and update the
/// reason; `None` (healthy) stops and clears it.
pub async fn observe_node(
    db: impl PgExecutor<'_>,
    id: Uuid,
    node_state: Option<&str>,
    unhealthy: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET node_state = $2,
                unhealthy_since = CASE WHEN $3::text IS NULL THEN NULL
                                       ELSE COALESCE(unhealthy_since, now()) END,
                unhealthy_reason = $3
         WHERE id = $1",
        id,
        node_state,
        unhealthy
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The machine's node is Ready (since `ready_at`, the condition's own
/// time when the cluster gave one): the join is over. The first time
/// counts.
pub async fn mark_joined(
    db: impl PgExecutor<'_>,
    id: Uuid,
    ready_at: Option<DateTime<Utc>>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET joined_at = COALESCE(joined_at, now()),
                ready_at = COALESCE(ready_at, $2, now())
         WHERE id = $1",
        id,
        ready_at
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The worker's bootstrap is starting; the first time counts.
pub async fn mark_bootstrap_started(db: impl PgExecutor<'_>, id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET bootstrap_started_at = COALESCE(bootstrap_started_at, now())
         WHERE id = $1",
        id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The machine's Node object exists (created at `at`, the cluster's own
/// time when it gave one); the first time counts.
pub async fn mark_registered(
    db: impl PgExecutor<'_>,
    id: Uuid,
    at: Option<DateTime<Utc>>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET registered_at = COALESCE(registered_at, $2, now()) WHERE id = $1",
        id,
        at
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Starts removing a worker: `draining` until its pods are evicted (or the
/// pool's drain timeout, counted from the first call, runs out), then
/// `deleting`. `reason` says why it is being removed and is kept in
/// `last_error`.
pub async fn start_drain(db: impl PgExecutor<'_>, id: Uuid, reason: &str) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET state = 'draining',
                drain_started_at = COALESCE(drain_started_at, now()),
                last_error = $2, updated_at = now()
         WHERE id = $1",
        id,
        reason
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The clusters with a live worker at `address` (the cluster DNS server
/// tells which cluster asks by the node address its query comes from).
/// More than one means the address is ambiguous, and the caller refuses.
pub async fn clusters_of_worker_address(
    db: impl PgExecutor<'_>,
    address: &str,
) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar!(
        "SELECT DISTINCT cluster_id FROM machines
         WHERE address = $1 AND role = 'worker' AND deleted_at IS NULL",
        address
    )
    .fetch_all(db)
    .await?)
}

/// Records the pod-network files a worker has applied.
pub async fn set_network_sha(db: impl PgExecutor<'_>, id: Uuid, sha: &str) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET network_sha = $2 WHERE id = $1",
        id,
        sha
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records what the engine observed of a control-plane member's units and
/// the restarts it counted (see `kubeforge_cluster::restarts`).
pub async fn set_component_restarts(
    db: impl PgExecutor<'_>,
    id: Uuid,
    restarts: &JsonValue,
) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET component_restarts = $2 WHERE id = $1",
        id,
        restarts
    )
    .execute(db)
    .await?;
    Ok(())
}
