//! The autoscaler's view of what pods ask for and nodes offer, pure
//! (issue 10): resource quantities as Kubernetes writes them, a pod's
//! effective request (what the scheduler reserves for it), which pods
//! count as pending, whether a pod fits a node and why not, and a pool's
//! template node.
//!
//! The fit follows the scheduler's filters that matter for choosing nodes:
//! node selector, required node affinity, taints and tolerations, host
//! ports, resources (extended ones included), and required pod
//! anti-affinity on the node's hostname in both directions. A node's side
//! is a [`NodeState`] (what is requested there, the host ports taken, the
//! kinds of pods there), so a simulation can place pods one class at a
//! time and ask again. [`copies_that_fit`] places a whole equivalence
//! class on a node in one arithmetic step, which is what keeps 40,000
//! pending pods cheap.
//!
//! The scale-up round built on these lives in [`crate::scaleup`] (its
//! names are re-exported here), scale-down in [`crate::scaledown`];
//! nothing here knows how a pod or node was read.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

pub use crate::affinity::{
    AntiAffinityTerm, HostPort, LabelSelector, LabelSelectorOperator, LabelSelectorRequirement,
    NodeAffinity, NodeSelectorOperator, NodeSelectorRequirement, NodeSelectorTerm, PortProtocol,
    TermNamespaces,
};
pub use crate::scaleup::{
    scale_up, ClassOutcome, Expander, Growth, OnExisting, PodOutcome, PoolOption, PoolReason,
    Quota, ScaleUp, ScaleUpSettings,
};
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

/// What a pod asks of a node, and what other pods see of it. Pods with
/// equal shapes are interchangeable to the scheduler, so the namespace and
/// labels are part of the shape: anti-affinity terms select on them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PodShape {
    /// Its effective request ([`pod_request`]).
    pub request: Resources,
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity; None asks nothing.
    pub node_affinity: Option<NodeAffinity>,
    pub tolerations: Vec<Toleration>,
    /// The host ports of its containers (see [`HostPort`] on `hostIP`).
    pub host_ports: Vec<HostPort>,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Required anti-affinity terms keyed on the node's hostname.
    pub anti_affinity: Vec<AntiAffinityTerm>,
}

impl PodShape {
    /// Two copies of this pod can never share a node: they would ask for
    /// the same host port, or its anti-affinity selects its own kind.
    pub fn one_per_node(&self) -> bool {
        !self.host_ports.is_empty()
            || self
                .anti_affinity
                .iter()
                .any(|t| t.matches(&self.namespace, &self.namespace, &self.labels))
    }
}

/// A pod on a node as anti-affinity sees it: where it lives, what it is
/// labelled, and which pods it keeps away.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Resident {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub anti_affinity: Vec<AntiAffinityTerm>,
}

impl Resident {
    pub fn of(pod: &PodShape) -> Resident {
        Resident {
            namespace: pod.namespace.clone(),
            labels: pod.labels.clone(),
            anti_affinity: pod.anti_affinity.clone(),
        }
    }
}

/// What is on a node already, as far as the next pod's fit depends on it:
/// the resources requested, the host ports taken, and the pods there (one
/// entry per kind of pod: anti-affinity asks whether such a pod is there,
/// not how many).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    used: Resources,
    host_ports: Vec<HostPort>,
    residents: Vec<Arc<Resident>>,
    /// Residents with anti-affinity terms of their own: when none, an
    /// incoming pod need not be checked against theirs.
    with_terms: usize,
}

impl NodeState {
    /// A node with `used` requested and nothing known of its pods (no
    /// host ports taken, no pod for anti-affinity to see).
    pub fn with_used(used: Resources) -> NodeState {
        NodeState {
            used,
            ..Default::default()
        }
    }

    /// Accounts `copies` copies of `pod` on the node (whether or not they
    /// fit: this is how the engine records the pods already running).
    pub fn place(&mut self, pod: &PodShape, copies: u64) {
        self.place_shared(pod, &Arc::new(Resident::of(pod)), copies);
    }

    /// As [`NodeState::place`], with the pod's [`Resident`] made once for
    /// many nodes.
    pub fn place_shared(&mut self, pod: &PodShape, resident: &Arc<Resident>, copies: u64) {
        if copies == 0 {
            return;
        }
        self.used.add_copies(&pod.request, copies);
        self.host_ports.extend_from_slice(&pod.host_ports);
        if !self
            .residents
            .last()
            .is_some_and(|r| Arc::ptr_eq(r, resident))
        {
            self.residents.push(resident.clone());
            if !resident.anti_affinity.is_empty() {
                self.with_terms += 1;
            }
        }
    }

    pub fn used(&self) -> &Resources {
        &self.used
    }

    pub fn host_ports(&self) -> &[HostPort] {
        &self.host_ports
    }

    pub fn residents(&self) -> &[Arc<Resident>] {
        &self.residents
    }
}

impl Resources {
    /// Adds `copies` times `other` to `self` in place (saturating).
    pub fn add_copies(&mut self, other: &Resources, copies: u64) {
        let times = |v: u64| v.saturating_mul(copies);
        self.cpu_millis = self.cpu_millis.saturating_add(times(other.cpu_millis));
        self.memory_bytes = self.memory_bytes.saturating_add(times(other.memory_bytes));
        self.ephemeral_bytes = self
            .ephemeral_bytes
            .saturating_add(times(other.ephemeral_bytes));
        self.pods = self.pods.saturating_add(times(other.pods));
        for (k, v) in &other.extended {
            if *v > 0 {
                let e = self.extended.entry(k.clone()).or_insert(0);
                *e = e.saturating_add(times(*v));
            }
        }
    }

    /// How many copies of `self` fit in `allocatable` with `used` taken
    /// (u64::MAX when it requests nothing). A resource requested at zero
    /// never limits, as in the scheduler, even on an overcommitted node.
    pub fn copies_in(&self, allocatable: &Resources, used: &Resources) -> u64 {
        let mut n = u64::MAX;
        let mut limit = |want: u64, have: u64, taken: u64| {
            if let Some(copies) = have.saturating_sub(taken).checked_div(want) {
                n = n.min(copies);
            }
        };
        limit(self.cpu_millis, allocatable.cpu_millis, used.cpu_millis);
        limit(
            self.memory_bytes,
            allocatable.memory_bytes,
            used.memory_bytes,
        );
        limit(
            self.ephemeral_bytes,
            allocatable.ephemeral_bytes,
            used.ephemeral_bytes,
        );
        limit(self.pods, allocatable.pods, used.pods);
        for (k, want) in &self.extended {
            let have = allocatable.extended.get(k).copied().unwrap_or(0);
            let taken = used.extended.get(k).copied().unwrap_or(0);
            limit(*want, have, taken);
        }
        n
    }

    /// The resources of which `allocatable` minus `used` holds less than
    /// `self`, named as Kubernetes names them.
    fn short_of(&self, allocatable: &Resources, used: &Resources) -> Vec<String> {
        let free = |have: u64, taken: u64| have.saturating_sub(taken);
        let mut short = Vec::new();
        for (name, want, have, taken) in [
            (
                "cpu",
                self.cpu_millis,
                allocatable.cpu_millis,
                used.cpu_millis,
            ),
            (
                "memory",
                self.memory_bytes,
                allocatable.memory_bytes,
                used.memory_bytes,
            ),
            (
                "ephemeral-storage",
                self.ephemeral_bytes,
                allocatable.ephemeral_bytes,
                used.ephemeral_bytes,
            ),
            ("pods", self.pods, allocatable.pods, used.pods),
        ] {
            if want > free(have, taken) {
                short.push(name.to_string());
            }
        }
        for (k, want) in &self.extended {
            let have = allocatable.extended.get(k).copied().unwrap_or(0);
            let taken = used.extended.get(k).copied().unwrap_or(0);
            if *want > free(have, taken) {
                short.push(k.clone());
            }
        }
        short
    }
}

/// Why a pod does not fit a node, worded for the autoscaler's
/// explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misfit {
    /// The node lacks a label the pod's node selector asks for.
    NodeSelector { key: String },
    /// No term of the pod's required node affinity matches the node.
    NodeAffinity,
    /// A NoSchedule or NoExecute taint the pod does not tolerate.
    Taint(Taint),
    /// A host port the pod needs is taken on the node.
    HostPort(HostPort),
    /// Not enough of these resources free.
    Insufficient(Vec<String>),
    /// The pod's anti-affinity selects a pod (in `namespace`) on the node.
    AntiAffinity { namespace: String },
    /// The anti-affinity of a pod on the node (in `namespace`) selects
    /// the incoming pod.
    ExistingAntiAffinity { namespace: String },
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misfit::NodeSelector { key } => write!(f, "node selector mismatch ({key})"),
            Misfit::NodeAffinity => write!(f, "node affinity mismatch"),
            Misfit::Taint(t) => write!(
                f,
                "untolerated taint {}={}:{:?}",
                t.key,
                t.value.as_deref().unwrap_or(""),
                t.effect
            ),
            Misfit::HostPort(p) => write!(f, "host port {p} in use"),
            Misfit::Insufficient(what) => write!(f, "insufficient {}", what.join(", ")),
            Misfit::AntiAffinity { namespace } => write!(
                f,
                "pod anti-affinity: a pod it avoids (namespace {namespace}) runs there"
            ),
            Misfit::ExistingAntiAffinity { namespace } => write!(
                f,
                "pod anti-affinity of a pod there (namespace {namespace}) keeps it off"
            ),
        }
    }
}

/// Whether `pod` fits on `node` with `state` there, as the scheduler
/// filters: [`fits_node`] (what the node is), then [`fits_beside`] (what
/// is on it already).
pub fn fits(pod: &PodShape, node: &NodeShape, state: &NodeState) -> Result<(), Misfit> {
    fits_node(pod, node)?;
    fits_beside(pod, node, state)
}

/// The part of the fit that no pod on the node changes: the node selector,
/// the required node affinity, then taints (PreferNoSchedule does not keep
/// a pod off).
pub fn fits_node(pod: &PodShape, node: &NodeShape) -> Result<(), Misfit> {
    for (key, value) in &pod.node_selector {
        if node.labels.get(key) != Some(value) {
            return Err(Misfit::NodeSelector { key: key.clone() });
        }
    }
    if let Some(affinity) = &pod.node_affinity {
        if !affinity.matches(&node.labels) {
            return Err(Misfit::NodeAffinity);
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
    Ok(())
}

/// The part of the fit that depends on the pods on the node: host ports,
/// then resources, then anti-affinity both ways (the pod's terms against
/// the pods there, and theirs against the pod). Allocates only to word a
/// misfit.
pub fn fits_beside(pod: &PodShape, node: &NodeShape, state: &NodeState) -> Result<(), Misfit> {
    if let Some(p) = pod.host_ports.iter().find(|p| state.host_ports.contains(p)) {
        return Err(Misfit::HostPort(*p));
    }
    if pod.request.copies_in(&node.allocatable, &state.used) == 0 {
        return Err(Misfit::Insufficient(
            pod.request.short_of(&node.allocatable, &state.used),
        ));
    }
    if !pod.anti_affinity.is_empty() {
        if let Some(r) = state.residents.iter().find(|r| {
            pod.anti_affinity
                .iter()
                .any(|t| t.matches(&pod.namespace, &r.namespace, &r.labels))
        }) {
            return Err(Misfit::AntiAffinity {
                namespace: r.namespace.clone(),
            });
        }
    }
    if state.with_terms > 0 {
        if let Some(r) = state.residents.iter().find(|r| {
            r.anti_affinity
                .iter()
                .any(|t| t.matches(&r.namespace, &pod.namespace, &pod.labels))
        }) {
            return Err(Misfit::ExistingAntiAffinity {
                namespace: r.namespace.clone(),
            });
        }
    }
    Ok(())
}

/// How many copies of `pod` (at most `want`) fit on `node` beside `state`
/// together, assuming [`fits_node`] holds: none if one does not fit, one
/// if copies exclude each other ([`PodShape::one_per_node`]), else as
/// many as the scarcest resource allows. This places a whole equivalence
/// class on a node in one step.
pub fn copies_that_fit(pod: &PodShape, node: &NodeShape, state: &NodeState, want: u64) -> u64 {
    if want == 0 || fits_beside(pod, node, state).is_err() {
        return 0;
    }
    if pod.one_per_node() {
        return 1;
    }
    pod.request
        .copies_in(&node.allocatable, &state.used)
        .min(want)
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
/// Labels are part of the shape, so pods that differ in a label no
/// selector reads (a StatefulSet's pod name) fall in separate classes;
/// the engine may drop such labels before grouping.
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

/// A node that exists (or is on its way: the engine adds nodes still
/// being provisioned as empty copies of their pool's template, so pods are
/// not counted twice), with what is on it already.
#[derive(Debug, Clone)]
pub struct ExistingNode {
    pub name: String,
    pub shape: NodeShape,
    pub state: NodeState,
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
            ..Default::default()
        };
        let empty = NodeState::default();
        let misfit = fits(&pod, &node, &empty).unwrap_err();
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
        assert_eq!(fits(&pod, &node, &empty), Ok(()));
        // Resources already requested on the node count.
        let busy = NodeState::with_used(res(3000, 0));
        assert_eq!(
            fits(&pod, &node, &busy).unwrap_err().to_string(),
            "insufficient cpu"
        );
        pod.node_selector.insert("zone".into(), "a".into());
        assert_eq!(
            fits(&pod, &node, &empty).unwrap_err(),
            Misfit::NodeSelector { key: "zone".into() }
        );
    }

    fn shape(cpu: u64, mem: u64) -> PodShape {
        PodShape {
            request: pod_request(&[res(cpu, mem)], &[], &Resources::default()),
            ..Default::default()
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

    fn node(cpu: u64, mem: u64, labels: &[(&str, &str)]) -> NodeShape {
        NodeShape {
            allocatable: Resources {
                cpu_millis: cpu,
                memory_bytes: mem,
                ephemeral_bytes: 0,
                pods: 110,
                extended: BTreeMap::new(),
            },
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            taints: vec![],
        }
    }

    #[test]
    fn required_node_affinity_is_checked_and_worded() {
        let n = node(4000, 8 << 30, &[("zone", "a"), ("cores", "4")]);
        let term = |key: &str, operator, values: &[&str]| NodeSelectorTerm {
            match_expressions: vec![NodeSelectorRequirement {
                key: key.into(),
                operator,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        };
        let mut pod = shape(100, 1 << 20);
        pod.node_affinity = Some(NodeAffinity {
            terms: vec![
                term("zone", NodeSelectorOperator::In, &["b"]),
                term("cores", NodeSelectorOperator::Gt, &["2"]),
            ],
        });
        assert_eq!(fits(&pod, &n, &NodeState::default()), Ok(()));
        pod.node_affinity = Some(NodeAffinity {
            terms: vec![term("zone", NodeSelectorOperator::NotIn, &["a"])],
        });
        let misfit = fits(&pod, &n, &NodeState::default()).unwrap_err();
        assert_eq!(misfit, Misfit::NodeAffinity);
        assert_eq!(misfit.to_string(), "node affinity mismatch");
    }

    #[test]
    fn host_ports_conflict_and_copies_that_use_one_go_one_per_node() {
        let n = node(4000, 8 << 30, &[]);
        let port = |protocol, port| HostPort { protocol, port };
        let mut dns = shape(100, 1 << 20);
        dns.host_ports = vec![port(PortProtocol::Udp, 53), port(PortProtocol::Tcp, 53)];
        let mut state = NodeState::default();
        assert_eq!(copies_that_fit(&dns, &n, &state, 10), 1);
        state.place(&dns, 1);
        let misfit = fits(&dns, &n, &state).unwrap_err();
        assert_eq!(misfit.to_string(), "host port 53/UDP in use");
        assert_eq!(copies_that_fit(&dns, &n, &state, 10), 0);
        // Another protocol on the same number is another port.
        let mut sctp = shape(100, 1 << 20);
        sctp.host_ports = vec![port(PortProtocol::Sctp, 53)];
        assert_eq!(fits(&sctp, &n, &state), Ok(()));
        // No host ports, no limit beyond resources: 39 more of 100m in
        // the 3.9 CPUs left.
        assert_eq!(copies_that_fit(&shape(100, 1 << 20), &n, &state, 1000), 39);
    }

    fn web(namespace: &str, app: &str) -> PodShape {
        let mut pod = shape(100, 1 << 20);
        pod.namespace = namespace.into();
        pod.labels.insert("app".into(), app.into());
        pod
    }

    fn avoid(app: &str, namespaces: TermNamespaces) -> AntiAffinityTerm {
        AntiAffinityTerm {
            selector: LabelSelector {
                match_labels: BTreeMap::from([("app".into(), app.into())]),
                match_expressions: vec![],
            },
            namespaces,
        }
    }

    #[test]
    fn anti_affinity_keeps_pods_apart_in_both_directions() {
        let n = node(4000, 8 << 30, &[]);
        let mut state = NodeState::default();
        state.place(&web("shop", "db"), 1);

        // The incoming pod avoids what runs there.
        let mut picky = web("shop", "web");
        picky.anti_affinity = vec![avoid("db", TermNamespaces::Own)];
        assert_eq!(
            fits(&picky, &n, &state).unwrap_err().to_string(),
            "pod anti-affinity: a pod it avoids (namespace shop) runs there"
        );
        // Its own namespace by default: a db in another one is no matter.
        let mut elsewhere = NodeState::default();
        elsewhere.place(&web("blog", "db"), 1);
        assert_eq!(fits(&picky, &n, &elsewhere), Ok(()));
        picky.anti_affinity = vec![avoid("db", TermNamespaces::Listed(vec!["blog".into()]))];
        assert!(fits(&picky, &n, &elsewhere).is_err());

        // What runs there avoids the incoming pod (the scheduler's
        // symmetric check), though the incoming pod asks nothing.
        let mut loner = web("shop", "db");
        loner.anti_affinity = vec![avoid("web", TermNamespaces::Own)];
        let mut guarded = NodeState::default();
        guarded.place(&loner, 1);
        assert_eq!(
            fits(&web("shop", "web"), &n, &guarded)
                .unwrap_err()
                .to_string(),
            "pod anti-affinity of a pod there (namespace shop) keeps it off"
        );
        assert_eq!(fits(&web("blog", "web"), &n, &guarded), Ok(()));
    }

    #[test]
    fn a_pod_avoiding_its_own_kind_goes_one_per_node() {
        let n = node(4000, 8 << 30, &[]);
        let mut spread = web("shop", "cache");
        spread.anti_affinity = vec![avoid("cache", TermNamespaces::Own)];
        assert!(spread.one_per_node());
        let state = NodeState::default();
        assert_eq!(copies_that_fit(&spread, &n, &state, 5), 1);
        let mut one = state.clone();
        one.place(&spread, 1);
        assert_eq!(copies_that_fit(&spread, &n, &one, 5), 0);
        // Avoiding another kind does not limit copies of itself.
        let mut other = web("shop", "cache");
        other.anti_affinity = vec![avoid("db", TermNamespaces::Own)];
        assert!(!other.one_per_node());
        assert_eq!(copies_that_fit(&other, &n, &state, 5), 5);
    }

    #[test]
    fn copies_are_limited_by_the_scarcest_resource_extended_ones_included() {
        let mut n = node(16_000, 64 << 30, &[]);
        n.allocatable.extended.insert("nvidia.com/gpu".into(), 4);
        let mut trainer = shape(2000, 4 << 30);
        trainer.request.extended.insert("nvidia.com/gpu".into(), 1);
        let mut state = NodeState::default();
        assert_eq!(copies_that_fit(&trainer, &n, &state, 100), 4);
        state.place(&trainer, 3);
        assert_eq!(state.used().extended["nvidia.com/gpu"], 3);
        assert_eq!(copies_that_fit(&trainer, &n, &state, 100), 1);
        state.place(&trainer, 1);
        assert_eq!(
            fits(&trainer, &n, &state).unwrap_err().to_string(),
            "insufficient nvidia.com/gpu"
        );
        // Memory binds before CPU here: 8 GiB pods, 64 GiB node, 16 CPUs.
        let fat = shape(100, 8 << 30);
        assert_eq!(copies_that_fit(&fat, &n, &NodeState::default(), 100), 8);
        // A resource not requested never limits, even overcommitted.
        let over = NodeState::with_used(res(20_000, 0));
        assert_eq!(copies_that_fit(&shape(0, 1 << 30), &n, &over, 100), 64);
        // The want caps the answer.
        assert_eq!(copies_that_fit(&fat, &n, &NodeState::default(), 3), 3);
    }
}
