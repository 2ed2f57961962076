//! Platform administration: the `ssh` provider's host pool and tenant
//! quotas. Only `platform-admin` tokens reach these.

use kubeforge_cluster::api::{
    CreateHostRequest, HostCreated, HostCredentials, HostProblem, HostView, Quota, QuotaView,
};
use kubeforge_cluster::hosts::HostCapacity;
use kubeforge_cluster::network::check_host_address;
use kubeforge_cluster::{Labels, ValidationError};
use std::net::{IpAddr, Ipv4Addr};
use uuid::Uuid;

use super::{Accepted, App, Idempotency};
use crate::auth::valid_tenant;
use crate::context::{Action, OpContext};
use crate::error::{Error, Result};
use crate::store::idempotency::{self, Claim};
use crate::store::tenant;

/// Builds a [`HostView`] from a `hosts` row of either query (their
/// anonymous record types differ, their columns do not).
macro_rules! host_view {
    ($r:expr) => {{
        let r = $r;
        HostView {
            id: r.id,
            address: r.address,
            port: u16::try_from(r.port).unwrap_or(22),
            user: r.ssh_user,
            host_key: r.host_key,
            labels: serde_json::from_value(r.labels).unwrap_or_default(),
            capacity: r
                .capacity
                .and_then(|c| serde_json::from_value::<HostCapacity>(c).ok())
                .map(|c| c.to_resource_map()),
            capacity_source: r.capacity_source,
            problem: r.problem.and_then(|p| {
                Some(HostProblem {
                    code: p.get("code")?.as_str()?.to_string(),
                    message: p.get("message")?.as_str()?.to_string(),
                    since: r.problem_at?,
                })
            }),
            credential_kind: r.credential_kind,
            claimed_by: r.claimed_by,
            created_at: r.created_at,
        }
    }};
}

/// Checks a host registration. `gateways` are the service's own addresses
/// on its providers' networks (the lab bridge's): never a host's.
fn check_host(
    req: &CreateHostRequest,
    gateways: &[Ipv4Addr],
) -> Result<(Labels, Option<HostCapacity>)> {
    let address: IpAddr = req
        .address
        .parse()
        .map_err(|_| ValidationError::new("address", "must be an IPv4 or IPv6 address"))?;
    check_host_address(address).map_err(|m| ValidationError::new("address", m))?;
    if let IpAddr::V4(v4) = address.to_canonical() {
        if gateways.contains(&v4) {
            return Err(ValidationError::new(
                "address",
                format!("{address} is this service's own address on a provider network"),
            )
            .into());
        }
    }
    if req.port == 0 {
        return Err(ValidationError::new("port", "must be 1-65535").into());
    }
    let user_ok = !req.user.is_empty()
        && req.user.len() <= 32
        && req
            .user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !user_ok {
        return Err(ValidationError::new("user", "must be a plain Unix user name").into());
    }
    // The line the SSH client pins, parsed as `ssh::parse_public_key`
    // parses it when it connects (the same ssh-key parser; `app` does not
    // reach down into `ssh`); a comment may follow the key, but no control
    // character (a NUL fails the insert).
    let host_key_ok = !req.host_key.chars().any(char::is_control)
        && russh::keys::ssh_key::PublicKey::from_openssh(req.host_key.trim()).is_ok();
    if !host_key_ok {
        return Err(ValidationError::new(
            "host_key",
            "must be an OpenSSH public key line, `TYPE BASE64 [comment]`, e.g. `ssh-ed25519 AAAA...`",
        )
        .into());
    }
    match &req.credentials {
        HostCredentials::PrivateKey(k) if !k.contains("PRIVATE KEY") || k.contains('\0') => {
            return Err(ValidationError::new(
                "credentials.private_key",
                "must be a PEM or OpenSSH private key",
            )
            .into())
        }
        HostCredentials::Password(p) if p.is_empty() => {
            return Err(ValidationError::new("credentials.password", "must not be empty").into())
        }
        HostCredentials::Password(p) if p.contains('\0') => {
            return Err(ValidationError::new(
                "credentials.password",
                "must not contain a NUL byte (no SSH server takes one)",
            )
            .into())
        }
        _ => {}
    }
    let labels = Labels::parse(req.labels.clone()).map_err(|e| e.under("labels"))?;
    let capacity = req
        .capacity
        .as_ref()
        .map(|c| HostCapacity::parse(c).map_err(|e| e.under("capacity")))
        .transpose()?;
    Ok((labels, capacity))
}

impl App {
    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn host_create(
        &self,
        ctx: &OpContext,
        idem: Option<Idempotency>,
        req: CreateHostRequest,
    ) -> Result<Accepted> {
        ctx.authorize(Action::Platform)?;
        let gateways: Vec<Ipv4Addr> = self
            .providers
            .networks()
            .iter()
            .filter_map(|n| n.gateway)
            .collect();
        let (labels, capacity) = check_host(&req, &gateways)?;
        let id = Uuid::now_v7();
        let (kind, secret) = match &req.credentials {
            HostCredentials::PrivateKey(k) => ("private_key", k.as_bytes()),
            HostCredentials::Password(p) => ("password", p.as_bytes()),
        };
        let sealed = self.secrets.seal(format!("host/{id}").as_bytes(), secret)?;
        let mut tx = self.pool.begin().await?;
        if let Some(i) = &idem {
            if let Claim::Replay { status, body } =
                idempotency::claim(&mut tx, ctx, &i.key, &i.hash).await?
            {
                return Ok(Accepted { status, body });
            }
        }
        let labels_json = serde_json::to_value(&labels).map_err(anyhow::Error::from)?;
        let capacity_json = capacity
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(anyhow::Error::from)?;
        let res = sqlx::query!(
            "INSERT INTO hosts (id, address, port, ssh_user, host_key, labels, credential_kind,
                                credential_key_id, credential_nonce, credential_sealed,
                                capacity, capacity_source)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                     CASE WHEN $11::jsonb IS NULL THEN NULL ELSE 'declared' END)",
            id,
            req.address,
            i32::from(req.port),
            req.user,
            req.host_key.trim(),
            labels_json,
            kind,
            sealed.key_id,
            sealed.nonce,
            sealed.ciphertext,
            capacity_json
        )
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if crate::store::is_unique_violation(&e) => {
                return Err(Error::Conflict(format!(
                    "host {}:{} is already registered",
                    req.address, req.port
                )))
            }
            other => {
                other?;
            }
        }
        let host = self.host_by_id(&mut tx, id).await?;
        let accepted = Accepted::new(201, &HostCreated { host })?;
        if let Some(i) = &idem {
            idempotency::save(&mut tx, ctx, &i.key, 201, &accepted.body).await?;
        }
        tx.commit().await?;
        Ok(accepted)
    }

    async fn host_by_id(&self, conn: &mut sqlx::PgConnection, id: Uuid) -> Result<HostView> {
        let r = sqlx::query!(
            "SELECT id, address, port, ssh_user, host_key, labels, credential_kind, claimed_by,
                    created_at, capacity, capacity_source, problem, problem_at
             FROM hosts WHERE id = $1",
            id
        )
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::not_found("host", id.to_string()))?;
        Ok(host_view!(r))
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn host_list(&self, ctx: &OpContext) -> Result<Vec<HostView>> {
        ctx.authorize(Action::Platform)?;
        let rows = sqlx::query!(
            "SELECT id, address, port, ssh_user, host_key, labels, credential_kind, claimed_by,
                    created_at, capacity, capacity_source, problem, problem_at
             FROM hosts ORDER BY id"
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| host_view!(r)).collect())
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn host_delete(&self, ctx: &OpContext, id: &str) -> Result<()> {
        ctx.authorize(Action::Platform)?;
        let id = Uuid::parse_str(id).map_err(|_| Error::not_found("host", id))?;
        let mut tx = self.pool.begin().await?;
        let host = self.host_by_id(&mut tx, id).await?;
        if let Some(m) = host.claimed_by {
            return Err(Error::Conflict(format!("host is in use by machine {m}")));
        }
        sqlx::query!("DELETE FROM hosts WHERE id = $1", id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn quota_get(&self, ctx: &OpContext, tenant_id: &str) -> Result<QuotaView> {
        ctx.authorize(Action::Platform)?;
        if !valid_tenant(tenant_id) {
            return Err(Error::not_found("tenant", tenant_id));
        }
        let mut conn = self.pool.acquire().await?;
        let quota = tenant::get_quota(&mut *conn, tenant_id)
            .await?
            .unwrap_or(self.config.default_quota);
        let usage = tenant::usage(&mut conn, tenant_id).await?;
        Ok(QuotaView {
            tenant: tenant_id.into(),
            max_clusters: quota.max_clusters,
            max_nodes: quota.max_nodes,
            max_cpus: quota.max_cpus,
            clusters: usage.clusters,
            nodes: usage.nodes,
            cpus: usage.cpus,
        })
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn quota_put(
        &self,
        ctx: &OpContext,
        tenant_id: &str,
        quota: Quota,
    ) -> Result<QuotaView> {
        ctx.authorize(Action::Platform)?;
        if !valid_tenant(tenant_id) {
            return Err(ValidationError::new(
                "tenant",
                "must be 1-63 lowercase letters, digits or '-'",
            )
            .into());
        }
        if quota.max_clusters < 0 || quota.max_clusters > 10_000 {
            return Err(ValidationError::new("max_clusters", "must be 0-10000").into());
        }
        if quota.max_nodes < 0 || quota.max_nodes > 100_000 {
            return Err(ValidationError::new("max_nodes", "must be 0-100000").into());
        }
        if quota.max_cpus < 0 || quota.max_cpus > 1_000_000 {
            return Err(ValidationError::new("max_cpus", "must be 0-1000000").into());
        }
        tenant::put_quota(&self.pool, tenant_id, quota).await?;
        self.quota_get(ctx, tenant_id).await
    }
}
