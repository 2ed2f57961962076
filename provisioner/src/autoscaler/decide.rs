//! From what the watches keep and the database holds to the simulation's
//! inputs, and from its answers to decisions: the glue between the pure
//! simulation (`kubeforge_cluster::simulate`, `scaleup`, `scaledown`) and
//! the writes of [`super::apply`]. Everything here but [`World::load`] is a
//! pure function of its arguments, tested without a cluster.
//!
//! Choices made here, each one a place where the simulation must agree
//! with the real scheduler:
//! - **Existing nodes** are every node not cordoned, with every pod bound
//!   to it placed on it (resources, host ports, anti-affinity).
//! - **Nodes on their way** (a pool's size above its live machines whose
//!   node has settled: Ready, and rid of the not-ready taint the
//!   lifecycle controller lifts seconds later) are empty copies of the
//!   pool's template: pods they will take are not asked for twice,
//!   whichever replica decides. A registered node that has not settled
//!   fits no ordinary pod, so it counts as on its way.
//! - **Template nodes** offer what the pool's machine type promises
//!   (`NodeOffer`: the lab holds its nodes to exactly that), 110 pods,
//!   the ephemeral storage of a node of the cluster, minus the DaemonSet
//!   pods that would run there, with the pool's labels and taints.
//! - **Backed-off pools.** A pool with a machine that failed to come up
//!   in the last [`BACKOFF`] is left out of scale-ups, and pods only it
//!   could take say so; the next pool is tried.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kubeforge_cluster::api::{PendingPodView, PoolReasonView, PENDING_SHOWN};
use kubeforge_cluster::machine_types::GPU_RESOURCE;
use kubeforge_cluster::pools::{MachineRole, MachineState};
use kubeforge_cluster::scaledown::{
    self, Controller, Pdb, PodOnNode, PoolBounds, PoolNode, ScaleDownInput, ScaleDownSettings,
    UnneededTracker, Verdict,
};
use kubeforge_cluster::scaleup::{self, Expander, PodOutcome, PoolOption, ScaleUpSettings};
use kubeforge_cluster::simulate::{
    classes, fits_node, template_node, EquivalenceClass, ExistingNode, NodeShape, NodeState,
    Resources,
};
use kubeforge_cluster::spec::{self as cluster_spec, AutoscalerSettings};
use kubeforge_cluster::worker::NodeOffer;
use kubeforge_cluster::{MachineType, Phase};
use uuid::Uuid;

use super::observe::{Mirror, PdbScope, PodRecord};
use crate::error::Result;
use crate::state::App;
use crate::store::cluster::{self, Cluster};
use crate::store::machine::{self, Machine};
use crate::store::node_pool::{self, NodePool};

/// How long a pool whose machine failed to come up is left out.
pub const BACKOFF: Duration = Duration::from_secs(5 * 60);
/// Pods a template node offers (kubelet's default `maxPods`).
pub const PODS_PER_NODE: u64 = 110;

/// A cluster's autoscaler settings, as the rounds use them.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub expander: Expander,
    pub scale_down_utilization_threshold: f64,
    pub scale_down_unneeded: Duration,
    pub batch_idle: Duration,
    pub batch_max: Duration,
    pub max_nodes_per_scale_up: u32,
}

impl From<&AutoscalerSettings> for Settings {
    fn from(s: &AutoscalerSettings) -> Self {
        Settings {
            expander: match s.expander {
                cluster_spec::Expander::LeastWaste => Expander::LeastWaste,
                cluster_spec::Expander::MostPods => Expander::MostPods,
                cluster_spec::Expander::Priority => Expander::Priority,
            },
            scale_down_utilization_threshold: s.scale_down_utilization_threshold,
            scale_down_unneeded: Duration::from_secs(u64::from(s.scale_down_unneeded_seconds)),
            batch_idle: Duration::from_secs(u64::from(s.batch_idle_seconds)),
            batch_max: Duration::from_secs(u64::from(s.batch_max_seconds)),
            max_nodes_per_scale_up: s.max_nodes_per_scale_up,
        }
    }
}

/// What a round knows from the database.
#[derive(Debug, Clone)]
pub struct World {
    pub cluster: Cluster,
    pub pools: Vec<NodePool>,
    pub machines: Vec<Machine>,
    pub settings: Settings,
    /// The tenant's node quota and the nodes its pools ask for now.
    pub quota: Option<scaleup::Quota>,
    /// The tenant's vCPU quota and the vCPUs its pools and control planes
    /// ask for now.
    pub cpu_quota: Option<scaleup::Quota>,
}

impl World {
    /// The cluster, its pools and machines; None when the cluster no
    /// longer wants an autoscaler (gone, being deleted, not serving, no
    /// pool autoscales).
    pub async fn load(app: &App, id: Uuid) -> Result<Option<World>> {
        let Some(c) = cluster::get_any(&app.pool, id).await? else {
            return Ok(None);
        };
        let pools = node_pool::list_any(&app.pool, id).await?;
        if !matches!(c.phase, Phase::Ready | Phase::Degraded) || !c.wants_autoscaler(&pools) {
            return Ok(None);
        }
        let machines = machine::list_any(&app.pool, id).await?;
        let now = crate::store::tenant::in_use_now(&app.pool, &c.tenant).await?;
        let quota = |in_use: i64, limit: Option<i32>| {
            limit.map(|limit| scaleup::Quota {
                in_use: u32::try_from(in_use).unwrap_or(u32::MAX),
                limit: u32::try_from(limit).unwrap_or(0),
            })
        };
        Ok(Some(World {
            quota: quota(now.nodes, now.max_nodes),
            cpu_quota: quota(now.cpus, now.max_cpus),
            settings: Settings::from(&c.autoscaler),
            cluster: c,
            pools,
            machines,
        }))
    }

    /// The live pools that autoscale.
    pub fn autoscaling_pools(&self) -> impl Iterator<Item = &NodePool> {
        self.pools
            .iter()
            .filter(|p| p.autoscaling.is_some() && p.deletion_requested_at.is_none())
    }

    /// Pools left out of scale-ups for now, with why.
    pub fn holds(&self, now: DateTime<Utc>) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for p in self.autoscaling_pools() {
            let failed = self
                .machines
                .iter()
                .filter(|m| m.node_pool_id == Some(p.id) && m.state == MachineState::Failed)
                .filter(|m| (now - m.updated_at).to_std().unwrap_or_default() < BACKOFF)
                .max_by_key(|m| m.updated_at);
            if let Some(m) = failed {
                let until = m.updated_at + BACKOFF;
                out.insert(
                    p.name.to_string(),
                    format!(
                        "backed off until {}: machine {} failed to come up ({})",
                        until.format("%H:%M:%S UTC"),
                        m.name,
                        m.last_error.as_deref().unwrap_or("no reason given")
                    ),
                );
            }
        }
        out
    }
}

/// Resources from a node offer, with the type's GPUs as the extended
/// resource their device plugin advertises.
fn offered(t: MachineType, ephemeral_bytes: u64) -> Resources {
    let offer = NodeOffer::of(t);
    let mut extended = BTreeMap::new();
    if t.gpus() > 0 {
        extended.insert(GPU_RESOURCE.to_string(), u64::from(t.gpus()));
    }
    Resources {
        cpu_millis: offer.cpu_millis,
        memory_bytes: offer.memory_bytes,
        ephemeral_bytes,
        pods: PODS_PER_NODE,
        extended,
    }
}

/// What a new node of `p` will look like: its machine type's offer, less
/// the DaemonSet pods that would run there, with its labels and taints.
pub fn template(p: &NodePool, mirror: &Mirror, ephemeral_bytes: u64) -> NodeShape {
    let bare = template_node(
        &offered(p.machine_type, ephemeral_bytes),
        &Resources::default(),
        &[],
        &p.name,
        p.labels.as_map(),
        &p.taints,
    );
    let daemons: Vec<Resources> = mirror
        .daemonsets
        .items
        .values()
        .filter(|d| fits_node(&d.shape, &bare).is_ok())
        .map(|d| d.shape.request.clone())
        .collect();
    template_node(
        &offered(p.machine_type, ephemeral_bytes),
        &Resources::default(),
        &daemons,
        &p.name,
        p.labels.as_map(),
        &p.taints,
    )
}

/// One pool to grow.
#[derive(Debug, Clone, PartialEq)]
pub struct Grow {
    pub pool_id: Uuid,
    pub pool: String,
    pub from: u32,
    pub to: u32,
    pub pods: u64,
    pub reason: String,
    /// When the longest-waiting pod it is for became unschedulable.
    pub oldest_pending_since: Option<DateTime<Utc>>,
}

/// What a scale-up round decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleUpPlan {
    pub grows: Vec<Grow>,
    pub pending_total: u64,
    /// The first [`PENDING_SHOWN`] pending pods and their outcomes.
    pub pending: Vec<PendingPodView>,
    /// Pending pods a new node (asked for now or before) will take.
    pub waiting_for_new_nodes: u64,
    /// Pending pods that fit on a node that exists: the scheduler is about
    /// to place them.
    pub about_to_schedule: u64,
    /// Pods no pool takes, in one line, when there are any.
    pub no_scale_up: Option<String>,
    /// Every pending pod a new node is for, or that no pool takes, with
    /// what to tell it (as cluster-autoscaler's pod events do).
    pub notices: Vec<PodNotice>,
}

/// What a pending pod is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNotice {
    /// A new node of this pool is for it.
    NewNode { pod: String, pool: String },
    /// No pool takes it; why, pool by pool, in one line.
    NoPool { pod: String, why: String },
}

/// The live machines of pool `pool` whose node has settled (Ready, rid of
/// the not-ready taint): a pool's size above this is nodes on their way.
fn settled_nodes(world: &World, mirror: &Mirror, pool: Uuid) -> u32 {
    world
        .machines
        .iter()
        .filter(|m| {
            m.node_pool_id == Some(pool)
                && matches!(
                    m.state,
                    MachineState::Pending | MachineState::Provisioning | MachineState::Running
                )
                && mirror.nodes.items.get(&m.name).is_some_and(|n| n.settled())
        })
        .count() as u32
}

/// The nodes that exist (not cordoned), with their pods, then the nodes
/// on their way as template copies; returns them and, for the latter,
/// which pool each belongs to.
fn nodes_for_simulation(
    world: &World,
    mirror: &Mirror,
    templates: &HashMap<Uuid, NodeShape>,
) -> (Vec<ExistingNode>, HashMap<String, String>) {
    let mut states: HashMap<&str, NodeState> = HashMap::new();
    for p in mirror.pods.items.values() {
        if let Some(node) = p.facts.node_name.as_deref() {
            states.entry(node).or_default().place(&p.shape, 1);
        }
    }
    let mut names: Vec<&String> = mirror.nodes.items.keys().collect();
    names.sort();
    let autoscaled: HashSet<&str> = world.autoscaling_pools().map(|p| p.name.as_str()).collect();
    // A node of an autoscaling pool that registered but has not settled
    // (Ready, and the not-ready taint gone: the lifecycle controller
    // lifts it seconds after Ready) fits no ordinary pod and may not show
    // its allocatable yet: it stands in the simulation as its pool's
    // template until then.
    let joining = |n: &super::observe::NodeRecord| {
        !n.settled() && n.pool.as_deref().is_some_and(|p| autoscaled.contains(p))
    };
    let mut out: Vec<ExistingNode> = names
        .into_iter()
        .map(|n| &mirror.nodes.items[n])
        .filter(|n| !n.unschedulable && !joining(n))
        .map(|n| ExistingNode {
            name: n.name.clone(),
            shape: n.shape.clone(),
            state: states.remove(n.name.as_str()).unwrap_or_default(),
        })
        .collect();
    let mut upcoming = HashMap::new();
    for p in world.autoscaling_pools() {
        let registered = settled_nodes(world, mirror, p.id);
        for i in 0..p.size.saturating_sub(registered) {
            let name = format!("{} (new node {})", p.name, i + 1);
            upcoming.insert(name.clone(), p.name.to_string());
            out.push(ExistingNode {
                name,
                shape: templates[&p.id].clone(),
                state: NodeState::default(),
            });
        }
    }
    (out, upcoming)
}

/// One scale-up round over what `mirror` shows and `world` holds.
pub fn plan_scale_up(
    world: &World,
    mirror: &Mirror,
    holds: &HashMap<String, String>,
) -> ScaleUpPlan {
    let pending = mirror.pending();
    let since: HashMap<String, DateTime<Utc>> = pending
        .iter()
        .filter_map(|p| Some((p.key(), p.unschedulable_since?)))
        .collect();
    let ephemeral = mirror
        .nodes
        .items
        .values()
        .map(|n| n.shape.allocatable.ephemeral_bytes)
        .max()
        .unwrap_or(u64::MAX / 4);
    let templates: HashMap<Uuid, NodeShape> = world
        .autoscaling_pools()
        .map(|p| (p.id, template(p, mirror, ephemeral)))
        .collect();
    let (mut existing, upcoming) = nodes_for_simulation(world, mirror, &templates);
    let options: Vec<PoolOption> = world
        .autoscaling_pools()
        .map(|p| PoolOption {
            pool: p.name.to_string(),
            template: templates[&p.id].clone(),
            size: p.size,
            max: p.autoscaling.map_or(p.size, |a| a.max),
            priority: p.autoscaling.map_or(0, |a| a.priority),
            vcpus: p.machine_type.cpus(),
            excluded: holds.get(p.name.as_str()).cloned(),
        })
        .collect();
    let pending_classes: Vec<EquivalenceClass> =
        classes(pending.iter().map(|p| (p.key(), p.shape.clone())));
    let decision = scaleup::scale_up(
        &pending_classes,
        &mut existing,
        &options,
        &ScaleUpSettings {
            expander: world.settings.expander,
            quota: world.quota,
            cpu_quota: world.cpu_quota,
            max_nodes_per_scale_up: world.settings.max_nodes_per_scale_up,
        },
    );

    let mut plan = ScaleUpPlan {
        pending_total: pending.len() as u64,
        ..ScaleUpPlan::default()
    };
    let mut oldest: HashMap<&str, DateTime<Utc>> = HashMap::new();
    let mut unplaced: Vec<(&str, String)> = Vec::new();
    let mut explained: HashSet<String> = HashSet::new();
    let mut no_pool: u64 = 0;
    for (pod, outcome) in decision.pods(&pending_classes) {
        let (namespace, name) = pod.split_once('/').unwrap_or(("", pod));
        let view = |outcome: &str, pool: Option<&str>, node: Option<&str>| PendingPodView {
            namespace: namespace.to_string(),
            name: name.to_string(),
            outcome: outcome.to_string(),
            pool: pool.map(str::to_string),
            node: node.map(str::to_string),
            reasons: Vec::new(),
        };
        let shown = match outcome {
            PodOutcome::ExistingNode(node) => match upcoming.get(node) {
                Some(pool) => {
                    plan.waiting_for_new_nodes += 1;
                    view("scale_up", Some(pool), None)
                }
                None => {
                    plan.about_to_schedule += 1;
                    view("existing_node", None, Some(node))
                }
            },
            PodOutcome::NewNode(pool) => {
                plan.waiting_for_new_nodes += 1;
                plan.notices.push(PodNotice::NewNode {
                    pod: pod.to_string(),
                    pool: pool.to_string(),
                });
                if let Some(t) = since.get(pod) {
                    let e = oldest.entry(pool).or_insert(*t);
                    *e = (*e).min(*t);
                }
                view("scale_up", Some(pool), None)
            }
            PodOutcome::NoPool(reasons) => {
                no_pool += 1;
                let line = if reasons.is_empty() {
                    "no pool autoscales".to_string()
                } else {
                    reasons
                        .iter()
                        .map(|r| format!("pool {}: {}", r.pool, r.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                plan.notices.push(PodNotice::NoPool {
                    pod: pod.to_string(),
                    why: line.clone(),
                });
                if explained.insert(line.clone()) {
                    unplaced.push((pod, line));
                }
                PendingPodView {
                    reasons: reasons
                        .iter()
                        .map(|r| PoolReasonView {
                            pool: r.pool.clone(),
                            reason: r.reason.clone(),
                        })
                        .collect(),
                    ..view("no_pool", None, None)
                }
            }
        };
        if plan.pending.len() < PENDING_SHOWN {
            plan.pending.push(shown);
        }
    }
    if !unplaced.is_empty() {
        let examples: Vec<String> = unplaced
            .iter()
            .take(3)
            .map(|(pod, why)| format!("{pod}: {why}"))
            .collect();
        plan.no_scale_up = Some(format!(
            "{no_pool} pending pod(s) fit no pool: {}",
            examples.join(" | ")
        ));
    }

    for g in &decision.grow {
        let Some(p) = world
            .autoscaling_pools()
            .find(|p| p.name.as_str() == g.pool)
        else {
            continue;
        };
        plan.grows.push(Grow {
            pool_id: p.id,
            pool: g.pool.clone(),
            from: p.size,
            to: p.size + g.nodes,
            pods: g.pods,
            reason: format!(
                "{} pending pod(s) fit no node; {} new {} node(s) take them ({} expander)",
                g.pods,
                g.nodes,
                p.machine_type.as_str(),
                match world.settings.expander {
                    Expander::LeastWaste => "least-waste",
                    Expander::MostPods => "most-pods",
                    Expander::Priority => "priority",
                }
            ),
            oldest_pending_since: oldest.get(g.pool.as_str()).copied(),
        });
    }
    plan
}

/// One node to remove.
#[derive(Debug, Clone, PartialEq)]
pub struct Removal {
    pub pool_id: Uuid,
    pub pool: String,
    pub machine_id: Uuid,
    pub node: String,
    pub from: u32,
    pub reason: String,
}

/// What a scale-down round decided, and why nodes stay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleDownPlan {
    pub removals: Vec<Removal>,
    /// By pool: why an unused node of it stays (a blocking pod, no room
    /// elsewhere, the pool at its min, the cool-down).
    pub notes: BTreeMap<String, String>,
}

fn controller(kind: Option<&str>) -> Controller {
    match kind {
        None => Controller::None,
        Some("ReplicaSet") => Controller::ReplicaSet,
        Some("ReplicationController") => Controller::ReplicationController,
        Some("StatefulSet") => Controller::StatefulSet,
        Some("Job") => Controller::Job,
        Some("DaemonSet") => Controller::DaemonSet,
        Some(other) => Controller::Other(other.to_string()),
    }
}

fn pod_on_node(p: &PodRecord) -> PodOnNode {
    PodOnNode {
        name: p.key(),
        shape: p.shape.clone(),
        controller: controller(p.owner_kind.as_deref()),
        mirror: p.facts.mirror,
        safe_to_evict: p.safe_to_evict,
        local_storage: p.local_storage,
    }
}

/// One scale-down round: nodes of autoscaling pools whose machine runs and
/// whose node is Ready and schedulable are looked at; every other
/// schedulable node is somewhere their pods may go.
pub fn plan_scale_down(
    world: &World,
    mirror: &Mirror,
    tracker: &mut UnneededTracker,
    now: DateTime<Utc>,
    last_scale_up: Option<DateTime<Utc>>,
) -> ScaleDownPlan {
    let pools: HashMap<&str, &NodePool> = world
        .autoscaling_pools()
        .map(|p| (p.name.as_str(), p))
        .collect();
    let running: HashMap<&str, &Machine> = world
        .machines
        .iter()
        .filter(|m| m.role == MachineRole::Worker && m.state == MachineState::Running)
        .map(|m| (m.name.as_str(), m))
        .collect();
    // A pool with nodes still on their way (its size above its Ready
    // live nodes) is converging: its nodes are not taken away until it
    // has settled, whoever asked for the new ones.
    let on_their_way: HashMap<&str, u32> = pools
        .values()
        .filter_map(|p| {
            let ready = settled_nodes(world, mirror, p.id);
            (p.size > ready).then(|| (p.name.as_str(), p.size - ready))
        })
        .collect();
    let mut on_node: HashMap<&str, Vec<&PodRecord>> = HashMap::new();
    for p in mirror.pods.items.values() {
        if let Some(n) = p.facts.node_name.as_deref() {
            on_node.entry(n).or_default().push(p);
        }
    }
    let mut names: Vec<&String> = mirror.nodes.items.keys().collect();
    names.sort();
    let mut nodes: Vec<PoolNode> = Vec::new();
    let mut others: Vec<ExistingNode> = Vec::new();
    for n in names.into_iter().map(|n| &mirror.nodes.items[n]) {
        if n.unschedulable {
            continue;
        }
        let pods = on_node.remove(n.name.as_str()).unwrap_or_default();
        let in_pool = n
            .pool
            .as_deref()
            .filter(|p| pools.contains_key(p) && !on_their_way.contains_key(p))
            .filter(|_| n.settled() && running.contains_key(n.name.as_str()));
        match in_pool {
            Some(pool) => nodes.push(PoolNode {
                name: n.name.clone(),
                pool: pool.to_string(),
                shape: n.shape.clone(),
                pods: pods.into_iter().map(pod_on_node).collect(),
            }),
            None => {
                let mut state = NodeState::default();
                for p in pods {
                    state.place(&p.shape, 1);
                }
                others.push(ExistingNode {
                    name: n.name.clone(),
                    shape: n.shape.clone(),
                    state,
                });
            }
        }
    }
    let bounds: Vec<PoolBounds> = pools
        .values()
        .map(|p| PoolBounds {
            pool: p.name.to_string(),
            size: p.size,
            min: p.autoscaling.map_or(p.size, |a| a.min),
        })
        .collect();
    let pdbs: Vec<Pdb> = mirror
        .pdbs
        .items
        .values()
        .filter_map(|b| {
            let selector = match &b.scope {
                PdbScope::Nothing => return None,
                PdbScope::Selected(s) => s.clone(),
                PdbScope::Unreadable => Default::default(),
            };
            Some(Pdb {
                namespace: b.namespace.clone(),
                name: b.name.clone(),
                selector,
                disruptions_allowed: u32::try_from(b.disruptions_allowed).unwrap_or(0),
            })
        })
        .collect();
    let unneeded_for = chrono::TimeDelta::from_std(world.settings.scale_down_unneeded)
        .unwrap_or(chrono::TimeDelta::MAX);
    let decision = scaledown::scale_down(
        &ScaleDownInput {
            pools: &bounds,
            nodes: &nodes,
            others: &others,
            pdbs: &pdbs,
            now,
            last_scale_up,
        },
        tracker,
        &ScaleDownSettings {
            utilization_threshold: world.settings.scale_down_utilization_threshold,
            unneeded_for,
            // The cool-down after a scale-up is the unneeded time too: a
            // node a scale-up just added is not taken away sooner than an
            // unused one would be.
            delay_after_scale_up: unneeded_for,
            ..ScaleDownSettings::default()
        },
    );

    let mut plan = ScaleDownPlan::default();
    for (pool, n) in &on_their_way {
        plan.notes.insert(
            pool.to_string(),
            format!("scale-down waits: {n} node(s) of the pool are on their way"),
        );
    }
    for r in &decision.nodes {
        let note = match &r.verdict {
            Verdict::Blocked(why) => Some(format!(
                "node {} ({:.0}% used) stays: {}",
                r.name,
                r.utilization * 100.0,
                why.iter()
                    .map(|(pod, why)| format!("{pod}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            Verdict::NoRoom(pods) => Some(format!(
                "node {} ({:.0}% used) stays: no other node has room for {}",
                r.name,
                r.utilization * 100.0,
                pods.join(", ")
            )),
            Verdict::PoolAtMin { min } => Some(format!(
                "node {} is unneeded, but the pool is at its min {min}",
                r.name
            )),
            Verdict::Unneeded { since } => decision
                .cooling_down_until
                .map(|until| {
                    format!(
                        "node {} is unneeded; scale-down waits for the cool-down after the last scale-up (until {})",
                        r.name,
                        until.format("%H:%M:%S UTC")
                    )
                })
                .or_else(|| {
                    Some(format!(
                        "node {} is unneeded since {}",
                        r.name,
                        since.format("%H:%M:%S UTC")
                    ))
                }),
            _ => None,
        };
        if let Some(note) = note {
            plan.notes.entry(r.pool.clone()).or_insert(note);
        }
    }
    for r in &decision.remove {
        let (Some(pool), Some(m)) = (pools.get(r.pool.as_str()), running.get(r.node.as_str()))
        else {
            continue;
        };
        let used = decision
            .nodes
            .iter()
            .find(|n| n.name == r.node)
            .map_or(0.0, |n| n.utilization);
        let reason = if r.empty {
            format!(
                "is empty and was unneeded for {} s",
                world.settings.scale_down_unneeded.as_secs()
            )
        } else {
            format!(
                "was {:.0}% used (below {:.0}%) for {} s and its pods fit elsewhere ({})",
                used * 100.0,
                world.settings.scale_down_utilization_threshold * 100.0,
                world.settings.scale_down_unneeded.as_secs(),
                r.moves
                    .iter()
                    .map(|(pod, node)| format!("{pod} -> {node}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        plan.removals.push(Removal {
            pool_id: pool.id,
            pool: r.pool.clone(),
            machine_id: m.id,
            node: r.node.clone(),
            from: pool.size,
            reason,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::WatchEvent;
    use kubeforge_cluster::spec::{AutoRepair, ControlPlaneSpec, Labels, ProviderSpec};
    use kubeforge_cluster::{Autoscaling, ClusterName, ClusterNetwork, KubernetesVersion};
    use kubeforge_cluster::{MachineType, NodePoolName};
    use serde_json::json;

    fn cluster() -> Cluster {
        let now = Utc::now();
        Cluster {
            id: Uuid::now_v7(),
            tenant: "acme".into(),
            name: ClusterName::parse("demo").unwrap(),
            kubernetes_version: KubernetesVersion::parse("1.20.2").unwrap(),
            provider: ProviderSpec::Lab {},
            control_plane: ControlPlaneSpec {
                replicas: 1,
                machine_type: MachineType::SMALL,
            },
            network: ClusterNetwork::parse("10.244.0.0/16", "10.96.0.0/12").unwrap(),
            labels: Labels::default(),
            deletion_protection: false,
            autoscaler: AutoscalerSettings::default(),
            phase: Phase::Ready,
            conditions: Vec::new(),
            endpoint: Some("https://10.0.0.1:6443".into()),
            certificates: json!({}),
            generation: 1,
            observed_generation: 1,
            resource_version: 1,
            deletion_requested_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn pool(c: &Cluster, name: &str, size: u32, min: u32, max: u32) -> NodePool {
        let now = Utc::now();
        NodePool {
            id: Uuid::now_v7(),
            tenant: c.tenant.clone(),
            cluster_id: c.id,
            name: NodePoolName::parse(name).unwrap(),
            machine_type: MachineType::SMALL,
            alternative_machine_types: Vec::new(),
            size,
            autoscaling: Some(Autoscaling {
                min,
                max,
                priority: 0,
            }),
            labels: Labels::default(),
            host_selector: Labels::default(),
            taints: Vec::new(),
            drain_timeout_seconds: 60,
            auto_repair: AutoRepair::default(),
            phase: Phase::Ready,
            conditions: Vec::new(),
            generation: 1,
            observed_generation: 1,
            resource_version: 1,
            deletion_requested_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn machine(p: &NodePool, name: &str, state: MachineState) -> Machine {
        let now = Utc::now();
        Machine {
            id: Uuid::now_v7(),
            tenant: p.tenant.clone(),
            cluster_id: p.cluster_id,
            node_pool_id: Some(p.id),
            role: MachineRole::Worker,
            name: name.into(),
            provider: "lab".into(),
            machine_type: MachineType::SMALL,
            state,
            provider_id: None,
            address: None,
            last_error: None,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            host_key: None,
            node_state: None,
            unhealthy_since: None,
            unhealthy_reason: None,
            drain_started_at: None,
            joined_at: None,
            component_restarts: None,
            network_sha: None,
            timeline: crate::store::machine::Timeline {
                requested: now,
                ..Default::default()
            },
        }
    }

    fn node(name: &str, pool: &str, ready: bool) -> WatchEvent<k8s_openapi::api::core::v1::Node> {
        let offer = NodeOffer::of(MachineType::SMALL);
        WatchEvent::Apply(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"kubeforge.io/node-pool": pool}},
                "spec": if ready { json!({}) } else {
                    json!({"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]})
                },
                "status": {
                    "allocatable": {"cpu": format!("{}m", offer.cpu_millis),
                                    "memory": offer.memory_bytes.to_string(), "pods": "110"},
                    "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
                }
            }))
            .unwrap(),
        )
    }

    fn pod(
        name: &str,
        cpu: &str,
        node: Option<&str>,
        extra: serde_json::Value,
    ) -> WatchEvent<crate::tenant::Pod> {
        let mut spec = json!({"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let status = if node.is_some() {
            json!({"phase": "Running"})
        } else {
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                   "reason": "Unschedulable", "lastTransitionTime": "2026-12-02T00:00:00Z"}]})
        };
        WatchEvent::Apply(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                         "name": "web", "uid": "u", "controller": true}]},
                "spec": spec,
                "status": status
            }))
            .unwrap(),
        )
    }

    /// A mirror that has listed everything once, then these events.
    fn mirror(
        nodes: Vec<WatchEvent<k8s_openapi::api::core::v1::Node>>,
        pods: Vec<WatchEvent<crate::tenant::Pod>>,
    ) -> Mirror {
        let mut m = Mirror::default();
        m.pod_event(WatchEvent::Init);
        m.pod_event(WatchEvent::InitDone);
        m.node_event(WatchEvent::Init);
        m.node_event(WatchEvent::InitDone);
        m.daemonset_event(WatchEvent::Init);
        m.daemonset_event(WatchEvent::InitDone);
        m.pdb_event(WatchEvent::Init);
        m.pdb_event(WatchEvent::InitDone);
        for n in nodes {
            m.node_event(n);
        }
        for p in pods {
            m.pod_event(p);
        }
        assert!(m.synced());
        m
    }

    fn world(pools: Vec<NodePool>, machines: Vec<Machine>) -> World {
        let c = cluster();
        World {
            settings: Settings::from(&c.autoscaler),
            cluster: c,
            pools,
            machines,
            quota: None,
            cpu_quota: None,
        }
    }

    #[test]
    fn pods_that_fit_nowhere_grow_the_pool_and_nodes_on_their_way_are_not_asked_twice() {
        let c = cluster();
        let auto = pool(&c, "auto", 1, 1, 4);
        let m1 = machine(&auto, "auto-1", MachineState::Running);
        let pods = vec![
            pod("web-1", "600m", Some("auto-1"), json!({})),
            pod("web-2", "600m", None, json!({})),
            pod("web-3", "600m", None, json!({})),
        ];
        let w = world(vec![auto.clone()], vec![m1.clone()]);
        let m = mirror(vec![node("auto-1", "auto", true)], pods.clone());
        let plan = plan_scale_up(&w, &m, &HashMap::new());
        assert_eq!(plan.grows.len(), 1, "{plan:?}");
        assert_eq!((plan.grows[0].from, plan.grows[0].to), (1, 3));
        assert_eq!(plan.grows[0].pods, 2);
        assert_eq!(plan.pending_total, 2);
        assert!(plan.pending.iter().all(|p| p.outcome == "scale_up"));
        assert!(plan.no_scale_up.is_none());

        // The size is written; one new node registered but is not Ready
        // (tainted not-ready), the other has no node yet: nothing more.
        let mut grown = auto.clone();
        grown.size = 3;
        let w = world(
            vec![grown],
            vec![
                m1,
                machine(&auto, "auto-2", MachineState::Running),
                machine(&auto, "auto-3", MachineState::Provisioning),
            ],
        );
        let m = mirror(
            vec![node("auto-1", "auto", true), node("auto-2", "auto", false)],
            pods,
        );
        let plan = plan_scale_up(&w, &m, &HashMap::new());
        assert!(plan.grows.is_empty(), "asked twice: {plan:?}");
        assert_eq!(plan.waiting_for_new_nodes, 2);

        // Ready, but the lifecycle controller has not lifted the not-ready
        // taint yet: still on its way, still not asked for twice.
        let WatchEvent::Apply(mut tainted) = node("auto-2", "auto", true) else {
            unreachable!()
        };
        tainted.spec = Some(
            serde_json::from_value(json!({"taints": [
                {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}))
            .unwrap(),
        );
        let m = mirror(
            vec![node("auto-1", "auto", true), WatchEvent::Apply(tainted)],
            vec![
                pod("web-1", "600m", Some("auto-1"), json!({})),
                pod("web-2", "600m", None, json!({})),
                pod("web-3", "600m", None, json!({})),
            ],
        );
        let plan = plan_scale_up(&w, &m, &HashMap::new());
        assert!(plan.grows.is_empty(), "asked twice: {plan:?}");
        assert_eq!(plan.waiting_for_new_nodes, 2);
    }

    #[test]
    fn a_pod_no_pool_takes_is_explained_pool_by_pool_and_a_backed_off_pool_says_so() {
        let c = cluster();
        let auto = pool(&c, "auto", 1, 1, 4);
        let spare = pool(&c, "spare", 0, 0, 1);
        let w = world(
            vec![auto.clone(), spare.clone()],
            vec![machine(&auto, "auto-1", MachineState::Running)],
        );
        let m = mirror(
            vec![node("auto-1", "auto", true)],
            vec![
                pod(
                    "ssd",
                    "100m",
                    None,
                    json!({"nodeSelector": {"disktype": "ssd"}}),
                ),
                pod("big", "600m", Some("auto-1"), json!({})),
                pod("web-a", "600m", None, json!({})),
                pod("web-b", "600m", None, json!({})),
            ],
        );
        let holds = HashMap::from([(
            "auto".to_string(),
            "backed off until 00:05:00 UTC".to_string(),
        )]);
        let plan = plan_scale_up(&w, &m, &holds);
        // One web pod goes to the other pool, from zero; that pool is then
        // at its max, and the backed-off pool says so for the second.
        assert_eq!(plan.grows.len(), 1, "{plan:?}");
        assert_eq!(
            (
                plan.grows[0].pool.as_str(),
                plan.grows[0].from,
                plan.grows[0].to
            ),
            ("spare", 0, 1)
        );
        let ssd = plan.pending.iter().find(|p| p.name == "ssd").unwrap();
        assert_eq!(ssd.outcome, "no_pool");
        let reasons: Vec<(&str, &str)> = ssd
            .reasons
            .iter()
            .map(|r| (r.pool.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("auto", "node selector mismatch (disktype)"),
                ("spare", "node selector mismatch (disktype)")
            ]
        );
        let left = plan
            .pending
            .iter()
            .find(|p| p.name.starts_with("web-") && p.outcome == "no_pool")
            .unwrap();
        let reasons: Vec<(&str, &str)> = left
            .reasons
            .iter()
            .map(|r| (r.pool.as_str(), r.reason.as_str()))
            .collect();
        assert!(
            reasons
                .iter()
                .any(|(p, r)| *p == "auto" && r.contains("backed off")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|(p, r)| *p == "spare" && r.contains("max")),
            "{reasons:?}"
        );
        let why = plan.no_scale_up.unwrap();
        assert!(why.starts_with("2 pending pod(s) fit no pool: "), "{why}");
    }

    #[test]
    fn a_pod_asking_for_a_gpu_grows_the_gpu_pool_and_the_other_says_insufficient_gpu() {
        let c = cluster();
        let mut cpu = pool(&c, "cpu", 0, 0, 2);
        cpu.machine_type = MachineType::parse("m5.large").unwrap();
        let mut gpu = pool(&c, "gpu", 0, 0, 2);
        gpu.machine_type = MachineType::parse("g4dn.xlarge").unwrap();
        let w = world(vec![cpu, gpu], vec![]);
        let trainer = json!({"containers": [{"name": "c", "image": "x", "resources": {
            "requests": {"cpu": "500m", "memory": "64Mi", "nvidia.com/gpu": "1"},
            "limits": {"nvidia.com/gpu": "1"}}}]});
        let m = mirror(vec![], vec![pod("train", "500m", None, trainer)]);
        let plan = plan_scale_up(&w, &m, &HashMap::new());
        assert_eq!(plan.grows.len(), 1, "{plan:?}");
        assert_eq!(
            (
                plan.grows[0].pool.as_str(),
                plan.grows[0].from,
                plan.grows[0].to
            ),
            ("gpu", 0, 1)
        );

        // With the GPU pool held, the pod fits no pool: the m5.large pool
        // says why it never could.
        let holds = HashMap::from([("gpu".to_string(), "backed off".to_string())]);
        let plan = plan_scale_up(&w, &m, &holds);
        assert!(plan.grows.is_empty(), "{plan:?}");
        let reasons: Vec<(&str, &str)> = plan.pending[0]
            .reasons
            .iter()
            .map(|r| (r.pool.as_str(), r.reason.as_str()))
            .collect();
        assert!(
            reasons.contains(&("cpu", "insufficient nvidia.com/gpu")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|(p, r)| *p == "gpu" && r.contains("backed off")),
            "{reasons:?}"
        );
    }

    #[test]
    fn the_tenant_quota_bounds_a_scale_up_and_says_so() {
        let c = cluster();
        let auto = pool(&c, "auto", 1, 1, 4);
        let mut w = world(
            vec![auto.clone()],
            vec![machine(&auto, "auto-1", MachineState::Running)],
        );
        // A platform admin lowered the quota to 2 nodes; 1 is in use.
        w.quota = Some(scaleup::Quota {
            in_use: 1,
            limit: 2,
        });
        let m = mirror(
            vec![node("auto-1", "auto", true)],
            vec![
                pod("web-1", "600m", Some("auto-1"), json!({})),
                pod("web-2", "600m", None, json!({})),
                pod("web-3", "600m", None, json!({})),
            ],
        );
        let plan = plan_scale_up(&w, &m, &HashMap::new());
        assert_eq!((plan.grows[0].from, plan.grows[0].to), (1, 2), "{plan:?}");
        let left = plan
            .pending
            .iter()
            .find(|p| p.outcome == "no_pool")
            .unwrap();
        assert!(left.reasons[0].reason.contains("quota"), "{left:?}");
    }

    #[test]
    fn the_tenant_vcpu_quota_bounds_a_scale_up_by_the_pools_machine_type() {
        let c = cluster();
        let mut auto = pool(&c, "auto", 1, 1, 4);
        auto.machine_type = MachineType::MEDIUM;
        let mut w = world(
            vec![auto.clone()],
            vec![machine(&auto, "auto-1", MachineState::Running)],
        );
        // A small control plane and one medium node use 3 of 6 vCPUs:
        // room for one more medium node (2), not two.
        w.cpu_quota = Some(scaleup::Quota {
            in_use: 3,
            limit: 6,
        });
        let m = mirror(
            vec![node("auto-1", "auto", true)],
            vec![
                pod("web-1", "600m", Some("auto-1"), json!({})),
                pod("web-2", "1500m", None, json!({})),
                pod("web-3", "1500m", None, json!({})),
            ],
        );
        let plan = plan_scale_up(&w, &m, &HashMap::new());
        assert_eq!((plan.grows[0].from, plan.grows[0].to), (1, 2), "{plan:?}");
        let left = plan
            .pending
            .iter()
            .find(|p| p.outcome == "no_pool")
            .unwrap();
        assert_eq!(
            left.reasons[0].reason, "quota: 5 vCPUs in use of 6",
            "{left:?}"
        );
    }

    #[test]
    fn a_pool_whose_machine_failed_is_held_for_the_backoff() {
        let c = cluster();
        let auto = pool(&c, "auto", 2, 1, 4);
        let mut failed = machine(&auto, "auto-2", MachineState::Failed);
        failed.last_error = Some("no address within 120 s".into());
        let now = failed.updated_at;
        let w = world(vec![auto.clone()], vec![failed.clone()]);
        let holds = w.holds(now + chrono::TimeDelta::seconds(30));
        let hold = &holds["auto"];
        assert!(
            hold.starts_with("backed off until ")
                && hold.contains("machine auto-2 failed to come up (no address within 120 s)"),
            "{hold}"
        );
        let later = now + chrono::TimeDelta::from_std(BACKOFF).unwrap();
        assert!(w.holds(later).is_empty());
    }

    #[test]
    fn an_idle_node_goes_after_the_unneeded_time_and_a_budget_keeps_another() {
        let c = cluster();
        let auto = pool(&c, "auto", 3, 1, 4);
        let machines = vec![
            machine(&auto, "auto-1", MachineState::Running),
            machine(&auto, "auto-2", MachineState::Running),
            machine(&auto, "auto-3", MachineState::Running),
        ];
        let mut w = world(vec![auto], machines.clone());
        w.settings.scale_down_unneeded = Duration::from_secs(10);
        let mut m = mirror(
            vec![
                node("auto-1", "auto", true),
                node("auto-2", "auto", true),
                node("auto-3", "auto", true),
            ],
            vec![
                pod("web-1", "600m", Some("auto-1"), json!({})),
                pod("guarded", "100m", Some("auto-2"), json!({})),
            ],
        );
        m.pdb_event(WatchEvent::Apply(
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"selector": {"matchLabels": {"app": "web"}}},
                "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1,
                           "expectedPods": 1}
            }))
            .unwrap(),
        ));
        let mut tracker = UnneededTracker::default();
        let t0 = Utc::now();
        let plan = plan_scale_down(&w, &m, &mut tracker, t0, None);
        assert!(plan.removals.is_empty(), "too soon: {plan:?}");
        let plan = plan_scale_down(
            &w,
            &m,
            &mut tracker,
            t0 + chrono::TimeDelta::seconds(11),
            None,
        );
        let removed: Vec<&str> = plan.removals.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(removed, ["auto-3"], "{plan:?}");
        assert_eq!(plan.removals[0].from, 3);
        assert_eq!(plan.removals[0].machine_id, machines[2].id);
        let note = &plan.notes["auto"];
        assert!(
            note.contains("auto-2") && note.contains("default/guarded"),
            "{note}"
        );
        // A pool with a node on its way (a tenant asked for 4) keeps its
        // idle ones until that node is Ready.
        let mut grown = w.clone();
        grown.pools[0].size = 4;
        let mut tracker = UnneededTracker::default();
        plan_scale_down(&grown, &m, &mut tracker, t0, None);
        let plan = plan_scale_down(
            &grown,
            &m,
            &mut tracker,
            t0 + chrono::TimeDelta::seconds(11),
            None,
        );
        assert!(plan.removals.is_empty(), "{plan:?}");
        assert_eq!(
            plan.notes["auto"],
            "scale-down waits: 1 node(s) of the pool are on their way"
        );
        // Within the cool-down after a scale-up nothing goes.
        let mut tracker = UnneededTracker::default();
        plan_scale_down(&w, &m, &mut tracker, t0, Some(t0));
        let plan = plan_scale_down(
            &w,
            &m,
            &mut tracker,
            t0 + chrono::TimeDelta::seconds(5),
            Some(t0),
        );
        assert!(plan.removals.is_empty(), "{plan:?}");
    }
}
