//! Background work: the job queue ([`jobs`]: its runners, leases and
//! retries) and the reconcilers it runs.

pub mod binaries;
pub mod controlplane;
pub mod jobs;
pub mod join;
pub mod pools;
pub mod reconcile;

use chrono::Utc;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::state::App;
use crate::store::cluster::Cluster;
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
