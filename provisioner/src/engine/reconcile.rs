//! The cluster reconciler: level-triggered, one job per cluster.
//!
//! Every run re-reads the cluster, its pools, its machine ledger and what
//! the provider says exists, then moves towards the spec: ledger rows are
//! committed before each provider call, lost machines are replaced,
//! surplus pool machines removed. It writes conditions, operation steps
//! and events, and asks to run again later to re-observe. A crash at any
//! await is just an early return: the next run starts from what is real.
//!
//! Phases: `machines` (through the provider trait: a machine is created
//! once, then observed while `provisioning`), then, with machine access,
//! the control plane ([`controlplane`]), worker pools ([`pools`]), the
//! cluster's phase, the operations and the pools' status. Each phase hands
//! what it observed to `kubeforge_cluster::status`, which sets every
//! condition from one function. A service without machine access waits with
//! `ControlPlaneReady=False` (`BootstrapUnavailable`). A control plane that
//! serves but whose components restarted [`RESTART_THRESHOLD`] times within
//! the restart window is `ControlPlaneReady=False` (`ComponentRestarting`):
//! the cluster is `degraded`, its pools are still reconciled. Deletion is
//! complete: ledger, provider sweep, secrets.
//!
//! Every write that changes the world (ledger rows and machine states,
//! operations and steps, events, cluster and pool status, the deletion's
//! writes) is a fenced transaction of the job's [`Lease`]: once another
//! engine has taken the job over, this run's next write fails with
//! `Error::LeaseLost` and the run stops (see `super::lease`).

use chrono::Utc;
use kubeforge_cluster::operations::{self, OperationKind, Progress, Step as StepName};
use kubeforge_cluster::pools::{scale_down_order, MachineRole, MachineState, Worker};
use kubeforge_cluster::restarts::{self, RESTART_THRESHOLD};
use kubeforge_cluster::status::{
    self, ControlPlaneObservation, ControlPlaneVerdict, MachinesObservation, NodesObservation,
    PoolObservation, PoolSummary, ReconcileObservation,
};
use kubeforge_cluster::{MachineType, Phase};
use rand::distributions::{Alphanumeric, DistString};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

use super::controlplane;
use super::jobs::{JobError, JobHandler, Outcome};
use super::lease::Lease;
use super::pools::{self, PoolsStatus};
use crate::providers::{
    MachineRequest, Provider, ProviderError, ProviderMachine, ProviderMachineState,
};
use crate::ssh::MachineAccess;
use crate::state::SharedApp;
use crate::store::cluster::{self, Cluster};
use crate::store::event::{self, NewEvent};
use crate::store::job::Job;
use crate::store::machine::{self, Machine, NewMachine};
use crate::store::node_pool::{self, NodePool};
use crate::store::operation::{self, Operation, OperationError};
use crate::store::secret;

/// How soon a healthy cluster is looked at again.
pub const RESYNC: Duration = Duration::from_secs(10);
/// How soon a request waiting for capacity (free hosts) is looked at again.
pub const CAPACITY_RECHECK: Duration = Duration::from_secs(15);
/// How soon a cluster with machines still starting is looked at again.
pub const SHORT_RESYNC: Duration = Duration::from_secs(1);
/// How soon a pass that failed permanently is tried again: the periodic
/// reconcile never stops looking at a cluster.
pub const PERMANENT_RECHECK: Duration = Duration::from_secs(5 * 60);

/// Worker pools whose new machines wait for something to run on (a free
/// host matching the pool, say), by pool id: what the provider said. A
/// pool waiting does not hold up the rest of its cluster.
type CapacityWaits = HashMap<Uuid, Wait>;

/// What one pool's new machines wait for.
#[derive(Debug, Clone, Default)]
struct Wait {
    /// What the provider said, each reason once.
    message: String,
    /// A host claimed for it failed its prerequisites this pass (the
    /// operation's step carries `host_prerequisites_missing`).
    unfit: bool,
}

/// What converging the machines found: whether every wanted machine runs,
/// the workers the provider reports stopped, and the pools that wait.
struct Converged {
    all_running: bool,
    stopped: HashSet<Uuid>,
    waits: CapacityWaits,
}

/// Runs `reconcile_cluster` jobs.
pub struct ClusterReconciler {
    app: SharedApp,
}

impl ClusterReconciler {
    pub fn new(app: SharedApp) -> Self {
        Self { app }
    }
}

/// A provider's failure as a job's: retried when the provider says it may
/// pass.
impl From<ProviderError> for JobError {
    fn from(e: ProviderError) -> Self {
        JobError {
            message: e.to_string(),
            retryable: e.is_retryable(),
        }
    }
}

/// What the provider is asked for to make ledger row `m`; with user-data
/// when this service has an SSH key (`authorized_key`) to put on it.
fn machine_request(
    c: &Cluster,
    m: &Machine,
    pools: &[NodePool],
    authorized_key: Option<&str>,
) -> crate::error::Result<MachineRequest> {
    let mut req = MachineRequest::new(
        m.id,
        &m.name,
        &c.tenant,
        c.id,
        m.role,
        m.machine_type,
        pools
            .iter()
            .find(|p| Some(p.id) == m.node_pool_id)
            .map(|p| p.name.as_str()),
        c.provider.clone(),
    );
    let pool = pools.iter().find(|p| Some(p.id) == m.node_pool_id);
    req.host_selector = pool
        .map(|p| p.host_selector.as_map().clone())
        .unwrap_or_default();
    req.alternatives = pool
        .map(|p| p.alternative_machine_types.clone())
        .unwrap_or_default();
    if let Some(key) = authorized_key {
        req.user_data = Some(kubeforge_cluster::userdata::render(&req.identity(), key)?);
    }
    Ok(req)
}

/// The cluster a cluster job (reconcile, autoscale) is for.
pub(crate) fn cluster_id(job: &Job) -> Result<Uuid, JobError> {
    job.payload
        .get("cluster_id")
        .and_then(|v| v.as_str())
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| JobError::permanent("payload lacks cluster_id"))
}

fn op_error(code: &str, message: &str, retryable: bool) -> OperationError {
    OperationError {
        code: code.into(),
        message: message.into(),
        retryable,
    }
}

#[async_trait::async_trait]
impl JobHandler for ClusterReconciler {
    async fn run(&self, job: &Job, lease: &Lease) -> Result<Outcome, JobError> {
        let id = cluster_id(job)?;
        let run = Run {
            app: &self.app,
            id,
            lease,
        };
        let result = run.reconcile().await;
        let outcome = match &result {
            Ok(Outcome::Done) => "done",
            Ok(Outcome::RequeueAfter(_)) => "requeue",
            Err(e) if e.retryable => "retry",
            Err(_) => "failed",
        };
        self.app
            .metrics
            .reconcile
            .with_label_values(&["cluster", outcome])
            .inc();
        match result {
            Err(e) => run.failing(job.attempts, e).await,
            ok => ok,
        }
    }

    async fn dead_lettered(&self, job: &Job, lease: &Lease, error: &JobError) {
        let Ok(id) = cluster_id(job) else { return };
        let run = Run {
            app: &self.app,
            id,
            lease,
        };
        if let Err(e) = run.give_up(&error.message).await {
            tracing::error!(cluster = %id, error = %e, "recording a dead-lettered reconcile");
        }
    }
}

/// One reconcile of one cluster.
struct Run<'a> {
    app: &'a SharedApp,
    id: Uuid,
    /// The job's lease: every write below goes through it (fenced).
    lease: &'a Lease,
}

impl Run<'_> {
    async fn event(
        &self,
        c: &Cluster,
        pool: Option<Uuid>,
        op: Option<Uuid>,
        warning: bool,
        reason: &str,
        message: &str,
    ) -> Result<(), JobError> {
        let mut tx = self.lease.begin().await?;
        event::record(
            &mut *tx,
            NewEvent {
                tenant: &c.tenant,
                cluster_id: c.id,
                node_pool_id: pool,
                operation_id: op,
                warning,
                reason,
                message,
            },
        )
        .await?;
        tx.commit().await?;
        if reason == "MachineLost" {
            self.app.metrics.count_repair(reason);
        }
        Ok(())
    }

    async fn step(
        &self,
        ops: &[&Operation],
        name: StepName,
        state: Progress,
        message: Option<&str>,
        error: Option<&OperationError>,
    ) -> Result<(), JobError> {
        let mut tx = self.lease.begin().await?;
        for op in ops {
            operation::set_step(&mut *tx, op.id, name, state, message, error).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(cluster_id = %self.id))]
    async fn reconcile(&self) -> Result<Outcome, JobError> {
        let pool = &self.app.pool;
        let Some(c) = cluster::get_any(pool, self.id).await? else {
            return Ok(Outcome::Done);
        };
        let ops = {
            let mut conn = pool.acquire().await?;
            operation::list_active(&mut conn, c.id).await?
        };
        let mut tx = self.lease.begin().await?;
        for op in &ops {
            operation::start(&mut *tx, op.id).await?;
        }
        tx.commit().await?;
        if c.deletion_requested_at.is_some() {
            return self.delete(&c, &ops).await;
        }
        let Some(provider) = self.app.providers.for_cluster(c.id, &c.tenant, &c.provider) else {
            return self.without_provider(&c).await;
        };
        let pools = node_pool::list_any(pool, c.id).await?;
        let create_ops: Vec<&Operation> = ops
            .iter()
            .filter(|o| o.kind == OperationKind::ClusterCreate)
            .collect();
        self.step(
            &create_ops,
            StepName::Machines,
            Progress::Running,
            None,
            None,
        )
        .await?;
        match self
            .converge_machines(&c, &pools, &ops, provider.as_ref())
            .await
        {
            Ok(converged) => self.finish_round(&c, &pools, &ops, &converged).await,
            Err(ProviderError::Retryable(m)) => {
                let err = op_error("provider_error", &m, true);
                let all: Vec<&Operation> = ops.iter().collect();
                self.step(
                    &all,
                    StepName::Machines,
                    Progress::Running,
                    Some("retrying after a provider error"),
                    Some(&err),
                )
                .await?;
                self.event(&c, None, None, true, "ProviderError", &m)
                    .await?;
                Err(JobError::retryable(m))
            }
            // The control plane (or load balancer) has nothing to run on.
            Err(e @ (ProviderError::NoCapacity(_) | ProviderError::HostUnfit(_))) => {
                // Waiting for capacity is not a failure: no attempt is used
                // up. An unfit host was released and is skipped for a while:
                // the machine waits the same way, with the reason named.
                let unfit = matches!(e, ProviderError::HostUnfit(_));
                let m = e.to_string();
                let err = unfit.then(|| op_error("host_prerequisites_missing", &m, true));
                let all: Vec<&Operation> = ops.iter().collect();
                self.step(
                    &all,
                    StepName::Machines,
                    Progress::Running,
                    Some(&format!("waiting for capacity: {m}")),
                    err.as_ref(),
                )
                .await?;
                let mut conditions = c.conditions.clone();
                let changed = status::set_machines_ready(
                    &mut conditions,
                    &MachinesObservation::WaitingForCapacity(m.clone()),
                    Utc::now(),
                );
                if unfit {
                    self.event(&c, None, None, true, "HostPrerequisitesMissing", &m)
                        .await?;
                } else if changed {
                    self.event(&c, None, None, true, "WaitingForCapacity", &m)
                        .await?;
                }
                let mut tx = self.lease.begin().await?;
                cluster::write_status(&mut *tx, c.id, c.phase, &conditions, c.observed_generation)
                    .await?;
                tx.commit().await?;
                Ok(Outcome::RequeueAfter(CAPACITY_RECHECK))
            }
            Err(ProviderError::Permanent(m)) => {
                self.fail(
                    &c,
                    &ops,
                    "ProviderRejected",
                    &op_error("provider_rejected", &m, false),
                )
                .await?;
                Ok(Outcome::Done)
            }
        }
    }

    /// Whether worker pools are shrunk by draining nodes (the tenant
    /// cluster answers and this service can reach it) rather than by
    /// deleting machines outright.
    fn drains(&self, c: &Cluster) -> bool {
        self.app.access.is_some()
            && c.endpoint.is_some()
            && matches!(c.phase, Phase::Ready | Phase::Degraded)
            && self.bootstraps(c)
    }

    /// Whether this service bootstraps the cluster's machines itself (its
    /// provider's machines take SSH; see `Capabilities`).
    fn bootstraps(&self, c: &Cluster) -> bool {
        self.app
            .providers
            .get(c.provider.kind())
            .is_some_and(|p| p.capabilities().ssh_bootstrap)
    }

    /// Creates, observes and removes machines until the ledger matches the
    /// spec. A control-plane machine with nothing to run on is an error
    /// (the cluster waits); a worker's is recorded in
    /// [`Converged::waits`] and the other machines go on.
    async fn converge_machines(
        &self,
        c: &Cluster,
        pools: &[NodePool],
        ops: &[Operation],
        provider: &dyn Provider,
    ) -> Result<Converged, ProviderError> {
        let db = |e: crate::error::Error| ProviderError::Retryable(format!("database: {e}"));
        let mut machines = machine::list_any(&self.app.pool, c.id).await.map_err(db)?;
        let mut stopped = HashSet::new();

        // Observe: a machine the provider no longer has is gone; replace it.
        // A stopped control-plane or load-balancer machine is started again
        // (create is idempotent) with its data; a stopped worker is left to
        // node auto-repair, which replaces it after its pool's threshold.
        for m in machines
            .iter()
            .filter(|m| matches!(m.state, MachineState::Running | MachineState::Draining))
        {
            let (reason, message) = match provider.get(m.id).await? {
                None => {
                    self.mark_deleted(m.id).await.map_err(db)?;
                    (
                        "MachineLost",
                        format!("machine {} disappeared; replacing it", m.name),
                    )
                }
                Some(pm) if pm.state == ProviderMachineState::Terminated => {
                    self.mark_deleted(m.id).await.map_err(db)?;
                    (
                        "MachineLost",
                        format!("machine {} was terminated; replacing it", m.name),
                    )
                }
                Some(pm)
                    if pm.state == ProviderMachineState::Stopped
                        && m.role == MachineRole::Worker =>
                {
                    if stopped.insert(m.id) && m.unhealthy_since.is_none() {
                        (
                            "MachineStopped",
                            format!("worker machine {} is powered off", m.name),
                        )
                    } else {
                        continue;
                    }
                }
                Some(pm) if pm.state == ProviderMachineState::Stopped => {
                    self.set_state(m.id, MachineState::Pending, Some("machine stopped"))
                        .await
                        .map_err(db)?;
                    (
                        "MachineStopped",
                        format!("machine {} stopped; starting it again", m.name),
                    )
                }
                Some(_) => continue,
            };
            self.event(c, m.node_pool_id, None, true, reason, &message)
                .await
                .map_err(|e| ProviderError::Retryable(e.message))?;
        }
        machines = machine::list_any(&self.app.pool, c.id).await.map_err(db)?;

        // Control plane: fixed names, one per replica.
        for i in 0..c.control_plane.replicas {
            let name = format!("{}-cp-{i}", c.name);
            if !machines.iter().any(|m| m.name == name) {
                self.record_machine(
                    c,
                    None,
                    MachineRole::ControlPlane,
                    &name,
                    c.control_plane.machine_type,
                )
                .await
                .map_err(db)?;
            }
        }
        // Three members get a load balancer in front: the stable endpoint.
        if c.control_plane.replicas > 1 {
            let name = format!("{}-lb", c.name);
            if !machines.iter().any(|m| m.name == name) {
                self.record_machine(
                    c,
                    None,
                    MachineRole::LoadBalancer,
                    &name,
                    MachineType::SMALL,
                )
                .await
                .map_err(db)?;
            }
        }
        // Pools: grow with fresh names, shrink by removing the least useful.
        for p in pools {
            // Draining and deleting machines are on their way out: they
            // are replaced at once, not after they are gone.
            let mine: Vec<&Machine> = machines
                .iter()
                .filter(|m| m.node_pool_id == Some(p.id) && m.state.is_live())
                .collect();
            let want = if p.deletion_requested_at.is_some() {
                0
            } else {
                p.size as usize
            };
            for _ in mine.len()..want {
                let suffix = Alphanumeric
                    .sample_string(&mut rand::thread_rng(), 5)
                    .to_lowercase();
                let name = format!("{}-{}-{suffix}", c.name, p.name);
                self.record_machine(c, Some(p.id), MachineRole::Worker, &name, p.machine_type)
                    .await
                    .map_err(db)?;
            }
            // With a serving cluster, surplus nodes are drained first (see
            // `pools`); otherwise there is nothing to drain.
            if mine.len() > want && !self.drains(c) {
                // The pool engine's order, without CPU figures (the
                // cluster cannot be asked): failed, then not ready, then newest.
                let views: Vec<Worker> = mine.iter().map(|m| pools::worker_view(m)).collect();
                let mut victims: Vec<&Worker> = views.iter().collect();
                scale_down_order(&mut victims, &HashMap::new());
                for m in victims.into_iter().take(mine.len() - want) {
                    self.set_state(m.id, MachineState::Deleting, None)
                        .await
                        .map_err(db)?;
                }
            }
        }
        machines = machine::list_any(&self.app.pool, c.id).await.map_err(db)?;

        let mut all_running = true;
        let mut waits = CapacityWaits::new();
        for m in &machines {
            match m.state {
                MachineState::Deleting => {
                    provider.delete(m.id).await?;
                    self.mark_deleted(m.id).await.map_err(db)?;
                    self.ensure_upkeep(c).await.map_err(db)?;
                    self.event(
                        c,
                        m.node_pool_id,
                        None,
                        false,
                        "MachineDeleted",
                        &format!("machine {} deleted", m.name),
                    )
                    .await
                    .map_err(|e| ProviderError::Retryable(e.message))?;
                }
                MachineState::Pending | MachineState::Failed => {
                    let key = self
                        .app
                        .access
                        .as_ref()
                        .map(|a| a.client_key.public_key_line());
                    let req = machine_request(c, m, pools, key).map_err(|e| {
                        ProviderError::Permanent(format!("machine {}: {e}", m.name))
                    })?;
                    let pm = match provider.create(&req).await {
                        Ok(pm) => pm,
                        Err(e @ (ProviderError::NoCapacity(_) | ProviderError::HostUnfit(_)))
                            if m.role == MachineRole::Worker =>
                        {
                            all_running = false;
                            self.capacity_wait(c, m, &e, &mut waits).await?;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    if !self.came_up(c, m, &pm, provider).await? {
                        let mut tx = self.lease.begin().await.map_err(db)?;
                        machine::set_provisioning(&mut *tx, m.id, &pm.provider_id)
                            .await
                            .map_err(db)?;
                        tx.commit().await.map_err(db)?;
                        all_running = false;
                    }
                }
                MachineState::Provisioning => {
                    // Accepted by the provider: observed, never created again.
                    match provider.get(m.id).await? {
                        Some(pm) if pm.state == ProviderMachineState::Pending => {
                            all_running = false;
                        }
                        Some(pm) if pm.state == ProviderMachineState::Running => {
                            if !self.came_up(c, m, &pm, provider).await? {
                                all_running = false;
                            }
                        }
                        gone => {
                            let why = match gone {
                                None => "the provider no longer has it".to_string(),
                                Some(pm) => format!("the provider reports it {:?}", pm.state),
                            };
                            let message = format!(
                                "machine {} ended before it came up ({why}); asking for it again",
                                m.name
                            );
                            self.set_state(m.id, MachineState::Pending, Some(&message))
                                .await
                                .map_err(db)?;
                            self.event(c, m.node_pool_id, None, true, "MachineLost", &message)
                                .await
                                .map_err(|e| ProviderError::Retryable(e.message))?;
                            all_running = false;
                        }
                    }
                }
                _ => {}
            }
        }
        // Pools whose deletion is complete leave the ledger and the API.
        for p in pools.iter().filter(|p| p.deletion_requested_at.is_some()) {
            let left = machine::list_any(&self.app.pool, c.id).await.map_err(db)?;
            if !left.iter().any(|m| m.node_pool_id == Some(p.id)) {
                let mut tx = self.lease.begin().await.map_err(db)?;
                node_pool::mark_deleted(&mut *tx, p.id).await.map_err(db)?;
                for op in ops.iter().filter(|o| {
                    o.kind == OperationKind::NodePoolDelete && o.node_pool_id == Some(p.id)
                }) {
                    for s in [
                        StepName::Drain,
                        StepName::DeleteMachines,
                        StepName::Finalize,
                    ] {
                        operation::set_step(&mut *tx, op.id, s, Progress::Succeeded, None, None)
                            .await
                            .map_err(db)?;
                    }
                    let ended = operation::finish(&mut *tx, op.id, None).await.map_err(db)?;
                    self.app.metrics.observe_operation(ended);
                }
                tx.commit().await.map_err(db)?;
                self.event(
                    c,
                    Some(p.id),
                    None,
                    false,
                    "NodePoolDeleted",
                    &format!("node pool {} deleted", p.name),
                )
                .await
                .map_err(|e| ProviderError::Retryable(e.message))?;
            }
        }
        Ok(Converged {
            all_running,
            stopped,
            waits,
        })
    }

    /// Records that worker `m` has nothing to run on yet (`e` says why):
    /// on its pool's wait, in the machine's last error, and as an event
    /// when the reason is new. A host that failed its prerequisites is
    /// always told (it names the host and what it lacks).
    async fn capacity_wait(
        &self,
        c: &Cluster,
        m: &Machine,
        e: &ProviderError,
        waits: &mut CapacityWaits,
    ) -> Result<(), ProviderError> {
        let db = |e: crate::error::Error| ProviderError::Retryable(format!("database: {e}"));
        let message = e.to_string();
        let (reason, note) = match e {
            ProviderError::HostUnfit(_) => ("HostPrerequisitesMissing", message.clone()),
            _ => (
                "WaitingForCapacity",
                format!("waiting for capacity: {message}"),
            ),
        };
        let is_new = m.last_error.as_deref() != Some(note.as_str());
        if let Some(pool) = m.node_pool_id {
            let w = waits.entry(pool).or_default();
            if !w.message.contains(&message) {
                if !w.message.is_empty() {
                    w.message.push_str("; ");
                }
                w.message.push_str(&message);
            }
            w.unfit |= matches!(e, ProviderError::HostUnfit(_));
        }
        if is_new {
            self.set_state(m.id, MachineState::Pending, Some(&note))
                .await
                .map_err(db)?;
            self.event(
                c,
                m.node_pool_id,
                None,
                true,
                reason,
                &format!("{}: {note}", m.name),
            )
            .await
            .map_err(|e| ProviderError::Retryable(e.message))?;
        }
        Ok(())
    }

    /// Records `pm` as running when it is, with everything the engine
    /// needs to reach it: a machine bootstrapped over SSH is not running
    /// until its provider reports its host key (pinned from a trusted
    /// channel, never learned over the network). Returns whether it is.
    async fn came_up(
        &self,
        c: &Cluster,
        m: &Machine,
        pm: &ProviderMachine,
        provider: &dyn Provider,
    ) -> Result<bool, ProviderError> {
        if pm.state != ProviderMachineState::Running {
            return Ok(false);
        }
        if provider.capabilities().ssh_bootstrap && pm.host_key.is_none() {
            tracing::info!(machine = %m.name, "running, but its host key is not known yet");
            return Ok(false);
        }
        let db = |e: crate::error::Error| ProviderError::Retryable(format!("database: {e}"));
        let mut tx = self.lease.begin().await.map_err(db)?;
        machine::set_running(
            &mut *tx,
            m.id,
            &pm.provider_id,
            pm.address.as_deref(),
            pm.host_key.as_deref(),
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.event(
            c,
            m.node_pool_id,
            None,
            false,
            "MachineRunning",
            &format!("machine {} is running", m.name),
        )
        .await
        .map_err(|e| ProviderError::Retryable(e.message))?;
        Ok(true)
    }

    async fn record_machine(
        &self,
        c: &Cluster,
        pool: Option<Uuid>,
        role: MachineRole,
        name: &str,
        machine_type: MachineType,
    ) -> crate::error::Result<()> {
        let mut tx = self.lease.begin().await?;
        let inserted = machine::insert_pending(
            &mut *tx,
            NewMachine {
                id: Uuid::now_v7(),
                tenant: &c.tenant,
                cluster_id: c.id,
                node_pool_id: pool,
                role,
                name,
                provider: c.provider.kind(),
                machine_type,
            },
        )
        .await?;
        tx.commit().await?;
        if !inserted {
            // Someone recorded a live machine of this name after this pass
            // read the ledger: that row is the machine; the re-read below
            // adopts it.
            tracing::warn!(cluster = %c.id, machine = name, "machine already in the ledger; adopting it");
        }
        Ok(())
    }

    /// Moves machine `id` to `state` (fenced), noting why.
    async fn set_state(
        &self,
        id: Uuid,
        state: MachineState,
        last_error: Option<&str>,
    ) -> crate::error::Result<()> {
        let mut tx = self.lease.begin().await?;
        machine::set_state(&mut *tx, id, state, last_error).await?;
        tx.commit().await
    }

    /// Makes sure the cluster's provider gets to finish what its deletes
    /// left for later (see [`super::upkeep`]).
    async fn ensure_upkeep(&self, c: &Cluster) -> crate::error::Result<()> {
        let mut conn = self.app.pool.acquire().await?;
        super::upkeep::ensure(&mut conn, c.provider.kind()).await
    }

    /// Marks machine `id` deleted in the ledger (fenced).
    async fn mark_deleted(&self, id: Uuid) -> crate::error::Result<()> {
        let mut tx = self.lease.begin().await?;
        machine::mark_deleted(&mut *tx, id).await?;
        tx.commit().await
    }

    /// Writes status after machines converged (or not) and settles
    /// operations, in phases: the control plane, the pools through the
    /// cluster's API, the cluster's phase, the operations, the pools'
    /// status. Conditions are worded by `kubeforge_cluster::status`.
    async fn finish_round(
        &self,
        c: &Cluster,
        pools: &[NodePool],
        ops: &[Operation],
        converged: &Converged,
    ) -> Result<Outcome, JobError> {
        let Converged {
            all_running,
            stopped,
            waits,
        } = converged;
        let all_running = *all_running;
        let pool = &self.app.pool;
        let now = Utc::now();
        let machines = machine::list_any(pool, c.id).await?;
        let mut conditions = c.conditions.clone();
        let observed = if all_running {
            MachinesObservation::AllRunning(machines.len())
        } else if waits.is_empty() {
            MachinesObservation::Starting
        } else {
            let mut named: Vec<String> = pools
                .iter()
                .filter_map(|p| {
                    waits
                        .get(&p.id)
                        .map(|w| format!("pool {}: {}", p.name, w.message))
                })
                .collect();
            named.sort();
            MachinesObservation::WaitingForCapacity(named.join("; "))
        };
        status::set_machines_ready(&mut conditions, &observed, now);
        if status::set_reconciled(&mut conditions, &ReconcileObservation::Succeeded, now)
            && c.conditions.iter().any(|k| k.type_ == "Reconciled")
        {
            self.event(
                c,
                None,
                None,
                false,
                "ReconcileSucceeded",
                "passes over the cluster go through again",
            )
            .await?;
        }
        let cp = self
            .control_plane_phase(c, &machines, ops, &mut conditions, now)
            .await?;
        let (pool_status, pool_error) = match (&cp.access, cp.verdict.serving, &cp.endpoint) {
            // Worker pools, through the cluster's API, once it serves (also
            // while components keep restarting: the API answers).
            (Some(access), true, Some(endpoint)) => {
                match pools::reconcile(self.app, self.lease, access, c, pools, endpoint, stopped)
                    .await
                {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e.to_string())),
                }
            }
            _ => (None, None),
        };
        let phase = status::cluster_phase(cp.verdict.ready, c.phase);
        if phase != c.phase {
            let (warning, reason) = match phase {
                Phase::Ready => (false, "ClusterReady"),
                Phase::Degraded => (true, "ClusterDegraded"),
                _ => (false, "ClusterProvisioning"),
            };
            self.event(
                c,
                None,
                None,
                warning,
                reason,
                &format!("cluster is {}", phase.as_str()),
            )
            .await?;
        }
        // The pools' pass wrote what it saw of each worker (joined, Ready
        // since when): the operations and pools are worded from that.
        let machines = match pool_status {
            Some(_) => machine::list_any(pool, c.id).await?,
            None => machines.clone(),
        };
        // The cluster's phase and conditions first: an operation read as
        // succeeded never shows a cluster still provisioning.
        // The pools summed up on the cluster, in the numbers each pool
        // shows (Ready nodes on running machines, of its size).
        let summaries: Vec<PoolSummary<'_>> = pools
            .iter()
            .filter(|p| p.deletion_requested_at.is_none())
            .map(|p| PoolSummary {
                name: p.name.as_str(),
                size: p.size as usize,
                ready: machines
                    .iter()
                    .filter(|m| {
                        m.node_pool_id == Some(p.id)
                            && m.state == MachineState::Running
                            && m.node_state.as_deref() == Some("ready")
                    })
                    .count(),
            })
            .collect();
        status::set_node_pools_ready(&mut conditions, &summaries, now);
        let mut tx = self.lease.begin().await?;
        cluster::write_status(&mut *tx, c.id, phase, &conditions, c.generation).await?;
        tx.commit().await?;
        self.operations_phase(
            c,
            pools,
            ops,
            &machines,
            &cp.verdict,
            pool_status.as_ref(),
            waits,
        )
        .await?;
        self.pool_status_phase(
            pools,
            &machines,
            pool_status.as_ref(),
            pool_error,
            waits,
            now,
        )
        .await?;
        // A serving cluster whose pools autoscale has an autoscaler
        // watching it (the job ends by itself when no longer wanted).
        if matches!(phase, Phase::Ready | Phase::Degraded) && c.wants_autoscaler(pools) {
            let mut conn = pool.acquire().await?;
            super::ensure_autoscaler(&mut conn, c.id).await?;
        }
        // Settled clusters are re-observed at leisure; anything still on
        // its way (machines booting, a control plane not yet serving, a
        // member down) is looked at again soon.
        let pools_settled = pool_status.as_ref().is_none_or(|ps| {
            pools.iter().all(|p| {
                let v = PoolView::new(p, &machines, Some(ps), waits);
                v.leaving == 0 && v.joining == 0
            })
        });
        let settled = all_running && pools_settled && (cp.verdict.serving || cp.access.is_none());
        Ok(Outcome::RequeueAfter(if settled {
            RESYNC
        } else {
            SHORT_RESYNC
        }))
    }

    /// The control plane, once its machines run and this service can reach
    /// them; otherwise its conditions say plainly why it waits. A pass that
    /// could not look at the members writes that and is retried.
    async fn control_plane_phase(
        &self,
        c: &Cluster,
        machines: &[Machine],
        ops: &[Operation],
        conditions: &mut Vec<kubeforge_cluster::Condition>,
        now: chrono::DateTime<Utc>,
    ) -> Result<ControlPlaneRound<'_>, JobError> {
        let running = |role| {
            machines
                .iter()
                .filter(move |m| m.role == role && m.state == MachineState::Running)
        };
        let cp_members: Vec<&Machine> = running(MachineRole::ControlPlane).collect();
        let lb = running(MachineRole::LoadBalancer).next();
        let access = self.app.access.as_deref().filter(|_| self.bootstraps(c));
        let round = |verdict, endpoint| ControlPlaneRound {
            access,
            verdict,
            endpoint,
        };
        let Some(access) = access else {
            let verdict = status::set_control_plane(
                conditions,
                &ControlPlaneObservation::BootstrapUnavailable,
                now,
            );
            return Ok(round(verdict, None));
        };
        if cp_members.len() as u32 != c.control_plane.replicas
            || (c.control_plane.replicas > 1 && lb.is_none())
        {
            let verdict = status::set_control_plane(
                conditions,
                &ControlPlaneObservation::WaitingForMachines,
                now,
            );
            return Ok(round(verdict, None));
        }
        // Machines are done; the control-plane step runs from here.
        let create: Vec<&Operation> = ops
            .iter()
            .filter(|o| o.kind == OperationKind::ClusterCreate)
            .collect();
        self.step(&create, StepName::Machines, Progress::Succeeded, None, None)
            .await?;
        self.step(
            &create,
            StepName::ControlPlane,
            Progress::Running,
            None,
            None,
        )
        .await?;
        let st = match controlplane::reconcile(self.app, access, c, &cp_members, lb).await {
            Ok(st) => st,
            Err(e) => {
                let msg = e.to_string();
                status::set_control_plane(
                    conditions,
                    &ControlPlaneObservation::Unreachable(msg.clone()),
                    now,
                );
                let mut tx = self.lease.begin().await?;
                cluster::write_status(&mut *tx, c.id, c.phase, conditions, c.generation).await?;
                tx.commit().await?;
                let err = op_error("control_plane_unreachable", &msg, true);
                self.step(
                    &create,
                    StepName::ControlPlane,
                    Progress::Running,
                    Some("retrying"),
                    Some(&err),
                )
                .await?;
                return Err(JobError::retryable(msg));
            }
        };
        // Components that keep restarting degrade the control plane even
        // when every member looks healthy at this moment.
        let restarting = restarts::restarting(
            &st.recent_restarts,
            RESTART_THRESHOLD,
            self.app.config.control_plane_restart_window,
        );
        let verdict = status::set_control_plane(
            conditions,
            &ControlPlaneObservation::Observed {
                healthy_members: st.healthy_members,
                members: st.members,
                problems: st.problems.clone(),
                restarting,
                endpoint: st.endpoint.clone(),
                rbac_applied: st.rbac_applied,
            },
            now,
        );
        let mut tx = self.lease.begin().await?;
        cluster::write_endpoint(&mut *tx, c.id, st.endpoint.as_deref(), &st.certificates).await?;
        tx.commit().await?;
        Ok(round(verdict, st.endpoint))
    }

    /// Moves each active operation's steps on from what this pass saw, and
    /// finishes those that are done.
    #[allow(clippy::too_many_arguments)]
    async fn operations_phase(
        &self,
        c: &Cluster,
        pools: &[NodePool],
        ops: &[Operation],
        machines: &[Machine],
        cp: &ControlPlaneVerdict,
        pool_status: Option<&PoolsStatus>,
        waits: &CapacityWaits,
    ) -> Result<(), JobError> {
        let mut tx = self.lease.begin().await?;
        let cp_running = machines
            .iter()
            .filter(|m| m.role == MachineRole::ControlPlane && m.state == MachineState::Running)
            .count();
        let ready = cp.ready;
        let cp_message = cp.waiting_for.clone();
        for op in ops {
            match op.kind {
                OperationKind::ClusterCreate if cp_running as u32 == c.control_plane.replicas => {
                    operation::set_step(
                        &mut *tx,
                        op.id,
                        StepName::Machines,
                        Progress::Succeeded,
                        None,
                        None,
                    )
                    .await?;
                    // The pools the cluster was created with: each its own
                    // step, done when its nodes are Ready.
                    let mut pools_done = true;
                    for step in op.steps.iter().map(|s| s.name.as_str()) {
                        let Some(name) = operations::step_pool(step) else {
                            continue;
                        };
                        let (done, message, error) = match pools
                            .iter()
                            .find(|p| p.name.as_str() == name && p.deletion_requested_at.is_none())
                        {
                            None => (true, "the pool was deleted".to_string(), None),
                            Some(p) => {
                                let v = PoolView::new(p, machines, pool_status, waits);
                                let size = p.size as usize;
                                let machines_done = v.running == size && v.leaving == 0;
                                let (nodes_done, nodes) = match pool_status {
                                    Some(_) => (
                                        v.ready == size,
                                        format!("{} of {size} nodes ready", v.ready),
                                    ),
                                    // A service without machine access (tests'
                                    // provider double) converges machines only.
                                    None if self.app.access.is_none() => (
                                        true,
                                        "nodes not joined: this service has no machine access"
                                            .to_string(),
                                    ),
                                    None => (
                                        false,
                                        "waiting for the control plane to serve".to_string(),
                                    ),
                                };
                                (
                                    ready && machines_done && nodes_done,
                                    format!(
                                        "{} of {size} machines running{}; {nodes}",
                                        v.running,
                                        v.waiting_note()
                                    ),
                                    v.step_error(),
                                )
                            }
                        };
                        operation::set_named_step(
                            &mut *tx,
                            op.id,
                            step,
                            Progress::succeeded_if(done),
                            Some(&message),
                            error.as_ref(),
                        )
                        .await?;
                        pools_done &= done;
                    }
                    if ready {
                        operation::set_step(
                            &mut *tx,
                            op.id,
                            StepName::ControlPlane,
                            Progress::Succeeded,
                            None,
                            None,
                        )
                        .await?;
                        if pools_done {
                            self.app
                                .metrics
                                .observe_operation(operation::finish(&mut *tx, op.id, None).await?);
                        }
                    } else {
                        let state = if cp_message.is_some() && self.app.access.is_none() {
                            Progress::Pending
                        } else {
                            Progress::Running
                        };
                        operation::set_step(
                            &mut *tx,
                            op.id,
                            StepName::ControlPlane,
                            state,
                            cp_message.as_deref(),
                            None,
                        )
                        .await?;
                    }
                }
                OperationKind::ClusterUpdate if op.target_generation <= c.generation => {
                    operation::set_step(
                        &mut *tx,
                        op.id,
                        StepName::Apply,
                        Progress::Succeeded,
                        None,
                        None,
                    )
                    .await?;
                    self.app
                        .metrics
                        .observe_operation(operation::finish(&mut *tx, op.id, None).await?);
                }
                OperationKind::NodePoolCreate | OperationKind::NodePoolUpdate => {
                    let Some(p) = pools.iter().find(|p| Some(p.id) == op.node_pool_id) else {
                        continue;
                    };
                    let v = PoolView::new(p, machines, pool_status, waits);
                    let machines_done = v.running == p.size as usize && v.leaving == 0;
                    operation::set_step(
                        &mut *tx,
                        op.id,
                        StepName::Machines,
                        Progress::succeeded_if(machines_done),
                        Some(&format!(
                            "{} of {} machines running{}",
                            v.running,
                            p.size,
                            v.waiting_note()
                        )),
                        v.step_error().as_ref(),
                    )
                    .await?;
                    let join_done = match pool_status {
                        Some(_) => {
                            let done = v.ready == p.size as usize;
                            // Where each node this operation added spent
                            // its time.
                            let mut message = format!("{} of {} nodes ready", v.ready, p.size);
                            let mut new: Vec<&Machine> = machines
                                .iter()
                                .filter(|m| {
                                    m.node_pool_id == Some(p.id)
                                        && m.created_at >= op.created_at
                                        && m.state != MachineState::Deleted
                                })
                                .collect();
                            new.sort_by(|a, b| a.name.cmp(&b.name));
                            for m in new {
                                message.push_str(&format!(
                                    "; {}: {}",
                                    m.name,
                                    m.timeline.describe()
                                ));
                            }
                            operation::set_step(
                                &mut *tx,
                                op.id,
                                StepName::Join,
                                Progress::succeeded_if(done),
                                Some(&message),
                                None,
                            )
                            .await?;
                            done
                        }
                        None if self.app.access.is_none() => {
                            // A service without machine access (tests'
                            // provider double) converges machines only.
                            operation::set_step(
                                &mut *tx,
                                op.id,
                                StepName::Join,
                                Progress::Pending,
                                Some("not run: this service has no machine access"),
                                None,
                            )
                            .await?;
                            true
                        }
                        None => false,
                    };
                    let drain_done = v.leaving == 0;
                    if op.kind == OperationKind::NodePoolUpdate {
                        operation::set_step(
                            &mut *tx,
                            op.id,
                            StepName::Drain,
                            Progress::succeeded_if(drain_done),
                            v.drain_waiting.as_deref().or(v.drain_note.as_deref()),
                            None,
                        )
                        .await?;
                    }
                    if machines_done
                        && join_done
                        && drain_done
                        && op.target_generation <= p.generation
                    {
                        self.app
                            .metrics
                            .observe_operation(operation::finish(&mut *tx, op.id, None).await?);
                    }
                }
                OperationKind::NodePoolDelete => {
                    let Some(p) = pools.iter().find(|p| Some(p.id) == op.node_pool_id) else {
                        continue;
                    };
                    let v = PoolView::new(p, machines, pool_status, waits);
                    let draining = machines
                        .iter()
                        .any(|m| m.node_pool_id == Some(p.id) && m.state == MachineState::Draining);
                    operation::set_step(
                        &mut *tx,
                        op.id,
                        StepName::Drain,
                        if draining {
                            Progress::Running
                        } else {
                            Progress::Succeeded
                        },
                        v.drain_waiting.as_deref().or(v.drain_note.as_deref()),
                        None,
                    )
                    .await?;
                }
                _ => {}
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes each live pool's conditions and phase.
    async fn pool_status_phase(
        &self,
        pools: &[NodePool],
        machines: &[Machine],
        pool_status: Option<&PoolsStatus>,
        pool_error: Option<String>,
        waits: &CapacityWaits,
        now: chrono::DateTime<Utc>,
    ) -> Result<(), JobError> {
        let mut tx = self.lease.begin().await?;
        for p in pools.iter().filter(|p| p.deletion_requested_at.is_none()) {
            let v = PoolView::new(p, machines, pool_status, waits);
            let nodes = match (pool_status, &pool_error) {
                (Some(_), _) => NodesObservation::Observed {
                    ready: v.ready,
                    problems: v.problems,
                    repair_note: v.repair_note,
                },
                (None, Some(e)) => NodesObservation::Unreachable(e.clone()),
                (None, None) if self.app.access.is_none() => NodesObservation::JoinUnavailable,
                (None, None) => NodesObservation::WaitingForControlPlane,
            };
            let mut pc = p.conditions.clone();
            let phase = status::set_pool(
                &mut pc,
                &PoolObservation {
                    size: p.size as usize,
                    running: v.running,
                    leaving: v.leaving,
                    draining: v.drain_waiting.clone(),
                    capacity_wait: v.capacity_wait.clone(),
                    nodes,
                    auto_repair: p.auto_repair,
                },
                p.phase,
                now,
            );
            node_pool::write_status(&mut *tx, p.id, phase, &pc, p.generation).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletion: every ledger machine, then anything still tagged with the
    /// cluster, then secrets; only then is the cluster gone.
    async fn delete(&self, c: &Cluster, ops: &[Operation]) -> Result<Outcome, JobError> {
        let pool = &self.app.pool;
        let del_ops: Vec<&Operation> = ops
            .iter()
            .filter(|o| o.kind == OperationKind::ClusterDelete)
            .collect();
        let Some(provider) = self.app.providers.for_cluster(c.id, &c.tenant, &c.provider) else {
            return self.without_provider(c).await;
        };
        // The service's client of this cluster is of no more use.
        self.app.tenants.forget(c.id);
        self.step(
            &del_ops,
            StepName::DeleteMachines,
            Progress::Running,
            None,
            None,
        )
        .await?;
        for m in machine::list_any(pool, c.id).await? {
            self.set_state(m.id, MachineState::Deleting, None).await?;
            if let Err(e) = provider.delete(m.id).await {
                let err = op_error("provider_error", &e.to_string(), e.is_retryable());
                self.step(
                    &del_ops,
                    StepName::DeleteMachines,
                    Progress::Running,
                    Some(&format!("deleting {}", m.name)),
                    Some(&err),
                )
                .await?;
                return Err(e.into());
            }
            self.mark_deleted(m.id).await?;
        }
        self.ensure_upkeep(c).await?;
        self.step(
            &del_ops,
            StepName::DeleteMachines,
            Progress::Succeeded,
            None,
            None,
        )
        .await?;
        self.step(
            &del_ops,
            StepName::SweepProvider,
            Progress::Running,
            None,
            None,
        )
        .await?;
        let strays = provider.list_by_cluster(c.id).await?;
        for s in &strays {
            provider.delete(s.id).await?;
        }
        // What the provider made for the cluster as a whole (a security
        // group) goes once no machine of it is left.
        provider.release_cluster(c.id).await?;
        if !strays.is_empty() {
            self.event(
                c,
                None,
                None,
                true,
                "StrayMachinesSwept",
                &format!(
                    "deleted {} machines tagged with the cluster but missing from the ledger",
                    strays.len()
                ),
            )
            .await?;
        }
        self.step(
            &del_ops,
            StepName::SweepProvider,
            Progress::Succeeded,
            None,
            None,
        )
        .await?;
        self.step(
            &del_ops,
            StepName::RemoveSecrets,
            Progress::Running,
            None,
            None,
        )
        .await?;
        let mut tx = self.lease.begin().await?;
        secret::delete_for_cluster(&mut *tx, c.id).await?;
        tx.commit().await?;
        self.step(
            &del_ops,
            StepName::RemoveSecrets,
            Progress::Succeeded,
            None,
            None,
        )
        .await?;
        let mut tx = self.lease.begin().await?;
        node_pool::mark_all_deleted(&mut *tx, c.id).await?;
        for op in ops {
            if op.kind == OperationKind::ClusterDelete {
                operation::set_step(
                    &mut *tx,
                    op.id,
                    StepName::Finalize,
                    Progress::Succeeded,
                    None,
                    None,
                )
                .await?;
                self.app
                    .metrics
                    .observe_operation(operation::finish(&mut *tx, op.id, None).await?);
            } else {
                let ended = operation::finish(
                    &mut *tx,
                    op.id,
                    Some(&op_error("superseded", "the cluster was deleted", false)),
                )
                .await?;
                self.app.metrics.observe_operation(ended);
            }
        }
        // One transaction: once the operation reads succeeded, the cluster
        // is gone from the API (a client that waited for it and reads the
        // cluster gets 404, never a cluster still `deleting`).
        event::record(
            &mut *tx,
            NewEvent {
                tenant: &c.tenant,
                cluster_id: c.id,
                node_pool_id: None,
                operation_id: del_ops.first().map(|o| o.id),
                warning: false,
                reason: "Deleted",
                message: &format!("cluster {} deleted", c.name),
            },
        )
        .await?;
        cluster::mark_deleted(&mut *tx, c.id).await?;
        tx.commit().await?;
        Ok(Outcome::Done)
    }

    /// A permanent failure: the cluster is `failed` and its operations say why.
    async fn fail(
        &self,
        c: &Cluster,
        ops: &[Operation],
        reason: &str,
        err: &OperationError,
    ) -> Result<(), JobError> {
        let now = Utc::now();
        let mut conditions = c.conditions.clone();
        let changed = status::set_machines_ready(
            &mut conditions,
            &MachinesObservation::Failed {
                reason: reason.into(),
                message: err.message.clone(),
            },
            now,
        );
        status::set_control_plane(
            &mut conditions,
            &ControlPlaneObservation::Failed {
                reason: reason.into(),
                message: err.message.clone(),
            },
            now,
        );
        self.fail_operations(ops, err).await?;
        if changed {
            self.event(c, None, None, true, reason, &err.message)
                .await?;
        }
        let mut tx = self.lease.begin().await?;
        cluster::write_status(&mut *tx, c.id, Phase::Failed, &conditions, c.generation).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Fails `ops` with `err`, and the step each was at (one fenced
    /// transaction).
    async fn fail_operations(
        &self,
        ops: &[Operation],
        err: &OperationError,
    ) -> Result<(), JobError> {
        let mut tx = self.lease.begin().await?;
        for op in ops {
            let unfinished = op
                .steps
                .iter()
                .filter(|s| s.state != Progress::Succeeded.as_str())
                .map(|s| s.name.as_str())
                .next();
            if let Some(step) = unfinished {
                operation::set_named_step(&mut *tx, op.id, step, Progress::Failed, None, Some(err))
                    .await?;
            }
            self.app
                .metrics
                .observe_operation(operation::finish(&mut *tx, op.id, Some(err)).await?);
        }
        tx.commit().await?;
        Ok(())
    }

    /// A pass failed with `e`, the `attempts`-th in a row. The periodic
    /// reconcile never dies (its job has no attempt limit): every failure is
    /// written on the cluster's `Reconciled` condition; once
    /// `Config::max_job_attempts` passes in a row have failed, or at once
    /// for a permanent failure, the active operations fail and the phase
    /// turns `degraded` (or `failed` for a cluster that never served). The
    /// job goes on: a retryable failure after the engine's backoff (capped
    /// at its `backoff_max`), a permanent one after [`PERMANENT_RECHECK`].
    async fn failing(&self, attempts: i32, e: JobError) -> Result<Outcome, JobError> {
        let give_up = !e.retryable || attempts >= self.app.config.max_job_attempts;
        if let Err(rec) = self.record_failing(attempts, &e, give_up).await {
            tracing::warn!(cluster = %self.id, error = %rec.message, "recording a failing reconcile");
        }
        if e.retryable {
            Err(e)
        } else {
            Ok(Outcome::RequeueAfter(PERMANENT_RECHECK))
        }
    }

    async fn record_failing(
        &self,
        attempts: i32,
        e: &JobError,
        give_up: bool,
    ) -> Result<(), JobError> {
        let pool = &self.app.pool;
        let Some(c) = cluster::get_any(pool, self.id).await? else {
            return Ok(());
        };
        let mut conditions = c.conditions.clone();
        let obs = ReconcileObservation::Failing {
            attempts,
            error: e.message.clone(),
            retry_within: if e.retryable {
                super::jobs::EngineConfig::default().backoff_max
            } else {
                PERMANENT_RECHECK
            },
        };
        if status::set_reconciled(&mut conditions, &obs, Utc::now()) {
            self.event(&c, None, None, true, "ReconcileFailing", &e.message)
                .await?;
        }
        let mut phase = c.phase;
        if give_up {
            let ops = {
                let mut conn = pool.acquire().await?;
                operation::list_active(&mut conn, c.id).await?
            };
            let err = op_error(
                "reconcile_failed",
                &format!(
                    "{attempts} passes in a row failed, the last with: {}",
                    e.message
                ),
                e.retryable,
            );
            self.fail_operations(&ops, &err).await?;
            phase = status::failing_phase(c.phase);
            if phase != c.phase {
                self.event(
                    &c,
                    None,
                    None,
                    true,
                    if phase == Phase::Failed {
                        "ClusterFailed"
                    } else {
                        "ClusterDegraded"
                    },
                    &format!("cluster is {}: passes over it keep failing", phase.as_str()),
                )
                .await?;
            }
        }
        let mut tx = self.lease.begin().await?;
        cluster::write_status(&mut *tx, c.id, phase, &conditions, c.generation).await?;
        tx.commit().await?;
        Ok(())
    }

    /// This process does not run the cluster's provider: a job queued
    /// before jobs named the provider they need, or one whose cluster
    /// changed hands. Nothing is touched (no machine is forgotten, no
    /// operation failed): the job is handed back named for its provider,
    /// so only a process that runs it claims it.
    async fn without_provider(&self, c: &Cluster) -> Result<Outcome, JobError> {
        let kind = c.provider.kind();
        tracing::warn!(cluster = %c.id, provider = kind, "this process does not run the cluster's provider; handing the job back");
        let mut conn = self.app.pool.acquire().await?;
        self.app.nudge_reconcile(&mut conn, c.id, kind).await?;
        Ok(Outcome::Done)
    }

    /// The job ran out of attempts (a job queued before reconcile jobs had
    /// no attempt limit): operations fail, retryable by a new request.
    async fn give_up(&self, message: &str) -> Result<(), JobError> {
        let Some(c) = cluster::get_any(&self.app.pool, self.id).await? else {
            return Ok(());
        };
        let ops = {
            let mut conn = self.app.pool.acquire().await?;
            operation::list_active(&mut conn, c.id).await?
        };
        let err = op_error(
            "dead_lettered",
            &format!("gave up after repeated failures: {message}"),
            true,
        );
        self.fail(&c, &ops, "ReconcileFailed", &err).await
    }
}

/// What the control-plane phase leaves for the rest of the pass.
struct ControlPlaneRound<'a> {
    /// Machine access, when this service bootstraps the cluster.
    access: Option<&'a MachineAccess>,
    verdict: ControlPlaneVerdict,
    /// The endpoint, when it answers.
    endpoint: Option<String>,
}

/// One pool's machines and nodes, as the status and operations report them.
struct PoolView {
    running: usize,
    /// Machines draining or being deleted.
    leaving: usize,
    ready: usize,
    joining: usize,
    problems: Vec<String>,
    drain_note: Option<String>,
    /// What a drain under way waits for, if one does.
    drain_waiting: Option<String>,
    repair_note: Option<String>,
    /// What its new machines wait for, if they wait for capacity.
    capacity_wait: Option<String>,
    /// A host claimed for it failed its prerequisites this pass.
    unfit: bool,
}

impl PoolView {
    /// `" (waiting for capacity: ...)"` when its machines wait, else empty.
    /// The typed error its operation's step carries while a host claimed
    /// for it lacks a prerequisite.
    fn step_error(&self) -> Option<OperationError> {
        self.unfit.then(|| {
            op_error(
                "host_prerequisites_missing",
                self.capacity_wait.as_deref().unwrap_or_default(),
                true,
            )
        })
    }

    fn waiting_note(&self) -> String {
        self.capacity_wait
            .as_deref()
            .map(|w| format!(" (waiting for capacity: {w})"))
            .unwrap_or_default()
    }

    fn new(
        p: &NodePool,
        machines: &[Machine],
        status: Option<&PoolsStatus>,
        waits: &CapacityWaits,
    ) -> Self {
        let mine: Vec<&Machine> = machines
            .iter()
            .filter(|m| m.node_pool_id == Some(p.id))
            .collect();
        let report = status.and_then(|s| s.pools.get(&p.id));
        Self {
            running: mine
                .iter()
                .filter(|m| m.state == MachineState::Running)
                .count(),
            leaving: mine
                .iter()
                .filter(|m| matches!(m.state, MachineState::Draining | MachineState::Deleting))
                .count(),
            ready: report.map_or(0, |r| r.ready),
            joining: report.map_or(0, |r| r.joining),
            problems: report.map(|r| r.problems.clone()).unwrap_or_default(),
            drain_note: report.and_then(|r| r.drain_note.clone()),
            drain_waiting: report.and_then(|r| r.drain_waiting.clone()),
            repair_note: report.and_then(|r| r.repair_note.clone()),
            capacity_wait: waits.get(&p.id).map(|w| w.message.clone()),
            unfit: waits.get(&p.id).is_some_and(|w| w.unfit),
        }
    }
}
