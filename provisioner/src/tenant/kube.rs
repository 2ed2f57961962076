//! [`TenantApi`] over a `kube` client, with the service's own short-lived
//! identity (see the module above for what it may do and why).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Secret, Service};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kubeforge_cluster::addons::SERVICE_USER;
use kubeforge_cluster::join::POOL_LABEL;
use kubeforge_cluster::kubeconfig::{render_kubeconfig, KubeconfigInput};
use kubeforge_cluster::names::check_dns_subdomain;
use kubeforge_cluster::nodes::{cpu_millis, CsrView, Eviction, NodeView, PodView};
use kubeforge_cluster::pki::{issue_client_cert, Ca};
use std::time::Duration;

use super::{
    DaemonSet, NodeEvent, Pod as WatchedPod, PodDisruptionBudget, PodRef, TenantApi, WatchEvent,
    Watched, EVICTION_GRACE_SECONDS, IDENTITY_TTL,
};
use crate::error::{Error, Result};

/// Longest one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
const FIELD_MANAGER: &str = "kubeforge";
const SYSTEM_NAMESPACE: &str = "kube-system";
/// The component the service's events on pods name as their source.
const EVENT_SOURCE: &str = "kubeforge-autoscaler";

/// One tenant cluster's API, as the service's identity.
pub struct KubeTenant {
    client: kube::Client,
    /// The same identity without a read timeout, for long-poll watches
    /// (the API server closes them after `timeoutSeconds`).
    watch_client: kube::Client,
    /// For messages: the endpoint.
    server: String,
}

impl KubeTenant {
    /// A client of the cluster `cluster_name` at `server`
    /// (`https://host:port`), trusting `ca_pem`, as a fresh
    /// [`SERVICE_USER`] certificate from `ca` valid from `now` for
    /// [`IDENTITY_TTL`]. Nothing is written anywhere.
    pub async fn connect(
        cluster_name: &str,
        server: &str,
        ca_pem: &str,
        ca: &Ca,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        Self::connect_as(
            cluster_name,
            server,
            ca_pem,
            ca,
            (SERVICE_USER, &[]),
            IDENTITY_TTL,
            now,
        )
        .await
    }

    /// A client as `user` in `groups` (a certificate valid for `ttl`), for
    /// probing what such a user may do; see [`KubeTenant::connect`].
    pub async fn connect_as(
        cluster_name: &str,
        server: &str,
        ca_pem: &str,
        ca: &Ca,
        (user, groups): (&str, &[&str]),
        ttl: chrono::TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        let pair = issue_client_cert(ca, user, groups, now, ttl)
            .map_err(|e| Error::Internal(anyhow::anyhow!("minting an identity for {user}: {e}")))?;
        let yaml = render_kubeconfig(&KubeconfigInput {
            cluster_name,
            server,
            ca_pem,
            user_name: user,
            client_cert_pem: &pair.cert_pem,
            client_key_pem: &pair.key_pem,
        });
        let kubeconfig = Kubeconfig::from_yaml(&yaml)
            .map_err(|e| Error::Internal(anyhow::anyhow!("the service kubeconfig: {e}")))?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Internal(anyhow::anyhow!("the service kubeconfig: {e}")))?;
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(CALL_TIMEOUT);
        config.write_timeout = Some(CALL_TIMEOUT);
        // No retries inside the client: a 429 from the Eviction API is a
        // PodDisruptionBudget's answer the drain must see at once (kube's
        // default retry would back off for many minutes); the engine's next
        // pass is the retry.
        config.default_retry = false;
        let mut watch_config = config.clone();
        watch_config.read_timeout = None;
        let client = kube::Client::try_from(config)
            .map_err(|e| Error::Internal(anyhow::anyhow!("a client for {server}: {e}")))?;
        let watch_client = kube::Client::try_from(watch_config)
            .map_err(|e| Error::Internal(anyhow::anyhow!("a client for {server}: {e}")))?;
        Ok(Self {
            client,
            watch_client,
            server: server.to_string(),
        })
    }

    /// Lists namespaces (one is enough): what a viewer must be able to do.
    pub async fn may_list_namespaces(&self) -> Result<()> {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone())
            .list(&ListParams::default().limit(1))
            .await
            .map_err(|e| self.unavailable("listing namespaces", e))?;
        Ok(())
    }

    fn unavailable(&self, what: &str, e: kube::Error) -> Error {
        Error::Unavailable(format!("{what} on {}: {}", self.server, describe(&e)))
    }
}

/// Every object `api` lists, as a [`Watched`] stream with its errors
/// worded.
fn watch_objects<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    server: String,
) -> Watched<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    watcher::watcher(api, config)
        .default_backoff()
        .map(move |event| {
            event.map_err(|e| Error::Unavailable(format!("watching {what} on {server}: {e}")))
        })
        .boxed()
}

/// A PodDisruptionBudget of either served version as the `policy/v1`
/// type; one that does not read as one is dropped with a warning.
fn as_pdb_event(
    event: Result<WatchEvent<DynamicObject>>,
) -> Option<Result<WatchEvent<PodDisruptionBudget>>> {
    let convert = |o: DynamicObject| -> Option<PodDisruptionBudget> {
        let name = o.metadata.name.clone().unwrap_or_default();
        let mut value = serde_json::to_value(&o).ok()?;
        // The typed reader wants the kind and version it knows.
        value["apiVersion"] = "policy/v1".into();
        match serde_json::from_value(value) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(pdb = %name.escape_debug(), error = %e, "ignoring a PodDisruptionBudget that does not read");
                None
            }
        }
    };
    Some(match event {
        Err(e) => Err(e),
        Ok(WatchEvent::Init) => Ok(WatchEvent::Init),
        Ok(WatchEvent::InitDone) => Ok(WatchEvent::InitDone),
        Ok(WatchEvent::InitApply(o)) => Ok(WatchEvent::InitApply(convert(o)?)),
        Ok(WatchEvent::Apply(o)) => Ok(WatchEvent::Apply(convert(o)?)),
        Ok(WatchEvent::Delete(o)) => Ok(WatchEvent::Delete(convert(o)?)),
    })
}

/// A kube error in one line: the API's own message where there is one.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Refuses a name the service is about to put into a request unless it
/// is a DNS subdomain.
fn usable(what: &str, name: &str) -> Result<()> {
    check_dns_subdomain(name)
        .map_err(|why| Error::Internal(anyhow::anyhow!("{what} {name:?}: {why}")))
}

/// A name read from the cluster, if it is one the service will use.
fn checked(kind: &str, name: Option<&String>) -> Option<String> {
    let name = name?;
    match check_dns_subdomain(name) {
        Ok(()) => Some(name.clone()),
        Err(why) => {
            tracing::warn!(kind, name = %name.escape_debug(), %why, "ignoring an object whose name is not a DNS subdomain");
            None
        }
    }
}

fn node_view(n: &Node) -> Option<NodeView> {
    let name = checked("Node", n.metadata.name.as_ref())?;
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let why = ready
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.as_deref().unwrap_or("Unknown"),
                c.message.as_deref().unwrap_or("")
            )
        })
        .unwrap_or_else(|| "NoReadyCondition: the kubelet has not reported".into());
    Some(NodeView {
        name,
        ready: ready.is_some_and(|c| c.status == "True"),
        why,
        pool: n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POOL_LABEL))
            .cloned(),
        unschedulable: n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        registered_at: n.metadata.creation_timestamp.as_ref().and_then(time),
        ready_since: ready
            .filter(|c| c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(time),
        pod_cidr: n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| kubeforge_cluster::network::Ipv4Cidr::parse(c).ok()),
        capacity: n
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .map(|c| c.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
            .unwrap_or_default(),
    })
}

/// A Kubernetes timestamp as chrono's.
pub(crate) fn time(
    t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond() as u32)
}

fn pod_view(p: &Pod) -> Option<PodView> {
    let name = checked("Pod", p.metadata.name.as_ref())?;
    let namespace = checked("Namespace", p.metadata.namespace.as_ref())?;
    let spec = p.spec.as_ref();
    let cpu = spec
        .map(|s| {
            s.containers
                .iter()
                .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("cpu"))
                .filter_map(|q| cpu_millis(&q.0))
                .sum()
        })
        .unwrap_or(0);
    Some(PodView {
        namespace,
        name,
        node: spec.and_then(|s| s.node_name.clone()),
        phase: p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default(),
        cpu_requested_millis: cpu,
        daemonset: p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "DaemonSet"),
        mirror: p
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror")),
        terminating: p.metadata.deletion_timestamp.is_some(),
    })
}

fn csr_view(c: &CertificateSigningRequest) -> Option<CsrView> {
    let name = checked("CertificateSigningRequest", c.metadata.name.as_ref())?;
    Some(CsrView {
        name,
        username: c.spec.username.clone().unwrap_or_default(),
        signer: c.spec.signer_name.clone(),
        request: c.spec.request.0.clone(),
        pending: c
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_none_or(|cs| cs.is_empty()),
    })
}

#[async_trait]
impl TenantApi for KubeTenant {
    async fn ready(&self) -> Result<()> {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| Error::Internal(anyhow::anyhow!("{e}")))?;
        let text = self
            .client
            .request_text(req)
            .await
            .map_err(|e| self.unavailable("GET /readyz", e))?;
        if text.trim() == "ok" {
            Ok(())
        } else {
            Err(Error::Unavailable(format!(
                "{} is not ready: {}",
                self.server,
                text.trim()
            )))
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeView>> {
        let list = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| self.unavailable("listing nodes", e))?;
        Ok(list.items.iter().filter_map(node_view).collect())
    }

    async fn pods(&self, node: Option<&str>) -> Result<Vec<PodView>> {
        let mut params = ListParams::default();
        let selector;
        if let Some(node) = node {
            usable("node name", node)?;
            selector = format!("spec.nodeName={node}");
            params = params.fields(&selector);
        }
        let list = Api::<Pod>::all(self.client.clone())
            .list(&params)
            .await
            .map_err(|e| self.unavailable("listing pods", e))?;
        Ok(list.items.iter().filter_map(pod_view).collect())
    }

    async fn cordon(&self, node: &str) -> Result<()> {
        usable("node name", node)?;
        Api::<Node>::all(self.client.clone())
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"unschedulable": true}})),
            )
            .await
            .map_err(|e| self.unavailable(&format!("cordoning {node}"), e))?;
        Ok(())
    }

    async fn evict(&self, namespace: &str, pod: &str) -> Result<Eviction> {
        for (what, name) in [("namespace", namespace), ("pod", pod)] {
            usable(&format!("{what} name"), name)?;
        }
        // Kubernetes 1.20 serves Eviction as policy/v1beta1 only.
        let body = serde_json::json!({
            "apiVersion": "policy/v1beta1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace},
            "deleteOptions": {"gracePeriodSeconds": EVICTION_GRACE_SECONDS},
        });
        let req = http::Request::post(format!(
            "/api/v1/namespaces/{namespace}/pods/{pod}/eviction"
        ))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).map_err(|e| Error::Internal(e.into()))?)
        .map_err(|e| Error::Internal(anyhow::anyhow!("{e}")))?;
        match self.client.request_text(req).await {
            Ok(_) => Ok(Eviction::Evicted),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Eviction::Gone),
            Err(kube::Error::Api(s)) if s.code == 429 => Ok(Eviction::Blocked(refusal(&s))),
            Err(e) => Err(self.unavailable(&format!("evicting {namespace}/{pod}"), e)),
        }
    }

    async fn advertise_capacity(
        &self,
        node: &str,
        resources: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        usable("node name", node)?;
        Api::<Node>::all(self.client.clone())
            .patch_status(
                node,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": {"capacity": resources}})),
            )
            .await
            .map_err(|e| self.unavailable(&format!("advertising {node}'s capacity"), e))?;
        Ok(())
    }

    async fn delete_node(&self, name: &str) -> Result<()> {
        usable("node name", name)?;
        match Api::<Node>::all(self.client.clone())
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.unavailable(&format!("deleting node {name}"), e)),
        }
    }

    async fn apply_system_secret(&self, name: &str, object: &serde_json::Value) -> Result<()> {
        Api::<Secret>::namespaced(self.client.clone(), SYSTEM_NAMESPACE)
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await
            .map_err(|e| self.unavailable(&format!("applying secret {name}"), e))?;
        Ok(())
    }

    async fn delete_system_secret(&self, name: &str) -> Result<()> {
        match Api::<Secret>::namespaced(self.client.clone(), SYSTEM_NAMESPACE)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.unavailable(&format!("deleting secret {name}"), e)),
        }
    }

    async fn pod_event(
        &self,
        pod: &PodRef,
        warning: bool,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        usable("namespace", &pod.namespace)?;
        usable("pod name", &pod.name)?;
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let event = k8s_openapi::api::core::v1::Event {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{}.", pod.name)),
                namespace: Some(pod.namespace.clone()),
                ..Default::default()
            },
            involved_object: k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(pod.namespace.clone()),
                name: Some(pod.name.clone()),
                uid: Some(pod.uid.clone()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some(EVENT_SOURCE.into()),
                ..Default::default()
            }),
            reporting_component: Some(EVENT_SOURCE.into()),
            reporting_instance: Some(EVENT_SOURCE.into()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(self.client.clone(), &pod.namespace)
            .create(&PostParams::default(), &event)
            .await
            .map_err(|e| self.unavailable(&format!("recording an event on pod {}", pod.name), e))?;
        Ok(())
    }

    async fn csrs(&self) -> Result<Vec<CsrView>> {
        let list = Api::<CertificateSigningRequest>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| self.unavailable("listing certificate signing requests", e))?;
        Ok(list.items.iter().filter_map(csr_view).collect())
    }

    fn watch_nodes(&self) -> futures::stream::BoxStream<'static, Result<NodeEvent>> {
        use futures::StreamExt;
        let mut listing: Vec<NodeView> = Vec::new();
        self.watch_node_objects()
            .filter_map(move |event| {
                let out = match event {
                    Ok(WatchEvent::Init) => {
                        listing.clear();
                        None
                    }
                    Ok(WatchEvent::InitApply(n)) => {
                        listing.extend(node_view(&n));
                        None
                    }
                    Ok(WatchEvent::InitDone) => {
                        Some(Ok(NodeEvent::Listed(std::mem::take(&mut listing))))
                    }
                    Ok(WatchEvent::Apply(n)) => node_view(&n).map(|v| Ok(NodeEvent::Applied(v))),
                    Ok(WatchEvent::Delete(n)) => {
                        node_view(&n).map(|v| Ok(NodeEvent::Deleted(v.name)))
                    }
                    Err(e) => Some(Err(e)),
                };
                futures::future::ready(out)
            })
            .boxed()
    }

    fn watch_node_objects(&self) -> Watched<Node> {
        let api = Api::<Node>::all(self.watch_client.clone());
        watch_objects(
            api,
            watcher::Config::default(),
            "nodes",
            self.server.clone(),
        )
    }

    fn watch_pods(&self) -> Watched<WatchedPod> {
        let api = Api::<WatchedPod>::all(self.watch_client.clone());
        let config =
            watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
        watch_objects(api, config, "pods", self.server.clone())
    }

    fn watch_services(&self) -> Watched<Service> {
        let api = Api::<Service>::all(self.watch_client.clone());
        watch_objects(
            api,
            watcher::Config::default(),
            "services",
            self.server.clone(),
        )
    }

    fn watch_endpoints(&self) -> Watched<Endpoints> {
        let api = Api::<Endpoints>::all(self.watch_client.clone());
        watch_objects(
            api,
            watcher::Config::default(),
            "endpoints",
            self.server.clone(),
        )
    }

    async fn apply_dns_endpoints(&self, address: std::net::SocketAddrV4) -> Result<()> {
        let name = kubeforge_cluster::addons::DNS_SERVICE;
        Api::<Endpoints>::namespaced(self.client.clone(), SYSTEM_NAMESPACE)
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(kubeforge_cluster::addons::dns_endpoints(address)),
            )
            .await
            .map_err(|e| self.unavailable("applying the kube-dns endpoints", e))?;
        Ok(())
    }

    fn watch_daemonsets(&self) -> Watched<DaemonSet> {
        let api = Api::<DaemonSet>::all(self.watch_client.clone());
        watch_objects(
            api,
            watcher::Config::default(),
            "daemonsets",
            self.server.clone(),
        )
    }

    fn watch_pdbs(&self) -> Watched<PodDisruptionBudget> {
        use futures::StreamExt;
        // Which version the cluster serves is only known by asking; the
        // stream asks first (1.21 and later serve policy/v1).
        let client = self.watch_client.clone();
        let server = self.server.clone();
        futures::stream::once(async move {
            let v1 = client
                .list_api_group_resources("policy/v1")
                .await
                .map(|l| l.resources.iter().any(|r| r.name == "poddisruptionbudgets"))
                .unwrap_or(false);
            let version = if v1 { "v1" } else { "v1beta1" };
            let gvk = GroupVersionKind::gvk("policy", version, "PodDisruptionBudget");
            let api = Api::<DynamicObject>::all_with(client, &ApiResource::from_gvk(&gvk));
            watch_objects(
                api,
                watcher::Config::default(),
                "poddisruptionbudgets",
                server,
            )
            .filter_map(|event| futures::future::ready(as_pdb_event(event)))
        })
        .flatten()
        .boxed()
    }

    async fn decide_csr(
        &self,
        name: &str,
        approve: bool,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        usable("CSR name", name)?;
        let api = Api::<CertificateSigningRequest>::all(self.client.clone());
        let mut csr = api
            .get(name)
            .await
            .map_err(|e| self.unavailable(&format!("reading CSR {name}"), e))?;
        let status = csr.status.get_or_insert_with(Default::default);
        status
            .conditions
            .get_or_insert_with(Vec::new)
            .push(CertificateSigningRequestCondition {
                type_: if approve { "Approved" } else { "Denied" }.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                ..Default::default()
            });
        // PUT .../approval, as `kubectl certificate approve` does (the
        // service's role may update approvals, not patch them).
        api.replace_subresource("approval", name, &PostParams::default(), &csr)
            .await
            .map_err(|e| self.unavailable(&format!("deciding CSR {name}"), e))?;
        Ok(())
    }
}

/// An eviction's refusal in one line: the API server's message and the
/// causes it gives (for a PodDisruptionBudget, the budget's name and its
/// healthy pod counts: "The disruption budget web needs 2 healthy pods and
/// has 2 currently").
fn refusal(s: &kube::core::Status) -> String {
    let causes: Vec<&str> = s
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| c.message.trim())
        .filter(|m| !m.is_empty())
        .collect();
    let message = s.message.trim().trim_end_matches('.');
    if causes.is_empty() {
        message.to_string()
    } else {
        format!("{message}: {}", causes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refusal_names_the_budget() {
        // As a 1.20 API server answers an eviction a budget forbids.
        let s: kube::core::Status = serde_json::from_value(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "reason": "TooManyRequests", "code": 429,
            "details": {"causes": [{"reason": "DisruptionBudget",
                "message": "The disruption budget guarded needs 1 healthy pods and has 1 currently"}]}
        }))
        .unwrap();
        assert_eq!(
            refusal(&s),
            "Cannot evict pod as it would violate the pod's disruption budget: The disruption budget guarded needs 1 healthy pods and has 1 currently"
        );
        let bare: kube::core::Status =
            serde_json::from_value(serde_json::json!({"message": "slow down.", "code": 429}))
                .unwrap();
        assert_eq!(refusal(&bare), "slow down");
    }
}
