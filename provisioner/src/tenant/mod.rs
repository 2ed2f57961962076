//! A tenant cluster, as the service talks to it: the Kubernetes API of that
//! cluster, through a small trait ([`TenantApi`]) and one implementation
//! over a `kube` client ([`KubeTenant`]).
//!
//! **Identity.** The service holds no admin credential for any cluster.
//! For each cluster it mints a client certificate from the cluster's CA for
//! [`kubeforge_cluster::addons::SERVICE_USER`] (no group), valid for
//! [`IDENTITY_TTL`], and keeps the client in memory ([`Clients`]) until a
//! quarter of that is left. What that user may do is the ClusterRole and
//! Role of `kubeforge_cluster::addons`, which every control-plane member
//! applies from its bundle; nothing more.
//!
//! **Reach.** The client talks to the cluster's endpoint directly (the
//! load balancer, or the single member), the same address the tenants'
//! kubeconfigs name. A cluster whose endpoint the service cannot reach
//! could not hand its tenants a working kubeconfig either, so this adds no
//! requirement; tunnelling through SSH (direct-tcpip) is left for a
//! provider whose endpoint is private to the service, which none is yet.
//!
//! **Versions.** The clusters run Kubernetes 1.20; `k8s-openapi` is built
//! for a newer API, whose core/v1, certificates/v1 and meta types read 1.20
//! objects unchanged (the lab tests run every call here against a real
//! 1.20 API server). Eviction is the exception: 1.20 serves it as
//! `policy/v1beta1` only, so [`KubeTenant`] sends that version itself.
//!
//! **Names.** Every name read from a tenant cluster (nodes, pods, CSRs) is
//! checked as a DNS-1123 subdomain before the service uses it; nothing from
//! a tenant cluster reaches a shell or a URL unchecked.

mod kube;

pub(crate) use self::kube::time;
pub use self::kube::KubeTenant;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use kubeforge_cluster::nodes::{
    blocking_reason, drain_remaining, CsrView, DrainProgress, Eviction, NodeView, PodView,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::error::Result;

/// How long one minted service identity is valid.
pub const IDENTITY_TTL: TimeDelta = TimeDelta::hours(1);
/// Grace period of an eviction, as `kubectl drain --grace-period=30`.
pub const EVICTION_GRACE_SECONDS: i64 = 30;

/// The Kubernetes API of one tenant cluster, as the engine uses it.
#[async_trait]
pub trait TenantApi: Send + Sync {
    /// `GET /readyz` answered `ok`.
    async fn ready(&self) -> Result<()>;
    async fn nodes(&self) -> Result<Vec<NodeView>>;
    /// Every pod, or those bound to `node`.
    async fn pods(&self, node: Option<&str>) -> Result<Vec<PodView>>;
    /// Marks a node unschedulable.
    async fn cordon(&self, node: &str) -> Result<()>;
    /// Asks the Eviction API to evict a pod.
    async fn evict(&self, namespace: &str, pod: &str) -> Result<Eviction>;
    /// Deletes a Node object; one that is gone already is fine.
    async fn delete_node(&self, name: &str) -> Result<()>;
    /// Adds `resources` (extended resources such as `nvidia.com/gpu`, by
    /// name and quantity) to the node's `status.capacity`, as an admin
    /// advertises what a node has that kubelet cannot see; kubelet keeps
    /// them and derives their allocatable.
    async fn advertise_capacity(
        &self,
        node: &str,
        resources: &std::collections::BTreeMap<String, String>,
    ) -> Result<()>;
    /// Creates or updates (server-side apply, as `kubeforge`) a Secret in
    /// `kube-system` that the service owns.
    async fn apply_system_secret(&self, name: &str, object: &serde_json::Value) -> Result<()>;
    /// Deletes a Secret in `kube-system`; one that is gone already is fine.
    async fn delete_system_secret(&self, name: &str) -> Result<()>;
    async fn csrs(&self) -> Result<Vec<CsrView>>;
    /// The nodes as they change: a full list first ([`NodeEvent::Listed`],
    /// again whenever the watch restarts), then each change. The stream
    /// re-lists and re-watches by itself after errors (each error is also
    /// yielded, for the caller to log); it ends when dropped.
    fn watch_nodes(&self) -> futures::stream::BoxStream<'static, Result<NodeEvent>>;
    /// The Node objects themselves (what the autoscaler reads of them:
    /// allocatable, labels, taints); see [`Watched`].
    fn watch_node_objects(&self) -> Watched<Node>;
    /// Every pod that is not finished (phase neither Succeeded nor Failed),
    /// as it changes; see [`Watched`].
    fn watch_pods(&self) -> Watched<Pod>;
    fn watch_daemonsets(&self) -> Watched<DaemonSet>;
    /// PodDisruptionBudgets, in the `policy/v1` shape whichever version
    /// the cluster serves (1.20 serves `v1beta1` only; the fields the
    /// autoscaler reads are the same).
    fn watch_pdbs(&self) -> Watched<PodDisruptionBudget>;
    /// Every Service, as it changes (cluster DNS); see [`Watched`].
    fn watch_services(&self) -> Watched<Service>;
    /// Every Endpoints object, as it changes (cluster DNS: the ready
    /// addresses of headless Services); see [`Watched`].
    fn watch_endpoints(&self) -> Watched<Endpoints>;
    /// Points the `kube-dns` Service (selector-less, from the addons) at
    /// the service's DNS server: the `kube-system/kube-dns` Endpoints,
    /// applied server-side as `kubeforge`.
    async fn apply_dns_endpoints(&self, address: std::net::SocketAddrV4) -> Result<()>;
    /// Records a Kubernetes Event on a pod (`kubectl describe pod` shows
    /// it), from the `kubeforge-autoscaler` component.
    async fn pod_event(
        &self,
        pod: &PodRef,
        warning: bool,
        reason: &str,
        message: &str,
    ) -> Result<()>;
    /// Approves or denies a pending CSR, with a reason and a message.
    async fn decide_csr(
        &self,
        name: &str,
        approve: bool,
        reason: &str,
        message: &str,
    ) -> Result<()>;
}

/// A watch of every object of a kind: `Init`, each object as `InitApply`,
/// `InitDone` (again whenever the watch restarts), then `Apply` and
/// `Delete` per change. It re-lists and re-watches by itself after errors,
/// backing off (each error is also yielded, for the caller to log); it
/// ends when dropped. Objects come whole: a caller that keeps them should
/// keep only what it needs.
pub type Watched<K> = futures::stream::BoxStream<'static, Result<WatchEvent<K>>>;

pub use ::kube::runtime::watcher::Event as WatchEvent;
pub use k8s_openapi::api::apps::v1::DaemonSet;
pub use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
pub use k8s_openapi::api::policy::v1::PodDisruptionBudget;

/// A pod an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// One change of a cluster's nodes, from [`TenantApi::watch_nodes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// Every node, as of a (re)started watch.
    Listed(Vec<NodeView>),
    /// A node was added or changed.
    Applied(NodeView),
    /// A node was deleted.
    Deleted(String),
}

/// Drains `node` for at most `slice`: cordons it, asks the Eviction API to
/// evict every pod a drain must move ([`drain_remaining`]), and waits for
/// them to go. PodDisruptionBudgets hold (the API refuses, and the refusal
/// is the blocking reason). Called again on the next pass until drained.
pub async fn drain(api: &dyn TenantApi, node: &str, slice: Duration) -> Result<DrainProgress> {
    let deadline = Instant::now() + slice;
    api.cordon(node).await?;
    let mut evicted = 0;
    loop {
        let pods = api.pods(Some(node)).await?;
        let remaining = drain_remaining(&pods, node);
        if remaining.is_empty() {
            return Ok(DrainProgress::Drained { evicted });
        }
        let mut refusals = Vec::new();
        for p in remaining.iter().filter(|p| !p.terminating) {
            match api.evict(&p.namespace, &p.name).await? {
                Eviction::Evicted => evicted += 1,
                Eviction::Gone => {}
                Eviction::Blocked(why) => refusals.push(format!(
                    "eviction of pod {}/{} refused: {why}",
                    p.namespace, p.name
                )),
            }
        }
        if Instant::now() >= deadline {
            return Ok(DrainProgress::Pending {
                evicted,
                blocking: blocking_reason(&refusals, &remaining),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The service's clients, one per cluster, kept while their identity is
/// fresh and their endpoint unchanged.
#[derive(Default)]
pub struct Clients {
    inner: Mutex<HashMap<Uuid, Cached>>,
}

struct Cached {
    endpoint: String,
    renew_after: DateTime<Utc>,
    api: Arc<KubeTenant>,
}

impl Clients {
    /// The client of `cluster` for `endpoint`, if one is kept and fresh.
    pub fn get(
        &self,
        cluster: Uuid,
        endpoint: &str,
        now: DateTime<Utc>,
    ) -> Option<Arc<KubeTenant>> {
        let map = self.inner.lock().expect("tenant clients lock");
        map.get(&cluster)
            .filter(|c| c.endpoint == endpoint && now < c.renew_after)
            .map(|c| c.api.clone())
    }

    /// Keeps a client minted at `minted`.
    pub fn put(&self, cluster: Uuid, endpoint: &str, minted: DateTime<Utc>, api: Arc<KubeTenant>) {
        let renew_after = minted + IDENTITY_TTL * 3 / 4;
        self.inner.lock().expect("tenant clients lock").insert(
            cluster,
            Cached {
                endpoint: endpoint.to_string(),
                renew_after,
                api,
            },
        );
    }

    /// Forgets a cluster's client (the cluster is gone).
    pub fn forget(&self, cluster: Uuid) {
        self.inner
            .lock()
            .expect("tenant clients lock")
            .remove(&cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::Mutex as StdMutex;

    /// A test double of a tenant API for the drain's control flow only
    /// (the lab tests run the real thing against Kubernetes 1.20): pods
    /// vanish when evicted unless a budget blocks them.
    struct FakeCluster {
        pods: StdMutex<Vec<PodView>>,
        budget_blocks: Vec<&'static str>,
        cordoned: StdMutex<Vec<String>>,
    }

    fn pod(name: &str, node: &str) -> PodView {
        PodView {
            namespace: "default".into(),
            name: name.into(),
            node: Some(node.into()),
            phase: "Running".into(),
            cpu_requested_millis: 0,
            daemonset: false,
            mirror: false,
            terminating: false,
        }
    }

    #[async_trait]
    impl TenantApi for FakeCluster {
        async fn ready(&self) -> Result<()> {
            Ok(())
        }
        async fn nodes(&self) -> Result<Vec<NodeView>> {
            Ok(Vec::new())
        }
        async fn pods(&self, node: Option<&str>) -> Result<Vec<PodView>> {
            let pods = self.pods.lock().unwrap();
            Ok(pods
                .iter()
                .filter(|p| node.is_none() || p.node.as_deref() == node)
                .cloned()
                .collect())
        }
        async fn cordon(&self, node: &str) -> Result<()> {
            self.cordoned.lock().unwrap().push(node.into());
            Ok(())
        }
        async fn evict(&self, _ns: &str, pod: &str) -> Result<Eviction> {
            if self.budget_blocks.contains(&pod) {
                return Ok(Eviction::Blocked(
                    "Cannot evict pod as it would violate the pod's disruption budget.".into(),
                ));
            }
            let mut pods = self.pods.lock().unwrap();
            let before = pods.len();
            pods.retain(|p| p.name != pod);
            Ok(if pods.len() < before {
                Eviction::Evicted
            } else {
                Eviction::Gone
            })
        }
        async fn advertise_capacity(
            &self,
            _: &str,
            _: &std::collections::BTreeMap<String, String>,
        ) -> Result<()> {
            Ok(())
        }
        async fn delete_node(&self, _name: &str) -> Result<()> {
            Err(Error::Unavailable("not in this double".into()))
        }
        async fn apply_system_secret(&self, _: &str, _: &serde_json::Value) -> Result<()> {
            Err(Error::Unavailable("not in this double".into()))
        }
        async fn delete_system_secret(&self, _: &str) -> Result<()> {
            Err(Error::Unavailable("not in this double".into()))
        }
        async fn csrs(&self) -> Result<Vec<CsrView>> {
            Ok(Vec::new())
        }
        fn watch_nodes(&self) -> futures::stream::BoxStream<'static, Result<NodeEvent>> {
            Box::pin(futures::stream::empty())
        }
        fn watch_node_objects(&self) -> Watched<Node> {
            Box::pin(futures::stream::empty())
        }
        fn watch_pods(&self) -> Watched<Pod> {
            Box::pin(futures::stream::empty())
        }
        fn watch_daemonsets(&self) -> Watched<DaemonSet> {
            Box::pin(futures::stream::empty())
        }
        fn watch_pdbs(&self) -> Watched<PodDisruptionBudget> {
            Box::pin(futures::stream::empty())
        }
        fn watch_services(&self) -> Watched<Service> {
            Box::pin(futures::stream::empty())
        }
        fn watch_endpoints(&self) -> Watched<Endpoints> {
            Box::pin(futures::stream::empty())
        }
        async fn apply_dns_endpoints(&self, _: std::net::SocketAddrV4) -> Result<()> {
            Err(Error::Unavailable("not in this double".into()))
        }
        async fn decide_csr(&self, _: &str, _: bool, _: &str, _: &str) -> Result<()> {
            Err(Error::Unavailable("not in this double".into()))
        }
        async fn pod_event(&self, _: &PodRef, _: bool, _: &str, _: &str) -> Result<()> {
            Err(Error::Unavailable("not in this double".into()))
        }
    }

    #[tokio::test]
    async fn a_drain_cordons_evicts_and_finishes() {
        let mut ds = pod("agent", "n1");
        ds.daemonset = true;
        let fake = FakeCluster {
            pods: StdMutex::new(vec![pod("a", "n1"), pod("b", "n1"), pod("c", "n2"), ds]),
            budget_blocks: vec![],
            cordoned: StdMutex::new(vec![]),
        };
        let progress = drain(&fake, "n1", Duration::from_secs(5)).await.unwrap();
        assert_eq!(progress, DrainProgress::Drained { evicted: 2 });
        assert_eq!(*fake.cordoned.lock().unwrap(), ["n1"]);
        let left: Vec<String> = fake
            .pods
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(left, ["c", "agent"]);
    }

    #[tokio::test]
    async fn a_budget_keeps_a_drain_pending_and_says_so() {
        let fake = FakeCluster {
            pods: StdMutex::new(vec![pod("a", "n1"), pod("guarded", "n1")]),
            budget_blocks: vec!["guarded"],
            cordoned: StdMutex::new(vec![]),
        };
        let progress = drain(&fake, "n1", Duration::from_millis(600))
            .await
            .unwrap();
        let DrainProgress::Pending { evicted, blocking } = progress else {
            panic!("drained past a budget: {progress:?}");
        };
        assert_eq!(evicted, 1);
        assert_eq!(
            blocking,
            "eviction of pod default/guarded refused: Cannot evict pod as it would violate the pod's disruption budget."
        );
    }
}
