//! Work a provider left for later, run as one `provider_upkeep` job per
//! provider kind. The `ssh` provider, for one, cannot wipe a host that
//! does not answer when its machine leaves; it releases the machine, keeps
//! the host out of every claim, and wipes it here once it answers again.
//!
//! The reconciler ensures the job after each machine a provider deletes
//! (a no-op while one is queued or running); the job calls
//! [`Provider::upkeep`](crate::providers::Provider::upkeep) until it says
//! nothing is left, then ends.

use std::time::Duration;

use crate::engine::jobs::{JobError, JobHandler, Outcome};
use crate::engine::lease::Lease;
use crate::error::Result;
use crate::state::SharedApp;
use crate::store::job::{self, Job};

/// The job kind.
pub const PROVIDER_UPKEEP: &str = "provider_upkeep";

/// Makes sure provider `kind`'s upkeep job is queued or running.
pub async fn ensure(conn: &mut sqlx::PgConnection, kind: &str) -> Result<()> {
    let key = format!("upkeep:{kind}");
    job::ensure(
        conn,
        job::NewJob {
            kind: PROVIDER_UPKEEP,
            payload: serde_json::json!({ "provider": kind }),
            dedupe_key: Some(&key),
            operation_id: None,
            max_attempts: i32::MAX,
            provider: Some(kind),
        },
    )
    .await
}

/// Runs `provider_upkeep` jobs.
pub struct Upkeep {
    app: SharedApp,
}

impl Upkeep {
    pub fn new(app: SharedApp) -> Self {
        Self { app }
    }
}

/// How long after a failed upkeep pass it is tried again.
const RETRY: Duration = Duration::from_secs(30);

#[async_trait::async_trait]
impl JobHandler for Upkeep {
    async fn run(&self, job: &Job, _lease: &Lease) -> std::result::Result<Outcome, JobError> {
        let kind = job
            .payload
            .get("provider")
            .and_then(|v| v.as_str())
            .ok_or_else(|| JobError::permanent("payload lacks provider"))?;
        let Some(provider) = self.app.providers.get(kind) else {
            return Err(JobError::permanent(format!(
                "this replica does not run provider {kind}"
            )));
        };
        match provider.upkeep().await {
            Ok(None) => Ok(Outcome::Done),
            Ok(Some(again)) => Ok(Outcome::RequeueAfter(again)),
            Err(e) => {
                tracing::warn!(provider = kind, error = %e, "provider upkeep failed; trying again");
                Ok(Outcome::RequeueAfter(RETRY))
            }
        }
    }
}
