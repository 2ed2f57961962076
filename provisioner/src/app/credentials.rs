//! Taking credentials back: a cluster's kubeconfigs (a new credential
//! generation, bound in the cluster by the engine) and API tokens (by
//! `jti`, into `revoked_tokens`, which every request is checked against).
//!
//! Who may (see `crate::context`): a tenant `admin` revokes its clusters'
//! kubeconfigs and its own tenant's API tokens when it shows the token
//! itself (the service then knows the token's tenant and expiry); a
//! `platform-admin` revokes any token, also by `jti` alone (its tenant and
//! expiry unknown: kept revoked for the longest token lifetime).

use chrono::{TimeDelta, Utc};
use kubeforge_cluster::api::{CredentialsRevoked, OperationView, RevokeTokenRequest, TokenRevoked};
use kubeforge_cluster::operations::OperationKind;
use kubeforge_cluster::ValidationError;
use std::time::Instant;

use super::{App, Request};
use crate::auth::{valid_jti, Claims, MAX_TOKEN_TTL};
use crate::context::{Action, OpContext, Role};
use crate::error::{Error, Result};
use crate::store::{cluster, credentials, operation};

impl App {
    /// Moves the cluster's credential generation on: kubeconfigs issued
    /// from now on carry the new one, and the operation succeeds once the
    /// engine has bound it in the cluster, which unbinds every earlier
    /// generation.
    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn credentials_revoke(
        &self,
        ctx: &OpContext,
        id_or_name: &str,
    ) -> Result<CredentialsRevoked> {
        ctx.authorize(Action::Administer)?;
        let mut tx = self.pool.begin().await?;
        let c = cluster::get_for_update(&mut tx, ctx, id_or_name).await?;
        if c.deletion_requested_at.is_some() {
            return Err(Error::Conflict("the cluster is being deleted".into()));
        }
        let generation = credentials::advance(&mut tx, c.id).await?;
        let op = self
            .request(
                &mut tx,
                ctx,
                Request {
                    cluster_id: c.id,
                    provider: c.provider.kind(),
                    pool: None,
                    kind: OperationKind::CredentialsRevoke,
                    generation,
                    reason: "CredentialsRevoked",
                    message: &format!(
                    "kubeconfigs of credential generation {} and before revoked by {}; new ones carry generation {generation}",
                    generation - 1,
                    ctx.subject
                ),
                },
            )
            .await?;
        let o = operation::get(&mut tx, ctx, op).await?;
        tx.commit().await?;
        tracing::info!(cluster = %c.id, generation, "cluster credentials revoked");
        Ok(CredentialsRevoked {
            credential_generation: generation,
            operation: OperationView::from(&o),
        })
    }

    /// Revokes an API token (see the module doc for who may).
    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn token_revoke(
        &self,
        ctx: &OpContext,
        req: RevokeTokenRequest,
    ) -> Result<TokenRevoked> {
        let (jti, tenant, expires_at) = match (req.jti, req.token) {
            (Some(jti), None) => {
                if ctx.role != Role::PlatformAdmin {
                    return Err(Error::Forbidden(format!(
                        "role {} may not revoke a token by jti: that needs role platform-admin \
                         (a tenant admin revokes its tenant's tokens by giving the token)",
                        ctx.role
                    )));
                }
                if !valid_jti(&jti) {
                    return Err(ValidationError::new(
                        "jti",
                        "must be 1-64 letters, digits, '-' or '_'",
                    )
                    .into());
                }
                let max = TimeDelta::from_std(MAX_TOKEN_TTL).map_err(anyhow::Error::from)?;
                (jti, None, Utc::now() + max)
            }
            (None, Some(token)) => {
                ctx.authorize(Action::Administer)?;
                let claims: Claims = self.auth.inspect(token.trim()).ok_or_else(|| {
                    ValidationError::new("token", "not a token this service signed")
                })?;
                // Another tenant's token is not there, as its objects are not.
                if ctx.role != Role::PlatformAdmin && claims.tenant != ctx.tenant {
                    return Err(Error::not_found("token", "given"));
                }
                let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0)
                    .ok_or_else(|| ValidationError::new("token", "its expiry is out of range"))?;
                let jti = claims.jti.unwrap_or_default();
                (jti, Some(claims.tenant), expires_at)
            }
            _ => {
                return Err(ValidationError::new("jti", "give exactly one of jti and token").into())
            }
        };
        let by = format!("{}/{}", ctx.tenant, ctx.subject);
        let mut conn = self.pool.acquire().await?;
        credentials::revoke_token(&mut conn, &jti, tenant.as_deref(), expires_at, &by).await?;
        self.revocations.insert(&jti);
        tracing::info!(jti = %jti, token_tenant = ?tenant, revoked_by = %by, "API token revoked");
        Ok(TokenRevoked { jti, expires_at })
    }

    /// 401 when the token was revoked. The replica's copy of the list is
    /// read again when older than `auth::REVOCATION_CACHE_TTL`.
    pub async fn check_token_revocation(&self, claims: &Claims) -> Result<()> {
        let started = Instant::now();
        if self.revocations.stale(started) {
            let jtis = credentials::revoked_jtis(&self.pool).await?;
            self.revocations.replace(jtis, started);
        }
        self.revocations.check(claims)
    }
}
