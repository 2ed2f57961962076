//! A tenant cluster's nodes, pods and certificate requests as the service's
//! decisions see them, and the decisions that need nothing else: CPU
//! accounting, which pods a drain must evict, and what blocks a drain.
//!
//! The service's `tenant` module reads these from the tenant's API server
//! and hands them here; nothing in this module knows how they were read,
//! so every rule is tested with plain values.

use std::collections::HashMap;

/// A Node, as far as the pool engine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// The Ready condition is True.
    pub ready: bool,
    /// The Ready condition's reason and message (`Reason: message`), or
    /// why there is none.
    pub why: String,
    /// The node pool label's value, when the node has one.
    pub pool: Option<String>,
    /// Cordoned.
    pub unschedulable: bool,
    /// When the Node object was created (the node registered).
    pub registered_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Since when the Ready condition has been True, when it is.
    pub ready_since: Option<chrono::DateTime<chrono::Utc>>,
    /// The pod range the controller manager allocated (`spec.podCIDR`),
    /// when it has and it parses.
    pub pod_cidr: Option<crate::network::Ipv4Cidr>,
    /// `status.capacity`, resource name to quantity as the API server
    /// shows it (`cpu: "2"`, `nvidia.com/gpu: "1"`).
    pub capacity: std::collections::BTreeMap<String, String>,
}

/// A Pod, as far as drains and CPU accounting care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    /// `spec.nodeName`, once bound.
    pub node: Option<String>,
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`, ...).
    pub phase: String,
    /// The sum of its containers' CPU requests, in millicores.
    pub cpu_requested_millis: u64,
    /// Owned by a DaemonSet: a drain leaves it (its controller would put
    /// it straight back).
    pub daemonset: bool,
    /// A static pod's mirror: the API cannot evict it.
    pub mirror: bool,
    /// Has a deletion timestamp: on its way out already.
    pub terminating: bool,
}

impl PodView {
    /// Succeeded or Failed: holds no resources and needs no eviction.
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_str(), "Succeeded" | "Failed")
    }
}

/// A certificate signing request, as far as the join approver cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrView {
    pub name: String,
    /// Who made it (`spec.username`).
    pub username: String,
    pub signer: String,
    /// The PKCS#10 request, PEM.
    pub request: Vec<u8>,
    /// Neither approved nor denied yet.
    pub pending: bool,
}

/// A Kubernetes CPU quantity (`250m`, `1`, `0.5`) in millicores; None for
/// anything else.
pub fn cpu_millis(q: &str) -> Option<u64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().ok();
    }
    let cores: f64 = q.parse().ok()?;
    (cores.is_finite() && cores >= 0.0).then(|| (cores * 1000.0).round() as u64)
}

/// CPU requested per node, in millicores, by the pods bound to it that
/// have not finished.
pub fn cpu_requested<'a>(pods: impl IntoIterator<Item = &'a PodView>) -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    for p in pods.into_iter().filter(|p| !p.finished()) {
        if let Some(node) = &p.node {
            *out.entry(node.clone()).or_default() += p.cpu_requested_millis;
        }
    }
    out
}

/// What a drain of `node` still waits for: the pods bound to it that have
/// not finished, other than DaemonSet pods and static pods' mirrors (as
/// `kubectl drain --ignore-daemonsets --force --delete-emptydir-data`).
/// Terminating pods count: the node is drained when they are gone.
pub fn drain_remaining<'a>(pods: &'a [PodView], node: &str) -> Vec<&'a PodView> {
    pods.iter()
        .filter(|p| p.node.as_deref() == Some(node))
        .filter(|p| !p.finished() && !p.daemonset && !p.mirror)
        .collect()
}

/// The answer of the Eviction API for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    /// Accepted: the pod is being deleted gracefully.
    Evicted,
    /// Refused for now (429: a PodDisruptionBudget, or the API server's
    /// eviction rate), with the server's message.
    Blocked(String),
    /// The pod is gone already.
    Gone,
}

/// Where one drain stands after a slice of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainProgress {
    /// Nothing left to evict or wait for; `evicted` pods were evicted in
    /// this slice.
    Drained { evicted: usize },
    /// Pods remain; `blocking` says why (the latest refusal, or the pods
    /// still terminating).
    Pending { evicted: usize, blocking: String },
}

/// What blocks a drain, in one line: the latest refusal naming a
/// disruption budget, else the latest refusal, else the pods still on
/// their way out.
pub fn blocking_reason(refusals: &[String], remaining: &[&PodView]) -> String {
    if let Some(r) = refusals
        .iter()
        .rev()
        .find(|r| r.contains("disruption budget"))
        .or_else(|| refusals.last())
    {
        return r.clone();
    }
    let names: Vec<String> = remaining
        .iter()
        .take(3)
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    match remaining.len() {
        0 => "the drain did not finish".into(),
        n if n <= 3 => format!("waiting for {} to terminate", names.join(", ")),
        n => format!(
            "waiting for {} and {} more pods to terminate",
            names.join(", "),
            n - 3
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, cpu: u64) -> PodView {
        PodView {
            namespace: "default".into(),
            name: name.into(),
            node: node.map(str::to_string),
            phase: phase.into(),
            cpu_requested_millis: cpu,
            daemonset: false,
            mirror: false,
            terminating: false,
        }
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpu_millis("250m"), Some(250));
        assert_eq!(cpu_millis("1"), Some(1000));
        assert_eq!(cpu_millis("0.5"), Some(500));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(cpu_millis("x"), None);
        assert_eq!(cpu_millis("-1"), None);
        assert_eq!(cpu_millis("NaN"), None);
    }

    #[test]
    fn cpu_is_counted_per_node_for_unfinished_bound_pods() {
        let pods = [
            pod("a", Some("n1"), "Running", 250),
            pod("b", Some("n1"), "Pending", 100),
            pod("c", Some("n1"), "Succeeded", 900),
            pod("d", Some("n2"), "Running", 1000),
            pod("e", None, "Pending", 500),
        ];
        let req = cpu_requested(&pods);
        assert_eq!(req["n1"], 350);
        assert_eq!(req["n2"], 1000);
        assert_eq!(req.len(), 2);
    }

    #[test]
    fn a_drain_leaves_daemonsets_mirrors_and_finished_pods_and_waits_for_terminating_ones() {
        let mut ds = pod("ds", Some("n1"), "Running", 0);
        ds.daemonset = true;
        let mut mirror = pod("static", Some("n1"), "Running", 0);
        mirror.mirror = true;
        let mut going = pod("going", Some("n1"), "Running", 0);
        going.terminating = true;
        let pods = [
            pod("web", Some("n1"), "Running", 100),
            pod("done", Some("n1"), "Failed", 0),
            pod("other", Some("n2"), "Running", 0),
            ds,
            mirror,
            going,
        ];
        let left: Vec<&str> = drain_remaining(&pods, "n1")
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(left, ["web", "going"]);
    }

    #[test]
    fn the_blocking_reason_prefers_a_budget_refusal() {
        let pdb = "Cannot evict pod as it would violate the pod's disruption budget.";
        let refusals = vec![pdb.to_string(), "Too many requests".to_string()];
        assert_eq!(blocking_reason(&refusals, &[]), pdb);
        assert_eq!(
            blocking_reason(&["Too many requests".into()], &[]),
            "Too many requests"
        );
        let pods: Vec<PodView> = (0..5)
            .map(|i| pod(&format!("p{i}"), Some("n"), "Running", 0))
            .collect();
        let remaining: Vec<&PodView> = pods.iter().collect();
        assert_eq!(
            blocking_reason(&[], &remaining[..2]),
            "waiting for default/p0, default/p1 to terminate"
        );
        assert_eq!(
            blocking_reason(&[], &remaining),
            "waiting for default/p0, default/p1, default/p2 and 2 more pods to terminate"
        );
        assert_eq!(blocking_reason(&[], &[]), "the drain did not finish");
    }
}
