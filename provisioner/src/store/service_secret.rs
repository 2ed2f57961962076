//! Secrets of the service itself, not of a cluster (the CA of the
//! autoscaler's gRPC endpoint), in `service_secrets`: sealed by
//! [`SecretBox`] with `service/<name>` as associated data, so a value
//! copied to another row, or into `secrets`, does not open.
//!
//! A value is written once and never replaced: [`put_if_absent`] inserts
//! unless the name exists and answers what the table holds afterwards,
//! which is the same value for every replica that raced to create it.

use sqlx::{PgExecutor, PgPool};

use crate::crypto::{Sealed, SecretBox};
use crate::error::{Error, Result};

fn aad(name: &str) -> Vec<u8> {
    format!("service/{name}").into_bytes()
}

/// Stores `plaintext` under `name` unless a value is there already, then
/// returns the stored value (ours, or the one that was there first).
pub async fn put_if_absent(
    db: &PgPool,
    sbox: &SecretBox,
    name: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let sealed = sbox.seal(&aad(name), plaintext)?;
    sqlx::query!(
        "INSERT INTO service_secrets (name, key_id, nonce, ciphertext)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING",
        name,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext
    )
    .execute(db)
    .await?;
    get(db, sbox, name).await?.ok_or_else(|| {
        Error::Internal(anyhow::anyhow!(
            "service secret {name} is missing right after it was stored"
        ))
    })
}

/// Reads and opens the value stored under `name`, if any.
pub async fn get(db: impl PgExecutor<'_>, sbox: &SecretBox, name: &str) -> Result<Option<Vec<u8>>> {
    let row = sqlx::query!(
        "SELECT key_id, nonce, ciphertext FROM service_secrets WHERE name = $1",
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
    Ok(Some(sbox.open(&aad(name), &sealed)?))
}
