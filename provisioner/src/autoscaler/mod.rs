//! The builtin autoscaler: node pools with `autoscaling: {min, max}` grow
//! when pods cannot be scheduled and shrink when nodes are no longer
//! needed, and every decision is explained, pool by pool and pod by pod.
//!
//! **One watcher per cluster, across replicas.** Each cluster that wants
//! autoscaling (ready or degraded, `autoscaler.mode` `builtin`, at least
//! one pool with `autoscaling`) has one `autoscale_cluster` job, ensured
//! by the cluster reconciler (`engine::ensure_autoscaler`: the engine
//! knows the job, not this module, which sits above it). The job runs for as long as the cluster
//! wants it, on a lane of its own in the job engine (so watches never hold
//! the slots reconciles need), under the engine's lease: if the replica
//! holding it dies, the lease runs out and another replica claims the job
//! and starts watching. Every decision is written under that lease
//! ([`apply`]), so a replica that lost it cannot write one.
//!
//! **Event-driven.** The job watches the cluster's pods, nodes,
//! DaemonSets and PodDisruptionBudgets ([`observe::Mirror`]; compact
//! records, bounded). A pod becoming pending starts a batch: the round
//! runs once no new pending pod arrived for `batch_idle_seconds`, or
//! `batch_max_seconds` after the first, whichever is sooner (Karpenter's
//! rule). A round also runs every [`ROUND_EVERY`] to reconsider scale-down
//! and anything a batch missed. A node of the cluster becoming Ready
//! wakes the cluster's reconciler at once, so a join ends when the Ready
//! condition arrives, not at the next resync.
//!
//! **A round** ([`decide`]) re-reads the cluster, pools and machines
//! from the database (it decides from sizes as they are now), simulates
//! (pure code in `kubeforge_cluster::simulate`) and writes: scale-ups
//! first; scale-down only when no pending pod waits for a node, the
//! pool has no node on its way, and the cluster's last scale-up (by this
//! autoscaler or anyone's `PATCH`) is older than the cool-down (the
//! unneeded time). Nodes still on their way (a pool's size above its
//! Ready nodes) count as nodes in the simulation, so a round never asks
//! twice for the same pods, whichever replica runs it. What the round saw and decided
//! is kept per cluster (`autoscaler_status`, see
//! `GET /v1/clusters/{cluster}/autoscaler`), each decision is a cluster
//! event, and the pending pods, decisions and decision latency are
//! metrics.

pub mod apply;
pub mod decide;
pub mod observe;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use kubeforge_cluster::api::{AutoscalerDecisionView, AutoscalerSnapshot, DECISIONS_KEPT};
use tokio::time::Instant;
use uuid::Uuid;

use self::apply::{Fence, Written};
use self::decide::World;
use self::observe::Mirror;
use crate::engine::jobs::{JobError, JobHandler, Outcome};
use crate::engine::lease::Lease;
use crate::state::SharedApp;
use crate::store::job::Job;
use crate::store::{self, event};
use crate::tenant::TenantApi;

/// The job kind: one per cluster that wants autoscaling.
pub use crate::engine::AUTOSCALE_CLUSTER as AUTOSCALE;
/// How many clusters one replica watches at once (the job engine's lane).
pub const LANE_SLOTS: usize = 256;
/// A round runs at least this often while the watch is up.
pub const ROUND_EVERY: Duration = Duration::from_secs(10);
/// Most events one round records on pods in the tenant cluster (the rest
/// are told in later rounds).
pub const POD_EVENTS_PER_ROUND: usize = 50;
/// How soon a cluster found too large for the builtin autoscaler is
/// looked at again.
pub const TOO_LARGE_RECHECK: Duration = Duration::from_secs(10 * 60);
/// The watch is restarted this often, with a fresh identity (the
/// service's certificates for a cluster live an hour).
pub const WATCH_FOR: Duration = Duration::from_secs(30 * 60);

/// Runs `autoscale_cluster` jobs.
pub struct Autoscaler {
    app: SharedApp,
}

impl Autoscaler {
    pub fn new(app: SharedApp) -> Self {
        Autoscaler { app }
    }
}

#[async_trait::async_trait]
impl JobHandler for Autoscaler {
    async fn run(&self, job: &Job, lease: &Lease) -> Result<Outcome, JobError> {
        let id = crate::engine::reconcile::cluster_id(job)?;
        let fence: Fence = lease.token();
        let result = watch(&self.app, id, fence).await;
        if let Err(e) = &result {
            tracing::warn!(cluster = %id, error = %e, "autoscaler watch ended");
        }
        self.app
            .metrics
            .autoscaler_pending_pods
            .with_label_values(&[&id.to_string()])
            .set(0);
        result
    }
}

/// When the pending pods that arrived since the last round are decided.
#[derive(Debug, Default)]
struct Batch {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Batch {
    fn arrived(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn due(&self, idle: Duration, max: Duration) -> Option<Instant> {
        Some((self.last? + idle).min(self.first? + max))
    }
}

/// Watches one cluster and decides for it until it no longer wants
/// autoscaling (Done) or the watch is due for a fresh identity (run again
/// at once).
async fn watch(app: &SharedApp, id: Uuid, fence: Fence) -> Result<Outcome, JobError> {
    let Some(mut world) = World::load(app, id).await? else {
        return Ok(Outcome::Done);
    };
    let Some(endpoint) = world.cluster.endpoint.clone() else {
        return Ok(Outcome::RequeueAfter(ROUND_EVERY));
    };
    let api = crate::engine::tenant_api(app, &world.cluster, &endpoint).await?;
    let mut pods = api.watch_pods();
    let mut nodes = api.watch_node_objects();
    let mut daemonsets = api.watch_daemonsets();
    let mut pdbs = api.watch_pdbs();
    let mut mirror = Mirror::default();
    let mut batch = Batch::default();
    let mut state = State::load(app, id).await?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(ROUND_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(cluster = %world.cluster.name, "autoscaler watching");

    loop {
        let due = batch.due(world.settings.batch_idle, world.settings.batch_max);
        tokio::select! {
            Some(e) = pods.next() => match e {
                Ok(e) => {
                    if !mirror.pod_event(e).is_empty() {
                        batch.arrived(Instant::now());
                    }
                    if mirror.too_large() {
                        // Memory stays bounded: the watch and what it
                        // kept are dropped, and looked at again later.
                        too_large(app, &world, &mut state).await?;
                        return Ok(Outcome::RequeueAfter(TOO_LARGE_RECHECK));
                    }
                }
                Err(e) => tracing::warn!(cluster = %world.cluster.name, error = %e, "pod watch"),
            },
            Some(e) = nodes.next() => match e {
                Ok(e) => {
                    // A join ends when its node is Ready: tell the
                    // reconciler now rather than at its next resync (the
                    // job is deduplicated, so a Ready it did not wait for
                    // costs one pass).
                    if !mirror.node_event(e).is_empty() {
                        let mut conn = app.pool.acquire().await.map_err(JobError::from)?;
                        app.nudge_reconcile(&mut conn, id, world.cluster.provider.kind()).await?;
                    }
                }
                Err(e) => tracing::warn!(cluster = %world.cluster.name, error = %e, "node watch"),
            },
            Some(e) = daemonsets.next() => match e {
                Ok(e) => mirror.daemonset_event(e),
                Err(e) => tracing::warn!(cluster = %world.cluster.name, error = %e, "daemonset watch"),
            },
            Some(e) = pdbs.next() => match e {
                Ok(e) => mirror.pdb_event(e),
                Err(e) => tracing::warn!(cluster = %world.cluster.name, error = %e, "pdb watch"),
            },
            () = sleep_until(due), if due.is_some() => {
                batch = Batch::default();
                // Decide from the pools as they are now, not as the last
                // tick saw them (a scale-down may have lowered a size).
                match World::load(app, id).await? {
                    Some(w) => world = w,
                    None => return Ok(Outcome::Done),
                }
                round(app, api.as_ref(), fence, &world, &mirror, &mut state).await?;
            }
            _ = tick.tick() => {
                match World::load(app, id).await? {
                    Some(w) => world = w,
                    None => return Ok(Outcome::Done),
                }
                if started.elapsed() >= WATCH_FOR {
                    return Ok(Outcome::RequeueAfter(Duration::ZERO));
                }
                round(app, api.as_ref(), fence, &world, &mirror, &mut state).await?;
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the autoscaler of one cluster remembers between rounds.
#[derive(Debug, Default)]
struct State {
    snapshot: AutoscalerSnapshot,
    /// Nodes found unneeded, since when (kept by this replica: a replica
    /// that takes the watch over starts the clocks again, which can only
    /// delay a scale-down).
    unneeded: kubeforge_cluster::scaledown::UnneededTracker,
    /// When this cluster last scaled up (the scale-down cool-down).
    last_scale_up: Option<chrono::DateTime<Utc>>,
    /// The last `no_scale_up` explanation recorded, to record it once.
    last_no_scale_up: Option<String>,
    /// Each pool's size as last seen: a size that grew since (whoever
    /// grew it, a tenant's `PATCH` too) starts the scale-down cool-down.
    sizes: HashMap<Uuid, u32>,
    /// What each pending pod was last told (a hash of the message), so
    /// that each is told once per change.
    told: HashMap<String, u64>,
}

impl State {
    async fn load(app: &SharedApp, id: Uuid) -> Result<State, JobError> {
        let snapshot = store::autoscaler::get_snapshot(&app.pool, id)
            .await?
            .unwrap_or_default();
        let last_scale_up = snapshot
            .decisions
            .values()
            .flatten()
            .filter(|d| d.kind == "scale_up")
            .map(|d| d.at)
            .max();
        Ok(State {
            snapshot,
            last_scale_up,
            ..State::default()
        })
    }

    fn remember(&mut self, pool: &str, d: AutoscalerDecisionView) {
        let list = self.snapshot.decisions.entry(pool.to_string()).or_default();
        list.insert(0, d);
        list.truncate(DECISIONS_KEPT);
    }
}

/// Says, on every autoscaling pool of the cluster, that it has more pods
/// than the builtin autoscaler keeps.
async fn too_large(app: &SharedApp, world: &World, state: &mut State) -> Result<(), JobError> {
    let why = format!(
        "the cluster has more than {} pods, more than the builtin autoscaler keeps; looked at again in {} minutes",
        observe::MAX_PODS,
        TOO_LARGE_RECHECK.as_secs() / 60
    );
    state.snapshot.holds = world
        .autoscaling_pools()
        .map(|p| (p.name.to_string(), why.clone()))
        .collect();
    state.snapshot.observed_at = Some(Utc::now());
    store::autoscaler::put_snapshot(&app.pool, world.cluster.id, &state.snapshot).await?;
    Ok(())
}

/// One round: simulate, write what it decided, keep what it saw.
async fn round(
    app: &SharedApp,
    api: &dyn TenantApi,
    fence: Fence,
    world: &World,
    mirror: &Mirror,
    state: &mut State,
) -> Result<(), JobError> {
    if !mirror.synced() {
        return Ok(());
    }
    let now = Utc::now();
    let c = &world.cluster;
    for p in world.autoscaling_pools() {
        if let Some(seen) = state.sizes.insert(p.id, p.size) {
            if p.size > seen {
                state.last_scale_up = Some(now);
            }
        }
    }
    let holds = world.holds(now);
    let up = decide::plan_scale_up(world, mirror, &holds);
    app.metrics
        .autoscaler_pending_pods
        .with_label_values(&[&c.id.to_string()])
        .set(i64::try_from(up.pending_total).unwrap_or(i64::MAX));

    let mut grown: HashMap<&str, (u32, u32, u32)> = HashMap::new();
    for g in &up.grows {
        let written = apply::grow(app, fence, c, g.pool_id, g.from, g.to, &g.reason).await?;
        let Written::Done { operation } = written else {
            if let Written::Stale(why) = written {
                tracing::info!(cluster = %c.name, pool = %g.pool, %why, "scale-up not written");
            }
            continue;
        };
        app.metrics
            .autoscaler_decisions
            .with_label_values(&["scale_up"])
            .inc();
        if let Some(since) = g.oldest_pending_since {
            let waited = (now - since).to_std().unwrap_or_default();
            app.metrics
                .autoscaler_decision_latency
                .with_label_values(&["scale_up"])
                .observe(waited.as_secs_f64());
        }
        state.last_scale_up = Some(now);
        state.sizes.insert(g.pool_id, g.to);
        let max = world
            .autoscaling_pools()
            .find(|p| p.id == g.pool_id)
            .and_then(|p| p.autoscaling)
            .map_or(g.to, |a| a.max);
        grown.insert(g.pool.as_str(), (g.from, g.to, max));
        state.remember(
            &g.pool,
            AutoscalerDecisionView {
                at: now,
                kind: "scale_up".into(),
                from: g.from,
                to: g.to,
                node: None,
                pods: g.pods,
                reason: g.reason.clone(),
                operation: Some(operation),
            },
        );
    }

    tell_pods(api, mirror, &up.notices, &grown, &mut state.told).await;

    // Pods no pool can take: said once per distinct explanation.
    match &up.no_scale_up {
        Some(why) if state.last_no_scale_up.as_ref() != Some(why) => {
            event::record(
                &app.pool,
                event::NewEvent {
                    tenant: &c.tenant,
                    cluster_id: c.id,
                    node_pool_id: None,
                    operation_id: None,
                    warning: true,
                    reason: "NoScaleUp",
                    message: why,
                },
            )
            .await?;
            app.metrics
                .autoscaler_decisions
                .with_label_values(&["no_scale_up"])
                .inc();
            state.last_no_scale_up = Some(why.clone());
        }
        Some(_) => {}
        None => state.last_no_scale_up = None,
    }

    // Scale down only when no pending pod waits for a node (a new one, or
    // one that exists and that the scheduler is about to use); the
    // simulation itself keeps the cool-down after a scale-up.
    let down =
        decide::plan_scale_down(world, mirror, &mut state.unneeded, now, state.last_scale_up);
    if up.waiting_for_new_nodes == 0 && up.about_to_schedule == 0 && up.grows.is_empty() {
        // Several empty nodes of one pool may go in one round: each
        // removal starts from the size the previous one left.
        let mut sizes: HashMap<Uuid, u32> = HashMap::new();
        for r in &down.removals {
            let from = *sizes.entry(r.pool_id).or_insert(r.from);
            let written =
                apply::remove(app, fence, c, r.pool_id, r.machine_id, from, &r.reason).await?;
            let Written::Done { operation } = written else {
                continue;
            };
            sizes.insert(r.pool_id, from - 1);
            state.sizes.insert(r.pool_id, from - 1);
            app.metrics
                .autoscaler_decisions
                .with_label_values(&["scale_down"])
                .inc();
            state.remember(
                &r.pool,
                AutoscalerDecisionView {
                    at: now,
                    kind: "scale_down".into(),
                    from,
                    to: from - 1,
                    node: Some(r.node.clone()),
                    pods: 0,
                    reason: r.reason.clone(),
                    operation: Some(operation),
                },
            );
        }
    }

    let mut hold_notes: HashMap<String, String> = holds;
    for (pool, note) in down.notes {
        hold_notes.entry(pool).or_insert(note);
    }
    state.snapshot.observed_at = Some(now);
    state.snapshot.pending_pods = up.pending_total;
    state.snapshot.pending = up.pending;
    state.snapshot.holds = hold_notes.into_iter().collect();
    store::autoscaler::put_snapshot(&app.pool, c.id, &state.snapshot).await?;
    Ok(())
}

/// Tells pending pods, as events in their cluster, what the round made of
/// them: `TriggeredScaleUp` when a scale-up written now is for them,
/// `NotTriggerScaleUp` with every pool's reason when none takes them
/// (cluster-autoscaler's reasons, so tooling that reads those works).
/// Each pod is told once per change, at most [`POD_EVENTS_PER_ROUND`] a
/// round; a failure is logged, never fatal to the round.
async fn tell_pods(
    api: &dyn TenantApi,
    mirror: &Mirror,
    notices: &[decide::PodNotice],
    grown: &HashMap<&str, (u32, u32, u32)>,
    told: &mut HashMap<String, u64>,
) {
    use std::hash::{Hash, Hasher};
    let mut sent = 0;
    let mut pending = std::collections::HashSet::new();
    for n in notices {
        let (pod, reason, message) = match n {
            decide::PodNotice::NewNode { pod, pool } => match grown.get(pool.as_str()) {
                Some((from, to, max)) => (
                    pod,
                    "TriggeredScaleUp",
                    format!(
                        "pod triggered scale-up: node pool {pool} from {from} to {to} (max {max})"
                    ),
                ),
                None => {
                    pending.insert(pod.as_str());
                    continue;
                }
            },
            decide::PodNotice::NoPool { pod, why } => (
                pod,
                "NotTriggerScaleUp",
                format!("pod didn't trigger scale-up: {why}"),
            ),
        };
        pending.insert(pod.as_str());
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (reason, &message).hash(&mut h);
        let hash = h.finish();
        if told.get(pod.as_str()) == Some(&hash) || sent >= POD_EVENTS_PER_ROUND {
            continue;
        }
        let Some(p) = mirror.pods.items.get(pod.as_str()) else {
            continue;
        };
        let target = crate::tenant::PodRef {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            uid: p.uid.clone(),
        };
        sent += 1;
        match api.pod_event(&target, false, reason, &message).await {
            Ok(()) => {
                told.insert(pod.clone(), hash);
            }
            Err(e) => tracing::warn!(pod = %pod, error = %e, "telling a pod"),
        }
    }
    told.retain(|k, _| pending.contains(k.as_str()));
}
