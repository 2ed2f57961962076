//! Cluster calls: create, list, get, update, delete, and the read-only
//! views of a cluster (machines, operations, events, kubeconfig).

use base64::Engine as _;
use kubeforge_cluster::api::{
    ClusterAccepted, ClusterListQuery, ClusterView, CreateClusterRequest, EventView,
    KubeconfigRequest, MachineView, OperationAccepted, OperationView, Page, PageQuery,
    UpdateClusterRequest,
};
use kubeforge_cluster::credentials::{self, KubeconfigRole};
use kubeforge_cluster::operations::OperationKind;
use kubeforge_cluster::spec::{check_label_key, check_label_value};
use kubeforge_cluster::{ClusterSpec, Labels, Phase, ValidationError};
use uuid::Uuid;

use super::views::cluster_view;
use super::{Accepted, App, Idempotency, Request};
use crate::context::{Action, OpContext};
use crate::error::{Error, Result};
use crate::store::event::{self, NewEvent};
use crate::store::idempotency::{self, Claim};
use crate::store::{cluster, machine, node_pool, operation, tenant};

/// Most items one page returns.
pub const MAX_PAGE: i64 = 200;
pub const DEFAULT_PAGE: i64 = 50;

pub fn check_limit(limit: Option<i64>) -> Result<i64> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(
            ValidationError::new("limit", format!("must be between 1 and {MAX_PAGE}")).into(),
        );
    }
    Ok(limit)
}

fn encode_token(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn decode_token(t: &str) -> Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ValidationError::new("page_token", "not a page token from this API").into())
}

/// Cuts a `limit + 1` fetch to `limit` rows and, if there was more, makes
/// the token that continues after the last row kept.
fn page<T>(
    mut rows: Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        let next = rows.last().map(|r| encode_token(&cursor(r)));
        (rows, next)
    } else {
        (rows, None)
    }
}

/// Checks `If-Match` against the current entity tag.
pub fn check_if_match(if_match: Option<&str>, etag: &str) -> Result<()> {
    match if_match {
        Some(m) if m.trim() != "*" && m.trim() != etag => Err(Error::PreconditionFailed(format!(
            "If-Match {m} does not match the current etag {etag}"
        ))),
        _ => Ok(()),
    }
}

impl App {
    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject, name = %req.name))]
    pub async fn cluster_create(
        &self,
        ctx: &OpContext,
        idem: Option<Idempotency>,
        req: CreateClusterRequest,
    ) -> Result<Accepted> {
        ctx.authorize(Action::Write)?;
        let spec = ClusterSpec::parse(req)?;
        if let Some(why) = self
            .provider_unavailable(spec.provider.kind())
            .or_else(|| self.provider_refused(spec.provider.kind(), &ctx.tenant))
        {
            return Err(ValidationError::new("provider.kind", why).into());
        }
        spec.network
            .check_apart_from(&self.providers.networks())
            .map_err(|e| e.under("network"))?;
        for (i, pool) in spec.node_pools.iter().enumerate() {
            super::node_pool::check_host_selector(
                spec.provider.kind(),
                &pool.host_selector,
                &format!("node_pools[{i}].host_selector"),
            )?;
        }
        if !spec.node_pools.is_empty() {
            if let Some(why) = self.workers_unsupported(spec.provider.kind()) {
                return Err(ValidationError::new("node_pools", why).into());
            }
        }
        let mut tx = self.pool.begin().await?;
        if let Some(i) = &idem {
            if let Claim::Replay { status, body } =
                idempotency::claim(&mut tx, ctx, &i.key, &i.hash).await?
            {
                return Ok(Accepted { status, body });
            }
        }
        let quota = tenant::ensure_locked(&mut tx, &ctx.tenant, self.config.default_quota).await?;
        let usage = tenant::usage(&mut tx, &ctx.tenant).await?;
        let (clusters, nodes) = (usage.clusters, usage.nodes);
        if clusters >= i64::from(quota.max_clusters) {
            return Err(Error::QuotaExceeded {
                field: "name".into(),
                detail: format!("tenant has {clusters} of {} clusters", quota.max_clusters),
            });
        }
        let new_nodes: i64 = spec
            .node_pools
            .iter()
            .map(|p| i64::from(p.size.max(p.autoscaling.map_or(0, |a| a.max))))
            .sum();
        if nodes + new_nodes > i64::from(quota.max_nodes) {
            return Err(Error::QuotaExceeded {
                field: "node_pools".into(),
                detail: format!(
                    "{new_nodes} more nodes would exceed the quota of {} (in use: {nodes})",
                    quota.max_nodes
                ),
            });
        }
        // vCPUs: the control plane's members first, then the pools', so the
        // refusal names the part that crossed the quota.
        let cp_cpus = i64::from(spec.control_plane.replicas)
            * i64::from(spec.control_plane.machine_type.cpus());
        let pool_cpus: i64 = spec
            .node_pools
            .iter()
            .map(|p| {
                i64::from(p.size.max(p.autoscaling.map_or(0, |a| a.max)))
                    * i64::from(p.machine_type.cpus())
            })
            .sum();
        for (field, total) in [
            ("control_plane", cp_cpus),
            ("node_pools", cp_cpus + pool_cpus),
        ] {
            if usage.cpus + total > i64::from(quota.max_cpus) {
                return Err(Error::QuotaExceeded {
                    field: field.into(),
                    detail: format!(
                        "{} more vCPUs would exceed the quota of {} (in use: {})",
                        cp_cpus + pool_cpus,
                        quota.max_cpus,
                        usage.cpus
                    ),
                });
            }
        }
        let id = Uuid::now_v7();
        cluster::insert(
            &mut tx,
            ctx,
            cluster::NewCluster {
                id,
                name: spec.name.as_str(),
                kubernetes_version: spec.kubernetes_version.as_str(),
                provider: &spec.provider,
                control_plane: &spec.control_plane,
                network: &spec.network,
                labels: &spec.labels,
                deletion_protection: spec.deletion_protection,
                autoscaler: &spec.autoscaler,
            },
        )
        .await?;
        for pool in &spec.node_pools {
            node_pool::insert(&mut tx, ctx, id, Uuid::now_v7(), pool).await?;
        }
        let op = self
            .request(
                &mut tx,
                ctx,
                Request {
                    cluster_id: id,
                    provider: spec.provider.kind(),
                    pool: None,
                    kind: OperationKind::ClusterCreate,
                    generation: 1,
                    reason: "CreateRequested",
                    message: &format!("cluster {} requested by {}", spec.name, ctx.subject),
                },
            )
            .await?;
        let pools: Vec<&str> = spec.node_pools.iter().map(|p| p.name.as_str()).collect();
        operation::add_pool_steps(&mut tx, op, &pools).await?;
        let c = cluster::get(&mut *tx, ctx, &id.to_string()).await?;
        let pools = node_pool::summaries(&mut *tx, ctx, &[c.id]).await?;
        let o = operation::get(&mut tx, ctx, op).await?;
        let accepted = Accepted::new(
            202,
            &ClusterAccepted {
                cluster: cluster_view(&c, &pools),
                operation: OperationView::from(&o),
            },
        )?;
        if let Some(i) = &idem {
            idempotency::save(&mut tx, ctx, &i.key, 202, &accepted.body).await?;
        }
        tx.commit().await?;
        tracing::info!(cluster = %id, operation = %op, "cluster create accepted");
        Ok(accepted)
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn cluster_list(
        &self,
        ctx: &OpContext,
        q: ClusterListQuery,
    ) -> Result<Page<ClusterView>> {
        ctx.authorize(Action::Read)?;
        let limit = check_limit(q.limit)?;
        let phase = match q.phase.as_deref() {
            None | Some("") => None,
            Some(p) => Some(Phase::parse(p).ok_or_else(|| {
                ValidationError::new(
                    "phase",
                    "one of provisioning, ready, degraded, deleting, failed",
                )
            })?),
        };
        let (label_key, label_value) = match q.label.as_deref() {
            None | Some("") => (None, None),
            Some(l) => {
                // Checked like the labels it looks for: a key no label can
                // have matches nothing, and a NUL would fail the query.
                let (k, v) = match l.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (l, None),
                };
                check_label_key(k).map_err(|m| ValidationError::new("label", m))?;
                if let Some(v) = v {
                    check_label_value(v).map_err(|m| ValidationError::new("label", m))?;
                }
                (Some(k.to_string()), v.map(str::to_string))
            }
        };
        let after = match q.page_token.as_deref() {
            None | Some("") => None,
            Some(t) => Some(Uuid::parse_str(&decode_token(t)?).map_err(|_| {
                ValidationError::new("page_token", "not a page token from this API")
            })?),
        };
        let filter = cluster::ListFilter {
            phase,
            label_key,
            label_value,
            after,
            limit: limit + 1,
        };
        let rows = cluster::list(&self.pool, ctx, &filter).await?;
        let (rows, next) = page(rows, limit, |c| c.id.to_string());
        let ids: Vec<Uuid> = rows.iter().map(|c| c.id).collect();
        let pools = node_pool::summaries(&self.pool, ctx, &ids).await?;
        Ok(Page {
            items: rows.iter().map(|c| cluster_view(c, &pools)).collect(),
            next_page_token: next,
        })
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn cluster_get(&self, ctx: &OpContext, id_or_name: &str) -> Result<ClusterView> {
        ctx.authorize(Action::Read)?;
        let c = cluster::get(&self.pool, ctx, id_or_name).await?;
        let pools = node_pool::summaries(&self.pool, ctx, &[c.id]).await?;
        Ok(cluster_view(&c, &pools))
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn cluster_update(
        &self,
        ctx: &OpContext,
        id_or_name: &str,
        if_match: Option<&str>,
        req: UpdateClusterRequest,
    ) -> Result<ClusterAccepted> {
        ctx.authorize(Action::Write)?;
        let labels = req
            .labels
            .map(|l| Labels::parse(l).map_err(|e| e.under("labels")))
            .transpose()?;
        let mut tx = self.pool.begin().await?;
        let c = cluster::get_for_update(&mut tx, ctx, id_or_name).await?;
        check_if_match(if_match, &c.etag())?;
        if c.deletion_requested_at.is_some() {
            return Err(Error::Conflict("the cluster is being deleted".into()));
        }
        let labels = labels.unwrap_or_else(|| c.labels.clone());
        let protection = req.deletion_protection.unwrap_or(c.deletion_protection);
        // Merged onto the settings as they are now, under the row lock.
        let autoscaler = match req.autoscaler {
            Some(a) => c.autoscaler.apply(a).map_err(|e| e.under("autoscaler"))?,
            None => c.autoscaler,
        };
        cluster::update_spec(&mut tx, c.id, &labels, protection, &autoscaler).await?;
        let op = self
            .request(
                &mut tx,
                ctx,
                Request {
                    cluster_id: c.id,
                    provider: c.provider.kind(),
                    pool: None,
                    kind: OperationKind::ClusterUpdate,
                    generation: c.generation + 1,
                    reason: "UpdateRequested",
                    message: &format!("cluster update requested by {}", ctx.subject),
                },
            )
            .await?;
        let c = cluster::get(&mut *tx, ctx, &c.id.to_string()).await?;
        let pools = node_pool::summaries(&mut *tx, ctx, &[c.id]).await?;
        let o = operation::get(&mut tx, ctx, op).await?;
        tx.commit().await?;
        Ok(ClusterAccepted {
            cluster: cluster_view(&c, &pools),
            operation: OperationView::from(&o),
        })
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn cluster_delete(
        &self,
        ctx: &OpContext,
        id_or_name: &str,
        if_match: Option<&str>,
    ) -> Result<OperationAccepted> {
        ctx.authorize(Action::Write)?;
        let mut tx = self.pool.begin().await?;
        let c = cluster::get_for_update(&mut tx, ctx, id_or_name).await?;
        check_if_match(if_match, &c.etag())?;
        if c.deletion_protection {
            return Err(Error::DeletionProtected(c.name.to_string()));
        }
        if c.deletion_requested_at.is_some() {
            // Already deleting: answer with the delete operation in flight.
            let ops = operation::list_active(&mut tx, c.id).await?;
            if let Some(o) = ops.iter().find(|o| o.kind == OperationKind::ClusterDelete) {
                return Ok(OperationAccepted {
                    operation: OperationView::from(o),
                });
            }
        }
        let generation = cluster::request_deletion(&mut tx, c.id).await?;
        let op = self
            .request(
                &mut tx,
                ctx,
                Request {
                    cluster_id: c.id,
                    provider: c.provider.kind(),
                    pool: None,
                    kind: OperationKind::ClusterDelete,
                    generation,
                    reason: "DeleteRequested",
                    message: &format!("cluster deletion requested by {}", ctx.subject),
                },
            )
            .await?;
        let o = operation::get(&mut tx, ctx, op).await?;
        tx.commit().await?;
        Ok(OperationAccepted {
            operation: OperationView::from(&o),
        })
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn machine_list(
        &self,
        ctx: &OpContext,
        id_or_name: &str,
    ) -> Result<Vec<MachineView>> {
        ctx.authorize(Action::Read)?;
        let c = cluster::get(&self.pool, ctx, id_or_name).await?;
        let ms = machine::list(&self.pool, ctx, c.id).await?;
        Ok(ms.iter().map(MachineView::from).collect())
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn operation_get(&self, ctx: &OpContext, id: &str) -> Result<OperationView> {
        ctx.authorize(Action::Read)?;
        let id = Uuid::parse_str(id).map_err(|_| Error::not_found("operation", id))?;
        let mut conn = self.pool.acquire().await?;
        Ok(OperationView::from(
            &operation::get(&mut conn, ctx, id).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn operation_list(
        &self,
        ctx: &OpContext,
        id_or_name: &str,
    ) -> Result<Vec<OperationView>> {
        ctx.authorize(Action::Read)?;
        let mut conn = self.pool.acquire().await?;
        let c = cluster::get(&mut *conn, ctx, id_or_name).await?;
        let ops = operation::list(&mut conn, ctx, c.id, MAX_PAGE).await?;
        Ok(ops.iter().map(OperationView::from).collect())
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn event_list(
        &self,
        ctx: &OpContext,
        id_or_name: &str,
        q: PageQuery,
    ) -> Result<Page<EventView>> {
        ctx.authorize(Action::Read)?;
        let limit = check_limit(q.limit)?;
        let before = match q.page_token.as_deref() {
            None | Some("") => None,
            Some(t) => Some(decode_token(t)?.parse::<i64>().map_err(|_| {
                ValidationError::new("page_token", "not a page token from this API")
            })?),
        };
        let c = cluster::get(&self.pool, ctx, id_or_name).await?;
        let rows = event::list(&self.pool, ctx, c.id, before, limit + 1).await?;
        let (rows, next_page_token) = page(rows, limit, |e| e.id.to_string());
        Ok(Page {
            items: rows.iter().map(EventView::from).collect(),
            next_page_token,
        })
    }

    /// Kubeconfigs carry client certificates signed by the cluster's CA,
    /// for a role the caller's role allows (see `crate::context`).
    /// Until a cluster's control plane and PKI exist this answers
    /// `cluster_not_ready`; it never returns a kubeconfig that cannot work.
    /// Returns the kubeconfig and when its certificate expires.
    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn kubeconfig_create(
        &self,
        ctx: &OpContext,
        id_or_name: &str,
        req: KubeconfigRequest,
    ) -> Result<IssuedKubeconfig> {
        let role = KubeconfigRole::parse(&req.role)
            .ok_or_else(|| ValidationError::new("role", "one of admin, editor, viewer"))?;
        ctx.authorize(Action::Kubeconfig(role))?;
        let max = self.config.kubeconfig_max_ttl.as_secs();
        if req.ttl_seconds < 60 || req.ttl_seconds > max {
            return Err(ValidationError::new(
                "ttl_seconds",
                format!("must be between 60 and {max}"),
            )
            .into());
        }
        let c = cluster::get(&self.pool, ctx, id_or_name).await?;
        if c.phase != Phase::Ready {
            return Err(Error::ClusterNotReady(format!(
                "cluster {} is {}; kubeconfigs are issued once it is ready",
                c.name,
                c.phase.as_str()
            )));
        }
        let ttl = std::time::Duration::from_secs(req.ttl_seconds);
        let issued = self.issue_kubeconfig(&c, &ctx.subject, role, ttl).await?;
        // The audit record: who, when (the event's time), role, TTL, serial.
        event::record(
            &self.pool,
            NewEvent {
                tenant: &ctx.tenant,
                cluster_id: c.id,
                node_pool_id: None,
                operation_id: None,
                warning: false,
                reason: "KubeconfigIssued",
                message: &format!(
                    "{} kubeconfig for {} (ttl {}s, serial {}, credential generation {})",
                    req.role, ctx.subject, req.ttl_seconds, issued.serial, issued.generation
                ),
            },
        )
        .await?;
        tracing::info!(cluster = %c.id, subject = %ctx.subject, role = %req.role, ttl = req.ttl_seconds, serial = %issued.serial, generation = issued.generation, "kubeconfig issued");
        Ok(issued)
    }
}

/// A kubeconfig just issued; `yaml` holds its key.
///
/// Not `Debug`: nothing should print it.
pub struct IssuedKubeconfig {
    pub yaml: String,
    pub role: KubeconfigRole,
    /// The name of its context (and of its cluster and user entries).
    pub context: String,
    pub serial: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The credential generation its group carries.
    pub generation: i64,
}

impl App {
    /// A kubeconfig for a ready cluster: a fresh client certificate from
    /// the cluster CA for `kubeforge:user:<subject>` in the group of `role`
    /// in the cluster's current credential generation
    /// (`kubeforge_cluster::credentials`; never `system:masters`), valid
    /// for `ttl`. Nothing secret is stored.
    pub async fn issue_kubeconfig(
        &self,
        c: &crate::store::cluster::Cluster,
        subject: &str,
        role: KubeconfigRole,
        ttl: std::time::Duration,
    ) -> Result<IssuedKubeconfig> {
        let endpoint = c.endpoint.clone().ok_or_else(|| {
            Error::ClusterNotReady(format!("cluster {} has no endpoint yet", c.name))
        })?;
        let pair = crate::store::pki::ca(&self.pool, &self.secrets, c.id)
            .await?
            .ok_or_else(|| {
                Error::ClusterNotReady(format!(
                    "cluster {} has no certificate authority yet",
                    c.name
                ))
            })?;
        let internal =
            |e: kubeforge_cluster::pki::PkiError| Error::Internal(anyhow::anyhow!("{e}"));
        let ca = pair.signer().map_err(internal)?;
        let generation = crate::store::credentials::generations(&self.pool, c.id)
            .await?
            .current;
        let group = credentials::group(role, generation);
        let user = credentials::user(subject);
        let ttl = chrono::TimeDelta::from_std(ttl)
            .map_err(|e| Error::Internal(anyhow::anyhow!("{e}")))?;
        let client = kubeforge_cluster::pki::issue_client_cert(
            &ca,
            &user,
            &[group.as_str()],
            chrono::Utc::now(),
            ttl,
        )
        .map_err(internal)?;
        // Cluster, user and context entries share one name, unique per
        // tenant, cluster and role, so kubeconfigs merge side by side.
        let entry =
            kubeforge_cluster::kubeconfig::tenant_entry_name(&c.tenant, c.name.as_str(), role);
        let yaml = kubeforge_cluster::kubeconfig::render_kubeconfig_with_context(
            &kubeforge_cluster::kubeconfig::KubeconfigInput {
                cluster_name: &entry,
                server: &endpoint,
                ca_pem: &pair.cert_pem,
                user_name: &entry,
                client_cert_pem: &client.cert_pem,
                client_key_pem: &client.key_pem,
            },
            &entry,
        );
        Ok(IssuedKubeconfig {
            yaml,
            role,
            context: entry,
            serial: client.serial_hex,
            expires_at: client.not_after,
            generation,
        })
    }
}
