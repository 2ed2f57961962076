//! Autoscaling calls: a cluster's autoscaler status (what the autoscaler
//! saw and decided, pool by pool and pod by pod), the machine types a
//! pool's template node is made from (both only read), and credentials
//! for an external cluster-autoscaler to reach this service's
//! `externalgrpc` endpoint as one cluster.

use chrono::{TimeDelta, Utc};
use kubeforge_cluster::api::{
    AutoscalerCredentialsRequest, AutoscalerCredentialsView, AutoscalerStatusView, MachineTypeView,
};
use kubeforge_cluster::externalgrpc::{CloudConfig, MAX_CREDENTIALS_TTL, MIN_CREDENTIALS_TTL};
use kubeforge_cluster::machine_types::PROVIDER_KINDS;
use kubeforge_cluster::{MachineType, ValidationError};

use super::views::autoscaler_status_view;
use super::App;
use crate::context::{Action, OpContext};
use crate::error::{Error, Result};
use crate::grpc_pki::GrpcPki;
use crate::store::event::{self, NewEvent};
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

    /// Every machine type in catalogue order (generic sizes, then EC2
    /// instance types), with what its nodes offer to pods; only those
    /// provider kind `provider` offers when given (an unknown kind is
    /// refused, naming `provider`).
    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub fn machine_type_list(
        &self,
        ctx: &OpContext,
        provider: Option<&str>,
    ) -> Result<Vec<MachineTypeView>> {
        ctx.authorize(Action::Read)?;
        if let Some(kind) = provider {
            if !PROVIDER_KINDS.contains(&kind) {
                return Err(ValidationError::new(
                    "provider",
                    format!(
                        "unknown provider kind {kind:?}; one of {}",
                        PROVIDER_KINDS.join(", ")
                    ),
                )
                .into());
            }
        }
        Ok(MachineType::all()
            .filter(|t| provider.is_none_or(|k| t.offered_on(k)))
            .map(MachineTypeView::from)
            .collect())
    }

    /// A client certificate for the `externalgrpc` endpoint naming one of
    /// the caller's clusters (editor or above), with the endpoint's CA and
    /// the cloud-config file that points at them. The key is in the answer
    /// only: nothing stores or logs it, so this is not replayed under an
    /// `Idempotency-Key` (a replay would need the key kept), like a
    /// kubeconfig. Audited as an event with the serial and expiry.
    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn autoscaler_credentials_create(
        &self,
        ctx: &OpContext,
        id_or_name: &str,
        req: AutoscalerCredentialsRequest,
    ) -> Result<AutoscalerCredentialsView> {
        ctx.authorize(Action::Write)?;
        let (min, max) = (
            MIN_CREDENTIALS_TTL.num_seconds(),
            MAX_CREDENTIALS_TTL.num_seconds(),
        );
        let ttl = i64::try_from(req.ttl_seconds)
            .ok()
            .filter(|t| (min..=max).contains(t))
            .map(TimeDelta::seconds)
            .ok_or_else(|| {
                ValidationError::new("ttl_seconds", format!("must be between {min} and {max}"))
            })?;
        let c = cluster::get(&self.pool, ctx, id_or_name).await?;
        if c.deletion_requested_at.is_some() {
            return Err(Error::Conflict("the cluster is being deleted".into()));
        }
        let address = self.config.grpc_address.clone().ok_or_else(|| {
            Error::Conflict(
                "this Kubeforge serves no externalgrpc endpoint (start it with --grpc-listen)"
                    .into(),
            )
        })?;
        let pki = GrpcPki::load_or_create(&self.pool, &self.secrets).await?;
        let pair = pki.client_cert(&c.tenant, c.id, Utc::now(), ttl)?;
        // The audit record: who (the event's subject is in the message),
        // when (the event's time), the serial and expiry; never the key.
        event::record(
            &self.pool,
            NewEvent {
                tenant: &ctx.tenant,
                cluster_id: c.id,
                node_pool_id: None,
                operation_id: None,
                warning: false,
                reason: "AutoscalerCredentialsIssued",
                message: &format!(
                    "externalgrpc client certificate for {} (serial {}, expires {})",
                    ctx.subject,
                    pair.serial_hex,
                    pair.not_after
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            },
        )
        .await?;
        tracing::info!(cluster = %c.id, serial = %pair.serial_hex, expires_at = %pair.not_after, "autoscaler credentials issued");
        Ok(AutoscalerCredentialsView {
            cloud_config: CloudConfig::standard(&address).render(),
            address,
            ca_pem: pki.ca_pem().to_string(),
            cert_pem: pair.cert_pem,
            key_pem: pair.key_pem,
            serial: pair.serial_hex,
            expires_at: pair.not_after,
        })
    }
}
