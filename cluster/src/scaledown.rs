//! Which nodes of autoscaling pools the autoscaler removes, pure (issue
//! 10): a node that has been little used for long enough, whose pods may
//! all be evicted and all fit elsewhere, goes, never taking its pool below
//! its min.
//!
//! The rules are cluster-autoscaler's. A node's utilization is the larger
//! of its CPU and memory requests over its allocatable, counting only the
//! pods that would have to move: DaemonSet pods and static pods' mirrors
//! do not count (cluster-autoscaler's rule with its
//! `--ignore-daemonsets-utilization` and `--ignore-mirror-pods-utilization`
//! on; those pods would come back on any node, or cannot be evicted at
//! all, so they say nothing about the need for this node). Below the
//! threshold (0.5 by default) the node is a candidate. A candidate is
//! unneeded when none of its pods blocks a drain ([`blockers`]) and every
//! pod that must move fits ([`crate::simulate::fits`]) on some node that
//! stays, each placement counted before the next. Unneeded nodes are
//! found together: a node found unneeded is taken out of the cluster in
//! the simulation and its pods placed before the next candidate is looked
//! at, so the set holds as a whole. A node unneeded for long enough
//! ([`UnneededTracker`]) is removed; empty ones (nothing to move) several
//! at a time, others one per round and re-simulated exactly against the
//! nodes that stay; none while the cluster cools down after a scale-up.
//!
//! The engine passes the pods it reads without those that have finished
//! (Succeeded or Failed: they hold nothing) and leaves cordoned nodes out
//! of `others`, since no pod may move there.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::simulate::{fits, ExistingNode, LabelSelector, NodeShape, NodeState, PodShape};

/// The annotation with which a pod says whether the autoscaler may evict
/// it to remove its node.
pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";

/// What the [`SAFE_TO_EVICT`] annotation says: `"true"` or `"false"`
/// exactly; anything else, or no annotation, says nothing.
pub fn safe_to_evict(annotations: &BTreeMap<String, String>) -> Option<bool> {
    match annotations.get(SAFE_TO_EVICT).map(String::as_str) {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    }
}

/// The kind of a pod's controlling owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Controller {
    ReplicaSet,
    ReplicationController,
    StatefulSet,
    Job,
    DaemonSet,
    /// Another kind (a custom controller): it may not recreate the pod
    /// elsewhere.
    Other(String),
    /// No controller: an evicted pod is gone for good.
    None,
}

/// A pod on a node of an autoscaling pool.
#[derive(Debug, Clone)]
pub struct PodOnNode {
    /// `namespace/name`.
    pub name: String,
    /// What it asks of a node (request, constraints), its namespace and
    /// labels.
    pub shape: PodShape,
    pub controller: Controller,
    /// A static pod's mirror.
    pub mirror: bool,
    /// [`safe_to_evict`] of its annotations.
    pub safe_to_evict: Option<bool>,
    /// It has an emptyDir or hostPath volume.
    pub local_storage: bool,
}

impl PodOnNode {
    /// A pod that must find another node before this one goes: all but
    /// DaemonSet pods and mirrors.
    pub fn must_move(&self) -> bool {
        self.controller != Controller::DaemonSet && !self.mirror
    }
}

/// A PodDisruptionBudget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdb {
    pub namespace: String,
    pub name: String,
    pub selector: LabelSelector,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: u32,
}

impl Pdb {
    fn selects(&self, pod: &PodShape) -> bool {
        self.namespace == pod.namespace && self.selector.matches(&pod.labels)
    }
}

/// A node of an autoscaling pool, with every pod bound to it.
#[derive(Debug, Clone)]
pub struct PoolNode {
    pub name: String,
    pub pool: String,
    pub shape: NodeShape,
    pub pods: Vec<PodOnNode>,
}

/// An autoscaling pool's size now and its floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolBounds {
    pub pool: String,
    pub size: u32,
    pub min: u32,
}

/// Everything one scale-down round looks at.
#[derive(Debug, Clone, Copy)]
pub struct ScaleDownInput<'a> {
    pub pools: &'a [PoolBounds],
    pub nodes: &'a [PoolNode],
    /// Every other node pods may move to, with what is on it.
    pub others: &'a [ExistingNode],
    pub pdbs: &'a [Pdb],
    pub now: DateTime<Utc>,
    /// When the cluster last grew, if it has.
    pub last_scale_up: Option<DateTime<Utc>>,
}

/// The knobs of scale-down, with cluster-autoscaler's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleDownSettings {
    /// A node below this utilization is a candidate (0.5).
    pub utilization_threshold: f64,
    /// How long a node stays unneeded before it goes (10 minutes).
    pub unneeded_for: TimeDelta,
    /// No scale-down this long after a scale-up (10 minutes).
    pub delay_after_scale_up: TimeDelta,
    /// Empty nodes removed in one round at most (10).
    pub max_empty_per_round: usize,
}

impl Default for ScaleDownSettings {
    fn default() -> Self {
        ScaleDownSettings {
            utilization_threshold: 0.5,
            unneeded_for: TimeDelta::minutes(10),
            delay_after_scale_up: TimeDelta::minutes(10),
            max_empty_per_round: 10,
        }
    }
}

/// What the round made of one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// At or above the utilization threshold.
    Busy,
    /// Its pool is not among the autoscaling pools given.
    NotAutoscaled,
    /// Pods that may not be evicted, each with why.
    Blocked(Vec<(String, String)>),
    /// Pods no node that stays can take.
    NoRoom(Vec<String>),
    /// Could go; unneeded since then, waiting for its time or its turn.
    Unneeded { since: DateTime<Utc> },
    /// Due, but its pool is at its min.
    PoolAtMin { min: u32 },
    /// Removed in this round.
    Remove,
}

/// One node of an autoscaling pool and what the round made of it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    pub name: String,
    pub pool: String,
    pub utilization: f64,
    /// Only DaemonSet pods and mirrors on it.
    pub empty: bool,
    pub verdict: Verdict,
}

/// A node to remove now, and where its pods are expected to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub node: String,
    pub pool: String,
    pub empty: bool,
    /// (pod, the node it fits on).
    pub moves: Vec<(String, String)>,
}

/// What one scale-down round decided.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleDown {
    /// One per node of `nodes`, in its order.
    pub nodes: Vec<NodeReport>,
    pub remove: Vec<Removal>,
    /// Set while the cluster cools down after a scale-up: nothing is
    /// removed before then (unneeded nodes are still tracked).
    pub cooling_down_until: Option<DateTime<Utc>>,
}

/// Since when each node has been unneeded, kept between rounds by the
/// engine (it serializes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnneededTracker {
    since: BTreeMap<String, DateTime<Utc>>,
}

impl UnneededTracker {
    /// This round's unneeded nodes at `now`: new ones start their clock,
    /// those still unneeded keep theirs, the others leave.
    pub fn update<S: AsRef<str>>(
        &mut self,
        now: DateTime<Utc>,
        unneeded: impl IntoIterator<Item = S>,
    ) {
        let names: BTreeSet<String> = unneeded
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .collect();
        self.since.retain(|name, _| names.contains(name));
        for name in names {
            self.since.entry(name).or_insert(now);
        }
    }

    /// Since when `node` has been unneeded.
    pub fn since(&self, node: &str) -> Option<DateTime<Utc>> {
        self.since.get(node).copied()
    }

    /// The nodes unneeded for at least `unneeded_for` at `now`.
    pub fn due(&self, now: DateTime<Utc>, unneeded_for: TimeDelta) -> BTreeSet<String> {
        self.since
            .iter()
            .filter(|(_, since)| now - **since >= unneeded_for)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Until when scale-down waits after the cluster's last scale-up; None
/// when it may go ahead.
pub fn cooling_down_until(
    now: DateTime<Utc>,
    last_scale_up: Option<DateTime<Utc>>,
    delay: TimeDelta,
) -> Option<DateTime<Utc>> {
    last_scale_up
        .map(|at| at + delay)
        .filter(|until| *until > now)
}

/// The larger of CPU and memory requested over allocatable, counting the
/// pods that must move only (see the module's doc). A resource the node
/// has none of counts as full if anything requests it.
pub fn utilization(node: &PoolNode) -> f64 {
    let (cpu, memory) =
        node.pods
            .iter()
            .filter(|p| p.must_move())
            .fold((0u64, 0u64), |(c, m), p| {
                (
                    c.saturating_add(p.shape.request.cpu_millis),
                    m.saturating_add(p.shape.request.memory_bytes),
                )
            });
    let share = |used: u64, total: u64| match (used, total) {
        (0, _) => 0.0,
        (_, 0) => 1.0,
        (u, t) => u as f64 / t as f64,
    };
    share(cpu, node.shape.allocatable.cpu_millis)
        .max(share(memory, node.shape.allocatable.memory_bytes))
}

/// Why the pods of `node` that must move may not be evicted, pod by pod
/// (empty when none blocks): a PodDisruptionBudget that selects the pod
/// and has no disruption left (each pod of the node it selects uses one),
/// `safe-to-evict: "false"`, and, unless the pod says `safe-to-evict:
/// "true"`, a kube-system pod no budget selects, local storage, no
/// controller, or a controller of a kind that may not recreate it.
pub fn blockers(node: &PoolNode, pdbs: &[Pdb]) -> Vec<(String, String)> {
    let mut left: Vec<u32> = pdbs.iter().map(|p| p.disruptions_allowed).collect();
    let mut out = Vec::new();
    for pod in node.pods.iter().filter(|p| p.must_move()) {
        let mut why: Option<String> = None;
        let mut selected = false;
        for (i, pdb) in pdbs.iter().enumerate() {
            if pdb.selects(&pod.shape) {
                selected = true;
                if left[i] == 0 {
                    why.get_or_insert_with(|| {
                        format!(
                            "PDB {}/{} allows no more disruptions",
                            pdb.namespace, pdb.name
                        )
                    });
                } else {
                    left[i] -= 1;
                }
            }
        }
        let safe = pod.safe_to_evict == Some(true);
        let why = why.or_else(|| {
            if pod.safe_to_evict == Some(false) {
                Some(format!("annotated {SAFE_TO_EVICT}: false"))
            } else if safe {
                None
            } else if pod.shape.namespace == "kube-system" && !selected {
                Some("kube-system pod without a PDB".to_string())
            } else if pod.local_storage {
                Some("uses local storage (emptyDir or hostPath)".to_string())
            } else {
                match &pod.controller {
                    Controller::None => Some("no controller would recreate it".to_string()),
                    Controller::Other(kind) => Some(format!(
                        "owned by a {kind}, which the autoscaler does not rely on to recreate it"
                    )),
                    _ => None,
                }
            }
        });
        if let Some(why) = why {
            out.push((pod.name.clone(), why));
        }
    }
    out
}

/// A node pods may move to during the simulation.
struct Destination<'a> {
    name: &'a str,
    shape: &'a NodeShape,
    state: NodeState,
    removed: bool,
}

/// Places `pods` on the destinations in `order` that are not removed and
/// are not `from`, first fit, each placement counted before the next;
/// the moves, or the pods that fit nowhere. On failure the destinations
/// are left as they were.
fn relocate<'a>(
    pods: &[&'a PodOnNode],
    from: usize,
    order: &[usize],
    dests: &mut [Destination],
) -> Result<Vec<(&'a PodOnNode, usize)>, Vec<String>> {
    let mut saved: Vec<(usize, NodeState)> = Vec::new();
    let mut moves = Vec::new();
    let mut stuck = Vec::new();
    for pod in pods {
        let target = order.iter().copied().find(|&d| {
            d != from
                && !dests[d].removed
                && fits(&pod.shape, dests[d].shape, &dests[d].state).is_ok()
        });
        match target {
            Some(d) => {
                if !saved.iter().any(|(i, _)| *i == d) {
                    saved.push((d, dests[d].state.clone()));
                }
                dests[d].state.place(&pod.shape, 1);
                moves.push((*pod, d));
            }
            None => stuck.push(pod.name.clone()),
        }
    }
    if stuck.is_empty() {
        Ok(moves)
    } else {
        for (d, state) in saved {
            dests[d].state = state;
        }
        Err(stuck)
    }
}

/// One scale-down round: reports every node of `input.nodes`, updates
/// `tracker` with the nodes found unneeded, and picks the removals
/// (see the module's doc for the rules).
pub fn scale_down(
    input: &ScaleDownInput,
    tracker: &mut UnneededTracker,
    settings: &ScaleDownSettings,
) -> ScaleDown {
    let n = input.nodes.len();
    let fresh_dests = || -> Vec<Destination> {
        input
            .nodes
            .iter()
            .map(|node| {
                let mut state = NodeState::default();
                for pod in &node.pods {
                    state.place(&pod.shape, 1);
                }
                Destination {
                    name: &node.name,
                    shape: &node.shape,
                    state,
                    removed: false,
                }
            })
            .chain(input.others.iter().map(|o| Destination {
                name: &o.name,
                shape: &o.shape,
                state: o.state.clone(),
                removed: false,
            }))
            .collect()
    };
    let bounds: BTreeMap<&str, &PoolBounds> =
        input.pools.iter().map(|b| (b.pool.as_str(), b)).collect();
    let mut reports: Vec<NodeReport> = input
        .nodes
        .iter()
        .map(|node| NodeReport {
            name: node.name.clone(),
            pool: node.pool.clone(),
            utilization: utilization(node),
            empty: !node.pods.iter().any(PodOnNode::must_move),
            verdict: Verdict::Busy,
        })
        .collect();
    let mut candidates: Vec<usize> = Vec::new();
    for (i, r) in reports.iter_mut().enumerate() {
        if !bounds.contains_key(r.pool.as_str()) {
            r.verdict = Verdict::NotAutoscaled;
        } else if r.utilization < settings.utilization_threshold {
            candidates.push(i);
        }
    }
    // Empty nodes first, then the least used; ties by name.
    let key = |i: &usize| {
        (
            !reports[*i].empty,
            reports[*i].utilization,
            &reports[*i].name,
        )
    };
    candidates.sort_by(|a, b| {
        let (ea, ua, na) = key(a);
        let (eb, ub, nb) = key(b);
        ea.cmp(&eb).then(ua.total_cmp(&ub)).then(na.cmp(nb))
    });
    // Pods go to nodes that are no candidate first, then to the fullest
    // candidates, so the emptiest stay easy to remove.
    let mut order: Vec<usize> = (0..n + input.others.len())
        .filter(|d| !candidates.contains(d))
        .collect();
    order.extend(candidates.iter().rev());

    let mut dests = fresh_dests();
    let mut movers: Vec<Vec<&PodOnNode>> = input
        .nodes
        .iter()
        .map(|node| node.pods.iter().filter(|p| p.must_move()).collect())
        .collect();
    let mut unneeded: Vec<usize> = Vec::new();
    for &c in &candidates {
        let blocked = blockers(&input.nodes[c], input.pdbs);
        if !blocked.is_empty() {
            reports[c].verdict = Verdict::Blocked(blocked);
            continue;
        }
        let pods = std::mem::take(&mut movers[c]);
        match relocate(&pods, c, &order, &mut dests) {
            Ok(moves) => {
                dests[c].removed = true;
                for (pod, d) in moves {
                    if d < n {
                        movers[d].push(pod);
                    }
                }
                unneeded.push(c);
            }
            Err(stuck) => {
                movers[c] = pods;
                reports[c].verdict = Verdict::NoRoom(stuck);
            }
        }
    }

    tracker.update(input.now, unneeded.iter().map(|&c| &input.nodes[c].name));
    let due = tracker.due(input.now, settings.unneeded_for);
    for &c in &unneeded {
        reports[c].verdict = Verdict::Unneeded {
            since: tracker.since(&input.nodes[c].name).unwrap_or(input.now),
        };
    }
    let cooling = cooling_down_until(
        input.now,
        input.last_scale_up,
        settings.delay_after_scale_up,
    );
    let mut out = ScaleDown {
        nodes: Vec::new(),
        remove: Vec::new(),
        cooling_down_until: cooling,
    };
    if cooling.is_some() {
        out.nodes = reports;
        return out;
    }

    let mut may_remove: BTreeMap<&str, u32> = input
        .pools
        .iter()
        .map(|b| (b.pool.as_str(), b.size.saturating_sub(b.min)))
        .collect();
    let mut dests = fresh_dests();
    let mut empties = 0;
    let mut drained = false;
    for &c in unneeded
        .iter()
        .filter(|&&c| due.contains(&input.nodes[c].name))
    {
        let node = &input.nodes[c];
        let empty = reports[c].empty;
        if (empty && empties == settings.max_empty_per_round) || (!empty && drained) {
            continue;
        }
        let room = may_remove.get_mut(node.pool.as_str());
        let Some(room) = room.filter(|r| **r > 0) else {
            reports[c].verdict = Verdict::PoolAtMin {
                min: bounds[node.pool.as_str()].min,
            };
            continue;
        };
        // Exactly against the nodes that stay: the empties chosen already
        // and this node are gone, nothing else moved.
        let pods: Vec<&PodOnNode> = node.pods.iter().filter(|p| p.must_move()).collect();
        let Ok(moves) = relocate(&pods, c, &order, &mut dests) else {
            continue;
        };
        *room -= 1;
        dests[c].removed = true;
        if empty {
            empties += 1;
        } else {
            drained = true;
        }
        reports[c].verdict = Verdict::Remove;
        out.remove.push(Removal {
            node: node.name.clone(),
            pool: node.pool.clone(),
            empty,
            moves: moves
                .into_iter()
                .map(|(p, d)| (p.name.clone(), dests[d].name.to_string()))
                .collect(),
        });
    }
    out.nodes = reports;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{pod_request, AntiAffinityTerm, Resources, TermNamespaces};

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn node_shape(cpu: u64, mem: u64) -> NodeShape {
        NodeShape {
            allocatable: Resources {
                cpu_millis: cpu,
                memory_bytes: mem,
                ephemeral_bytes: 0,
                pods: 110,
                extended: BTreeMap::new(),
            },
            labels: BTreeMap::new(),
            taints: vec![],
        }
    }

    fn pod(name: &str, cpu: u64, mem: u64) -> PodOnNode {
        PodOnNode {
            name: format!("default/{name}"),
            shape: PodShape {
                request: pod_request(
                    &[Resources {
                        cpu_millis: cpu,
                        memory_bytes: mem,
                        ..Default::default()
                    }],
                    &[],
                    &Resources::default(),
                ),
                namespace: "default".into(),
                labels: BTreeMap::from([("app".into(), name.into())]),
                ..Default::default()
            },
            controller: Controller::ReplicaSet,
            mirror: false,
            safe_to_evict: None,
            local_storage: false,
        }
    }

    fn daemon(name: &str) -> PodOnNode {
        PodOnNode {
            controller: Controller::DaemonSet,
            ..pod(name, 500, 1 << 30)
        }
    }

    fn node(name: &str, pool: &str, pods: Vec<PodOnNode>) -> PoolNode {
        PoolNode {
            name: name.into(),
            pool: pool.into(),
            shape: node_shape(4000, 8 << 30),
            pods,
        }
    }

    fn other(name: &str, used_cpu: u64) -> ExistingNode {
        ExistingNode {
            name: name.into(),
            shape: node_shape(4000, 8 << 30),
            state: NodeState::with_used(Resources {
                cpu_millis: used_cpu,
                ..Default::default()
            }),
        }
    }

    fn bounds(pool: &str, size: u32, min: u32) -> PoolBounds {
        PoolBounds {
            pool: pool.into(),
            size,
            min,
        }
    }

    fn input<'a>(
        pools: &'a [PoolBounds],
        nodes: &'a [PoolNode],
        others: &'a [ExistingNode],
        pdbs: &'a [Pdb],
        now: DateTime<Utc>,
    ) -> ScaleDownInput<'a> {
        ScaleDownInput {
            pools,
            nodes,
            others,
            pdbs,
            now,
            last_scale_up: None,
        }
    }

    /// Runs the round at `t0` and again `unneeded_for` later.
    fn two_rounds(
        pools: &[PoolBounds],
        nodes: &[PoolNode],
        others: &[ExistingNode],
        pdbs: &[Pdb],
    ) -> (ScaleDown, ScaleDown) {
        let settings = ScaleDownSettings::default();
        let mut tracker = UnneededTracker::default();
        let first = scale_down(
            &input(pools, nodes, others, pdbs, t0()),
            &mut tracker,
            &settings,
        );
        let later = t0() + settings.unneeded_for;
        let second = scale_down(
            &input(pools, nodes, others, pdbs, later),
            &mut tracker,
            &settings,
        );
        (first, second)
    }

    fn removed(plan: &ScaleDown) -> Vec<&str> {
        plan.remove.iter().map(|r| r.node.as_str()).collect()
    }

    #[test]
    fn utilization_counts_only_pods_that_must_move() {
        let mut mirror = pod("static", 1000, 0);
        mirror.mirror = true;
        let n = node(
            "n1",
            "p",
            vec![pod("web", 1000, 6 << 30), daemon("ds"), mirror],
        );
        // CPU 1/4, memory 6/8: the larger counts.
        assert_eq!(utilization(&n), 0.75);
        assert_eq!(utilization(&node("n2", "p", vec![daemon("ds")])), 0.0);
    }

    #[test]
    fn blockers_are_worded_pod_by_pod() {
        let with = |f: &dyn Fn(&mut PodOnNode)| {
            let mut p = pod("x", 100, 1);
            f(&mut p);
            blockers(&node("n", "p", vec![p]), &[])
                .first()
                .map(|(_, why)| why.clone())
        };
        assert_eq!(with(&|_| {}), None);
        assert_eq!(
            with(&|p| p.safe_to_evict = Some(false)).unwrap(),
            "annotated cluster-autoscaler.kubernetes.io/safe-to-evict: false"
        );
        assert_eq!(
            with(&|p| p.local_storage = true).unwrap(),
            "uses local storage (emptyDir or hostPath)"
        );
        assert_eq!(
            with(&|p| p.controller = Controller::None).unwrap(),
            "no controller would recreate it"
        );
        assert_eq!(
            with(&|p| p.controller = Controller::Other("Rollout".into())).unwrap(),
            "owned by a Rollout, which the autoscaler does not rely on to recreate it"
        );
        assert_eq!(
            with(&|p| p.shape.namespace = "kube-system".into()).unwrap(),
            "kube-system pod without a PDB"
        );
        // safe-to-evict "true" lifts all of those.
        assert_eq!(
            with(&|p| {
                p.safe_to_evict = Some(true);
                p.local_storage = true;
                p.controller = Controller::None;
                p.shape.namespace = "kube-system".into();
            }),
            None
        );
        // DaemonSet pods and mirrors never block: they do not move.
        assert_eq!(
            with(&|p| {
                p.controller = Controller::DaemonSet;
                p.local_storage = true;
            }),
            None
        );
        assert_eq!(
            safe_to_evict(&BTreeMap::from([(SAFE_TO_EVICT.into(), "true".into())])),
            Some(true)
        );
        assert_eq!(
            safe_to_evict(&BTreeMap::from([(SAFE_TO_EVICT.into(), "yes".into())])),
            None
        );
    }

    #[test]
    fn a_budget_blocks_once_its_disruptions_are_used_even_when_safe_to_evict() {
        let pdb = |allowed| Pdb {
            namespace: "default".into(),
            name: "web".into(),
            selector: LabelSelector {
                match_labels: BTreeMap::from([("app".into(), "web".into())]),
                match_expressions: vec![],
            },
            disruptions_allowed: allowed,
        };
        let mut a = pod("web", 100, 1);
        a.name = "default/web-a".into();
        a.safe_to_evict = Some(true);
        let mut b = pod("web", 100, 1);
        b.name = "default/web-b".into();
        let n = node("n", "p", vec![a, b]);
        assert_eq!(blockers(&n, &[pdb(2)]), []);
        assert_eq!(
            blockers(&n, &[pdb(1)]),
            [(
                "default/web-b".to_string(),
                "PDB default/web allows no more disruptions".to_string()
            )]
        );
        assert_eq!(blockers(&n, &[pdb(0)]).len(), 2);
        // A kube-system pod with a budget that allows it may go.
        let mut dns = pod("web", 100, 1);
        dns.shape.namespace = "kube-system".into();
        let mut p = pdb(1);
        p.namespace = "kube-system".into();
        assert_eq!(blockers(&node("n", "p", vec![dns]), &[p]), []);
    }

    #[test]
    fn unneeded_nodes_go_after_their_time_empty_ones_together_others_one_per_round() {
        let nodes = [
            node("e1", "p", vec![daemon("ds1")]),
            node("e2", "p", vec![daemon("ds2")]),
            node("h1", "p", vec![pod("a", 500, 1 << 30)]),
            node("h2", "p", vec![pod("b", 600, 1 << 30)]),
            node("busy", "p", vec![pod("c", 3000, 1 << 30)]),
        ];
        let pools = [bounds("p", 5, 0)];
        let others = [other("o1", 0)];
        let (first, second) = two_rounds(&pools, &nodes, &others, &[]);
        assert!(first.remove.is_empty());
        let since = Verdict::Unneeded { since: t0() };
        assert_eq!(first.nodes[0].verdict, since);
        assert_eq!(first.nodes[2].verdict, since);
        assert_eq!(first.nodes[4].verdict, Verdict::Busy);
        assert_eq!(removed(&second), ["e1", "e2", "h1"]);
        // Onto a node that is no candidate, first fit.
        assert_eq!(
            second.remove[2].moves,
            [("default/a".to_string(), "busy".to_string())]
        );
        assert_eq!(second.nodes[3].verdict, since);
        assert!(second.remove[0].empty && !second.remove[2].empty);
    }

    #[test]
    fn never_below_the_pools_min() {
        let nodes = [
            node("e1", "p", vec![daemon("ds1")]),
            node("e2", "p", vec![daemon("ds2")]),
            node("e3", "p", vec![]),
        ];
        let pools = [bounds("p", 3, 2)];
        let (_, second) = two_rounds(&pools, &nodes, &[], &[]);
        assert_eq!(removed(&second), ["e1"]);
        assert_eq!(second.nodes[1].verdict, Verdict::PoolAtMin { min: 2 });
        assert_eq!(second.nodes[2].verdict, Verdict::PoolAtMin { min: 2 });
    }

    #[test]
    fn pods_must_fit_on_nodes_that_stay_counted_together() {
        // Two half-used nodes; the only other node has room for one's pods.
        let nodes = [
            node("h1", "p", vec![pod("a", 1500, 1 << 30)]),
            node("h2", "p", vec![pod("b", 1500, 1 << 30)]),
            node("busy", "p", vec![pod("c", 3900, 1 << 30)]),
        ];
        let pools = [bounds("p", 3, 0)];
        let others = [other("o1", 2000)];
        let (first, _) = two_rounds(&pools, &nodes, &others, &[]);
        // h1 goes first (name order at equal use); h1's pod then fills o1,
        // and h2's pod has nowhere to go.
        assert!(matches!(first.nodes[0].verdict, Verdict::Unneeded { .. }));
        assert_eq!(
            first.nodes[1].verdict,
            Verdict::NoRoom(vec!["default/b".into()])
        );
    }

    #[test]
    fn a_blocked_pod_keeps_its_node_and_says_why() {
        let mut bare = pod("bare", 100, 1);
        bare.controller = Controller::None;
        let nodes = [node("n1", "p", vec![bare])];
        let (_, second) = two_rounds(&[bounds("p", 1, 0)], &nodes, &[other("o1", 0)], &[]);
        assert!(second.remove.is_empty());
        assert_eq!(
            second.nodes[0].verdict,
            Verdict::Blocked(vec![(
                "default/bare".into(),
                "no controller would recreate it".into()
            )])
        );
    }

    #[test]
    fn moves_respect_anti_affinity() {
        let mut cache = pod("cache", 100, 1);
        cache.shape.anti_affinity.push(AntiAffinityTerm {
            selector: LabelSelector {
                match_labels: BTreeMap::from([("app".into(), "cache".into())]),
                match_expressions: vec![],
            },
            namespaces: TermNamespaces::Own,
        });
        let mut other_cache = cache.clone();
        other_cache.name = "default/cache-2".into();
        // The only other node runs a copy already: nowhere to go.
        let nodes = [
            node("n1", "p", vec![cache]),
            node("n2", "p", vec![other_cache, pod("big", 2500, 1)]),
        ];
        let (first, _) = two_rounds(&[bounds("p", 2, 0)], &nodes, &[], &[]);
        assert_eq!(
            first.nodes[0].verdict,
            Verdict::NoRoom(vec!["default/cache".into()])
        );
    }

    #[test]
    fn no_scale_down_while_cooling_down_after_a_scale_up() {
        let nodes = [node("e1", "p", vec![])];
        let pools = [bounds("p", 1, 0)];
        let settings = ScaleDownSettings::default();
        let mut tracker = UnneededTracker::default();
        tracker.update(t0(), ["e1"]);
        let now = t0() + TimeDelta::minutes(30);
        let mut i = input(&pools, &nodes, &[], &[], now);
        i.last_scale_up = Some(now - TimeDelta::minutes(4));
        let plan = scale_down(&i, &mut tracker, &settings);
        assert!(plan.remove.is_empty());
        assert_eq!(plan.cooling_down_until, Some(now + TimeDelta::minutes(6)));
        // Still tracked from before.
        assert_eq!(tracker.since("e1"), Some(t0()));
        i.last_scale_up = Some(now - TimeDelta::minutes(10));
        assert_eq!(removed(&scale_down(&i, &mut tracker, &settings)), ["e1"]);
    }

    #[test]
    fn the_tracker_keeps_the_first_time_and_forgets_nodes_that_are_needed_again() {
        let mut t = UnneededTracker::default();
        t.update(t0(), ["a", "b"]);
        t.update(t0() + TimeDelta::minutes(5), ["a", "c"]);
        assert_eq!(t.since("a"), Some(t0()));
        assert_eq!(t.since("b"), None);
        let now = t0() + TimeDelta::minutes(10);
        assert_eq!(
            t.due(now, TimeDelta::minutes(10)),
            BTreeSet::from(["a".to_string()])
        );
        assert_eq!(t.due(now, TimeDelta::minutes(5)).len(), 2);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<UnneededTracker>(&json).unwrap(), t);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// A pod: CPU, app (a or b), 0 ReplicaSet / 1 DaemonSet / 2 none,
        /// local storage, safe-to-evict (0 unset, 1 true, 2 false).
        type Pod = (u64, bool, u8, bool, u8);

        fn pods() -> impl Strategy<Value = Vec<Pod>> {
            prop::collection::vec(
                (
                    100u64..2500,
                    any::<bool>(),
                    0u8..3,
                    prop::bool::weighted(0.15),
                    0u8..3,
                ),
                0..4,
            )
        }

        fn make(node: usize, i: usize, (cpu, app_a, owner, local, safe): Pod) -> PodOnNode {
            let app = if app_a { "a" } else { "b" };
            let mut p = pod(app, cpu, 1 << 28);
            p.name = format!("default/{app}-{node}-{i}");
            p.controller = match owner {
                0 => Controller::ReplicaSet,
                1 => Controller::DaemonSet,
                _ => Controller::None,
            };
            p.local_storage = local;
            p.safe_to_evict = [None, Some(true), Some(false)][safe as usize];
            p
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn never_below_min_never_a_blocked_pod_and_every_move_fits(
                nodes in prop::collection::vec((any::<bool>(), pods()), 1..7),
                mins in (0u32..4, 0u32..4),
                pdbs in prop::collection::vec((any::<bool>(), 0u32..2), 0..3),
                others in prop::collection::vec(0u64..4000, 0..3),
            ) {
                let nodes: Vec<PoolNode> = nodes
                    .into_iter()
                    .enumerate()
                    .map(|(n, (in_p, pods))| {
                        node(
                            &format!("n{n}"),
                            if in_p { "p" } else { "q" },
                            pods.into_iter().enumerate().map(|(i, p)| make(n, i, p)).collect(),
                        )
                    })
                    .collect();
                let size = |pool: &str| nodes.iter().filter(|n| n.pool == pool).count() as u32;
                let pools = [bounds("p", size("p"), mins.0), bounds("q", size("q"), mins.1)];
                let pdbs: Vec<Pdb> = pdbs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (a, allowed))| Pdb {
                        namespace: "default".into(),
                        name: format!("pdb{i}"),
                        selector: LabelSelector {
                            match_labels: BTreeMap::from([(
                                "app".into(),
                                if a { "a" } else { "b" }.into(),
                            )]),
                            match_expressions: vec![],
                        },
                        disruptions_allowed: allowed,
                    })
                    .collect();
                let others: Vec<ExistingNode> = others
                    .iter()
                    .enumerate()
                    .map(|(i, used)| other(&format!("o{i}"), *used))
                    .collect();
                let (_, plan) = two_rounds(&pools, &nodes, &others, &pdbs);

                for b in &pools {
                    let gone = plan.remove.iter().filter(|r| r.pool == b.pool).count() as u32;
                    prop_assert!(gone <= b.size.saturating_sub(b.min));
                }
                prop_assert!(plan.remove.iter().filter(|r| !r.empty).count() <= 1);
                let gone: BTreeSet<&str> = plan.remove.iter().map(|r| r.node.as_str()).collect();
                for n in nodes.iter().filter(|n| gone.contains(n.name.as_str())) {
                    for p in n.pods.iter().filter(|p| p.must_move()) {
                        let evictable = p.safe_to_evict != Some(false)
                            && (p.safe_to_evict == Some(true)
                                || (!p.local_storage && p.controller != Controller::None))
                            && !pdbs.iter().any(|b| b.disruptions_allowed == 0 && b.selects(&p.shape));
                        prop_assert!(evictable, "{} removed with {}", n.name, p.name);
                    }
                }

                // Every pod that must move has one move, to a node that
                // stays, and fits there with the moves before it.
                let mut states: BTreeMap<&str, (&NodeShape, NodeState)> = BTreeMap::new();
                for n in nodes.iter().filter(|n| !gone.contains(n.name.as_str())) {
                    let mut st = NodeState::default();
                    for p in &n.pods {
                        st.place(&p.shape, 1);
                    }
                    states.insert(&n.name, (&n.shape, st));
                }
                for o in &others {
                    states.insert(&o.name, (&o.shape, o.state.clone()));
                }
                for r in &plan.remove {
                    let n = nodes.iter().find(|n| n.name == r.node).unwrap();
                    let movers: Vec<&PodOnNode> = n.pods.iter().filter(|p| p.must_move()).collect();
                    prop_assert_eq!(movers.len(), r.moves.len());
                    prop_assert_eq!(r.empty, movers.is_empty());
                    for (p, (name, to)) in movers.iter().zip(&r.moves) {
                        prop_assert_eq!(&p.name, name);
                        let (shape, st) = states.get_mut(to.as_str()).expect("moves go to nodes that stay");
                        prop_assert_eq!(fits(&p.shape, shape, st), Ok(()));
                        st.place(&p.shape, 1);
                    }
                }
            }
        }
    }
}
