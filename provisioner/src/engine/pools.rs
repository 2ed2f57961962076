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
//!    [`REPAIRS_PER_WINDOW`] per cluster per [`REPAIR_WINDOW`].
//! 4. **Join.** Each running worker without a node gets a bootstrap token
//!    of its own ([`kubeforge_cluster::join`]), the worker bundle, and its
//!    bootstrap script; while the scripts run, the service approves the
//!    kubelet client CSRs whose token and node name match the ledger.
//! 5. **Clean up.** The token Secret of a machine that joined or is being
//!    removed is deleted by name (the service never lists the cluster's
//!    secrets; one left behind by a crash expires with its token and the
//!    cluster's token cleaner removes it), and Node objects of pool
//!    machines no longer in the ledger are deleted.

use chrono::{DateTime, TimeDelta, Utc};
use kubeforge_cluster::join::{
    self, check_node_client_csr, token_secret_name, BootstrapToken, KUBELET_CLIENT_SIGNER,
    POOL_LABEL,
};
use kubeforge_cluster::kubeconfig::render_token_kubeconfig;
use kubeforge_cluster::nodes::{self as tenant_nodes, DrainProgress, NodeView};
use kubeforge_cluster::spec::AutoRepair;
use kubeforge_cluster::worker::{self, WorkerBundleInput};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

use super::controlplane::{self, record_for as record, MachineAccess};
use crate::app::App;
use crate::error::{Error, Result};
use crate::ssh::{Redactor, StreamKind};
use crate::store::cluster::Cluster;
use crate::store::event;
use crate::store::machine::{self, Machine};
use crate::store::node_pool::NodePool;
use crate::store::secret;
use crate::tenant::{self, TenantApi};

/// How long a bootstrap token lives: enough for one join, retried.
pub const TOKEN_TTL: TimeDelta = TimeDelta::minutes(15);
/// How long one pass spends evicting from one node before moving on.
const DRAIN_SLICE: Duration = Duration::from_secs(5);
/// Cluster-wide repair budget.
pub const REPAIRS_PER_WINDOW: i64 = 3;
pub const REPAIR_WINDOW: TimeDelta = TimeDelta::minutes(10);
/// Longest one worker's bootstrap may take (its script waits up to 120 s
/// for the node's pod CIDR).
const JOIN_TIMEOUT: Duration = Duration::from_secs(200);
/// Validity of a node's kube-proxy client certificate.
const KUBE_PROXY_CERT_TTL: TimeDelta = TimeDelta::days(365);

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
pub async fn reconcile(
    app: &App,
    access: &MachineAccess,
    c: &Cluster,
    pools: &[NodePool],
    endpoint: &str,
    stopped: &HashSet<Uuid>,
) -> Result<PoolsStatus> {
    let api = super::tenant_api(app, c, endpoint).await?;
    pass(app, access, c, pools, api.as_ref(), endpoint, stopped).await
}

async fn pass(
    app: &App,
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
    let workers: Vec<&Machine> = machines.iter().filter(|m| m.role == "worker").collect();
    let pool_of = |m: &Machine| pools.iter().find(|p| Some(p.id) == m.node_pool_id);

    // 1. Observe.
    let mut to_join: Vec<&Machine> = Vec::new();
    for m in workers.iter().filter(|m| m.state == "running") {
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
        if state == "ready" && m.joined_at.is_none() {
            machine::mark_joined(&app.pool, m.id).await?;
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
    let workers: Vec<&Machine> = machines.iter().filter(|m| m.role == "worker").collect();
    let mut status = PoolsStatus::default();

    // 3. Scale down: choose victims among live machines.
    let mut requested: Option<HashMap<String, u64>> = None;
    for p in pools {
        let live: Vec<&Machine> = workers
            .iter()
            .copied()
            .filter(|m| m.node_pool_id == Some(p.id) && is_live(m))
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
        let mut victims = live.clone();
        scale_down_order(&mut victims, req);
        let why = if want == 0 && p.deletion_requested_at.is_some() {
            format!("node pool {} is being deleted", p.name)
        } else {
            format!("node pool {} scales down to {want}", p.name)
        };
        for m in victims.into_iter().take(live.len() - want) {
            tokens_done.push(m.id);
            if m.state == "running" {
                machine::start_drain(&app.pool, m.id, &why).await?;
                record(
                    app,
                    c,
                    Some(p.id),
                    false,
                    "NodeDraining",
                    &format!(
                        "draining node {} ({why}; ready: {}, CPU requested: {}m)",
                        m.name,
                        m.node_state.as_deref() == Some("ready"),
                        req.get(&m.name).copied().unwrap_or(0)
                    ),
                )
                .await?;
            } else {
                machine::set_state(&app.pool, m.id, "deleting", Some(&why)).await?;
            }
        }
    }

    // 4. Drains.
    let machines = machine::list_any(&app.pool, c.id).await?;
    let workers: Vec<&Machine> = machines.iter().filter(|m| m.role == "worker").collect();
    for m in workers.iter().filter(|m| m.state == "draining") {
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
                    report
                        .problems
                        .push(format!("draining {} for {elapsed} s: {blocking}", m.name));
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
            machine::set_state(&app.pool, m.id, "deleting", m.last_error.as_deref()).await?;
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
    for (pool_id, decision) in plan_repairs(&repairable, &workers, repairs_recent, now) {
        match decision {
            Repair::Wait(note) => status.pools.entry(pool_id).or_default().repair_note = Some(note),
            Repair::Replace {
                machine: m,
                why,
                message,
            } => {
                record(app, c, Some(pool_id), true, "NodeRepair", &message).await?;
                tokens_done.push(m.id);
                kube.delete_node(&m.name).await?;
                machine::set_state(&app.pool, m.id, "deleting", Some(&format!("repair: {why}")))
                    .await?;
            }
        }
    }

    // 6. Joins, with the CSR approver running beside them.
    let to_join: Vec<&Machine> = to_join
        .into_iter()
        .filter(|j| {
            machines
                .iter()
                .any(|m| m.id == j.id && m.state == "running")
        })
        .collect();
    // Only providers whose machines carry containerd and the node binaries
    // are joined (pools elsewhere are refused at the API; rows from before
    // that are reported): a join would fail, and auto-repair would churn
    // hosts over it.
    let joinable = app
        .providers
        .get(c.provider.kind())
        .is_some_and(|p| p.hosts_workers());
    if !joinable {
        for m in &to_join {
            machine::observe_node(&app.pool, m.id, Some(JOIN_UNSUPPORTED), None).await?;
        }
    } else if !to_join.is_empty() {
        join_all(app, access, c, pools, kube, endpoint, &to_join).await?;
    }

    // 7. Tokens of machines that joined or are leaving.
    for id in &tokens_done {
        kube.delete_system_secret(&token_secret_name(&id.to_string()))
            .await?;
    }
    let machines = machine::list_any(&app.pool, c.id).await?;

    // The report.
    for p in pools {
        let report = status.pools.entry(p.id).or_default();
        for m in machines.iter().filter(|m| m.node_pool_id == Some(p.id)) {
            if is_live(m) {
                report.live += 1;
            }
            match (m.state.as_str(), m.node_state.as_deref()) {
                ("running", Some("ready")) => report.ready += 1,
                ("running", Some("joining")) | ("pending", _) => report.joining += 1,
                ("running", Some(JOIN_UNSUPPORTED)) => report.problems.push(format!(
                    "{}: workers on the {} provider cannot join yet (the host gets no kubelet, \
                     kube-proxy or containerd)",
                    m.name,
                    c.provider.kind()
                )),
                ("running", _) => report.problems.push(format!(
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

/// What the repair step does for one pool.
#[derive(Debug)]
enum Repair<'a> {
    /// Delete this machine's node and machine; the machine convergence
    /// creates its replacement.
    Replace {
        machine: &'a Machine,
        why: String,
        message: String,
    },
    /// A node is due but is not replaced yet, and this says why.
    Wait(String),
}

/// Decides the repairs of one pass: per pool, the first running worker
/// unhealthy for longer than the pool's threshold is replaced, unless
/// auto-repair is off for the pool, the pool's previous repair or new
/// node is still on its way (one at a time per pool), or the cluster had
/// [`REPAIRS_PER_WINDOW`] repairs in the last [`REPAIR_WINDOW`]
/// (`repairs_recent`). Pools with nothing due are left out.
fn plan_repairs<'a>(
    pools: &[(Uuid, AutoRepair)],
    workers: &[&'a Machine],
    repairs_recent: i64,
    now: DateTime<Utc>,
) -> Vec<(Uuid, Repair<'a>)> {
    let mut repairs_left = (REPAIRS_PER_WINDOW - repairs_recent).max(0);
    let mut plan = Vec::new();
    for (pool_id, auto_repair) in pools {
        let mine: Vec<&Machine> = workers
            .iter()
            .copied()
            .filter(|m| m.node_pool_id == Some(*pool_id))
            .collect();
        let due: Vec<&Machine> = mine
            .iter()
            .copied()
            .filter(|m| m.state == "running")
            .filter(|m| overdue(m.unhealthy_since, auto_repair.after_seconds, now))
            .collect();
        let Some(m) = due.first().copied() else {
            continue;
        };
        let why = m.unhealthy_reason.as_deref().unwrap_or("unhealthy");
        if !auto_repair.enabled {
            let note = format!(
                "node {} is unhealthy ({why}); auto-repair is off for this pool",
                m.name
            );
            plan.push((*pool_id, Repair::Wait(note)));
            continue;
        }
        let in_flight = mine.iter().any(|o| {
            matches!(o.state.as_str(), "deleting" | "pending")
                || (o.state == "running"
                    && o.joined_at.is_none()
                    && !due.iter().any(|d| d.id == o.id))
        });
        if in_flight {
            let note = format!(
                "node {} is due for repair; waiting for the pool's previous repair or new node",
                m.name
            );
            plan.push((*pool_id, Repair::Wait(note)));
            continue;
        }
        if repairs_left == 0 {
            let note = format!(
                "node {} is due for repair, but the cluster already had {REPAIRS_PER_WINDOW} \
                 repairs in the last {} minutes",
                m.name,
                REPAIR_WINDOW.num_minutes()
            );
            plan.push((*pool_id, Repair::Wait(note)));
            continue;
        }
        repairs_left -= 1;
        let since = m.unhealthy_since.unwrap_or(now);
        let message = format!(
            "replacing node {}: {why} for {} s (pool threshold {} s)",
            m.name,
            (now - since).num_seconds(),
            auto_repair.after_seconds
        );
        plan.push((
            *pool_id,
            Repair::Replace {
                machine: m,
                why: why.to_string(),
                message,
            },
        ));
    }
    plan
}

/// Orders a pool's live machines by who goes first on a scale-down: those
/// without a Ready node (not yet joined, failed, not ready), then the
/// least CPU requested by their pods, then the newest.
fn scale_down_order(machines: &mut [&Machine], cpu_requested: &HashMap<String, u64>) {
    machines.sort_by_key(|m| {
        (
            m.state == "running" && m.node_state.as_deref() == Some("ready"),
            cpu_requested.get(&m.name).copied().unwrap_or(0),
            std::cmp::Reverse(m.created_at),
        )
    });
}

fn is_live(m: &Machine) -> bool {
    matches!(m.state.as_str(), "pending" | "running" | "failed")
}

/// A join in progress: the machine and the token it was given.
struct Joining<'a> {
    machine: &'a Machine,
    token: BootstrapToken,
}

/// Joins machines concurrently while approving their kubelets' CSRs.
async fn join_all(
    app: &App,
    access: &MachineAccess,
    c: &Cluster,
    pools: &[NodePool],
    kube: &dyn TenantApi,
    endpoint: &str,
    machines: &[&Machine],
) -> Result<()> {
    let ca = secret::get(&app.pool, &app.secrets, c.id, "pki/ca.crt")
        .await?
        .ok_or_else(|| Error::Unavailable("the cluster has no CA yet".into()))?;
    let ca_crt =
        String::from_utf8(ca).map_err(|_| Error::Internal(anyhow::anyhow!("CA not UTF-8")))?;
    let pki = controlplane::ensure_pki(app, c).await?;
    let signer = pki
        .ca
        .signer()
        .map_err(|e| Error::Internal(anyhow::anyhow!("{e}")))?;

    let mut joins = Vec::new();
    for m in machines {
        let token = BootstrapToken::for_machine(&m.id.to_string(), &mut rand::rngs::OsRng);
        let expires = Utc::now() + TOKEN_TTL;
        kube.apply_system_secret(
            &token.secret_name(),
            &token.secret_object(&m.id.to_string(), &m.name, expires),
        )
        .await?;
        joins.push(Joining { machine: m, token });
    }
    let done = AtomicBool::new(false);
    let work = async {
        let results = futures::future::join_all(
            joins
                .iter()
                .map(|j| join_one(app, access, c, pools, endpoint, &ca_crt, &signer, j)),
        )
        .await;
        done.store(true, Ordering::SeqCst);
        results
    };
    let approver = approve_while(app, c, kube, &joins, &done);
    let (results, approved) = tokio::join!(work, approver);
    approved?;
    for (j, r) in joins.iter().zip(results) {
        if let Err(why) = r {
            machine::observe_node(
                &app.pool,
                j.machine.id,
                Some("joining"),
                Some(&format!("JoinFailed: {why}")),
            )
            .await?;
            record(
                app,
                c,
                j.machine.node_pool_id,
                true,
                "NodeJoinFailed",
                &format!("{}: {why}", j.machine.name),
            )
            .await?;
        }
    }
    Ok(())
}

/// Uploads one worker's credentials and bundle and runs its bootstrap.
#[allow(clippy::too_many_arguments)]
async fn join_one(
    app: &App,
    access: &MachineAccess,
    c: &Cluster,
    pools: &[NodePool],
    endpoint: &str,
    ca_crt: &str,
    signer: &kubeforge_cluster::pki::Ca,
    j: &Joining<'_>,
) -> std::result::Result<(), String> {
    let m = j.machine;
    let pool = pools
        .iter()
        .find(|p| Some(p.id) == m.node_pool_id)
        .ok_or("the machine's pool is gone")?;
    let address = m.address.clone().ok_or("the machine has no address")?;
    let mut labels: BTreeMap<String, String> = pool.labels.as_map().clone();
    labels.insert(POOL_LABEL.into(), pool.name.clone());
    let taints = pool
        .taints
        .iter()
        .map(|t| {
            format!(
                "{}={}:{:?}",
                t.key,
                t.value.as_deref().unwrap_or(""),
                t.effect
            )
        })
        .collect();
    let sums = access
        .artifacts
        .checksums_of(&["kubelet", "kube-proxy", "kubectl"])
        .map_err(|e| e.to_string())?;
    let input = WorkerBundleInput {
        cluster_name: c.name.clone(),
        node_name: m.name.clone(),
        node_address: address,
        api_server: endpoint.to_string(),
        cluster_dns: c
            .network
            .service_cidr
            .nth(10)
            .ok_or("the service CIDR has no 10th address")?
            .to_string(),
        cluster_domain: "cluster.local".into(),
        pod_cidr: c.network.pod_cidr.to_string(),
        bin_dir: access.artifacts.guest_dir.clone(),
        node_labels: labels,
        node_taints: taints,
        binary_sha256: sums,
        lab: c.provider.kind() == "lab",
    };
    let bundle = worker::render_worker(&input).map_err(|e| e.to_string())?;
    let proxy = kubeforge_cluster::pki::issue_client_cert(
        signer,
        "system:kube-proxy",
        &[],
        Utc::now(),
        KUBE_PROXY_CERT_TTL,
    )
    .map_err(|e| e.to_string())?;
    let proxy_conf = kubeforge_cluster::kubeconfig::render_kubeconfig(
        &kubeforge_cluster::kubeconfig::KubeconfigInput {
            cluster_name: &c.name,
            server: endpoint,
            ca_pem: ca_crt,
            user_name: "kube-proxy",
            client_cert_pem: &proxy.cert_pem,
            client_key_pem: &proxy.key_pem,
        },
    );
    let bootstrap_conf = render_token_kubeconfig(
        &c.name,
        endpoint,
        ca_crt,
        "kubelet-bootstrap",
        &j.token.token(),
    );
    let mut redactor = Redactor::none();
    redactor.add(j.token.secret());
    for line in proxy.key_pem.lines().filter(|l| !l.starts_with("-----")) {
        redactor.add(line);
    }

    let session = controlplane::open(access, m).await?;
    let result = async {
        let mut files: Vec<(&str, &[u8], u32)> = vec![
            (worker::paths::CA_CRT, ca_crt.as_bytes(), 0o644),
            (
                worker::paths::BOOTSTRAP_KUBECONFIG,
                bootstrap_conf.as_bytes(),
                0o600,
            ),
            (
                worker::paths::KUBE_PROXY_KUBECONFIG,
                proxy_conf.as_bytes(),
                0o600,
            ),
        ];
        for f in &bundle {
            files.push((&f.path, f.contents.as_bytes(), f.mode));
        }
        for (path, bytes, mode) in files {
            session
                .upload(path, bytes, mode)
                .await
                .map_err(|e| format!("uploading {path}: {e}"))?;
        }
        let mut lines = Vec::new();
        let code = session
            .run(
                &format!("bash {}", worker::paths::BOOTSTRAP_SCRIPT),
                JOIN_TIMEOUT,
                &redactor,
                |kind, line| lines.push((kind, line.to_string())),
            )
            .await
            .map_err(|e| format!("bootstrap: {e}"))?;
        for (kind, line) in &lines {
            if *kind == StreamKind::Stderr || line.starts_with("bootstrap-worker:") {
                let _ = record(
                    app,
                    c,
                    m.node_pool_id,
                    *kind == StreamKind::Stderr && code != 0,
                    "BootstrapOutput",
                    &format!("{}: {line}", m.name),
                )
                .await;
            }
        }
        if code == 0 {
            Ok(())
        } else {
            Err(format!(
                "the bootstrap script exited with {code}: {}",
                lines
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == StreamKind::Stderr)
                    .map(|(_, l)| l.as_str())
                    .unwrap_or("no output")
            ))
        }
    }
    .await;
    session.close().await;
    result
}

/// Approves, until `done`, the pending kubelet client CSRs made with the
/// joining machines' tokens for exactly their node names; denies any other
/// CSR made with one of those tokens. CSRs whose names are not DNS
/// subdomains never get here ([`crate::tenant`] drops them).
async fn approve_while(
    app: &App,
    c: &Cluster,
    kube: &dyn TenantApi,
    joins: &[Joining<'_>],
    done: &AtomicBool,
) -> Result<()> {
    let by_user: HashMap<String, &Machine> = joins
        .iter()
        .map(|j| (j.token.username(), j.machine))
        .collect();
    let mut handled: HashSet<String> = HashSet::new();
    while !done.load(Ordering::SeqCst) {
        for csr in kube.csrs().await? {
            if handled.contains(&csr.name) || !csr.pending {
                continue;
            }
            let Some(m) = by_user.get(&csr.username) else {
                continue;
            };
            let verdict = if csr.signer != KUBELET_CLIENT_SIGNER {
                Err(format!(
                    "signer {:?} is not {KUBELET_CLIENT_SIGNER}",
                    csr.signer
                ))
            } else {
                check_node_client_csr(&csr.request, &m.name)
            };
            let (name, user) = (&csr.name, &csr.username);
            let (approve, reason, message) = match &verdict {
                Ok(()) => (
                    true,
                    "CsrApproved",
                    format!(
                        "approved {name}: {user} asks for {} as the ledger expects",
                        join::node_user(&m.name)
                    ),
                ),
                Err(why) => (
                    false,
                    "CsrDenied",
                    format!("denied {name} from {user} (machine {}): {why}", m.name),
                ),
            };
            kube.decide_csr(name, approve, &format!("Kubeforge{reason}"), &message)
                .await?;
            handled.insert(csr.name.clone());
            record(app, c, m.node_pool_id, !approve, reason, &message).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// When `since` is older than `threshold` seconds at `now`.
pub fn overdue(since: Option<DateTime<Utc>>, threshold: u32, now: DateTime<Utc>) -> bool {
    since.is_some_and(|s| (now - s).num_seconds() >= i64::from(threshold))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str, state: &str, node: Option<&str>, age_s: i64) -> Machine {
        let at = Utc::now() - TimeDelta::seconds(age_s);
        Machine {
            id: Uuid::now_v7(),
            tenant: "t".into(),
            cluster_id: Uuid::nil(),
            node_pool_id: None,
            role: "worker".into(),
            name: name.into(),
            provider: "lab".into(),
            machine_type: "small".into(),
            state: state.into(),
            provider_id: None,
            address: None,
            last_error: None,
            created_at: at,
            updated_at: at,
            deleted_at: None,
            host_key: None,
            node_state: node.map(str::to_string),
            unhealthy_since: None,
            unhealthy_reason: None,
            drain_started_at: None,
            joined_at: None,
            component_restarts: None,
        }
    }

    #[test]
    fn scale_down_takes_unready_then_least_requested_then_newest() {
        let busy_old = machine("busy-old", "running", Some("ready"), 300);
        let idle_old = machine("idle-old", "running", Some("ready"), 200);
        let idle_new = machine("idle-new", "running", Some("ready"), 100);
        let sick = machine("sick", "running", Some("not_ready"), 400);
        let booting = machine("booting", "pending", None, 10);
        let requested = HashMap::from([("busy-old".to_string(), 500), ("sick".to_string(), 900)]);
        let mut order = vec![&busy_old, &idle_old, &sick, &idle_new, &booting];
        scale_down_order(&mut order, &requested);
        let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["booting", "sick", "idle-new", "idle-old", "busy-old"]
        );
    }

    #[test]
    fn overdue_compares_whole_seconds() {
        let now = Utc::now();
        assert!(!overdue(None, 10, now));
        assert!(!overdue(Some(now - TimeDelta::seconds(9)), 10, now));
        assert!(overdue(Some(now - TimeDelta::seconds(10)), 10, now));
    }

    fn sick(name: &str, pool: Uuid, unhealthy_for_s: i64) -> Machine {
        let mut m = machine(name, "running", Some("not_ready"), 600);
        m.node_pool_id = Some(pool);
        m.joined_at = Some(m.created_at);
        m.unhealthy_since = Some(Utc::now() - TimeDelta::seconds(unhealthy_for_s));
        m.unhealthy_reason = Some("NodeNotReady: kubelet stopped posting".into());
        m
    }

    fn healthy(name: &str, pool: Uuid) -> Machine {
        let mut m = machine(name, "running", Some("ready"), 600);
        m.node_pool_id = Some(pool);
        m.joined_at = Some(m.created_at);
        m
    }

    fn repair_on(after_seconds: u32) -> AutoRepair {
        AutoRepair {
            enabled: true,
            after_seconds,
        }
    }

    fn replaced<'a>(plan: &[(Uuid, Repair<'a>)]) -> Vec<&'a str> {
        plan.iter()
            .filter_map(|(_, r)| match r {
                Repair::Replace { machine, .. } => Some(machine.name.as_str()),
                Repair::Wait(_) => None,
            })
            .collect()
    }

    fn waiting(plan: &[(Uuid, Repair<'_>)], pool: Uuid) -> String {
        plan.iter()
            .find_map(|(p, r)| match r {
                Repair::Wait(note) if *p == pool => Some(note.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("pool {pool} has no waiting note in {plan:?}"))
    }

    #[test]
    fn repairs_wait_for_the_threshold_and_name_the_reason() {
        let pool = Uuid::now_v7();
        let young = sick("young", pool, 19);
        let ok = healthy("ok", pool);
        let pools = [(pool, repair_on(20))];
        assert!(plan_repairs(&pools, &[&young, &ok], 0, Utc::now()).is_empty());

        let old = sick("old", pool, 25);
        let plan = plan_repairs(&pools, &[&young, &ok, &old], 0, Utc::now());
        assert_eq!(replaced(&plan), ["old"]);
        let Repair::Replace { why, message, .. } = &plan[0].1 else {
            unreachable!()
        };
        assert_eq!(why, "NodeNotReady: kubelet stopped posting");
        assert!(
            message.contains("for 25 s (pool threshold 20 s)"),
            "{message}"
        );
    }

    #[test]
    fn one_repair_at_a_time_per_pool() {
        let pool = Uuid::now_v7();
        let a = sick("a", pool, 60);
        let b = sick("b", pool, 60);
        let pools = [(pool, repair_on(20))];
        // Two nodes due: only one is replaced in a pass.
        let plan = plan_repairs(&pools, &[&a, &b], 0, Utc::now());
        assert_eq!(replaced(&plan), ["a"]);

        // While the first is being deleted, or its replacement is booting
        // or has not joined yet, the second waits.
        let mut going = a.clone();
        going.state = "deleting".into();
        let mut booting = machine("new", "pending", None, 5);
        booting.node_pool_id = Some(pool);
        let mut unjoined = machine("new", "running", Some("joining"), 5);
        unjoined.node_pool_id = Some(pool);
        for other in [&going, &booting, &unjoined] {
            let plan = plan_repairs(&pools, &[other, &b], 0, Utc::now());
            assert!(replaced(&plan).is_empty(), "{plan:?}");
            assert!(waiting(&plan, pool).contains("waiting for the pool's previous repair"));
        }
    }

    #[test]
    fn the_cluster_budget_caps_repairs_across_pools() {
        let pools: Vec<(Uuid, AutoRepair)> =
            (0..5).map(|_| (Uuid::now_v7(), repair_on(20))).collect();
        let sick_nodes: Vec<Machine> = pools
            .iter()
            .enumerate()
            .map(|(i, (p, _))| sick(&format!("n{i}"), *p, 60))
            .collect();
        let workers: Vec<&Machine> = sick_nodes.iter().collect();

        let plan = plan_repairs(&pools, &workers, 0, Utc::now());
        assert_eq!(replaced(&plan), ["n0", "n1", "n2"]);
        for (p, _) in &pools[3..] {
            assert!(waiting(&plan, *p).contains("already had 3 repairs in the last 10 minutes"));
        }

        let plan = plan_repairs(&pools, &workers, 2, Utc::now());
        assert_eq!(replaced(&plan), ["n0"]);
        let plan = plan_repairs(&pools, &workers, 7, Utc::now());
        assert!(replaced(&plan).is_empty());
        assert_eq!(plan.len(), 5);
    }

    #[test]
    fn a_pool_without_auto_repair_only_reports() {
        let pool = Uuid::now_v7();
        let node = sick("n", pool, 3600);
        let off = AutoRepair {
            enabled: false,
            after_seconds: 20,
        };
        let plan = plan_repairs(&[(pool, off)], &[&node], 0, Utc::now());
        assert!(replaced(&plan).is_empty());
        assert!(waiting(&plan, pool).contains("auto-repair is off"));
        // And it does not use up the cluster's budget.
        let other = Uuid::now_v7();
        let node2 = sick("m", other, 60);
        let pools = [(pool, off), (other, repair_on(20))];
        let plan = plan_repairs(&pools, &[&node, &node2], 2, Utc::now());
        assert_eq!(replaced(&plan), ["m"]);
    }
}
