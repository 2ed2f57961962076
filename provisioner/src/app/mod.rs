//! The application: what each API call does, independent of HTTP.
//!
//! Handlers extract, build an `OpContext`, call one method here and
//! convert the result. Every method authorizes through the context first,
//! validates by parsing into domain types, and does its writes in one
//! transaction: the resource rows, the operation, the event and the job
//! that will reconcile it commit together or not at all.

pub mod autoscaler;
pub mod cluster;
pub mod credentials;
pub mod node_pool;
pub mod platform;
pub mod views;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;
use crate::store::job;

pub use crate::state::{App, Config, SharedApp};

impl App {
    /// Why a cluster cannot be had on `kind`: this replica does not run
    /// its provider. Every replica that serves the API runs the same
    /// providers (see docs/ARCHITECTURE.md), so what this one refuses no
    /// replica would have made.
    pub fn provider_unavailable(&self, kind: &str) -> Option<String> {
        if self.providers.get(kind).is_some() {
            return None;
        }
        let runs = self.providers.kinds();
        Some(format!(
            "the {kind} provider is not run by this Kubeforge (it runs: {})",
            if runs.is_empty() {
                "none".to_string()
            } else {
                runs.join(", ")
            }
        ))
    }

    /// Why `tenant` cannot have a cluster on `kind`: the lab serves only
    /// the tenants the platform trusts with its host ([`Config::lab_tenants`]).
    pub fn provider_refused(&self, kind: &str, tenant: &str) -> Option<String> {
        (kind == crate::providers::lab::KIND && !self.config.lab_tenants.trusts(tenant)).then(
            || {
                format!(
                    "the lab provider serves only tenants this Kubeforge trusts with its own host \
                 (lab machines share its kernel), and tenant {tenant} is not one of them \
                 (serve --lab-tenants); use another provider"
                )
            },
        )
    }

    /// Why node pools cannot be had on `kind`, when its provider runs here
    /// and cannot host worker nodes.
    pub fn workers_unsupported(&self, kind: &str) -> Option<String> {
        let provider = self.providers.get(kind)?;
        (!provider.capabilities().hosts_workers).then(|| {
            format!(
                "the {kind} provider cannot run worker nodes, so its clusters cannot have node \
                 pools"
            )
        })
    }
}

/// An `Idempotency-Key` with the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub hash: String,
}

/// A response to a POST, kept as JSON so an idempotent replay is byte-for-byte the same.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Accepted {
    /// The answer `body` (one of the typed answers of
    /// [`kubeforge_cluster::api`]) as the JSON that is sent and saved for
    /// replays.
    pub fn new(status: u16, body: &impl serde::Serialize) -> Result<Self> {
        let body = serde_json::to_value(body).map_err(anyhow::Error::from)?;
        Ok(Self { status, body })
    }
}

/// What a request asks of a cluster: the operation that tracks it (for
/// the pool `pool`, towards `generation`) and the event saying who asked
/// (`reason`, `message`); the cluster's reconcile does it.
pub(crate) struct Request<'a> {
    pub cluster_id: Uuid,
    pub provider: &'a str,
    pub pool: Option<Uuid>,
    pub kind: kubeforge_cluster::operations::OperationKind,
    pub generation: i64,
    pub reason: &'a str,
    pub message: &'a str,
}

/// The job kind that reconciles one cluster (and its pools).
pub const RECONCILE_CLUSTER: &str = "reconcile_cluster";

impl App {
    /// Records request `r` in the caller's transaction: its operation, its
    /// event, and the reconcile that will carry it out. Returns the
    /// operation's id.
    pub(crate) async fn request(
        &self,
        conn: &mut PgConnection,
        ctx: &crate::context::OpContext,
        r: Request<'_>,
    ) -> Result<Uuid> {
        let op = crate::store::operation::insert(
            &mut *conn,
            ctx,
            r.cluster_id,
            r.pool,
            r.kind,
            r.generation,
        )
        .await?;
        crate::store::event::record(
            &mut *conn,
            crate::store::event::NewEvent {
                tenant: &ctx.tenant,
                cluster_id: r.cluster_id,
                node_pool_id: r.pool,
                operation_id: Some(op),
                warning: false,
                reason: r.reason,
                message: r.message,
            },
        )
        .await?;
        self.enqueue_reconcile(conn, r.cluster_id, r.provider, op)
            .await?;
        Ok(op)
    }

    /// Queues a reconcile of `cluster_id` for operation `op` in the
    /// caller's transaction; only replicas that run its `provider` kind
    /// claim it.
    pub(crate) async fn enqueue_reconcile(
        &self,
        conn: &mut PgConnection,
        cluster_id: Uuid,
        provider: &str,
        op: Uuid,
    ) -> Result<()> {
        self.queue_reconcile(conn, cluster_id, provider, Some(op))
            .await
    }

    /// Asks for a reconcile of the cluster now, for no operation (something
    /// it waits for happened, such as a node becoming Ready).
    pub(crate) async fn nudge_reconcile(
        &self,
        conn: &mut PgConnection,
        cluster_id: Uuid,
        provider: &str,
    ) -> Result<()> {
        self.queue_reconcile(conn, cluster_id, provider, None).await
    }

    async fn queue_reconcile(
        &self,
        conn: &mut PgConnection,
        cluster_id: Uuid,
        provider: &str,
        op: Option<Uuid>,
    ) -> Result<()> {
        let key = format!("cluster:{cluster_id}");
        job::enqueue(
            conn,
            job::NewJob {
                kind: RECONCILE_CLUSTER,
                payload: serde_json::json!({ "cluster_id": cluster_id }),
                dedupe_key: Some(&key),
                operation_id: op,
                // The periodic reconcile never dies: its handler fails the
                // operations after `max_job_attempts` failed passes in a
                // row and goes on with capped backoff.
                max_attempts: i32::MAX,
                provider: Some(provider),
            },
        )
        .await
    }
}
