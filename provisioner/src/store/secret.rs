//! Secrets of a cluster (CA keys and the like), sealed by [`SecretBox`]
//! before they reach the database; plaintext never touches a column.

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::crypto::{Sealed, SecretBox};
use crate::error::Result;

fn aad(cluster_id: Uuid, name: &str) -> Vec<u8> {
    format!("{cluster_id}/{name}").into_bytes()
}

/// Stores (or replaces) a secret.
pub async fn put(
    db: impl PgExecutor<'_>,
    sbox: &SecretBox,
    tenant: &str,
    cluster_id: Uuid,
    name: &str,
    plaintext: &[u8],
) -> Result<()> {
    let sealed = sbox.seal(&aad(cluster_id, name), plaintext)?;
    sqlx::query!(
        "INSERT INTO secrets (id, tenant, cluster_id, name, key_id, nonce, ciphertext)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (cluster_id, name)
         DO UPDATE SET key_id = $5, nonce = $6, ciphertext = $7",
        Uuid::now_v7(),
        tenant,
        cluster_id,
        name,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Reads and opens a secret.
pub async fn get(
    db: impl PgExecutor<'_>,
    sbox: &SecretBox,
    cluster_id: Uuid,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    let row = sqlx::query!(
        "SELECT key_id, nonce, ciphertext FROM secrets WHERE cluster_id = $1 AND name = $2",
        cluster_id,
        name
    )
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let sealed = Sealed {
        key_id: row.key_id,
        nonce: row.nonce,
        ciphertext: row.ciphertext,
    };
    Ok(Some(sbox.open(&aad(cluster_id, name), &sealed)?))
}

/// Removes every secret of a cluster; returns how many.
pub async fn delete_for_cluster(db: impl PgExecutor<'_>, cluster_id: Uuid) -> Result<u64> {
    Ok(
        sqlx::query!("DELETE FROM secrets WHERE cluster_id = $1", cluster_id)
            .execute(db)
            .await?
            .rows_affected(),
    )
}
