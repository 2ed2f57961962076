//! A claimed job's lease, as its handler holds it, and the only way a
//! handler writes on the job's behalf: [`Lease::begin`] opens a *fenced*
//! transaction.
//!
//! Why: a worker can lose its lease without knowing it (a GC-like pause,
//! a starved machine, a partition from the database). Another engine then
//! claims the job after the lease expires and runs it. Without fencing the
//! first worker would wake up and go on writing from what it saw before
//! the pause: a second machine row, a pool scaled from a stale size, an
//! operation finished twice. Two things stop it:
//!
//! - **Giving up early.** The engine renews the lease every
//!   [`renew_every`] (a quarter of the lease) and, once [`give_up_after`]
//!   (half the lease) has passed since the last renewal that succeeded was
//!   sent, revokes the lease and cancels the handler (its future is
//!   dropped), half a lease before anyone else may claim the job.
//! - **Fencing.** Each claim moves the job row's `fence` on and hands out
//!   a [`LeaseToken`] (job, owner, fence). [`Lease::begin`] starts a
//!   transaction whose first statement locks the job row `FOR SHARE` and
//!   checks it still has this owner and fence, is running and its lease
//!   has not expired (`job::holds_lease`). A new claim must lock the row
//!   `FOR UPDATE`, so it cannot interleave with a fenced transaction: the
//!   transaction's writes land wholly before the takeover, or the check
//!   fails and nothing is written ([`Error::LeaseLost`]). Once a check has
//!   failed (or the engine gave up) the lease stays lost: every later
//!   `begin` fails at once, so the handler stops at its next write.
//!
//! Keep fenced transactions short (database statements only, never a
//! provider or SSH call inside): the share lock holds up the lease's own
//! renewal until it commits.
//!
//! What fencing cannot cover: calls outside the database (the provider,
//! SSH, a tenant cluster's API). Those are idempotent by contract (a
//! machine is created under its ledger id, so a repeated create is the
//! same machine), and giving up early bounds how long a stale worker may
//! still make them.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::job::{self, LeaseToken};

/// How often the engine renews a lease: a quarter of it, so that a
/// renewal or two may fail before the worker gives up.
pub fn renew_every(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(10))
}

/// How long a worker goes on without a successful renewal before it
/// gives up the job: half the lease, counted from when the last renewal
/// that succeeded was sent (the database extended the lease to at least
/// that moment plus the lease). The other half is the margin before
/// another engine may claim the job, for a worker slow to notice.
pub fn give_up_after(lease: Duration) -> Duration {
    lease / 2
}

/// One claim of one job, as its handler holds it. Cheap to clone; all
/// clones share whether the lease is lost.
#[derive(Clone)]
pub struct Lease {
    shared: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    token: LeaseToken,
    lost: AtomicBool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("token", &self.shared.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Lease {
    /// The lease of claim `token`, writing through `pool`. The engine makes
    /// one per claim; tests make their own to play a worker by hand.
    pub fn new(pool: PgPool, token: LeaseToken) -> Lease {
        Lease {
            shared: Arc::new(Shared {
                pool,
                token,
                lost: AtomicBool::new(false),
            }),
        }
    }

    /// The claim this lease is.
    pub fn token(&self) -> LeaseToken {
        self.shared.token
    }

    /// Whether this worker knows it no longer holds the job (the engine
    /// gave up, or a fenced check failed). `false` does not prove it still
    /// does: only [`Lease::begin`] does, for its transaction.
    pub fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::SeqCst)
    }

    /// Marks the lease lost: every later [`Lease::begin`] fails. The
    /// engine calls this when it gives up on renewing.
    pub fn revoke(&self) {
        self.shared.lost.store(true, Ordering::SeqCst);
    }

    fn lost_error(&self) -> Error {
        Error::LeaseLost {
            job_id: self.shared.token.job_id,
        }
    }

    /// Opens a fenced transaction: the job row is share-locked and the
    /// lease checked before anything else. [`Error::LeaseLost`] if it is
    /// not held (and from then on for every call).
    pub async fn begin(&self) -> Result<Fenced> {
        if self.is_lost() {
            return Err(self.lost_error());
        }
        let mut tx = self.shared.pool.begin().await?;
        if !job::holds_lease(&mut tx, self.shared.token).await? {
            self.revoke();
            tracing::warn!(
                job_id = self.shared.token.job_id,
                "job lease lost: refusing to write"
            );
            return Err(self.lost_error());
        }
        Ok(Fenced { tx })
    }
}

/// A transaction that has checked the lease and holds the job row's share
/// lock until it ends: use it as a `&mut PgConnection` (`&mut *tx`) for
/// the writes, then [`Fenced::commit`]. Dropped without commit, it rolls
/// back.
pub struct Fenced {
    tx: Transaction<'static, Postgres>,
}

impl Fenced {
    /// Commits the writes (and releases the job row).
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl Deref for Fenced {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for Fenced {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn giving_up_leaves_half_a_lease_of_margin() {
        for secs in [2u64, 10, 30] {
            let lease = Duration::from_secs(secs);
            assert!(
                renew_every(lease) * 2 <= give_up_after(lease),
                "two renewals fit"
            );
            assert_eq!(lease - give_up_after(lease), lease / 2);
        }
    }
}
