//! The autoscaler's view of what pods ask for and nodes offer, pure
//! (issue 10, first part): resource quantities as Kubernetes writes them, a
//! pod's effective request (what the scheduler reserves for it), which pods
//! count as pending, whether a pod fits a node (resources, node selector,
//! taints and tolerations) and why not, and a pool's template node. The
//! placement simulation over existing and template nodes builds on these;
//! nothing here knows how a pod or node was read.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::spec::{Taint, TaintEffect, NODE_POOL_LABEL};
use crate::NodePoolName;

/// Amounts of the resources the scheduler accounts: CPU in millicores,
/// memory and ephemeral storage in bytes, a pod count, and extended
/// resources (`nvidia.com/gpu`, ...) in whole units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_bytes: u64,
    pub pods: u64,
    pub extended: BTreeMap<String, u64>,
}

impl Resources {
    /// Both together (saturating).
    pub fn plus(&self, other: &Resources) -> Resources {
        let mut extended = self.extended.clone();
        for (k, v) in &other.extended {
            let e = extended.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            ephemeral_bytes: self.ephemeral_bytes.saturating_add(other.ephemeral_bytes),
            pods: self.pods.saturating_add(other.pods),
            extended,
        }
    }

    /// The larger of the two, resource by resource.
    pub fn max(&self, other: &Resources) -> Resources {
        let mut extended = self.extended.clone();
        for (k, v) in &other.extended {
            let e = extended.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
        Resources {
            cpu_millis: self.cpu_millis.max(other.cpu_millis),
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
            ephemeral_bytes: self.ephemeral_bytes.max(other.ephemeral_bytes),
            pods: self.pods.max(other.pods),
            extended,
        }
    }

    /// What is left of `self` after `used` (saturating at zero).
    pub fn minus(&self, used: &Resources) -> Resources {
        let mut extended = self.extended.clone();
        for (k, v) in &used.extended {
            if let Some(e) = extended.get_mut(k) {
                *e = e.saturating_sub(*v);
            }
        }
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(used.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(used.memory_bytes),
            ephemeral_bytes: self.ephemeral_bytes.saturating_sub(used.ephemeral_bytes),
            pods: self.pods.saturating_sub(used.pods),
            extended,
        }
    }

    /// Whether `self` fits into `free`; otherwise the resources that are
    /// short, named as Kubernetes names them (`cpu`, `memory`,
    /// `ephemeral-storage`, `pods`, or the extended resource's name).
    pub fn fits_in(&self, free: &Resources) -> Result<(), Vec<String>> {
        let mut short = Vec::new();
        if self.cpu_millis > free.cpu_millis {
            short.push("cpu".to_string());
        }
        if self.memory_bytes > free.memory_bytes {
            short.push("memory".to_string());
        }
        if self.ephemeral_bytes > free.ephemeral_bytes {
            short.push("ephemeral-storage".to_string());
        }
        if self.pods > free.pods {
            short.push("pods".to_string());
        }
        for (k, v) in &self.extended {
            if *v > free.extended.get(k).copied().unwrap_or(0) {
                short.push(k.clone());
            }
        }
        if short.is_empty() {
            Ok(())
        } else {
            Err(short)
        }
    }
}

/// A byte quantity (`128974848`, `129e6`, `129M`, `123Mi`, `1.5Gi`) in
/// bytes, rounded up as the scheduler rounds requests; None for anything
/// else (negative, malformed, or beyond u64).
pub fn quantity_bytes(q: &str) -> Option<u64> {
    const BINARY: [(&str, u32); 6] = [
        ("Ki", 10),
        ("Mi", 20),
        ("Gi", 30),
        ("Ti", 40),
        ("Pi", 50),
        ("Ei", 60),
    ];
    const DECIMAL: [(&str, i32); 7] = [
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
        ("E", 18),
        ("m", -3),
    ];
    let q = q.trim();
    let (number, factor) = if let Some((n, shift)) = BINARY
        .iter()
        .find_map(|(s, shift)| q.strip_suffix(s).map(|n| (n, *shift)))
    {
        (n, 2f64.powi(shift as i32))
    } else if let Some((n, exp)) = DECIMAL
        .iter()
        .find_map(|(s, exp)| q.strip_suffix(s).map(|n| (n, *exp)))
    {
        (n, 10f64.powi(exp))
    } else {
        (q, 1.0)
    };
    if number.is_empty() || number.starts_with(['-', '+']) {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let bytes = (value * factor).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// What the scheduler reserves for a pod: per resource, the larger of its
/// largest init container and the sum of its containers, plus the pod's
/// overhead, and one pod.
pub fn pod_request(
    containers: &[Resources],
    init: &[Resources],
    overhead: &Resources,
) -> Resources {
    let sum = containers
        .iter()
        .fold(Resources::default(), |acc, c| acc.plus(c));
    let largest_init = init.iter().fold(Resources::default(), |acc, c| acc.max(c));
    let mut request = sum.max(&largest_init).plus(overhead);
    request.pods = 1;
    request
}

/// What decides whether a pod waits for a node that does not exist yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSchedulingFacts {
    /// Its `PodScheduled` condition is False with reason `Unschedulable`.
    pub unschedulable: bool,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `status.nominatedNodeName`: preemption made room for it somewhere.
    pub nominated_node: Option<String>,
    /// Owned by a DaemonSet (it follows nodes, it does not ask for them).
    pub daemonset: bool,
    /// A static pod's mirror.
    pub mirror: bool,
    /// Has a deletion timestamp.
    pub terminating: bool,
}

/// A pod counts as pending for the autoscaler when the scheduler found no
/// node for it (`PodScheduled=False`, `Unschedulable`), it is not bound,
/// no node was nominated for it, and it is neither a DaemonSet pod nor a
/// mirror pod nor on its way out.
pub fn counts_as_pending(p: &PodSchedulingFacts) -> bool {
    p.unschedulable
        && p.node_name.is_none()
        && p.nominated_node.is_none()
        && !p.daemonset
        && !p.mirror
        && !p.terminating
}

/// How a toleration matches a taint's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TolerationOperator {
    /// The values are equal.
    Equal,
    /// Any value.
    Exists,
}

/// A pod's toleration, as in `spec.tolerations`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Toleration {
    /// None (with `Exists`): every key.
    pub key: Option<String>,
    pub operator: TolerationOperator,
    pub value: Option<String>,
    /// None: every effect.
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// The scheduler's rule: effects match (or the toleration names none),
    /// keys match (or the toleration has none, with `Exists`), and with
    /// `Equal` the values match (a missing value is the empty string).
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        match (&self.key, self.operator) {
            (None, TolerationOperator::Exists) => true,
            (None, TolerationOperator::Equal) => false,
            (Some(k), _) if *k != taint.key => false,
            (Some(_), TolerationOperator::Exists) => true,
            (Some(_), TolerationOperator::Equal) => {
                self.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
            }
        }
    }
}

/// What a node offers pods and asks of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeShape {
    pub allocatable: Resources,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

/// What a pod asks of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PodShape {
    /// Its effective request ([`pod_request`]).
    pub request: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

/// Why a pod does not fit a node, worded for the autoscaler's
/// explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misfit {
    /// The node lacks a label the pod's node selector asks for.
    NodeSelector { key: String },
    /// A NoSchedule or NoExecute taint the pod does not tolerate.
    Taint(Taint),
    /// Not enough of these resources free.
    Insufficient(Vec<String>),
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misfit::NodeSelector { key } => write!(f, "node selector mismatch ({key})"),
            Misfit::Taint(t) => write!(
                f,
                "untolerated taint {}={}:{:?}",
                t.key,
                t.value.as_deref().unwrap_or(""),
                t.effect
            ),
            Misfit::Insufficient(what) => write!(f, "insufficient {}", what.join(", ")),
        }
    }
}

/// Whether `pod` fits on `node` with `used` already requested there: its
/// node selector first, then taints (PreferNoSchedule does not keep a pod
/// off), then resources, as the scheduler filters.
pub fn fits(pod: &PodShape, node: &NodeShape, used: &Resources) -> Result<(), Misfit> {
    for (key, value) in &pod.node_selector {
        if node.labels.get(key) != Some(value) {
            return Err(Misfit::NodeSelector { key: key.clone() });
        }
    }
    for taint in node
        .taints
        .iter()
        .filter(|t| t.effect != TaintEffect::PreferNoSchedule)
    {
        if !pod.tolerations.iter().any(|t| t.tolerates(taint)) {
            return Err(Misfit::Taint(taint.clone()));
        }
    }
    pod.request
        .fits_in(&node.allocatable.minus(used))
        .map_err(Misfit::Insufficient)
}

/// What a new node of a pool will look like before it exists: the machine
/// type's `capacity` minus the kubelet's `reserved` share and the requests
/// of the DaemonSet pods that would land on it, carrying the pool's labels
/// (and its pool label) and taints. This is what makes scale-from-zero work.
pub fn template_node(
    capacity: &Resources,
    reserved: &Resources,
    daemonsets: &[Resources],
    pool: &NodePoolName,
    labels: &BTreeMap<String, String>,
    taints: &[Taint],
) -> NodeShape {
    let daemons = daemonsets
        .iter()
        .fold(Resources::default(), |acc, d| acc.plus(d));
    let mut labels = labels.clone();
    labels.insert(NODE_POOL_LABEL.to_string(), pool.to_string());
    NodeShape {
        allocatable: capacity.minus(reserved).minus(&daemons),
        labels,
        taints: taints.to_vec(),
    }
}

/// Pods that ask exactly the same of a node, simulated once: 40,000
/// pending pods of a few hundred shapes cost a few hundred fits per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EquivalenceClass {
    pub shape: PodShape,
    /// `namespace/name` of each pod in the class.
    pub pods: Vec<String>,
}

/// Groups pending pods (`namespace/name`, shape) by shape, largest
/// requests first (CPU, then memory), so big pods are packed first.
pub fn classes(pods: impl IntoIterator<Item = (String, PodShape)>) -> Vec<EquivalenceClass> {
    let mut index: HashMap<PodShape, usize> = HashMap::new();
    let mut out: Vec<EquivalenceClass> = Vec::new();
    for (name, shape) in pods {
        match index.get(&shape) {
            Some(&i) => out[i].pods.push(name),
            None => {
                index.insert(shape.clone(), out.len());
                out.push(EquivalenceClass {
                    shape,
                    pods: vec![name],
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (b.shape.request.cpu_millis, b.shape.request.memory_bytes)
            .cmp(&(a.shape.request.cpu_millis, a.shape.request.memory_bytes))
    });
    out
}

/// A node that exists, with what is requested on it already.
#[derive(Debug, Clone)]
pub struct ExistingNode {
    pub name: String,
    pub shape: NodeShape,
    pub used: Resources,
}

/// A pool the autoscaler may grow: its template node and how many nodes
/// it may still add (up to its max, the tenant's quota, and the
/// per-decision cap).
#[derive(Debug, Clone)]
pub struct PoolOption {
    pub pool: String,
    pub template: NodeShape,
    pub room: u32,
}

/// What one simulation round decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScaleUp {
    /// The pool chosen by the expander, and how many nodes it gets.
    pub grow: Option<(String, u32)>,
    /// Pods that fit on nodes that exist (the scheduler will place them).
    pub fit_existing: Vec<String>,
    /// Pods the new nodes will take.
    pub on_new_nodes: Vec<String>,
    /// Pods no pool can take, with why, pool by pool
    /// (`pool gpu: insufficient nvidia.com/gpu; pool default: ...`).
    pub unplaceable: Vec<(String, String)>,
}

/// Packs `pods` onto `count` or fewer new copies of `template`
/// (first fit, classes in order); returns the nodes opened (their used
/// resources) and the pods placed.
fn pack_new(
    classes: &[EquivalenceClass],
    template: &NodeShape,
    room: u32,
) -> (Vec<Resources>, Vec<String>) {
    let mut nodes: Vec<Resources> = Vec::new();
    let mut placed = Vec::new();
    for class in classes {
        if fits(&class.shape, template, &Resources::default()).is_err() {
            continue;
        }
        for pod in &class.pods {
            let slot = nodes
                .iter()
                .position(|used| fits(&class.shape, template, used).is_ok());
            let i = match slot {
                Some(i) => i,
                None if (nodes.len() as u32) < room => {
                    nodes.push(Resources::default());
                    nodes.len() - 1
                }
                None => break,
            };
            nodes[i] = nodes[i].plus(&class.shape.request);
            placed.push(pod.clone());
        }
    }
    (nodes, placed)
}

/// The share of the new nodes' CPU and memory left unrequested (0 to 2):
/// the least-waste expander picks the pool where this is smallest.
fn waste(template: &NodeShape, nodes: &[Resources]) -> f64 {
    let share = |used: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            1.0 - used as f64 / total as f64
        }
    };
    let n = nodes.len() as u64;
    let used = nodes.iter().fold(Resources::default(), |a, r| a.plus(r));
    share(
        used.cpu_millis,
        template.allocatable.cpu_millis.saturating_mul(n),
    ) + share(
        used.memory_bytes,
        template.allocatable.memory_bytes.saturating_mul(n),
    )
}

/// One scale-up round, as cluster-autoscaler runs it: pending pods first
/// onto the free room of existing nodes, then the rest onto new nodes of
/// each pool that can take any of them; the pool that places the most pods
/// wins, ties broken by least waste, then by name. Pods no pool can take
/// get the reason of each pool.
pub fn scale_up(
    pending: &[EquivalenceClass],
    existing: &mut [ExistingNode],
    pools: &[PoolOption],
) -> ScaleUp {
    let mut out = ScaleUp::default();
    let mut rest: Vec<EquivalenceClass> = Vec::new();
    for class in pending {
        let mut left = Vec::new();
        for pod in &class.pods {
            match existing
                .iter_mut()
                .find(|n| fits(&class.shape, &n.shape, &n.used).is_ok())
            {
                Some(n) => {
                    n.used = n.used.plus(&class.shape.request);
                    out.fit_existing.push(pod.clone());
                }
                None => left.push(pod.clone()),
            }
        }
        if !left.is_empty() {
            rest.push(EquivalenceClass {
                shape: class.shape.clone(),
                pods: left,
            });
        }
    }
    /// One pool's packing: its pods placed, nodes opened and waste.
    struct Candidate<'a> {
        pool: &'a str,
        nodes: usize,
        waste: f64,
        placed: Vec<String>,
    }
    let mut best: Option<Candidate> = None;
    for option in pools.iter().filter(|o| o.room > 0) {
        let (nodes, placed) = pack_new(&rest, &option.template, option.room);
        if placed.is_empty() {
            continue;
        }
        let c = Candidate {
            pool: &option.pool,
            nodes: nodes.len(),
            waste: waste(&option.template, &nodes),
            placed,
        };
        let better = best.as_ref().is_none_or(|b| {
            c.placed.len() > b.placed.len()
                || (c.placed.len() == b.placed.len()
                    && (c.waste < b.waste || (c.waste == b.waste && c.pool < b.pool)))
        });
        if better {
            best = Some(c);
        }
    }
    if let Some(c) = best {
        out.grow = Some((c.pool.to_string(), c.nodes as u32));
        out.on_new_nodes = c.placed;
    }
    for class in &rest {
        let why: Vec<String> = pools
            .iter()
            .filter_map(
                |o| match fits(&class.shape, &o.template, &Resources::default()) {
                    Err(m) => Some(format!("pool {}: {m}", o.pool)),
                    Ok(()) if o.room == 0 => Some(format!("pool {}: at its maximum size", o.pool)),
                    Ok(()) => None,
                },
            )
            .collect();
        // A class some pool could take waits for the next round; one that
        // every pool refuses (or that has no pool at all) is explained.
        if why.len() == pools.len() {
            let reason = if why.is_empty() {
                "no pool has autoscaling".to_string()
            } else {
                why.join("; ")
            };
            for pod in &class.pods {
                out.unplaceable.push((pod.clone(), reason.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu: u64, mem: u64) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_bytes: mem,
            ..Default::default()
        }
    }

    #[test]
    fn byte_quantities_as_kubernetes_writes_them() {
        for (q, want) in [
            ("128974848", Some(128_974_848)),
            ("129e6", Some(129_000_000)),
            ("129M", Some(129_000_000)),
            ("123Mi", Some(123 * 1024 * 1024)),
            ("1.5Gi", Some(1_610_612_736)),
            ("1k", Some(1000)),
            ("1Ki", Some(1024)),
            ("0", Some(0)),
            ("1500m", Some(2)),
            ("", None),
            ("-1Gi", None),
            ("1Zi", None),
            ("Gi", None),
            ("1 Gi", None),
            ("99999999999Ei", None),
        ] {
            assert_eq!(quantity_bytes(q), want, "{q:?}");
        }
    }

    #[test]
    fn a_pods_request_is_the_larger_of_init_and_containers_plus_overhead() {
        let gpu = |n| Resources {
            extended: BTreeMap::from([("nvidia.com/gpu".to_string(), n)]),
            ..Default::default()
        };
        // Containers sum to 300m / 384 B; the largest init wants more
        // memory and fewer CPUs; the overhead is added after.
        let r = pod_request(
            &[res(100, 128), res(200, 256).plus(&gpu(1))],
            &[res(50, 1024), res(250, 64)],
            &res(10, 16),
        );
        assert_eq!(r.cpu_millis, 310);
        assert_eq!(r.memory_bytes, 1040);
        assert_eq!(r.extended["nvidia.com/gpu"], 1);
        assert_eq!(r.pods, 1);
        // No containers at all still takes a pod slot.
        assert_eq!(pod_request(&[], &[], &Resources::default()).pods, 1);
    }

    #[test]
    fn fits_in_names_what_is_short() {
        let free = Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            ephemeral_bytes: 10 << 30,
            pods: 110,
            extended: BTreeMap::new(),
        };
        let mut want = pod_request(&[res(500, 1 << 20)], &[], &Resources::default());
        assert_eq!(want.fits_in(&free), Ok(()));
        want.cpu_millis = 1500;
        want.memory_bytes = 2 << 30;
        want.extended.insert("nvidia.com/gpu".into(), 1);
        assert_eq!(
            want.fits_in(&free),
            Err(vec!["cpu".into(), "memory".into(), "nvidia.com/gpu".into()])
        );
    }

    #[test]
    fn only_unschedulable_unbound_unnominated_ordinary_pods_are_pending() {
        let pending = PodSchedulingFacts {
            unschedulable: true,
            ..Default::default()
        };
        assert!(counts_as_pending(&pending));
        let not = [
            PodSchedulingFacts {
                unschedulable: false,
                ..pending.clone()
            },
            PodSchedulingFacts {
                node_name: Some("n1".into()),
                ..pending.clone()
            },
            PodSchedulingFacts {
                nominated_node: Some("n2".into()),
                ..pending.clone()
            },
            PodSchedulingFacts {
                daemonset: true,
                ..pending.clone()
            },
            PodSchedulingFacts {
                mirror: true,
                ..pending.clone()
            },
            PodSchedulingFacts {
                terminating: true,
                ..pending.clone()
            },
        ];
        for p in not {
            assert!(!counts_as_pending(&p), "{p:?}");
        }
    }

    fn taint(key: &str, value: Option<&str>, effect: TaintEffect) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(str::to_string),
            effect,
        }
    }

    #[test]
    fn tolerations_follow_the_schedulers_rule() {
        use TolerationOperator::*;
        let t = taint("dedicated", Some("web"), TaintEffect::NoSchedule);
        let tol = |key: Option<&str>, op, value: Option<&str>, effect| Toleration {
            key: key.map(str::to_string),
            operator: op,
            value: value.map(str::to_string),
            effect,
        };
        assert!(tol(Some("dedicated"), Equal, Some("web"), None).tolerates(&t));
        assert!(tol(
            Some("dedicated"),
            Exists,
            None,
            Some(TaintEffect::NoSchedule)
        )
        .tolerates(&t));
        assert!(tol(None, Exists, None, None).tolerates(&t));
        assert!(!tol(None, Equal, None, None).tolerates(&t));
        assert!(!tol(Some("dedicated"), Equal, Some("db"), None).tolerates(&t));
        assert!(!tol(
            Some("dedicated"),
            Exists,
            None,
            Some(TaintEffect::NoExecute)
        )
        .tolerates(&t));
        assert!(!tol(Some("other"), Exists, None, None).tolerates(&t));
        // A taint without a value is tolerated by Equal with an empty one.
        let bare = taint("gpu", None, TaintEffect::NoSchedule);
        assert!(tol(Some("gpu"), Equal, None, None).tolerates(&bare));
    }

    #[test]
    fn fit_checks_selector_then_taints_then_resources() {
        let pool = NodePoolName::parse("gpu").unwrap();
        let capacity = Resources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            ephemeral_bytes: 20 << 30,
            pods: 110,
            extended: BTreeMap::from([("nvidia.com/gpu".into(), 1)]),
        };
        let node = template_node(
            &capacity,
            &res(100, 512 << 20),
            &[res(100, 128 << 20), res(50, 64 << 20)],
            &pool,
            &BTreeMap::from([("tier".into(), "ml".into())]),
            &[
                taint("nvidia.com/gpu", None, TaintEffect::NoSchedule),
                taint("spot", None, TaintEffect::PreferNoSchedule),
            ],
        );
        assert_eq!(node.allocatable.cpu_millis, 3750);
        assert_eq!(node.allocatable.memory_bytes, (8 << 30) - (704 << 20));
        assert_eq!(node.labels[NODE_POOL_LABEL], "gpu");

        let mut pod = PodShape {
            request: pod_request(&[res(1000, 1 << 30)], &[], &Resources::default()),
            node_selector: BTreeMap::from([("tier".into(), "ml".into())]),
            tolerations: vec![],
        };
        let misfit = fits(&pod, &node, &Resources::default()).unwrap_err();
        assert_eq!(
            misfit.to_string(),
            "untolerated taint nvidia.com/gpu=:NoSchedule"
        );
        pod.tolerations.push(Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: TolerationOperator::Exists,
            value: None,
            effect: None,
        });
        assert_eq!(fits(&pod, &node, &Resources::default()), Ok(()));
        // Resources already requested on the node count.
        let busy = res(3000, 0);
        assert_eq!(
            fits(&pod, &node, &busy).unwrap_err().to_string(),
            "insufficient cpu"
        );
        pod.node_selector.insert("zone".into(), "a".into());
        assert_eq!(
            fits(&pod, &node, &Resources::default()).unwrap_err(),
            Misfit::NodeSelector { key: "zone".into() }
        );
    }

    fn shape(cpu: u64, mem: u64) -> PodShape {
        PodShape {
            request: pod_request(&[res(cpu, mem)], &[], &Resources::default()),
            ..Default::default()
        }
    }

    fn option(pool: &str, cpu: u64, mem: u64, room: u32) -> PoolOption {
        PoolOption {
            pool: pool.into(),
            template: template_node(
                &Resources {
                    cpu_millis: cpu,
                    memory_bytes: mem,
                    ephemeral_bytes: 0,
                    pods: 110,
                    extended: BTreeMap::new(),
                },
                &Resources::default(),
                &[],
                &NodePoolName::parse(pool).unwrap(),
                &BTreeMap::new(),
                &[],
            ),
            room,
        }
    }

    fn pods(prefix: &str, n: usize, s: &PodShape) -> Vec<(String, PodShape)> {
        (0..n)
            .map(|i| (format!("default/{prefix}-{i}"), s.clone()))
            .collect()
    }

    #[test]
    fn identical_pods_form_one_class_largest_first() {
        let small = shape(100, 1 << 20);
        let big = shape(2000, 1 << 30);
        let mut all = pods("web", 3, &small);
        all.extend(pods("db", 2, &big));
        let c = classes(all);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].shape, big);
        assert_eq!(c[0].pods, ["default/db-0", "default/db-1"]);
        assert_eq!(c[1].pods.len(), 3);
    }

    #[test]
    fn existing_room_first_then_the_pool_that_places_most_with_least_waste() {
        let pending = classes(pods("web", 5, &shape(1000, 1 << 30)));
        let mut existing = vec![ExistingNode {
            name: "n1".into(),
            shape: option("x", 2000, 4 << 30, 0).template,
            used: res(500, 0),
        }];
        // n1 has room for one; 4 remain. `small` (2 CPUs) needs 2 nodes with
        // no waste; `large` (8 CPUs) 1 node, half empty; both place all 4.
        let pools = [
            option("large", 8000, 16 << 30, 5),
            option("small", 2000, 4 << 30, 5),
        ];
        let plan = scale_up(&pending, &mut existing, &pools);
        assert_eq!(plan.fit_existing, ["default/web-0"]);
        assert_eq!(plan.grow, Some(("small".to_string(), 2)));
        assert_eq!(plan.on_new_nodes.len(), 4);
        assert!(plan.unplaceable.is_empty());
        assert_eq!(existing[0].used.cpu_millis, 1500);

        // A pool with room for only one node places fewer pods and loses.
        let pools = [
            option("large", 8000, 16 << 30, 5),
            option("small", 2000, 4 << 30, 1),
        ];
        let mut none: Vec<ExistingNode> = vec![];
        let plan = scale_up(&pending, &mut none, &pools);
        assert_eq!(plan.grow, Some(("large".to_string(), 1)));
        assert_eq!(plan.on_new_nodes.len(), 5);
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
            option("default", 2000, 4 << 30, 3),
            option("full", 2000, 4 << 30, 0),
        ];
        let plan = scale_up(&pending, &mut [], &pools);
        assert_eq!(plan.grow, None);
        let why: BTreeMap<_, _> = plan.unplaceable.into_iter().collect();
        assert_eq!(
            why["default/train-0"],
            "pool default: insufficient nvidia.com/gpu; pool full: insufficient nvidia.com/gpu"
        );
        assert_eq!(
            why["default/web-0"],
            "pool default: node selector mismatch (zone); pool full: node selector mismatch (zone)"
        );
        // Fits, but the only pool is at its maximum.
        let plan = scale_up(&classes(pods("w", 1, &shape(100, 1))), &mut [], &pools[1..]);
        assert_eq!(plan.unplaceable[0].1, "pool full: at its maximum size");
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
        let pools = [option("default", 4000, 8 << 30, 1000)];
        let plan = scale_up(&pending, &mut [], &pools);
        let (_, nodes) = plan.grow.clone().unwrap();
        // Total CPU 925 cores / 4 per node: at least 232 nodes.
        let lower = (500u64 * (250 + 500 + 1000 + 100)).div_ceil(4000);
        assert!(
            nodes as u64 >= lower && (nodes as u64) <= lower + lower / 20,
            "{nodes} vs {lower}"
        );
        assert_eq!(plan.on_new_nodes.len(), 2000);
    }
}
