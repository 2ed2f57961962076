//! Worker pools of a cluster whose control plane serves: nodes join, are
//! observed, drained on their way out, and replaced when they die.
//!
//! One pass, run by the cluster reconciler after the control plane is
//! ready, talks to the tenant cluster through its API as the service's own
//! least-privileged identity ([`crate::tenant`]); nothing runs kubectl and
//! nothing read from the cluster reaches a shell:
//!
//! 1. **Observe.** The nodes; each worker's ledger row records
//!    its node's state (`joining`, `ready`, `not_ready`, `missing`) and
//!    since when it has been unhealthy, and why.
//! 2. **Scale down.** A pool with more live machines than its size picks
//!    victims (not-ready first, then least CPU requested, then newest) and
//!    marks them `draining`. A draining node is cordoned and its pods
//!    evicted through the Eviction API ([`crate::tenant::drain`]), which
//!    honours PodDisruptionBudgets; each pass tries for a few seconds, and after the
//!    pool's drain timeout the drain is abandoned, with the blocking reason
//!    in an event and on the operation. Then the Node object is deleted and
//!    the machine handed to the provider for deletion.
//! 3. **Repair.** A worker unhealthy (NotReady, its machine stopped, its
//!    node gone, its join failing) for longer than its pool's threshold is
//!    replaced: Node object deleted, machine deleted, a new one created by
//!    the machine convergence. At most one repair per pool at a time and
//!    `REPAIRS_PER_WINDOW` per cluster per `REPAIR_WINDOW`. The choices of
//!    steps 2 and 3 are pure code in [`kubeforge_cluster::pools`].
//! 4. **Join.** Each running worker without a node gets a bootstrap token
//!    of its own ([`kubeforge_cluster::join`]), the worker bundle, and its
//!    bootstrap script; while the scripts run, the service approves the
//!    kubelet client CSRs whose token and node name match the ledger.
//! 5. **Clean up.** The token Secret of a machine that joined or is being
//!    removed is deleted by name (the service never lists the cluster's
//!    secrets; one left behind by a crash expires with its token and the
//!    cluster's token cleaner removes it), and Node objects of pool
//!    machines no longer in the ledger are deleted.
//! 6. **Pod network.** Every node's routes to the other nodes' pod ranges
//!    ([`kubeforge_cluster::routes`]: addresses from the ledger, ranges
//!    the controller manager allocated), uploaded and applied over SSH on
//!    each running worker and control-plane member (which runs no pods but
//!    must reach them) whose files differ from what it last applied
//!    (`machines.network_sha`); its boot unit reapplies them after a
//!    restart. A node that joins gets routes to the others at once, and
//!    the others a route to it once its range is allocated; a node that
//!    leaves takes its routes off the others on the next pass.

use chrono::Utc;
use kubeforge_cluster::join::token_secret_name;
use kubeforge_cluster::nodes::{self as tenant_nodes, DrainProgress, NodeView};
use kubeforge_cluster::pools::{
    plan_repairs, scale_down_order, MachineRole, MachineState, Repair, Worker, REPAIR_WINDOW,
};
use kubeforge_cluster::routes::{self, RoutedNode};
use kubeforge_cluster::spec::AutoRepair;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

use super::controlplane::record_for as record;
use super::lease::Lease;
use crate::error::Result;
use crate::ssh::MachineAccess;
use crate::state::App;
use crate::store::cluster::Cluster;
use crate::store::event;
use crate::store::machine::{self, Machine};
use crate::store::node_pool::NodePool;
use crate::tenant::{self, TenantApi};

/// How long one pass spends evicting from one node before moving on.
const DRAIN_SLICE: Duration = Duration::from_secs(5);

/// How long applying a node's network files may take.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(60);

/// The node state of a worker whose provider cannot host a node yet.
const JOIN_UNSUPPORTED: &str = "join_unsupported";

/// What one pass saw of one pool.
#[derive(Debug, Default, Clone)]
pub struct PoolReport {
    /// Machines of the pool that are neither draining nor being deleted.
    pub live: usize,
    pub ready: usize,
    pub joining: usize,
    pub draining: usize,
    /// Why nodes are not ready, one line each.
    pub problems: Vec<String>,
    /// The outcome of the latest finished drain, for the operation.
    pub drain_note: Option<String>,
    /// What a drain under way waits for (a refused eviction names the pod
    /// and its PodDisruptionBudget), for the operation while it waits.
    pub drain_waiting: Option<String>,
    /// Why a due repair waits, if one does.
    pub repair_note: Option<String>,
}

/// What one pass saw of every pool.
#[derive(Debug, Default)]
pub struct PoolsStatus {
    pub pools: HashMap<Uuid, PoolReport>,
}

/// One pass over the pools of a cluster whose control plane serves through
/// `endpoint` (`https://host:port`). `stopped` are worker machines the
/// provider reports powered off.
#[tracing::instrument(skip_all, fields(cluster = %c.name, pools = pools.len()))]
pub async fn reconcile(
    app: &App,
    lease: &Lease,
    access: &MachineAccess,
    c: &Cluster,
    pools: &[NodePool],
    endpoint: &str,
    stopped: &HashSet<Uuid>,
) -> Result<PoolsStatus> {
    let api = super::tenant_api(app, c, endpoint).await?;
    pass(
        app,
        lease,
        access,
        c,
        pools,
        api.as_ref(),
        endpoint,
        stopped,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn pass(
    app: &App,
    lease: &Lease,
    access: &MachineAccess,
    c: &Cluster,
    pools: &[NodePool],
    kube: &dyn TenantApi,
    endpoint: &str,
    stopped: &HashSet<Uuid>,
) -> Result<PoolsStatus> {
    let now = Utc::now();
    let nodes: HashMap<String, NodeView> = kube
        .nodes()
        .await?
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect();
    // Machines whose token Secret is done with: joined, or on their way out.
    let mut tokens_done: Vec<Uuid> = Vec::new();
    let machines = machine::list_any(&app.pool, c.id).await?;
    let workers: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.role == MachineRole::Worker)
        .collect();
    let pool_of = |m: &Machine| pools.iter().find(|p| Some(p.id) == m.node_pool_id);

    // 1. Observe.
    let mut to_join: Vec<&Machine> = Vec::new();
    for m in workers.iter().filter(|m| m.state == MachineState::Running) {
        let (state, unhealthy): (&str, Option<String>) = if stopped.contains(&m.id) {
            (
                "not_ready",
                Some("MachineStopped: the machine is powered off".into()),
            )
        } else {
            match nodes.get(&m.name) {
                Some(n) if n.ready => ("ready", None),
                // Registered but not yet Ready: still joining (looked at
                // again soon), on the repair clock all the same.
                Some(n) if m.joined_at.is_none() => {
                    ("joining", Some(format!("NodeNotReady: {}", n.why)))
                }
                Some(n) => ("not_ready", Some(format!("NodeNotReady: {}", n.why))),
                None if m.joined_at.is_none() => {
                    to_join.push(m);
                    // A failing join keeps its reason (and its clock).
                    ("joining", m.unhealthy_reason.clone())
                }
                None => (
                    "missing",
                    Some("NodeMissing: the node's object is gone from the cluster".into()),
                ),
            }
        };
        machine::observe_node(&app.pool, m.id, Some(state), unhealthy.as_deref()).await?;
        let node = nodes.get(&m.name);
        if let (Some(n), None) = (node, m.timeline.registered) {
            machine::mark_registered(&app.pool, m.id, n.registered_at).await?;
        }
        if state == "ready" && m.joined_at.is_none() {
            let ready_since = node.and_then(|n| n.ready_since);
            machine::mark_joined(&app.pool, m.id, ready_since).await?;
            let joined = (ready_since.unwrap_or(now) - m.created_at).num_milliseconds();
            app.metrics.observe_node_join(joined as f64 / 1000.0);
            tokens_done.push(m.id);
            let secs = (now - m.created_at).num_seconds();
            record(
                app,
                c,
                m.node_pool_id,
                false,
                "NodeJoined",
                &format!(
                    "node {} joined and is Ready, {secs} s after its machine was requested",
                    m.name
                ),
            )
            .await?;
        }
    }

    // 2. Node objects of pool machines no longer in the ledger.
    let live_names: HashSet<&str> = workers.iter().map(|m| m.name.as_str()).collect();
    for (name, n) in &nodes {
        if n.pool.is_some() && !live_names.contains(name.as_str()) {
            kube.delete_node(name).await?;
            record(
                app,
                c,
                None,
                false,
                "StaleNodeRemoved",
                &format!("node {name} had no machine in the ledger; its object was deleted"),
            )
            .await?;
        }
    }

    let machines = machine::list_any(&app.pool, c.id).await?;
    let workers: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.role == MachineRole::Worker)
        .collect();
    let mut status = PoolsStatus::default();

    // 3. Scale down: choose victims among live machines.
    let mut requested: Option<HashMap<String, u64>> = None;
    for p in pools {
        let live: Vec<Worker> = workers
            .iter()
            .filter(|m| m.node_pool_id == Some(p.id))
            .map(|m| worker_view(m))
            .filter(|w| w.state.is_live())
            .collect();
        let want = if p.deletion_requested_at.is_some() {
            0
        } else {
            p.size as usize
        };
        if live.len() <= want {
            continue;
        }
        if requested.is_none() {
            requested = Some(tenant_nodes::cpu_requested(&kube.pods(None).await?));
        }
        let req = requested.as_ref().expect("filled above");
        let mut victims: Vec<&Worker> = live.iter().collect();
        scale_down_order(&mut victims, req);
        let why = if want == 0 && p.deletion_requested_at.is_some() {
            format!("node pool {} is being deleted", p.name)
        } else {
            format!("node pool {} scales down to {want}", p.name)
        };
        for m in victims.into_iter().take(live.len() - want) {
            tokens_done.push(m.id);
            if m.state == MachineState::Running {
                let mut tx = lease.begin().await?;
                machine::start_drain(&mut *tx, m.id, &why).await?;
                tx.commit().await?;
                record(
                    app,
                    c,
                    Some(p.id),
                    false,
                    "NodeDraining",
                    &format!(
                        "draining node {} ({why}; ready: {}, CPU requested: {}m)",
                        m.name,
                        m.node_ready,
                        req.get(&m.name).copied().unwrap_or(0)
                    ),
                )
                .await?;
            } else {
                let mut tx = lease.begin().await?;
                machine::set_state(&mut *tx, m.id, MachineState::Deleting, Some(&why)).await?;
                tx.commit().await?;
            }
        }
    }

    // 4. Drains.
    let machines = machine::list_any(&app.pool, c.id).await?;
    let workers: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.role == MachineRole::Worker)
        .collect();
    for m in workers.iter().filter(|m| m.state == MachineState::Draining) {
        let Some(p) = pool_of(m) else { continue };
        let report = status.pools.entry(p.id).or_default();
        let started = m.drain_started_at.unwrap_or(now);
        let elapsed = (now - started).num_seconds().max(0);
        let outcome = match nodes.get(&m.name) {
            None => Some((
                false,
                format!("node {} was not registered; nothing to drain", m.name),
            )),
            Some(n) if !n.ready || stopped.contains(&m.id) => Some((
                true,
                format!(
                    "node {} is not ready ({}); removed without draining",
                    m.name, n.why
                ),
            )),
            Some(_) => match tenant::drain(kube, &m.name, DRAIN_SLICE).await? {
                DrainProgress::Drained { evicted } => Some((
                    false,
                    format!(
                        "node {} drained in {elapsed} s ({evicted} pods evicted in the last pass)",
                        m.name
                    ),
                )),
                DrainProgress::Pending { blocking, .. }
                    if elapsed >= i64::from(p.drain_timeout_seconds) =>
                {
                    Some((
                        true,
                        format!(
                            "drain of node {} gave up after {elapsed} s (pool drain timeout {} s): {blocking}; the node is removed anyway",
                            m.name, p.drain_timeout_seconds
                        ),
                    ))
                }
                DrainProgress::Pending { blocking, .. } => {
                    report.draining += 1;
                    let waiting = format!(
                        "draining {} for {elapsed} s (removed anyway at the pool's drain timeout, {} s): {blocking}",
                        m.name, p.drain_timeout_seconds
                    );
                    report.drain_waiting = Some(match report.drain_waiting.take() {
                        Some(earlier) => format!("{earlier}; {waiting}"),
                        None => waiting,
                    });
                    None
                }
            },
        };
        if let Some((warning, message)) = outcome {
            let reason = if message.contains("gave up") {
                "DrainTimedOut"
            } else if warning {
                "NodeNotDrained"
            } else {
                "NodeDrained"
            };
            record(app, c, Some(p.id), warning, reason, &message).await?;
            report.drain_note = Some(message);
            kube.delete_node(&m.name).await?;
            let mut tx = lease.begin().await?;
            machine::set_state(
                &mut *tx,
                m.id,
                MachineState::Deleting,
                m.last_error.as_deref(),
            )
            .await?;
            tx.commit().await?;
        }
    }

    // 5. Repairs.
    let repairs_recent =
        event::count_since(&app.pool, c.id, None, "NodeRepair", now - REPAIR_WINDOW).await?;
    let repairable: Vec<(Uuid, AutoRepair)> = pools
        .iter()
        .filter(|p| p.deletion_requested_at.is_none())
        .map(|p| (p.id, p.auto_repair))
        .collect();
    let views: Vec<Worker> = workers.iter().map(|m| worker_view(m)).collect();
    let view_refs: Vec<&Worker> = views.iter().collect();
    for (pool_id, decision) in plan_repairs(&repairable, &view_refs, repairs_recent, now) {
        match decision {
            Repair::Wait(note) => status.pools.entry(pool_id).or_default().repair_note = Some(note),
            Repair::Replace {
                machine: id,
                name,
                why,
                message,
            } => {
                record(app, c, Some(pool_id), true, "NodeRepair", &message).await?;
                app.metrics.count_repair(&why);
                tokens_done.push(id);
                kube.delete_node(&name).await?;
                let mut tx = lease.begin().await?;
                machine::set_state(
                    &mut *tx,
                    id,
                    MachineState::Deleting,
                    Some(&format!("repair: {why}")),
                )
                .await?;
                tx.commit().await?;
            }
        }
    }

    // 6. Joins, with the CSR approver running beside them.
    let to_join: Vec<&Machine> = to_join
        .into_iter()
        .filter(|j| {
            machines
                .iter()
                .any(|m| m.id == j.id && m.state == MachineState::Running)
        })
        .collect();
    // Only providers whose machines carry containerd and the node binaries
    // are joined (pools elsewhere are refused at the API; rows from before
    // that are reported): a join would fail, and auto-repair would churn
    // hosts over it.
    let joinable = app
        .providers
        .get(c.provider.kind())
        .is_some_and(|p| p.capabilities().hosts_workers);
    if !joinable {
        for m in &to_join {
            machine::observe_node(&app.pool, m.id, Some(JOIN_UNSUPPORTED), None).await?;
        }
    } else if !to_join.is_empty() {
        super::join::join_all(app, access, c, pools, kube, endpoint, &to_join).await?;
    }

    // 6b. What a registered host has that kubelet cannot see (GPUs
    //     declared at registration): on its node's capacity.
    advertise_extended(app, c, &workers, &nodes, kube).await;

    // 7. Tokens of machines that joined or are leaving.
    for id in &tokens_done {
        kube.delete_system_secret(&token_secret_name(&id.to_string()))
            .await?;
    }
    let machines = machine::list_any(&app.pool, c.id).await?;

    // 8. The pod network, and the cluster DNS Service's backend.
    network(app, access, c, &machines, &nodes, stopped).await?;
    if let Some(dns) = app.config.dns_address {
        // Every pass: level-triggered, so an edit in the cluster is undone.
        if let Err(e) = kube.apply_dns_endpoints(dns).await {
            tracing::warn!(cluster = %c.name, error = %e, "pointing kube-dns at the service's DNS server");
        }
    }

    // The report.
    for p in pools {
        let report = status.pools.entry(p.id).or_default();
        for m in machines.iter().filter(|m| m.node_pool_id == Some(p.id)) {
            if worker_view(m).state.is_live() {
                report.live += 1;
            }
            use MachineState::{Pending, Running};
            match (m.state, m.node_state.as_deref()) {
                (Running, Some("ready")) => report.ready += 1,
                (Running, Some("joining")) | (Pending, _) => report.joining += 1,
                (Running, Some(JOIN_UNSUPPORTED)) => report.problems.push(format!(
                    "{}: workers on the {} provider cannot join yet (the host gets no kubelet, \
                     kube-proxy or containerd)",
                    m.name,
                    c.provider.kind()
                )),
                (Running, _) => report.problems.push(format!(
                    "{}: {}",
                    m.name,
                    m.unhealthy_reason.as_deref().unwrap_or("not ready")
                )),
                _ => {}
            }
        }
    }
    Ok(status)
}

/// Plans the cluster's routes and applies them on every running worker and
/// control-plane member whose files changed; one event per pass that
/// applied any (or failed).
async fn network(
    app: &App,
    access: &MachineAccess,
    c: &Cluster,
    machines: &[Machine],
    nodes: &HashMap<String, NodeView>,
    stopped: &HashSet<Uuid>,
) -> Result<()> {
    // Nodes that may hold pods (workers running or draining), and the
    // control-plane members, which hold none but must reach them (the API
    // server calls webhooks and aggregated APIs served by pods).
    let members: Vec<RoutedNode> = machines
        .iter()
        .filter(|m| matches!(m.role, MachineRole::Worker | MachineRole::ControlPlane))
        .filter(|m| matches!(m.state, MachineState::Running | MachineState::Draining))
        .filter_map(|m| {
            Some(RoutedNode {
                name: m.name.clone(),
                address: m.address.as_deref()?.parse().ok()?,
                pod_cidr: (m.role == MachineRole::Worker)
                    .then(|| nodes.get(&m.name).and_then(|n| n.pod_cidr))
                    .flatten(),
            })
        })
        .collect();
    let pods = c.network.pod_cidr;
    let plan = routes::plan(pods, &members);
    // Every machine of the cluster with an address may reach its pods
    // (the API server, the load balancer's health checks, the nodes).
    let peers: std::collections::BTreeSet<std::net::Ipv4Addr> = machines
        .iter()
        .filter(|m| m.state != MachineState::Deleted)
        .filter_map(|m| m.address.as_deref()?.parse().ok())
        .collect();
    let mut applied: Vec<String> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for m in machines.iter().filter(|m| {
        matches!(m.role, MachineRole::Worker | MachineRole::ControlPlane)
            && m.state == MachineState::Running
            && !stopped.contains(&m.id)
    }) {
        let Some(table) = plan.tables.get(&m.name) else {
            continue;
        };
        let files = routes::node_files(pods, table, m.role == MachineRole::Worker, &peers);
        let sha = routes::digest(&files);
        if m.network_sha.as_deref() == Some(sha.as_str()) {
            continue;
        }
        match apply_network(access, m, &files).await {
            Ok(()) => {
                machine::set_network_sha(&app.pool, m.id, &sha).await?;
                applied.push(format!("{} ({} routes)", m.name, table.len()));
            }
            Err(e) => failed.push(e),
        }
    }
    if !applied.is_empty() {
        let mut message = format!("pod network routes applied on {}", applied.join(", "));
        if !plan.left_out.is_empty() {
            message.push_str(&format!("; no route to {}", plan.left_out.join("; ")));
        }
        record(app, c, None, false, "NetworkRoutesApplied", &message).await?;
    }
    if !failed.is_empty() {
        record(
            app,
            c,
            None,
            true,
            "NetworkRoutesFailed",
            &format!("pod network routes not applied: {}", failed.join("; ")),
        )
        .await?;
    }
    Ok(())
}

/// Uploads a worker's network files and applies them.
async fn apply_network(
    access: &MachineAccess,
    m: &Machine,
    files: &[kubeforge_cluster::bundle::BundleFile],
) -> std::result::Result<(), String> {
    let session = super::controlplane::open(access, m).await?;
    let result = async {
        for f in files {
            session
                .upload(&f.path, f.contents.as_bytes(), f.mode)
                .await
                .map_err(|e| format!("{}: uploading {}: {e}", m.name, f.path))?;
        }
        let mut lines = Vec::new();
        let code = session
            .run(
                routes::APPLY_COMMAND,
                NETWORK_TIMEOUT,
                &crate::ssh::Redactor::none(),
                |_, l| lines.push(l.to_string()),
            )
            .await
            .map_err(|e| format!("{}: {e}", m.name))?;
        if code == 0 {
            Ok(())
        } else {
            Err(format!(
                "{}: the network script exited with {code}: {}",
                m.name,
                lines.last().map_or("no output", String::as_str)
            ))
        }
    }
    .await;
    session.close().await;
    result
}

/// A ledger row as the pool decisions see it.
pub(crate) fn worker_view(m: &Machine) -> Worker {
    Worker {
        id: m.id,
        name: m.name.clone(),
        pool: m.node_pool_id,
        state: m.state,
        node_ready: m.node_state.as_deref() == Some("ready"),
        joined: m.joined_at.is_some(),
        created_at: m.created_at,
        unhealthy_since: m.unhealthy_since,
        unhealthy_reason: m.unhealthy_reason.clone(),
    }
}

/// Puts each running worker's extended resources (what its provider says
/// the machine has beyond CPU and memory: a registered host's declared
/// `nvidia.com/gpu`) on its node's `status.capacity`, where the node does
/// not show them yet. Level-triggered: checked every pass, patched only
/// when missing or different. Failures are logged and tried next pass.
async fn advertise_extended(
    app: &App,
    c: &Cluster,
    workers: &[&Machine],
    nodes: &HashMap<String, NodeView>,
    kube: &dyn TenantApi,
) {
    let Some(provider) = app.providers.for_cluster(c.id, &c.tenant, &c.provider) else {
        return;
    };
    for m in workers.iter().filter(|m| m.state == MachineState::Running) {
        let Some(node) = nodes.get(&m.name) else {
            continue;
        };
        let capacity = match provider.capacity(m.id).await {
            Ok(Some(capacity)) => capacity,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(machine = %m.name, error = %e, "reading the machine's capacity");
                continue;
            }
        };
        let missing: std::collections::BTreeMap<String, String> = capacity
            .extended
            .iter()
            .map(|(name, count)| (name.clone(), count.to_string()))
            .filter(|(name, count)| node.capacity.get(name) != Some(count))
            .collect();
        if missing.is_empty() {
            continue;
        }
        match kube.advertise_capacity(&node.name, &missing).await {
            Ok(()) => {
                let list: Vec<String> = missing.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = record(
                    app,
                    c,
                    m.node_pool_id,
                    false,
                    "ExtendedResourcesAdvertised",
                    &format!("{}: {}", node.name, list.join(", ")),
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(node = %node.name, error = %e, "advertising extended resources")
            }
        }
    }
}
