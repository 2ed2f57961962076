//! Postgres, the only state. One module per resource; every query that
//! reads or writes a tenant's rows takes the tenant from the caller's
//! `OpContext`. Queries are compile-checked (`sqlx::query!`) against the
//! schema in `migrations/`, with the offline data committed in `.sqlx/`.

pub mod autoscaler;
pub mod cluster;
pub mod credentials;
pub mod event;
pub mod fleet;
pub mod idempotency;
pub mod job;
pub mod machine;
pub mod node_pool;
pub mod operation;
pub mod pki;
pub mod secret;
pub mod service_secret;
pub mod tenant;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// The channel job producers NOTIFY and workers LISTEN on.
pub const JOBS_CHANNEL: &str = "kubeforge_jobs";

/// The forward-only migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How long a request waits for a database connection before it answers
/// 503: short, so that a lost database fails requests fast.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects a pool to `url`.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("parsing the database URL")?;
    pool_options(max_connections)
        .connect_with(options)
        .await
        .context("connecting to Postgres")
}

/// A pool to `url` that connects on first use (nothing is dialled here).
pub fn connect_lazy(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("parsing the database URL")?;
    Ok(pool_options(max_connections).connect_lazy_with(options))
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
}

/// Applies pending migrations; a no-op when the schema is current.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("running migrations")
}

/// Postgres's unique-violation SQLSTATE.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
