//! Idempotency keys. The first request with a key inserts the key row in
//! the same transaction as its work and stores its response there; a
//! concurrent twin blocks on that row's unique index until the first
//! commits, then replays the stored response. A rolled-back first attempt
//! leaves no row, so the twin simply does the work.

use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::context::OpContext;
use crate::error::{Error, Result};

/// The outcome of claiming a key.
pub enum Claim {
    /// This request owns the key: do the work, then [`save`].
    Fresh,
    /// Replay this earlier response.
    Replay {
        status: u16,
        body: serde_json::Value,
    },
}

/// Hash of what makes two requests "the same": method, path and body.
pub fn request_hash(method: &str, path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

/// Claims `key` for this request inside the caller's transaction.
pub async fn claim(
    conn: &mut PgConnection,
    ctx: &OpContext,
    key: &str,
    hash: &str,
) -> Result<Claim> {
    let inserted = sqlx::query!(
        "INSERT INTO idempotency_keys (tenant, key, request_hash, response_status, response_body)
         VALUES ($1, $2, $3, 0, 'null') ON CONFLICT (tenant, key) DO NOTHING",
        ctx.tenant,
        key,
        hash
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Fresh);
    }
    let row = sqlx::query!(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys
         WHERE tenant = $1 AND key = $2",
        ctx.tenant,
        key
    )
    .fetch_one(&mut *conn)
    .await?;
    if row.request_hash != hash {
        return Err(Error::IdempotencyMismatch);
    }
    Ok(Claim::Replay {
        status: u16::try_from(row.response_status).unwrap_or(200),
        body: row.response_body,
    })
}

/// Stores the response of a [`Claim::Fresh`] request.
pub async fn save(
    conn: &mut PgConnection,
    ctx: &OpContext,
    key: &str,
    status: u16,
    body: &serde_json::Value,
) -> Result<()> {
    sqlx::query!(
        "UPDATE idempotency_keys SET response_status = $3, response_body = $4
         WHERE tenant = $1 AND key = $2",
        ctx.tenant,
        key,
        i32::from(status),
        body
    )
    .execute(conn)
    .await?;
    Ok(())
}
