//! What the autoscaler keeps of a tenant cluster: its pods, nodes,
//! DaemonSets and PodDisruptionBudgets, each turned into a compact record
//! the moment it arrives from a watch, so that a cluster's memory cost is
//! what the simulation needs (about a few hundred bytes a pod), not the
//! objects the API server sends. The [`Mirror`] is fed by the watches'
//! events and counts as synced once every watch has listed once; past
//! [`MAX_PODS`] pods (listed or being listed) it says so, and the
//! autoscaler drops it and the watch.
//!
//! Everything here is a pure function of the objects read, so the
//! conversions are unit-tested from JSON as the API server writes it.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kubeforge_cluster::affinity::{
    AntiAffinityTerm, HostPort, LabelSelector, LabelSelectorOperator, LabelSelectorRequirement,
    NodeAffinity, NodeSelectorOperator, NodeSelectorRequirement, NodeSelectorTerm, PortProtocol,
    TermNamespaces,
};
use kubeforge_cluster::nodes::cpu_millis;
use kubeforge_cluster::scaledown::safe_to_evict;
use kubeforge_cluster::simulate::{
    counts_as_pending, pod_request, quantity_bytes, NodeShape, PodSchedulingFacts, PodShape,
    Resources, Toleration, TolerationOperator,
};
use kubeforge_cluster::spec::{Taint, TaintEffect, NODE_POOL_LABEL};

use crate::tenant::{DaemonSet, PodDisruptionBudget, WatchEvent};

/// The most pods one cluster's mirror holds; a larger cluster is reported
/// as too large for the builtin autoscaler rather than risking the
/// service's memory.
pub const MAX_PODS: usize = 100_000;

/// One pod, as the autoscaler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub facts: PodSchedulingFacts,
    pub shape: PodShape,
    pub labels: BTreeMap<String, String>,
    /// The kind of its controlling owner (`ReplicaSet`, `Job`, ...).
    pub owner_kind: Option<String>,
    /// Its `safe-to-evict` annotation, when it says true or false.
    pub safe_to_evict: Option<bool>,
    /// It mounts an `emptyDir` or `hostPath` volume.
    pub local_storage: bool,
    /// When the scheduler last said it cannot place it.
    pub unschedulable_since: Option<DateTime<Utc>>,
}

impl PodRecord {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn pending(&self) -> bool {
        counts_as_pending(&self.facts)
    }
}

/// One node, as the autoscaler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    pub shape: NodeShape,
    /// Its `kubeforge.io/node-pool` label.
    pub pool: Option<String>,
    pub ready: bool,
    /// Cordoned.
    pub unschedulable: bool,
}

/// Taints Kubernetes puts on a node while it comes up (or goes away),
/// which no ordinary pod tolerates: the node lifecycle controller removes
/// `not-ready` up to a few seconds after the Ready condition turns True.
pub const TRANSIENT_TAINTS: &[&str] = &[
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/network-unavailable",
    "node.cloudprovider.kubernetes.io/uninitialized",
];

impl NodeRecord {
    /// Ready, and rid of the taints of a node coming up: pods may land on
    /// it now. Until then a new node of an autoscaling pool stands in the
    /// simulation as its pool's template (it is on its way).
    pub fn settled(&self) -> bool {
        self.ready
            && !self
                .shape
                .taints
                .iter()
                .any(|t| TRANSIENT_TAINTS.contains(&t.key.as_str()))
    }
}

/// A DaemonSet: what its pod asks of every node it runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSetRecord {
    pub namespace: String,
    pub name: String,
    pub shape: PodShape,
}

/// A PodDisruptionBudget: which pods it guards, and how many of them may
/// go now.
#[derive(Debug, Clone, PartialEq)]
pub struct PdbRecord {
    pub namespace: String,
    pub name: String,
    pub scope: PdbScope,
    pub disruptions_allowed: i32,
}

/// Which pods of its namespace a budget guards.
#[derive(Debug, Clone, PartialEq)]
pub enum PdbScope {
    /// No selector: none (`policy/v1beta1`'s reading of a missing one).
    Nothing,
    Selected(LabelSelector),
    /// A selector that does not read (an operator this service does not
    /// know): taken to guard every pod of the namespace, the safe reading,
    /// which may keep a node but never loses a pod's budget.
    Unreadable,
}

impl PdbRecord {
    /// Whether the budget guards this pod.
    pub fn guards(&self, pod: &PodRecord) -> bool {
        pod.namespace == self.namespace
            && match &self.scope {
                PdbScope::Nothing => false,
                PdbScope::Selected(s) => s.matches(&pod.labels),
                PdbScope::Unreadable => true,
            }
    }
}

fn quantity(q: &Quantity, resource: &str) -> Option<u64> {
    match resource {
        "cpu" => cpu_millis(&q.0),
        _ => quantity_bytes(&q.0),
    }
}

/// Resources from a `resources.requests`-style map; a quantity that does
/// not parse counts as zero (the API server validated it, so this does
/// not happen with a real cluster).
pub fn resources(map: Option<&BTreeMap<String, Quantity>>) -> Resources {
    let mut r = Resources::default();
    for (name, q) in map.into_iter().flatten() {
        let v = quantity(q, name).unwrap_or(0);
        match name.as_str() {
            "cpu" => r.cpu_millis = v,
            "memory" => r.memory_bytes = v,
            "ephemeral-storage" => r.ephemeral_bytes = v,
            "pods" => r.pods = v,
            other => {
                r.extended.insert(other.to_string(), v);
            }
        }
    }
    r
}

/// A container's requests: its `requests`, or, where it sets a limit and
/// no request, the limit (the API server defaults requests from limits).
fn container_request(r: Option<&ResourceRequirements>) -> Resources {
    let Some(r) = r else {
        return Resources::default();
    };
    let mut merged: BTreeMap<String, Quantity> = r.limits.clone().unwrap_or_default();
    merged.extend(r.requests.clone().unwrap_or_default());
    resources(Some(&merged))
}

fn toleration(t: &k8s_openapi::api::core::v1::Toleration) -> Toleration {
    Toleration {
        key: t.key.clone().filter(|k| !k.is_empty()),
        operator: match t.operator.as_deref() {
            Some("Exists") => TolerationOperator::Exists,
            _ => TolerationOperator::Equal,
        },
        value: t.value.clone(),
        effect: match t.effect.as_deref() {
            Some("NoSchedule") => Some(TaintEffect::NoSchedule),
            Some("PreferNoSchedule") => Some(TaintEffect::PreferNoSchedule),
            Some("NoExecute") => Some(TaintEffect::NoExecute),
            _ => None,
        },
    }
}

/// A label selector as the simulation reads it; None if an operator is
/// one this service does not know.
pub fn label_selector(
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Option<LabelSelector> {
    let match_expressions = s
        .match_expressions
        .iter()
        .flatten()
        .map(|r| {
            Some(LabelSelectorRequirement {
                key: r.key.clone(),
                operator: match r.operator.as_str() {
                    "In" => LabelSelectorOperator::In,
                    "NotIn" => LabelSelectorOperator::NotIn,
                    "Exists" => LabelSelectorOperator::Exists,
                    "DoesNotExist" => LabelSelectorOperator::DoesNotExist,
                    _ => return None,
                },
                values: r.values.clone().unwrap_or_default(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(LabelSelector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions,
    })
}

/// Required node affinity; None when the pod has none. A term with an
/// operator this service does not know matches nothing (the scheduler
/// refuses such a pod anyway).
fn node_affinity(a: Option<&k8s_openapi::api::core::v1::Affinity>) -> Option<NodeAffinity> {
    let required = a?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    let terms = required
        .node_selector_terms
        .iter()
        .map(|t| NodeSelectorTerm {
            match_expressions: t
                .match_expressions
                .iter()
                .flatten()
                .map(|r| NodeSelectorRequirement {
                    key: r.key.clone(),
                    operator: match r.operator.as_str() {
                        "In" => NodeSelectorOperator::In,
                        "NotIn" => NodeSelectorOperator::NotIn,
                        "Exists" => NodeSelectorOperator::Exists,
                        "DoesNotExist" => NodeSelectorOperator::DoesNotExist,
                        "Gt" => NodeSelectorOperator::Gt,
                        "Lt" => NodeSelectorOperator::Lt,
                        // Matches no label: an In over no values.
                        _ => NodeSelectorOperator::In,
                    },
                    values: if matches!(
                        r.operator.as_str(),
                        "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt"
                    ) {
                        r.values.clone().unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        })
        .collect();
    Some(NodeAffinity { terms })
}

/// Required anti-affinity terms on `kubernetes.io/hostname` (others span
/// nodes and are not simulated; see `kubeforge_cluster::affinity`).
fn anti_affinity(a: Option<&k8s_openapi::api::core::v1::Affinity>) -> Vec<AntiAffinityTerm> {
    let Some(required) = a.and_then(|a| a.pod_anti_affinity.as_ref()).and_then(|p| {
        p.required_during_scheduling_ignored_during_execution
            .as_ref()
    }) else {
        return Vec::new();
    };
    required
        .iter()
        .filter(|t| t.topology_key == "kubernetes.io/hostname")
        .filter_map(|t| {
            Some(AntiAffinityTerm {
                selector: label_selector(t.label_selector.as_ref()?)?,
                namespaces: match (&t.namespaces, &t.namespace_selector) {
                    (_, Some(sel))
                        if sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                            && sel.match_expressions.as_ref().is_none_or(Vec::is_empty) =>
                    {
                        TermNamespaces::All
                    }
                    (Some(list), _) if !list.is_empty() => TermNamespaces::Listed(list.clone()),
                    _ => TermNamespaces::Own,
                },
            })
        })
        .collect()
}

/// The host ports of a pod's containers.
fn host_ports(spec: &PodSpec) -> Vec<HostPort> {
    let mut ports: Vec<HostPort> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = u16::try_from(p.host_port?).ok().filter(|p| *p > 0)?;
            let protocol = match p.protocol.as_deref() {
                Some("UDP") => PortProtocol::Udp,
                Some("SCTP") => PortProtocol::Sctp,
                _ => PortProtocol::Tcp,
            };
            Some(HostPort { protocol, port })
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// What a pod (in `namespace`, labelled `labels`) asks of a node.
pub fn pod_shape(spec: &PodSpec, namespace: &str, labels: &BTreeMap<String, String>) -> PodShape {
    let containers: Vec<Resources> = spec
        .containers
        .iter()
        .map(|c| container_request(c.resources.as_ref()))
        .collect();
    let init: Vec<Resources> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_request(c.resources.as_ref()))
        .collect();
    let overhead = resources(spec.overhead.as_ref());
    PodShape {
        request: pod_request(&containers, &init, &overhead),
        node_selector: spec.node_selector.clone().unwrap_or_default(),
        node_affinity: node_affinity(spec.affinity.as_ref()),
        tolerations: spec.tolerations.iter().flatten().map(toleration).collect(),
        host_ports: host_ports(spec),
        namespace: namespace.to_string(),
        labels: labels.clone(),
        anti_affinity: anti_affinity(spec.affinity.as_ref()),
    }
}

/// A pod as a record; None without a name or spec.
pub fn pod_record(p: &Pod) -> Option<PodRecord> {
    let meta = &p.metadata;
    let spec = p.spec.as_ref()?;
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let annotations = meta.annotations.as_ref();
    let scheduled = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
    let unschedulable = scheduled
        .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let labels = meta.labels.clone().unwrap_or_default();
    Some(PodRecord {
        shape: pod_shape(spec, &namespace, &labels),
        namespace,
        uid: meta.uid.clone().unwrap_or_default(),
        name: meta.name.clone()?,
        facts: PodSchedulingFacts {
            unschedulable,
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            nominated_node: p
                .status
                .as_ref()
                .and_then(|s| s.nominated_node_name.clone())
                .filter(|n| !n.is_empty()),
            daemonset: owner.is_some_and(|o| o.kind == "DaemonSet"),
            mirror: annotations.is_some_and(|a| a.contains_key("kubernetes.io/config.mirror")),
            terminating: meta.deletion_timestamp.is_some(),
        },
        labels,
        owner_kind: owner.map(|o| o.kind.clone()),
        safe_to_evict: annotations.and_then(safe_to_evict),
        local_storage: spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.empty_dir.is_some() || v.host_path.is_some()),
        unschedulable_since: scheduled
            .filter(|_| unschedulable)
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(crate::tenant::time),
    })
}

/// A node as a record; None without a name.
pub fn node_record(n: &Node) -> Option<NodeRecord> {
    let name = n.metadata.name.clone()?;
    let labels = n.metadata.labels.clone().unwrap_or_default();
    let status = n.status.as_ref();
    let spec = n.spec.as_ref();
    let taints = spec
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some(Taint {
                key: t.key.clone(),
                value: t.value.clone().filter(|v| !v.is_empty()),
                effect: match t.effect.as_str() {
                    "NoSchedule" => TaintEffect::NoSchedule,
                    "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
                    "NoExecute" => TaintEffect::NoExecute,
                    _ => return None,
                },
            })
        })
        .collect();
    Some(NodeRecord {
        pool: labels.get(NODE_POOL_LABEL).cloned(),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True"),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        shape: NodeShape {
            allocatable: resources(status.and_then(|s| s.allocatable.as_ref())),
            labels,
            taints,
        },
        name,
    })
}

/// A DaemonSet as a record; None without a name.
pub fn daemonset_record(d: &DaemonSet) -> Option<DaemonSetRecord> {
    let template = &d.spec.as_ref()?.template;
    let spec = template.spec.as_ref()?;
    let namespace = d.metadata.namespace.clone().unwrap_or_default();
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    Some(DaemonSetRecord {
        shape: pod_shape(spec, &namespace, &labels),
        namespace,
        name: d.metadata.name.clone()?,
    })
}

/// A PodDisruptionBudget as a record; None without a name.
pub fn pdb_record(p: &PodDisruptionBudget) -> Option<PdbRecord> {
    let selector = p.spec.as_ref().and_then(|s| s.selector.as_ref());
    Some(PdbRecord {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone()?,
        scope: match selector.map(label_selector) {
            None => PdbScope::Nothing,
            Some(Some(s)) => PdbScope::Selected(s),
            Some(None) => PdbScope::Unreadable,
        },
        disruptions_allowed: p.status.as_ref().map_or(0, |s| s.disruptions_allowed),
    })
}

/// One kind of object, kept by key, replaced whole on every re-list.
#[derive(Debug)]
pub struct Kept<T> {
    pub items: HashMap<String, T>,
    /// Filled between `Init` and `InitDone`.
    listing: Option<HashMap<String, T>>,
    /// Listed at least once.
    pub synced: bool,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept {
            items: HashMap::new(),
            listing: None,
            synced: false,
        }
    }
}

/// What one watch event changed, for the caller to react to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Keys of objects added or changed (all of them after a re-list).
    pub applied: Vec<String>,
    pub relisted: bool,
}

impl<T> Kept<T> {
    /// Applies one event, converting each object with `record` (`key`
    /// names it); objects that do not convert are ignored.
    pub fn apply<K>(
        &mut self,
        event: WatchEvent<K>,
        record: impl Fn(&K) -> Option<(String, T)>,
    ) -> Changed {
        match event {
            WatchEvent::Init => {
                self.listing = Some(HashMap::new());
                Changed::default()
            }
            WatchEvent::InitApply(o) => {
                if let (Some(l), Some((k, v))) = (self.listing.as_mut(), record(&o)) {
                    l.insert(k, v);
                }
                Changed::default()
            }
            WatchEvent::InitDone => {
                self.items = self.listing.take().unwrap_or_default();
                self.synced = true;
                Changed {
                    applied: self.items.keys().cloned().collect(),
                    relisted: true,
                }
            }
            WatchEvent::Apply(o) => match record(&o) {
                Some((k, v)) => {
                    self.items.insert(k.clone(), v);
                    Changed {
                        applied: vec![k],
                        relisted: false,
                    }
                }
                None => Changed::default(),
            },
            WatchEvent::Delete(o) => {
                if let Some((k, _)) = record(&o) {
                    self.items.remove(&k);
                }
                Changed::default()
            }
        }
    }

    pub fn len(&self) -> usize {
        self.items.len() + self.listing.as_ref().map_or(0, HashMap::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything the watches of one cluster keep.
#[derive(Debug, Default)]
pub struct Mirror {
    pub pods: Kept<PodRecord>,
    pub nodes: Kept<NodeRecord>,
    pub daemonsets: Kept<DaemonSetRecord>,
    pub pdbs: Kept<PdbRecord>,
}

impl Mirror {
    /// Every watch has listed once.
    pub fn synced(&self) -> bool {
        self.pods.synced && self.nodes.synced && self.daemonsets.synced && self.pdbs.synced
    }

    /// Past [`MAX_PODS`]: the builtin autoscaler stops for this cluster.
    pub fn too_large(&self) -> bool {
        self.pods.len() > MAX_PODS
    }

    /// Applies a pod event; returns the pods that are pending after it and
    /// were not before (new arrivals for the batch).
    pub fn pod_event(&mut self, event: WatchEvent<Pod>) -> Vec<String> {
        let before: Option<Vec<(String, bool)>> = match &event {
            WatchEvent::Apply(p) => pod_record(p).map(|r| {
                let key = r.key();
                let was = self.pods.items.get(&key).is_some_and(PodRecord::pending);
                vec![(key, was)]
            }),
            _ => None,
        };
        let relist_pending: Vec<String> = match &event {
            WatchEvent::InitDone => self
                .pods
                .items
                .iter()
                .filter(|(_, p)| p.pending())
                .map(|(k, _)| k.clone())
                .collect(),
            _ => Vec::new(),
        };
        let changed = self
            .pods
            .apply(event, |p| pod_record(p).map(|r| (r.key(), r)));
        let was_pending = |k: &String| -> bool {
            before
                .as_ref()
                .and_then(|b| b.iter().find(|(bk, _)| bk == k).map(|(_, w)| *w))
                .unwrap_or_else(|| changed.relisted && relist_pending.contains(k))
        };
        changed
            .applied
            .into_iter()
            .filter(|k| self.pods.items.get(k).is_some_and(PodRecord::pending) && !was_pending(k))
            .collect()
    }

    /// Applies a node event; returns the nodes that became Ready with it.
    pub fn node_event(&mut self, event: WatchEvent<Node>) -> Vec<String> {
        let was_ready: HashMap<String, bool> = self
            .nodes
            .items
            .iter()
            .map(|(k, n)| (k.clone(), n.ready))
            .collect();
        let changed = self
            .nodes
            .apply(event, |n| node_record(n).map(|r| (r.name.clone(), r)));
        changed
            .applied
            .into_iter()
            .filter(|k| {
                self.nodes.items.get(k).is_some_and(|n| n.ready)
                    && !was_ready.get(k).copied().unwrap_or(false)
            })
            .collect()
    }

    pub fn daemonset_event(&mut self, event: WatchEvent<DaemonSet>) {
        self.daemonsets.apply(event, |d| {
            daemonset_record(d).map(|r| (format!("{}/{}", r.namespace, r.name), r))
        });
    }

    pub fn pdb_event(&mut self, event: WatchEvent<PodDisruptionBudget>) {
        self.pdbs.apply(event, |p| {
            pdb_record(p).map(|r| (format!("{}/{}", r.namespace, r.name), r))
        });
    }

    /// Pods counted as pending, in a stable order (by key).
    pub fn pending(&self) -> Vec<&PodRecord> {
        let mut v: Vec<&PodRecord> = self.pods.items.values().filter(|p| p.pending()).collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    /// What is requested on each node by the pods bound to it (pods that
    /// are on their way out still hold their room until they are gone).
    pub fn used_by_node(&self) -> HashMap<&str, Resources> {
        let mut used: HashMap<&str, Resources> = HashMap::new();
        for p in self.pods.items.values() {
            if let Some(node) = p.facts.node_name.as_deref() {
                let e = used.entry(node).or_default();
                *e = e.plus(&p.shape.request);
            }
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeforge_cluster::scaledown::SAFE_TO_EVICT;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn pending_pod(name: &str, cpu: &str) -> Pod {
        pod(json!({
            "metadata": {"name": name, "namespace": "default",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-1", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "x",
                                     "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
            "status": {"phase": "Pending",
                       "conditions": [{"type": "PodScheduled", "status": "False",
                                       "reason": "Unschedulable",
                                       "lastTransitionTime": "2026-12-02T00:00:00Z"}]}
        }))
    }

    #[test]
    fn a_pending_pod_reads_with_its_request_owner_and_since() {
        let r = pod_record(&pending_pod("web-1-a", "500m")).unwrap();
        assert!(r.pending());
        assert_eq!(r.key(), "default/web-1-a");
        assert_eq!(r.shape.request.cpu_millis, 500);
        assert_eq!(r.shape.request.memory_bytes, 64 << 20);
        assert_eq!(r.shape.request.pods, 1);
        assert_eq!(r.owner_kind.as_deref(), Some("ReplicaSet"));
        assert_eq!(
            r.unschedulable_since.unwrap().to_rfc3339(),
            "2026-12-02T00:00:00+00:00"
        );
        assert!(!r.local_storage);
        assert_eq!(r.safe_to_evict, None);
    }

    #[test]
    fn init_containers_limits_overhead_tolerations_and_extended_resources() {
        let r = pod_record(&pod(json!({
            "metadata": {"name": "p", "namespace": "ml",
                         "annotations": {SAFE_TO_EVICT: "false"}},
            "spec": {
                "initContainers": [{"name": "i", "image": "x",
                                    "resources": {"requests": {"cpu": "2"}}}],
                "containers": [
                    {"name": "a", "image": "x", "resources": {"limits": {"cpu": "300m", "nvidia.com/gpu": "1"}}},
                    {"name": "b", "image": "x", "resources": {"requests": {"cpu": "200m", "memory": "1Gi"}}}
                ],
                "overhead": {"cpu": "100m"},
                "nodeSelector": {"gpu": "true"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "volumes": [{"name": "scratch", "emptyDir": {}}]
            }
        })))
        .unwrap();
        // max(init 2000m, containers 300m + 200m) + overhead 100m.
        assert_eq!(r.shape.request.cpu_millis, 2100);
        assert_eq!(r.shape.request.memory_bytes, 1 << 30);
        assert_eq!(r.shape.request.extended.get("nvidia.com/gpu"), Some(&1));
        assert_eq!(
            r.shape.node_selector.get("gpu").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            r.shape.tolerations,
            [Toleration {
                key: Some("gpu".into()),
                operator: TolerationOperator::Exists,
                value: None,
                effect: Some(TaintEffect::NoSchedule),
            }]
        );
        assert!(r.local_storage);
        assert_eq!(r.safe_to_evict, Some(false));
        assert_eq!(r.owner_kind, None);
        assert!(!r.pending(), "no PodScheduled=False yet: not pending");
    }

    #[test]
    fn a_node_reads_with_pool_readiness_allocatable_and_taints() {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {NODE_POOL_LABEL: "default", "zone": "a"}},
            "spec": {"taints": [{"key": "gpu", "value": "true", "effect": "NoSchedule"}],
                     "unschedulable": true},
            "status": {"allocatable": {"cpu": "900m", "memory": "1692Mi", "pods": "110",
                                       "ephemeral-storage": "10Gi"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let r = node_record(&n).unwrap();
        assert_eq!(r.pool.as_deref(), Some("default"));
        assert!(r.ready && r.unschedulable);
        assert_eq!(r.shape.allocatable.cpu_millis, 900);
        assert_eq!(r.shape.allocatable.memory_bytes, 1692 << 20);
        assert_eq!(r.shape.allocatable.pods, 110);
        assert_eq!(r.shape.allocatable.ephemeral_bytes, 10 << 30);
        assert_eq!(r.shape.taints[0].value.as_deref(), Some("true"));
    }

    #[test]
    fn the_mirror_reports_new_pending_pods_once_and_replaces_on_relist() {
        let mut m = Mirror::default();
        m.pod_event(WatchEvent::Init);
        m.pod_event(WatchEvent::InitApply(pending_pod("a", "1")));
        assert!(m.pods.items.is_empty(), "nothing is kept before InitDone");
        let arrived = m.pod_event(WatchEvent::InitDone);
        assert_eq!(arrived, ["default/a"]);
        assert!(m.pods.synced && !m.synced());
        // The same pod changing again is not a new arrival.
        assert!(m
            .pod_event(WatchEvent::Apply(pending_pod("a", "1")))
            .is_empty());
        assert_eq!(
            m.pod_event(WatchEvent::Apply(pending_pod("b", "1"))),
            ["default/b"]
        );
        // Bound: no longer pending; then a re-list without it drops it.
        let mut bound = pending_pod("b", "1");
        bound.spec.as_mut().unwrap().node_name = Some("n1".into());
        assert!(m.pod_event(WatchEvent::Apply(bound)).is_empty());
        assert_eq!(m.pending().len(), 1);
        assert_eq!(m.used_by_node()["n1"].cpu_millis, 1000);
        m.pod_event(WatchEvent::Init);
        m.pod_event(WatchEvent::InitApply(pending_pod("a", "1")));
        assert!(
            m.pod_event(WatchEvent::InitDone).is_empty(),
            "a was pending already"
        );
        assert_eq!(m.pods.items.len(), 1);
        m.pod_event(WatchEvent::Delete(pending_pod("a", "1")));
        assert!(m.pending().is_empty());
    }

    #[test]
    fn a_node_becoming_ready_is_reported_once() {
        let node = |ready: &str| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": "n1"},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}
            }))
            .unwrap()
        };
        let mut m = Mirror::default();
        m.node_event(WatchEvent::Init);
        m.node_event(WatchEvent::InitApply(node("False")));
        assert!(m.node_event(WatchEvent::InitDone).is_empty());
        assert_eq!(m.node_event(WatchEvent::Apply(node("True"))), ["n1"]);
        assert!(m.node_event(WatchEvent::Apply(node("True"))).is_empty());
    }

    #[test]
    fn budgets_guard_by_labels_and_expressions_guard_the_namespace() {
        let b: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}},
            "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1,
                       "expectedPods": 1}
        }))
        .unwrap();
        let b = pdb_record(&b).unwrap();
        let mut p = pod_record(&pending_pod("x", "1")).unwrap();
        assert!(!b.guards(&p));
        p.labels.insert("app".into(), "web".into());
        assert!(b.guards(&p));
        p.namespace = "other".into();
        assert!(!b.guards(&p));
        let unread = PdbRecord {
            scope: PdbScope::Unreadable,
            namespace: "other".into(),
            ..b
        };
        assert!(
            unread.guards(&p),
            "an unreadable selector guards the namespace"
        );
    }
}
