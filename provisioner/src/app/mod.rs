//! The application: what each API call does, independent of HTTP.
//!
//! Handlers extract, build an `OpContext`, call one method here and
//! convert the result. Every method authorizes through the context first,
//! validates by parsing into domain types, and does its writes in one
//! transaction: the resource rows, the operation, the event and the job
//! that will reconcile it commit together or not at all.

pub mod cluster;
pub mod node_pool;
pub mod platform;
pub mod views;

use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use crate::auth::AuthKeys;
use crate::crypto::SecretBox;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::providers::ProviderRegistry;
use crate::store::{job, tenant::Quota};

/// Service settings that app methods read.
#[derive(Debug, Clone)]
pub struct Config {
    /// Quota a tenant gets on its first write.
    pub default_quota: Quota,
    /// Attempts before a job is dead-lettered.
    pub max_job_attempts: i32,
    /// Longest kubeconfig TTL a tenant may ask for.
    pub kubeconfig_max_ttl: Duration,
    /// How far back control-plane component restarts count towards
    /// degrading a cluster. Always
    /// `kubeforge_cluster::restarts::RESTART_WINDOW` in the service (no
    /// flag or variable sets it); tests shorten it so a cluster recovers
    /// within the test.
    pub control_plane_restart_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_quota: Quota {
                max_clusters: 10,
                max_nodes: 50,
            },
            max_job_attempts: 8,
            kubeconfig_max_ttl: Duration::from_secs(24 * 3600),
            control_plane_restart_window: kubeforge_cluster::restarts::RESTART_WINDOW,
        }
    }
}

/// Shared state of one Kubeforge process.
pub struct App {
    pub pool: PgPool,
    pub auth: AuthKeys,
    pub providers: ProviderRegistry,
    pub secrets: SecretBox,
    pub metrics: Metrics,
    pub config: Config,
    /// SSH key and binaries for bootstrapping machines; None when this
    /// service cannot reach machines (then control planes wait, saying why).
    pub access: Option<Arc<crate::engine::controlplane::MachineAccess>>,
    /// The service's clients of tenant clusters, minted on first use.
    pub tenants: crate::tenant::Clients,
}

pub type SharedApp = Arc<App>;

impl App {
    /// Why node pools cannot be had on `kind`, when its provider runs here
    /// and cannot host worker nodes. A kind with no provider here is left to
    /// the engine, which fails the cluster with `provider_unavailable`.
    pub fn workers_unsupported(&self, kind: &str) -> Option<String> {
        let provider = self.providers.get(kind)?;
        (!provider.hosts_workers()).then(|| {
            format!(
                "the {kind} provider cannot run worker nodes yet (its hosts get no containerd, \
                 kubelet or kube-proxy), so its clusters cannot have node pools"
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

/// The job kind that reconciles one cluster (and its pools).
pub const RECONCILE_CLUSTER: &str = "reconcile_cluster";

/// Queues a reconcile of `cluster_id` in the caller's transaction.
pub async fn enqueue_reconcile(
    conn: &mut PgConnection,
    cluster_id: Uuid,
    operation_id: Option<Uuid>,
    max_attempts: i32,
) -> Result<()> {
    let key = format!("cluster:{cluster_id}");
    job::enqueue(
        conn,
        job::NewJob {
            kind: RECONCILE_CLUSTER,
            payload: serde_json::json!({ "cluster_id": cluster_id }),
            dedupe_key: Some(&key),
            operation_id,
            max_attempts,
        },
    )
    .await
}
