//! Autoscaling calls: a cluster's autoscaler status (what the autoscaler
//! saw and decided, pool by pool and pod by pod), and the machine types a
//! pool's template node is made from. Both only read.

use kubeforge_cluster::api::{AutoscalerStatusView, MachineTypeView};
use kubeforge_cluster::MachineType;

use super::views::autoscaler_status_view;
use super::App;
use crate::context::{Action, OpContext};
use crate::error::Result;
use crate::store::{autoscaler, cluster, machine, node_pool};

impl App {
    /// The autoscaler status of one of the caller's clusters (another
    /// tenant's is not found): its autoscaling pools from their rows, and
    /// what the autoscaler last stored for it, if anything yet.
    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn autoscaler_get(
        &self,
        ctx: &OpContext,
        id_or_name: &str,
    ) -> Result<AutoscalerStatusView> {
        ctx.authorize(Action::Read)?;
        let mut conn = self.pool.acquire().await?;
        let c = cluster::get(&mut *conn, ctx, id_or_name).await?;
        let pools = node_pool::list(&mut *conn, ctx, c.id).await?;
        let machines = machine::list(&mut *conn, ctx, c.id).await?;
        let snapshot = autoscaler::get_snapshot(&mut *conn, c.id)
            .await?
            .unwrap_or_default();
        Ok(autoscaler_status_view(&c, &pools, &machines, snapshot))
    }

    /// Every machine type, smallest first, with what its nodes offer to pods.
    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub fn machine_type_list(&self, ctx: &OpContext) -> Result<Vec<MachineTypeView>> {
        ctx.authorize(Action::Read)?;
        Ok(MachineType::ALL
            .into_iter()
            .map(MachineTypeView::from)
            .collect())
    }
}
