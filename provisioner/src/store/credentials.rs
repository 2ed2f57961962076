//! Credentials that can be taken back: each cluster's credential
//! generation (the groups its kubeconfigs carry, see
//! `kubeforge_cluster::addons::CredentialGroups`) and the list of revoked
//! API tokens.
//!
//! The generation lives on the cluster's row but is read and written only
//! here, apart from the cluster's other fields: the API moves it on under
//! the row lock, the engine records what it has bound in the cluster.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::Result;

/// A cluster's credential generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generations {
    /// What kubeconfigs are issued for now.
    pub current: i64,
    /// What the engine last bound in the cluster (0: nothing yet).
    pub applied: i64,
}

/// The cluster's generations (by id; the caller has found the cluster
/// within its tenant).
pub async fn generations(db: impl PgExecutor<'_>, cluster_id: Uuid) -> Result<Generations> {
    let row = sqlx::query!(
        "SELECT credential_generation, credential_generation_applied FROM clusters WHERE id = $1",
        cluster_id
    )
    .fetch_one(db)
    .await?;
    Ok(Generations {
        current: row.credential_generation,
        applied: row.credential_generation_applied,
    })
}

/// Moves the generation on (the caller holds the row lock); returns the new one.
pub async fn advance(conn: &mut PgConnection, cluster_id: Uuid) -> Result<i64> {
    let generation = sqlx::query_scalar!(
        "UPDATE clusters SET credential_generation = credential_generation + 1
         WHERE id = $1 RETURNING credential_generation",
        cluster_id
    )
    .fetch_one(conn)
    .await?;
    Ok(generation)
}

/// Records that `generation` is bound in the cluster (never moves back).
pub async fn set_applied(db: impl PgExecutor<'_>, cluster_id: Uuid, generation: i64) -> Result<()> {
    sqlx::query!(
        "UPDATE clusters SET credential_generation_applied = $2
         WHERE id = $1 AND credential_generation_applied < $2",
        cluster_id,
        generation
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Revokes a token by `jti` until `expires_at`, and prunes revocations of
/// tokens that have expired anyway. Revoking twice keeps the later expiry.
pub async fn revoke_token(
    conn: &mut PgConnection,
    jti: &str,
    tenant: Option<&str>,
    expires_at: DateTime<Utc>,
    revoked_by: &str,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO revoked_tokens (jti, tenant, expires_at, revoked_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (jti) DO UPDATE SET expires_at = GREATEST(revoked_tokens.expires_at, EXCLUDED.expires_at)",
        jti,
        tenant,
        expires_at,
        revoked_by
    )
    .execute(&mut *conn)
    .await?;
    prune(&mut *conn).await
}

/// Forgets revocations of tokens that have expired (a minute past expiry:
/// the verifier's leeway is seconds).
pub async fn prune(db: impl PgExecutor<'_>) -> Result<()> {
    sqlx::query!("DELETE FROM revoked_tokens WHERE expires_at < now() - interval '1 minute'")
        .execute(db)
        .await?;
    Ok(())
}

/// The `jti`s revoked and not yet expired.
pub async fn revoked_jtis(db: impl PgExecutor<'_>) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar!(
        "SELECT jti FROM revoked_tokens WHERE expires_at >= now() - interval '1 minute'"
    )
    .fetch_all(db)
    .await?)
}
