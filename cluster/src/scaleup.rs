//! One scale-up decision of the autoscaler, pure (issue 10): where the
//! pending pods go, which pools grow and by how many nodes, and for every
//! pod that stays pending why each pool cannot take it.
//!
//! The round runs as cluster-autoscaler's does, with two differences that
//! the design notes ask for. Pending pods go first onto the free room of
//! nodes that exist (the scheduler will place them; no node is needed).
//! The rest are packed, first fit in class order, onto new copies of each
//! pool's template node, and the expander picks one pool; then, unlike
//! cluster-autoscaler (one pool per loop), the round repeats on the pods
//! still left, so GPU pods and web pods both get their nodes in one
//! decision. Pods whose copies exclude each other (host ports, or
//! anti-affinity against their own labels) go one per node, all in the
//! same decision rather than one node per loop.
//!
//! Guarantees, each checked by tests: no pool grows past its max, the
//! whole decision adds no more than the quota headroom nor the
//! per-decision cap, every pod placed fits where it was placed (with the
//! pods placed before it), every pending pod gets exactly one outcome, and
//! a pod left pending is explained pool by pool: the misfit against the
//! pool's template, the caller's reason for leaving the pool out, or the
//! limit that stopped the pool.

use std::cmp::Ordering;
use std::iter;
use std::sync::Arc;

use crate::simulate::{
    fits, fits_beside, fits_node, EquivalenceClass, ExistingNode, NodeShape, NodeState, PodShape,
    Resident, Resources,
};

/// How the decision picks among pools that could take pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Expander {
    /// The pool whose new nodes leave the smallest share of their CPU and
    /// memory unrequested; ties to the pool placing more pods, then the
    /// name. Cluster-autoscaler's default.
    #[default]
    LeastWaste,
    /// The pool placing the most pods; ties to least waste, then the name.
    MostPods,
    /// The pool with the highest priority; ties to least waste, then more
    /// pods, then the name.
    Priority,
}

/// A pool the decision may grow.
#[derive(Debug, Clone)]
pub struct PoolOption {
    pub pool: String,
    /// A new node of the pool ([`crate::simulate::template_node`]): a pool
    /// at size zero has one too, which is what makes scale-from-zero work.
    pub template: NodeShape,
    /// Its target size now.
    pub size: u32,
    pub max: u32,
    /// For [`Expander::Priority`]: higher wins.
    pub priority: i32,
    /// vCPUs one new node of the pool counts against the tenant's vCPU
    /// quota (its machine type's).
    pub vcpus: u32,
    /// Why the caller leaves the pool out of this decision (backed off
    /// after its machines failed to come up, ...); pods it alone could
    /// take are explained with this.
    pub excluded: Option<String>,
}

impl PoolOption {
    /// Nodes the pool may still add under its max.
    pub fn room(&self) -> u32 {
        self.max.saturating_sub(self.size)
    }
}

/// A tenant quota, in nodes or in vCPUs: the decision adds at most
/// `limit - in_use`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub in_use: u32,
    pub limit: u32,
}

/// What bounds and steers a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleUpSettings {
    pub expander: Expander,
    /// The tenant's node quota; None: no quota.
    pub quota: Option<Quota>,
    /// The tenant's vCPU quota (each new node weighs its pool's
    /// [`PoolOption::vcpus`]); None: no quota.
    pub cpu_quota: Option<Quota>,
    /// Nodes one decision may add across all pools.
    pub max_nodes_per_scale_up: u32,
}

/// Cluster-autoscaler's `--max-nodes-per-scaleup`.
pub const DEFAULT_MAX_NODES_PER_SCALE_UP: u32 = 1000;

impl Default for ScaleUpSettings {
    fn default() -> Self {
        ScaleUpSettings {
            expander: Expander::default(),
            quota: None,
            cpu_quota: None,
            max_nodes_per_scale_up: DEFAULT_MAX_NODES_PER_SCALE_UP,
        }
    }
}

/// One pool that grows.
#[derive(Debug, Clone, PartialEq)]
pub struct Growth {
    pub pool: String,
    /// Nodes to add.
    pub nodes: u32,
    /// Pending pods the new nodes take.
    pub pods: u64,
    /// The share of the new nodes' CPU plus that of their memory left
    /// unrequested (0 to 2).
    pub waste: f64,
    /// Per new node, the pods it takes: (index of the class in the
    /// decision's input, how many of its pods).
    pub packing: Vec<Vec<(usize, u64)>>,
}

/// Pods of a class that fit on a node that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnExisting {
    /// Index of the node in the decision's input.
    pub node: usize,
    pub name: String,
    pub pods: u64,
}

/// Why one pool does not take a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolReason {
    pub pool: String,
    /// `insufficient nvidia.com/gpu`, `at max size 4`,
    /// `quota: 10 nodes in use of 10`, the caller's exclusion reason, ...
    pub reason: String,
}

/// What became of the pods of one equivalence class, in this order: the
/// first pods of the class go to `existing`, the next to `new_nodes`, the
/// last `unplaced` stay pending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassOutcome {
    pub existing: Vec<OnExisting>,
    /// (pool, pods).
    pub new_nodes: Vec<(String, u64)>,
    pub unplaced: u64,
    /// Why each pool does not take the unplaced pods; empty when all are
    /// placed (or when no pool autoscales).
    pub reasons: Vec<PoolReason>,
}

/// What became of one pending pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodOutcome<'a> {
    /// It fits on this node now; the scheduler will place it.
    ExistingNode(&'a str),
    /// A new node of this pool is for it.
    NewNode(&'a str),
    /// Nothing takes it; why, pool by pool.
    NoPool(&'a [PoolReason]),
}

/// What one decision decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleUp {
    /// The pools that grow, in the order the expander chose them.
    pub grow: Vec<Growth>,
    /// One per class of the input, in its order.
    pub classes: Vec<ClassOutcome>,
}

impl ScaleUp {
    /// Nodes the decision adds, all pools together.
    pub fn nodes_added(&self) -> u32 {
        self.grow.iter().map(|g| g.nodes).sum()
    }

    /// Every pending pod (`namespace/name`) of `pending` (the decision's
    /// input) with its outcome.
    pub fn pods<'a>(
        &'a self,
        pending: &'a [EquivalenceClass],
    ) -> impl Iterator<Item = (&'a str, PodOutcome<'a>)> + 'a {
        pending.iter().zip(&self.classes).flat_map(|(class, o)| {
            let existing = o
                .existing
                .iter()
                .map(|e| (e.pods, PodOutcome::ExistingNode(&e.name)));
            let new = o
                .new_nodes
                .iter()
                .map(|(pool, n)| (*n, PodOutcome::NewNode(pool)));
            let none = iter::once((o.unplaced, PodOutcome::NoPool(&o.reasons)));
            class.pods.iter().map(String::as_str).zip(
                existing
                    .chain(new)
                    .chain(none)
                    .flat_map(|(n, outcome)| iter::repeat_n(outcome, n as usize)),
            )
        })
    }

    /// Pods that fit on nodes that exist.
    pub fn fit_existing<'a>(&'a self, pending: &'a [EquivalenceClass]) -> Vec<&'a str> {
        self.pods(pending)
            .filter(|(_, o)| matches!(o, PodOutcome::ExistingNode(_)))
            .map(|(p, _)| p)
            .collect()
    }

    /// Pods the new nodes take.
    pub fn on_new_nodes<'a>(&'a self, pending: &'a [EquivalenceClass]) -> Vec<&'a str> {
        self.pods(pending)
            .filter(|(_, o)| matches!(o, PodOutcome::NewNode(_)))
            .map(|(p, _)| p)
            .collect()
    }

    /// Pods nothing takes, each with its reasons in one line
    /// (`pool gpu: insufficient nvidia.com/gpu; pool default: ...`).
    pub fn unplaceable<'a>(&'a self, pending: &'a [EquivalenceClass]) -> Vec<(&'a str, String)> {
        self.pods(pending)
            .filter_map(|(p, o)| match o {
                PodOutcome::NoPool([]) => Some((p, "no pool has autoscaling".to_string())),
                PodOutcome::NoPool(reasons) => Some((
                    p,
                    reasons
                        .iter()
                        .map(|r| format!("pool {}: {}", r.pool, r.reason))
                        .collect::<Vec<_>>()
                        .join("; "),
                )),
                _ => None,
            })
            .collect()
    }
}

/// A class as the packing uses it: its shape, the [`Resident`] its pods
/// leave on a node (made once), and whether copies exclude each other.
struct Prepared<'a> {
    shape: &'a PodShape,
    resident: Arc<Resident>,
    one_per_node: bool,
}

impl Prepared<'_> {
    /// How many of `want` copies fit beside `state` (the node's labels and
    /// taints already checked).
    fn copies(&self, node: &NodeShape, state: &NodeState, want: u64) -> u64 {
        if want == 0 || fits_beside(self.shape, node, state).is_err() {
            0
        } else if self.one_per_node {
            1
        } else {
            self.shape
                .request
                .copies_in(&node.allocatable, state.used())
                .min(want)
        }
    }
}

/// One pool's packing of the pods left.
struct Packing {
    nodes: Vec<NodeState>,
    packing: Vec<Vec<(usize, u64)>>,
    per_class: Vec<u64>,
    placed: u64,
}

/// First fit, classes in `order`, onto at most `budget` new copies of
/// `template`; `admits[c]` says whether class `c` fits the template at
/// all. A node stays open while the smallest request among the classes
/// could still fit, so closed nodes cost nothing to later classes.
fn pack(
    classes: &[Prepared],
    order: &[usize],
    left: &[u64],
    admits: &[bool],
    template: &NodeShape,
    budget: u32,
) -> Packing {
    let mut smallest: Option<Resources> = None;
    for (c, p) in classes.iter().enumerate() {
        if admits[c] && left[c] > 0 {
            let r = &p.shape.request;
            smallest = Some(match smallest {
                None => Resources {
                    cpu_millis: r.cpu_millis,
                    memory_bytes: r.memory_bytes,
                    pods: r.pods,
                    ..Default::default()
                },
                Some(s) => Resources {
                    cpu_millis: s.cpu_millis.min(r.cpu_millis),
                    memory_bytes: s.memory_bytes.min(r.memory_bytes),
                    pods: s.pods.min(r.pods),
                    ..Default::default()
                },
            });
        }
    }
    let mut out = Packing {
        nodes: Vec::new(),
        packing: Vec::new(),
        per_class: vec![0; classes.len()],
        placed: 0,
    };
    let Some(smallest) = smallest else {
        return out;
    };
    let mut open: Vec<usize> = Vec::new();
    for &c in order {
        let p = &classes[c];
        if !admits[c] || left[c] == 0 {
            continue;
        }
        let mut want = left[c];
        let mut full = false;
        for &i in &open {
            let k = p.copies(template, &out.nodes[i], want);
            if k > 0 {
                out.nodes[i].place_shared(p.shape, &p.resident, k);
                out.packing[i].push((c, k));
                want -= k;
                full |= smallest.copies_in(&template.allocatable, out.nodes[i].used()) == 0;
                if want == 0 {
                    break;
                }
            }
        }
        while want > 0 && out.nodes.len() < budget as usize {
            let mut state = NodeState::default();
            let k = p.copies(template, &state, want);
            if k == 0 {
                break;
            }
            state.place_shared(p.shape, &p.resident, k);
            want -= k;
            if smallest.copies_in(&template.allocatable, state.used()) > 0 {
                open.push(out.nodes.len());
            }
            out.nodes.push(state);
            out.packing.push(vec![(c, k)]);
        }
        if full {
            open.retain(|&i| smallest.copies_in(&template.allocatable, out.nodes[i].used()) > 0);
        }
        out.per_class[c] = left[c] - want;
        out.placed += left[c] - want;
    }
    out
}

/// The share of the new nodes' CPU plus that of their memory left
/// unrequested (0 to 2): the least-waste expander's score.
fn waste(template: &NodeShape, nodes: &[NodeState]) -> f64 {
    let share = |used: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            1.0 - used as f64 / total as f64
        }
    };
    let n = nodes.len() as u64;
    let (cpu, memory) = nodes.iter().fold((0u64, 0u64), |(c, m), s| {
        (
            c.saturating_add(s.used().cpu_millis),
            m.saturating_add(s.used().memory_bytes),
        )
    });
    share(cpu, template.allocatable.cpu_millis.saturating_mul(n))
        + share(memory, template.allocatable.memory_bytes.saturating_mul(n))
}

/// A pool's offer in one round of the decision.
struct Offer {
    pool: usize,
    packing: Packing,
    waste: f64,
}

/// Whether `a` beats `b` under `expander` (`Less` when it does).
fn rank(expander: Expander, pools: &[PoolOption], a: &Offer, b: &Offer) -> Ordering {
    let waste = a.waste.total_cmp(&b.waste);
    let pods = b.packing.placed.cmp(&a.packing.placed);
    let name = pools[a.pool].pool.cmp(&pools[b.pool].pool);
    match expander {
        Expander::LeastWaste => waste.then(pods).then(name),
        Expander::MostPods => pods.then(waste).then(name),
        Expander::Priority => pools[b.pool]
            .priority
            .cmp(&pools[a.pool].priority)
            .then(waste)
            .then(pods)
            .then(name),
    }
}

/// One scale-up decision: `pending` (from [`crate::simulate::classes`];
/// classes whose copies go one per node are taken first, then the rest in
/// the given order) first onto `existing` nodes (their states are updated with the pods
/// placed, first fit in node order), then rounds of the expander over the
/// `pools` not excluded, each round packing the pods still left onto new
/// nodes of every pool within what it may still add (its max, the quota
/// headroom and the per-decision cap, less what earlier rounds added) and
/// keeping the best pool's packing, until no pool places a pod.
pub fn scale_up(
    pending: &[EquivalenceClass],
    existing: &mut [ExistingNode],
    pools: &[PoolOption],
    settings: &ScaleUpSettings,
) -> ScaleUp {
    let classes: Vec<Prepared> = pending
        .iter()
        .map(|c| Prepared {
            shape: &c.shape,
            resident: Arc::new(Resident::of(&c.shape)),
            one_per_node: c.shape.one_per_node(),
        })
        .collect();
    // Classes whose copies exclude each other decide how many nodes there
    // are; the others fill the gaps. Then the caller's order (largest
    // first, from `classes`).
    let mut order: Vec<usize> = (0..classes.len()).collect();
    order.sort_by_key(|&c| !classes[c].one_per_node);
    let mut left: Vec<u64> = pending.iter().map(|c| c.pods.len() as u64).collect();
    let mut out = ScaleUp {
        grow: Vec::new(),
        classes: vec![ClassOutcome::default(); pending.len()],
    };

    for &c in &order {
        let p = &classes[c];
        for (i, node) in existing.iter_mut().enumerate() {
            if left[c] == 0 {
                break;
            }
            if fits_node(p.shape, &node.shape).is_err() {
                continue;
            }
            let k = p.copies(&node.shape, &node.state, left[c]);
            if k > 0 {
                node.state.place_shared(p.shape, &p.resident, k);
                out.classes[c].existing.push(OnExisting {
                    node: i,
                    name: node.name.clone(),
                    pods: k,
                });
                left[c] -= k;
            }
        }
    }

    // Whether each class fits each pool's template at all, once.
    let misfits: Vec<Vec<Option<String>>> = pools
        .iter()
        .map(|o| {
            classes
                .iter()
                .map(|p| {
                    fits(p.shape, &o.template, &NodeState::default())
                        .err()
                        .map(|m| m.to_string())
                })
                .collect()
        })
        .collect();
    let mut added = vec![0u32; pools.len()];
    let mut quota_left = settings
        .quota
        .map_or(u32::MAX, |q| q.limit.saturating_sub(q.in_use));
    let mut cpu_left = settings
        .cpu_quota
        .map_or(u64::MAX, |q| u64::from(q.limit.saturating_sub(q.in_use)));
    // Nodes of `option` the vCPU quota still has room for.
    let cpu_room = |option: &PoolOption, cpu_left: u64| {
        cpu_left
            .checked_div(u64::from(option.vcpus))
            .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    let mut cap_left = settings.max_nodes_per_scale_up;
    loop {
        let mut best: Option<Offer> = None;
        for (i, option) in pools.iter().enumerate() {
            let budget = (option.room() - added[i])
                .min(quota_left)
                .min(cap_left)
                .min(cpu_room(option, cpu_left));
            if option.excluded.is_some() || budget == 0 {
                continue;
            }
            let admits: Vec<bool> = misfits[i].iter().map(Option::is_none).collect();
            let packing = pack(&classes, &order, &left, &admits, &option.template, budget);
            if packing.placed == 0 {
                continue;
            }
            let offer = Offer {
                pool: i,
                waste: waste(&option.template, &packing.nodes),
                packing,
            };
            if best
                .as_ref()
                .is_none_or(|b| rank(settings.expander, pools, &offer, b) == Ordering::Less)
            {
                best = Some(offer);
            }
        }
        let Some(offer) = best else { break };
        let pool = &pools[offer.pool].pool;
        let nodes = offer.packing.nodes.len() as u32;
        added[offer.pool] += nodes;
        quota_left -= nodes.min(quota_left);
        cpu_left = cpu_left.saturating_sub(u64::from(nodes) * u64::from(pools[offer.pool].vcpus));
        cap_left -= nodes;
        for (c, &k) in offer.packing.per_class.iter().enumerate() {
            if k > 0 {
                left[c] -= k;
                out.classes[c].new_nodes.push((pool.clone(), k));
            }
        }
        out.grow.push(Growth {
            pool: pool.clone(),
            nodes,
            pods: offer.packing.placed,
            waste: offer.waste,
            packing: offer.packing.packing,
        });
    }

    let total_added: u32 = added.iter().sum();
    let cpus_added: u64 = added
        .iter()
        .zip(pools)
        .map(|(&n, o)| u64::from(n) * u64::from(o.vcpus))
        .sum();
    for (c, outcome) in out.classes.iter_mut().enumerate() {
        outcome.unplaced = left[c];
        if left[c] == 0 {
            continue;
        }
        outcome.reasons = pools
            .iter()
            .enumerate()
            .map(|(i, option)| {
                let reason = if let Some(misfit) = &misfits[i][c] {
                    misfit.clone()
                } else if let Some(why) = &option.excluded {
                    why.clone()
                } else if option.room() == added[i] {
                    format!("at max size {}", option.max)
                } else if let Some(q) = settings.quota.filter(|_| quota_left == 0) {
                    format!(
                        "quota: {} nodes in use of {}",
                        q.in_use.saturating_add(total_added),
                        q.limit
                    )
                } else if let Some(q) = settings
                    .cpu_quota
                    .filter(|_| cpu_room(option, cpu_left) == 0)
                {
                    format!(
                        "quota: {} vCPUs in use of {}",
                        u64::from(q.in_use) + cpus_added,
                        q.limit
                    )
                } else if cap_left == 0 {
                    format!(
                        "at most {} nodes per scale-up",
                        settings.max_nodes_per_scale_up
                    )
                } else {
                    // Unreachable by construction: the pool would have
                    // placed a pod in another round.
                    "left for the next decision".to_string()
                };
                PoolReason {
                    pool: option.pool.clone(),
                    reason,
                }
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::simulate::{
        classes, pod_request, template_node, AntiAffinityTerm, HostPort, LabelSelector,
        PortProtocol, TermNamespaces, Toleration, TolerationOperator,
    };
    use crate::spec::{Taint, TaintEffect};
    use crate::NodePoolName;

    fn res(cpu: u64, mem: u64) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_bytes: mem,
            ..Default::default()
        }
    }

    fn shape(cpu: u64, mem: u64) -> PodShape {
        PodShape {
            request: pod_request(&[res(cpu, mem)], &[], &Resources::default()),
            namespace: "default".into(),
            ..Default::default()
        }
    }

    fn template(pool: &str, cpu: u64, mem: u64) -> NodeShape {
        template_node(
            &Resources {
                pods: 110,
                ..res(cpu, mem)
            },
            &Resources::default(),
            &[],
            &NodePoolName::parse(pool).unwrap(),
            &BTreeMap::new(),
            &[],
        )
    }

    fn option(pool: &str, cpu: u64, mem: u64, size: u32, max: u32) -> PoolOption {
        PoolOption {
            pool: pool.into(),
            template: template(pool, cpu, mem),
            size,
            max,
            priority: 0,
            vcpus: 1,
            excluded: None,
        }
    }

    fn pods(prefix: &str, n: usize, s: &PodShape) -> Vec<(String, PodShape)> {
        (0..n)
            .map(|i| (format!("default/{prefix}-{i}"), s.clone()))
            .collect()
    }

    fn grown(plan: &ScaleUp) -> Vec<(&str, u32)> {
        plan.grow
            .iter()
            .map(|g| (g.pool.as_str(), g.nodes))
            .collect()
    }

    fn with(expander: Expander) -> ScaleUpSettings {
        ScaleUpSettings {
            expander,
            ..Default::default()
        }
    }

    #[test]
    fn existing_room_first_then_the_pool_with_least_waste() {
        let pending = classes(pods("web", 5, &shape(1000, 1 << 30)));
        let mut existing = vec![ExistingNode {
            name: "n1".into(),
            shape: template("x", 2000, 4 << 30),
            state: NodeState::with_used(res(500, 0)),
        }];
        // n1 has room for one; 4 remain. `small` (2 CPUs) needs 2 nodes
        // wasting half their memory; `large` (8 CPUs) 1 node wasting half
        // its CPU and three quarters of its memory.
        let pools = [
            option("large", 8000, 16 << 30, 0, 5),
            option("small", 2000, 4 << 30, 0, 5),
        ];
        let plan = scale_up(&pending, &mut existing, &pools, &Default::default());
        assert_eq!(plan.fit_existing(&pending), ["default/web-0"]);
        assert_eq!(grown(&plan), [("small", 2)]);
        assert_eq!(plan.grow[0].waste, 0.5);
        assert_eq!(plan.on_new_nodes(&pending).len(), 4);
        assert!(plan.unplaceable(&pending).is_empty());
        assert_eq!(existing[0].state.used().cpu_millis, 1500);
    }

    #[test]
    fn the_expanders_choose_differently_and_later_rounds_take_the_rest() {
        let pending = classes(pods("web", 5, &shape(1000, 1 << 30)));
        // `small` may add one node only: it places 2 pods with less waste.
        let pools = [
            option("large", 8000, 16 << 30, 0, 5),
            option("small", 2000, 4 << 30, 4, 5),
        ];
        let plan = scale_up(&pending, &mut [], &pools, &with(Expander::LeastWaste));
        assert_eq!(grown(&plan), [("small", 1), ("large", 1)]);
        assert_eq!(
            plan.classes[0].new_nodes,
            [("small".into(), 2), ("large".into(), 3)]
        );

        let plan = scale_up(&pending, &mut [], &pools, &with(Expander::MostPods));
        assert_eq!(grown(&plan), [("large", 1)]);
        assert_eq!(plan.grow[0].pods, 5);

        // Priority beats waste; equal priorities fall back to least waste.
        let mut pools = pools;
        pools[0].priority = 10;
        let plan = scale_up(&pending, &mut [], &pools, &with(Expander::Priority));
        assert_eq!(grown(&plan), [("large", 1)]);
        pools[1].priority = 10;
        let plan = scale_up(&pending, &mut [], &pools, &with(Expander::Priority));
        assert_eq!(grown(&plan), [("small", 1), ("large", 1)]);
    }

    #[test]
    fn pods_no_pool_can_take_say_why_per_pool() {
        let mut gpu_pod = shape(100, 1 << 20);
        gpu_pod.request.extended.insert("nvidia.com/gpu".into(), 1);
        let mut zoned = shape(100, 1 << 20);
        zoned.node_selector.insert("zone".into(), "b".into());
        let mut all = pods("train", 1, &gpu_pod);
        all.extend(pods("web", 1, &zoned));
        let pending = classes(all);
        let pools = [
            option("default", 2000, 4 << 30, 0, 3),
            option("full", 2000, 4 << 30, 4, 4),
        ];
        let plan = scale_up(&pending, &mut [], &pools, &Default::default());
        assert!(plan.grow.is_empty());
        let why: BTreeMap<_, _> = plan.unplaceable(&pending).into_iter().collect();
        assert_eq!(
            why["default/train-0"],
            "pool default: insufficient nvidia.com/gpu; pool full: insufficient nvidia.com/gpu"
        );
        assert_eq!(
            why["default/web-0"],
            "pool default: node selector mismatch (zone); pool full: node selector mismatch (zone)"
        );
        // Fits, but the only pool is at its maximum: said so, not "no fit".
        let pending = classes(pods("w", 1, &shape(100, 1)));
        let plan = scale_up(&pending, &mut [], &pools[1..], &Default::default());
        assert_eq!(
            plan.classes[0].reasons,
            [PoolReason {
                pool: "full".into(),
                reason: "at max size 4".into()
            }]
        );
        // And without any pool at all.
        let plan = scale_up(&pending, &mut [], &[], &Default::default());
        assert_eq!(plan.unplaceable(&pending)[0].1, "no pool has autoscaling");
    }

    #[test]
    fn the_quota_bounds_the_whole_decision_and_is_worded() {
        // One pod per node; the pool is at size zero (scale-from-zero).
        let pending = classes(pods("big", 5, &shape(2000, 1 << 30)));
        let pools = [option("default", 2000, 4 << 30, 0, 10)];
        let settings = ScaleUpSettings {
            quota: Some(Quota {
                in_use: 8,
                limit: 10,
            }),
            ..Default::default()
        };
        let plan = scale_up(&pending, &mut [], &pools, &settings);
        assert_eq!(grown(&plan), [("default", 2)]);
        assert_eq!(plan.classes[0].unplaced, 3);
        assert_eq!(
            plan.classes[0].reasons[0].reason,
            "quota: 10 nodes in use of 10"
        );
        let full = ScaleUpSettings {
            quota: Some(Quota {
                in_use: 10,
                limit: 10,
            }),
            ..Default::default()
        };
        let plan = scale_up(&pending, &mut [], &pools, &full);
        assert!(plan.grow.is_empty());
        assert_eq!(
            plan.unplaceable(&pending)[0].1,
            "pool default: quota: 10 nodes in use of 10"
        );
    }

    #[test]
    fn the_vcpu_quota_weighs_each_pool_by_its_nodes_vcpus_and_is_worded() {
        // Pods of 2 CPUs: two on a large node, one on a small one.
        let pending = classes(pods("big", 5, &shape(2000, 1 << 30)));
        let mut large = option("large", 4000, 8 << 30, 0, 10);
        large.vcpus = 4;
        let mut small = option("small", 2000, 4 << 30, 0, 10);
        small.vcpus = 2;
        let settings = ScaleUpSettings {
            cpu_quota: Some(Quota {
                in_use: 3,
                limit: 12,
            }),
            ..Default::default()
        };
        // 9 vCPUs left: two large nodes (8) or four small ones (8).
        for (pool, nodes) in [(large, 2), (small, 4)] {
            let name = pool.pool.clone();
            let plan = scale_up(&pending, &mut [], &[pool], &settings);
            assert_eq!(grown(&plan), [(name.as_str(), nodes)]);
            assert_eq!(plan.classes[0].unplaced, 1);
            assert_eq!(
                plan.classes[0].reasons[0].reason,
                "quota: 11 vCPUs in use of 12"
            );
        }
    }

    fn gpu_pool(size: u32, max: u32) -> PoolOption {
        let mut o = option("gpu", 16_000, 64 << 30, size, max);
        o.template
            .allocatable
            .extended
            .insert("nvidia.com/gpu".into(), 4);
        o.template.taints.push(Taint {
            key: "nvidia.com/gpu".into(),
            value: None,
            effect: TaintEffect::NoSchedule,
        });
        o
    }

    fn trainer() -> PodShape {
        let mut s = shape(1000, 4 << 30);
        s.request.extended.insert("nvidia.com/gpu".into(), 1);
        s.tolerations.push(Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: TolerationOperator::Exists,
            value: None,
            effect: None,
        });
        s
    }

    #[test]
    fn one_decision_grows_every_pool_that_is_needed_from_zero() {
        let mut all = pods("train", 6, &trainer());
        all.extend(pods("web", 10, &shape(1000, 1 << 30)));
        let pending = classes(all);
        let pools = [gpu_pool(0, 5), option("default", 4000, 8 << 30, 1, 10)];
        let plan = scale_up(&pending, &mut [], &pools, &Default::default());
        let mut g = grown(&plan);
        g.sort();
        // 6 GPUs at 4 a node; 10 CPUs at 4 a node (web pods do not
        // tolerate the GPU taint).
        assert_eq!(g, [("default", 3), ("gpu", 2)]);
        assert!(plan.unplaceable(&pending).is_empty());
    }

    #[test]
    fn the_per_decision_cap_spans_pools() {
        let mut all = pods("train", 6, &trainer());
        all.extend(pods("web", 10, &shape(1000, 1 << 30)));
        let pending = classes(all);
        let pools = [gpu_pool(0, 5), option("default", 4000, 8 << 30, 1, 10)];
        let settings = ScaleUpSettings {
            max_nodes_per_scale_up: 3,
            ..Default::default()
        };
        let plan = scale_up(&pending, &mut [], &pools, &settings);
        assert_eq!(plan.nodes_added(), 3);
        let left: Vec<_> = plan.unplaceable(&pending);
        assert!(!left.is_empty());
        assert!(
            left.iter()
                .all(|(_, why)| why.contains("at most 3 nodes per scale-up")),
            "{left:?}"
        );
    }

    #[test]
    fn an_excluded_pool_is_skipped_and_named_for_the_pods_only_it_could_take() {
        let mut all = pods("train", 2, &trainer());
        all.extend(pods("web", 2, &shape(1000, 1 << 30)));
        let pending = classes(all);
        let mut gpu = gpu_pool(0, 5);
        gpu.excluded = Some("backed off: 2 machines failed to come up".into());
        let pools = [gpu, option("default", 4000, 8 << 30, 1, 10)];
        let plan = scale_up(&pending, &mut [], &pools, &Default::default());
        assert_eq!(grown(&plan), [("default", 1)]);
        let why: BTreeMap<_, _> = plan.unplaceable(&pending).into_iter().collect();
        assert_eq!(
            why["default/train-0"],
            "pool gpu: backed off: 2 machines failed to come up; \
             pool default: insufficient nvidia.com/gpu"
        );
        assert_eq!(why.len(), 2);
    }

    fn spread(app: &str) -> PodShape {
        let mut s = shape(500, 1 << 30);
        s.labels.insert("app".into(), app.into());
        s.anti_affinity.push(AntiAffinityTerm {
            selector: LabelSelector {
                match_labels: BTreeMap::from([("app".into(), app.into())]),
                match_expressions: vec![],
            },
            namespaces: TermNamespaces::Own,
        });
        s
    }

    #[test]
    fn pods_avoiding_their_own_kind_get_one_node_each_in_one_decision() {
        let cache = spread("cache");
        let pending = classes(pods("cache", 4, &cache));
        // n1 runs a cache already; n2 has room.
        let mut busy = NodeState::default();
        busy.place(&cache, 1);
        let mut existing = vec![
            ExistingNode {
                name: "n1".into(),
                shape: template("x", 4000, 8 << 30),
                state: busy,
            },
            ExistingNode {
                name: "n2".into(),
                shape: template("x", 4000, 8 << 30),
                state: NodeState::default(),
            },
        ];
        let pools = [option("default", 4000, 8 << 30, 2, 10)];
        let plan = scale_up(&pending, &mut existing, &pools, &Default::default());
        assert_eq!(
            plan.classes[0].existing,
            [OnExisting {
                node: 1,
                name: "n2".into(),
                pods: 1
            }]
        );
        assert_eq!(grown(&plan), [("default", 3)]);
        assert!(plan.grow[0].packing.iter().all(|n| n == &[(0, 1)]));

        // Host ports work the same way; other pods fill the gaps.
        let mut agent = shape(100, 1 << 20);
        agent.host_ports.push(HostPort {
            protocol: PortProtocol::Tcp,
            port: 9100,
        });
        let mut all = pods("agent", 3, &agent);
        all.extend(pods("web", 8, &shape(1000, 1 << 30)));
        let pending = classes(all);
        let plan = scale_up(&pending, &mut [], &pools, &Default::default());
        assert_eq!(grown(&plan), [("default", 3)]);
    }

    #[test]
    fn every_pod_gets_one_outcome_in_class_order() {
        let pending = classes(pods("web", 4, &shape(1000, 1 << 30)));
        let mut existing = vec![ExistingNode {
            name: "n1".into(),
            shape: template("x", 2000, 4 << 30),
            state: NodeState::with_used(res(1000, 0)),
        }];
        let pools = [option("default", 2000, 4 << 30, 1, 2)];
        let plan = scale_up(&pending, &mut existing, &pools, &Default::default());
        let got: Vec<(&str, String)> = plan
            .pods(&pending)
            .map(|(p, o)| {
                let o = match o {
                    PodOutcome::ExistingNode(n) => format!("node {n}"),
                    PodOutcome::NewNode(pool) => format!("pool {pool}"),
                    PodOutcome::NoPool(r) => format!("none: {}", r[0].reason),
                };
                (p, o)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("default/web-0", "node n1".to_string()),
                ("default/web-1", "pool default".to_string()),
                ("default/web-2", "pool default".to_string()),
                ("default/web-3", "none: at max size 2".to_string()),
            ]
        );
    }

    #[test]
    fn many_pods_in_few_classes_pack_near_the_lower_bound() {
        // 2,000 pods of 4 shapes onto 4-CPU, 8 GiB nodes.
        let shapes = [
            shape(250, 256 << 20),
            shape(500, 512 << 20),
            shape(1000, 1 << 30),
            shape(100, 128 << 20),
        ];
        let mut all = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            all.extend(pods(&format!("app{i}"), 500, s));
        }
        let pending = classes(all);
        assert_eq!(pending.len(), 4);
        let pools = [option("default", 4000, 8 << 30, 0, 1000)];
        let plan = scale_up(&pending, &mut [], &pools, &Default::default());
        let nodes = plan.nodes_added() as u64;
        // Total CPU 925 cores / 4 per node: at least 232 nodes.
        let lower = (500u64 * (250 + 500 + 1000 + 100)).div_ceil(4000);
        assert!(
            nodes >= lower && nodes <= lower + lower / 20,
            "{nodes} vs {lower}"
        );
        assert_eq!(plan.on_new_nodes(&pending).len(), 2000);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// A pod kind: CPU, memory, GPUs, whether it asks for zone `b`,
        /// whether its copies go one per node (1: anti-affinity against
        /// its own labels, 2: a host port), and how many pods.
        type Kind = (u64, u64, u64, bool, u8, usize);

        fn kind() -> impl Strategy<Value = Kind> {
            (
                1u64..4000,
                1u64..8192,
                0u64..3,
                any::<bool>(),
                0u8..3,
                0usize..40,
            )
        }

        fn kind_shape(i: usize, (cpu, mem, gpu, zoned, apart, _): Kind) -> PodShape {
            let mut s = shape(cpu, mem << 20);
            s.labels.insert("app".into(), format!("app{i}"));
            if gpu > 0 {
                s.request.extended.insert("nvidia.com/gpu".into(), gpu);
            }
            if zoned {
                s.node_selector.insert("zone".into(), "b".into());
            }
            match apart {
                1 => s.anti_affinity.push(AntiAffinityTerm {
                    selector: LabelSelector {
                        match_labels: s.labels.clone(),
                        match_expressions: vec![],
                    },
                    namespaces: TermNamespaces::Own,
                }),
                2 => s.host_ports.push(HostPort {
                    protocol: PortProtocol::Tcp,
                    port: 8000 + i as u16,
                }),
                _ => {}
            }
            s
        }

        /// A pool: CPU, memory, GPUs, zone b, size, max, priority, excluded.
        type Pool = (u64, u64, u64, bool, u32, u32, i32, bool);

        fn pool() -> impl Strategy<Value = Pool> {
            (
                2000u64..16_000,
                4096u64..65_536,
                0u64..5,
                any::<bool>(),
                0u32..5,
                0u32..12,
                0i32..3,
                prop::bool::weighted(0.2),
            )
        }

        fn pool_option(
            i: usize,
            (cpu, mem, gpu, zone_b, size, max, priority, excluded): Pool,
        ) -> PoolOption {
            let mut o = option(&format!("pool{i}"), cpu, mem << 20, size, max);
            if gpu > 0 {
                o.template
                    .allocatable
                    .extended
                    .insert("nvidia.com/gpu".into(), gpu);
            }
            if zone_b {
                o.template.labels.insert("zone".into(), "b".into());
            }
            o.priority = priority;
            o.vcpus = 1 + (i as u32 % 3) * 2;
            o.excluded = excluded.then(|| "backed off".to_string());
            o
        }

        type Inputs = (Vec<Kind>, Vec<Pool>, Vec<(u64, u64, bool)>, ScaleUpSettings);

        fn inputs() -> impl Strategy<Value = Inputs> {
            let settings = (
                0usize..3,
                prop::option::of((0u32..12, 0u32..16)),
                prop::option::of((0u32..24, 0u32..32)),
                1u32..12,
            )
                .prop_map(|(e, quota, cpu_quota, cap)| ScaleUpSettings {
                    expander: [Expander::LeastWaste, Expander::MostPods, Expander::Priority][e],
                    quota: quota.map(|(in_use, limit)| Quota { in_use, limit }),
                    cpu_quota: cpu_quota.map(|(in_use, limit)| Quota { in_use, limit }),
                    max_nodes_per_scale_up: cap,
                });
            (
                prop::collection::vec(kind(), 1..6),
                prop::collection::vec(pool(), 0..4),
                prop::collection::vec((2000u64..8000, 0u64..8000, any::<bool>()), 0..4),
                settings,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn a_decision_keeps_its_bounds_and_every_placement_fits(
                (kinds, pool_specs, existing_specs, settings) in inputs()
            ) {
                let mut all = Vec::new();
                for (i, k) in kinds.iter().enumerate() {
                    all.extend(pods(&format!("k{i}"), k.5, &kind_shape(i, *k)));
                }
                let pending = classes(all);
                let total: usize = pending.iter().map(|c| c.pods.len()).sum();
                let pools: Vec<PoolOption> = pool_specs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| pool_option(i, *p))
                    .collect();
                // Existing nodes, some running a copy of the first kind.
                let first = kind_shape(0, kinds[0]);
                let mut existing: Vec<ExistingNode> = existing_specs
                    .iter()
                    .enumerate()
                    .map(|(i, (cpu, used, copy))| {
                        let mut state = NodeState::with_used(res(*used % cpu, 0));
                        if *copy {
                            state.place(&first, 1);
                        }
                        ExistingNode {
                            name: format!("n{i}"),
                            shape: template("x", *cpu, 16 << 30),
                            state,
                        }
                    })
                    .collect();
                let before: Vec<NodeState> = existing.iter().map(|n| n.state.clone()).collect();
                let plan = scale_up(&pending, &mut existing, &pools, &settings);

                // Bounds.
                let added = plan.nodes_added();
                prop_assert!(added <= settings.max_nodes_per_scale_up);
                if let Some(q) = settings.quota {
                    prop_assert!(added <= q.limit.saturating_sub(q.in_use));
                }
                if let Some(q) = settings.cpu_quota {
                    let cpus: u32 = plan
                        .grow
                        .iter()
                        .map(|g| g.nodes * pools.iter().find(|o| o.pool == g.pool).unwrap().vcpus)
                        .sum();
                    prop_assert!(cpus <= q.limit.saturating_sub(q.in_use));
                }
                for o in &pools {
                    let grew: u32 = plan.grow.iter().filter(|g| g.pool == o.pool).map(|g| g.nodes).sum();
                    prop_assert!(grew <= o.room(), "{} grew {grew}", o.pool);
                    prop_assert!(o.excluded.is_none() || grew == 0);
                }

                // Every pod has exactly one outcome.
                prop_assert_eq!(plan.pods(&pending).count(), total);
                for (class, o) in pending.iter().zip(&plan.classes) {
                    let n: u64 = o.existing.iter().map(|e| e.pods).sum::<u64>()
                        + o.new_nodes.iter().map(|(_, k)| k).sum::<u64>()
                        + o.unplaced;
                    prop_assert_eq!(n, class.pods.len() as u64);
                    prop_assert_eq!(o.reasons.len(), if o.unplaced > 0 { pools.len() } else { 0 });
                }

                // Replayed one pod at a time, in the decision's order (copies
                // that go one per node first), every placement fits.
                let mut order: Vec<usize> = (0..pending.len()).collect();
                order.sort_by_key(|&c| !pending[c].shape.one_per_node());
                let mut states = before;
                for &c in &order {
                    for e in &plan.classes[c].existing {
                        for _ in 0..e.pods {
                            let node = &existing[e.node];
                            prop_assert_eq!(fits(&pending[c].shape, &node.shape, &states[e.node]), Ok(()));
                            states[e.node].place(&pending[c].shape, 1);
                        }
                    }
                }
                for (state, node) in states.iter().zip(&existing) {
                    prop_assert_eq!(state.used(), node.state.used());
                }
                for g in &plan.grow {
                    let o = pools.iter().find(|o| o.pool == g.pool).unwrap();
                    prop_assert_eq!(g.nodes as usize, g.packing.len());
                    let mut placed = 0;
                    for node in &g.packing {
                        let mut state = NodeState::default();
                        for &(c, k) in node {
                            if pending[c].shape.one_per_node() {
                                prop_assert_eq!(k, 1);
                            }
                            for _ in 0..k {
                                prop_assert_eq!(fits(&pending[c].shape, &o.template, &state), Ok(()));
                                state.place(&pending[c].shape, 1);
                            }
                            placed += k;
                        }
                    }
                    prop_assert_eq!(placed, g.pods);
                }
            }

            #[test]
            fn one_pool_adds_at_least_the_lower_bound(
                kinds in prop::collection::vec((1u64..4000, 1u64..8192, 1usize..60), 1..6),
                cpu in 4000u64..16_000,
                mem in 8192u64..32_768,
            ) {
                let mut all = Vec::new();
                for (i, (c, m, n)) in kinds.iter().enumerate() {
                    all.extend(pods(&format!("k{i}"), *n, &shape(*c, *m << 20)));
                }
                let pending = classes(all);
                let pools = [option("default", cpu, mem << 20, 0, 10_000)];
                let plan = scale_up(&pending, &mut [], &pools, &Default::default());
                prop_assert!(plan.unplaceable(&pending).is_empty());
                let want_cpu: u64 = kinds.iter().map(|(c, _, n)| c * *n as u64).sum();
                let want_mem: u64 = kinds.iter().map(|(_, m, n)| (m << 20) * *n as u64).sum();
                let lower = want_cpu.div_ceil(cpu).max(want_mem.div_ceil(mem << 20));
                prop_assert!(plan.nodes_added() as u64 >= lower);
                // First fit never leaves two nodes that one could hold:
                // every two of its nodes together exceed a node in some
                // resource, so it opens at most twice the summed load
                // (the shares of cpu, memory and pod slots) plus one.
                // (Not twice `lower`: with two resources first fit may
                // need 20 nodes where 17 suffice and `lower` is 9.)
                let pods: usize = kinds.iter().map(|(_, _, n)| n).sum();
                let load = want_cpu as f64 / cpu as f64
                    + want_mem as f64 / (mem << 20) as f64
                    + pods as f64 / 110.0;
                prop_assert!(plan.nodes_added() as f64 <= 2.0 * load + 1.0);
            }
        }
    }
}
