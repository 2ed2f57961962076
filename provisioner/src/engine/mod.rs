//! Background work: the job queue ([`jobs`]: its runners, leases and
//! retries; [`lease`]: giving up early and fenced writes) and the
//! reconcilers it runs.

pub mod binaries;
pub mod controlplane;
pub mod credentials;
pub mod jobs;
pub mod join;
pub mod lease;
pub mod pools;
pub mod reconcile;
pub mod upkeep;

use chrono::Utc;
use std::sync::Arc;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::state::App;
use crate::store::cluster::Cluster;
use crate::store::job;
use crate::tenant::{KubeTenant, TenantApi};

/// The service's client of a cluster whose API server answers at
/// `endpoint` (`https://host:port`): kept in [`App::tenants`] while its
/// identity is fresh, else minted anew from the cluster's CA.
pub async fn tenant_api(app: &App, c: &Cluster, endpoint: &str) -> Result<Arc<dyn TenantApi>> {
    let now = Utc::now();
    if let Some(api) = app.tenants.get(c.id, endpoint, now) {
        return Ok(api as Arc<dyn TenantApi>);
    }
    let pki = controlplane::ensure_pki(app, c).await?;
    let signer = pki
        .ca
        .signer()
        .map_err(|e| Error::Internal(anyhow::anyhow!("the cluster CA: {e}")))?;
    let api: Arc<KubeTenant> = Arc::new(
        KubeTenant::connect(c.name.as_str(), endpoint, &pki.ca.cert_pem, &signer, now).await?,
    );
    app.tenants.put(c.id, endpoint, now, api.clone());
    Ok(api as Arc<dyn TenantApi>)
}

/// The job kind of a cluster's autoscaler (run by `crate::autoscaler`,
/// which sits above the engine): one long-running job per cluster that
/// wants it.
pub const AUTOSCALE_CLUSTER: &str = "autoscale_cluster";

/// Makes sure the cluster's autoscaler job exists (queued or running);
/// does nothing if it does. The reconciler calls this while the cluster
/// serves and [`Cluster::wants_autoscaler`]; the job ends by itself when
/// the cluster no longer does.
pub async fn ensure_autoscaler(conn: &mut sqlx::PgConnection, cluster_id: Uuid) -> Result<()> {
    let key = format!("autoscale:{cluster_id}");
    job::ensure(
        conn,
        job::NewJob {
            kind: AUTOSCALE_CLUSTER,
            payload: serde_json::json!({ "cluster_id": cluster_id }),
            dedupe_key: Some(&key),
            operation_id: None,
            max_attempts: i32::MAX,
            provider: None,
        },
    )
    .await
}
